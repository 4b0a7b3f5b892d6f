"""The two tasks edgebus trains and deploys, as objects: what a classifier and a segmenter differ
in (labels, metrics, headline numbers, output checks, defaults) lives here and nowhere else, so
the other layers ask the task instead of testing its name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgebus.core import stats
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.metrics import (CLASS_NAMES, DEFAULT_THRESHOLD, classification_metrics, flat_classification,
                                  label_flips, mask_fidelity, output_agreement, segmentation_metrics)


@dataclass(frozen=True)
class Task:
    name: str  # "classify" / "segment": the word in manifests, metadata and the CLI
    role: str  # what the cart calls a model of this task
    labels: tuple  # output index -> label
    output: str  # what the model's one output means
    default_model: str
    default_batch: int
    select: tuple  # validation metrics a grid may select by; the first is the default
    ci_keys: tuple  # the numbers reported with bootstrap intervals
    keep_metrics: tuple  # Keras log names of the validation metric that keeps the best epoch
    agreement_key: str
    gates: tuple  # (metric, words, option, scale, unit): what an export may lose against its parent
    truth_is_mask: bool  # scored against lesion masks (else against labels)
    pack_key: str  # the truth's name in an evaluation pack

    def metrics(self, truth, prob, threshold: float = DEFAULT_THRESHOLD) -> dict:
        raise NotImplementedError

    def flat(self, m: dict) -> dict:
        """ci_keys -> value of a metrics dict."""
        return {k: m[k] for k in self.ci_keys}

    def headline(self, m: dict) -> dict:
        raise NotImplementedError

    def headline_text(self, m: dict) -> str:
        return ", ".join("n/a" if v is None else f"{k.replace('_', ' ')} {v:.3f}" for k, v in self.headline(m).items())

    def tiebreak(self, metric: str) -> str:
        """The second validation metric that breaks a tie in `metric`."""
        return self.select[1] if metric != self.select[1] else self.select[0]

    def agreement(self, ref, other, threshold: float = DEFAULT_THRESHOLD, other_threshold: float | None = None) -> dict:
        a = output_agreement(ref, other, threshold, other_threshold)
        return {self.agreement_key: a.pop("agreement"), **a}

    def fidelity(self, ref, other, threshold: float = DEFAULT_THRESHOLD, other_threshold: float | None = None,
                 truth=None) -> dict:
        """Case by case, how an exported file departs from its float parent (label_flips, the file
        decided at its own threshold / mask_fidelity)."""
        raise NotImplementedError

    def check_output(self, shape: tuple, size: tuple) -> str | None:
        """None when an output of `shape` fits a model of this task at input `size`, else what it should be."""
        raise NotImplementedError

    def truth(self, labels, masks):
        """Which of (labels, masks) this task's metrics score against."""
        return masks if self.truth_is_mask else labels

    def case_record(self, truth, prob, metrics: dict, suffix: str = "") -> dict:
        """The per-case arrays a CV fold or grid cell record stores (read back by fold_arrays)."""
        raise NotImplementedError

    def fold_arrays(self, rec: dict, suffix: str = "") -> dict | None:
        """The per-case arrays a CV fold record stores for the pooled statistics (None if absent)."""
        raise NotImplementedError

    def pooled(self, arrays: dict, threshold: float, n_boot: int, seed: int) -> tuple[dict, dict]:
        """(pooled metrics, bootstrap intervals) of concatenated fold arrays."""
        raise NotImplementedError


class _Classify(Task):
    def metrics(self, truth, prob, threshold=DEFAULT_THRESHOLD):
        return classification_metrics(truth, prob, threshold)

    def fidelity(self, ref, other, threshold=DEFAULT_THRESHOLD, other_threshold=None, truth=None):
        return label_flips(ref, other, threshold, other_threshold, truth)

    def flat(self, m):
        f = flat_classification(m)
        return {k: f[k] for k in self.ci_keys}

    def headline(self, m):
        return {"accuracy": m["accuracy"], "malignant_recall": m["malignant_recall"], "auc": m["auc"]}

    def check_output(self, shape, size):
        return None if int(np.prod(shape[1:])) == 1 else "one malignant probability"

    def case_record(self, truth, prob, metrics, suffix=""):
        rec = {f"test_prob{suffix}": [round(float(p), 6) for p in np.asarray(prob).ravel()]}
        if not suffix:
            rec["test_label"] = [int(v) for v in np.asarray(truth).ravel()]
        return rec

    def fold_arrays(self, rec, suffix=""):
        if f"test_prob{suffix}" not in rec:
            return None
        return {"label": np.asarray(rec["test_label"]), "prob": np.asarray(rec[f"test_prob{suffix}"], dtype=np.float64)}

    def pooled(self, arrays, threshold, n_boot, seed):
        return (classification_metrics(arrays["label"], arrays["prob"], threshold),
                stats.bootstrap_classification(arrays["label"], arrays["prob"], threshold, n_boot, seed))


class _Segment(Task):
    def metrics(self, truth, prob, threshold=DEFAULT_THRESHOLD):
        return segmentation_metrics(truth, prob, threshold)

    def fidelity(self, ref, other, threshold=DEFAULT_THRESHOLD, other_threshold=None, truth=None):
        return mask_fidelity(ref, other, threshold)

    def headline(self, m):
        return {"iou": m["iou"], "dice": m["dice"]}

    def check_output(self, shape, size):
        h, w = size
        ok = tuple(shape[1:3]) == (h, w) and int(np.prod(shape[3:])) == 1
        return None if ok else f"one {h}x{w} probability map"

    def case_record(self, truth, prob, metrics, suffix=""):
        iou = metrics["iou_per_image"]
        rec = {f"test_iou{suffix}": iou}
        if not suffix:
            rec["test_dice"] = [round(v, 4) for v in stats.dice_from_iou(iou)]
        return rec

    def fold_arrays(self, rec, suffix=""):
        if f"test_iou{suffix}" not in rec:
            return None
        iou = np.asarray(rec[f"test_iou{suffix}"], dtype=np.float64)
        return {"iou": iou, "dice": np.asarray(stats.dice_from_iou(iou))}

    def pooled(self, arrays, threshold, n_boot, seed):
        iou, dice = arrays["iou"], arrays["dice"]
        pooled = {"n": int(len(iou)), "iou": float(iou.mean()), "dice": float(dice.mean())}
        return pooled, stats.bootstrap_means({"iou": iou, "dice": dice}, n_boot, seed)


CLASSIFY = _Classify(
    name="classify", role="classifier", labels=CLASS_NAMES, output="malignant probability",
    default_model="mobilenetv2", default_batch=16, select=("accuracy", "auc", "malignant_recall", "f1_macro"),
    ci_keys=stats.CLASSIFY_KEYS, keep_metrics=("val_accuracy", "val_malignant_prob_accuracy"),
    agreement_key="label_agreement", truth_is_mask=False, pack_key="labels",
    gates=(("accuracy", "accuracy", flag("max_drop"), 100.0, "points"),
           ("malignant_recall", "malignant recall", flag("max_recall_drop"), 100.0, "points")))
SEGMENT = _Segment(
    name="segment", role="segmenter", labels=("background", "lesion"), output="lesion probability per pixel",
    default_model="unet-efficientnetb2", default_batch=8, select=("iou", "dice"), ci_keys=stats.SEGMENT_KEYS,
    keep_metrics=("val_iou",), agreement_key="pixel_agreement", truth_is_mask=True, pack_key="masks",
    gates=(("iou", "IoU", flag("max_drop"), 1.0, ""),))
TASKS = {t.name: t for t in (CLASSIFY, SEGMENT)}


def get_task(name) -> Task:
    """The Task for a name (a Task passes through)."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise EdgebusError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
