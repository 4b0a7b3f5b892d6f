"""edgebus: breast-ultrasound lesion models from training to int8 TFLite on a portable cart.

    cart = edgebus.load("edgebus-demo/cart"); p = cart("frame.png"); p.label, p.prob, p.bbox

Importing this package never loads TensorFlow (nor the interpreter, until `load` is first used); the
engine/training/export modules load TensorFlow lazily, via `edgebus.compat`. The layers and the one data
flow: ARCHITECTURE.md at the repository's top.
"""

__version__ = "0.1.0"

from edgebus.core.errors import EdgebusError

__all__ = ["Cart", "EdgebusError", "Prediction", "__version__", "load"]
_API = {"load", "Cart", "Prediction"}  # edgebus.runtime.api, imported on first use: `edgebus --help` stays fast


def __getattr__(name):
    if name in _API:
        from edgebus.runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgebus' has no attribute {name!r}")
