"""Building, saving and loading Keras models.

A run's model is loaded by rebuilding its architecture from the registry (the manifest's `model`
entry) and reading only the weights from model.keras: nothing in a run folder from elsewhere is
deserialized as code. The file must be a Keras zip archive (.keras), checked by its magic bytes."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.core.manifest import ModelInfo, Run

ZIP_MAGIC = b"PK\x03\x04"
_STRATEGY = []


def strategy():
    """MirroredStrategy over several GPUs; otherwise the default strategy (one GPU, which TensorFlow
    uses on its own, or the CPU). One object per process: a model built under one strategy must be
    compiled and fitted under the same one."""
    from edgebus.compat import tf

    if not _STRATEGY:
        gpus = tf.config.list_physical_devices("GPU")
        _STRATEGY.append(tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy())
    return _STRATEGY[0]


def device_name() -> str:
    from edgebus.compat import tf

    n = len(tf.config.list_physical_devices("GPU"))
    return "cpu" if n == 0 else ("gpu" if n == 1 else f"gpu x{n}")


def framework() -> dict:
    """Versions and device, for a stage record."""
    from edgebus.compat import keras, tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "device": device_name()}


def keras_custom_objects() -> dict:
    """Custom Keras objects of the registry models (segmentation_models' FixedDropout, swish)."""
    from edgebus.compat import keras

    custom = {}
    try:
        import efficientnet.tfkeras  # noqa: F401  registers swish / FixedDropout
        from efficientnet.model import get_dropout

        custom["FixedDropout"] = get_dropout(backend=keras.backend, layers=keras.layers, models=keras.models, utils=keras.utils)
    except ImportError:
        pass
    return custom


def save_model(model, path: Path) -> None:
    """Save as a Keras zip archive atomically (a fresh temp folder beside the target, then rename)."""
    from edgebus.core.io import atomic_save

    atomic_save(path, model.save)


def check_keras_zip(path: Path) -> Path:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise EdgebusError(f"{path}: Keras model not found; re-run 'edgebus train'") from None
    if head != ZIP_MAGIC:
        raise EdgebusError(f"{path}: not a Keras zip archive (.keras); edgebus loads no other format "
                           "(an HDF5 file can carry code); re-run 'edgebus train'")
    return path


def load_model(path: str | Path, model_info: ModelInfo):
    """The registry architecture `model_info` names, with the weights stored in `path`."""
    from edgebus.models.registry import build_from_manifest

    from edgebus.models.registry import classifier_only, has_aux_mask

    path = check_keras_zip(path)
    model = build_from_manifest(model_info)
    try:
        try:
            model.load_weights(str(path))
        except (ValueError, KeyError):
            if not has_aux_mask(model):
                raise
            model = classifier_only(model)  # saved by an edgebus that dropped the mask decoder after training
            model.load_weights(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise EdgebusError(f"{path}: its weights do not fit model '{model_info.name}' as the manifest describes it "
                           f"({str(e).splitlines()[0][:160]}); re-run 'edgebus train'") from None
    return model


def load_run_model(run: Run, name: str = "model.keras"):
    """A run's trained Keras model, sha256-checked against its manifest."""
    if run.manifest.model is None:
        raise EdgebusError(f"{run.path}: the manifest names no model; pass a run made by 'edgebus train'")
    return load_model(run.verify_artifact(name), run.manifest.model)
