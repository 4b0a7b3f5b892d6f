"""The cart runtime: runs exported .tflite files with a TFLite interpreter only (no TensorFlow)."""

from edgebus.runtime.interpreter import TFLiteModel, interpreter_backend
from edgebus.runtime.overlay import render_overlay
from edgebus.runtime.predict import LesionPipeline, find_bundle, load_frame, make_bundle, predict_files

__all__ = ["LesionPipeline", "TFLiteModel", "find_bundle", "interpreter_backend", "load_frame", "make_bundle",
           "predict_files", "render_overlay"]
