"""A fold ensemble on the cart: the k int8 classifiers of a cross-validation, run on the same input
and averaged, with one threshold and calibration (the CV's out-of-fold operating point where it
was chosen, else the CV's threshold). At ~1 ms per int8 Lite0 a frame, k = 5 models cost ~5 ms.

The operating point was chosen on single-model out-of-fold predictions; the mean of k models is a
steadier score for the same case, so the threshold is an estimate for the ensemble, to be checked
on data no fold saw (an external set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.calibration import apply as calibrate, valid_calibration, valid_threshold
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import read_jsonl, sha256_file
from edgebus.core.manifest import Run
from edgebus.runtime.model import ExportedModel


class EnsembleModel:
    """k ExportedModels of one contract, averaged; the same interface the pipeline uses."""

    def __init__(self, paths: list, threshold: float, calibration: dict | None = None, num_threads: int = 1,
                 xnnpack: bool = True):
        if len(paths) < 2:
            raise EdgebusError("a fold ensemble needs 2 or more classifier files")
        self.members = [ExportedModel(p, "classify", num_threads, xnnpack) for p in paths]
        first = self.members[0]
        for m in self.members[1:]:
            if m.contract != first.contract:
                raise EdgebusError(f"{m.path}: its preprocessing contract differs from {first.path.name}'s; an ensemble "
                                   "averages models of one recipe")
        self.task, self.contract, self.size, self.labels = first.task, first.contract, first.size, first.labels
        self.threshold, self.calibration = float(threshold), calibration
        self.descriptors = first.descriptors if all(m.descriptors == first.descriptors for m in self.members) else []
        self.path = first.path.parent
        self.meta = {**first.meta, "ensemble": [m.path.name for m in self.members]}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(x) for m in self.members], axis=0)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.predict(x[None])[0]

    @property
    def has_mask(self) -> bool:
        return all(m.has_mask for m in self.members)

    @property
    def mask_threshold(self):
        return self.members[0].mask_threshold if self.has_mask else None

    def pixels_for(self, gray: np.ndarray, box=None) -> np.ndarray:
        return self.members[0].pixels_for(gray, box)

    def _table_keys(self) -> list:
        """Each member's input quantization, as a key (made once): members sharing one share a tensor."""
        if getattr(self, "_keys", None) is None:
            self._keys = [(t.dtype.str, t.tobytes()) for t in (m.model.pixel_table() for m in self.members)]
        return self._keys

    def tensor_for(self, pixels: np.ndarray) -> dict:
        """The input tensor per distinct input quantization: the frame is looked up once for every
        member that shares it (members of one recipe all do)."""
        out = {}
        for m, key in zip(self.members, self._table_keys()):
            if key not in out:
                out[key] = m.tensor_for(pixels)
        return out

    def outputs_for(self, tensors: dict) -> dict:
        """Every member's one invoke on its input tensor, averaged (probability, descriptors, mask)."""
        outs = [m.outputs_for(tensors[key]) for m, key in zip(self.members, self._table_keys())]
        mean = lambda k: None if outs[0][k] is None else np.mean([o[k] for o in outs], axis=0)  # noqa: E731
        return {"prob": float(mean("prob")), "descriptors": mean("descriptors") if self.descriptors else None,
                "mask": mean("mask") if self.has_mask else None}

    def input_for(self, gray: np.ndarray, box=None) -> np.ndarray:
        return self.members[0].input_for(gray, box)

    def calibrated(self, p) -> np.ndarray:
        return calibrate(self.calibration, p)

    def describe(self) -> dict:
        d = self.members[0].describe()
        d.update(file=str(self.path), ensemble=[m.describe()["file"] for m in self.members], threshold=self.threshold,
                 calibration=self.calibration, combine="mean of the members' outputs")
        return d


def cv_fold_files(cv_dir: str | Path) -> tuple[list[Path], float, dict | None, dict]:
    """(each fold's int8 classifier, sha256-checked; threshold; calibration; where they came from)
    of a classifier CV directory made with --int8."""
    cv_dir = Path(cv_dir)
    run = Run.load(cv_dir)
    if run.manifest.cv is None or run.task.name != "classify":
        raise EdgebusError(f"{cv_dir}: not a classifier cross-validation; pass the folder 'edgebus cv classify "
                           f"{flag('int8')}' wrote")
    recs = sorted(read_jsonl(cv_dir / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    if len(recs) != run.manifest.cv["identity"]["folds"]:
        raise EdgebusError(f"{cv_dir}: not every fold is done; finish 'edgebus cv' first")
    files = []
    for r in recs:  # every fold's int8 file; a merged CV (edgebus cv-merge): every member's of every fold
        for paths in member_files(r, cv_dir):
            if "model_int8.tflite" not in paths:
                raise EdgebusError(f"{cv_dir}: fold {r['fold'] + 1} kept no int8 model; run 'edgebus cv classify ... "
                                   f"{flag('int8')}' with this edgebus into a new {flag('out')}")
            files.append(paths["model_int8.tflite"])
    op = cv_point(run)
    if op is not None and op.get("source") != "int8":
        op = None  # chosen on the float models' predictions: not the files the cart runs
    source = {"cv": str(cv_dir.resolve()), "folds": len(files),
              "operating_point": "cv out-of-fold (int8)" if op else "the CV's threshold (no operating point chosen)"}
    return files, (op or {}).get("threshold", run.manifest.threshold), (op or {}).get("calibration"), source


def cv_point(cv: Run) -> dict | None:
    """A classifier CV's operating_point.json (None: none chosen), trusted only as `edgebus
    operating-point` wrote it: recorded in the CV's manifest with the sha256 it has now, made from
    the folds.jsonl there now, a threshold from 0 to 1, a finite calibration. A hand-edited threshold
    would otherwise be embedded in every file and bundle made from the CV."""
    name, where = "operating_point.json", cv.path / "operating_point.json"
    if not where.is_file() and not where.is_symlink():
        return None
    if name not in cv.manifest.artifacts:
        raise EdgebusError(f"{where}: not recorded in the CV's manifest.json (made by hand or by an older edgebus); "
                           f"run 'edgebus operating-point {cv.path} {flag('overwrite')}' again")
    op = cv.read_artifact_json(name)  # sha256-checked
    if not (isinstance(op, dict) and valid_threshold(op.get("threshold")) and valid_calibration(op.get("calibration"))
            and valid_threshold(op.get("target_sensitivity")) and op["target_sensitivity"] > 0):
        raise EdgebusError(f"{where}: threshold, target or calibration out of range (a threshold lies from 0 to 1); "
                           f"run 'edgebus operating-point {cv.path} {flag('overwrite')}' again")
    folds = cv.path / "folds.jsonl"
    if (op.get("inputs") or {}).get("folds_sha256") != (sha256_file(folds) if folds.is_file() else None):
        raise EdgebusError(f"{folds}: changed since the operating point was chosen; run "
                           f"'edgebus operating-point {cv.path} {flag('overwrite')}' again")
    return op


def member_files(rec: dict, cv_dir: Path) -> list[dict]:
    """[{model name: path}] of a fold record: one entry for a plain CV, one per member for a merged
    one; every file sha256-checked."""
    groups = rec.get("members") or ([rec["models"]] if "models" in rec else None)
    if groups is None:
        raise EdgebusError(f"{cv_dir}: made by an edgebus that did not keep each fold's model; re-run 'edgebus cv' "
                           f"into a new {flag('out')}")
    out = []
    for g in groups:
        paths = {}
        for name, m in g.items():
            p = cv_dir / m["file"]
            if ".." in Path(m["file"]).parts or not p.is_file() or sha256_file(p) != m["sha256"]:
                raise EdgebusError(f"{p}: missing, or changed since the CV wrote it (sha256); re-run 'edgebus cv'")
            paths[name] = p
        out.append(paths)
    return out
