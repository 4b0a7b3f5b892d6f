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


@dataclasses.dataclass(kw_only=True)
class FitConfig:
    """What every training stage (train, grid, cv) shares: the data, the model and how it is fed."""

    data: str
    model: str
    out: str | None = None
    task: str | None = None  # checked against the model's task
    size: int = 128
    batch: int = 16
    seed: int = 0
    weights: str = "none"  # none, imagenet (downloads) or a local weights file
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    augment: bool = True
    threshold: float = 0.5


@dataclasses.dataclass(kw_only=True)
class TrainConfig(FitConfig):
    epochs: int = 20
    lr: float = 1e-3
    split_fractions: tuple = (0.8, 0.1, 0.1)
    keep: str = "best"  # "best": the epoch with the best validation accuracy (IoU); "last": final epoch
    overwrite: bool = False
    crop_margin: float | None = None  # lesion-crop classifier: cut a square around the lesion first
    segmenter: str | None = None  # segment run (same split) whose predicted boxes cut the val/test crops


def load_split_data(cases_by_id: dict, split: dict, contract: dict, task: str, boxes: dict | None = None,
                    masks: bool = False):
    """Arrays for each part named in `split` (e.g. train/val/test), in split order: (x, labels) to
    classify, (x, masks) to segment, (x, labels, masks) with masks=True for a classifier trained
    with an auxiliary mask. Masks are (N,H,W,1). A crop contract cuts around boxes[case_id] where
    given, else around the case's true mask (see load_arrays)."""
    from edgebus.data.breast import load_arrays

    parts = {}
    for name in [n for n in ("train", "val", "test") if n in split]:
        cases = [cases_by_id[i] for i in split[name]]
        x, y, m = load_arrays(cases, contract, with_masks=task == "segment" or masks, boxes=boxes)
        parts[name] = (x, m) if task == "segment" else ((x, y, m) if masks else (x, y))
    return parts


def has_aux_mask(model) -> bool:
    """A classifier with an auxiliary lesion-mask output (efficientnet-lite0-segaux)."""
    return len(model.outputs) == 2


def classifier_only(model):
    """The classification path of a model with an auxiliary mask output (input -> malignant_prob),
    sharing its layers; other models as they are. This is what is saved, exported and deployed."""
    if not has_aux_mask(model):
        return model
    from edgebus.compat import keras

    return keras.Model(model.inputs, model.get_layer("malignant_prob").output, name=model.name)


def _dataset(tf, x, y, batch, shuffle, augment, seed, task, aux_mask=None):
    from edgebus.models.registry import AUX_MASK

    if aux_mask is not None:  # a classifier with an auxiliary mask output: two targets, by output name
        ds = tf.data.Dataset.from_tensor_slices((x, {"malignant_prob": y.astype("float32"),
                                                     AUX_MASK: aux_mask.astype("float32")}))
    else:
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
            elif aux_mask is not None:
                b = dict(b)
                b[AUX_MASK] = tf.cond(f, lambda: tf.image.flip_left_right(b[AUX_MASK]), lambda: b[AUX_MASK])
            return a, b

        # sequential on purpose: a parallel map draws the random flips in thread order, so two runs with
        # the same seed would differ (and a resumed grid would not repeat its cells)
        ds = ds.map(flip)
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

    if has_aux_mask(model):
        from edgebus.models.registry import AUX_MASK

        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss={"malignant_prob": "binary_crossentropy", AUX_MASK: _seg_loss(keras, tf)},
            metrics={"malignant_prob": ["accuracy", keras.metrics.AUC(name="auc")]},
        )
    elif task == "classify":
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss="binary_crossentropy",
            metrics=["accuracy", keras.metrics.AUC(name="auc")],
        )
    else:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=_seg_loss(keras, tf), metrics=[_iou_metric(tf)])
    return model


def predict(model, x, batch: int = 16) -> np.ndarray:
    out = model.predict(x, batch_size=batch, verbose=0)
    return out[0] if isinstance(out, list) else out  # a model with an auxiliary mask: its first output


def save_model(model, path: Path) -> None:
    """Save atomically: write beside the target, then rename."""
    tmp = path.with_name(f".tmp-{path.name}")
    model.save(tmp)
    tmp.replace(path)


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


def load_model(path: Path):
    """Load a run's Keras model (custom layers of segmentation_models registered first)."""
    from edgebus.compat import keras

    custom = keras_custom_objects()
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
    """Keep the weights of the epoch with the best validation metric (accuracy, or IoU), as the
    study selected, ties going to the lower validation loss. Keras computes both in inference mode.

    On ~200 images a small network's batch-norm statistics swing from epoch to epoch, so the last
    epoch can rank lesions perfectly yet sit on the wrong side of the threshold. (Selecting by
    validation loss instead picked an untrained epoch-1 MobileNetV2 on the real set: its loss was
    lowest because it predicted 0.5 for everything.)"""

    def __new__(cls, task: str):
        from edgebus.compat import keras

        names = ("val_accuracy", "val_malignant_prob_accuracy") if task == "classify" else ("val_iou",)

        class Cb(keras.callbacks.Callback):
            best, epoch, weights = (-float("inf"), 0.0), 0, None

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                metric = next((n for n in names if n in logs), None)
                if metric is None:
                    return
                score = (logs[metric], -logs.get("val_loss", 0.0))
                if score > self.best:
                    self.best, self.epoch, self.weights = score, epoch + 1, self.model.get_weights()

        return Cb()


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


def read_lesions(data):
    """(Dataset, lesion cases), refusing a set too small to split."""
    from edgebus.data.breast import read_breast

    ds = read_breast(data)
    cases = ds.lesions()
    if len(cases) < 10:
        raise EdgebusError(f"{ds.root}: only {len(cases)} lesion cases with masks; need at least 10 to split 80/10/10")
    return ds, cases


def build_compiled(name: str, size: int, weights: str, model_kwargs: dict, task: str, lr: float | None = None):
    """Build a registry model inside the distribution strategy's scope (compiled when lr is given)."""
    from edgebus.models.registry import build_model

    with strategy().scope():
        model = build_model(name, size, weights, **model_kwargs)
        if lr is not None:
            compile_model(model, task, lr)
    return model


def manifest_data(ds, fingerprint: str, n_lesions: int) -> dict:
    """The manifest's `data` entry of a run, grid or CV on a BrEaST-layout set."""
    from edgebus.data.breast import CLASSES

    return {"root": str(Path(ds.root).resolve()), "format": "breast", "fingerprint": fingerprint,
            "n_rows": len(ds.cases), "n_lesions": n_lesions, "classes": list(CLASSES)}


def manifest_model(cfg: FitConfig, task: str) -> dict:
    """The manifest's `model` entry: what rebuilds the model from the registry."""
    return {"name": cfg.model, "task": task, "input_size": [cfg.size, cfg.size], "weights": cfg.weights,
            "kwargs": cfg.model_kwargs}


def write_run_header(run: Run, cfg: TrainConfig, task: str, ds, n_lesions: int, split: dict, contract: dict,
                     data_fingerprint: str) -> None:
    """config.json, split.json and the manifest's data/split/model/preprocess entries of a run."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    config["task"] = task
    write_json(run.file("config.json"), config)
    write_json(run.file("split.json"), {"seed": cfg.seed, "fractions": list(cfg.split_fractions), **split})
    run.add_artifact("config.json", "config")
    run.add_artifact("split.json", "split")
    run.manifest.update({
        "data": manifest_data(ds, data_fingerprint, n_lesions),
        "split": {"file": "split.json", "seed": cfg.seed, "counts": {k: len(v) for k, v in split.items()}},
        "model": manifest_model(cfg, task),
        "preprocess": contract,
        "threshold": cfg.threshold,
    })
    run.save()


def history_csv(history: dict) -> str:
    keys = list(history)
    if not keys:
        return "epoch\n"
    lines = ["epoch," + ",".join(keys)] + [
        f"{e + 1}," + ",".join(f"{history[k][e]:.6g}" for k in keys) for e in range(len(history[keys[0]]))
    ]
    return "\n".join(lines) + "\n"


def write_model_and_history(run: Run, model, history: dict) -> None:
    from edgebus.rundir import atomic_write

    save_model(model, run.file("model.keras"))
    run.add_artifact("model.keras", "keras-model")
    atomic_write(run.file("history.csv"), history_csv(history))
    run.add_artifact("history.csv", "history")


def write_metrics(run: Run, metrics: dict) -> None:
    write_json(run.file("metrics.json"), metrics)
    run.add_artifact("metrics.json", "metrics")
    run.manifest["metrics"]["keras"] = metrics


def _eval_at(epochs: set, xs: dict, batch: int, on_eval):
    """A callback that, at each epoch count in `epochs`, predicts every array of `xs` in inference
    mode and calls on_eval(epoch, {name: prob}, model)."""
    from edgebus.compat import keras

    class Cb(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 in epochs:
                on_eval(epoch + 1, {k: predict(self.model, x, batch) for k, x in xs.items()}, self.model)

    return Cb()


def fit_arrays(model, task: str, lr: float, data: dict, epochs: int, batch: int = 16, seed: int = 0,
               augment: bool = True, callbacks=(), progress: bool = False, compile: bool = True):
    """Fit a (compiled, when compile=False) model on data["train"], validating on data["val"]
    (arrays (x, y) per part, as load_split_data gives). Returns the Keras History."""
    from edgebus.compat import tf

    if compile:
        with strategy().scope():
            compile_model(model, task, lr)
    aux = has_aux_mask(model)
    if aux and len(data["train"]) < 3:
        raise EdgebusError(f"{model.name}: trains with an auxiliary lesion mask; load the data with masks=True")
    (xtr, ytr, *mtr), (xva, yva, *mva) = data["train"], data["val"]
    return model.fit(
        _dataset(tf, xtr, ytr, batch, True, augment, seed, task, mtr[0] if aux else None),
        validation_data=_dataset(tf, xva, yva, batch, False, False, seed, task, mva[0] if aux else None),
        epochs=epochs, verbose=0, callbacks=[_Progress(epochs, progress), *callbacks],
    )


def fit_eval(model, task: str, lr: float, data: dict, eval_epochs, batch: int = 16, seed: int = 0,
             augment: bool = True, threshold: float = 0.5, on_eval=None, progress: bool = False,
             parts=("val", "test")):
    """Fit up to max(eval_epochs) and, at each epoch count in eval_epochs, evaluate the model in
    inference mode (model.predict, not Keras' training-mode metrics) on each of `parts`.

    on_eval(epoch, metrics: {part: task_metrics}, probs: {part: prediction}, model) is called at
    each of those epochs; the return value is (History, [(epoch, metrics), ...])."""
    eval_epochs = sorted({int(e) for e in eval_epochs})
    if not eval_epochs or eval_epochs[0] < 1:
        raise EdgebusError(f"epochs {eval_epochs}: give positive epoch counts")
    results = []

    def handle(epoch, probs, m):
        metrics = {k: task_metrics(task, data[k][1], probs[k], threshold) for k in probs}
        results.append((epoch, metrics))
        if on_eval is not None:
            on_eval(epoch, metrics, probs, m)

    cb = _eval_at(set(eval_epochs), {k: data[k][0] for k in parts}, batch, handle)
    hist = fit_arrays(model, task, lr, data, eval_epochs[-1], batch, seed, augment, [cb], progress)
    return hist, results


def train(cfg: TrainConfig, progress: bool = True) -> Run:
    """Read the data, split it, train, evaluate on val and test, and write the run directory."""
    from edgebus.data.breast import fingerprint
    from edgebus.data.split import stratified_split

    task = model_task(cfg.model)
    if cfg.task and cfg.task != task:
        raise EdgebusError(f"model '{cfg.model}' is a {task} model; use 'edgebus train {task}'")
    if not cfg.out:
        raise EdgebusError("train: no run directory given; pass --out (TrainConfig.out)")
    ds, cases = read_lesions(cfg.data)
    by_id = {c.case_id: c for c in cases}
    split = stratified_split([c.case_id for c in cases], [c.label for c in cases], cfg.split_fractions, cfg.seed)
    contract = preprocess_contract(cfg.size, 3, cfg.crop_margin)
    if cfg.crop_margin is not None and task != "classify":
        raise EdgebusError("--crop-margin is for classifiers")
    if cfg.segmenter is not None and cfg.crop_margin is None:
        raise EdgebusError("--segmenter cuts lesion crops: give --crop-margin too (e.g. 0.5)")
    data_fp = fingerprint(ds)
    boxes, box_source = None, None
    if cfg.segmenter is not None:
        from edgebus.training.crops import segmenter_run_boxes

        boxes, box_source = segmenter_run_boxes(cfg.segmenter, by_id, split, data_fp)
    elif cfg.crop_margin is not None:
        box_source = {"oracle": "val/test crops cut around the TRUE masks: an upper bound, not what a cart sees"}

    # Everything that can fail on bad input (model name, weights path) fails before the run exists.
    from edgebus.compat import keras, set_seed, tf

    set_seed(cfg.seed)
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
    run = Run.create(cfg.out, task, overwrite=cfg.overwrite)
    write_run_header(run, cfg, task, ds, len(cases), split, contract, data_fp)
    if cfg.crop_margin is not None:
        write_json(run.file("boxes.json"), {"source": box_source, "boxes": {str(k): v for k, v in (boxes or {}).items()}})
        run.add_artifact("boxes.json", "lesion-boxes")
        run.manifest["crop"] = {"boxes": "boxes.json", "train": "true masks", "val_test": box_source}
        run.save()

    data = load_split_data(by_id, split, contract, task, boxes, masks=has_aux_mask(model))
    if cfg.keep not in ("best", "last"):
        raise EdgebusError(f"keep='{cfg.keep}': choose best or last")
    keep = _KeepBest(task)
    t0 = time.time()
    hist = fit_arrays(model, task, cfg.lr, data, cfg.epochs, cfg.batch, cfg.seed, cfg.augment, [keep], progress)
    wall = time.time() - t0
    kept_epoch = cfg.epochs
    if cfg.keep == "best" and keep.weights is not None:
        model.set_weights(keep.weights)
        kept_epoch = keep.epoch
    model = classifier_only(model)  # an auxiliary mask output is training-only

    write_model_and_history(run, model, hist.history)
    metrics = {}
    for name in ("val", "test"):
        x, y = data[name][:2]
        metrics[name] = task_metrics(task, y, predict(model, x), cfg.threshold)
    write_metrics(run, metrics)
    run.stage("train", wall_s=round(wall, 1), epochs=cfg.epochs, kept_epoch=kept_epoch, keep=cfg.keep, lr=cfg.lr, batch=cfg.batch,
              tensorflow=tf.__version__, keras=keras.__version__, device="gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    run.save()
    return run
