"""Training stages: train, grid, CV, operating point, external evaluation (TensorFlow loads when
called, not on import)."""

from edgebus.training.config import TrainConfig
from edgebus.training.train import train

__all__ = ["TrainConfig", "train"]
