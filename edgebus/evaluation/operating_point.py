"""A sensitivity-first operating point: the study calls a false "benign" the worst error, so the
decision threshold is chosen to reach a target malignant sensitivity (default 0.90), then stored in
the run; export embeds it in every model and the cart runtime applies it.

Chosen on a CV's pooled out-of-fold predictions (`cv_operating_point`, 252 cases here), with a
calibration and a cross-fitted estimate of what it gives on unseen cases; or, the older way, on the
run's own validation part (`set_operating_point`, ~25 images: an estimate with a wide error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.calibration import per_fold_text
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.manifest import Run
from edgebus.core.metrics import classification_metrics, expected_calibration_error, threshold_for_sensitivity


def set_operating_point(run_dir, target: float = 0.9, log=print) -> dict:
    """Pick the threshold on the run's validation split, record sensitivity/specificity on val and
    test at that threshold plus calibration (ECE), and make it the run's threshold (the run's Keras
    metrics are re-stated at it)."""
    run = Run.load(run_dir)
    if run.task.name != "classify":
        raise EdgebusError(f"{run.path}: an operating point applies to classifiers; this is a {run.task.name} run")
    if not 0 < target <= 1:
        raise EdgebusError(f"{flag('target_sensitivity')} {target}: give a value in (0, 1], e.g. 0.9")
    if run.manifest.exports:
        raise EdgebusError(f"{run.path}: already exported; set the operating point before 'edgebus export' "
                           "so the threshold is embedded in the models (or train a new run)")
    from edgebus.data.arrays import load_run_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    model = load_run_model(run)
    data = load_run_arrays(run, ("val", "test"))
    (xva, yva), (xte, yte) = data["val"][:2], data["test"][:2]
    pva, pte = predict(model, xva).ravel(), predict(model, xte).ravel()
    op = threshold_for_sensitivity(yva, pva, target)
    thr = op["threshold"]
    test = classification_metrics(yte, pte, thr)
    result = {
        "chosen_on": "val",
        **op,
        "val_ece": expected_calibration_error(yva, pva),
        "test": {"sensitivity": test["per_class"]["malignant"]["recall"],
                 "specificity": test["per_class"]["benign"]["recall"], "accuracy": test["accuracy"],
                 "ece": expected_calibration_error(yte, pte), "n": test["n"]},
    }
    run.manifest.threshold = thr
    run.manifest.operating_point = result
    run.manifest.metrics["keras"] = {"val": classification_metrics(yva, pva, thr), "test": test}
    run.stage("operating_point", target=target)
    run.save()
    log(f"threshold {thr:.4f}: val sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f}; "
        f"test sensitivity {result['test']['sensitivity']:.3f}, specificity {result['test']['specificity']:.3f} "
        f"(n={test['n']}); ECE val {result['val_ece']:.3f}, test {result['test']['ece']:.3f}")
    return result


SOURCES = ("int8", "float")


def _oof(cv_dir: Path, source: str):
    """Pooled out-of-fold (labels, probabilities, folds) of a classifier CV folder and the source used."""
    from edgebus.core.io import read_jsonl

    recs = sorted(read_jsonl(cv_dir / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    if not recs:
        raise EdgebusError(f"{cv_dir}: no folds.jsonl results; pass a folder 'edgebus cv classify' wrote")
    if "test_label" not in recs[0]:
        raise EdgebusError(f"{cv_dir}: a segmentation CV; an operating point applies to classifiers")
    have_int8 = all("test_prob_int8" in r for r in recs)
    if source == "auto":
        source = "int8" if have_int8 else "float"
    if source not in SOURCES:
        raise EdgebusError(f"{flag('source')} '{source}': choose int8, float or auto")
    if source == "int8" and not have_int8:
        raise EdgebusError(f"{cv_dir}: no int8 predictions per fold; run 'edgebus cv classify ... {flag('int8')}' or "
                           f"use {flag('source')} float")
    key = "test_prob_int8" if source == "int8" else "test_prob"
    y = np.concatenate([r["test_label"] for r in recs])
    p = np.concatenate([r[key] for r in recs])
    fold = np.concatenate([[r["fold"]] * len(r["test_label"]) for r in recs])
    return y, p, fold, source


def cv_operating_point(cv_dir, target: float = 0.9, source: str = "auto", out=None, log=print,
                       overwrite: bool = False) -> dict:
    """The operating point and calibration chosen on a CV's pooled out-of-fold predictions (int8 by
    default when the CV scored it: what the cart runs), with the cross-fitted estimate of its
    sensitivity and specificity [95% CI]. Writes operating_point.json / .md and reliability.png to
    `out` (default: the CV folder) and, in a CV run directory, records it in the manifest."""
    from edgebus.core.calibration import crossfit_operating_point
    from edgebus.core.io import atomic_write, check_report, write_json
    from edgebus.core.manifest import MANIFEST
    from edgebus.evaluation.calibration_choice import choose
    from edgebus.reports.figures import reliability_plot
    from edgebus.evaluation.shape_fusion import folds_sha256

    cv_dir = Path(cv_dir)
    if not 0 < target <= 1:
        raise EdgebusError(f"{flag('target_sensitivity')} {target}: give a value in (0, 1], e.g. 0.9")
    out = Path(out or cv_dir)
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another {flag('out')}")
    y, p, fold, source = _oof(cv_dir, source)
    ident = check_report(out / "operating_point.json", {"folds_sha256": folds_sha256(cv_dir),
                                                        "target_sensitivity": target, "source": source}, overwrite)
    choice = choose(y, p, fold, *_ids_and_root(cv_dir))
    op = crossfit_operating_point(y, p, fold, target, method=choice["chosen"])
    op.update(chosen_on="cv out-of-fold", source=source, cv=str(cv_dir), inputs=ident, calibration_choice=choice)
    write_json(out / "operating_point.json", op)
    reliability_plot({"raw": op["reliability"]["raw"],
                      f"{choice['chosen']}, cross-fitted": op["reliability"]["calibrated_cross_fitted"]},
                     out / "reliability.png", f"{cv_dir.name}: {source} out-of-fold (n={op['n']})")
    atomic_write(out / "operating_point.md", operating_point_md(op))
    if (cv_dir / MANIFEST).is_file() and out == cv_dir:
        run = Run.load(cv_dir)
        run.manifest.operating_point = {k: v for k, v in op.items() if k != "reliability"}
        run.add_artifact("operating_point.json", "operating_point")  # what --from-cv checks it by
        run.save()
        if source == "int8":
            _cv_card(cv_dir, log)
    est = op["cross_fitted"]
    log(f"threshold {op['threshold']:.4f} ({source} output; {op['threshold_calibrated']:.4f} calibrated): cross-fitted "
        f"sensitivity {est['sensitivity']:.3f} [{est['sensitivity_ci'][0]:.3f}, {est['sensitivity_ci'][1]:.3f}], "
        f"specificity {est['specificity']:.3f} [{est['specificity_ci'][0]:.3f}, {est['specificity_ci'][1]:.3f}] "
        f"(n={op['n']}); calibration {choice['chosen']} (lowest cross-fitted log loss): ECE {op['ece']['raw']:.3f} raw, "
        f"{op['ece']['calibrated_cross_fitted']:.3f} calibrated")
    return op


def _ids_and_root(cv_dir: Path) -> tuple:
    """(each out-of-fold case's id in _oof's order, the data folder the CV recorded) or (None, None)."""
    from edgebus.core.io import read_jsonl
    from edgebus.core.manifest import MANIFEST

    recs = sorted(read_jsonl(cv_dir / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    if not all("test_ids" in r for r in recs) or not (cv_dir / MANIFEST).is_file():
        return None, None
    data = Run.load(cv_dir).manifest.data
    return [i for r in recs for i in r["test_ids"]], data and data.root


def _cv_card(cv_dir: Path, log) -> None:
    """The fold ensemble's model card (bundles made from the CV carry it); a CV that kept no int8
    fold models gets none, with a line saying so."""
    from edgebus.export.model_card import write_cv_model_card

    try:
        log(f"model card: {write_cv_model_card(cv_dir)}")
    except EdgebusError as e:
        log(f"no model card: {e}")


def operating_point_md(op: dict) -> str:
    from edgebus.evaluation.calibration_choice import calibration_md

    est, ins = op["cross_fitted"], op["in_sample"]
    cal = op["calibration"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    method = (op.get("calibration_choice") or {}).get("chosen", "platt")
    shown = ("no calibration (the raw output is shown)" if not cal else
             f"calibration ({method}) p' = sigmoid({cal['a']:.4f} * logit(p) {'-' if cal['b'] < 0 else '+'} {abs(cal['b']):.4f})")
    return "\n".join([
        f"# Operating point: {op['target_sensitivity']:.2f} malignant sensitivity, chosen out-of-fold", "",
        f"Pooled out-of-fold {op['source']} predictions of `{op['cv']}` ({op['folds']} folds, n={op['n']}). "
        f"{shown[0].upper()}{shown[1:]}; threshold {op['threshold']:.4f} on the "
        f"model's output ({op['threshold_calibrated']:.4f} on the calibrated probability).", "",
        "| | sensitivity | specificity |", "|---|---|---|",
        f"| cross-fitted: calibrator and threshold fitted on the other folds, applied to each fold [95% CI] | "
        f"{f(est['sensitivity'])} [{f(est['sensitivity_ci'][0])}, {f(est['sensitivity_ci'][1])}] | "
        f"{f(est['specificity'])} [{f(est['specificity_ci'][0])}, {f(est['specificity_ci'][1])}] |",
        f"| in-sample: the shipped threshold on the predictions it was chosen on (optimistic) | {f(ins['sensitivity'])} | "
        f"{f(ins['specificity'])} |", "",
        f"Cross-fitted sensitivity per held-out fold (cancers in it): {per_fold_text(est)}. One fold is one unseen "
        f"part of the data (with `{flag('group_by')} acquisition`, one scanner setting): the spread is what a new "
        "site may see.", "",
        f"Expected calibration error (10 bins): {f(op['ece']['raw'])} raw, {f(op['ece']['calibrated_cross_fitted'])} after "
        f"cross-fitted calibration ({method}).", "", "![reliability](reliability.png)", "",
        *(calibration_md(op["calibration_choice"], "malignancy probability") if op.get("calibration_choice") else [])])


def cv_points(cv_dir, target: float) -> dict:
    """{source: the operating point chosen on the CV's pooled out-of-fold scores of that source}, for
    int8 and float where the CV scored them (export.threshold.file_point reads them)."""
    from edgebus.core.calibration import crossfit_operating_point
    from edgebus.evaluation.calibration_choice import choose

    out = {}
    for source in SOURCES:
        try:
            y, p, fold, _ = _oof(Path(cv_dir), source)
        except EdgebusError:
            continue
        o = crossfit_operating_point(y, p, fold, target, n_boot=200, method=choose(y, p, fold)["chosen"])
        out[source] = {"threshold": o["threshold"], "calibration": o["calibration"], "n": o["n"],
                       "sensitivity": o["in_sample"]["sensitivity"], "specificity": o["in_sample"]["specificity"]}
    return out


def trusted_cv_point(run: Run, cv_dir: Path) -> dict:
    """The operating point a CV folder hands a run (runtime.ensemble.cv_point: recorded, sha256- and
    range-checked), refused unless the CV saw this data set (fingerprint), this model and this
    preprocessing contract. A CV folder is untrusted input."""
    from edgebus.runtime.ensemble import cv_point

    if not (cv_dir / "manifest.json").is_file():
        raise EdgebusError(f"{cv_dir}: not a CV folder (no manifest.json); pass the folder 'edgebus cv classify' wrote, "
                           "after 'edgebus operating-point' chose its operating_point.json")
    cv = Run.load(cv_dir)
    if cv.manifest.cv is None or cv.task.name != "classify":
        raise EdgebusError(f"{cv_dir}: not a classifier CV; pass the folder 'edgebus cv classify' wrote")
    op = cv_point(cv)
    if op is None:
        raise EdgebusError(f"{cv_dir}: no operating_point.json; run 'edgebus operating-point {cv_dir}' first")
    why = []
    if (cv.manifest.data and cv.manifest.data.fingerprint) != (run.manifest.data and run.manifest.data.fingerprint):
        why.append("another data set (data fingerprint)")
    if cv.manifest.model is None or run.manifest.model is None or cv.manifest.model.name != run.manifest.model.name:
        why.append(f"another model ({cv.manifest.model and cv.manifest.model.name} vs "
                   f"{run.manifest.model and run.manifest.model.name})")
    if cv.manifest.preprocess != run.manifest.preprocess:
        a, b = cv.manifest.preprocess or {}, run.manifest.preprocess or {}
        diff = sorted(k for k in {**a, **b} if a.get(k) != b.get(k))
        why.append("another preprocessing contract (" + "; ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in diff) + ")")
    if why:
        raise EdgebusError(f"{cv_dir}: made with {'; '.join(why)} than {run.path}; an operating point transfers only "
                           "between models trained the same way on the same data")
    return op


def apply_cv_operating_point(run_dir, cv_dir, log=print) -> dict:
    """Give a run (same model and input size as the CV, trained the same way) the operating point
    and calibration chosen on the CV's out-of-fold predictions; export then embeds both."""
    run, cv_dir = Run.load(run_dir), Path(cv_dir)
    if run.task.name != "classify":
        raise EdgebusError(f"{run.path}: an operating point applies to classifiers; this is a {run.task.name} run")
    if run.manifest.exports:
        raise EdgebusError(f"{run.path}: already exported; set the operating point before 'edgebus export' "
                           "so the threshold is embedded in the models (or train a new run)")
    op = trusted_cv_point(run, cv_dir)
    run.manifest.threshold = float(op["threshold"])
    run.manifest.calibration = op["calibration"]
    # each exported file takes the point chosen on the CV's scores of its own kind (export.threshold)
    run.manifest.operating_point = {**{k: v for k, v in op.items() if k != "reliability"},
                                    "per_source": cv_points(cv_dir, op["target_sensitivity"])}
    from edgebus.data.arrays import load_run_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    model = load_run_model(run)
    data = load_run_arrays(run, ("val", "test"))
    run.manifest.metrics["keras"] = {k: classification_metrics(data[k][1], predict(model, data[k][0]), op["threshold"])
                                     for k in ("val", "test")}
    run.stage("operating_point", target=op["target_sensitivity"], chosen_on="cv out-of-fold", cv=str(cv_dir.resolve()))
    run.save()
    log(f"{run.path}: threshold {op['threshold']:.4f} and Platt calibration from {cv_dir} "
        f"(cross-fitted sensitivity {op['cross_fitted']['sensitivity']:.3f}, specificity {op['cross_fitted']['specificity']:.3f})")
    return op
