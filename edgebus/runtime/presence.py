"""The cart's lesion-presence rule (presence.json from `edgebus presence`): whether a frame shows a
lesion at all, decided on the lesion-probability map the cart already has (the segmenter's, or a
multi-task classifier's), before any malignancy label is given. Core install only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import valid_threshold
from edgebus.core.io import checked_file, sha256_file
from edgebus.data.presence import EVIDENCE, evidence

PRESENCE_JSON = "presence.json"
NO_LESION = "no lesion found"  # the label of a frame the rule calls lesion-free


class LesionPresence:
    """A presence.json: a logistic model on the map's evidence and its threshold (chosen out of fold
    for a stated share of lesion frames missed). A file from elsewhere is checked before use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with checked_file(self.path, "presence", "edgebus presence", "SEG_CV"):
            r = json.loads(self.path.read_text())
            if r.get("schema") != "edgebus.presence/1":
                raise KeyError("schema")
            self.model, self.threshold = r["model"], r["threshold"]
            if not fusion.valid_model(self.model, EVIDENCE):
                raise KeyError("model")
            if not valid_threshold(self.threshold):
                raise ValueError(f"threshold {self.threshold!r} outside [0, 1]")
            self.max_miss, self.mask_from = float(r["max_miss"]), r.get("mask_from") or {}
            self.out_of_fold = (r.get("out_of_fold") or {}).get("evidence model")
        self.sha256 = sha256_file(self.path)

    def decide(self, prob: np.ndarray, mask_threshold: float) -> dict:
        """{"present", "score", "threshold", "rule"} of one lesion-probability map (the model's grid)."""
        score = float(fusion.predict(self.model, np.asarray([evidence(prob, mask_threshold)]), EVIDENCE)[0])
        return {"present": bool(score >= self.threshold), "score": round(score, 6), "threshold": self.threshold,
                "rule": f"presence model {self.path.name} (sha256 {self.sha256[:12]}), at most {self.max_miss:.0%} "
                        "of lesion frames missed out of fold"}

    def gate(self) -> str | None:
        """None, or why the rule fails its gate: out of fold it missed more lesion frames than it was set
        for, beyond sampling error (the 95% interval's lower end above max_miss). A hand-made rule without
        out-of-fold numbers is not gated (its describe() says so)."""
        r = self.out_of_fold
        if not r or "ci" not in r:
            return None
        lo = r["ci"]["lesion_missed"][0]
        if lo > self.max_miss:
            return (f"{self.path}: out of fold it called {r['lesion_missed']:.3f} of lesion frames lesion-free "
                    f"(95% CI from {lo:.3f}), above the {self.max_miss:.0%} it was set for")
        return None

    def describe(self) -> dict:
        r = self.out_of_fold or {}
        return {"file": self.path.name, "sha256": self.sha256, "threshold": self.threshold, "max_miss": self.max_miss,
                "mask_from": self.mask_from, "gate": "not gated" if not r else ("FAILED" if self.gate() else "passed"),
                "out_of_fold": {k: r.get(k) for k in ("lesion_missed", "lesion_free_found_free")} if r else None}
