"""Keras model -> TFLite flatbuffer, and the edgebus metadata every exported file carries.

int8 is full-integer: calibrated on training images, TFLITE_BUILTINS_INT8 only, uint8 (or int8)
input/output, a batch-1 static graph (no SHAPE/STRIDED_SLICE ops; the Edge TPU needs static
shapes). The metadata (task, labels, threshold, preprocessing contract, source run, data
fingerprint) is embedded in the file, so a lone .tflite on a cart describes itself; it is read back
without TensorFlow by edgebus.runtime.metadata.
"""

from __future__ import annotations

import json

import numpy as np

from edgebus import __version__
from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, write_json
from edgebus.core.tasks import get_task
from edgebus.config.stages import FORMATS
from edgebus.runtime.interpreter import TFLiteModel
from edgebus.runtime.metadata import METADATA_NAME


def _converter(tf, model):
    """A converter for the model's batch-1 graph (static shapes: no SHAPE/STRIDED_SLICE ops).

    The trackable is a bare tf.Module holding the variables, not the Keras model: given the model,
    the converter first saves it whole as a SavedModel (about 40 s for the U-Net); the output is
    byte-identical either way."""
    shape = [1, *model.input_shape[1:]]
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn], holder)


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
    for b in model.buffers:  # external buffers (the AI Edge quantizer's layout over 256 KB of weights) go inline:
        if b.offset > 1:     # the object round trip below would drop the data after the flatbuffer
            b.data = np.frombuffer(tflite, dtype=np.uint8, count=b.size, offset=b.offset)
            b.offset, b.size = 0, 0
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [md]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def io_details(m: TFLiteModel) -> dict:
    def d(t):
        scale, zero = t["quantization"]
        return {"shape": [int(s) for s in t["shape"]], "dtype": np.dtype(t["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

    return {"input": d(m.input), "output": d(m.outputs[0])}


def float_tensors(m: TFLiteModel) -> list[str]:
    """Names of float tensors left in a model (an int8 model should have none)."""
    return [t["name"] for t in m.interpreter.get_tensor_details() if np.dtype(t["dtype"]).kind == "f"]


def model_metadata(task, fmt: str, source: str, contract: dict, threshold: float, model: dict | None = None,
                   source_run: str | None = None, run_created: str | None = None, fingerprint: str | None = None,
                   calibration: dict | None = None, operating_point: dict | None = None,
                   descriptors: list | None = None) -> dict:
    """What a lone .tflite needs to be used correctly on a cart. `threshold` is on the model's
    output; `calibration` maps that output to the probability the cart shows."""
    task = get_task(task)
    return {
        "calibration": calibration, "operating_point": operating_point,
        "descriptors": descriptors,  # [{"name", "column", "labels"}] of a BI-RADS descriptor output, in order
        "edgebus_version": __version__, "task": task.name, "format": fmt,
        "source": source,  # "float" / "ptq" / "qat"
        "labels": list(task.labels), "output": task.output, "threshold": float(threshold), "preprocess": contract,
        "model": model, "source_run": source_run, "run_created": run_created, "data_fingerprint": fingerprint,
    }


def write_tflite(path, raw: bytes, meta: dict, sidecar=None) -> dict:
    """Write `raw` with `meta` embedded (and its I/O details added), atomically; also the sidecar
    JSON when given. Returns the metadata as written."""
    atomic_write(path, raw)  # first without metadata to read the I/O details
    meta = {**meta, "io": io_details(TFLiteModel(path))}
    atomic_write(path, embed_metadata(raw, meta))
    if sidecar is not None:
        write_json(sidecar, meta)
    return meta
