"""Epoch checkpoints of a long training run (a grid's learning rate: 50 epochs, an hour or more on a
CPU; a CV fold), so a killed run goes on from its last finished epoch instead of from epoch 0.

A checkpoint is a folder: the model's weights and the optimizer's state (a TensorFlow object-graph
checkpoint: variable values only, nothing deserialized as code), with `keep=` the best epoch's
weights so far (`keep.npz`, plain arrays) and `state.json` (the epoch, what the run is, the Keras
history so far, the best epoch's score, the files' sha256). It is replaced whole at each epoch (a fresh
folder, then renames), so a kill leaves the previous checkpoint or the new one, never a mix. A
checkpoint that does not match the run, or fails its hashes, is set aside with a log line and the
run starts over: it never decides a result on its own.

The data order after a resume is not the one an unbroken run would have drawn (the input pipeline's
shuffle and augmentation restart), so results of a resumed run are a valid run of the same recipe,
not a bit-for-bit copy; the caller records `resumed_from`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.core.io import make_dir, sha256_file, write_json

STATE = "state.json"
PREFIX = "ckpt"
KEEP = "keep.npz"
EXIT_ENV = "EDGEBUS_EXIT_AFTER_EPOCHS"  # tests: end the process (os._exit(75)) right after epoch n's checkpoint


def _plain(meta: dict) -> dict:
    """`meta` as it reads back from JSON (tuples become lists), so a fresh one compares equal."""
    return json.loads(json.dumps(meta, default=str))


def _trackables(model):
    from edgebus.compat import tf

    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def attach(checkpoint, model, before: int, log=print, keep=None) -> tuple[int, dict, list]:
    """For a fit of the compiled `model` with checkpoint=(folder, meta) or None: (epoch to go on
    from, history so far, [the callback that checkpoints every epoch]); see `restore`."""
    if checkpoint is None:
        return 0, {}, []
    start, history = restore(checkpoint[0], model, checkpoint[1], before, log, keep)
    return start, history, [checkpoint_callback(checkpoint[0], checkpoint[1], history, keep)]


def restore(folder: Path, model, meta: dict, before: int, log=print, keep=None) -> tuple[int, dict]:
    """Load the checkpoint in `folder` into the compiled `model` when it is this run's (`meta`
    matches) and older than epoch `before` (a later one would skip an epoch still to be measured),
    and into `keep` (engine.fit.KeepBest) the best epoch so far. Returns (epoch to go on from,
    history so far); (0, {}) when there is none to use."""
    folder, meta = Path(folder), _plain(meta)
    state_file = folder / STATE
    if not state_file.is_file():
        return 0, {}
    try:
        state = json.loads(state_file.read_text())
        why = None
        if state.get("meta") != meta:
            why = "it was written by other settings"
        elif not 0 < int(state["epoch"]) < before:
            why = f"its epoch {state['epoch']} is not before epoch {before}, the next one to measure"
        elif any(sha256_file(folder / name) != digest for name, digest in state["files"].items()):
            why = "its files do not match their sha256 (damaged)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"its {STATE} is unreadable ({e})"
    if why is None:
        from edgebus.engine.models import strategy

        try:
            with strategy().scope():
                model.optimizer.build(model.trainable_variables)
            _trackables(model).read(str(folder / PREFIX)).assert_existing_objects_matched()
            if keep is not None and state.get("keep"):
                import numpy as np

                with np.load(folder / KEEP, allow_pickle=False) as z:
                    weights = [z[f"arr_{i}"] for i in range(len(z.files))]
                if [w.shape for w in weights] != [tuple(v.shape) for v in model.weights]:
                    raise ValueError("best-epoch weights of another shape")
                keep.best, keep.epoch, keep.weights = tuple(state["keep"]["best"]), int(state["keep"]["epoch"]), weights
        except Exception as e:  # a checkpoint of another architecture: start over, never crash a long run
            why = f"it does not fit this model ({type(e).__name__})"
    if why is not None:
        log(f"{folder}: checkpoint not used, {why}; training from epoch 0")
        discard(folder)
        return 0, {}
    log(f"{folder}: going on from the checkpoint after epoch {state['epoch']}")
    return int(state["epoch"]), {k: list(v) for k, v in state["history"].items()}


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _write(model, folder: Path, state: dict, keep) -> Path:
    """The checkpoint in a fresh temp folder beside `folder`, complete with its state.json."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700
        _trackables(model).write(str(tmp / PREFIX))
        best = None
        if keep is not None and keep.weights is not None:
            import numpy as np

            np.savez(tmp / KEEP, *keep.weights)
            best = {"best": list(keep.best), "epoch": keep.epoch}
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        write_json(tmp / STATE, {**state, "keep": best, "files": files})
    except BaseException:
        discard(tmp)  # a part-written folder frees its space at once
        raise
    return tmp


def checkpoint_callback(folder: Path, meta: dict, history: dict, keep=None):
    """A Keras callback that, at every epoch end, replaces the checkpoint in `folder` with the model,
    its optimizer, the history so far (`history`: the epochs before this fit, extended in place) and
    `keep`'s best epoch (put it after `keep` in the callback list)."""
    from edgebus.compat import keras, tf

    folder, meta = Path(folder), _plain(meta)
    make_dir(folder.parent, "checkpoint folder")
    for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a kill in the middle of a write
        discard(stale)

    class Cb(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for k, v in (logs or {}).items():
                history.setdefault(k, []).append(float(v))
            try:
                tmp = _write(self.model, folder, {"epoch": epoch + 1, "meta": meta, "history": history}, keep)
            except (OSError, tf.errors.OpError) as e:  # disk full, quota, permissions: one line; results so far stay
                raise EdgebusError(f"{folder}: cannot write the epoch checkpoint ({str(e).splitlines()[0][:160]}); "
                                   "free space (or fix the folder's permissions) and run the same command again: "
                                   "it resumes from the last checkpoint and the results written so far") from None
            old = folder.with_name(f".{folder.name}.old")
            discard(old)
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            discard(old)
            if os.environ.get(EXIT_ENV) == str(epoch + 1):  # once per run: a resumed one starts after it
                os._exit(75)

    return Cb()
