"""Training: `train()` writes a run directory (TensorFlow loads when called, not on import)."""

from edgebus.training.train import TrainConfig, train

__all__ = ["TrainConfig", "train"]
