"""A CV folder's summary: mean +- std over folds, pooled out-of-fold metrics with bootstrap intervals
(float, int8, the PTQ comparison, true-mask crops), int8 fidelity, BI-RADS descriptors, a multi-task
model's own masks; summary.json, report.md and the pooled confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, read_jsonl, write_json
from edgebus.core.manifest import Run


def summarize_cv(out: str | Path, n_boot: int = 2000) -> dict:
    """mean +- std over folds and pooled bootstrap CIs; writes summary.json, report.md and figures."""
    from edgebus.reports.cv import cv_markdown
    from edgebus.reports.figures import confusion_matrix_plot

    out = Path(out)
    run = Run.load(out)
    task = run.task
    if run.manifest.cv is None:
        raise EdgebusError(f"{out}: not a cross-validation folder; pass a folder 'edgebus cv' wrote")
    ident = run.manifest.cv["identity"]
    recs = {r["fold"]: r for r in read_jsonl(out / "folds.jsonl", key="fold")}
    k = ident["folds"]
    missing = [f + 1 for f in range(k) if f not in recs]
    if missing:
        raise EdgebusError(f"{out}: fold(s) {missing} of {k} not done yet; run 'edgebus cv' again with the same settings")
    recs = [recs[f] for f in range(k)]
    per_fold = [task.flat(r["test"]) for r in recs]
    mean_std = {}
    for key in task.ci_keys:
        v = np.asarray([p[key] for p in per_fold if p[key] is not None], dtype=np.float64)
        mean_std[key] = {"mean": float(v.mean()) if len(v) else None,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": [p[key] for p in per_fold]}
    summary = {"task": task.name, "k": k, "model": ident["model"], "size": ident["size"], "lr": ident["lr"],
               "epochs": ident["epochs"], "crop_margin": ident.get("crop_margin"),
               "boxes_from": run.manifest.cv.get("boxes_from"), "group_by": ident.get("group_by", "case"),
               "mean_std": mean_std}
    thr, seed = ident["threshold"], ident["seed"]

    def pooled(suffix: str):
        parts = [task.fold_arrays(r, suffix) for r in recs]
        if any(p is None for p in parts):
            return None
        return task.pooled({key: np.concatenate([p[key] for p in parts]) for key in parts[0]}, thr, n_boot, seed)

    summary["pooled"], summary["bootstrap"] = pooled("")
    int8 = pooled("_int8")
    if int8 is not None:
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
    for suffix in ("_int8_ptq", "_oracle"):
        extra = pooled(suffix)
        if extra is not None:
            summary[f"bootstrap{suffix}"] = extra[1]
    if all("test_descriptor_prob" in r for r in recs):
        from edgebus.core.descriptors import DESCRIPTORS
        from edgebus.core.metrics import descriptor_metrics

        summary["descriptors"] = descriptor_metrics(np.concatenate([r["test_descriptors"] for r in recs]),
                                                    np.concatenate([r["test_descriptor_prob"] for r in recs]),
                                                    [d.name for d in DESCRIPTORS])
    if all("test_mask_iou" in r for r in recs):  # a multi-task classifier's own lesion masks, out of fold
        from edgebus.core.stats import bootstrap_means

        summary["mask"] = {}
        for sfx in ("", "_int8"):
            if all(f"test_mask_iou{sfx}" in r for r in recs):
                iou = np.concatenate([r[f"test_mask_iou{sfx}"] for r in recs]).astype(np.float64)
                summary["mask"]["n"], summary["mask"][f"iou{sfx}"] = int(len(iou)), float(iou.mean())
                summary["mask"][f"bootstrap{sfx}"] = bootstrap_means({"iou": iou}, n_boot, seed)["iou"]
    if all("crop_fallbacks" in r for r in recs):
        summary["crop_fallbacks"] = {k: sum(r["crop_fallbacks"].get(k, 0) for r in recs) for k in recs[0]["crop_fallbacks"]}
    if "confusion_matrix" in summary["pooled"]:
        confusion_matrix_plot(summary["pooled"]["confusion_matrix"], out / "confusion_matrix.png",
                              f"{ident['model']}: pooled out-of-fold, {k} folds (n={summary['pooled']['n']})")
    write_json(out / "summary.json", summary)
    atomic_write(out / "report.md", cv_markdown(summary, recs, run.manifest))
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
