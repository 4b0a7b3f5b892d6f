"""`edgebus stress`: the scanner-shift stress benchmark, the proxy for a set from another hospital.

Every acquisition change of edgebus.data.stress, at each strength, is applied to held-out frames
(full resolution, before the one preprocessing path, as on the cart), and the models are scored on
them: the float Keras model and the full-int8 file (through ExportedModel, as the cart loads it).

Targets: a run directory (its test split, its model.keras and int8 export); a CV directory (every
case out-of-fold: each fold's own models on its own test part, pooled); or a lone exported
.tflite with --data (every lesion case of that data set). Reported per change: AUC, sensitivity
and specificity at the stored threshold (IoU and Dice for a segmenter), the drop against clean,
and the worst case. A segmenter's int8 maps are also scored as the cart shows them ("cart": the
largest region of the map at the changed frame's own size, against that frame's own mask; the
"int8" rows score the whole map on the model's grid).

With a segment CV on the same folds (`--fuse SEG_CV`), a CV classifier is also stressed as the
cart fuses it with the lesion's shape (edgebus fuse): each fold's int8 segmenter measures the mask
of the same changed frame, and the fold's fusion model, fitted on the other folds only, joins the
two; the "fused" rows are out of fold like the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, check_report, now, read_jsonl, write_json
from edgebus.core.manifest import MANIFEST, Run
from edgebus.data.breast import case_mask
from edgebus.data.preprocess import cut_area, load_gray, resize_mask, to_model_input
from edgebus.data.stress import CHANGES, apply_change, conditions


@dataclass
class Group:
    """Cases scored by one pair of models (a run, or one CV fold)."""

    cases: list
    float_model: object | None  # a Keras model, or None
    int8_model: object | None  # an ExportedModel, or None
    fold: int | None = None  # a CV fold's number
    segmenter: object | None = None  # with --fuse: the fold's int8 segmenter (an ExportedModel)
    fusion: dict | None = None  # with --fuse: the fold's fusion model (fitted on the other folds)


def _run_groups(run: Run) -> list[Group]:
    from edgebus.data.arrays import run_dataset
    from edgebus.engine.models import load_run_model
    from edgebus.runtime.model import ExportedModel

    by_id = {c.case_id: c for c in run_dataset(run).lesions()}
    test = run.read_artifact_json("split.json")["test"]
    e = run.manifest.exports.get("int8") or {}
    int8 = ExportedModel(run.path, run.task, key="int8") if e.get("status") == "ok" else None
    return [Group([by_id[i] for i in test], load_run_model(run), int8)]


def _cv_groups(run: Run, cv_dir: Path) -> list[Group]:
    """One group per fold: its own models (a merged CV: its members' models, averaged)."""
    from edgebus.data.arrays import run_dataset
    from edgebus.engine.models import load_model
    from edgebus.runtime.ensemble import EnsembleModel, member_files
    from edgebus.runtime.model import ExportedModel

    by_id = {c.case_id: c for c in run_dataset(run).lesions()}
    recs = sorted(read_jsonl(cv_dir / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    if len(recs) != run.manifest.cv["identity"]["folds"]:
        raise EdgebusError(f"{cv_dir}: not every fold is done; finish 'edgebus cv' first")
    groups = []
    for r in recs:
        members = member_files(r, cv_dir)
        floats = [load_model(p["model.keras"], run.manifest.model) for p in members]
        int8s = [p["model_int8.tflite"] for p in members if "model_int8.tflite" in p]
        int8 = None
        if len(int8s) == len(members):
            int8 = ExportedModel(int8s[0], run.task) if len(int8s) == 1 else EnsembleModel(int8s, run.manifest.threshold)
        groups.append(Group([by_id[i] for i in r["test_ids"]], floats[0] if len(floats) == 1 else floats, int8, r["fold"]))
    return groups


def _add_fusion(groups: list[Group], target: Path, seg_cv: Path, sensitivity: float) -> float:
    """Give each fold its int8 segmenter and out-of-fold fusion model; the fused operating
    threshold, chosen on the clean out-of-fold fused scores as `edgebus fuse` ships it."""
    from edgebus.core.calibration import crossfit_operating_point
    from edgebus.core.fusion import cross_fitted
    from edgebus.evaluation.shape_fusion import fold_models, fusion_inputs

    inp = fusion_inputs(target, seg_cv)
    models = fold_models(inp)
    for g in groups:
        if g.int8_model is None:
            raise EdgebusError(f"{target}: {flag('fuse')} fuses the int8 classifier; re-run 'edgebus cv classify' "
                               f"with {flag('int8')}")
        g.segmenter, g.fusion = inp["segmenters"][g.fold], models[g.fold]
    fused = cross_fitted(inp["x"], inp["y"], inp["fold"], "fused")
    return crossfit_operating_point(inp["y"], fused, inp["fold"], sensitivity)["threshold"]


def _target_sensitivity(cv_dir: Path) -> float:
    """The sensitivity the CV's operating point was chosen for (0.9 before `edgebus operating-point`)."""
    op = Run.load(cv_dir).manifest.operating_point or {}
    return float(op.get("target_sensitivity", 0.9))


def _fused(g: Group, p_int8: np.ndarray, frames: list) -> np.ndarray:
    """The fold's fused probabilities: its int8 classifier's output beside the shape of its int8
    segmenter's mask of the same (changed) frames, measured as the cart measures it."""
    from edgebus.core import fusion
    from edgebus.runtime.fusion import measure_lesion

    seg = g.segmenter
    shapes = [measure_lesion(seg.run(seg.input_for(gray))[..., 0], gray, seg.threshold)[0] for gray in frames]
    return fusion.predict(g.fusion, fusion.feature_rows(p_int8, shapes))


def _predict_float(model, x):
    """A Keras model's output, or the mean of a list of them (a merged CV's fold)."""
    from edgebus.engine.fit import predict

    if isinstance(model, list):
        return np.mean([predict(m, x) for m in model], axis=0)
    return predict(model, x)


def _target(target: Path, data, fmt: str):
    """(groups, task, contract, threshold, description) of a stress target."""
    if target.is_file():
        from edgebus.runtime.model import ExportedModel
        from edgebus.evaluation.evaluate import read_dataset

        if data is None:
            raise EdgebusError(f"{target}: a lone model file is stressed on a data set; pass {flag('data')} (and "
                               f"{flag('format')})")
        if fmt == "dicom":
            raise EdgebusError(f"{flag('format')} dicom: stress changes image files; pass a breast or busi set")
        em = ExportedModel(target)
        cases = read_dataset(data, fmt).lesions()
        return [Group(cases, None, em)], em.task, em.contract, em.threshold, f"`{target.name}` on {data} (all lesions)"
    if not (target / MANIFEST).is_file():
        raise EdgebusError(f"{target}: not a run, a CV folder or a .tflite file")
    run = Run.load(target)
    m = run.manifest
    if m.cv is not None:
        thr = (m.operating_point or {}).get("threshold", m.threshold)
        where = "out-of-fold operating point" if m.operating_point else "CV threshold"
        return _cv_groups(run, target), run.task, m.preprocess, thr, f"`{target}`, every case out-of-fold ({where})"
    return _run_groups(run), run.task, m.preprocess, m.threshold, f"`{target}`, its test split"


def _scores(task, truth, prob, threshold) -> dict:
    m = task.metrics(truth, prob, threshold)
    if task.truth_is_mask:
        return {"iou": m["iou"], "dice": m["dice"]}
    pc = m["per_class"]
    return {"auc": m["auc"], "sensitivity": pc["malignant"]["recall"], "specificity": pc["benign"]["recall"]}


def _label(r: dict) -> str:
    return "clean" if r["strength"] is None else f"{r['change']} {r['strength']:g}"


def _inputs(target: Path, thr, data, fmt: str, seed: int, fuse) -> dict:
    """What a stress report was made from: the stressed models' files (a CV's folds.jsonl holds its
    fold models' hashes), the threshold, the data, the seed and the segment CV of --fuse."""
    from edgebus.core.io import sha256_file
    from edgebus.evaluation.shape_fusion import folds_sha256

    if target.is_file():
        files = [target]
    elif (target / "folds.jsonl").is_file():
        files = [target / "folds.jsonl"]
    else:
        files = sorted(p for p in (target / "model.keras", target / "model_int8.tflite") if p.is_file())
    return {"models_sha256": [sha256_file(p) for p in files], "threshold": thr, "seed": seed,
            "data": None if data is None else [str(Path(data).resolve()), fmt],
            "fuse_folds_sha256": None if fuse is None else folds_sha256(fuse)}


def _kinds(groups: list[Group], target: Path, task, thr, fuse) -> tuple[list, dict]:
    """(the models scored: float, int8, fused; each one's threshold). The fused score needs a classifier
    CV's folds, each with its segmenter and fusion model added."""
    kinds = [k for k in ("float", "int8") if any(getattr(g, f"{k}_model") is not None for g in groups)]
    if task.truth_is_mask and "int8" in kinds:  # the int8 maps again, as the cart shows its mask
        kinds.append("cart")
    thresholds = {k: thr for k in kinds}
    if fuse is not None:
        if target.is_file() or task.name != "classify" or groups[0].fold is None:
            raise EdgebusError(f"{target}: {flag('fuse')} is for a classifier CV folder (the one 'edgebus fuse' was "
                               "given)")
        thresholds["fused"] = _add_fusion(groups, target, Path(fuse), _target_sensitivity(target))
        kinds.append("fused")
    return kinds, thresholds


def _changed(items: list, name: str, strength, seed: int, contract: dict) -> tuple:
    """(model inputs, changed frames, labels, masks on the model's grid, masks at the frames' own size)
    of one group's cases under one change."""
    size = tuple(contract["size"])
    xs, changed, labels, masks, full = [], [], [], [], []
    for c, gray, mask in items:
        g2, m2 = (gray, mask) if name == "clean" else apply_change(gray, mask, name, strength, seed, c.case_id)
        g2, m2 = cut_area(g2, m2, str(c.mask))  # as every frame is, in training and on the cart
        m2 = m2 if m2 is not None else np.zeros_like(g2)
        xs.append(to_model_input(g2, contract))
        changed.append(g2)
        labels.append(c.label)
        masks.append(resize_mask(m2, size)[..., None])
        full.append(m2 > 0)
    return np.stack(xs), changed, labels, masks, full


def cart_mask_scores(maps: np.ndarray, frames: list, masks: list, threshold: float) -> dict:
    """IoU and Dice (means over frames) of the masks the cart shows: each (H, W[, 1]) map of `maps` made
    into the largest region at its frame's own size (lesion_and_regions), against that frame's mask."""
    from edgebus.core.metrics import segmentation_metrics
    from edgebus.data.preprocess import lesion_and_regions

    per = []
    for prob, gray, truth in zip(maps, frames, masks):
        lesion = lesion_and_regions(prob, gray.shape[:2], threshold)[0]
        pred = np.zeros(gray.shape[:2], np.uint8) if lesion is None else lesion
        per.append(segmentation_metrics(truth[None], pred[None], 0.5))
    return {"iou": float(np.mean([m["iou"] for m in per])), "dice": float(np.mean([m["dice"] for m in per]))}


def _condition_row(groups: list[Group], frames: list, kinds: list, thresholds: dict, task, contract: dict, thr,
                   name: str, strength, seed: int) -> dict:
    """One change at one strength: every kind's scores over all groups' cases pooled (and int8 against its
    float parent on the same changed frames)."""
    probs = {k: [] for k in kinds if k != "cart"}
    labels, masks, cart_frames, cart_masks = [], [], [], []
    for g, items in zip(groups, frames):
        x, changed, group_labels, group_masks, full = _changed(items, name, strength, seed, contract)
        labels += group_labels
        masks += group_masks
        cart_frames += changed
        cart_masks += full
        if "float" in kinds:
            probs["float"].append(_predict_float(g.float_model, x))
        if "int8" in kinds:
            probs["int8"].append(g.int8_model.predict(x))
        if "fused" in kinds:
            probs["fused"].append(_fused(g, probs["int8"][-1], changed))
    truth = task.truth(np.asarray(labels), np.stack(masks))
    row = {"change": name, "strength": strength}
    for k in probs:
        row[k] = _scores(task, truth, np.concatenate(probs[k]), thresholds[k])
    if "cart" in kinds:
        row["cart"] = cart_mask_scores(np.concatenate(probs["int8"]), cart_frames, cart_masks, thresholds["cart"])
    if "float" in kinds and "int8" in kinds:  # int8 against its own float parent on the same changed frames (issue 14)
        row["int8_vs_float"] = task.fidelity(np.concatenate(probs["float"]), np.concatenate(probs["int8"]), thr)
    return row


def _summary(rows: list, kinds: list, task) -> dict:
    """Each kind's clean score, worst change and drop (each changed row gets its drop against clean)."""
    key = "iou" if task.truth_is_mask else "auc"
    clean = rows[0]
    summary = {}
    for k in kinds:
        for r in rows[1:]:
            r[k]["drop"] = clean[k][key] - r[k][key]
        worst = max(rows[1:], key=lambda r: r[k]["drop"])
        summary[k] = {"clean": clean[k][key], "worst": worst[k][key], "worst_drop": worst[k]["drop"],
                      "worst_change": f"{worst['change']} {worst['strength']:g}", "metric": key}
        if not task.truth_is_mask:
            summary[k]["worst_sensitivity"] = min(r[k]["sensitivity"] for r in rows)
    return summary


def _fidelity(rows: list, kinds: list, task) -> dict | None:
    """int8 against its float parent: clean, and under the change where they part most (None without both)."""
    if not ("float" in kinds and "int8" in kinds):
        return None

    def gap(r):  # mask IoU lost, or labels flipped
        f = r["int8_vs_float"]
        return -f["mask_iou_mean"] if task.truth_is_mask else f["flips"]

    w = max(rows, key=gap)
    return {"clean": rows[0]["int8_vs_float"], "worst": w["int8_vs_float"], "worst_change": _label(w)}


def run_stress(target, data=None, fmt: str = "breast", out=None, seed: int = 0, log=print, fuse=None,
               overwrite: bool = False) -> dict:
    """Score every acquisition change; write stress.json, stress.md and stress.png to `out`
    (default: <target>/stress, or beside a lone file). fuse: a segment CV on the classifier CV's
    folds, to stress the fused score too."""
    from edgebus.reports.stress import stress_markdown, stress_plot

    target = Path(target)
    out = Path(out) if out else (target.parent if target.is_file() else target / "stress")
    if out.exists() and not out.is_dir():  # before minutes of scoring, not after
        raise EdgebusError(f"{out}: exists and is not a folder; pick another {flag('out')}")
    groups, task, contract, thr, desc = _target(target, data, fmt)
    ident = check_report(out / "stress.json", _inputs(target, thr, data, fmt, seed, fuse), overwrite)
    if "crop" in contract:
        raise EdgebusError(f"{target}: a lesion-crop classifier needs its segmenter's boxes for every changed frame; "
                           "stress it through a whole-frame model")
    kinds, thresholds = _kinds(groups, target, task, thr, fuse)
    frames = [[(c, load_gray(c.image), case_mask(c) if c.mask is not None else None) for c in g.cases] for g in groups]
    rows = []
    for name, strength in [("clean", None), *conditions()]:
        row = _condition_row(groups, frames, kinds, thresholds, task, contract, thr, name, strength, seed)
        rows.append(row)
        log(f"{name}{'' if strength is None else ' ' + format(strength, 'g')}: "
            + "; ".join(f"{k} " + ", ".join(f"{m} {v:.3f}" for m, v in row[k].items() if v is not None)
                        for k in kinds))
    summary = _summary(rows, kinds, task)
    fidelity = _fidelity(rows, kinds, task)
    result = {"schema": "edgebus.stress/1", "created": now(), "target": str(target), "description": desc,
              "task": task.name, "threshold": thr, "seed": seed, "n": sum(len(items) for items in frames),
              "changes": CHANGES, "kinds": kinds, "rows": rows, "summary": summary, "inputs": ident}
    if fuse is not None:
        result["fused"] = {"segment_cv": str(fuse), "threshold": thresholds["fused"],
                           "note": "each fold: its int8 classifier and int8 segmenter on the changed frame, joined by "
                                   "the fusion model fitted on the other folds; threshold chosen on clean out-of-fold "
                                   "fused scores as 'edgebus fuse' ships it"}
    if fidelity:
        result["int8_vs_float"] = fidelity
    write_json(out / "stress.json", result)
    stress_plot(result, out / "stress.png")
    atomic_write(out / "stress.md", stress_markdown(result))
    if out == target / "stress" and (target / "model_card.json").is_file() and (target / "folds.jsonl").is_file():
        from edgebus.export.model_card import write_cv_model_card  # the CV's card now shows the stress worst case

        log(f"model card: {write_cv_model_card(target)}")
    return result | {"out": str(out)}
