"""Building blocks shared by the registry's architectures: the classifier heads, batch-norm momentum,
and the small layers of the tiny test models."""

from __future__ import annotations

DESCRIPTORS_OUTPUT = "descriptors"  # the BI-RADS descriptor head's output name (edgebus.core.descriptors)


def heads(keras, features, dropout: float, descriptors: int) -> list:
    """malignant_prob (and, with descriptors > 0, one sigmoid per BI-RADS descriptor) on pooled features."""
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outs = [keras.layers.Dense(1, activation="sigmoid", name="malignant_prob")(x)]
    if descriptors:
        outs.append(keras.layers.Dense(int(descriptors), activation="sigmoid", name=DESCRIPTORS_OUTPUT)(x))
    return outs


def classifier_head(keras, inputs, features, dropout: float, name: str, descriptors: int = 0):
    outs = heads(keras, features, dropout, descriptors)
    return keras.Model(inputs, outs if len(outs) > 1 else outs[0], name=name)


def set_bn_momentum(model, momentum: float | None) -> None:
    """Keras applications use BN momentum 0.99/0.999: on a 200-image set the moving statistics
    barely move in a few hundred steps, and the model predicts one class in inference mode
    (STACK.md). A lower momentum fixes that."""
    if momentum is None:
        return
    from edgebus.compat import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def conv_bn(keras, x, filters, name, stride=1):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def se(keras, x, name):
    """Squeeze-and-excite gate, the same Multiply pattern as EfficientNet's (tfmot rejects it raw)."""
    c = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Conv2D(max(1, c // 4), 1, activation="relu", name=f"{name}_reduce")(s)
    s = keras.layers.Conv2D(c, 1, activation="sigmoid", name=f"{name}_expand")(s)
    return keras.layers.Multiply(name=f"{name}_excite")([x, s])
