"""Convert a run's Keras model to TFLite, then run every file with the interpreter on the test
split and record its metric and its agreement with the Keras parent (as Ultralytics' exporter does).

int8 is full-integer: calibrated on training images, TFLITE_BUILTINS_INT8 only, uint8 (or int8)
input/output, a batch-1 static graph (no SHAPE/STRIDED_SLICE ops; the Edge TPU needs static
shapes), and checked to hold no float tensor. Quantization-aware fine-tuning (issue 4) plugs in
as another source model for the same converter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgebus import __version__
from edgebus.errors import EdgebusError
from edgebus.metrics import agreement, task_metrics
from edgebus.rundir import Run, atomic_write, write_json
from edgebus.runtime.interpreter import TFLiteModel
from edgebus.runtime.metadata import METADATA_NAME

FORMATS = ("float32", "float16", "dynamic", "int8")
LABELS = ["benign", "malignant"]


def _converter(tf, model):
    shape = [1, *model.input_shape[1:]]
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([fn], model)


def convert(model, fmt: str, calibration: np.ndarray | None = None, io_type: str = "uint8") -> bytes:
    """Keras model -> TFLite flatbuffer bytes in format `fmt`."""
    from edgebus.compat import tf

    conv = _converter(tf, model)
    if fmt == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        if calibration is None or not len(calibration):
            raise EdgebusError("int8 export needs calibration images from the run's training split")

        def representative():
            # a 0..1 ramp first pins the input range to exactly [0, 1]: uint8 input = raw pixels (scale 1/255)
            yield [np.broadcast_to(np.linspace(0, 1, calibration.shape[2], dtype=np.float32)[None, :, None],
                                   calibration.shape[1:])[None].copy()]
            for x in calibration:
                yield [x[None].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = {"uint8": tf.uint8, "int8": tf.int8}[io_type]
        conv.inference_output_type = conv.inference_input_type
    elif fmt != "float32":
        raise EdgebusError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    return conv.convert()


def embed_metadata(tflite: bytes, meta: dict) -> bytes:
    """Add `meta` as JSON under the name 'edgebus' in the flatbuffer's metadata list."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [md]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_tensors(m: TFLiteModel) -> list[str]:
    """Names of float tensors left in a model (an int8 model should have none)."""
    return [t["name"] for t in m.interpreter.get_tensor_details() if np.dtype(t["dtype"]).kind == "f"]


def _io_details(m: TFLiteModel) -> dict:
    def d(t):
        scale, zero = t["quantization"]
        return {"shape": [int(s) for s in t["shape"]], "dtype": np.dtype(t["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

    return {"input": d(m.input), "output": d(m.outputs[0])}


def model_metadata(run: Run, fmt: str, source: str) -> dict:
    """What a lone .tflite needs to be used correctly on a cart."""
    task = run.task
    return {
        "edgebus_version": __version__,
        "task": task,
        "format": fmt,
        "source": source,  # "ptq" / "qat" / "float"
        "labels": LABELS if task == "classify" else ["background", "lesion"],
        "output": "malignant probability" if task == "classify" else "lesion probability per pixel",
        "threshold": run.manifest.get("threshold", 0.5),
        "preprocess": run.manifest["preprocess"],
        "model": run.manifest["model"],
        "source_run": str(run.path.resolve()),
        "run_created": run.manifest["created"],
        "data_fingerprint": run.manifest["data"]["fingerprint"],
    }


def load_run_arrays(run: Run, parts=("train", "test")) -> dict:
    """The run's own split, preprocessed with the run's own contract."""
    from edgebus.data.breast import read_breast
    from edgebus.training.train import load_split_data

    ds = read_breast(run.manifest["data"]["root"])
    from edgebus.data.breast import fingerprint

    if fingerprint(ds) != run.manifest["data"]["fingerprint"]:
        raise EdgebusError(
            f"{ds.root}: data changed since the run was trained (fingerprint differs); retrain or restore the data"
        )
    split = json.loads(run.verify_artifact("split.json").read_text())
    by_id = {c.case_id: c for c in ds.lesions()}
    return load_split_data(by_id, {k: split[k] for k in ("train", "val", "test")}, run.manifest["preprocess"], run.task)


def write_eval_pack(run: Run, split_ids: list, x: np.ndarray, y: np.ndarray) -> None:
    """The test split as uint8 pixels + truth, so benchmarks on a device need no data reader."""
    import io

    images = np.round(x[..., 0] * 255).astype(np.uint8)
    buf = io.BytesIO()
    arrays = {"images": images, "case_ids": np.asarray(split_ids)}
    arrays["labels" if run.task == "classify" else "masks"] = np.asarray(y).astype(np.uint8).reshape(len(x), *(() if run.task == "classify" else images.shape[1:]))
    np.savez_compressed(buf, **arrays)
    atomic_write(run.file("eval_pack.npz"), buf.getvalue())
    run.add_artifact("eval_pack.npz", "eval-pack", split="test", n=len(x))


def export_run(run_dir: str | Path, formats=("float32", "int8"), calibration_images: int = 100,
               io_type: str = "uint8", overwrite: bool = False, log=print) -> dict:
    """Export the run's model to each format, validate each file, record it all in the manifest."""
    run = Run.load(run_dir)
    done = run.manifest.get("exports", {})
    again = [f for f in formats if f in done]
    if again and not overwrite:
        raise EdgebusError(f"{run.path}: already exported ({', '.join(again)}); pass --overwrite to replace them")
    for f in formats:
        if f not in FORMATS:
            raise EdgebusError(f"unknown format '{f}'; choose from {', '.join(FORMATS)}")

    from edgebus.training.train import load_model, predict

    model = load_model(run.verify_artifact("model.keras"))
    data = load_run_arrays(run)
    xtr, _ = data["train"]
    xte, yte = data["test"]
    split = json.loads(run.file("split.json").read_text())
    write_eval_pack(run, split["test"], xte, yte)
    thr = run.manifest.get("threshold", 0.5)
    keras_prob = predict(model, xte)
    keras_metrics = task_metrics(run.task, yte, keras_prob, thr)
    rng = np.random.default_rng(0)
    calib = xtr[rng.permutation(len(xtr))[:calibration_images]]

    results = dict(done)
    for fmt in formats:
        name = f"model_{fmt}.tflite"
        log(f"converting {fmt} ...")
        meta = model_metadata(run, fmt, "ptq" if fmt == "int8" else "float")
        raw = convert(model, fmt, calib if fmt == "int8" else None, io_type)
        atomic_write(run.file(name), raw)  # first without metadata to read the I/O details
        m = TFLiteModel(run.file(name))
        meta["io"] = _io_details(m)
        atomic_write(run.file(name), embed_metadata(raw, meta))
        write_json(run.file(f"model_{fmt}.json"), meta)
        m = TFLiteModel(run.file(name))
        prob = m.predict(xte)
        entry = {
            "file": name, "metadata": f"model_{fmt}.json", "bytes": run.file(name).stat().st_size,
            "io": meta["io"], "ops": sorted(set(m.op_names())),
            "metrics": task_metrics(run.task, yte, prob, thr),
            "agreement": agreement(run.task, keras_prob, prob, thr),
            "interpreter": f"{m.backend} {m.backend_version}",
            "xnnpack": m.xnnpack, "xnnpack_error": m.xnnpack_error,
        }
        if fmt == "int8":
            left = float_tensors(m)
            entry["float_tensors"] = left
            if left:
                entry["status"] = "failed"
                entry["error"] = f"{len(left)} float tensors left (first: {left[0]}); not a full-integer model"
        entry.setdefault("status", "ok")
        run.add_artifact(name, "tflite", format=fmt)
        run.add_artifact(f"model_{fmt}.json", "tflite-metadata", format=fmt)
        results[fmt] = entry
        log(f"  {name}: {entry['bytes'] / 1e6:.2f} MB, status {entry['status']}")
    run.manifest["exports"] = results
    run.manifest["metrics"]["keras_test"] = keras_metrics
    run.stage("export", formats=list(formats), calibration_images=int(len(calib)), io_type=io_type)
    run.save()
    failed = [f for f, e in results.items() if e["status"] != "ok"]
    if failed:
        raise EdgebusError(f"{run.path}: export of {', '.join(failed)} failed: {results[failed[0]]['error']}")
    return results
