"""Statistics over cases: percentile-bootstrap 95% intervals for the headline numbers.

A proportion measured on 27 images carries a 95% interval of about +-18 points, so every number
edgebus reports from one split or pooled folds comes with its interval."""

from __future__ import annotations

import numpy as np

from edgebus.core.metrics import DEFAULT_THRESHOLD, classification_metrics, cohen_kappa, flat_classification, roc_auc

CLASSIFY_KEYS = ("accuracy", "auc", "malignant_recall", "malignant_precision", "malignant_f1",
                 "benign_precision", "benign_recall", "benign_f1", "f1_macro")
SEGMENT_KEYS = ("iou", "dice")


def percentile_interval(values, level: float = 0.95):
    """[lo, hi] of the finite values' central `level` interval ((None, None) when none is finite)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return None, None
    a = (1 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def bootstrap_classification(y, prob, threshold: float = DEFAULT_THRESHOLD, n_boot: int = 2000, seed: int = 0,
                             level: float = 0.95) -> dict:
    """Percentile bootstrap over cases: {metric: {"value", "lo", "hi"}} for CLASSIFY_KEYS."""
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    point = flat_classification(classification_metrics(y, p, threshold))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    yb, pb = y[idx], p[idx]
    pred = (pb >= threshold).astype(int)
    res: dict = {k: [] for k in CLASSIFY_KEYS}
    tp = ((pred == 1) & (yb == 1)).sum(1)
    tn = ((pred == 0) & (yb == 0)).sum(1)
    fp = ((pred == 1) & (yb == 0)).sum(1)
    fn = ((pred == 0) & (yb == 1)).sum(1)

    # A resample where a ratio is undefined (no case of the class, or none predicted) is left out
    # of that metric's interval rather than counted as 0.
    def ratio(a, b):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)

    def f1(pr, rc):
        return np.where(pr + rc > 0, 2 * pr * rc / np.maximum(pr + rc, 1e-12), np.where(np.isnan(pr + rc), np.nan, 0.0))

    res["accuracy"] = (tp + tn) / len(y)
    mp, mr = ratio(tp, tp + fp), ratio(tp, tp + fn)
    bp, br = ratio(tn, tn + fn), ratio(tn, tn + fp)
    res.update(malignant_precision=mp, malignant_recall=mr, malignant_f1=f1(mp, mr), benign_precision=bp,
               benign_recall=br, benign_f1=f1(bp, br), f1_macro=(f1(mp, mr) + f1(bp, br)) / 2)
    res["auc"] = [roc_auc(yb[b], pb[b]) for b in range(n_boot)]
    out = {}
    for k in CLASSIFY_KEYS:
        lo, hi = percentile_interval(res[k], level)
        out[k] = {"value": point[k], "lo": lo, "hi": hi}
    out["_meta"] = {"n": int(len(y)), "resamples": n_boot, "seed": seed, "level": level, "method": "percentile, cases resampled"}
    return out


def bootstrap_means(values: dict, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap of the mean of each per-image array in `values` (same resamples for all)."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    n = len(next(iter(arrays.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    out = {}
    for k, a in arrays.items():
        lo, hi = percentile_interval(a[idx].mean(1), level)
        out[k] = {"value": float(a.mean()), "lo": lo, "hi": hi}
    out["_meta"] = {"n": int(n), "resamples": n_boot, "seed": seed, "level": level, "method": "percentile, images resampled"}
    return out


def dice_from_iou(iou) -> list[float]:
    """Per image, Dice = 2 IoU / (1 + IoU) exactly (both are 1 for an empty truth and prediction)."""
    a = np.asarray(iou, dtype=np.float64)
    return [float(v) for v in 2 * a / (1 + a)]


def bootstrap_kappa(truth, pred, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Cohen's kappa of binary truth and predictions with its percentile-bootstrap interval."""
    t, q = np.asarray(truth).astype(int).ravel(), np.asarray(pred).astype(int).ravel()
    idx = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
    lo, hi = percentile_interval([cohen_kappa(t[i], q[i]) for i in idx], level)
    return {"value": cohen_kappa(t, q), "lo": lo, "hi": hi}


def interval_text(ci: dict, pct: bool = False) -> str:
    if ci.get("value") is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    if ci.get("lo") is None:
        return f(ci["value"])
    return f"{f(ci['value'])} [{f(ci['lo'])}, {f(ci['hi'])}]"
