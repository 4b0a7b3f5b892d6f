"""A labelled set of ultrasound DICOM files, for `edgebus evaluate --format dicom`: a model scored
on the frames as a cart receives them (regions cut, pixels decoded by the cart's own reader).

Layout: a folder with the DICOM files and a `labels.csv`::

    file,label,mask,frame
    us001.dcm,malignant,us001.seg.dcm,
    us002.dcm,benign,us002_mask.png,
    loop3.dcm,benign,,12

`label` is benign or malignant; `mask` (needed to score a segmenter, optional for a classifier) is
a DICOM SEG referencing the image (one edgebus --dicom-seg wrote and a radiologist corrected, say)
or a PNG of the full stored frame (Rows x Columns); `frame` picks one frame of a loop (default 1).
Masks are cut to the B-mode region exactly as the frame is, so truth and input stay aligned.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.data.breast import Case, Dataset
from edgebus.data.preprocess import cut_area, lesion_box, load_mask, resize_mask, to_model_input

LABELS_FILE = "labels.csv"
_LABELS = {"benign": 0, "malignant": 1}


def read_dicom_set(root: str | Path) -> tuple[Dataset, dict[int, int]]:
    """(the cases of a labelled DICOM folder, {case_id: frame number}); every file is checked to exist."""
    root = Path(root)
    sheet = root / LABELS_FILE
    if not sheet.is_file():
        raise EdgebusError(f"{root}: no {LABELS_FILE}; a DICOM set needs one with columns file,label[,mask][,frame]")
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise EdgebusError(f"{sheet}: needs the columns file and label (benign or malignant), and optionally mask, frame")
    cases, frames = [], {}
    for i, r in enumerate(rows, start=1):
        where = f"{sheet}, row {i + 1}"
        label = (r.get("label") or "").strip().lower()
        if label not in _LABELS:
            raise EdgebusError(f"{where}: label '{r.get('label')}'; write benign or malignant")
        image = root / (r.get("file") or "").strip()
        mask = (r.get("mask") or "").strip()
        for p in (image, root / mask if mask else None):
            if p is not None and not p.is_file():
                raise EdgebusError(f"{where}: {p} not found; fix the path (relative to {root})")
        frame = (r.get("frame") or "").strip()
        try:
            frames[i] = int(frame) if frame else 1
        except ValueError:
            raise EdgebusError(f"{where}: frame '{frame}' is not a frame number (1, 2, ...)") from None
        cases.append(Case(case_id=i, image=image, mask=root / mask if mask else None, label=_LABELS[label],
                          classification=label, pixel_size=None))
    return Dataset(root=root, sheet=sheet, cases=cases), frames


def _frame(path: Path, number: int):
    from edgebus.runtime.dicom import iter_frames

    for fr in iter_frames(path):
        if fr.number == number:
            return fr
    raise EdgebusError(f"{path}: has no frame {number}; fix the frame column of {LABELS_FILE}")


def _mask(case: Case, fr, uid: str | None) -> np.ndarray:
    """The case's truth mask cut to the frame's B-mode region, as the frame was."""
    if case.mask.suffix.lower() in (".dcm", ".dicom"):
        from edgebus.runtime.dicom_seg import read_seg_mask

        full = read_seg_mask(case.mask, uid or "")
    else:
        full = load_mask(case.mask)
    if fr.region is not None:
        x0, y0, x1, y1 = fr.region
        full = full[max(y0, 0):y1, max(x0, 0):x1]
    if full.shape != fr.gray.shape:
        raise EdgebusError(f"{case.mask}: mask {full.shape[::-1]} does not fit {case.image.name}'s frame; give a mask "
                           "of the full stored frame (Rows x Columns)")
    return full


def dicom_arrays(cases, frames: dict, contract: dict, with_masks: bool = False, boxes: dict | None = None) -> tuple:
    """(x, y, masks) as data.breast.load_arrays gives them, from DICOM frames decoded by the cart's reader."""
    h, w = contract["size"]
    cases = list(cases)
    x = np.empty((len(cases), h, w, contract["channels"]), np.float32)
    y = np.array([c.label for c in cases], np.int64)
    masks = np.zeros((len(cases), h, w, 1), np.uint8) if with_masks else None
    crop = "crop" in contract
    for i, c in enumerate(cases):
        fr = _frame(c.image, frames[c.case_id])
        m = _mask(c, fr, fr.sop_instance_uid) if c.mask is not None and (with_masks or crop) else None
        gray, m = cut_area(fr.gray, m, str(c.mask))  # as the cart cuts every frame
        box = None
        if crop:
            box = (boxes or {}).get(c.case_id, lesion_box(m) if m is not None else None)
        x[i] = to_model_input(gray, contract, box)
        if with_masks and m is not None:
            masks[i, ..., 0] = resize_mask(m, (h, w))
    return x, y, masks
