"""Full-integer int8 models, made the same way by `edgebus export --int8` and by CV's int8 folds:
calibration images drawn from the training part, quantization-aware fine-tuning (qat.py), and a
conversion whose result must hold no float tensor."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.export import qat
from edgebus.export.convert import convert, float_tensors, model_metadata, write_tflite
from edgebus.export.distill import DEFAULT_WEIGHT

QAT_LR_FRACTION = 0.1  # QAT fine-tunes at a tenth of the training learning rate unless told


def calibration_set(x: np.ndarray, n: int = 100, seed: int = 0) -> np.ndarray:
    """Up to `n` training images, drawn at random with `seed`: the converter's representative
    data set and QAT's range calibration."""
    return x[np.random.default_rng(seed).permutation(len(x))[:n]]


def qat_model(model, task, part: tuple, calib: np.ndarray, epochs: int, lr: float, batch: int,
              seed: int = 0, log=None, augment="none", distill: float = DEFAULT_WEIGHT) -> tuple:
    """A quantization-aware copy of `model`: activation ranges calibrated on `calib`, then
    fine-tuned on the training part (x, truth[, masks, descriptors]) through the training
    augmentation `augment`, toward `model`'s own outputs with weight `distill` (export.distill; 0:
    the labels alone). Returns (QAT Keras model, info with history and the custom configs)."""
    plan = qat.annotate_plan(model)
    if plan and log:
        log(f"QAT: custom quantize configs for {len(plan)} layers ({', '.join(sorted(set(plan.values())))})")
    qmodel = qat.quantize(model)
    qat.calibrate_ranges(qmodel, calib, batch)
    if log:
        log(f"QAT: fine-tuning {epochs} epochs at lr {lr:g}, batch {batch}, augment {augment}, "
            f"distilled from the float model with weight {distill:g}, on {len(part[0])} training images ...")
    info = qat.fine_tune(qmodel, task, part, epochs, lr, batch, seed=seed, augment=augment, parent=model, distill=distill)
    info["custom_configs"] = plan
    return qmodel, info


def int8_probs(models: dict, task, calib: np.ndarray, contract: dict, threshold: float, x: np.ndarray,
               io_type: str = "uint8", keep: dict | None = None, descriptors: list | None = None,
               masks: dict | None = None) -> dict:
    """{source: outputs on x} of each Keras model in `models` ({"ptq": float model, "qat": QAT model})
    converted to full int8 and run by the interpreter, loaded as the cart loads it (ExportedModel).
    keep: {source: path} of files to keep (copied atomically once they passed). A multi-task model
    keeps its mask output: its file's masks on x are put in `masks` ({source: array}) where given."""
    from edgebus.models.registry import AUX_MASK, has_aux_mask
    from edgebus.core.io import atomic_write
    from edgebus.runtime.model import ExportedModel

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source, m in models.items():
            path = Path(tmp) / f"int8_{source}.tflite"
            meta = model_metadata(task, "int8", source, contract, threshold, descriptors=descriptors)
            if has_aux_mask(m):
                meta["mask"] = {"output": AUX_MASK, "threshold": 0.5}
            write_tflite(path, convert(m, "int8", calib, io_type), meta)
            em = ExportedModel(path, task)
            left = float_tensors(em.model)
            if left:
                raise EdgebusError(f"{path.name}: int8 conversion left {len(left)} float tensors (first: {left[0]}); "
                                   "not a full-integer model")
            got = em.predict_all(x)
            out[source] = got["prob"] if not task.truth_is_mask else em.predict(x)
            if masks is not None and got.get("mask") is not None:
                masks[source] = got["mask"]
            if keep and source in keep:
                atomic_write(keep[source], path.read_bytes())
    return out
