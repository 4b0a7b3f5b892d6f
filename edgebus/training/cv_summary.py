"""A CV folder's summary: mean +- std over folds, pooled out-of-fold metrics with bootstrap intervals
(float, int8, the PTQ comparison, true-mask crops), int8 fidelity, BI-RADS descriptors, a multi-task
model's own masks; summary.json, report.md and the pooled confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, read_jsonl, write_json
from edgebus.core.manifest import Run


def _fold_records(out: Path, k: int) -> list[dict]:
    """The k folds' records in order; a CV with folds still missing is refused."""
    recs = {r["fold"]: r for r in read_jsonl(out / "folds.jsonl", key="fold")}
    missing = [f + 1 for f in range(k) if f not in recs]
    if missing:
        raise EdgebusError(f"{out}: fold(s) {missing} of {k} not done yet; "
                           "run 'edgebus cv' again with the same settings")
    return [recs[f] for f in range(k)]


def _mean_std(task, recs: list[dict]) -> dict:
    """Each test metric's mean and std over the folds (a fold where it is undefined left out), and its values."""
    per_fold = [task.flat(r["test"]) for r in recs]
    mean_std = {}
    for key in task.ci_keys:
        v = np.asarray([p[key] for p in per_fold if p[key] is not None], dtype=np.float64)
        mean_std[key] = {"mean": float(v.mean()) if len(v) else None,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": [p[key] for p in per_fold]}
    return mean_std


def _pooled(task, recs: list[dict], suffix: str, thr: float, n_boot: int, seed: int):
    """Every fold's out-of-fold cases of one kind (suffix: "" float, "_int8", ...) scored together, with
    bootstrap intervals; None when a fold lacks them."""
    parts = [task.fold_arrays(r, suffix) for r in recs]
    if any(p is None for p in parts):
        return None
    return task.pooled({key: np.concatenate([p[key] for p in parts]) for key in parts[0]}, thr, n_boot, seed)


def _add_int8(summary: dict, task, ident: dict, recs: list[dict], int8: tuple, thr: float) -> None:
    """The int8 model's pooled scores, and how closely it follows the float model case by case."""
    summary["pooled_int8"], summary["bootstrap_int8"] = int8
    summary["int8_source"] = ident.get("int8_source") or "ptq"
    if not task.truth_is_mask:
        p, q = (np.concatenate([r[key] for r in recs]) for key in ("test_prob", "test_prob_int8"))
        summary["int8_label_agreement"] = float(((p >= thr) == (q >= thr)).mean())
        summary["int8_fidelity"] = task.fidelity(p, q, thr)  # every out-of-fold case, by direction
    elif all("test_mask_iou_float_int8" in r for r in recs):
        iou = np.concatenate([r["test_mask_iou_float_int8"] for r in recs])
        summary["int8_fidelity"] = {"n": int(len(iou)), "mask_iou_mean": float(iou.mean()),
                                    "mask_iou_min": float(iou.min()), "images_below_0.9": int((iou < 0.9).sum())}


def _add_descriptors(summary: dict, recs: list[dict]) -> None:
    """Per-descriptor scores of the BI-RADS heads' out-of-fold outputs, when every fold has them."""
    if all("test_descriptor_prob" in r for r in recs):
        from edgebus.core.descriptors import DESCRIPTORS
        from edgebus.core.metrics import descriptor_metrics

        summary["descriptors"] = descriptor_metrics(np.concatenate([r["test_descriptors"] for r in recs]),
                                                    np.concatenate([r["test_descriptor_prob"] for r in recs]),
                                                    [d.name for d in DESCRIPTORS])


def _add_masks(summary: dict, recs: list[dict], n_boot: int, seed: int) -> None:
    """A multi-task classifier's own lesion masks, out of fold: mean IoU (float, int8) with intervals."""
    if all("test_mask_iou" in r for r in recs):
        from edgebus.core.stats import bootstrap_means

        summary["mask"] = {}
        for sfx in ("", "_int8"):
            if all(f"test_mask_iou{sfx}" in r for r in recs):
                iou = np.concatenate([r[f"test_mask_iou{sfx}"] for r in recs]).astype(np.float64)
                summary["mask"]["n"], summary["mask"][f"iou{sfx}"] = int(len(iou)), float(iou.mean())
                summary["mask"][f"bootstrap{sfx}"] = bootstrap_means({"iou": iou}, n_boot, seed)["iou"]


def _write_summary(out: Path, run: Run, ident: dict, summary: dict, recs: list[dict]) -> None:
    """The pooled confusion matrix (classification), summary.json and report.md."""
    from edgebus.reports.cv import cv_markdown
    from edgebus.reports.figures import confusion_matrix_plot

    if "confusion_matrix" in summary["pooled"]:
        confusion_matrix_plot(summary["pooled"]["confusion_matrix"], out / "confusion_matrix.png",
                              f"{ident['model']}: pooled out-of-fold, {summary['k']} folds "
                              f"(n={summary['pooled']['n']})")
    write_json(out / "summary.json", summary)
    atomic_write(out / "report.md", cv_markdown(summary, recs, run.manifest))


def summarize_cv(out: str | Path, n_boot: int = 2000) -> dict:
    """mean +- std over folds and pooled bootstrap CIs; writes summary.json, report.md and figures."""
    out = Path(out)
    run = Run.load(out)
    task = run.task
    if run.manifest.cv is None:
        raise EdgebusError(f"{out}: not a cross-validation folder; pass a folder 'edgebus cv' wrote")
    ident = run.manifest.cv["identity"]
    k = ident["folds"]
    recs = _fold_records(out, k)
    summary = {"task": task.name, "k": k, "model": ident["model"], "size": ident["size"], "lr": ident["lr"],
               "epochs": ident["epochs"], "crop_margin": ident.get("crop_margin"),
               "boxes_from": run.manifest.cv.get("boxes_from"), "group_by": ident.get("group_by", "case"),
               "mean_std": _mean_std(task, recs)}
    thr, seed = ident["threshold"], ident["seed"]
    summary["pooled"], summary["bootstrap"] = _pooled(task, recs, "", thr, n_boot, seed)
    int8 = _pooled(task, recs, "_int8", thr, n_boot, seed)
    if int8 is not None:
        _add_int8(summary, task, ident, recs, int8, thr)
    for suffix in ("_int8_ptq", "_oracle"):
        extra = _pooled(task, recs, suffix, thr, n_boot, seed)
        if extra is not None:
            summary[f"bootstrap{suffix}"] = extra[1]
    _add_descriptors(summary, recs)
    _add_masks(summary, recs, n_boot, seed)
    if all("crop_fallbacks" in r for r in recs):
        summary["crop_fallbacks"] = {k: sum(r["crop_fallbacks"].get(k, 0) for r in recs)
                                     for k in recs[0]["crop_fallbacks"]}
    _write_summary(out, run, ident, summary, recs)
    return summary


def finished_cv(cv_dir: Path, task: str):
    """(Run, folds.json, fold records in order) of a finished CV of `task`; one line for anything else."""
    from edgebus.core.io import read_json, read_jsonl
    from edgebus.core.manifest import Run

    if not (cv_dir / "manifest.json").is_file() or not (cv_dir / "folds.json").is_file():
        raise EdgebusError(f"{cv_dir}: not a cross-validation folder; pass the folder 'edgebus cv {task}' wrote")
    run = Run.load(cv_dir)
    if run.manifest.cv is None or run.task.name != task:
        raise EdgebusError(f"{cv_dir}: not a {task} cross-validation; pass the folder 'edgebus cv {task}' wrote")
    recs = sorted(read_jsonl(cv_dir / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    if len(recs) != run.manifest.cv["identity"]["folds"]:
        raise EdgebusError(f"{cv_dir}: not every fold is done; finish 'edgebus cv {task}' first")
    return run, read_json(cv_dir / "folds.json"), recs
