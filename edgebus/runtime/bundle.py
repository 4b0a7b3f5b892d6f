"""Cart bundles: one folder holding the classifier and the segmenter (classifier.tflite,
segmenter.tflite) and bundle.json recording where they came from and their sha256. A classifier
given as a CV directory becomes a fold ensemble (classifier_fold<k>.tflite, averaged on the cart)."""

from __future__ import annotations

import json
from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, read_json, sha256_file, write_json
from edgebus.core.tasks import TASKS
from edgebus.runtime.metadata import read_metadata
from edgebus.runtime.ensemble import EnsembleModel, cv_fold_files
from edgebus.runtime.model import ExportedModel, check_gates, resolve_model_path

BUNDLE_FILES = {"classify": "classifier.tflite", "segment": "segmenter.tflite"}
BUNDLE_JSON = "bundle.json"
FUSION_FILE = "fusion.json"
SITE_FILE = "site.json"  # a threshold chosen on a site's own cases (edgebus site-threshold, runtime.site)


def find_bundle(folder: str | Path) -> tuple[Path | None, Path | None]:
    """(classifier, segmenter) files of a bundle folder: classifier.tflite / segmenter.tflite, or else
    the .tflite files whose metadata says task classify / segment (at most one of each)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgebusError(f"{folder}: bundle folder not found; make one with 'edgebus bundle'")
    named = {t: folder / n for t, n in BUNDLE_FILES.items() if (folder / n).is_file()}
    if named:
        found = named
    else:
        found, dup = {}, {}
        for p in sorted(folder.glob("*.tflite")):
            task = (read_metadata(p) or {}).get("task")
            if task in TASKS:
                dup.setdefault(task, []).append(p.name)
                found.setdefault(task, p)
        for task, names in dup.items():
            if len(names) > 1:
                raise EdgebusError(f"{folder}: more than one {task} model ({', '.join(names)}); keep one, or name "
                                   f"them {BUNDLE_FILES['classify']} / {BUNDLE_FILES['segment']}")
        if not found:
            raise EdgebusError(f"{folder}: no .tflite with edgebus metadata; make a bundle with 'edgebus bundle'")
    manifest = folder / BUNDLE_JSON
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise EdgebusError(f"{manifest}: not valid JSON ({e.msg}); re-run 'edgebus bundle'") from None
        for task, p in found.items():
            entry = recorded.get(TASKS[task].role) or {}
            if entry.get("file") == p.name and entry.get("sha256") and sha256_file(p) != entry["sha256"]:
                raise EdgebusError(f"{p}: sha256 differs from {BUNDLE_JSON}; the file was changed, re-run 'edgebus bundle'")
    return found.get("classify"), found.get("segment")


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
                accept_failed_gates: bool = False) -> Path:
    """Copy a classifier and/or segmenter (.tflite files or run directories: their `fmt` export) into
    `out` as classifier.tflite / segmenter.tflite, with bundle.json recording sources and sha256.
    fusion: a fusion.json (or its folder) from `edgebus fuse`, applied on top of both. A file that
    failed its export gates is refused unless accept_failed_gates (then recorded in bundle.json and
    in the bundled model card)."""
    if classifier is None and segmenter is None:
        raise EdgebusError("bundle: pass --classifier and/or --segmenter")
    fused = None
    if fusion is not None:
        from edgebus.runtime.fusion import FUSION_JSON, ShapeFusion

        fused = ShapeFusion(Path(fusion) / FUSION_JSON if Path(fusion).is_dir() else fusion)
        if classifier is None or segmenter is None:
            raise EdgebusError("bundle: --fusion combines the classifier with the segmenter's lesion shape; pass both")
        cv = fused.source.get("classifier_cv")
        if (Path(classifier) / "folds.jsonl").is_file() and cv and Path(cv).resolve() != Path(classifier).resolve():
            raise EdgebusError(f"{fused.path}: fitted on the scores of {cv}, not of {classifier}; "
                               f"run 'edgebus fuse {classifier} SEG_CV' first")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise EdgebusError(f"{out}: folder is not empty; pick another --out or pass --overwrite")
    record = {"schema": "edgebus.bundle/1"}
    staged, ensemble = [], None
    if classifier is not None and (Path(classifier) / "folds.jsonl").is_file():  # a CV: its fold models, averaged
        files, threshold, calibration, source = cv_fold_files(classifier)
        ensemble = (EnsembleModel(files, threshold, calibration), source, _model_card_files(classifier))
        classifier = None
    for task, src in (("classify", classifier), ("segment", segmenter)):
        if src is None:
            continue
        m = ExportedModel(resolve_model_path(src, fmt), task)  # refuses a wrong or unlabelled file before anything is written
        staged.append((task, m, check_gates(m, accept_failed_gates)))  # and one that failed its gates, unless accepted
    for task, m, accepted in staged:
        name = BUNDLE_FILES[task]
        atomic_write(out / name, m.path.read_bytes())
        record[TASKS[task].role] = {**m.describe(), "file": name, "copied_from": str(m.path.resolve())}
        if accepted:
            record[TASKS[task].role]["accepted_failed_gates"] = accepted
        src = classifier if task == "classify" else segmenter
        for card in _model_card_files(src):  # the run's model card travels with its model
            atomic_write(out / f"{TASKS[task].role}_{card.name}", _card_copy(card, accepted))
    members = []
    if ensemble is not None:
        ens, source, cards = ensemble
        for card in cards:  # the CV's card of this ensemble (written by 'edgebus operating-point CV_DIR')
            atomic_write(out / f"classifier_{card.name}", card.read_bytes())
        for k, m in enumerate(ens.members):
            name = f"classifier_fold{k}.tflite"
            atomic_write(out / name, m.path.read_bytes())
            members.append({"file": name, "sha256": sha256_file(out / name), "copied_from": str(m.path.resolve())})
        record["classifier"] = {"ensemble": members, "threshold": ens.threshold, "calibration": ens.calibration,
                                "combine": "mean of the members' outputs", "task": "classify", **source}
    (out / "fusion.md").unlink(missing_ok=True)
    if fused is not None:
        atomic_write(out / FUSION_FILE, fused.path.read_bytes())
        if (fused.path.parent / "fusion.md").is_file():  # its out-of-fold evidence travels with it
            atomic_write(out / "fusion.md", (fused.path.parent / "fusion.md").read_bytes())
        record["fusion"] = {**fused.describe(), "file": FUSION_FILE, "copied_from": str(fused.path.resolve())}
    else:
        (out / FUSION_FILE).unlink(missing_ok=True)  # a replaced bundle keeps no stale fusion
    for name in (SITE_FILE, "site_check.md"):  # nor a site threshold chosen for the models it replaced
        (out / name).unlink(missing_ok=True)
    keep = {BUNDLE_JSON, *(m["file"] for m in members), *(BUNDLE_FILES[t] for t, _, _ in staged)}
    for p in out.glob("*.tflite"):  # a replaced bundle keeps no stale model
        if p.name not in keep and (p.name in BUNDLE_FILES.values() or p.name.startswith("classifier_fold")):
            p.unlink()
    write_json(out / BUNDLE_JSON, record)
    return out


def load_bundle(folder: str | Path, num_threads: int = 1, xnnpack: bool = True):
    """(classifier: a file, or the EnsembleModel of a fold-ensemble bundle, or None; segmenter file or None)."""
    folder = Path(folder)
    manifest = folder / BUNDLE_JSON
    entry = {}
    if manifest.is_file():
        try:
            entry = json.loads(manifest.read_text()).get("classifier") or {}
        except json.JSONDecodeError as e:
            raise EdgebusError(f"{manifest}: not valid JSON ({e.msg}); re-run 'edgebus bundle'") from None
    if "ensemble" not in entry:
        return find_bundle(folder)
    paths = []
    for m in entry["ensemble"]:
        p = folder / Path(m["file"]).name
        if not p.is_file() or sha256_file(p) != m.get("sha256"):
            raise EdgebusError(f"{p}: missing, or sha256 differs from {BUNDLE_JSON}; the file was changed, re-run 'edgebus bundle'")
        paths.append(p)
    seg = folder / BUNDLE_FILES["segment"]
    if seg.is_file():
        recorded = (json.loads(manifest.read_text()).get("segmenter") or {}).get("sha256")
        if recorded and sha256_file(seg) != recorded:
            raise EdgebusError(f"{seg}: sha256 differs from {BUNDLE_JSON}; the file was changed, re-run 'edgebus bundle'")
    ens = EnsembleModel(paths, entry["threshold"], entry.get("calibration"), num_threads, xnnpack)
    return ens, seg if seg.is_file() else None


def bundle_acceptances(folder: str | Path) -> list[str]:
    """The failed export gates a bundle's maker accepted (bundle.json; [] for none or no bundle.json)."""
    manifest = Path(folder) / BUNDLE_JSON
    if not manifest.is_file():
        return []
    rec = read_json(manifest)
    return [e["accepted_failed_gates"] for e in (rec.get(r) for r in ("classifier", "segmenter"))
            if isinstance(e, dict) and e.get("accepted_failed_gates")]


def load_fusion(folder: str | Path):
    """The bundle's classifier + shape fusion (runtime.fusion.ShapeFusion), sha256-checked, or None."""
    from edgebus.runtime.fusion import ShapeFusion

    folder = Path(folder)
    manifest = folder / BUNDLE_JSON
    if not manifest.is_file():
        return None
    try:
        entry = json.loads(manifest.read_text()).get("fusion")
    except json.JSONDecodeError as e:
        raise EdgebusError(f"{manifest}: not valid JSON ({e.msg}); re-run 'edgebus bundle'") from None
    if not entry:
        return None
    p = folder / FUSION_FILE
    if not p.is_file() or sha256_file(p) != entry.get("sha256"):
        raise EdgebusError(f"{p}: missing, or sha256 differs from {BUNDLE_JSON}; the file was changed, re-run 'edgebus bundle'")
    return ShapeFusion(p)


def load_site(folder: str | Path) -> dict | None:
    """The bundle's site threshold (site.json from `edgebus site-threshold`), sha256-checked against
    bundle.json, or None."""
    folder = Path(folder)
    manifest = folder / BUNDLE_JSON
    if not manifest.is_file():
        return None
    entry = read_json(manifest).get("site")
    if not entry:
        return None
    p = folder / SITE_FILE
    if not p.is_file() or sha256_file(p) != entry.get("sha256"):
        raise EdgebusError(f"{p}: missing, or sha256 differs from {BUNDLE_JSON}; the file was changed, re-run "
                           "'edgebus site-threshold' on the shipped cart")
    site = read_json(p)
    cal = site.get("calibration") if isinstance(site, dict) else None
    if (not isinstance(site, dict) or not isinstance(site.get("threshold"), (int, float))
            or (cal is not None and not (cal.get("method") == "platt" and isinstance(cal.get("b"), (int, float))
                                         and isinstance(cal.get("a"), (int, float)) and cal["a"] > 0))):
        raise EdgebusError(f"{p}: no threshold, or not a Platt calibration; re-run 'edgebus site-threshold' on the "
                           "shipped cart")
    return site | {"sha256": entry["sha256"]}
