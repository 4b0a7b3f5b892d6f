"""Decoder pieces of the registry's models with a lesion-mask output (edgebus.models.registry)."""

from __future__ import annotations

from edgebus.core.errors import EdgebusError

AUX_MASK = "aux_mask"  # the output name of a multi-task classifier's lesion mask


UPSAMPLE = ("nearest", "bilinear", "transpose")  # a mask decoder's x2 step (benchmarks/decoder_shapes.py)


def upsample2(keras, x, how: str, name: str):
    """x2 upsampling of a decoder stage: nearest or bilinear resize, or a learned 2x2 stride-2
    transposed convolution (channels kept). XNNPACK runs bilinear resize and transposed convolution
    in int8 but not nearest-neighbour resize, which cuts the graph into pieces around each one."""
    if how == "transpose":
        return keras.layers.Conv2DTranspose(int(x.shape[-1]), 2, strides=2, use_bias=False, name=name)(x)
    if how not in UPSAMPLE:
        raise EdgebusError(f"upsample '{how}': choose one of {', '.join(UPSAMPLE)}")
    return keras.layers.UpSampling2D(2, interpolation=how, name=name)(x)


def aux_decoder(keras, features: dict, skips, decoder_filters, upsample: str, factor: int):
    """The lesion-mask decoder of a multi-task classifier: per stage x2 up, concatenate the skip,
    3x3 conv, BN, ReLU; a 1x1 sigmoid; a bilinear x`factor` to the input size (output AUX_MASK)."""
    m = features[skips[0]]
    for i, (filters, skip) in enumerate(zip(decoder_filters, skips[1:])):
        m = upsample2(keras, m, upsample, f"aux_stage{i}_up")
        m = keras.layers.Concatenate(name=f"aux_stage{i}_concat")([m, features[skip]])
        m = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"aux_stage{i}_conv")(m)
        m = keras.layers.BatchNormalization(name=f"aux_stage{i}_bn")(m)
        m = keras.layers.ReLU(name=f"aux_stage{i}_relu")(m)
    m = keras.layers.Conv2D(1, 1, activation="sigmoid", name=f"aux_mask_stride{factor}")(m)
    return keras.layers.UpSampling2D(factor, interpolation="bilinear", name=AUX_MASK)(m)
