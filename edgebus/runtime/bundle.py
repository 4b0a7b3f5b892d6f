"""Cart bundles: one folder holding the classifier and the segmenter (classifier.tflite,
segmenter.tflite) and bundle.json recording where they came from and their sha256."""

from __future__ import annotations

import json
from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, sha256_file, write_json
from edgebus.core.tasks import TASKS
from edgebus.runtime.metadata import read_metadata
from edgebus.runtime.model import ExportedModel, resolve_model_path

BUNDLE_FILES = {"classify": "classifier.tflite", "segment": "segmenter.tflite"}
BUNDLE_JSON = "bundle.json"


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


def make_bundle(out: str | Path, classifier: str | Path | None = None, segmenter: str | Path | None = None,
                fmt: str = "int8", overwrite: bool = False) -> Path:
    """Copy a classifier and/or segmenter (.tflite files or run directories: their `fmt` export) into
    `out` as classifier.tflite / segmenter.tflite, with bundle.json recording sources and sha256."""
    if classifier is None and segmenter is None:
        raise EdgebusError("bundle: pass --classifier and/or --segmenter")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise EdgebusError(f"{out}: folder is not empty; pick another --out or pass --overwrite")
    record = {"schema": "edgebus.bundle/1"}
    staged = []
    for task, src in (("classify", classifier), ("segment", segmenter)):
        if src is None:
            continue
        m = ExportedModel(resolve_model_path(src, fmt), task)  # refuses a wrong or unlabelled file before anything is written
        staged.append((task, m))
    for task, m in staged:
        name = BUNDLE_FILES[task]
        atomic_write(out / name, m.path.read_bytes())
        record[TASKS[task].role] = {**m.describe(), "file": name, "copied_from": str(m.path.resolve())}
    for task, name in BUNDLE_FILES.items():  # a replaced bundle keeps no stale model of the other task
        if task not in dict(staged) and (out / name).exists():
            (out / name).unlink()
    write_json(out / BUNDLE_JSON, record)
    return out
