"""`edgebus presence SEG_CV`: learn, out of fold, when the cart should say "no lesion found" (issue #35).

Each fold's int8 segmenter (or a multi-task classifier's own mask) is run, through the cart's path,
on its test frames and on lesion-free examples made from those same frames (edgebus.data.presence:
a band of tissue beside the lesion, and the sheet's normal frames, each given to one fold). The
evidence its map gives (edgebus.data.presence.EVIDENCE) feeds a logistic model; the threshold is set
for at most `max_miss` of lesion frames called lesion-free. Both are fitted on the other folds only
for every number reported, and on every fold for the file the cart ships (presence.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag

PRESENCE_JSON = "presence.json"
MAX_MISS = 0.02  # lesion frames the cart may call lesion-free (issue #35's target)


def presence_inputs(seg_cv, stress: bool = False) -> dict:
    """Evidence rows x, y (1 lesion frame, 0 lesion-free), fold, kind ("lesion", "band", "normal") and
    case ids, from each fold's int8 mask model on its own test frames; with stress, also the rows of
    every example under each acquisition change of `edgebus stress` ({"change strength": rows})."""
    from edgebus.core.manifest import Run
    from edgebus.data.arrays import run_dataset
    from edgebus.data.preprocess import cut_area, image_area, load_gray, load_mask
    from edgebus.data.presence import evidence, lesion_free_band
    from edgebus.training.cv_summary import finished_cv
    from edgebus.evaluation.shape_fusion import _segmenters

    seg_cv = Path(seg_cv)
    if not (seg_cv / "manifest.json").is_file():
        raise EdgebusError(f"{seg_cv}: not a cross-validation folder; pass the folder 'edgebus cv segment' wrote")
    task = "classify" if Run.load(seg_cv).task.name == "classify" else "segment"  # a multi-task CV gives its masks
    run, folds, recs = finished_cv(seg_cv, task)
    models = _segmenters(seg_cv, recs, task)
    ds = run_dataset(run)
    by_id = {c.case_id: c for c in ds.cases}
    rows, y, fold, kind, ids = [], [], [], [], []
    from edgebus.data.stress import apply_change, conditions

    changed = {f"{n} {v:g}": [] for n, v in conditions()} if stress else {}

    def add(model, image, label, f, what, i):
        see = lambda img: evidence(model.run(model.input_for(cut_area(img)[0]))[..., 0], model.threshold)  # noqa: E731
        rows.append(see(image))
        y.append(label), fold.append(f), kind.append(what), ids.append(i)
        for (n, v), key in zip(conditions() if stress else [], changed):  # the same example as another scanner shows it
            changed[key].append(see(apply_change(image, None, n, v, 0, i)[0]))

    for r in recs:
        m = models[r["fold"]]
        for i in r["test_ids"]:
            gray = load_gray(by_id[i].image)
            add(m, gray, 1, r["fold"], "lesion", i)
            band = lesion_free_band(image_area(gray), load_mask(by_id[i].mask))
            if band is not None:
                x0, y0, x1, y1 = band
                add(m, gray[y0:y1, x0:x1], 0, r["fold"], "band", i)
    normals = [c for c in ds.cases if c.mask is None]  # in no fold: each is given to one, round robin
    for k, c in enumerate(normals):
        f = recs[k % len(recs)]["fold"]
        add(models[f], load_gray(c.image), 0, f, "normal", c.case_id)
    if not (0 in y and 1 in y):
        raise EdgebusError(f"{seg_cv}: no lesion-free example could be made (no band beside a lesion, no normal frame)")
    return {"x": np.asarray(rows), "y": np.asarray(y), "fold": np.asarray(fold), "kind": np.asarray(kind),
            "ids": ids, "task": task, "run": run, "stressed": {k: np.asarray(v) for k, v in changed.items()}}


def _rates(y, present) -> dict:
    y, present = np.asarray(y).astype(bool), np.asarray(present).astype(bool)
    return {"lesion_missed": float((~present[y]).mean()), "lesion_free_found_free": float((~present[~y]).mean()),
            "lesion_frames": int(y.sum()), "lesion_free_frames": int((~y).sum())}


def cross_fitted(x, y, fold, max_miss: float, columns=None, others: dict | None = None):
    """(scores, present[, {name: present}]): each fold scored by the model, and decided by the threshold,
    fitted on the other folds; `others` ({name: rows like x}) decided by the same fold models."""
    from edgebus.core import fusion
    from edgebus.core.metrics import threshold_for_sensitivity
    from edgebus.data.presence import EVIDENCE

    cols = list(range(len(EVIDENCE))) if columns is None else columns
    names = [EVIDENCE[c] for c in cols]
    scores, present = np.zeros(len(y)), np.zeros(len(y), bool)
    decided = {k: np.zeros(len(y), bool) for k in (others or {})}
    for f in np.unique(fold):
        test, rest = fold == f, fold != f
        model = fusion.fit_logistic(x[rest][:, cols], y[rest], names, "presence")
        t = threshold_for_sensitivity(y[rest], fusion.predict(model, x[rest][:, cols], names), 1 - max_miss)["threshold"]
        scores[test] = fusion.predict(model, x[test][:, cols], names)
        present[test] = scores[test] >= t
        for k, rows in (others or {}).items():
            decided[k][test] = fusion.predict(model, rows[test][:, cols], names) >= t
    return (scores, present) if others is None else (scores, present, decided)


def _boot(y, present, n_boot: int = 2000, seed: int = 0) -> dict:
    rng, out = np.random.default_rng(seed), {"lesion_missed": [], "lesion_free_found_free": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            r = _rates(y[i], present[i])
            for k in out:
                out[k].append(r[k])
    return {k: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] for k, v in out.items()}


def presence_cv(seg_cv, out=None, max_miss: float = MAX_MISS, log=print, overwrite: bool = False,
                stress: bool = False) -> dict:
    """Fit and score the presence rule out of fold; write presence.json / presence.md (default:
    SEG_CV/presence/) with the model and threshold fitted on every fold. stress: also decide every
    example under each acquisition change of `edgebus stress`, by the rule fitted on clean folds."""
    from edgebus.core import fusion
    from edgebus.core.io import atomic_write, check_report, make_dir, write_json
    from edgebus.core.metrics import roc_auc, threshold_for_sensitivity
    from edgebus.data.presence import EVIDENCE, MARGIN, MIN_SIDE
    from edgebus.evaluation.shape_fusion import folds_sha256

    if not 0 < max_miss < 0.5:
        raise EdgebusError(f"{flag('max_miss')} {max_miss}: give the share of lesion frames that may be called "
                           "lesion-free, e.g. 0.02")
    seg_cv = Path(seg_cv)
    out = Path(out) if out else seg_cv / "presence"
    ident = check_report(out / PRESENCE_JSON, {"segment_folds_sha256": folds_sha256(seg_cv), "max_miss": max_miss,
                                               "stress": stress}, overwrite)
    inp = presence_inputs(seg_cv, stress)
    x, y, fold, kind = inp["x"], inp["y"], inp["fold"], inp["kind"]
    rows = {}
    for name, cols in (("evidence model", None), ("highest probability alone", [0])):
        s, present = cross_fitted(x, y, fold, max_miss, cols)
        rows[name] = {**_rates(y, present), "ci": _boot(y, present), "auc": roc_auc(y, s),
                      "by_kind": {k: float((~present[kind == k]).mean()) for k in ("band", "normal") if (kind == k).any()},
                      "per_fold": [{"fold": int(f), **_rates(y[fold == f], present[fold == f])} for f in np.unique(fold)]}
    stressed = {}
    if stress:  # the rule of each fold, fitted on clean frames, on the same examples as other scanners show them
        _, _, decided = cross_fitted(x, y, fold, max_miss, None, inp["stressed"])
        stressed = {k: _rates(y, v) for k, v in decided.items()}
    model = fusion.fit_logistic(x, y, list(EVIDENCE), "presence")
    threshold = threshold_for_sensitivity(y, fusion.predict(model, x, EVIDENCE), 1 - max_miss)["threshold"]
    mask_model = inp["run"].manifest.model.name if inp["run"].manifest.model else None
    result = {"schema": "edgebus.presence/1", "model": model, "threshold": float(threshold), "max_miss": max_miss,
              "evidence": list(EVIDENCE),
              "mask_from": {"cv": str(seg_cv), "task": inp["task"], "model": mask_model,
                            "lesion_free": bool(inp["run"].manifest.cv["identity"].get("lesion_free"))},
              "examples": {"margin": MARGIN, "min_side": MIN_SIDE, "lesion": int(y.sum()),
                           "band": int((kind == "band").sum()), "normal": int((kind == "normal").sum())},
              "out_of_fold": rows, "stress": stressed, "inputs": ident,
              "note": "every reported number is cross-fitted: model and threshold fitted on the other folds"}
    out = make_dir(out, "presence folder")
    write_json(out / PRESENCE_JSON, result)
    atomic_write(out / "presence.md", presence_md(result))
    r = rows["evidence model"]
    log(f"out of fold, threshold for <= {max_miss:.0%} lesion frames missed: {r['lesion_missed']:.3f} of "
        f"{r['lesion_frames']} lesion frames called lesion-free, {r['lesion_free_found_free']:.3f} of "
        f"{r['lesion_free_frames']} lesion-free examples called lesion-free; {out / 'presence.md'}")
    return result


def presence_md(r: dict) -> str:
    f = lambda v, ci: f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    e = r["examples"]
    lines = [f"# Lesion presence: when the cart says \"no lesion found\" (at most {r['max_miss']:.0%} of lesion frames)", "",
             f"Mask model: each fold's int8 file of `{r['mask_from']['cv']}` ({r['mask_from']['model']}), on the "
             f"cart's path. Examples, each scored by the fold that never trained on it: {e['lesion']} lesion frames; "
             f"{e['band']} lesion-free bands (the largest band of tissue beside the lesion's box grown by "
             f"{e['margin']:.0%}, at least {e['min_side']:.0%} of the image in both directions) and {e['normal']} "
             f"normal frames of the sheet. {r['note'].capitalize()}.", "",
             "| rule | lesion frames called lesion-free [95% CI] | lesion-free examples called lesion-free [95% CI] | "
             "bands / normal frames called lesion-free | AUC |", "|---|---|---|---|---|"]
    for name, row in r["out_of_fold"].items():
        kinds = " / ".join(f"{v:.3f}" for v in row["by_kind"].values())
        lines.append(f"| {name} | {f(row['lesion_missed'], row['ci']['lesion_missed'])} | "
                     f"{f(row['lesion_free_found_free'], row['ci']['lesion_free_found_free'])} | {kinds} | {row['auc']:.3f} |")
    per = ", ".join(f"{p['lesion_missed']:.3f} / {p['lesion_free_found_free']:.3f}" for p in r["out_of_fold"]["evidence model"]["per_fold"])
    lines += ["", f"Per held-out fold (lesion frames missed / lesion-free called lesion-free): {per}.", ""]
    if r.get("stress"):
        worst_miss = max(r["stress"].items(), key=lambda kv: kv[1]["lesion_missed"])
        worst_free = min(r["stress"].items(), key=lambda kv: kv[1]["lesion_free_found_free"])
        lines += ["Under the acquisition changes of `edgebus stress` (each fold's rule, fitted on clean frames, on its "
                  "own examples as another scanner would show them):", "",
                  "| change | lesion frames called lesion-free | lesion-free examples called lesion-free |", "|---|---|---|"]
        lines += [f"| {k} | {v['lesion_missed']:.3f} | {v['lesion_free_found_free']:.3f} |" for k, v in r["stress"].items()]
        lines += ["", f"Worst: {worst_miss[0]} misses {worst_miss[1]['lesion_missed']:.3f} of lesion frames; {worst_free[0]} "
                  f"calls {worst_free[1]['lesion_free_found_free']:.3f} of lesion-free examples lesion-free.", ""]
    lines += [
              f"Shipped: the evidence model ({', '.join(r['evidence'])}) fitted on every example, threshold "
              f"{r['threshold']:.4f} on its output. A band is tissue of a frame that also holds a lesion, seen "
              "as a frame of its own: a stand-in for a lesion-free frame, not one.", "",
              "Bundle it with a mask model trained as this CV's were (" + (
                  f"`edgebus train segment ... {flag('lesion_free')}`" if r["mask_from"].get("lesion_free") else
                  f"without `{flag('lesion_free')}`") + "): the rule is fitted on their maps; `bundle` checks "
              "the model's name, not how it was trained.", ""]
    return "\n".join(lines)
