"""The cart runtime: runs exported .tflite files with a TFLite interpreter only (no TensorFlow)."""

from edgebus.runtime.interpreter import TFLiteModel, interpreter_backend

__all__ = ["TFLiteModel", "interpreter_backend"]
