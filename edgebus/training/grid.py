"""The study's grid search (Adam learning rate x epochs), resumable and shardable, with its report.

Cost: one training run per learning rate. With a constant learning rate and a fixed seed, a
50-epoch run seen at epoch 10 *is* the 10-epoch run, so each run is evaluated (in inference mode,
model.predict on val and test) at every epoch count of the grid on its way: 35 cells cost 7 runs.

Results: `cells.jsonl` in the grid directory (`cells-shard<i>of<n>.jsonl` for a shard), one JSON
line per finished cell, appended and fsync'ed at once. A re-run with the same settings reads every
cells*.jsonl there, skips the cells already done (a learning rate whose cells are all done is not
trained at all), and trains a partly done learning rate on to its remaining epoch counts from its
last epoch checkpoint (`checkpoints/lr=<lr>/`, engine.resume; a Ray task too where it sees the run
folder), appending only the cells that are missing. A killed grid loses at most the epoch in progress.

Selection: by the validation metric only, as the study did (ties: the second metric on val, then
fewer epochs, then the lower learning rate). Every cell also stores its test metrics, measured in
the same pass, so the chosen cell's test numbers need no re-training and no peeking.

The chosen model: whenever a new cell beats every cell seen so far (by the selection rule), the
model at that moment is saved to `candidates/<shard>.keras` (then its sidecar .json, then the cell
line). At the end, the candidate whose sidecar names the chosen cell (and whose sha256 matches)
becomes the standard run directory `best/` (manifest, split.json, model.keras, metrics.json,
history.csv), which `edgebus export` and `edgebus bench` take. If no candidate matches (a kill
between the model and the cell line, shards on machines whose candidates were not copied), that
one cell is re-trained with the same seed and the report says so.

Tests kill a grid on purpose: with EDGEBUS_EXIT_AFTER_UNITS=n in the environment the process calls
os._exit(75) right after its n-th cell line is written (cv.py honours it for folds too);
EDGEBUS_EXIT_AFTER_EPOCHS=n does it right after epoch n's checkpoint (mid learning rate; in a Ray
worker, as a lost node would).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import append_jsonl, atomic_write, make_dir, now, one_writer, repair_jsonl, sha256_file, write_json
from edgebus.core.manifest import Run, SplitInfo, open_results_dir
from edgebus.core.splits import check_split, content_groups, content_summary, grouped_split
from edgebus.core.tasks import get_task
from edgebus.data.arrays import data_info, load_split_data, read_lesions
from edgebus.data.breast import fingerprint
from edgebus.data.content import content_hashes
from edgebus.data.preprocess import preprocess_contract
from edgebus.engine.resume import discard
from edgebus.training.cells import _lr_tag, _shard_tag, cell_key, rank_key, read_cells, select, shard_lrs
from edgebus.training.backends import Backend, run_units, task_checkpoints
from edgebus.config.files import write_run_config
from edgebus.config.options import settings_of
from edgebus.config.stages import GridConfig
from edgebus.training.config import maybe_exit, resolve


# what makes two grids the same grid: every setting but where it reads (the data: by its fingerprint) and writes
_IDENTITY = ("task", *(n for n in settings_of(GridConfig) if n not in ("data", "out")))


# --- cells --------------------------------------------------------------------------------------


def _validate(cfg: GridConfig, task: str) -> None:
    try:
        cfg.lrs = [float(v) for v in cfg.lrs]
        cfg.epochs = [int(v) for v in cfg.epochs]
    except (TypeError, ValueError):
        raise EdgebusError(f"grid: learning rates {cfg.lrs} and epochs {cfg.epochs} must be numbers") from None
    if not cfg.lrs or any(not (v > 0 and math.isfinite(v)) for v in cfg.lrs) or len(set(cfg.lrs)) != len(cfg.lrs):
        raise EdgebusError(f"grid: learning rates {cfg.lrs}: give distinct positive numbers, e.g. "
                           f"{flag('lrs')} 1e-4,1e-3")
    if not cfg.epochs or any(e < 1 for e in cfg.epochs) or len(set(cfg.epochs)) != len(cfg.epochs):
        raise EdgebusError(f"grid: epochs {cfg.epochs}: give distinct positive whole numbers, e.g. "
                           f"{flag('epochs')} 10,20")
    cfg.lrs, cfg.epochs = sorted(cfg.lrs), sorted(cfg.epochs)
    sel = get_task(task).select
    cfg.select = cfg.select or sel[0]
    if cfg.select not in sel:
        raise EdgebusError(f"grid: {flag('select')} '{cfg.select}' is not a {task} metric; choose one of {', '.join(sel)}")
    cfg.split_fractions = tuple(float(v) for v in cfg.split_fractions)


def _checkpoint(root: Path, lr: float) -> Path:
    return root / f"lr={_lr_tag(lr)}"


def _identity(cfg: GridConfig, task: str, fp: str) -> dict:
    ident = {k: getattr(cfg, k) for k in _IDENTITY}
    ident.update(task=task, split_fractions=list(cfg.split_fractions), data_fingerprint=fp)
    return ident


def _cell_record(task, lr, epoch, metrics, probs, wall, shard) -> dict:
    rec = {"lr": lr, "epochs": epoch, "val": metrics["val"], "test": metrics["test"]}
    if not get_task(task).truth_is_mask:  # a cell's test probabilities (a cell is re-checked against a short run)
        rec["test_prob"] = [round(float(v), 6) for v in np.asarray(probs["test"]).ravel()]
    rec.update(wall_s=round(wall, 1), shard=f"{shard[0]}/{shard[1]}", finished=now())
    return rec


def lr_unit(cfg: GridConfig, lr: float, todo: list, data: dict, shard, progress: bool = False, on_cell=None,
            checkpoint: Path | None = None, log=print) -> dict:
    """One learning rate of the grid: a model trained to max(todo) epochs, measured at each epoch
    count in todo; on_cell(cell record, model) as each is measured. With a checkpoint folder it
    goes on from the last epoch a killed run finished (engine.resume) and its cells say so
    (`resumed_from`). Returns {"lr", "cells", "history" (csv)}. Runs in the driver (local) or a Ray
    worker (ray_lr)."""
    from edgebus.compat import keras, set_seed
    from edgebus.engine.fit import build_compiled, fit_eval, history_csv

    task = cfg.task
    keras.backend.clear_session()
    set_seed(cfg.seed)
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
    t0 = time.time()
    cells, start = [], []

    def on_eval(epoch, metrics, probs, m):
        rec = _cell_record(task, lr, epoch, metrics, probs, time.time() - t0, shard)
        if start and start[0]:
            rec["resumed_from"] = start[0]
        cells.append(rec)
        if on_cell is not None:
            on_cell(rec, m)

    ckpt = None if checkpoint is None else (checkpoint, {"lr": lr, **{k: getattr(cfg, k) for k in _IDENTITY}})
    hist, _ = fit_eval(model, task, lr, data, todo, cfg.batch, cfg.seed, cfg.augment, cfg.threshold, on_eval,
                       progress, checkpoint=ckpt, log=log, on_start=start.append)
    return {"lr": lr, "cells": cells, "history": history_csv(hist)}


def ray_lr(lr: float, todo: list, shared: dict) -> dict:
    """A learning rate as a Ray task, on the split's arrays from the object store; returns its cells
    and, as bytes, the model at its own best cell (the driver keeps it when it beats the grid's).
    Checkpoints its epochs where the run folder is visible (backends.task_checkpoints)."""
    import tempfile

    from edgebus.engine.models import save_model

    cfg = shared["cfg"]
    best = {}
    with tempfile.TemporaryDirectory(prefix="edgebus-lr-") as tmp:
        def on_cell(rec, m):
            if not best or rank_key(rec, cfg.select, cfg.task) > rank_key(best["rec"], cfg.select, cfg.task):
                save_model(m, Path(tmp) / "best.keras")
                best.update(rec=rec, model=(Path(tmp) / "best.keras").read_bytes())

        root = task_checkpoints(shared["checkpoints"])
        res = lr_unit(cfg, lr, todo, shared["data"], shared["shard"], False, on_cell,
                      None if root is None else _checkpoint(root, lr))
    res["best"] = {"cell": cell_key(best["rec"]), "model": best["model"]}
    return res


@dataclasses.dataclass
class _GridInputs:
    """What a grid reads and derives before its folder exists."""
    ds: object
    cases: list
    by_id: dict
    hashes: dict
    groups: dict
    split: dict
    fp: str
    contract: dict


def _read_split(cfg: GridConfig) -> _GridInputs:
    """Load the data and its one split, checked so that no image's copy sits on both sides of it."""
    ds, cases = read_lesions(cfg.data)
    by_id = {c.case_id: c for c in cases}
    hashes = content_hashes(cases)
    groups = content_groups(hashes)
    split = grouped_split(cases, groups, cfg.split_fractions, cfg.seed)
    check_split(split, hashes, "grid split")
    fp = fingerprint(ds)
    contract = preprocess_contract(cfg.size, 3, normalize=cfg.normalize)
    return _GridInputs(ds, cases, by_id, hashes, groups, split, fp, contract)


def _open_folder(out: Path, cfg: GridConfig, task: str, inp: _GridInputs, log) -> None:
    """Open or resume the results folder; a new one gets its split, settings and manifest first."""
    from edgebus.training.train import model_info

    run, fresh = open_results_dir(out, task, "grid", _identity(cfg, task, inp.fp), "grid")
    if fresh:
        write_json(run.file("split.json"), {"seed": cfg.seed, "fractions": list(cfg.split_fractions), **inp.split})
        run.add_artifact("split.json", "split")
        write_run_config(run, cfg, "grid")
        m = run.manifest
        m.data, m.model, m.preprocess, m.threshold = (data_info(inp.ds, inp.fp, len(inp.cases)), model_info(cfg),
                                                      inp.contract, cfg.threshold)
        m.split = SplitInfo(file="split.json", seed=cfg.seed, counts={k: len(v) for k, v in inp.split.items()})
        m.grid = {"identity": _identity(cfg, task, inp.fp), "recipe": cfg.recipe, "results": "cells*.jsonl",
                  "content_check": content_summary(inp.hashes, inp.groups, {c.case_id: c.label for c in inp.cases})}
        run.save()
    dups = run.manifest.grid["content_check"]["duplicate_groups"]
    if dups:
        log(f"note: {len(dups)} group(s) of identical images, kept in one split part each: "
            + "; ".join(str(d["case_ids"]) for d in dups[:5]))


def _plan(out: Path, cfg: GridConfig, shard: tuple[int, int], done: set, log) -> dict:
    """This shard's learning rates, each with the epoch counts it still lacks (in the shard's order); says so."""
    mine = shard_lrs(cfg.lrs, shard)
    todo_all = {lr: [e for e in cfg.epochs if (lr, e) not in done] for lr in mine}
    n_todo = sum(len(v) for v in todo_all.values())
    this = f"shard ({shard[0]}/{shard[1]})" if shard != (1, 1) else "run"
    log(f"{out}: grid {len(cfg.lrs)} lr x {len(cfg.epochs)} epochs = {len(cfg.lrs) * len(cfg.epochs)} cells; "
        f"{len(done)} done; this {this}: "
        f"{n_todo} cell(s) in {sum(1 for v in todo_all.values() if v)} training run(s)")
    return todo_all


def _skip_finished(todo_all: dict, cfg: GridConfig, ckpts: Path, log) -> None:
    """Learning rates whose cells are all done are not trained; a checkpoint they left goes."""
    for lr in todo_all:
        if not todo_all[lr]:
            log(f"lr {_lr_tag(lr)}: all {len(cfg.epochs)} cells done, skipped")
            discard(_checkpoint(ckpts, lr))  # left by a stop after its last cell line


@dataclasses.dataclass
class _CellWriter:
    """The cells this run writes, each line appended at once; a cell that beats every cell seen so far
    first makes its model the shard's candidate (the model, then its sidecar, then the cell line)."""

    cfg: GridConfig
    task: str
    results: Path  # this shard's cells file
    cand: Path  # this shard's candidate model
    done: set
    best: dict | None  # the best cell so far, of every shard
    log: Callable
    written: int = 0

    def offer(self, rec: dict, save) -> None:
        """save(path) writes the model behind rec: called only when rec beats the best cell so far."""
        sel, task = self.cfg.select, self.task
        if self.best is None or rank_key(rec, sel, task) > rank_key(self.best, sel, task):
            save(self.cand)  # the model first, then its sidecar, then the cell line
            write_json(self.cand.with_suffix(".json"), {"lr": rec["lr"], "epochs": rec["epochs"],
                                                        "sha256": sha256_file(self.cand), "val": rec["val"],
                                                        "saved": now()})
            self.best = rec

    def cell_done(self, rec: dict) -> None:
        """The cell's line, fsync'ed, then its log line (a test may stop the process right after)."""
        append_jsonl(self.results, rec)
        self.done.add((rec["lr"], rec["epochs"]))
        self.written += 1
        head = get_task(self.task).headline_text
        self.log(f"  lr {_lr_tag(rec['lr'])}, {rec['epochs']} epochs: val {head(rec['val'])} | "
                 f"test {head(rec['test'])}")
        maybe_exit(self.written)


def _local_unit(cfg: GridConfig, data: dict, shard, progress: bool, ckpts: Path, writer: _CellWriter, log):
    """A learning rate trained in this process; each cell offered as the candidate, then written."""
    from edgebus.engine.models import save_model

    def unit(lr, todo, _):
        def on_cell(rec, m):
            writer.offer(rec, lambda p: save_model(m, p))
            writer.cell_done(rec)

        log(f"lr {_lr_tag(lr)}: training to {max(todo)} epochs, evaluating at {', '.join(map(str, todo))}")
        return lr_unit(cfg, lr, todo, data, shard, progress, on_cell, _checkpoint(ckpts, lr), log)
    return unit


def _run_lrs(backend: Backend, unit, units: list, shared, writer: _CellWriter, out: Path, ckpts: Path, log) -> None:
    """Run the learning rates left; each one's history is written after its cells, then its checkpoint goes."""
    for res in run_units(backend, unit, units, shared, log, checkpoints=ckpts):
        if res.get("best") is not None:  # a Ray task's own best cell: the grid's candidate if it beats the rest
            rec = next(c for c in res["cells"] if cell_key(c) == tuple(res["best"]["cell"]))
            writer.offer(rec, lambda p, blob=res["best"]["model"]: atomic_write(p, blob))
            for rec in res["cells"]:
                writer.cell_done(rec)
        atomic_write(out / "histories" / f"lr={_lr_tag(res['lr'])}.csv", res["history"])
        discard(_checkpoint(ckpts, res["lr"]))  # its cells are written: the checkpoint is done


def _record_stage(out: Path, shard: tuple[int, int], written: int, t_start: float, backend: Backend) -> None:
    """The shard's stage in the manifest: how many cells it wrote, in how long, where."""
    from edgebus.engine.models import device_name

    run = Run.load(out)
    run.stage(f"grid-{_shard_tag(shard)}", cells_written=written, wall_s=round(time.time() - t_start, 1),
              device=device_name(), finished=now(), **backend.describe())
    run.save()


def _complete(out: Path, cfg: GridConfig, finish: bool, progress: bool, log) -> dict:
    """With every shard's cells in, the report (`finalize`, unless finish is off); else what is left."""
    remaining = [(lr, e) for lr in cfg.lrs for e in cfg.epochs
                 if (lr, e) not in {cell_key(c) for c in read_cells(out)}]
    if remaining:
        log(f"{out}: {len(remaining)} cell(s) left for other shards; "
            f"when all are done run 'edgebus grid report {out}'")
        return {"complete": False, "remaining": len(remaining), "out": str(out)}
    if not finish:
        return {"complete": True, "out": str(out)}
    from edgebus.training.grid_report import finalize

    return finalize(out, log=log, progress=progress)


def run_grid(cfg: GridConfig, shard: tuple[int, int] = (1, 1), progress: bool = False, log=print,
             finish: bool = True, backend: Backend | None = None) -> dict:
    """Run this shard's part of the grid (resuming), then, when every cell is done, `finalize`."""
    backend = backend or Backend()
    task = resolve(cfg, "grid")
    _validate(cfg, task)
    inp = _read_split(cfg)
    out = Path(cfg.out or Path("runs") / f"grid-{cfg.model}-{cfg.size}")

    from edgebus.compat import set_seed
    from edgebus.engine.fit import build_compiled
    from edgebus.models.registry import has_aux_mask

    set_seed(cfg.seed)
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)  # fails before the folder exists
    make_dir(out, flag("out"))
    with one_writer(out):  # a second grid on this folder would write every cell twice
        _open_folder(out, cfg, task, inp, log)
        ckpts = out / "checkpoints"  # epoch checkpoints of the learning rates in progress (engine.resume)
        results = out / ("cells.jsonl" if shard == (1, 1) else f"cells-{_shard_tag(shard)}.jsonl")
        repair_jsonl(results)
        cells = read_cells(out)
        done = {cell_key(c) for c in cells}
        best = select(cells, cfg.select, task) if cells else None
        cand = out / "candidates" / f"{_shard_tag(shard)}.keras"
        make_dir(cand.parent, "grid folder")
        todo_all = _plan(out, cfg, shard, done, log)
        masks = has_aux_mask(model)
        model = None
        n_todo = sum(len(v) for v in todo_all.values())
        data = load_split_data(inp.by_id, inp.split, inp.contract, task, masks=masks) if n_todo else None
        writer = _CellWriter(cfg, task, results, cand, done, best, log)
        t_start = time.time()
        _skip_finished(todo_all, cfg, ckpts, log)
        units = [(lr, todo) for lr, todo in todo_all.items() if todo]
        if backend.name == "local":
            unit, shared = _local_unit(cfg, data, shard, progress, ckpts, writer, log), None
        else:
            unit, shared = ray_lr, {"cfg": cfg, "data": data, "shard": shard}
        _run_lrs(backend, unit, units, shared, writer, out, ckpts, log)
        _record_stage(out, shard, writer.written, t_start, backend)
        return _complete(out, cfg, finish, progress, log)
