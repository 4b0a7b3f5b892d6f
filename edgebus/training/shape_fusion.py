"""Lesion shape from the segmenter's mask beside the classifier's score.

A whole-frame classifier loses ranking on a scanner setting it never saw (on BrEaST, case folds
0.78 -> acquisition folds ~0.65 on the largest held-out setting), while scale-free shape numbers of
the lesion (edgebus.core.shape) keep theirs: they are measured in the frame's geometry, so zoom,
depth and frame size cancel. A segment CV records the shape of every out-of-fold predicted mask
(`measure`), so a fusion of the two can be scored out of fold on the same folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import roc_auc
from edgebus.core.shape import shape_features
from edgebus.data.preprocess import lesion_in_frame


def measure(probs, frames_hw: list, threshold: float) -> list:
    """Shape features (edgebus.core.shape.FEATURES, rounded) of each predicted (H, W, 1) map's lesion
    in its frame (h, w); None where nothing reaches the threshold."""
    out = []
    for p, hw in zip(np.asarray(probs), frames_hw):
        mask = lesion_in_frame(p[..., 0] if p.ndim == 3 else p, tuple(hw), threshold)
        f = None if mask is None else shape_features(mask)
        out.append(None if f is None else [round(float(v), 5) for v in f])
    return out


def _cv(cv_dir: Path, task: str):
    from edgebus.core.io import read_json, read_jsonl
    from edgebus.core.manifest import Run

    if not (cv_dir / "manifest.json").is_file() or not (cv_dir / "folds.json").is_file():
        raise EdgebusError(f"{cv_dir}: not a cross-validation folder; pass the folder 'edgebus cv {task}' wrote")
    run = Run.load(cv_dir)
    if run.manifest.cv is None or run.task.name != task:
        raise EdgebusError(f"{cv_dir}: not a {task} cross-validation; pass the folder 'edgebus cv {task}' wrote")
    recs = sorted(read_jsonl(cv_dir / "folds.jsonl"), key=lambda r: r["fold"])
    if len(recs) != run.manifest.cv["identity"]["folds"]:
        raise EdgebusError(f"{cv_dir}: not every fold is done; finish 'edgebus cv {task}' first")
    return run, read_json(cv_dir / "folds.json"), recs


def fusion_inputs(cls_cv, seg_cv) -> dict:
    """The out-of-fold inputs of a fusion, from a classifier CV and a segment CV on the same folds
    (int8 where both scored it: what the cart runs): ids, labels y, classifier probabilities p,
    each case's fold, feature rows x (edgebus.core.fusion.feature_rows) and what they came from."""
    from edgebus.core import fusion

    cls_cv, seg_cv = Path(cls_cv), Path(seg_cv)
    c_run, c_folds, c_recs = _cv(cls_cv, "classify")
    s_run, s_folds, s_recs = _cv(seg_cv, "segment")
    if c_run.manifest.data.fingerprint != s_run.manifest.data.fingerprint:
        raise EdgebusError(f"{seg_cv}: made on other data than {cls_cv} (fingerprint differs); run both on the same set")
    if c_folds["folds"] != s_folds["folds"]:
        raise EdgebusError(f"{seg_cv}: its folds differ from {cls_cv}'s; run both with the same --folds, --seed "
                           "(or --fold-seed) and --group-by")
    shape_key = "test_shape_int8" if all("test_shape_int8" in r for r in s_recs) else "test_shape"
    if not all(shape_key in r for r in s_recs):
        raise EdgebusError(f"{seg_cv}: made by an older edgebus that did not measure the masks' shapes; "
                           "re-run 'edgebus cv segment' into a new --out")
    prob_key = "test_prob_int8" if all("test_prob_int8" in r for r in c_recs) else "test_prob"
    shape_of = {i: s for r in s_recs for i, s in zip(r["test_ids"], r[shape_key])}
    ids = [i for r in c_recs for i in r["test_ids"]]
    p = np.concatenate([r[prob_key] for r in c_recs])
    return {"ids": ids, "y": np.concatenate([r["test_label"] for r in c_recs]).astype(int), "p": p,
            "fold": np.concatenate([[r["fold"]] * len(r["test_ids"]) for r in c_recs]),
            "x": fusion.feature_rows(p, [shape_of[i] for i in ids]), "shapes": [shape_of[i] for i in ids],
            "group_by": c_folds.get("group_by", "case"), "sources": {"classifier": prob_key, "shape": shape_key},
            "segment_run": s_run, "segment_records": s_recs}


def fold_models(inputs: dict, kind: str = "fused") -> dict:
    """{fold: the fusion model fitted on the other folds' out-of-fold values}: what scores that
    fold's cases out of fold (edgebus.core.fusion.cross_fitted, one model per fold)."""
    from edgebus.core import fusion

    x, y, fold = inputs["x"], inputs["y"], inputs["fold"]
    return {int(f): fusion.fit(x[fold != f], y[fold != f], kind) for f in np.unique(fold)}


def fuse_cv(cls_cv, seg_cv, out=None, target: float = 0.9, log=print) -> dict:
    """Score, out of fold, the classifier alone, the shape of the segmenter's mask alone and the two
    fused (edgebus.core.fusion). Every model is fitted on the other folds' out-of-fold values
    only; the operating point is then chosen cross-fitted as `edgebus operating-point` does. Writes
    fusion.json / fusion.md (default: CLS_CV/fusion/) with the fused model fitted on every case."""
    from edgebus.core import fusion
    from edgebus.core.calibration import crossfit_operating_point
    from edgebus.core.io import atomic_write, make_dir, write_json
    from edgebus.core.stats import bootstrap_classification

    inp = fusion_inputs(cls_cv, seg_cv)
    x, y, fold, shapes = inp["x"], inp["y"], inp["fold"], inp["shapes"]
    scores = {k: fusion.cross_fitted(x, y, fold, k) for k in fusion.KINDS}
    boot = {k: bootstrap_classification(y, v)["auc"] for k, v in scores.items()}
    per_fold = {k: [roc_auc(y[fold == f], v[fold == f]) for f in np.unique(fold)] for k, v in scores.items()}
    ops = {k: {kk: vv for kk, vv in crossfit_operating_point(y, scores[k], fold, target).items() if kk != "reliability"}
           for k in ("classifier", "fused")}
    result = {"classifier_cv": str(cls_cv), "segment_cv": str(seg_cv), "n": int(len(y)), "malignant": int(y.sum()),
              "folds": int(len(np.unique(fold))), "group_by": inp["group_by"], "sources": inp["sources"],
              "lesion_found": int(sum(s is not None for s in shapes)),
              "auc": boot, "auc_per_fold": per_fold, "operating_point": ops,
              "model": fusion.fit(x, y, "fused"),
              "note": "every score is cross-fitted: each fold's model was fitted on the other folds' out-of-fold values"}
    out = make_dir(Path(out) if out else Path(cls_cv) / "fusion", "fusion folder")
    write_json(out / "fusion.json", result)
    atomic_write(out / "fusion.md", fusion_md(result))
    f = ops["fused"]["cross_fitted"]
    log(f"AUC out of fold: classifier {boot['classifier']['value']:.3f}, shape {boot['shape']['value']:.3f}, fused "
        f"{boot['fused']['value']:.3f}; fused at sensitivity {target}: cross-fitted sensitivity {f['sensitivity']:.3f}, "
        f"specificity {f['specificity']:.3f}; {out / 'fusion.md'}")
    return result


def fusion_md(r: dict) -> str:
    from edgebus.core.stats import interval_text

    words = {"classifier": "the classifier alone", "shape": "the shape of the segmenter's mask alone",
             "fused": "classifier + shape (fused)"}
    folds = ("acquisition: each frame size (scanner + preset) in one test fold only, so every score is that of a "
             "scanner setting no model saw" if r["group_by"] == "acquisition" else "case")
    lines = [f"# Classifier + lesion shape, scored out of fold ({r['n']} cases, {r['malignant']} malignant)", "",
             f"Classifier CV `{r['classifier_cv']}` ({r['sources']['classifier']}), segment CV `{r['segment_cv']}` "
             f"({r['sources']['shape']}); the same {r['folds']} folds, grouped by {folds}. The segmenter found a "
             f"lesion in {r['lesion_found']} of {r['n']} frames. {r['note'].capitalize()}.", "",
             "| scores | AUC [95% CI] | AUC per held-out fold | sensitivity / specificity at the cross-fitted "
             f"threshold for sensitivity {r['operating_point']['fused']['target_sensitivity']} [95% CI] |",
             "|---|---|---|---|"]
    for k, text in words.items():
        per = ", ".join("n/a" if v is None else f"{v:.3f}" for v in r["auc_per_fold"][k])
        op = r["operating_point"].get(k)
        cell = ""
        if op:
            c = op["cross_fitted"]
            cell = (f"{c['sensitivity']:.3f} [{c['sensitivity_ci'][0]:.3f}, {c['sensitivity_ci'][1]:.3f}] / "
                    f"{c['specificity']:.3f} [{c['specificity_ci'][0]:.3f}, {c['specificity_ci'][1]:.3f}]")
        lines.append(f"| {text} | {interval_text(r['auc'][k])} | {per} | {cell} |")
    ece = r["operating_point"]["fused"]["ece"]
    lines += ["", f"Calibration of the fused probability, cross-fitted: ECE {ece['raw']:.3f} as it is (what the cart "
              f"reports); {ece['calibrated_cross_fitted']:.3f} with a Platt step on top, which the cart does not apply."]
    m = r["model"]
    lines += ["", "The fused model fitted on every case (standardised inputs):", "",
              "| input | weight |", "|---|---|", *[f"| {n} | {w:+.3f} |" for n, w in zip(m["inputs"], m["weights"])],
              f"| intercept | {m['intercept']:+.3f} |", ""]
    return "\n".join(lines)
