"""Benchmarks: time exported .tflite files and score them, with the interpreter only (no TensorFlow)."""

from edgebus.benchmarks.bench import bench_run, machine_info, time_model
from edgebus.benchmarks.report import write_report

__all__ = ["bench_run", "machine_info", "time_model", "write_report"]
