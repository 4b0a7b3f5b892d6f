"""The model registry: names -> builders of flat functional Keras models (TensorFlow loads lazily)."""

from edgebus.models.registry import MODELS, build_model, model_task

__all__ = ["MODELS", "build_model", "model_task"]
