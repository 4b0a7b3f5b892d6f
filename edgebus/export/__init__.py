"""Export: Keras run -> TFLite files (float32, float16, dynamic, int8 by QAT or PTQ), each validated
with the interpreter, loaded in every installed interpreter, and the int8 files checked for the
Edge TPU (exporter.py; convert.py, int8.py, qat.py, edgetpu.py, runtimes.py)."""

from edgebus.config.stages import FORMATS, ExportConfig
from edgebus.export.exporter import export_run

__all__ = ["FORMATS", "ExportConfig", "export_run"]
