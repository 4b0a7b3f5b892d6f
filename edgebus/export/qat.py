"""Quantization-aware fine-tuning with tensorflow-model-optimization (tfmot), for models tfmot
cannot quantize out of the box.

tfmot's default 8-bit registry knows only stock Keras layers, matched by exact class. Three kinds
of layer in the registry models fall outside it:

* `Multiply`: the squeeze-and-excite gate of EfficientNet (`block*_se_excite`) and of test-unet
  (`*_excite`). It gets an output-only config: the gated activation is fake-quantized like the
  output of `Add`/`Concatenate`, the sigmoid gate feeding it is quantized by its own layer.
* `Rescaling` (the [0, 1] -> [-1, 1] / caffe input scaling of mobilenetv2 and resnet50) is left
  out of QAT (not annotated, like tfmot does with Lambda layers). Measured: fake-quantized (input
  quantizer, then an output-only config on Rescaling), TF 2.21's converter requantizes the input
  through a float DEQUANTIZE/QUANTIZE pair, so the int8 file keeps a float tensor and the Edge TPU
  graph splits at op 1. Unannotated, the input and the Rescaling output get their ranges from the
  converter's representative dataset (exactly [0, 1] and the rescaled range), as in PTQ, and the
  file is full-integer.
* `FixedDropout` (a `Dropout` subclass from the `efficientnet` package, detected by class name):
  identity at inference, so a no-op config (no quantizer at all).

The model is cloned with a clone_function that annotates every layer (those with their custom
configs, the rest for tfmot's registry, Rescaling and Lambda not at all), and `quantize_apply`
runs inside `quantize_scope` with the custom configs (STACK.md). Where tfmot puts an input
quantizer, it is pinned to [0, 1], the preprocessing contract, so a uint8 int8 model takes raw
pixels (scale 1/255, zero point 0) like the post-training one. Activation ranges are calibrated on training images before the fine-tune
(calibrate_ranges): tfmot's start of [-6, 6] would otherwise dominate a fine-tune of a few epochs.

A QAT Keras model is saved as .h5 and reloads only inside `qat_scope()`.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag

QAT_MODEL = "model_qat.weights.h5"
# Layers that are the identity at inference: no quantizer.
NO_OP_CLASS_NAMES = ("FixedDropout",)
# Layers left out of QAT (not annotated): their output ranges come from the converter's calibration.
SKIP_CLASS_NAMES = ("Rescaling", "Lambda")


@functools.lru_cache(maxsize=1)
def quantize_configs() -> dict:
    """The custom QuantizeConfig classes, by name (made on first use: tfmot loads lazily)."""
    from edgebus.compat import tfmot

    q = tfmot().quantization.keras

    class OutputOnlyQuantizeConfig(q.QuantizeConfig):
        """No weights, no activations; one moving-average 8-bit quantizer on the output."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [q.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    class NoOpQuantizeConfig(OutputOnlyQuantizeConfig):
        """Nothing is quantized (for layers that are the identity at inference)."""

        def get_output_quantizers(self, layer):
            return []

    return {"OutputOnlyQuantizeConfig": OutputOnlyQuantizeConfig, "NoOpQuantizeConfig": NoOpQuantizeConfig}


def custom_objects() -> dict:
    """Custom Keras objects of the registry models (FixedDropout, swish) plus the QAT configs."""
    from edgebus.engine.models import keras_custom_objects

    return {**keras_custom_objects(), **quantize_configs()}


def qat_scope():
    """The scope a QAT model must be built, cloned and reloaded in."""
    from edgebus.compat import tfmot

    return tfmot().quantization.keras.quantize_scope(custom_objects())


def _config_for(layer):
    """Our QuantizeConfig for a layer tfmot's registry rejects, or None to leave it to tfmot."""
    from edgebus.compat import keras

    cfg = quantize_configs()
    name = type(layer).__name__
    if name in NO_OP_CLASS_NAMES:
        return cfg["NoOpQuantizeConfig"]()
    if isinstance(layer, keras.layers.Multiply):
        return cfg["OutputOnlyQuantizeConfig"]()
    return None


def annotate_plan(model) -> dict:
    """Layers handled specially: {layer name: custom config class name, or "not annotated"}."""
    plan = {}
    for layer in model.layers:
        if type(layer).__name__ in SKIP_CLASS_NAMES:
            plan[layer.name] = "not annotated"
        elif (c := _config_for(layer)) is not None:
            plan[layer.name] = type(c).__name__
    return plan


def quantize(model):
    """A quantization-aware copy of a float Keras model (weights copied; the original untouched)."""
    from edgebus.compat import keras, tfmot

    q = tfmot().quantization.keras

    def annotate(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        if type(layer).__name__ in (*SKIP_CLASS_NAMES, "InputLayer"):
            return fresh
        return q.quantize_annotate_layer(fresh, quantize_config=_config_for(layer))

    if any(isinstance(layer, keras.Model) for layer in model.layers):
        raise EdgebusError(
            f"model '{model.name}' nests a Keras model inside another; QAT needs one flat graph "
            "(build the head on base.output, as edgebus.models.registry does)"
        )
    with qat_scope():
        clone = keras.models.clone_model(model, clone_function=annotate)
        clone.set_weights(model.get_weights())
        try:
            qmodel = q.quantize_apply(clone)
        except RuntimeError as e:  # "Layer X:<class> is not supported ..."
            raise EdgebusError(
                f"model '{model.name}': tfmot cannot quantize a layer ({str(e).splitlines()[0][:200]}); "
                f"add a QuantizeConfig for it in edgebus/export/qat.py or export with {flag('ptq')}"
            ) from None
    pin_input_range(qmodel)
    return qmodel


def _input_quantizer_vars(qmodel) -> list:
    out = []
    for layer in qmodel.layers:
        if type(layer).__name__ == "QuantizeLayer":  # tfmot's input quantizer (not in its public API)
            mins = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0].endswith("_min")]
            maxs = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0].endswith("_max")]
            out.append((layer, mins, maxs))
    return out


def pin_input_range(qmodel, lo: float = 0.0, hi: float = 1.0) -> int:
    """Set the input fake-quant range to the preprocessing contract's [0, 1]; returns how many
    input quantizers there are (none when the first layer is not annotated, e.g. Rescaling: then
    the converter's calibration ramp sets the input range to exactly [0, 1]).

    tfmot's input quantizer tracks the min/max seen in training (starting at 0); pinned to exactly
    [0, 1] it stays there on [0, 1] data, and the uint8 input of the int8 file is the raw pixel."""
    found = _input_quantizer_vars(qmodel)
    for _, mins, maxs in found:
        for w in mins:
            w.assign(np.full(w.shape, lo, dtype=np.float32))
        for w in maxs:
            w.assign(np.full(w.shape, hi, dtype=np.float32))
    return len(found)


def freeze_batchnorm(model, frozen: bool = True) -> int:
    """Put batch norm in inference mode (frozen=True) or back.

    Used only for the calibration pass. The label fine-tune (--qat-distill 0) keeps batch norm in
    training mode, as the float model was trained (the distilled one calls the model in inference
    mode instead, export.distill): measured on test-unet, 3 epochs with frozen batch norm fitted the
    training split harder (loss 1.05 -> 0.84) and lost 0.05 test IoU, in training mode it lost
    0.002. Always unfreeze: a QuantizeWrapper around a frozen layer lists its weights twice, which
    the HDF5 writer refuses ("name already exists")."""
    from edgebus.compat import keras

    n = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # QuantizeWrapper -> wrapped layer
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.trainable = not frozen
            n += 1
    return n


def _set_dropout(model, rates: dict | None) -> dict:
    """Set every Dropout-like layer's rate to 0 (rates=None) and return the old rates; or restore."""
    from edgebus.compat import keras

    old = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.Dropout):
            old[layer.name] = inner.rate
            inner.rate = 0.0 if rates is None else rates[layer.name]
    return old


def calibrate_ranges(qmodel, x: np.ndarray, batch: int = 16) -> int:
    """Set every activation fake-quant range to the min/max it sees on `x`, before fine-tuning.

    tfmot starts each activation range at [-6, 6] and moves it as an exponential moving average
    with decay 0.999: after the few dozen steps of a short fine-tune it is still near [-6, 6]
    (a step of 0.047 for a sigmoid gate in [0, 1]), and the fine-tune then bends the weights to fit
    those ranges instead of the data. Here the moving-average quantizers run once as all-values
    quantizers (running min/max, like the post-training calibration) over `x` in training mode,
    with batch norm in inference mode and dropout off; kernel ranges are set from the weights on
    the same pass. The fine-tune's moving averages then start from calibrated ranges."""
    import sys

    from edgebus.compat import tfmot

    tfmot().quantization.keras  # loads the module tfmot's quantizers look MovingAvgQuantize up in
    quant_ops = sys.modules["tensorflow_model_optimization.python.core.quantization.keras.quant_ops"]
    n = 0
    for layer in qmodel.layers:
        for w in layer.non_trainable_weights:
            short = w.name.split("/")[-1].split(":")[0]
            if short.endswith(("_min", "_max")):
                w.assign(np.zeros(w.shape, dtype=np.float32))
                n += 1
    orig = quant_ops.MovingAvgQuantize

    def all_values(inputs, min_var, max_var, per_channel=False, ema_decay=0.999, name_prefix="MovingAvgQuantize",
                   is_training=True, num_bits=8, narrow_range=False, symmetric=False):
        if per_channel:  # not used for activations by the default 8-bit scheme
            return orig(inputs, min_var, max_var, per_channel=per_channel, ema_decay=ema_decay, name_prefix=name_prefix,
                        is_training=is_training, num_bits=num_bits, narrow_range=narrow_range, symmetric=symmetric)
        return quant_ops.AllValuesQuantize(inputs, min_var, max_var, is_training=is_training, num_bits=num_bits,
                                           narrow_range=narrow_range, symmetric=symmetric)

    freeze_batchnorm(qmodel, frozen=True)
    rates = _set_dropout(qmodel, None)
    quant_ops.MovingAvgQuantize = all_values
    try:
        for i in range(0, len(x), batch):
            qmodel(x[i : i + batch], training=True)
    finally:
        quant_ops.MovingAvgQuantize = orig
        _set_dropout(qmodel, rates)
        freeze_batchnorm(qmodel, frozen=False)
    pin_input_range(qmodel)
    return n


def fine_tune(qmodel, task: str, part: tuple, epochs: int, lr: float, batch: int, seed: int = 0,
              augment="none", parent=None, distill: float = 0.0) -> dict:
    """Fine-tune a QAT model on a training part (x, truth[, masks, descriptors]) through the run's
    own training augmentation (calibrate_ranges first): fine-tuned on clean images only, an int8
    model lost twice the float model's AUC under blur. With a float `parent` and distill > 0 the
    target is the parent's output mixed with the labels (export.distill); distill 0 fits the labels
    alone with the run's own losses (the plain QAT of earlier exports). Returns the loss history and
    wall time."""
    from edgebus.compat import set_seed, tf
    from edgebus.engine.augment import augment_name
    from edgebus.engine.fit import compile_model, dataset, output_names, targets
    from edgebus.engine.losses import output_losses

    if epochs < 0:
        raise EdgebusError(f"{flag('qat_epochs')} {epochs}: give 0 or more epochs")
    if not lr > 0:
        raise EdgebusError(f"{flag('qat_lr')} {lr}: give a positive learning rate")
    if not 0 <= distill <= 1:
        raise EdgebusError(f"{flag('qat_distill')} {distill}: give a weight from 0 (labels only) to 1 (the float "
                           "model only)")
    distilled = parent is not None and distill > 0
    set_seed(seed)
    if not distilled:
        compile_model(qmodel, task, lr)
    t0 = time.time()
    hist = {}
    if epochs:
        ds = dataset(tf, part[0], targets(qmodel, part), batch, True, augment, seed, task, output_names(qmodel))
        if distilled:
            from edgebus.export.distill import distill_fit

            hist = distill_fit(qmodel, parent, ds, epochs, lr, distill, output_losses(qmodel, task))
        else:
            h = qmodel.fit(ds, epochs=epochs, verbose=0)
            hist = {k: [round(float(v), 6) for v in vals] for k, vals in h.history.items()}
    pin_input_range(qmodel)  # training cannot widen it on [0, 1] data, but make it exact
    info = {"epochs": epochs, "lr": lr, "batch": batch, "augment": augment_name(augment), "history": hist,
            "wall_s": round(time.time() - t0, 1), "distill": float(distill) if parent is not None else 0.0}
    return info


def save_qat_model(qmodel, path: Path) -> None:
    """Save the QAT model's weights only (HDF5 weights, no layer config: a file that cannot carry
    code), atomically; load_qat_model rebuilds the graph from the run's float model."""
    from edgebus.core.io import atomic_save

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise EdgebusError(f"{path}: QAT weights are saved as .weights.h5")
    atomic_save(path, lambda tmp: qmodel.save_weights(str(tmp)))


def load_qat_model(path: str | Path, model):
    """The QAT model of the float Keras `model` (the run's, rebuilt from its manifest) with the
    weights saved in `path`: edgebus's quantize() makes the graph, nothing is deserialized."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        raise EdgebusError(f"{path}: QAT weights not found; re-run 'edgebus export RUN {flag('int8')} "
                           f"{flag('overwrite')}'")
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            raise EdgebusError(f"{path}: not an HDF5 weights file; re-run 'edgebus export RUN {flag('int8')} "
                               f"{flag('overwrite')}'")
    qmodel = quantize(model)
    try:
        qmodel.load_weights(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise EdgebusError(
            f"{path}: its weights do not fit the QAT model of '{model.name}' ({str(e).splitlines()[0][:200]}); "
            f"re-run 'edgebus export RUN {flag('int8')} {flag('overwrite')}'"
        ) from None
    return qmodel
