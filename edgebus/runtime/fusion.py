"""The cart's classifier + lesion-shape fusion: the fused model `edgebus fuse` fitted out of fold,
carried in a bundle as fusion.json and applied with numpy.

Per frame: the segmenter's mask in the frame (largest region) is measured (edgebus.core.shape), the
classifier's score and the shape go through the logistic model, and the fused probability is
thresholded at the fused operating point chosen out of fold. The shape is also reported, with its
orientation in BI-RADS words, and the BI-RADS descriptors `edgebus fuse` found measurable on the mask
(shape, margin, posterior features...: each a logistic model on the lesion's shape and echo numbers,
shipped only where its out-of-fold kappa interval was above 0) in the lexicon's words.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import apply, valid_calibration, valid_threshold
from edgebus.core.echo import echo_features
from edgebus.core.io import checked_file, sha256_file
from edgebus.core.shape import FEATURES, shape_features
from edgebus.data.preprocess import lesion_in_frame

FUSION_JSON = "fusion.json"


def measure_lesion(seg_prob: np.ndarray, gray: np.ndarray, seg_threshold: float, full: np.ndarray | None = None,
                   lesion: np.ndarray | None = None) -> tuple:
    """(shape, echo) of the lesion a segmenter's (H, W) map shows in the gray frame: the largest region
    at frame size (edgebus.data.preprocess.lesion_in_frame; `full`: the map already at frame size),
    measured by edgebus.core.shape (on the lesion's box: the measures do not depend on where it lies)
    and edgebus.core.echo; (None, None) when nothing reaches the threshold. The one way a lesion is
    measured, on the cart and in `edgebus fuse` / `edgebus stress --fuse` alike. `lesion`: that mask
    already (the cart finds it once per frame for its mask, box and area too)."""
    prob = np.asarray(seg_prob, dtype=np.float32)
    mask = lesion if lesion is not None else lesion_in_frame(prob.reshape(prob.shape[:2]), gray.shape[:2], seg_threshold, full)
    if mask is None:
        return None, None
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return shape_features(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]), echo_features(gray, mask)


def orientation_words(orientation: float) -> str:
    """BI-RADS orientation from height / width: 'not parallel' (taller than wide) is a malignant sign."""
    return "not parallel orientation (taller than wide)" if orientation > 1 else "parallel orientation (wider than tall)"


class ShapeFusion:
    """A fusion.json (from `edgebus fuse`): the model, its threshold and calibration."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with checked_file(self.path, "fusion", "edgebus fuse", "CLS_CV SEG_CV"):
            r = json.loads(self.path.read_text())
            self.model = r["model"]
            op = r["operating_point"]["fused"]
            # the calibration `edgebus fuse` chose out of fold for the fused probability (none, intercept,
            # temperature or Platt); a fusion.json made before that choice existed shows the logistic output as is
            self.threshold = op["threshold"]
            self.calibration = (r.get("calibration") or {}).get("calibration")
            if not valid_threshold(self.threshold):
                raise ValueError(f"threshold {self.threshold!r} outside [0, 1]")
            if not valid_calibration(self.calibration):
                raise ValueError(f"calibration {self.calibration!r} is not a monotone Platt map")
            if not fusion.valid_model(self.model, fusion.INPUTS):
                raise KeyError("model")
            self.descriptors = [d for d in r.get("descriptors") or [] if d.get("shipped")]
            for d in self.descriptors:
                if not (fusion.valid_model(d.get("model"), fusion.MEASURES) and isinstance(d.get("labels"), list)
                        and len(d["labels"]) == 2 and isinstance(d.get("name"), str)):
                    raise KeyError(f"descriptor {d.get('name')}")
        self.sha256 = sha256_file(self.path)
        self.source = {k: r.get(k) for k in ("classifier_cv", "segment_cv", "group_by")}

    def score(self, p_classifier: float, seg_prob: np.ndarray, gray: np.ndarray, seg_threshold: float,
              full: np.ndarray | None = None, lesion: np.ndarray | None = None):
        """(fused probability, shape features or None, descriptor probabilities (one per shipped
        descriptor) or None) of one frame; `full`: the map already resized to the frame, `lesion`: the
        lesion already found in it (measure_lesion)."""
        shape, echo = measure_lesion(seg_prob, gray, seg_threshold, full, lesion)
        p = float(fusion.predict(self.model, fusion.feature_rows([p_classifier], [shape]))[0])
        desc = None
        if shape is not None and self.descriptors:
            m = fusion.measure_rows([shape], [echo])
            desc = [float(fusion.predict(d["model"], m, fusion.MEASURES)[0]) for d in self.descriptors]
        return p, shape, desc

    def calibrated(self, p: float) -> float:
        return float(apply(self.calibration, p))

    def describe(self) -> dict:
        return {"file": self.path.name, "sha256": self.sha256, "threshold": self.threshold, **self.source,
                "descriptors": [d["name"] for d in self.descriptors]}


def shape_result(shape) -> dict | None:
    return None if shape is None else {k: round(float(v), 4) for k, v in zip(FEATURES, shape)}
