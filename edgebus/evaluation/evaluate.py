"""External validation: score a trained (or exported) model on another data set without training
on it, e.g. a BrEaST model on BUSI. Uses the run's own preprocessing contract and threshold."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import write_json
from edgebus.core.manifest import Run
from edgebus.data.breast import fingerprint, load_arrays

READERS = ("busi", "breast", "dicom")


def read_dataset(data: str | Path, fmt: str):
    if fmt == "dicom":
        from edgebus.evaluation.dicom_set import read_dicom_set

        return read_dicom_set(data)[0]
    if fmt == "busi":
        from edgebus.data.busi import read_busi

        return read_busi(data)
    if fmt == "breast":
        from edgebus.data.breast import read_breast

        return read_breast(data)
    raise EdgebusError(f"{flag('format')} '{fmt}': choose one of {', '.join(READERS)}")


def arrays_reader(data, fmt: str):
    """load_arrays(cases, contract, with_masks, boxes) for a data set's format: DICOM frames go
    through the cart's DICOM reader (regions cut), image files through data.breast."""
    if fmt != "dicom":
        return load_arrays
    from edgebus.evaluation.dicom_set import dicom_arrays, read_dicom_set

    frames = read_dicom_set(data)[1]
    return lambda cases, contract, with_masks=False, boxes=None: dicom_arrays(cases, frames, contract, with_masks, boxes)


def external_boxes(segmenter: str | Path, cases, load=load_arrays) -> tuple[dict, str]:
    """({case_id: box} predicted by `segmenter`, a segment run directory (its Keras model) or an
    exported segment .tflite, on whole frames; the file used)."""
    from edgebus.training.crops import predicted_boxes

    segmenter = Path(segmenter)
    ids = [c.case_id for c in cases]
    if segmenter.is_dir():
        from edgebus.engine.fit import predict
        from edgebus.engine.models import load_run_model

        seg = Run.load(segmenter)
        if seg.task.name != "segment":
            raise EdgebusError(f"{segmenter}: a {seg.task.name} run; pass a segment run or .tflite as "
                               f"{flag('segmenter')}")
        prob = predict(load_run_model(seg), load(cases, seg.manifest.preprocess)[0])
        return dict(zip(ids, predicted_boxes(prob, seg.manifest.threshold))), str(segmenter)
    from edgebus.runtime.model import ExportedModel

    m = ExportedModel(segmenter, "segment")
    prob = m.predict(load(cases, m.contract)[0])
    return dict(zip(ids, predicted_boxes(prob, m.threshold))), str(m.path)


def evaluate_external(run_dir, data, fmt: str = "busi", model_file: str | None = None, segmenter: str | None = None,
                      log=print) -> dict:
    """Metrics of the run's model (Keras, or `model_file`: one of its exported .tflite files) on
    every lesion case of `data`; written to the run as external-<format>-<fingerprint>.json. A
    lesion-crop classifier needs `segmenter` (a segment run or .tflite) to find the lesions."""
    run = Run.load(run_dir)
    contract = run.manifest.preprocess
    if "crop" in contract and segmenter is None:
        raise EdgebusError(f"{run.path}: a lesion-crop classifier; pass {flag('segmenter')} "
                           "(a segment run or .tflite) "
                           "to find the lesions it classifies")
    ds = read_dataset(data, fmt)
    cases = ds.lesions() if fmt != "dicom" or run.task.truth_is_mask else [c for c in ds.cases if c.label is not None]
    if not cases:
        raise EdgebusError(f"{ds.root}: no benign/malignant cases with masks to evaluate on")
    load = arrays_reader(data, fmt)
    boxes, boxes_from = (None, None) if "crop" not in contract else external_boxes(segmenter, cases, load)
    x, y, m = load(cases, contract, with_masks=run.task.truth_is_mask, boxes=boxes)
    thr = run.manifest.threshold
    if model_file:
        from edgebus.runtime.model import ExportedModel

        if Path(model_file).is_absolute():
            path = Path(model_file)
        else:
            if model_file not in run.manifest.artifacts:
                raise EdgebusError(f"{run.path / model_file}: not an exported file of this run; pass one of its .tflite files")
            path = run.verify_artifact(model_file)
        prob = ExportedModel(path, run.task).predict(x)
        used = path.name
    else:
        from edgebus.engine.fit import predict
        from edgebus.engine.models import load_run_model

        prob = predict(load_run_model(run), x)
        used = "model.keras"
    fp = fingerprint(ds)
    result = {
        "data": {"root": str(Path(ds.root).resolve()), "format": fmt, "fingerprint": fp, "n_cases": len(cases),
                 "per_class": {str(k): int((y == k).sum()) for k in (0, 1)}},
        "model_file": used,
        "threshold": thr,
        "metrics": run.task.metrics(run.task.truth(y, m), prob, thr),
    }
    if boxes_from:
        result["boxes_from"] = boxes_from
        result["no_lesion_found"] = sum(b is None for b in boxes.values())
    name = f"external-{fmt}-{fp[:8]}-{Path(used).stem}.json"
    write_json(run.file(name), result)
    run.add_artifact(name, "external-validation")
    run.manifest.external[name] = {k: result[k] for k in ("data", "model_file", "threshold")}
    run.save()
    log(f"{run.path / name}: {used} on {fmt} ({len(cases)} cases)")
    return result
