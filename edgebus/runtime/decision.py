"""The cart's malignancy decision, decided once per cart: which output the threshold applies to, which
threshold, and which calibration turns that output into the shown probability.

Three sources, each replacing the one before it where the bundle carries it:
1. the classifier file's own (its embedded metadata: the threshold its export chose, its Platt map; a fold
   ensemble's: the CV's out-of-fold ones);
2. a fusion (`edgebus fuse`, bundle's fusion.json): the fused output is what the threshold applies to, at the
   fusion's threshold and through its calibration;
3. a site's copy of the cart (`edgebus site-threshold`, site.json): the site's threshold, and its
   recalibration moving the shown probability's logit after the cart's own.
`source` names the last one that applied, for `describe()` and the console.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from edgebus.core.calibration import apply as apply_calibration


def _recalibrated(site_calibration: dict, calibrated, p: float) -> float:
    """The shown probability with a site's recalibration applied on top of the cart's own."""
    return float(apply_calibration(site_calibration, calibrated(p)))


@dataclass(frozen=True)
class Decision:
    threshold: float
    calibrated: Callable  # the model's output (what the threshold applies to) -> the shown probability
    labels: tuple  # (below the threshold, at or above it)
    source: str  # "classifier", "fusion" or "site"

    def decide(self, p: float) -> dict:
        """{prob_raw, prob_malignant, threshold, label} of one output. The recorded (rounded) output decides,
        so a row is its own proof: a threshold chosen on recorded outputs, as a site's is, may equal one of
        them to the last digit."""
        raw = round(float(p), 6)
        return {"prob_raw": raw, "prob_malignant": round(float(self.calibrated(p)), 6), "threshold": self.threshold,
                "label": self.labels[1] if raw >= self.threshold else self.labels[0]}


def cart_decision(classifier, fusion=None, site: dict | None = None) -> Decision | None:
    """The Decision of a cart's classifier (ExportedModel or EnsembleModel), fusion (runtime.fusion.ShapeFusion)
    and site (runtime.bundle.load_site); None without a classifier."""
    if classifier is None:
        return None
    threshold, calibrated, source = classifier.threshold, classifier.calibrated, "classifier"
    if fusion is not None:
        threshold, calibrated, source = fusion.threshold, fusion.calibrated, "fusion"
    if site is not None:
        threshold, source = site["threshold"], "site"
        if site.get("calibration"):
            calibrated = partial(_recalibrated, site["calibration"], calibrated)
    return Decision(float(threshold), calibrated, tuple(classifier.labels), source)
