"""The one module that imports TensorFlow and Keras.

tfmot and segmentation_models need Keras 2 (tf_keras), which TensorFlow only uses when
TF_USE_LEGACY_KERAS=1 is set *before* TensorFlow is first imported; segmentation_models needs
SM_FRAMEWORK=tf.keras. Everything else in edgebus gets `tf` and `keras` from here.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402
except ImportError as e:  # pragma: no cover - depends on the install
    from edgebus.core.errors import EdgebusError

    raise EdgebusError(
        f"training/export needs TensorFlow ({e}); install it with: pip install 'edgebus[train]'"
    ) from None

tf.get_logger().setLevel("ERROR")


def tfmot():
    """tensorflow_model_optimization, imported only when QAT is used."""
    import tensorflow_model_optimization as m

    return m


def sm():
    """segmentation_models, imported only when a U-Net is built."""
    import segmentation_models as m

    return m


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)
