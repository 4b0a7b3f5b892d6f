"""Metrics in plain numpy, so training, export validation and the device-side benchmark agree
exactly and none of them needs TensorFlow or scikit-learn."""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5  # a run's threshold until an operating point replaces it
CLASS_NAMES = ("benign", "malignant")  # label 0, 1: the one place the class order is declared


def roc_auc(y_true, score) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); None with one class only."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_true, prob, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion
    matrix (rows = truth, columns = prediction, order benign, malignant) and ROC AUC."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    pred = (p >= threshold).astype(int)
    cm = np.zeros((2, 2), dtype=int)
    for t, q in zip(y, pred):
        cm[t, q] += 1
    per_class = {}
    for c, name in enumerate(CLASS_NAMES):
        tp = cm[c, c]
        prec = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        rec = tp / cm[c, :].sum() if cm[c, :].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[name] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(cm[c, :].sum())}
    support = np.array([per_class[n]["support"] for n in CLASS_NAMES], dtype=float)
    avg = {}
    for k in ("precision", "recall", "f1"):
        vals = np.array([per_class[n][k] for n in CLASS_NAMES])
        avg[k] = (float(vals.mean()), float((vals * support).sum() / support.sum()) if support.sum() else 0.0)
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "auc": roc_auc(y, p),
        "per_class": per_class,
        "macro": {k: v[0] for k, v in avg.items()},
        "weighted": {k: v[1] for k, v in avg.items()},
        "confusion_matrix": cm.tolist(),
        "malignant_recall": per_class["malignant"]["recall"],
    }


def segmentation_metrics(masks_true, prob, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Per-image IoU and Dice (mean over images; an image where truth and prediction are both
    empty counts 1), plus pixel accuracy and how many predictions are empty."""
    t = np.asarray(masks_true).reshape(len(masks_true), -1) > 0
    p = np.asarray(prob).reshape(len(prob), -1) >= threshold
    inter = (t & p).sum(1).astype(np.float64)
    union = (t | p).sum(1).astype(np.float64)
    size = t.sum(1) + p.sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    dice = np.where(size > 0, 2 * inter / np.maximum(size, 1), 1.0)
    return {
        "n": int(len(t)),
        "threshold": float(threshold),
        "iou": float(iou.mean()) if len(t) else 0.0,
        "dice": float(dice.mean()) if len(t) else 0.0,
        "iou_per_image": [round(float(v), 4) for v in iou],
        "pixel_accuracy": float((t == p).mean()) if len(t) else 0.0,
        "empty_predictions": int((p.sum(1) == 0).sum()),
    }


def finite(v) -> bool:
    """A finite JSON number (not a bool, a string or None): what a value read from a file must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def check_target(target) -> float:
    """A target sensitivity must lie in (0, 1]: one line, before any work, for anything else."""
    from edgebus.core.errors import EdgebusError, flag

    if not finite(target) or not 0 < target <= 1:
        raise EdgebusError(f"{flag('target_sensitivity')} {target}: give a value in (0, 1], e.g. 0.9")
    return float(target)


def threshold_for_sensitivity(y_true, prob, target: float = 0.9) -> dict:
    """The highest threshold whose malignant recall (sensitivity) on these cases reaches `target`,
    with the specificity it leaves. Chosen on validation data, stored in the exported model.

    Highest, because every lower threshold only trades specificity away for no sensitivity gain."""
    check_target(target)
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    pos = np.sort(p[y == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no malignant case to set a sensitivity on")
    k = int(np.ceil(target * len(pos)))  # cases that must score >= threshold
    while k > 1 and (k - 1) / len(pos) >= target:  # target * n rounds up past an integer: 0.55 * 100 = 55.000000000000007
        k -= 1
    thr = float(pos[max(k, 1) - 1])
    pred = p >= thr
    neg = y == 0
    return {
        "target_sensitivity": float(target),
        "threshold": thr,
        "sensitivity": float(pred[y == 1].mean()),
        "specificity": float((~pred[neg]).mean()) if neg.any() else None,
        "n": int(len(y)),
    }


def expected_calibration_error(y_true, prob, bins: int = 10) -> float:
    """ECE over equal-width probability bins: how far the malignant probability is from the
    observed malignant rate, weighted by cases per bin."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


def flat_classification(m: dict) -> dict:
    """The numbers a table shows, flat: accuracy, AUC, per-class P/R/F1, macro F1."""
    out = {"accuracy": m["accuracy"], "auc": m["auc"]}
    for c in CLASS_NAMES:
        for k in ("precision", "recall", "f1"):
            out[f"{c}_{k}"] = m["per_class"][c][k]
    out["f1_macro"] = m["macro"]["f1"]
    out["malignant_recall"] = m["malignant_recall"]
    return out


def output_agreement(ref, other, threshold: float = DEFAULT_THRESHOLD, other_threshold: float | None = None) -> dict:
    """How closely an exported model follows its parent: share of equal decisions (labels or
    pixels; `other` decided at its own threshold where given), max and mean output gap."""
    a = np.asarray(ref, dtype=np.float32)
    b = np.asarray(other, dtype=np.float32)
    same = ((a >= threshold) == (b >= (threshold if other_threshold is None else other_threshold))).mean()
    return {"agreement": float(same), "max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean())}


def label_flips(ref, other, threshold: float = DEFAULT_THRESHOLD, other_threshold: float | None = None,
                truth=None) -> dict:
    """Case by case, where an exported classifier's decision differs from its float parent's:
    the flips out of all scored cases, by direction (the float call -> the exported call), and
    the probability gaps (mean, median, 95th percentile, max). An agreement rate alone hides which
    way the flips go. `other` is decided at its own threshold where given (an exported file's
    operating point); with `truth`, also the malignant cases each calls benign, and those the parent
    caught that `other` calls benign (missed_new)."""
    a, b = np.asarray(ref, dtype=np.float64).ravel(), np.asarray(other, dtype=np.float64).ravel()
    fa, fb = a >= threshold, b >= (threshold if other_threshold is None else other_threshold)
    gap = np.abs(a - b)
    out = {"n": int(len(a)), "flips": int((fa != fb).sum()), "benign_to_malignant": int((~fa & fb).sum()),
           "malignant_to_benign": int((fa & ~fb).sum()), "mean_abs_diff": float(gap.mean()) if len(a) else None,
           "median_abs_diff": float(np.median(gap)) if len(a) else None,
           "p95_abs_diff": float(np.percentile(gap, 95)) if len(a) else None,
           "max_abs_diff": float(gap.max()) if len(a) else None}
    if truth is not None:
        cancer = np.asarray(truth).astype(int).ravel() == 1
        out.update(malignant=int(cancer.sum()), missed_float=int((cancer & ~fa).sum()), missed=int((cancer & ~fb).sum()),
                   missed_new=int((cancer & fa & ~fb).sum()))  # cancers the parent caught and the file calls benign
    return out


def mask_agreement_iou(ref, other, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per image, the IoU between a float segmenter's mask and its exported copy's (two empty masks
    agree: 1.0)."""
    a = np.asarray(ref) >= threshold
    b = np.asarray(other) >= threshold
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter, union = (a & b).sum(1), (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_fidelity(ref, other, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The float-vs-exported mask IoU per image (mask_agreement_iou): mean, median, the worst image,
    the pixels that changed side and the per-pixel probability gaps (median, 95th percentile)."""
    iou = mask_agreement_iou(ref, other, threshold)
    flips = int(((np.asarray(ref) >= threshold) != (np.asarray(other) >= threshold)).sum())
    gap = np.abs(np.asarray(ref, dtype=np.float64) - np.asarray(other, dtype=np.float64)).ravel()
    some = len(iou) > 0
    return {"n": int(len(iou)), "mask_iou_mean": float(iou.mean()) if some else None,
            "mask_iou_median": float(np.median(iou)) if some else None,
            "mask_iou_min": float(iou.min()) if some else None, "pixel_flips": flips,
            "median_abs_diff": float(np.median(gap)) if some else None,
            "p95_abs_diff": float(np.percentile(gap, 95)) if some else None,
            "mask_iou_per_image": [round(float(v), 4) for v in iou]}


def cohen_kappa(a, b) -> float | None:
    """Cohen's kappa of two binary raters (agreement beyond chance); None when it is undefined."""
    a, b = np.asarray(a).astype(int).ravel(), np.asarray(b).astype(int).ravel()
    if len(a) == 0:
        return None
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return None if pe >= 1 else (po - pe) / (1 - pe)


def descriptor_metrics(truth, prob, names, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Per descriptor (columns of truth/prob): n known, accuracy, Cohen's kappa, AUC; unknown (-1) left out."""
    t, p = np.asarray(truth), np.asarray(prob, dtype=np.float64)
    out = {}
    for j, name in enumerate(names):
        known = t[:, j] >= 0
        y, q = t[known, j], p[known, j]
        out[name] = {"n": int(known.sum()), "positive": int((y == 1).sum()),
                     "accuracy": float(((q >= threshold) == (y == 1)).mean()) if len(y) else None,
                     "kappa": cohen_kappa(y, q >= threshold) if len(y) else None, "auc": roc_auc(y, q)}
    return out
