"""Lesion boxes for segmentation-guided (lesion-crop) classification.

A crop classifier is trained on squares cut around the true masks. Its val and test squares must be
cut the way the cart cuts them: around the box of a segmenter's predicted mask, from a segmenter that
never saw those images. Boxes come from a segment run trained on the same split (single split) or
from a segment cross-validation with the same folds (which records each fold's boxes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import read_jsonl, sha256_file
from edgebus.core.manifest import Run
from edgebus.data.preprocess import lesion_box


def predicted_boxes(prob: np.ndarray, threshold: float) -> list:
    """lesion_box of each predicted mask (N, H, W, 1) at prob >= threshold (None: nothing found)."""
    return [lesion_box(p[..., 0] >= threshold) for p in np.asarray(prob)]


def segmenter_cv_boxes(cv_dir: str | Path, folds: list[dict], fingerprint: str) -> tuple[list[dict], str]:
    """Per fold {"val": {case_id: box}, "test": {...}, "test_int8": {...}} from a segment CV directory
    made on the same data with the same folds, and the sha256 of its results file. Each fold's boxes
    come from a segmenter that never saw that fold's val or test images."""
    cv_dir = Path(cv_dir)
    if not (cv_dir / "manifest.json").is_file():
        raise EdgebusError(f"{cv_dir}: not a cross-validation folder; pass {flag('boxes_from')} the folder 'edgebus "
                           "cv segment' wrote")
    run = Run.load(cv_dir)
    where = f"{cv_dir}"
    if run.task.name != "segment" or run.manifest.cv is None:
        raise EdgebusError(f"{where}: not a segmentation cross-validation; pass the folder 'edgebus cv segment' wrote")
    if run.manifest.data.fingerprint != fingerprint:
        raise EdgebusError(f"{where}: made on other data (fingerprint differs); run 'edgebus cv segment' on this data")
    theirs = run.read_artifact_json("folds.json")["folds"]
    if theirs != folds:
        raise EdgebusError(f"{where}: its folds differ from these (another {flag('folds')}, {flag('seed')} or val "
                           "fraction); run both with the same settings")
    recs = {r["fold"]: r for r in read_jsonl(cv_dir / "folds.jsonl", key="fold")}
    out = []
    for f, fold in enumerate(folds):
        r = recs.get(f)
        if r is None:
            raise EdgebusError(f"{where}: fold {f + 1} not done yet; finish 'edgebus cv segment' first")
        if "boxes" not in r:
            raise EdgebusError(f"{where}: made by an older edgebus that did not record lesion boxes; "
                               f"re-run 'edgebus cv segment' into a new {flag('out')}")
        b = {"val": dict(zip(r["val_ids"], r["boxes"]["val"])), "test": dict(zip(r["test_ids"], r["boxes"]["test"]))}
        if "boxes_int8" in r:
            b["test_int8"] = dict(zip(r["test_ids"], r["boxes_int8"]["test"]))
        out.append(b)
    return out, sha256_file(cv_dir / "folds.jsonl")


def segmenter_run_boxes(seg_run: str | Path, by_id: dict, split: dict, fingerprint: str) -> tuple[dict, dict]:
    """({case_id: box} for the val and test cases of `split`, predicted by the Keras model of segment
    run `seg_run`; a description of the source). Refuses a segmenter that trained on any of them."""
    from edgebus.data.breast import load_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    seg_run = Path(seg_run)
    run = Run.load(seg_run)
    if run.task.name != "segment":
        raise EdgebusError(f"{seg_run}: a {run.task.name} run; pass a segment run directory as {flag('segmenter')}")
    if run.manifest.data.fingerprint != fingerprint:
        raise EdgebusError(f"{seg_run}: trained on other data (fingerprint differs); train the segmenter on this data")
    seg_split = run.read_artifact_json("split.json")
    seen = set(seg_split["train"]) & (set(split["val"]) | set(split["test"]))
    if seen:
        raise EdgebusError(f"{seg_run}: the segmenter trained on {len(seen)} of this run's val/test images (another "
                           f"split); train it with the same {flag('seed')} so its boxes are honest")
    model = load_run_model(run)
    threshold = run.manifest.threshold
    boxes = {}
    for part in ("val", "test"):
        cases = [by_id[i] for i in split[part]]
        x = load_arrays(cases, run.manifest.preprocess)[0]
        boxes.update(zip(split[part], predicted_boxes(predict(model, x), threshold)))
    source = {"segmenter_run": str(seg_run.resolve()), "model_sha256": run.manifest.artifacts["model.keras"]["sha256"],
              "model": run.manifest.model.name, "threshold": threshold}
    return boxes, source
