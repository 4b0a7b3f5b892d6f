"""`edgebus site-check`: does the cart's operating point hold at this site?

A threshold chosen out of fold on BrEaST promised sensitivity 0.90; at another hospital's scanner the
same kind of threshold caught about 40% of cancers (issue #12), and inside BrEaST each unseen scanner
setting shifts all scores together (training/results/robustness.md). So before a cart is trusted at
a new site, its own labelled cases are run through it (`edgebus predict --bundle CART DIR`) and this
command scores those predictions: AUC, sensitivity and specificity at the shipped threshold with
bootstrap intervals, calibration, and the threshold these cases would choose for the same target.

It reads predictions and labels only: no model runs here and nothing needs TensorFlow, so it runs on
the cart itself (a BUSI-layout or labelled DICOM set; a BrEaST sheet needs pandas to read). A locally chosen
threshold is in-sample (chosen and scored on the same cases): the report says so, with the interval it
carries, and recommends confirming it on further cases; `edgebus site-threshold` (runtime.site) puts it
on a copy of the cart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.metrics import finite
from edgebus.core.io import atomic_write, check_report, make_dir, read_json, sha256_file, write_json
from edgebus.runtime.batch import RUN_FILE, read_rows
from edgebus.runtime.site import MIN_CHOOSE

MIN_MALIGNANT = 20  # fewer and a sensitivity interval is wider than +-0.15: the report says it cannot judge


def _labels(data, fmt: str) -> dict:
    """{(the image's path parts under the data folder, frame): case} of a labelled set's lesion cases."""
    from edgebus.evaluation.evaluate import read_dataset

    frames = {}
    if fmt == "dicom":
        from edgebus.evaluation.dicom_set import read_dicom_set

        ds, frames = read_dicom_set(data)
    else:
        ds = read_dataset(data, fmt)
    cases = [c for c in ds.cases if c.label is not None]
    if not cases:
        raise EdgebusError(f"{data}: no case labelled benign or malignant; a site check needs labelled cases")
    root = Path(ds.root).resolve()

    def parts(path) -> tuple:
        path = Path(path).resolve()
        return path.relative_to(root).parts if path.is_relative_to(root) else (path.name,)

    return {(parts(c.image), frames.get(c.case_id, 1)): c for c in cases}


def _match(row: dict, labels: dict, depths: set):
    """The labelled case a prediction row is of: its file's path ends with the case's path under the
    data folder (so predictions made from another working folder match), at the same frame."""
    file = str(row["file"])
    if int(row.get("frames") or 1) > 1:  # 'path#n' names frame n of a loop
        file = file.rsplit("#", 1)[0]
    parts, frame = Path(file).parts, int(row.get("frame") or 1)
    for d in depths:
        case = labels.get((parts[-d:], frame))
        if case is not None:
            return case
    return None


def _matched(rows: list, labels: dict, pred_dir: Path, jsonl: Path, data, fmt: str) -> list[tuple]:
    """(case, row) of every predicted frame that is a labelled case of `data`, once each and of this
    set's own frames: predictions of another set would score the wrong images."""
    depths = {len(k[0]) for k in labels}
    matched = [(c, r) for r in rows for c in [_match(r, labels, depths)] if c is not None]
    if not matched:
        raise EdgebusError(f"{pred_dir}: none of its {len(rows)} predicted frames is a labelled case of {data}; "
                           f"predict that set's frames (edgebus predict {flag('bundle')} CART {data})")
    if fmt != "dicom":  # the same frames, not namesakes from another set
        from edgebus.data.acquisition import frame_size

        for c, r in matched:
            if frame_size(c.image) != (r.get("width"), r.get("height")):
                raise EdgebusError(f"{pred_dir}: its frame {r['file']} is {r.get('width')}x{r.get('height')} but "
                                   f"{c.image} is {'x'.join(map(str, frame_size(c.image)))}; predictions of another "
                                   f"set's frames: predict {data} itself")
    seen = {}
    for c, r in matched:  # one case predicted twice (from two working folders, say) would count twice
        key = (c.case_id, r.get("frame"))
        if key in seen:
            raise EdgebusError(f"{jsonl}: case {c.case_id} is predicted twice ({seen[key]} and {r['file']}); predict "
                               f"the set once into a new {flag('out')}")
        seen[key] = r["file"]
    return matched


def _shipped_threshold(matched: list[tuple], pred_dir: Path, jsonl: Path) -> float:
    """The one threshold the frames were predicted at, once every row holds the probabilities edgebus
    writes: a file from elsewhere, or frames of several models, cannot be scored against one threshold."""
    if any(r.get("prob_raw") is None for _, r in matched):
        raise EdgebusError(f"{pred_dir}: predicted without a classifier; a site check scores the malignancy call")
    for _, r in matched:
        for k in ("prob_raw", "prob_malignant", "threshold"):
            v = r.get(k)
            if not finite(v) or not 0 <= v <= 1:
                raise EdgebusError(f"{jsonl}: frame {r['file']} has {k}={v!r}, not a probability from 0 to 1; "
                                   f"not a predictions file edgebus wrote, predict again into a new {flag('out')}")
    thresholds = {float(r["threshold"]) for _, r in matched}
    if len(thresholds) != 1:
        raise EdgebusError(f"{pred_dir}: its frames were predicted at {len(thresholds)} thresholds (other models); "
                           f"predict again into a new {flag('out')}")
    return thresholds.pop()


def _bootstrap(y, raw, pred, target: float, n_boot: int, seed: int) -> dict:
    """Each score over cases resampled with replacement, for its percentile interval (a resample of one
    class only has no sensitivity or AUC: skipped)."""
    from edgebus.core.metrics import roc_auc, threshold_for_sensitivity

    rng = np.random.default_rng(seed)
    boot = {"auc": [], "sensitivity": [], "specificity": [], "local_threshold": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        yb, pb = y[i], pred[i]
        if 0 < yb.sum() < len(yb):
            boot["auc"].append(roc_auc(yb, raw[i]))
            boot["sensitivity"].append(float(pb[yb == 1].mean()))
            boot["specificity"].append(float((~pb[yb == 0]).mean()))
            boot["local_threshold"].append(threshold_for_sensitivity(yb, raw[i], target)["threshold"])
    return boot


def _scores(y, raw, shown, thr: float, target: float, n_boot: int, seed: int) -> dict:
    """The site check's numbers: at the shipped threshold, the shown probability's calibration, and what
    these cases would choose themselves (in-sample), each with its bootstrap interval."""
    from edgebus.core.calibration import apply
    from edgebus.core.stats import percentile_interval
    from edgebus.core.metrics import expected_calibration_error, roc_auc, threshold_for_sensitivity

    pred = raw >= thr
    boot = _bootstrap(y, raw, pred, target, n_boot, seed)
    local = threshold_for_sensitivity(y, raw, target)
    # the shown probability's calibration slope and intercept here; the site's own recalibration moves the shown
    # probability's logit by one number (benchmarks/results/site-threshold.md: steadier than slope and intercept on a
    # site's few cases), on top of whatever calibration the cart ships
    shown_fit, local_cal = _platt_or_none(y, shown), _platt_or_none(y, shown, slope=False)
    return {"auc": {"value": roc_auc(y, raw), "ci": percentile_interval(boot["auc"])},
            "sensitivity": {"value": float(pred[y == 1].mean()), "ci": percentile_interval(boot["sensitivity"])},
            "specificity": {"value": float((~pred[y == 0]).mean()), "ci": percentile_interval(boot["specificity"])},
            "ece": expected_calibration_error(y, shown),
            # logistic recalibration of the shown probability on these cases: slope 1, intercept 0 if it holds here
            "calibration": None if shown_fit is None else {"slope": shown_fit["a"], "intercept": shown_fit["b"]},
            "local": {"threshold": local["threshold"], "threshold_ci": percentile_interval(boot["local_threshold"]),
                      "sensitivity": local["sensitivity"], "specificity": local["specificity"],
                      "calibration": local_cal,
                      "ece": None if local_cal is None else expected_calibration_error(y, apply(local_cal, shown)),
                      "note": "chosen and scored on the same cases (in-sample): confirm on further cases"},
            "bootstrap": {"resamples": n_boot, "seed": seed, "method": "percentile, cases resampled"}}


def site_check(predictions, data, fmt: str = "breast", target: float = 0.9, out=None, n_boot: int = 2000,
               seed: int = 0, log=print, overwrite: bool = False) -> dict:
    """Score a cart's predictions folder against a labelled set; write site_check.json / .md and a
    reliability plot (default: PREDICTIONS/site-check)."""
    from edgebus.core.calibration import reliability

    pred_dir = Path(predictions)
    jsonl = pred_dir / "predictions.jsonl"
    if not jsonl.is_file():
        raise EdgebusError(f"{pred_dir}: no predictions.jsonl; run 'edgebus predict {flag('bundle')} CART {data} "
                           f"{flag('out')} {pred_dir}' first")
    out = Path(out) if out else pred_dir / "site-check"
    ident = check_report(out / "site_check.json", {"predictions_sha256": sha256_file(jsonl),
                                                   "data": Path(data).resolve(), "format": fmt,
                                                   "target_sensitivity": target, "n_boot": n_boot, "seed": seed},
                         overwrite)
    rows = [r for r in read_rows(jsonl) if not r.get("error") and not r.get("skipped")]
    labels = _labels(data, fmt)
    matched = _matched(rows, labels, pred_dir, jsonl, data, fmt)
    thr = _shipped_threshold(matched, pred_dir, jsonl)
    y = np.asarray([int(c.label) for c, _ in matched])
    raw = np.asarray([r["prob_raw"] for _, r in matched], dtype=np.float64)
    shown = np.asarray([r["prob_malignant"] for _, r in matched], dtype=np.float64)
    n_mal, n_ben = int(y.sum()), int((1 - y).sum())
    if n_mal == 0 or n_ben == 0:
        raise EdgebusError(f"{data}: the matched cases are all {'benign' if n_mal == 0 else 'malignant'}; "
                           "a site check needs both")
    res = ({"schema": "edgebus.site_check/1", "predictions": str(pred_dir), "data": str(data), "format": fmt,
            "n": int(len(y)), "malignant": n_mal, "benign": n_ben, "unmatched_predictions": len(rows) - len(matched),
            "labelled_not_predicted": len(labels) - len({c.case_id for c, _ in matched}),
            "threshold": thr, "target_sensitivity": target}
           | _scores(y, raw, shown, thr, target, n_boot, seed)
           # the cart these are predictions of (predict.json): `edgebus site-threshold` adopts a local threshold
           # into that cart only
           | {"inputs": ident,
              "models": read_json(pred_dir / RUN_FILE).get("models") if (pred_dir / RUN_FILE).is_file() else None})
    res["verdict_kind"], res["verdict"] = verdict(res)
    out = make_dir(out, "site-check folder")
    from edgebus.reports.figures import reliability_plot

    reliability_plot({"this site": reliability(y, shown)}, out / "reliability.png", f"site check (n={len(y)})")
    write_json(out / "site_check.json", res)
    atomic_write(out / "site_check.md", site_check_md(res))
    log(f"{res['verdict']} ({out / 'site_check.md'})")
    return res | {"out": str(out)}


def _platt_or_none(y, p, slope: bool = True) -> dict | None:
    """Platt scaling fitted on these cases, or None where the scores rank them backwards (slope <= 0)."""
    from edgebus.core.calibration import fit_platt

    try:
        return fit_platt(y, p, slope=slope)
    except EdgebusError:
        return None


def verdict(r: dict) -> tuple[str, str]:
    """(kind, one line): the shipped threshold misses the target, is consistent with it, is uncertain, or there
    are too few cases to say. Only "misses" lets `edgebus site-threshold` choose a local one: where the shipped
    threshold holds, one chosen on a site's few cases does worse (benchmarks/results/site-threshold.md)."""
    s, t = r["sensitivity"], r["target_sensitivity"]
    head = f"sensitivity {s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] at the shipped threshold {r['threshold']:.4f}"
    if r["malignant"] < MIN_MALIGNANT:
        return "too few", (f"too few malignant cases to judge ({r['malignant']} < {MIN_MALIGNANT}): {head}; "
                           "label more cases before trusting the threshold here")
    if s["ci"][1] < t:
        return "misses", (f"MISSES the target {t:.2f} at this site: {head}; these cases would choose "
                          f"{r['local']['threshold']:.4f} (in-sample): with {MIN_CHOOSE} or more malignant cases, adopt "
                          "it on a copy of the cart (edgebus site-threshold) and confirm it on further cases")
    if s["value"] >= t:
        return "consistent", f"consistent with the target {t:.2f} at this site: {head}"
    return "uncertain", (f"uncertain at this site: {head} (target {t:.2f} inside the interval, value below it); "
                         "label more cases")


def _slope(c: dict | None) -> str:
    return "the scores rank these cases backwards" if c is None else f"{c['slope']:.3f} / {c['intercept']:.3f}"


def site_check_md(r: dict) -> str:
    def ci(v):
        return f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"

    loc = r["local"]
    return "\n".join([
        f"# Site check of a cart ({r['n']} labelled cases: {r['malignant']} malignant, {r['benign']} benign)", "",
        f"Predictions `{r['predictions']}` against the labels of `{r['data']}` ({r['format']}); "
        f"{r['unmatched_predictions']} predicted frames had no label, {r['labelled_not_predicted']} labelled cases "
        "were not predicted. 95% intervals: percentile bootstrap over cases.", "",
        f"**{r['verdict'][0].upper() + r['verdict'][1:]}**", "",
        "| at the shipped threshold | value [95% CI] |", "|---|---|",
        f"| AUC | {ci(r['auc'])} |",
        f"| sensitivity (malignant recall) | {ci(r['sensitivity'])} |",
        f"| specificity (benign recall) | {ci(r['specificity'])} |",
        f"| calibration error (ECE, the probability the cart shows) | {r['ece']:.3f} |",
        f"| calibration slope / intercept (1 / 0 where it holds) | {_slope(r['calibration'])} |", "",
        f"The threshold these cases would choose for sensitivity {r['target_sensitivity']:.2f}: {loc['threshold']:.4f} "
        f"[{loc['threshold_ci'][0]:.4f}, {loc['threshold_ci'][1]:.4f}] (shipped: {r['threshold']:.4f}); at it, "
        f"sensitivity {loc['sensitivity']:.3f}, specificity {loc['specificity']:.3f}, {loc['note']}. "
        + (f"The shown probability recalibrated in the large on these cases (its logit moved by "
           f"{loc['calibration']['b']:+.3f}) has ECE {loc['ece']:.3f} on them. " if loc["calibration"] else "")
        + (f"`edgebus site-threshold CART THIS_FOLDER {flag('out')} DIR` puts both on a copy of the cart."
           if r["verdict_kind"] == "misses" else "The shipped threshold does not miss here: keep it."), "",
        "![reliability](reliability.png)", ""])
