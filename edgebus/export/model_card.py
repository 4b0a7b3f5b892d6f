"""A model card per exported run (model_card.json + model_card.md beside the .tflite files, copied
into the cart bundle): what the model is for and not for, what it was trained and checked on,
how well it does overall and by subgroup with intervals, how calibrated it is, what int8 changed
case by case, how fast it ran where it was measured, what it cannot be trusted with, and the
version chain. The sections follow the model card the FDA's draft guidance on AI-enabled device
software functions describes; inputs and outputs are typed as MONAI bundle metadata types them.
Everything is filled from the run (and the CV its operating point came from); nothing is typed in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus import __version__
from edgebus.core.calibration import per_fold_text
from edgebus.core.errors import flag
from edgebus.core.io import atomic_write, now, read_json, read_jsonl, sha256_file, write_json
from edgebus.core.manifest import Run
from edgebus.core.stats import bootstrap_classification, interval_text
from edgebus.export.card_text import INTENDED_USE, NOT_FOR, dataset_text, model_card_limits

CARD_JSON, CARD_MD = "model_card.json", "model_card.md"
SCHEMA = "edgebus.model-card/1"
SUBGROUPS = ("BI-RADS", "tissue composition", "age band", "lesion size")


def _band(kind: str, a: dict):
    if kind == "BI-RADS":
        return None if a["birads"] is None else f"BI-RADS {a['birads']}"
    if kind == "tissue composition":
        t = str(a["tissue"] or "not available").lower()
        return "not available" if t == "not available" else ("fat" if "fat" in t else "fibroglandular")
    if kind == "age band":
        try:
            age = float(a["age"])
        except (TypeError, ValueError):
            return "not available"
        return "< 40" if age < 40 else ("40-54" if age < 55 else ("55-69" if age < 70 else ">= 70"))
    d = a["diameter_mm"]
    return "not available" if d is None else ("< 10 mm" if d < 10 else ("10-20 mm" if d <= 20 else "> 20 mm"))


def subgroup_table(ids, y, p, threshold: float, attrs: dict, n_boot: int = 1000) -> dict:
    """{subgroup kind: [{value, n, malignant, sensitivity, specificity, auc} with 95% CIs]} of
    out-of-fold predictions at `threshold`. A subgroup of one class gets only the rate it has."""
    out = {}
    for kind in SUBGROUPS:
        bands = np.array([_band(kind, attrs[i]) if i in attrs else "not available" for i in ids], dtype=object)
        rows = []
        for value in sorted({b for b in bands if b is not None}, key=str):
            m = bands == value
            if m.sum() < 5:
                rows.append({"value": value, "n": int(m.sum()), "note": "fewer than 5 cases: not reported"})
                continue
            ci = bootstrap_classification(y[m], p[m], threshold, n_boot, seed=0)
            rows.append({"value": value, "n": int(m.sum()), "malignant": int(y[m].sum()),
                         "sensitivity": ci["malignant_recall"] if y[m].any() else None,
                         "specificity": ci["benign_recall"] if (~y[m].astype(bool)).any() else None,
                         "auc": ci["auc"] if 0 < y[m].sum() < m.sum() else None})
        out[kind] = rows
    return out


def _cv_part(run: Run) -> dict | None:
    """The CV the run's operating point came from: protocol, pooled int8 results, subgroups."""
    op = run.manifest.operating_point or {}
    cv_dir = Path(op["cv"]) if op.get("cv") else None
    if cv_dir is None or not (cv_dir / "folds.jsonl").is_file():
        return None
    return _cv_evidence(cv_dir, op, run.manifest.data.root if run.manifest.data else None)


def _cv_evidence(cv_dir: Path, op: dict, root) -> dict:
    summary = read_json(cv_dir / "summary.json") if (cv_dir / "summary.json").is_file() else {}
    recs = sorted(read_jsonl(cv_dir / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    key = "test_prob_int8" if all("test_prob_int8" in r for r in recs) else "test_prob"
    ids = [i for r in recs for i in r["test_ids"]]
    y = np.concatenate([r["test_label"] for r in recs]).astype(int)
    p = np.concatenate([r[key] for r in recs])
    folds_file = cv_dir / "folds.json"
    group_by = (read_json(folds_file).get("group_by") if folds_file.is_file() else None) or "case"
    part = {"folder": str(cv_dir), "folds": len(recs), "n": int(len(y)), "malignant": int(y.sum()), "scored": key,
            "group_by": group_by,
            "pooled": summary.get("bootstrap_int8" if key == "test_prob_int8" else "bootstrap"),
            "int8_fidelity": summary.get("int8_fidelity"), "operating_point": {
                k: op.get(k) for k in ("target_sensitivity", "threshold", "cross_fitted", "ece", "source")}}
    part["subgroups"], part["subgroups_note"] = subgroups(ids, y, p, float(op["threshold"]), root)
    return part


def subgroups(ids, y, p, threshold: float, root) -> tuple[dict | None, str]:
    """(subgroup_table at the shipped threshold, a note), or (None, why not) where the data's sheet is
    not on this machine or not a BrEaST sheet."""
    try:
        from edgebus.data.breast import case_attributes

        table = subgroup_table(ids, y, p, threshold, case_attributes(root))
    except Exception as e:  # the data is not on this machine, or not a BrEaST sheet: say so
        return None, f"not available: {str(e).splitlines()[0][:160]}"
    return table, ("at the shipped threshold, on the out-of-fold predictions it was chosen on (the overall "
                   "cross-fitted estimate is the honest one; subgroups show where it is weaker)")


def subgroup_md(table: dict | None) -> list[str]:
    """Markdown lines: one table per subgroup kind."""
    lines = []
    for kind, rows in (table or {}).items():
        lines += [f"| {kind} | n | malignant | sensitivity | specificity | AUC |", "|---|---|---|---|---|---|"]
        for r in rows:
            if "note" in r:
                lines.append(f"| {r['value']} | {r['n']} | - | {r['note']} | | |")
            else:
                lines.append(f"| {r['value']} | {r['n']} | {r['malignant']} | {_ci(r['sensitivity'])} | "
                             f"{_ci(r['specificity'])} | {_ci(r['auc'])} |")
        lines.append("")
    return lines


def _latency(run: Run) -> list[dict]:
    path = run.file("report.json")
    if not path.is_file():
        return []
    rep = read_json(path)
    machine = rep.get("machine", {})
    where = f"{machine.get('cpu')} ({machine.get('arch')}, {machine.get('cores')} cores), {machine.get('interpreter')}"
    return [{"device": where, "file": Path(r["file"]).name, "threads": r.get("threads"), "xnnpack": r.get("xnnpack"),
             "median_ms": (r.get("latency_ms") or {}).get("median"), "measured": rep.get("created")}
            for r in rep.get("rows", []) if r.get("status") == "ok" and str(r.get("file", "")).endswith(".tflite")]


def _io(run: Run, export: dict) -> dict:
    """Inputs and outputs, typed (after MONAI bundle metadata's network_data_format)."""
    meta = read_json(run.file(export["metadata"])) if export.get("metadata") and run.file(export["metadata"]).is_file() else {}
    io = meta.get("io", {})
    c = run.manifest.preprocess or {}
    inputs = {"image": {"type": "image", "format": "grayscale B-mode frame, replicated to 3 channels",
                        "dtype": io.get("input", {}).get("dtype"), "shape": io.get("input", {}).get("shape"),
                        "value_range": [0, 255] if io.get("input", {}).get("dtype") == "uint8" else c.get("range"),
                        "preprocessing": c}}
    task = run.task.name
    outputs = {"malignant_probability" if task == "classify" else "lesion_mask": {
        "type": "probability" if task == "classify" else "segmentation",
        "dtype": io.get("output", {}).get("dtype"), "shape": io.get("output", {}).get("shape"),
        "threshold": meta.get("threshold"), "labels": meta.get("labels"), "calibration": meta.get("calibration")}}
    if meta.get("descriptors"):
        outputs["descriptors"] = {"type": "probabilities", "labels": [d["name"] for d in meta["descriptors"]]}
    return {"inputs": inputs, "outputs": outputs}


def model_card(run: Run) -> dict:
    """The card of a run's deliverable export (int8 where there is one)."""
    m = run.manifest
    exports = m.exports or {}
    key = "int8" if "int8" in exports else next(iter(exports))
    e = exports[key]
    train = m.stages.get("train", {})
    keras_test = (m.metrics.get("keras") or {}).get("test")
    card = {
        "schema": SCHEMA, "written": now(), "model": {
            "name": m.model.name if m.model else None, "task": run.task.name, "file": e["file"],
            "sha256": m.artifacts.get(e["file"], {}).get("sha256"), "format": e.get("format"), "source": e.get("source"),
            "input_size": (m.preprocess or {}).get("size")},
        "intended_use": INTENDED_USE[run.task.name], "not_for": NOT_FOR,
        "training_data": {"dataset": dataset_text(m.data), "root": m.data.root if m.data else None,
                          "fingerprint": m.data.fingerprint if m.data else None,
                          "lesion_cases": m.data.n_lesions if m.data else None,
                          "split": m.split.counts if m.split else None, "augment": train.get("augment"), "epochs": train.get("epochs"), "lr": train.get("lr"),
                          "schedule": train.get("schedule", "constant")},
        "evaluation": {"test_split": {"float": keras_test, key: e.get("metrics")}, "cv": _cv_part(run)},
        "calibration": (m.operating_point or {}).get("ece"),
        "int8_vs_float": {"fidelity": e.get("fidelity"), "agreement": e.get("agreement")} if key == "int8" else None,
        "gates": e.get("gates"), "operating_point": e.get("operating_point"),
        "latency": _latency(run),
        "limits": model_card_limits(m.data.n_lesions if m.data else None),
        "versions": {"edgebus": __version__, "tensorflow": train.get("tensorflow"), "tf_keras": train.get("keras"),
                     "interpreter": e.get("interpreter"), "run_created": m.created,
                     "run": str(run.path.resolve())},
    }
    card["io"] = _io(run, e)
    return card


def _ci(v) -> str:
    return "-" if v is None else interval_text(v)


def _gates_md(card: dict) -> list[str]:
    """The export gates' verdict and the file's own operating point, first in the card: a FAILED file
    may call cancers benign that its float parent caught."""
    g, point = card.get("gates"), card.get("operating_point")
    if not g:
        return ["## Export gates", "", "Not recorded (exported before edgebus gated files, or a CV's fold file).", ""]
    limits = ", ".join(f"{k} {v}" for k, v in (g.get("limits") or {}).items() if v is not None)
    head = (f"**FAILED**: {'; '.join(g['failures'])}. 'edgebus bundle' and 'edgebus predict' refuse this file without "
            f"{flag('accept_failed_gates')}." if g["status"] == "FAILED"
            else f"{g['status']} ({limits}; {g.get('checked_on')}).")
    lines = ["## Export gates", "", head, ""]
    if point:
        lines += [f"This file's threshold {point['threshold']:.4f} was chosen on {point['chosen_on']}" +
                  (f": sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f} there."
                   if point.get("sensitivity") is not None and point.get("specificity") is not None else "."), ""]
    if card.get("accepted_failed_gates"):
        lines += [f"Accepted: {card['accepted_failed_gates']}.", ""]
    return lines


def card_markdown(card: dict) -> str:
    """The card as Markdown, in the order a reader checks a model: the gates' verdict first, then what it
    is for, its data and evidence, and last its limits and versions."""
    cv = card["evaluation"]["cv"]
    lines = [*_intro_md(card), *_training_md(card["training_data"]), "## Evaluation", "", *_cv_md(cv)]
    if card.get("ensemble"):
        e = card["ensemble"]
        lines += ["### The ensemble", "", e["note"], "",
                  *[f"- `{m['file']}` (sha256 `{m['sha256'][:16]}`)" for m in e["members"]], ""]
    if card.get("stress"):
        lines += ["### Scanner-shift stress (every case out-of-fold)", "",
                  *[f"- {k}: AUC {v['clean']:.3f} clean, worst {v['worst']:.3f} under {v['worst_change']} (drop "
                    f"{v['worst_drop']:.3f}), lowest sensitivity {v['worst_sensitivity']:.3f}"
                    for k, v in card["stress"].items()], ""]
    ts = card["evaluation"]["test_split"] or {}
    lines += [] if not ts else ["Test split of the run: " + "; ".join(
        f"{k}: " + ", ".join(f"{m} {v[m]:.3f}" for m in ("accuracy", "auc", "iou", "dice")
                             if isinstance(v, dict) and v.get(m) is not None)
        for k, v in ts.items() if v), ""]
    lines += ["## Calibration", "", (f"Expected calibration error {card['calibration']}" if card["calibration"]
                                     else "Not calibrated (no operating point from a CV)."), ""]
    lines += ["## int8 against its float parent", "", *_int8_md((card["int8_vs_float"] or {}).get("fidelity"), cv)]
    lines += ["", "## Latency", ""]
    lines += [f"- {r['device']}: `{r['file']}`, {r['threads']} thread(s), median {r['median_ms']} ms"
              for r in card["latency"]] \
        or [card.get("latency_note") or "Not measured yet: `edgebus bench RUN` adds it."]
    lines += ["", "## Known limits", "", *[f"- {x}" for x in card["limits"]], "", "## Versions", "",
              *[f"- {k}: {v}" for k, v in card["versions"].items() if v is not None], ""]
    return "\n".join(lines)


def _intro_md(card: dict) -> list[str]:
    """The card's head: which file, the gates' verdict, what the model is for and not for, its inputs
    and outputs."""
    md = card["model"]
    what = f"File `{md['file']}` (sha256 `{md['sha256'][:16]}`)" if md["sha256"] else f"{md['file']} (listed below)"
    lines = [f"# Model card: {md['name']} ({md['task']}, {md['format']} {md['source'] or ''})".rstrip(), "",
             f"{what}, input {md['input_size']}. Written "
             f"{card['written']} by edgebus {card['versions']['edgebus']} from the run; nothing here is typed by hand.",
             "", *_gates_md(card), "## Intended use", "", card["intended_use"], "", "Not for:",
             *[f"- {x}" for x in card["not_for"]], "", "## Inputs and outputs", ""]
    for part in ("inputs", "outputs"):
        for name, d in card["io"][part].items():
            lines.append(f"- {part[:-1]} `{name}`: " + ", ".join(f"{k} {v}" for k, v in d.items()
                                                                  if k != "preprocessing" and v is not None))
    return lines


def _training_md(td: dict) -> list[str]:
    """What the model was trained on and how, in one sentence."""
    return ["", "## Training data", "", f"{td['dataset']}. {td['lesion_cases']} lesion cases, data fingerprint "
            f"`{(td['fingerprint'] or '')[:12]}`; training augmentation {td['augment']}, {td['epochs']} epochs at lr "
            f"{td['lr']} ({td.get('schedule', 'constant')} schedule).", ""]


def _cv_md(cv: dict | None) -> list[str]:
    """The cross-validation evidence: pooled out-of-fold metrics, the cross-fitted operating point, how
    the folds were drawn (which says what a new scanner may get) and the subgroups; or why there is none."""
    if not cv:
        return [f"No cross-validation is linked to this run (`edgebus operating-point RUN {flag('from_cv')} CV_DIR` "
                "links one); only the run's own test split below, too small for subgroups.", ""]
    op = cv["operating_point"]
    cf = op.get("cross_fitted") or {}
    lines = [f"{cv['folds']}-fold cross-validation, {cv['n']} cases ({cv['malignant']} malignant), every case scored "
             f"out-of-fold by the {cv['scored'].replace('test_prob', 'float').replace('float_int8', 'int8')} model of "
             f"its fold (`{cv['folder']}`).", ""]
    if cv.get("pooled"):
        lines += ["| metric | pooled out-of-fold [95% CI] |", "|---|---|"]
        lines += [f"| {k} | {_ci(cv['pooled'].get(k))} |"
                  for k in ("auc", "accuracy", "malignant_recall", "benign_recall") if k in cv["pooled"]]
    if cf:
        lines += ["", f"Operating point for sensitivity {op['target_sensitivity']}: threshold {op['threshold']:.4f}; "
                  f"cross-fitted sensitivity {cf['sensitivity']:.3f} [{cf['sensitivity_ci'][0]:.3f}, "
                  f"{cf['sensitivity_ci'][1]:.3f}], specificity {cf['specificity']:.3f} "
                  f"[{cf['specificity_ci'][0]:.3f}, "
                  f"{cf['specificity_ci'][1]:.3f}]." + (f" Per held-out fold (cancers in it): {per_fold_text(cf)}."
                                                         if cf.get("per_fold") else "")]
    lines += ["", "Folds: " + ("grouped by acquisition setting: each frame size (scanner + preset) in one test fold "
                               "only, so these are the numbers of a scanner setting the models never saw."
                               if cv.get("group_by") == "acquisition" else
                               "by case: every scanner setting was also in training, so a new scanner may get less "
                               "than these numbers (see Known limits).")]
    return lines + ["", "### By subgroup", "", f"Subgroups {cv['subgroups_note']}.", "",
                    *subgroup_md(cv.get("subgroups"))]


def _int8_md(f: dict | None, cv: dict | None) -> list[str]:
    """What int8 changed against its float parent (f: its fidelity on the test split), and over every
    out-of-fold case where the CV scored its int8 files."""
    lines = []
    if f and "flips" in f:
        lines.append(f"Test split: {f['flips']} of {f['n']} labels flipped ({f['benign_to_malignant']} benign -> "
                     f"malignant, {f['malignant_to_benign']} malignant -> benign); max probability gap "
                     f"{f['max_abs_diff']:.3f}.")
    elif f:
        lines.append(f"Test split: mask IoU between float and int8 {f['mask_iou_mean']:.3f} mean, "
                     f"{f['mask_iou_min']:.3f} worst image.")
    elif not (cv and cv.get("int8_fidelity")):
        lines.append("Not recorded: the file was exported before edgebus counted flips (re-export to add it).")
    if cv and cv.get("int8_fidelity") and "mask_iou_mean" in cv["int8_fidelity"]:
        g = cv["int8_fidelity"]
        lines.append(f"Cross-validation, all {g['n']} out-of-fold cases: float-vs-int8 mask IoU "
                     f"{g['mask_iou_mean']:.3f} mean, {g['mask_iou_min']:.3f} worst image.")
    elif cv and cv.get("int8_fidelity"):
        g = cv["int8_fidelity"]
        lines.append(f"Cross-validation, all {g['n']} out-of-fold cases: {g['flips']} flipped "
                     f"({g['benign_to_malignant']} benign -> malignant, {g['malignant_to_benign']} malignant -> "
                     "benign).")
    return lines


def cv_model_card(cv_dir) -> dict:
    """The card of a classifier CV's fold (or seed x fold) ensemble, the cart classifier a bundle
    made from the CV folder runs: its evidence is the out-of-fold evaluation, operating point and stress."""
    from edgebus.runtime.ensemble import cv_fold_files
    from edgebus.runtime.metadata import read_metadata

    cv_dir = Path(cv_dir)
    run = Run.load(cv_dir)
    files, threshold, calibration, _ = cv_fold_files(cv_dir)
    m, op = run.manifest, run.manifest.operating_point or {}
    summary = read_json(cv_dir / "summary.json")
    stress = cv_dir / "stress" / "stress.json"
    meta = read_metadata(files[0]) or {}
    io = meta.get("io", {})
    members = [{"file": str(f.relative_to(cv_dir)), "sha256": sha256_file(f)} for f in files]
    return {
        "schema": SCHEMA, "written": now(),
        "model": {"name": f"{summary['model']}, {len(files)}-member ensemble", "task": "classify",
                  "file": f"{len(files)} int8 files averaged", "sha256": None, "format": "int8",
                  "source": summary.get("int8_source"), "input_size": (m.preprocess or {}).get("size")},
        "intended_use": INTENDED_USE["classify"], "not_for": NOT_FOR,
        "training_data": {"dataset": dataset_text(m.data), "root": m.data.root if m.data else None,
                          "fingerprint": m.data.fingerprint if m.data else None,
                          "lesion_cases": m.data.n_lesions if m.data else None, "split": f"{summary['k']} folds",
                          "augment": (m.cv or {}).get("identity", {}).get("augment"), "epochs": summary.get("epochs"),
                          "lr": summary.get("lr"),
                          "schedule": (m.cv or {}).get("identity", {}).get("schedule", "constant")},
        "evaluation": {"test_split": None, "cv": _cv_evidence(cv_dir, op, m.data.root if m.data else None)},
        "calibration": op.get("ece"),
        "int8_vs_float": {"fidelity": None, "agreement": summary.get("int8_label_agreement")},
        "stress": read_json(stress)["summary"] if stress.is_file() else None,
        "ensemble": {"members": members, "combine": "mean of the members' outputs", "threshold": threshold,
                     "calibration": calibration,
                     "note": "Each case above was scored by the members of the one fold that did not train on it (a "
                             "merged CV: that fold's model of every seed, averaged). The cart averages every member, "
                             "each of which trained on 4 of the 5 folds: no case here is unseen by that average, so it "
                             "has no out-of-fold estimate of its own; the numbers above are those of the per-fold "
                             "averages, at the same threshold and calibration."},
        "latency": [], "latency_note": f"Not measured by the card: `edgebus predict {flag('bundle')}` reports "
                                       "frames/s per member count.",
        "limits": model_card_limits(m.data.n_lesions if m.data else None),
        "versions": {"edgebus": __version__, "interpreter": None, "run_created": m.created, "run": str(cv_dir.resolve())},
        "io": {"inputs": {"image": {"type": "image", "format": "grayscale B-mode frame, replicated to 3 channels",
                                    "dtype": io.get("input", {}).get("dtype"), "shape": io.get("input", {}).get("shape"),
                                    "preprocessing": m.preprocess}},
               "outputs": {"malignant_probability": {"type": "probability", "dtype": "float32", "shape": [1],
                                                     "threshold": threshold, "labels": meta.get("labels"),
                                                     "calibration": calibration}}},
    }


def write_cv_model_card(cv_dir) -> Path:
    """Write model_card.json / .md into a classifier CV folder (bundles built from it carry them)."""
    return _write(Run.load(cv_dir), cv_model_card(cv_dir))


def write_model_card(run_dir) -> Path:
    """Write model_card.json and model_card.md into an exported run and record them."""
    run = Run.load(run_dir)
    return _write(run, model_card(run))


def _write(run: Run, card: dict) -> Path:
    write_json(run.file(CARD_JSON), card)
    path = atomic_write(run.file(CARD_MD), card_markdown(card))
    run.add_artifact(CARD_JSON, "model-card")
    run.add_artifact(CARD_MD, "model-card")
    run.save()
    return path
