"""Train a classifier or a segmenter on a BrEaST-layout data set and write a run directory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from edgebus.data.preprocess import preprocess_contract
from edgebus.errors import EdgebusError
from edgebus.metrics import task_metrics
from edgebus.models.registry import model_task
from edgebus.rundir import Run, write_json


@dataclasses.dataclass
class TrainConfig:
    data: str
    model: str
    out: str
    task: str | None = None  # checked against the model's task
    size: int = 128
    epochs: int = 20
    lr: float = 1e-3
    batch: int = 16
    seed: int = 0
    weights: str = "none"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    split_fractions: tuple = (0.8, 0.1, 0.1)
    augment: bool = True
    keep: str = "best"  # "best": weights of the epoch with the lowest validation loss; "last": final epoch
    threshold: float = 0.5
    overwrite: bool = False


def load_split_data(cases_by_id: dict, split: dict, contract: dict, task: str):
    """Arrays for each split part, in split order. Masks are (N,H,W,1) for segmentation."""
    from edgebus.data.breast import load_arrays

    parts = {}
    for name in ("train", "val", "test"):
        cases = [cases_by_id[i] for i in split[name]]
        x, y, m = load_arrays(cases, contract, with_masks=task == "segment")
        parts[name] = (x, y if task == "classify" else m)
    return parts


def _dataset(tf, x, y, batch, shuffle, augment, seed, task):
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("float32")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:
        # left-right flip: lesion shape cues (taller-than-wide, shadowing) survive it
        def flip(a, b):
            f = tf.random.uniform(()) < 0.5
            a = tf.cond(f, lambda: tf.image.flip_left_right(a), lambda: a)
            if task == "segment":
                b = tf.cond(f, lambda: tf.image.flip_left_right(b), lambda: b)
            return a, b

        ds = ds.map(flip, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _seg_loss(keras, tf):
    """Binary cross-entropy + soft Jaccard, as the study's segmentation_models setup."""

    def loss(y_true, y_pred):
        bce = keras.losses.binary_crossentropy(y_true, y_pred)
        inter = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
        union = tf.reduce_sum(y_true + y_pred, axis=[1, 2, 3]) - inter
        jac = 1.0 - (inter + 1.0) / (union + 1.0)
        return tf.reduce_mean(bce, axis=[1, 2]) + jac

    return loss


def _iou_metric(tf):
    def iou(y_true, y_pred):
        p = tf.cast(y_pred >= 0.5, tf.float32)
        inter = tf.reduce_sum(y_true * p, axis=[1, 2, 3])
        union = tf.reduce_sum(tf.maximum(y_true, p), axis=[1, 2, 3])
        return tf.reduce_mean(tf.where(union > 0, inter / tf.maximum(union, 1.0), 1.0))

    return iou


def compile_model(model, task: str, lr: float):
    from edgebus.compat import keras, tf

    if task == "classify":
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss="binary_crossentropy",
            metrics=["accuracy", keras.metrics.AUC(name="auc")],
        )
    else:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=_seg_loss(keras, tf), metrics=[_iou_metric(tf)])
    return model


def predict(model, x, batch: int = 16) -> np.ndarray:
    return model.predict(x, batch_size=batch, verbose=0)


def save_model(model, path: Path) -> None:
    """Save atomically: write beside the target, then rename."""
    tmp = path.with_name(f".tmp-{path.name}")
    model.save(tmp)
    tmp.replace(path)


def load_model(path: Path):
    """Load a run's Keras model (custom layers of segmentation_models registered first)."""
    from edgebus.compat import keras

    custom = {}
    try:
        import efficientnet.tfkeras  # noqa: F401  registers swish / FixedDropout
        from efficientnet.model import get_dropout

        custom["FixedDropout"] = get_dropout(backend=keras.backend, layers=keras.layers, models=keras.models, utils=keras.utils)
    except ImportError:
        pass
    try:
        return keras.models.load_model(path, custom_objects=custom, compile=False)
    except (OSError, ValueError) as e:
        raise EdgebusError(f"{path}: cannot load the Keras model ({str(e).splitlines()[0]}); re-run 'edgebus train'") from None


class _Progress:
    """A rich progress bar over epochs, showing training and (inference-mode) validation metrics."""

    def __new__(cls, epochs: int, enabled: bool):
        from edgebus.compat import keras

        class Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if not enabled:
                    return
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self.bar = Progress(
                    TextColumn("epoch {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                )
                self.bar.start()
                self.task = self.bar.add_task("train", total=epochs, info="")

            def on_epoch_end(self, epoch, logs=None):
                if enabled:
                    info = " ".join(f"{k}={v:.3f}" for k, v in (logs or {}).items())
                    self.bar.update(self.task, advance=1, info=info)

            def on_train_end(self, logs=None):
                if enabled:
                    self.bar.stop()

        return Cb()


class _KeepBest:
    """Keep the weights of the epoch with the lowest validation loss (in inference mode).

    On ~200 images a small network's batch-norm statistics swing from epoch to epoch, so the last
    epoch can rank lesions perfectly yet sit on the wrong side of the threshold."""

    def __new__(cls):
        from edgebus.compat import keras

        class Cb(keras.callbacks.Callback):
            best, epoch, weights = float("inf"), 0, None

            def on_epoch_end(self, epoch, logs=None):
                v = (logs or {}).get("val_loss")
                if v is not None and v < self.best:
                    self.best, self.epoch, self.weights = v, epoch + 1, self.model.get_weights()

        return Cb()


def train(cfg: TrainConfig, progress: bool = True) -> Run:
    """Read the data, split it, train, evaluate on val and test, and write the run directory."""
    from edgebus.data.breast import CLASSES, fingerprint, read_breast
    from edgebus.data.split import stratified_split

    task = model_task(cfg.model)
    if cfg.task and cfg.task != task:
        raise EdgebusError(f"model '{cfg.model}' is a {task} model; use 'edgebus train {task}'")
    ds = read_breast(cfg.data)
    cases = ds.lesions()
    if len(cases) < 10:
        raise EdgebusError(f"{ds.root}: only {len(cases)} lesion cases with masks; need at least 10 to split 80/10/10")
    by_id = {c.case_id: c for c in cases}
    split = stratified_split([c.case_id for c in cases], [c.label for c in cases], cfg.split_fractions, cfg.seed)
    contract = preprocess_contract(cfg.size, 3)

    # Everything that can fail on bad input (model name, weights path) fails before the run exists.
    from edgebus.compat import keras, set_seed, tf
    from edgebus.models.registry import build_model

    set_seed(cfg.seed)
    model = build_model(cfg.model, cfg.size, cfg.weights, **cfg.model_kwargs)
    run = Run.create(cfg.out, task, overwrite=cfg.overwrite)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    config["task"] = task
    write_json(run.file("config.json"), config)
    write_json(run.file("split.json"), {"seed": cfg.seed, "fractions": list(cfg.split_fractions), **split})
    run.add_artifact("config.json", "config")
    run.add_artifact("split.json", "split")
    run.manifest.update({
        "data": {
            "root": str(Path(ds.root).resolve()), "format": "breast", "fingerprint": fingerprint(ds),
            "n_rows": len(ds.cases), "n_lesions": len(cases), "classes": list(CLASSES),
        },
        "split": {"file": "split.json", "seed": cfg.seed, "counts": {k: len(v) for k, v in split.items()}},
        "model": {"name": cfg.model, "task": task, "input_size": [cfg.size, cfg.size], "weights": cfg.weights,
                  "kwargs": cfg.model_kwargs},
        "preprocess": contract,
        "threshold": cfg.threshold,
    })
    run.save()

    data = load_split_data(by_id, split, contract, task)
    (xtr, ytr), (xva, yva), (xte, yte) = data["train"], data["val"], data["test"]
    compile_model(model, task, cfg.lr)
    if cfg.keep not in ("best", "last"):
        raise EdgebusError(f"keep='{cfg.keep}': choose best or last")
    keep = _KeepBest()
    t0 = time.time()
    hist = model.fit(
        _dataset(tf, xtr, ytr, cfg.batch, True, cfg.augment, cfg.seed, task),
        validation_data=_dataset(tf, xva, yva, cfg.batch, False, False, cfg.seed, task),
        epochs=cfg.epochs, verbose=0, callbacks=[_Progress(cfg.epochs, progress), keep],
    )
    wall = time.time() - t0
    kept_epoch = cfg.epochs
    if cfg.keep == "best" and keep.weights is not None:
        model.set_weights(keep.weights)
        kept_epoch = keep.epoch

    save_model(model, run.file("model.keras"))
    run.add_artifact("model.keras", "keras-model")
    keys = list(hist.history)
    lines = ["epoch," + ",".join(keys)] + [
        f"{e + 1}," + ",".join(f"{hist.history[k][e]:.6g}" for k in keys) for e in range(len(hist.history[keys[0]]))
    ]
    from edgebus.rundir import atomic_write

    atomic_write(run.file("history.csv"), "\n".join(lines) + "\n")
    run.add_artifact("history.csv", "history")

    metrics = {}
    for name, (x, y) in (("val", (xva, yva)), ("test", (xte, yte))):
        metrics[name] = task_metrics(task, y, predict(model, x), cfg.threshold)
    write_json(run.file("metrics.json"), metrics)
    run.add_artifact("metrics.json", "metrics")
    run.manifest["metrics"]["keras"] = metrics
    run.stage("train", wall_s=round(wall, 1), epochs=cfg.epochs, kept_epoch=kept_epoch, keep=cfg.keep, lr=cfg.lr, batch=cfg.batch,
              tensorflow=tf.__version__, keras=keras.__version__, device="gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    run.save()
    return run
