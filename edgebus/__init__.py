"""edgebus: breast-ultrasound lesion models from training to int8 TFLite on a portable cart.

Importing this package never loads TensorFlow; the engine/training/export modules do, lazily, via
`edgebus.compat`. The layers and the one data flow: ARCHITECTURE.md at the repository's top.
"""

__version__ = "0.1.0"

from edgebus.core.errors import EdgebusError

__all__ = ["EdgebusError", "__version__"]
