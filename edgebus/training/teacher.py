"""Distillation of the cart into one multi-task student (`edgebus cv classify --teacher CV_DIR
--teacher-masks SEG_CV`, `edgebus train classify --teacher ...`).

The student's training targets mix the truth with its teacher's soft answers: the malignancy target
is (1 - w) * label + w * the teacher classifier's probability (a seed ensemble's mean where the
teacher CV is merged), the mask target (1 - w) * truth + w * the teacher segmenter's lesion
probability map. Validation and test keep the truth. In a CV each fold's student learns from its own
fold's teachers only, run on the fold's training cases: those teachers never saw the fold's test
cases, so the student's out-of-fold scores stay honest. A final student (train) learns from every
fold's teachers averaged. Teachers are the int8 files the cart runs, loaded as the cart loads them,
each on the frame's image area through its own preprocessing contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgebus.core.errors import EdgebusError, flag
from edgebus.training.cv_summary import finished_cv

TEACHER_WEIGHT = 0.5  # w: the teacher's share of each target (0: the truth alone; 1: the teacher alone)


def _fold_models(cv_dir, recs: list, task: str) -> list:
    """Per fold: its int8 file (a merged CV's fold: its members averaged), as the cart loads it."""
    from edgebus.runtime.ensemble import EnsembleModel, member_files
    from edgebus.runtime.model import ExportedModel

    out = []
    for r in recs:
        files = [m.get("model_int8.tflite") for m in member_files(r, Path(cv_dir))]
        if None in files:
            raise EdgebusError(f"{cv_dir}: fold {r['fold'] + 1} kept no int8 model; the teacher must be a CV made "
                               f"with {flag('int8')}")
        out.append(ExportedModel(files[0], task) if len(files) == 1 else EnsembleModel(files, 0.5))
    return out


def load_teachers(cls_cv, seg_cv, fingerprint: str, folds: list | None = None) -> dict:
    """The teachers of a distillation, checked: made on the same data (fingerprint) and, where the
    student's `folds` are given (a CV), on exactly those folds. {"classify": [per fold], "segment":
    [per fold] or None, "source": what they are}."""
    if cls_cv is None:
        raise EdgebusError(f"{flag('teacher_masks')} needs {flag('teacher')} (the classifier CV the student learns "
                           "malignancy from)")
    out = {"source": {"teacher": str(Path(cls_cv).resolve()), "teacher_masks": None}}
    for key, cv_dir, task in (("classify", cls_cv, "classify"), ("segment", seg_cv, "segment")):
        if cv_dir is None:
            out[key] = None
            continue
        run, their_folds, recs = finished_cv(Path(cv_dir), task)
        their_folds = their_folds["folds"]
        if run.manifest.data.fingerprint != fingerprint:
            raise EdgebusError(f"{cv_dir}: made on other data (fingerprint differs); a teacher must be trained on this set")
        if folds is not None and their_folds != folds:
            raise EdgebusError(f"{cv_dir}: its folds differ from this CV's; run it with the teacher's "
                               f"{flag('folds')}, {flag('fold_seed')} and {flag('group_by')} (each fold's student may "
                               "only learn from teachers that never saw its test cases)")
        out[key] = _fold_models(cv_dir, recs, task)
        if key == "segment":
            out["source"]["teacher_masks"] = str(Path(cv_dir).resolve())
    return out


def _teacher_answers(models: list, grays: list, size) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean probability and (for segmenters) mean lesion map at `size` of `models` on each frame."""
    h, w = size
    probs, maps = [], []
    for g in grays:
        outs = [m.outputs_for(m.tensor_for(m.pixels_for(g))) for m in models]
        if outs[0]["prob"] is not None:
            probs.append(np.mean([o["prob"] for o in outs]))
        if outs[0]["mask"] is not None and outs[0]["prob"] is None:
            maps.append(np.mean([np.asarray(Image.fromarray(o["mask"].astype(np.float32)).resize((w, h), Image.BILINEAR))
                                 for o in outs], axis=0))
    return np.asarray(probs, np.float32), (np.stack(maps)[..., None] if maps else None)


def soften(part: tuple, cases: list, teachers: dict, fold: int | None, weight: float = TEACHER_WEIGHT) -> tuple:
    """A training part (x, labels, masks, descriptors) with its targets mixed with the teachers'
    answers on the same cases: fold k's teachers in a CV, every fold's averaged for a final student
    (fold None)."""
    from edgebus.data.preprocess import cut_area, load_gray

    if not 0 <= weight <= 1:
        raise EdgebusError(f"{flag('teacher_weight')} {weight}: give a share from 0 (the truth alone) to 1 (the "
                           "teacher alone)")
    pick = (lambda ms: [ms[fold]]) if fold is not None else (lambda ms: list(ms))  # noqa: E731
    grays = [cut_area(load_gray(c.image))[0] for c in cases]
    x, y, masks, desc = (tuple(part) + (None, None))[:4]
    p, _ = _teacher_answers(pick(teachers["classify"]), grays, x.shape[1:3])
    y = np.where(y < 0, y, (1 - weight) * y.astype(np.float32) + weight * p).astype(np.float32)  # -1: no label, kept
    if teachers.get("segment") is not None:
        if masks is None:
            raise EdgebusError(f"{flag('teacher_masks')}: the student has no mask output to learn them with; use a "
                               "multi-task model (efficientnet-lite0-segaux)")
        _, maps = _teacher_answers(pick(teachers["segment"]), grays, x.shape[1:3])
        masks = ((1 - weight) * masks.astype(np.float32) + weight * maps).astype(np.float32)
    return (x, y, masks, desc)
