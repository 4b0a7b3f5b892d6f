"""A run's data as arrays: the lesion cases of a BrEaST-layout set, split parts preprocessed with
the run's own contract. Training, export, evaluation and the operating point all load their data
here, so every stage sees exactly the images the run was trained and tested on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.manifest import DataInfo, Run
from edgebus.core.metrics import CLASS_NAMES
from edgebus.core.descriptors import DESCRIPTORS
from edgebus.core.tasks import get_task
from edgebus.data.breast import fingerprint, load_arrays, read_breast

SYNTHETIC_MARK = "synthetic"  # in the sheet's name of a set made by `edgebus synth` (edgebus.data.synthetic.SHEET_NAME)

PARTS = ("train", "val", "test")


def read_lesions(data):
    """(Dataset, lesion cases), refusing a set too small to split."""
    ds = read_breast(data)
    cases = ds.lesions()
    if len(cases) < 10:
        raise EdgebusError(f"{ds.root}: only {len(cases)} lesion cases with masks; need at least 10 to split 80/10/10")
    labels = {c.label for c in cases}
    if len(labels) < 2:
        only = CLASS_NAMES[labels.pop()]
        raise EdgebusError(f"{ds.sheet}: every lesion case is {only}; a benign-vs-malignant model needs both classes")
    return ds, cases


def data_info(ds, fp: str, n_lesions: int) -> DataInfo:
    """The manifest's `data` entry of a run, grid or CV on a BrEaST-layout set."""
    return DataInfo(root=str(Path(ds.root).resolve()), format="breast", fingerprint=fp, n_rows=len(ds.cases),
                    n_lesions=n_lesions, classes=list(CLASS_NAMES), synthetic=is_synthetic(ds.root))


def is_synthetic(root) -> bool:
    """A set made by `edgebus synth` (its sheet's name says so): not patient data."""
    return root is not None and Path(root).is_dir() and any(Path(root).glob(f"*{SYNTHETIC_MARK}*.xlsx"))


def trained_on_synthetic(data) -> bool:
    """Whether a run's data entry (DataInfo) is a synthetic set; older manifests lack the flag, so the
    folder is looked at too when it is still there."""
    return data is not None and (bool(getattr(data, "synthetic", False)) or is_synthetic(data.root))


def descriptor_array(cases) -> np.ndarray:
    """(N, len(DESCRIPTORS)) BI-RADS findings, 1 / 0 / -1 unknown (all unknown for a case without them)."""
    n = len(DESCRIPTORS)
    return np.array([c.descriptors if c.descriptors is not None else (-1,) * n for c in cases], dtype=np.float32).reshape(-1, n)


def load_split_data(cases_by_id: dict, split: dict, contract: dict, task, boxes: dict | None = None,
                    masks: bool = False, descriptors: bool = False) -> dict:
    """Arrays for each part named in `split` (train/val/test), in split order: (x, labels) to
    classify, (x, masks) to segment; a classifier with training heads gets (x, labels, masks or
    None, descriptors or None): masks=True for an auxiliary mask, descriptors=True for BI-RADS
    descriptor heads. Masks are (N,H,W,1). A crop contract cuts around boxes[case_id] where given,
    else around the case's true mask (see load_arrays)."""
    task = get_task(task)
    parts = {}
    for name in [n for n in PARTS if n in split]:
        cases = [cases_by_id[i] for i in split[name]]
        x, y, m = load_arrays(cases, contract, with_masks=task.truth_is_mask or masks, boxes=boxes)
        truth = task.truth(y, m)
        if task.truth_is_mask or not (masks or descriptors):
            parts[name] = (x, truth)
        else:
            parts[name] = (x, truth, m if masks else None, descriptor_array(cases) if descriptors else None)
    return parts


def run_dataset(run: Run):
    """The run's data set, refused when it changed since the run saw it."""
    ds = read_breast(run.manifest.data.root)
    if fingerprint(ds) != run.manifest.data.fingerprint:
        raise EdgebusError(f"{ds.root}: data changed since {run.path} was made (fingerprint differs); "
                           "restore the data or make a new run")
    return ds


def run_boxes(run: Run) -> dict | None:
    """A lesion-crop run's val/test boxes (boxes.json; the train part uses the true masks)."""
    if "crop" not in (run.manifest.preprocess or {}):
        return None
    return {int(k): v for k, v in run.read_artifact_json("boxes.json")["boxes"].items()}


def load_run_arrays(run: Run, parts=("train", "test"), masks: bool = False) -> dict:
    """The run's own split parts, preprocessed with the run's own contract (with the lesion masks
    as the third array where `masks`: a multi-task classifier's second target)."""
    ds = run_dataset(run)
    split = run.read_artifact_json(run.manifest.split.file if run.manifest.split else "split.json")
    by_id = {c.case_id: c for c in ds.lesions()}
    heads = bool(run.manifest.model.kwargs.get("descriptors")) if run.manifest.model else False
    return load_split_data(by_id, {k: split[k] for k in parts}, run.manifest.preprocess, run.task, run_boxes(run),
                           masks=masks, descriptors=heads)
