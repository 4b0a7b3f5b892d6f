"""Fitting models: train, grid, CV, seed ensembles, distillation (TensorFlow loads when called, not on
import). Judging them: edgebus.evaluation."""

from edgebus.config.stages import TrainConfig
from edgebus.training.train import train

__all__ = ["TrainConfig", "train"]
