"""Lesion shape from the segmenter's mask beside the classifier's score, and BI-RADS descriptors
measured on that mask.

A whole-frame classifier loses ranking on a scanner setting it never saw (on BrEaST, case folds
0.78 -> acquisition folds ~0.65 on the largest held-out setting), while scale-free shape numbers of
the lesion (edgebus.core.shape) keep theirs: they are measured in the frame's geometry, so zoom,
depth and frame size cancel. `edgebus fuse` runs each fold's int8 segmenter on its own test frames
through the cart's path (runtime.fusion.measure_lesion), so the fusion is scored out of fold on the
same folds as the classifier and fitted on exactly what the cart will measure. The classifier's
scores are made the same way (each fold's int8 model on the frame the cart would give it), not read
from the CV's records, so a preprocessing step added since the CV (the image-area cut) is in them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.metrics import roc_auc
from edgebus.training.cv_summary import finished_cv


class MaskOf:
    """A multi-task classifier's lesion-mask output, seen as a segmenter (input_for, run, threshold)."""

    def __init__(self, model):
        self.model, self.threshold, self.contract = model, model.mask_threshold, model.contract

    def input_for(self, gray, box=None):
        return self.model.input_for(gray, box)

    def run(self, x):
        return self.model.predict_all(x[None])["mask"][0]


def _segmenters(seg_cv: Path, recs: list, task: str = "segment") -> dict:
    """{fold: its int8 segmenter (or a multi-task classifier's mask), loaded as the cart loads it}."""
    from edgebus.runtime.ensemble import member_files
    from edgebus.runtime.model import ExportedModel

    out = {}
    for r in recs:
        files = member_files(r, seg_cv)[0]
        if "model_int8.tflite" not in files:
            raise EdgebusError(f"{seg_cv}: fold {r['fold']} has no int8 segmenter (the cart runs int8); re-run "
                               f"'edgebus cv {task}' with {flag('int8')}")
        m = ExportedModel(files["model_int8.tflite"], task)
        if task == "classify" and not m.has_mask:
            raise EdgebusError(f"{seg_cv}: a classifier CV whose files give no lesion mask; pass a segment CV "
                               "('edgebus cv segment') or a multi-task one (efficientnet-lite0-segaux)")
        out[r["fold"]] = m if task == "segment" else MaskOf(m)
    return out


def _classifiers(cls_cv: Path, recs: list, threshold: float) -> dict:
    """{fold: its int8 classifier (a merged CV's fold: its members averaged), loaded as the cart loads it}."""
    from edgebus.runtime.ensemble import EnsembleModel, member_files
    from edgebus.runtime.model import ExportedModel

    out = {}
    for r in recs:
        files = [m.get("model_int8.tflite") for m in member_files(r, cls_cv)]
        if None in files:
            raise EdgebusError(f"{cls_cv}: fold {r['fold']} has no int8 classifier (the cart runs int8); re-run "
                               f"'edgebus cv classify' with {flag('int8')}")
        out[r["fold"]] = ExportedModel(files[0], "classify") if len(files) == 1 else EnsembleModel(files, threshold)
    return out


def fusion_inputs(cls_cv, seg_cv) -> dict:
    """The out-of-fold inputs of a fusion, from a classifier CV and a segment CV on the same folds,
    both int8 (what the cart runs): ids, labels y, each case's fold,
    feature rows x (edgebus.core.fusion.feature_rows), lesion measurements m (MEASURES), BI-RADS
    truth (N, len(DESCRIPTORS), -1 unknown; None without a descriptor sheet) and the segmenters."""
    from edgebus.core import fusion
    from edgebus.data.arrays import run_dataset
    from edgebus.data.preprocess import cut_area, lesion_box, load_gray
    from edgebus.core.manifest import Run
    from edgebus.runtime.fusion import measure_lesion

    cls_cv, seg_cv = Path(cls_cv), Path(seg_cv)
    c_run, c_folds, c_recs = finished_cv(cls_cv, "classify")
    s_task = "classify" if (Run.load(seg_cv).task.name == "classify") else "segment"  # a multi-task CV gives its own masks
    s_run, s_folds, s_recs = finished_cv(seg_cv, s_task)
    if c_run.manifest.data.fingerprint != s_run.manifest.data.fingerprint:
        raise EdgebusError(f"{seg_cv}: made on other data than {cls_cv} (fingerprint differs); run both on the same set")
    if c_folds["folds"] != s_folds["folds"]:
        raise EdgebusError(f"{seg_cv}: its folds differ from {cls_cv}'s; run both with the same {flag('folds')}, "
                           f"{flag('seed')} (or {flag('fold_seed')}) and {flag('group_by')}")
    if not all("test_prob_int8" in r for r in c_recs):
        raise EdgebusError(f"{cls_cv}: has no int8 scores (the cart runs int8); re-run 'edgebus cv classify' with "
                           f"{flag('int8')}")
    segmenters = _segmenters(seg_cv, s_recs, s_task)
    classifiers = _classifiers(cls_cv, c_recs, c_run.manifest.threshold)
    ds = run_dataset(c_run)
    by_id = {c.case_id: c for c in ds.lesions()}
    fold_of = {i: r["fold"] for r in s_recs for i in r["test_ids"]}
    ids = [i for r in c_recs for i in r["test_ids"]]
    p, shapes, echoes = [], [], []
    for i in ids:  # each case as the cart sees it: the frame's image area, its fold's int8 models
        seg, cls = segmenters[fold_of[i]], classifiers[fold_of[i]]
        gray = cut_area(load_gray(by_id[i].image))[0]
        prob = seg.run(seg.input_for(gray))[..., 0]
        box = lesion_box(prob >= seg.threshold) if "crop" in cls.contract else None
        p.append(float(np.ravel(cls.run(cls.input_for(gray, box)))[0]))
        shape, echo = measure_lesion(prob, gray, seg.threshold)
        shapes.append(shape)
        echoes.append(echo)
    p = np.asarray(p)
    truth = np.asarray([by_id[i].descriptors for i in ids]) if ds.has_descriptors else None
    return {"ids": ids, "y": np.concatenate([r["test_label"] for r in c_recs]).astype(int),
            "fold": np.concatenate([[r["fold"]] * len(r["test_ids"]) for r in c_recs]),
            "x": fusion.feature_rows(p, shapes), "m": fusion.measure_rows(shapes, echoes), "shapes": shapes,
            "descriptors": truth, "group_by": c_folds.get("group_by", "case"), "segmenters": segmenters,
            "root": c_run.manifest.data.root,
            "sources": {"classifier": "each fold's int8 classifier, on the cart's path",
                        "shape": "each fold's int8 segmenter, on the cart's path"}}


def fold_models(inputs: dict, kind: str = "fused") -> dict:
    """{fold: the fusion model fitted on the other folds' out-of-fold values}: what scores that
    fold's cases out of fold (edgebus.core.fusion.cross_fitted, one model per fold)."""
    from edgebus.core import fusion

    x, y, fold = inputs["x"], inputs["y"], inputs["fold"]
    return {int(f): fusion.fit(x[fold != f], y[fold != f], kind) for f in np.unique(fold)}


def score_descriptors(inputs: dict) -> list:
    """Each BI-RADS descriptor predicted from the lesion's measurements (edgebus.core.fusion.MEASURES),
    scored cross-fitted on the cases whose sheet cell is known: accuracy, Cohen's kappa with its
    bootstrap interval, AUC. A descriptor is shipped (the cart says it) when the interval's lower
    end is above 0: agreement beyond chance shown on these folds. Each shipped one carries its model
    fitted on every known case. [] without a descriptor sheet."""
    from edgebus.core import fusion
    from edgebus.core.descriptors import DESCRIPTORS
    from edgebus.core.stats import bootstrap_kappa

    truth, m, fold = inputs["descriptors"], inputs["m"], inputs["fold"]
    if truth is None:
        return []
    out = []
    for j, d in enumerate(DESCRIPTORS):
        t = truth[:, j]
        known = t >= 0
        row = {"name": d.name, "column": d.column, "labels": list(d.labels), "n": int(known.sum()),
               "present": int((t == 1).sum()), "shipped": False}
        prob = np.full(len(t), np.nan)
        try:
            for f in np.unique(fold):
                train = known & (fold != f)
                prob[fold == f] = fusion.predict(fusion.fit_logistic(m[train], t[train], fusion.MEASURES, d.name),
                                                 m[fold == f], fusion.MEASURES)
        except EdgebusError:  # a fold's other folds hold one class only: not scorable here
            out.append(row | {"note": "one class only in some fold's training part"})
            continue
        y, q = t[known], prob[known]
        kappa = bootstrap_kappa(y, q >= 0.5)
        row.update(accuracy=float(((q >= 0.5) == (y == 1)).mean()), kappa=kappa, auc=roc_auc(y, q),
                   shipped=kappa["lo"] is not None and kappa["lo"] > 0)
        if row["shipped"]:
            row["model"] = fusion.fit_logistic(m[known], y, fusion.MEASURES, d.name)
        out.append(row)
    return out


def fuse_cv(cls_cv, seg_cv, out=None, target: float = 0.9, log=print, overwrite: bool = False) -> dict:
    """Score, out of fold, the classifier alone, the shape of the segmenter's mask alone and the two
    fused (edgebus.core.fusion). Every model is fitted on the other folds' out-of-fold values
    only; the operating point is then chosen cross-fitted as `edgebus operating-point` does. Writes
    fusion.json / fusion.md (default: CLS_CV/fusion/) with the fused model fitted on every case."""
    from edgebus.core import fusion
    from edgebus.core.calibration import crossfit_operating_point
    from edgebus.core.io import atomic_write, check_report, make_dir, write_json
    from edgebus.evaluation.calibration_choice import choose
    from edgebus.core.stats import bootstrap_classification
    from edgebus.core.metrics import check_target
    from edgebus.export.model_card import subgroups

    check_target(target)
    out = Path(out) if out else Path(cls_cv) / "fusion"
    ident = {"classifier_folds_sha256": folds_sha256(cls_cv), "segment_folds_sha256": folds_sha256(seg_cv),
             "target_sensitivity": target}
    inp = fusion_inputs(cls_cv, seg_cv)  # checks the two CVs first
    ident = check_report(out / "fusion.json", ident, overwrite)
    x, y, fold, shapes = inp["x"], inp["y"], inp["fold"], inp["shapes"]
    scores = {k: fusion.cross_fitted(x, y, fold, k) for k in fusion.KINDS}
    boot = {k: bootstrap_classification(y, v)["auc"] for k, v in scores.items()}
    per_fold = {k: [roc_auc(y[fold == f], v[fold == f]) for f in np.unique(fold)] for k, v in scores.items()}
    choice = choose(y, scores["fused"], fold, inp["ids"], inp["root"])  # what the cart shows: the fused probability
    ops = {k: {kk: vv for kk, vv in crossfit_operating_point(y, scores[k], fold, target, method=m).items()
               if kk != "reliability"} for k, m in (("classifier", "platt"), ("fused", choice["chosen"]))}
    result = {"classifier_cv": str(cls_cv), "segment_cv": str(seg_cv), "n": int(len(y)), "malignant": int(y.sum()),
              "folds": int(len(np.unique(fold))), "group_by": inp["group_by"], "sources": inp["sources"],
              "lesion_found": int(sum(s is not None for s in shapes)),
              "auc": boot, "auc_per_fold": per_fold, "operating_point": ops, "calibration": choice,
              "model": fusion.fit(x, y, "fused"), "descriptors": score_descriptors(inp),
              "note": "every score is cross-fitted: each fold's model was fitted on the other folds' out-of-fold values",
              "inputs": ident}
    result["subgroups"], result["subgroups_note"] = subgroups(inp["ids"], y, scores["fused"],
                                                              ops["fused"]["threshold"], inp["root"])
    out = make_dir(out, "fusion folder")
    write_json(out / "fusion.json", result)
    atomic_write(out / "fusion.md", fusion_md(result))
    f = ops["fused"]["cross_fitted"]
    log(f"AUC out of fold: classifier {boot['classifier']['value']:.3f}, shape {boot['shape']['value']:.3f}, fused "
        f"{boot['fused']['value']:.3f}; fused at sensitivity {target}: cross-fitted sensitivity {f['sensitivity']:.3f}, "
        f"specificity {f['specificity']:.3f}; {out / 'fusion.md'}")
    return result


def folds_sha256(cv) -> str:
    """sha256 of a CV's folds.jsonl: its fold models' hashes and out-of-fold scores, so what a fusion was made from."""
    from edgebus.core.io import sha256_file

    f = Path(cv) / "folds.jsonl"
    if not f.is_file():
        raise EdgebusError(f"{cv}: no folds.jsonl; pass a CV folder ('edgebus cv classify|segment')")
    return sha256_file(f)


def fusion_md(r: dict) -> str:
    from edgebus.core.calibration import per_fold_text
    from edgebus.evaluation.calibration_choice import calibration_md
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
    per = per_fold_text(r["operating_point"]["fused"]["cross_fitted"])
    if per:
        lines += ["", f"Fused sensitivity per held-out fold at its cross-fitted threshold (cancers in it): {per}: "
                  "the spread a new site may see."]
    ece = r["operating_point"]["fused"]["ece"]
    chosen = r["calibration"]["chosen"]
    lines += ["", f"Calibration of the fused probability, cross-fitted: ECE {ece['raw']:.3f} as the fusion gives it, "
              f"{ece['calibrated_cross_fitted']:.3f} after the calibration chosen out of fold ({chosen}), which the "
              "cart applies to the probability it shows (the threshold is the same either way)."]
    lines += [""] + calibration_md(r["calibration"], "fused probability")
    m = r["model"]
    if r.get("descriptors"):
        lines += ["", "BI-RADS descriptors measured on the segmenter's mask (its shape, and the echo pattern beside it: "
                  "edgebus.core.shape, edgebus.core.echo), each a logistic model scored cross-fitted against the sheet "
                  "on the cases it annotates; the cart says the ones whose kappa interval is above 0:", "",
                  "| descriptor | n (present) | accuracy | Cohen's kappa [95% CI] | AUC | on the cart |", "|---|---|---|---|---|---|"]
        for d in r["descriptors"]:
            if "kappa" not in d:
                lines.append(f"| {d['labels'][1]} | {d['n']} ({d['present']}) | | | | no: {d['note']} |")
                continue
            auc = "n/a" if d["auc"] is None else f"{d['auc']:.3f}"
            lines.append(f"| {d['labels'][1]} | {d['n']} ({d['present']}) | {d['accuracy']:.3f} | "
                         f"{interval_text(d['kappa'])} | {auc} | {'yes' if d['shipped'] else 'no'} |")
    if "subgroups" in r:  # where the fused cart is weaker: which cancers it misses
        from edgebus.export.model_card import subgroup_md

        lines += ["", f"The fused score by subgroup, {r['subgroups_note']}:", "", *subgroup_md(r["subgroups"])]
        lines.pop()
    lines += ["", "The fused model fitted on every case (standardised inputs):", "",
              "| input | weight |", "|---|---|", *[f"| {n} | {w:+.3f} |" for n, w in zip(m["inputs"], m["weights"])],
              f"| intercept | {m['intercept']:+.3f} |", ""]
    return "\n".join(lines)
