"""edgebus: breast-ultrasound lesion models from training to int8 TFLite on a portable cart.

Importing this package never loads TensorFlow; the training/export modules do, lazily, via
`edgebus.compat`.
"""

__version__ = "0.1.0"

from edgebus.errors import EdgebusError

__all__ = ["EdgebusError", "__version__"]
