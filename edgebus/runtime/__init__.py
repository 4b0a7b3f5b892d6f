"""The cart runtime: runs exported .tflite files with a TFLite interpreter only (no TensorFlow)."""

from edgebus.runtime.batch import predict_files
from edgebus.runtime.bundle import find_bundle, make_bundle
from edgebus.runtime.frames import load_frame
from edgebus.runtime.interpreter import TFLiteModel, interpreter_backend
from edgebus.runtime.model import ExportedModel
from edgebus.runtime.overlay import render_overlay
from edgebus.runtime.pipeline import LesionPipeline
from edgebus.runtime.site import adopt_site_threshold

__all__ = ["ExportedModel", "LesionPipeline", "TFLiteModel", "adopt_site_threshold", "find_bundle", "interpreter_backend",
           "load_frame", "make_bundle", "predict_files", "render_overlay"]
