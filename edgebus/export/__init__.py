"""Export: Keras run -> TFLite files (float32, float16, dynamic, int8 by QAT or PTQ), each validated
with the interpreter, loaded in every installed interpreter, and the int8 files checked for the
Edge TPU (qat.py, edgetpu.py, runtimes.py)."""

from edgebus.export.tflite import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
