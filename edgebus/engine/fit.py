"""Compile, fit and predict: the one training loop of train, grid, CV and QAT fine-tuning.

Validation metrics are computed in inference mode (model.predict), the way the model is used,
never from Keras' training-mode running metrics."""

from __future__ import annotations

import time

import numpy as np

from edgebus.config.options import OPTIONS
from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import DEFAULT_THRESHOLD
from edgebus.core.tasks import get_task
from edgebus.engine import resume
from edgebus.engine.augment import augment_name
from edgebus.engine.models import strategy
from edgebus.engine.losses import accuracy, iou_metric, optimizer, output_losses
from edgebus.models.registry import AUX_MASK, DESCRIPTORS_OUTPUT, output_names


def build_compiled(name: str, size: int, weights: str, model_kwargs: dict, task: str, lr: float | None = None):
    """Build a registry model inside the distribution strategy's scope (compiled when lr is given)."""
    from edgebus.models.registry import build_model

    with strategy().scope():
        model = build_model(name, size, weights, **model_kwargs)
        if lr is not None:
            compile_model(model, task, lr)
    return model


def targets(model, part: tuple):
    """The training targets of a split part (x, truth[, masks[, descriptors]]) for `model`: the truth
    array for a one-output model, else a tuple in output order."""
    names = output_names(model)
    if len(names) == 1:
        return part[1].astype("float32")
    where = {"malignant_prob": 1, AUX_MASK: 2, DESCRIPTORS_OUTPUT: 3}
    out = []
    for name in names:
        i = where[name]
        if len(part) <= i or part[i] is None:
            what = "masks=True" if name == AUX_MASK else "descriptors=True"
            raise EdgebusError(f"{model.name}: trains its '{name}' output too; load the data with {what}")
        out.append(part[i].astype("float32"))
    return tuple(out)


def dataset(tf, x, y, batch, shuffle, augment, seed, task, names=()):
    """y: the truth array, or a tuple of targets in the order of `names` (a mask target is moved
    with the image)."""
    aux = list(names).index(AUX_MASK) if AUX_MASK in names else None
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    name = augment_name(augment)
    if name != "none":
        from edgebus.engine import augment as aug

        change = getattr(aug, name)
        mask_target = get_task(task).truth_is_mask

        def apply(a, b):
            if mask_target:
                a, (b,) = change(tf, a, [b])
            elif aux is not None:
                b = list(b)
                a, (b[aux],) = change(tf, a, [b[aux]])
                b = tuple(b)
            else:
                a, _ = change(tf, a, [])
            return a, b

        # sequential on purpose: a parallel map draws the random changes in thread order, so two runs with
        # the same seed would differ (and a resumed grid would not repeat its cells)
        ds = ds.map(apply)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def compile_model(model, task: str, lr: float):
    from edgebus.compat import keras, tf

    names = output_names(model)
    losses = output_losses(model, task)
    if len(names) > 1:  # a classifier with training heads beside malignancy, in output order
        per_output = {"malignant_prob": [accuracy(keras, tf), keras.metrics.AUC(name="auc")], AUX_MASK: [iou_metric(tf)]}
        weights = [float(getattr(model, "mask_loss_weight", 1.0)) if n == AUX_MASK else 1.0 for n in names]
        model.compile(optimizer=optimizer(model, lr), loss=losses, loss_weights=weights,
                      metrics=[per_output.get(n, []) for n in names])
    elif get_task(task).name == "classify":
        model.compile(optimizer=optimizer(model, lr), loss=losses[0], metrics=[accuracy(keras, tf), keras.metrics.AUC(name="auc")])
    else:
        model.compile(optimizer=optimizer(model, lr), loss=losses[0], metrics=[iou_metric(tf)])
    return model


def predict_outputs(model, x, batch: int = 16) -> dict:
    """{output name: array} of every output of `model` on x."""
    out = model.predict(x, batch_size=batch, verbose=0)
    out = out if isinstance(out, list) else [out]
    return dict(zip(output_names(model), out))


def predict(model, x, batch: int = 16) -> np.ndarray:
    out = model.predict(x, batch_size=batch, verbose=0)
    return out[0] if isinstance(out, list) else out  # a model with an auxiliary mask: its first output


class Progress:
    """A rich progress bar over epochs, showing training and (inference-mode) validation metrics. Where
    the output is not a terminal (a log file of an hours-long CPU grid or CV), one plain line per epoch
    instead: a bar is only drawn there when it ends."""

    def __new__(cls, epochs: int, enabled: bool):
        import sys
        import time

        from edgebus.compat import keras

        class Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if not enabled:
                    return
                self.t0 = time.perf_counter()
                self.bar = None
                if not sys.stdout.isatty():
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
                    if self.bar is None:
                        print(f"epoch {epoch + 1}/{epochs} {info} ({time.perf_counter() - self.t0:.0f} s)", flush=True)
                    else:
                        self.bar.update(self.task, advance=1, info=info)

            def on_train_end(self, logs=None):
                if enabled and self.bar is not None:
                    self.bar.stop()

        return Cb()


class KeepBest:
    """Keep the weights of the epoch with the best validation metric (accuracy, or IoU), as the
    study selected, ties going to the lower validation loss. Keras computes both in inference mode.

    On ~200 images a small network's batch-norm statistics swing from epoch to epoch, so the last
    epoch can rank lesions perfectly yet sit on the wrong side of the threshold. (Selecting by
    validation loss instead picked an untrained epoch-1 MobileNetV2 on the real set: its loss was
    lowest because it predicted 0.5 for everything.)"""

    def __new__(cls, task: str):
        from edgebus.compat import keras

        names = get_task(task).keep_metrics

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


SCHEDULES = OPTIONS["schedule"].choices  # declared once, with the option


def lr_at(epoch: int, lr: float, epochs: int, schedule: str) -> float:
    """The learning rate of 0-based `epoch`. cosine: a linear warm-up over the first tenth of the
    epochs (1 to 5), then a cosine decay to 1% of `lr` by the last epoch. Warm-up keeps Adam's
    first large steps from wrecking pretrained batch-norm statistics on ~200 images; the decay lets
    the last epochs settle instead of swinging, so "best epoch" is less a lucky draw."""
    import math

    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise EdgebusError(f"schedule '{schedule}': choose one of {', '.join(SCHEDULES)}")
    warm = min(5, max(1, epochs // 10)) if epochs > 1 else 0
    if epoch < warm:
        return lr * (epoch + 1) / (warm + 1)
    span = max(1, epochs - 1 - warm)
    t = min(1.0, (epoch - warm) / span)
    return 0.01 * lr + 0.99 * lr * 0.5 * (1 + math.cos(math.pi * t))


def schedule_callbacks(lr: float, epochs: int, schedule: str) -> list:
    """The Keras callback that sets the learning rate each epoch (none for a constant rate)."""
    lr_at(0, lr, epochs, schedule)  # checks the name
    if schedule == "constant":
        return []
    from edgebus.compat import keras

    return [keras.callbacks.LearningRateScheduler(lambda e, _: lr_at(e, lr, epochs, schedule))]


def history_csv(history: dict) -> str:
    keys = list(history)
    if not keys:
        return "epoch\n"
    lines = ["epoch," + ",".join(keys)] + [
        f"{e + 1}," + ",".join(f"{history[k][e]:.6g}" for k in keys) for e in range(len(history[keys[0]]))
    ]
    return "\n".join(lines) + "\n"


def eval_at(epochs: set, xs: dict, batch: int, on_eval):
    """A callback that, at each epoch count in `epochs`, predicts every array of `xs` in inference
    mode and calls on_eval(epoch, {name: prob}, model)."""
    from edgebus.compat import keras

    class Cb(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 in epochs:
                on_eval(epoch + 1, {k: predict(self.model, x, batch) for k, x in xs.items()}, self.model)

    return Cb()


def fit_arrays(model, task: str, lr: float, data: dict, epochs: int, batch: int = 16, seed: int = 0,
               augment: bool = True, callbacks=(), progress: bool = False, compile: bool = True,
               initial_epoch: int = 0):
    """Fit a (compiled, when compile=False) model on data["train"], validating on data["val"]
    (arrays (x, y) per part, as load_split_data gives), from `initial_epoch` (a resumed run) to
    `epochs`. Returns the Keras History."""
    from edgebus.compat import tf

    if compile:
        with strategy().scope():
            compile_model(model, task, lr)
    train, val = data["train"], data["val"]
    names = output_names(model)
    return model.fit(
        dataset(tf, train[0], targets(model, train), batch, True, augment, seed, task, names),
        validation_data=dataset(tf, val[0], targets(model, val), batch, False, False, seed, task, names),
        epochs=epochs, initial_epoch=initial_epoch, verbose=0, callbacks=[Progress(epochs, progress), *callbacks],
    )


def fit_eval(model, task: str, lr: float, data: dict, eval_epochs, batch: int = 16, seed: int = 0,
             augment: bool = True, threshold: float = DEFAULT_THRESHOLD, on_eval=None, progress: bool = False,
             parts=("val", "test"), checkpoint=None, log=print, on_start=None):
    """Fit up to max(eval_epochs) and, at each epoch count in eval_epochs, evaluate the model in
    inference mode (model.predict, not Keras' training-mode metrics) on each of `parts`.

    on_eval(epoch, metrics: {part: task_metrics}, probs: {part: prediction}, model) is called at
    each of those epochs. checkpoint=(folder, meta): go on from the epoch checkpoint in folder when
    it is this run's, and checkpoint every epoch (engine.resume); on_start(epoch) is told the epoch
    the fit goes on from (0: a fresh run). Returns (history of every epoch as a dict, [(epoch, metrics), ...])."""
    eval_epochs = sorted({int(e) for e in eval_epochs})
    if not eval_epochs or eval_epochs[0] < 1:
        raise EdgebusError(f"epochs {eval_epochs}: give positive epoch counts")
    results = []

    def handle(epoch, probs, m):
        metrics = {k: get_task(task).metrics(data[k][1], probs[k], threshold) for k in probs}
        results.append((epoch, metrics))
        if on_eval is not None:
            on_eval(epoch, metrics, probs, m)

    with strategy().scope():
        compile_model(model, task, lr)
    start, history, ckpt = resume.attach(checkpoint, model, eval_epochs[0], log)
    if on_start is not None:
        on_start(start)
    cb = eval_at(set(eval_epochs), {k: data[k][0] for k in parts}, batch, handle)  # cells written, then the checkpoint
    hist = fit_arrays(model, task, lr, data, eval_epochs[-1], batch, seed, augment, [cb, *ckpt], progress, False, start)
    return (history if checkpoint is not None else hist.history), results


def fit_keep(model, task, cfg, data: dict, progress: bool = False, checkpoint=None, log=print, on_start=None):
    """Fit `cfg.epochs` epochs at `cfg.lr` under `cfg.schedule` and keep the epoch `cfg.keep` names
    ("best": the best validation accuracy or IoU; "last"); returns (deployable model, History, kept
    epoch, wall seconds). checkpoint=(folder, meta) and on_start as in fit_eval (the best epoch so
    far is checkpointed too; wall seconds are then this process's)."""
    if cfg.keep not in ("best", "last"):
        raise EdgebusError(f"keep='{cfg.keep}': choose best or last")
    keep, sched = KeepBest(task), schedule_callbacks(cfg.lr, cfg.epochs, cfg.schedule)  # a bad schedule name fails here
    t0 = time.time()
    with strategy().scope():
        compile_model(model, task, cfg.lr)
    start, history, ckpt = resume.attach(checkpoint, model, cfg.epochs + 1, log, keep)
    if on_start is not None:
        on_start(start)
    callbacks = [*sched, keep, *ckpt]  # the checkpoint after keep
    hist = fit_arrays(model, task, cfg.lr, data, cfg.epochs, cfg.batch, cfg.seed, cfg.augment, callbacks, progress,
                      False, start)
    if checkpoint is not None:
        hist.history = history
    wall = time.time() - t0
    kept = cfg.epochs
    if cfg.keep == "best" and keep.weights is not None:
        model.set_weights(keep.weights)
        kept = keep.epoch
    return model, hist, kept, wall  # a multi-task model keeps its lesion-mask output: it is deployed too
