"""Full-int8 by the LiteRT (AI Edge) quantizer, the path the LiteRT documentation now recommends
over the TF converter's post-training quantization (`pip install 'edgebus[quantizer]'`).

It quantizes the float32 .tflite (static int8 weights and activations, int8 input and output),
calibrated on the same training images as the converter's PTQ. Its validator gives the error of
every tensor against the float model; with `sensitive_int16=N` the N tensors that lose most are
kept in 16-bit activations (int8 weights), and the per-layer table says where int8 loses."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag


def _aeq():
    try:
        from ai_edge_quantizer import quantizer, recipe, qtyping
    except ImportError:
        raise EdgebusError(f"{flag('quantizer')} litert needs the AI Edge quantizer; pip install "
                           "'edgebus[quantizer]'") from None
    return quantizer, recipe, qtyping


def _signature(path: str):
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=path).get_signature_list()
    if len(sig) != 1:
        raise EdgebusError(f"{path}: the LiteRT quantizer needs one signature, the model has {len(sig)}")
    key = next(iter(sig))
    return key, sig[key]["inputs"][0]


def _errors(qt, data: dict, io_names: set) -> list[dict]:
    """Per tensor of the quantized model: mean squared error against the float model, largest first."""
    cmp = qt.validate(test_data=data, use_xnnpack=False, num_threads=1)  # default metric: MSE
    rows = [{"tensor": name, "mse": float(v["mse"])} for name, v in cmp.get_all_tensor_results().items()
            if name not in io_names]
    return sorted(rows, key=lambda r: -r["mse"])


def litert_int8(float_tflite: bytes, calibration: np.ndarray, sensitive_int16: int = 0) -> tuple[bytes, dict]:
    """(int8 .tflite bytes, report) of a float32 .tflite. calibration: float32 NHWC images in the
    model's input range. report: per-layer errors (largest first) and the tensors kept at 16 bits."""
    quantizer, recipe, qtyping = _aeq()
    if sensitive_int16 < 0:
        raise EdgebusError(f"{flag('sensitive_int16')} {sensitive_int16}: give 0 or more layers")
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "float32.tflite")
        Path(src).write_bytes(float_tflite)
        key, name = _signature(src)
        # a 0..1 ramp first, as the converter path does: the input range is exactly [0, 1]
        ramp = np.broadcast_to(np.linspace(0, 1, calibration.shape[2], dtype=np.float32)[None, :, None],
                               calibration.shape[1:])[None].copy()
        calib = {key: [{name: ramp}] + [{name: x[None].astype(np.float32)} for x in calibration]}
        check = {key: calib[key][1:9] or calib[key]}

        def build(keep16: list[str]):
            qt = quantizer.Quantizer(src)
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            for tensor in keep16:
                qt.add_static_config(regex=re.escape(tensor), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     activation_num_bits=16, weight_num_bits=8)
            result = qt.quantize(_calibrate(qt, calib, key))
            return qt, bytes(result.quantized_model)

        try:
            qt, data = build([])
        except (ValueError, RuntimeError, KeyError) as e:
            raise EdgebusError(f"the AI Edge quantizer could not quantize the model ({str(e).splitlines()[0][:160]}); "
                               f"use the converter's int8 (without {flag('quantizer')} litert)") from None
        io = {name, *(d for d in _io_names(data))}
        errors = _errors(qt, check, io)
        keep16 = [e["tensor"] for e in errors[:sensitive_int16]]
        if keep16:
            qt, data = build(keep16)
            after = _errors(qt, check, io)
        else:
            after = errors
    return data, {"quantizer": "ai-edge-quantizer static_wi8_ai8", "int16_tensors": keep16,
                  "layer_errors_int8": errors[:20], "layer_errors": after[:20], "layers": len(errors)}


def _calibrate(qt, calib: dict, key: str) -> dict:
    """Each tensor's min / max over all calibration images, as the converter's PTQ takes them. The
    quantizer's own calibrate keeps a moving average of the per-image min / max: for a one-value tensor
    such as the malignancy logit that shrinks the range to the last images' values (on the real Lite0
    classifier to [-0.73, 0], so every probability came out between 0.33 and 0.5)."""
    from ai_edge_quantizer.utils.qsv_utils import min_max_update

    merged: dict = {}
    for sample in calib[key]:
        for name, q in qt.calibrate({key: [sample]}, num_threads=1).items():
            merged[name] = min_max_update(merged.get(name), q) if q else merged.get(name, q)
    return merged


def _io_names(model: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    return [d["name"] for d in it.get_input_details() + it.get_output_details()]


def quantizer_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-quantizer")
    except Exception:
        return None
