"""Export: Keras run -> TFLite files (float32, int8), each validated with the interpreter."""

from edgebus.export.tflite import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
