"""External validation: score a trained (or exported) model on another data set without training
on it, e.g. a BrEaST model on BUSI. Uses the run's own preprocessing contract and threshold."""

from __future__ import annotations

from pathlib import Path

from edgebus.errors import EdgebusError
from edgebus.metrics import task_metrics
from edgebus.rundir import Run, write_json

READERS = ("busi", "breast")


def read_dataset(data: str | Path, fmt: str):
    if fmt == "busi":
        from edgebus.data.busi import read_busi

        return read_busi(data)
    if fmt == "breast":
        from edgebus.data.breast import read_breast

        return read_breast(data)
    raise EdgebusError(f"--format '{fmt}': choose one of {', '.join(READERS)}")


def external_boxes(segmenter: str | Path, cases) -> tuple[dict, str]:
    """({case_id: box} predicted by `segmenter`, a segment run directory (its Keras model) or an
    exported segment .tflite, on whole frames; the file used)."""
    from edgebus.data.breast import load_arrays
    from edgebus.training.crops import predicted_boxes

    segmenter = Path(segmenter)
    if segmenter.is_dir():
        from edgebus.training.train import load_model, predict

        seg = Run.load(segmenter)
        if seg.task != "segment":
            raise EdgebusError(f"{segmenter}: a {seg.task} run; pass a segment run or .tflite as --segmenter")
        x = load_arrays(cases, seg.manifest["preprocess"])[0]
        prob = predict(load_model(seg.verify_artifact("model.keras")), x)
        return dict(zip([c.case_id for c in cases], predicted_boxes(prob, seg.manifest.get("threshold", 0.5)))), str(segmenter)
    from edgebus.runtime.predict import TaskModel

    m = TaskModel(segmenter, "segment")
    x = load_arrays(cases, m.contract)[0]
    prob = m.model.predict(x)
    return dict(zip([c.case_id for c in cases], predicted_boxes(prob, m.threshold))), str(m.path)


def evaluate_external(run_dir, data, fmt: str = "busi", model_file: str | None = None, segmenter: str | None = None,
                      log=print) -> dict:
    """Metrics of the run's model (Keras, or `model_file`: one of its exported .tflite files) on
    every lesion case of `data`; written to the run as external-<format>-<fingerprint>.json. A
    lesion-crop classifier needs `segmenter` (a segment run or .tflite) to find the lesions."""
    from edgebus.data.breast import fingerprint, load_arrays

    run = Run.load(run_dir)
    contract = run.manifest["preprocess"]
    if "crop" in contract and segmenter is None:
        raise EdgebusError(f"{run.path}: a lesion-crop classifier; pass --segmenter (a segment run or .tflite) "
                           "to find the lesions it classifies")
    ds = read_dataset(data, fmt)
    cases = ds.lesions()
    if not cases:
        raise EdgebusError(f"{ds.root}: no benign/malignant cases with masks to evaluate on")
    boxes, boxes_from = (None, None) if "crop" not in contract else external_boxes(segmenter, cases)
    x, y, m = load_arrays(cases, contract, with_masks=run.task == "segment", boxes=boxes)
    truth = y if run.task == "classify" else m
    thr = run.manifest.get("threshold", 0.5)
    if model_file:
        from edgebus.runtime import TFLiteModel

        path = run.verify_artifact(model_file) if not Path(model_file).is_absolute() else Path(model_file)
        prob = TFLiteModel(path).predict(x)
        used = path.name
    else:
        from edgebus.training.train import load_model, predict

        prob = predict(load_model(run.verify_artifact("model.keras")), x)
        used = "model.keras"
    fp = fingerprint(ds)
    result = {
        "data": {"root": str(Path(ds.root).resolve()), "format": fmt, "fingerprint": fp, "n_cases": len(cases),
                 "per_class": {str(k): int((y == k).sum()) for k in (0, 1)}},
        "model_file": used,
        "threshold": thr,
        "metrics": task_metrics(run.task, truth, prob, thr),
    }
    if boxes_from:
        result["boxes_from"] = boxes_from
        result["no_lesion_found"] = sum(b is None for b in boxes.values())
    name = f"external-{fmt}-{fp[:8]}-{Path(used).stem}.json"
    write_json(run.file(name), result)
    run.add_artifact(name, "external-validation")
    run.manifest.setdefault("external", {})[name] = {k: result[k] for k in ("data", "model_file", "threshold")}
    run.save()
    log(f"{run.path / name}: {used} on {fmt} ({len(cases)} cases)")
    return result
