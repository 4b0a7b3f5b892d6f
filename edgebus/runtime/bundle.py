"""Cart bundles: one folder holding the classifier and the segmenter (classifier.tflite,
segmenter.tflite) and bundle.json recording where they came from and their sha256. A classifier
given as a CV directory becomes a fold ensemble (classifier_fold<k>.tflite, averaged on the cart)."""

from __future__ import annotations

import json
from pathlib import Path

from edgebus.core.calibration import valid_calibration, valid_threshold
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, read_json, sha256_file, staging, write_json
from edgebus.core.tasks import TASKS
from edgebus.runtime.ensemble import EnsembleModel, cv_fold_files
from edgebus.runtime.model import ExportedModel, check_gates, resolve_model_path

BUNDLE_FILES = {"classify": "classifier.tflite", "segment": "segmenter.tflite"}
BUNDLE_JSON = "bundle.json"
FUSION_FILE = "fusion.json"
SITE_FILE = "site.json"  # a threshold chosen on a site's own cases (edgebus site-threshold, runtime.site)


def read_bundle(folder: str | Path) -> dict:
    """A cart bundle's bundle.json, with every file it names sha256-checked. A folder without a valid
    bundle.json is not a cart: `edgebus bundle` and `site-threshold` write it last, so a folder a kill
    or a full disk left half made has none, and its models must not run unchecked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgebusError(f"{folder}: bundle folder not found; make one with 'edgebus bundle'")
    path = folder / BUNDLE_JSON
    if not path.is_file() or path.is_symlink():
        raise EdgebusError(f"{folder}: not a cart bundle (no {BUNDLE_JSON}: half made, or not made by 'edgebus "
                           "bundle'); make it again with 'edgebus bundle', or pass its files with "
                           f"{flag('classifier')}/{flag('segmenter')}")
    try:
        rec = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgebusError(f"{path}: not valid JSON ({getattr(e, 'msg', e)}); re-run 'edgebus bundle'") from None
    if not isinstance(rec, dict) or rec.get("schema") != "edgebus.bundle/1":
        raise EdgebusError(f"{path}: not an edgebus bundle record; re-run 'edgebus bundle'")
    entries = []
    for role in ("classifier", "segmenter", "fusion", "site", "presence"):
        e = rec.get(role)
        if e is None:
            continue
        if not isinstance(e, dict):
            raise EdgebusError(f"{path}: its {role} entry is not an object; re-run 'edgebus bundle'")
        entries += e["ensemble"] if role == "classifier" and isinstance(e.get("ensemble"), list) else [e]
    c = rec.get("classifier")
    if isinstance(c, dict) and "ensemble" in c and not (
            isinstance(c["ensemble"], list) and c["ensemble"] and valid_threshold(c.get("threshold"))
            and valid_calibration(c.get("calibration"))):
        raise EdgebusError(f"{path}: its fold ensemble has no members, or a threshold outside [0, 1] or an unusable "
                           "calibration; re-run 'edgebus bundle'")
    if not any(rec.get(r) for r in ("classifier", "segmenter")):
        raise EdgebusError(f"{path}: names no model; re-run 'edgebus bundle'")
    for e in entries:
        name = e.get("file") if isinstance(e, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise EdgebusError(f"{path}: names a file outside the bundle ({name!r}); re-run 'edgebus bundle'")
        p = folder / name
        if p.is_symlink() or not p.is_file() or sha256_file(p) != e.get("sha256"):
            raise EdgebusError(f"{p}: missing, or sha256 differs from {BUNDLE_JSON}; the file was changed, re-run "
                               "'edgebus bundle'")
    return rec


def replaceable(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything but an earlier bundle's files: --overwrite replaces the
    folder whole, and must not take a user's other files with it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgebusError(f"{out}: exists and is not a folder; pick another {flag('out')}")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise EdgebusError(f"{out}: folder is not empty; pick another {flag('out')} or pass {flag('overwrite')}")
    other = [p.name for p in out.iterdir() if p.is_symlink() or not p.is_file() or p.suffix not in (".tflite", ".json", ".md")]
    if other:
        raise EdgebusError(f"{out}: holds more than a cart bundle ({', '.join(sorted(other)[:3])}); "
                           f"{flag('overwrite')} replaces the whole folder: pick another {flag('out')}")


def find_bundle(folder: str | Path) -> tuple[Path | None, Path | None]:
    """(classifier, segmenter) files of a bundle folder (single-file models), sha256-checked against bundle.json."""
    rec = read_bundle(folder)
    return tuple(Path(folder) / rec[r]["file"] if rec.get(r) and "ensemble" not in rec[r] else None
                 for r in ("classifier", "segmenter"))


def _model_card_files(src) -> list[Path]:
    """A run directory's model_card.md / .json, sha256-checked against its manifest ([] for a file)."""
    from edgebus.core.manifest import MANIFEST, Run

    src = Path(src)
    if not (src / MANIFEST).is_file():
        return []
    run = Run.load(src)
    return [run.verify_artifact(n) for n in ("model_card.md", "model_card.json") if n in run.manifest.artifacts]


def _card_copy(card: Path, accepted: str | None) -> bytes:
    """A model card as it goes into a bundle: with the acceptance of a failed gate written into it."""
    if accepted is None:
        return card.read_bytes()
    if card.suffix == ".json":
        d = json.loads(card.read_text())
        d["accepted_failed_gates"] = accepted
        return (json.dumps(d, indent=2) + "\n").encode()
    return (card.read_text() + f"\n## Accepted with failed gates\n\n{accepted} ('edgebus bundle').\n").encode()


def make_bundle(out: str | Path, classifier: str | Path | None = None, segmenter: str | Path | None = None,
                fmt: str = "int8", overwrite: bool = False, fusion: str | Path | None = None,
                accept_failed_gates: bool = False, presence: str | Path | None = None) -> Path:
    """Copy a classifier and/or segmenter (.tflite files or run directories: their `fmt` export) into
    `out` as classifier.tflite / segmenter.tflite, with bundle.json recording sources and sha256.
    fusion: a fusion.json (or its folder) from `edgebus fuse`, applied on top of both. A file that
    failed its export gates is refused unless accept_failed_gates (then recorded in bundle.json and
    in the bundled model card). presence: a presence.json (or its folder) from `edgebus presence`,
    fitted on the maps of the same kind of mask model as the one bundled."""
    if classifier is None and segmenter is None:
        raise EdgebusError(f"bundle: pass {flag('classifier')} and/or {flag('segmenter')}")
    pres = _presence_rule(presence)
    fused = _shape_fusion(fusion, classifier)
    out = Path(out)
    replaceable(out, overwrite)
    record = {"schema": "edgebus.bundle/1"}
    staged, ensemble = [], None
    if classifier is not None and (Path(classifier) / "folds.jsonl").is_file():  # a CV: its fold models, averaged
        files, threshold, calibration, source = cv_fold_files(classifier)
        ensemble = (EnsembleModel(files, threshold, calibration), source, _model_card_files(classifier))
        classifier = None
    if fused is not None and segmenter is None:  # the shape then comes from a multi-task classifier's own mask
        c = ensemble[0] if ensemble else ExportedModel(classifier, "classify")
        if not c.has_mask:
            raise EdgebusError(f"bundle: {flag('fusion')} needs the lesion's mask: pass {flag('segmenter')}, or a "
                               "multi-task classifier (efficientnet-lite0-segaux) whose file gives it")
    for task, src in (("classify", classifier), ("segment", segmenter)):  # before anything is written:
        if src is None:
            continue
        m = ExportedModel(resolve_model_path(src, fmt), task)  # refuses a wrong or unlabelled file
        staged.append((task, m, check_gates(m, accept_failed_gates)))  # and one that failed its gates, unless accepted
    if pres is not None:
        _check_presence(pres, staged, ensemble)
        failed = pres.gate()
        if failed and not accept_failed_gates:
            raise EdgebusError(f"{failed}; fit it again ('edgebus presence {flag('max_miss')}'), or pass "
                               f"{flag('accept_failed_gates')}")
    with staging(out) as tmp:  # built in a fresh temp folder, renamed into place complete
        _copy_models(tmp, staged, {"classify": classifier, "segment": segmenter}, record)
        if ensemble is not None:
            _copy_ensemble(tmp, ensemble, record)
        if fused is not None:
            _copy_fusion(tmp, fused, record)
        if pres is not None:
            _copy_presence(tmp, pres, record)
        write_json(tmp / BUNDLE_JSON, record)  # last
    return out


def _presence_rule(presence):
    """The presence rule to bundle (a presence.json or its folder), read before anything is written."""
    if presence is None:
        return None
    from edgebus.runtime.presence import PRESENCE_JSON, LesionPresence

    return LesionPresence(Path(presence) / PRESENCE_JSON if Path(presence).is_dir() else presence)


def _shape_fusion(fusion, classifier):
    """The fusion to bundle (a fusion.json or its folder), refused before anything is written without a
    classifier, or with a CV classifier other than the one its scores came from."""
    if fusion is None:
        return None
    from edgebus.runtime.fusion import FUSION_JSON, ShapeFusion

    fused = ShapeFusion(Path(fusion) / FUSION_JSON if Path(fusion).is_dir() else fusion)
    if classifier is None:
        raise EdgebusError(f"bundle: {flag('fusion')} combines the classifier's score with the lesion's shape; "
                           f"pass {flag('classifier')}")
    cv = fused.source.get("classifier_cv")
    if (Path(classifier) / "folds.jsonl").is_file() and cv and Path(cv).resolve() != Path(classifier).resolve():
        raise EdgebusError(f"{fused.path}: fitted on the scores of {cv}, not of {classifier}; "
                           f"run 'edgebus fuse {classifier} SEG_CV' first")
    return fused


def _copy_models(out: Path, staged: list, sources: dict, record: dict) -> None:
    """Each single-file model into the bundle, under its role's name, with its run's model card (an
    accepted gate failure written into both)."""
    for task, m, accepted in staged:
        name = BUNDLE_FILES[task]
        atomic_write(out / name, m.path.read_bytes())
        record[TASKS[task].role] = {**m.describe(), "file": name, "copied_from": str(m.path.resolve())}
        if accepted:
            record[TASKS[task].role]["accepted_failed_gates"] = accepted
        for card in _model_card_files(sources[task]):  # the run's model card travels with its model
            atomic_write(out / f"{TASKS[task].role}_{card.name}", _card_copy(card, accepted))


def _copy_ensemble(out: Path, ensemble: tuple, record: dict) -> None:
    """A CV's fold models into the bundle as classifier_fold<k>.tflite, averaged on the cart, with the CV's card."""
    ens, source, cards = ensemble
    members = []
    for card in cards:  # the CV's card of this ensemble (written by 'edgebus operating-point CV_DIR')
        atomic_write(out / f"classifier_{card.name}", card.read_bytes())
    for k, m in enumerate(ens.members):
        name = f"classifier_fold{k}.tflite"
        atomic_write(out / name, m.path.read_bytes())
        members.append({"file": name, "sha256": sha256_file(out / name), "copied_from": str(m.path.resolve())})
    record["classifier"] = {"ensemble": members, "threshold": ens.threshold, "calibration": ens.calibration,
                            "combine": "mean of the members' outputs", "task": "classify", **source}


def _copy_fusion(out: Path, fused, record: dict) -> None:
    """The fusion into the bundle, with its out-of-fold evidence (fusion.md) where there is one."""
    atomic_write(out / FUSION_FILE, fused.path.read_bytes())
    if (fused.path.parent / "fusion.md").is_file():  # its out-of-fold evidence travels with it
        atomic_write(out / "fusion.md", (fused.path.parent / "fusion.md").read_bytes())
    record["fusion"] = {**fused.describe(), "file": FUSION_FILE, "copied_from": str(fused.path.resolve())}


def _copy_presence(out: Path, pres, record: dict) -> None:
    """The presence rule into the bundle as presence.json, with its evidence (presence.md) and an accepted
    gate failure recorded."""
    atomic_write(out / pres.path.name if pres.path.name == "presence.json" else out / "presence.json",
                 pres.path.read_bytes())
    if (pres.path.parent / "presence.md").is_file():  # its out-of-fold evidence travels with it
        atomic_write(out / "presence.md", (pres.path.parent / "presence.md").read_bytes())
    record["presence"] = {**pres.describe(), "file": "presence.json", "sha256": sha256_file(out / "presence.json"),
                          "copied_from": str(pres.path.resolve())}
    if pres.gate():
        record["presence"]["accepted_failed_gates"] = pres.gate()


def _check_presence(pres, staged: list, ensemble) -> None:
    """The presence rule reads a lesion map: the bundle must give one, from the kind of model it was fitted on."""
    maps = [m for task, m, _ in staged if task == "segment"] or [m for task, m, _ in staged if m.has_mask]
    if not maps and ensemble is not None and ensemble[0].has_mask:
        maps = [ensemble[0].members[0]]
    if not maps:
        raise EdgebusError(f"{pres.path}: decides on the lesion map; pass {flag('segmenter')}, or a multi-task "
                           "classifier whose file gives the mask")
    want, got = pres.mask_from.get("model"), maps[0].describe().get("model")
    if want and got and want != got:
        raise EdgebusError(f"{pres.path}: fitted on the maps of {want}, but the bundle's mask comes from {got}; run "
                           f"'edgebus presence' on a CV of {got}")


def load_bundle(folder: str | Path, num_threads: int = 1, xnnpack: bool = True, rec: dict | None = None):
    """(classifier: a file, or the EnsembleModel of a fold-ensemble bundle, or None; segmenter file or None)."""
    folder = Path(folder)
    rec = rec or read_bundle(folder)
    c, s = rec.get("classifier"), rec.get("segmenter")
    seg = folder / s["file"] if s else None
    if c and "ensemble" in c:
        paths = [folder / m["file"] for m in c["ensemble"]]
        return EnsembleModel(paths, c["threshold"], c.get("calibration"), num_threads, xnnpack), seg
    return (folder / c["file"] if c else None), seg


def bundle_acceptances(folder: str | Path, rec: dict | None = None) -> list[str]:
    """The failed export gates a bundle's maker accepted (bundle.json; [] for none)."""
    rec = rec or read_bundle(folder)
    return [e["accepted_failed_gates"] for e in (rec.get(r) for r in ("classifier", "segmenter", "presence"))
            if isinstance(e, dict) and e.get("accepted_failed_gates")]


def load_fusion(folder: str | Path, rec: dict | None = None):
    """The bundle's classifier + shape fusion (runtime.fusion.ShapeFusion), sha256-checked, or None."""
    from edgebus.runtime.fusion import ShapeFusion

    entry = (rec or read_bundle(folder)).get("fusion")
    return ShapeFusion(Path(folder) / entry["file"]) if entry else None


def load_presence(folder: str | Path, rec: dict | None = None):
    """The bundle's lesion-presence rule (runtime.presence.LesionPresence), sha256-checked, or None."""
    from edgebus.runtime.presence import LesionPresence

    entry = (rec or read_bundle(folder)).get("presence")
    return LesionPresence(Path(folder) / entry["file"]) if entry else None


def load_site(folder: str | Path, rec: dict | None = None) -> dict | None:
    """The bundle's site threshold (site.json from `edgebus site-threshold`), sha256-checked against
    bundle.json, or None."""
    entry = (rec or read_bundle(folder)).get("site")
    if not entry:
        return None
    p = Path(folder) / entry["file"]
    site = read_json(p)
    if not isinstance(site, dict) or not valid_threshold(site.get("threshold")) or \
            not valid_calibration(site.get("calibration")):
        raise EdgebusError(f"{p}: no threshold, or not a Platt calibration; re-run 'edgebus site-threshold' on the "
                           "shipped cart")
    return site | {"sha256": entry["sha256"]}
