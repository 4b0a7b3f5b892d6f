"""A finished grid: select the chosen cell by validation, make it the standard run directory
`best/` (from its saved candidate model, or re-trained once with the same seed), and write the
figures, report.md and report.json."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, now, sha256_file, write_json
from edgebus.core.manifest import MANIFEST, Run
from edgebus.core.tasks import get_task
from edgebus.data.arrays import load_split_data, run_dataset
from edgebus.training.cells import _lr_tag, cell_key, read_cells, select


def _matching_candidate(out: Path, chosen: dict) -> Path | None:
    for side in sorted((out / "candidates").glob("*.json")):
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        model = side.with_suffix(".keras")
        if (float(meta.get("lr", -1)), int(meta.get("epochs", -1))) == cell_key(chosen) and model.is_file() \
                and sha256_file(model) == meta.get("sha256"):
            return model
    return None


def _history_rows(out: Path, lr: float, epochs: int) -> str | None:
    p = out / "histories" / f"lr={_lr_tag(lr)}.csv"
    if not p.is_file():
        return None
    lines = p.read_text().splitlines()
    if len(lines) < epochs + 1:
        return None
    return "\n".join(lines[: epochs + 1]) + "\n"


def _write_best_run(out: Path, manifest, chosen: dict, ds, split: dict, data: dict, progress: bool, log):
    """The chosen cell as a standard run directory `best/`; returns (Run, model, source)."""
    from edgebus.compat import keras, set_seed
    from edgebus.engine.fit import build_compiled, fit_arrays, history_csv
    from edgebus.engine.models import framework, load_model
    from edgebus.config.options import settings_of
    from edgebus.training.train import TrainConfig, write_metrics, write_model, write_run_header

    ident = manifest.grid["identity"]
    task = ident["task"]
    best_dir = out / "best"
    if (best_dir / MANIFEST).exists():
        old = Run.load(best_dir)
        cell = old.manifest.stages.get("train", {}).get("grid_cell")
        if cell and (float(cell["lr"]), int(cell["epochs"])) == cell_key(chosen) and (best_dir / "model.keras").is_file():
            return old, load_model(old.verify_artifact("model.keras"), old.manifest.model), \
                old.manifest.stages["train"].get("source", "candidate")
    shared = {k: ident[k] for k in settings_of(TrainConfig) if k in ident and k != "epochs"}  # the grid's settings
    cfg = TrainConfig(**{**shared, "split_fractions": tuple(ident["split_fractions"])}, data=manifest.data.root,
                      out=str(best_dir), task=task, epochs=int(chosen["epochs"]), lr=float(chosen["lr"]), keep="last",
                      overwrite=True)
    if best_dir.exists():
        shutil.rmtree(best_dir)
    split = {k: v for k, v in split.items() if k in ("train", "val", "test")}
    cand = _matching_candidate(out, chosen)
    t0 = time.time()
    history = None
    if cand is not None:
        source = "candidate"
        model = load_model(cand, manifest.model)
        history = _history_rows(out, cfg.lr, cfg.epochs)
    else:
        source = "retrained"
        log(f"no saved model for the chosen cell (lr {_lr_tag(cfg.lr)}, {cfg.epochs} epochs); re-training it once")
        keras.backend.clear_session()
        set_seed(cfg.seed)
        model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
        hist = fit_arrays(model, task, cfg.lr, data, cfg.epochs, cfg.batch, cfg.seed, cfg.augment, (), progress)
        history = history_csv(hist.history)
    cfg.task = task
    run = Run.create(best_dir, task)
    write_run_header(run, cfg, ds, manifest.data.n_lesions, split, manifest.preprocess, manifest.data.fingerprint)
    write_model(run, model, history)
    write_metrics(run, model, data, cfg.batch)
    run.stage("train", wall_s=round(chosen.get("wall_s", 0) if source == "candidate" else time.time() - t0, 1),
              epochs=cfg.epochs, kept_epoch=cfg.epochs, keep="last", lr=cfg.lr, batch=cfg.batch, **framework(),
              source=source, grid_dir="..", grid_cell={"lr": cfg.lr, "epochs": cfg.epochs})
    run.save()
    return run, model, source


def _grid_run(out: Path) -> Run:
    """The grid folder's run; anything else is refused in one line."""
    if not (out / "manifest.json").is_file():
        raise EdgebusError(f"{out}: no manifest.json; pass a grid directory made by 'edgebus grid'")
    run = Run.load(out)
    if run.manifest.grid is None:
        raise EdgebusError(f"{out}: not a grid directory (no 'grid' in manifest.json); "
                           "pass a folder made by 'edgebus grid'")
    return run


def _all_cells(out: Path, ident: dict) -> list[dict]:
    """Every cell of the grid's settings; a grid with cells still missing is refused."""
    want = {(float(lr), int(e)) for lr in ident["lrs"] for e in ident["epochs"]}
    cells = [c for c in read_cells(out) if cell_key(c) in want]
    missing = sorted(want - {cell_key(c) for c in cells})
    if missing:
        lr, e = missing[0]
        raise EdgebusError(f"{out}: {len(missing)} of {len(want)} cells not done (e.g. lr {_lr_tag(lr)}, {e} epochs); "
                           "run the grid (or its remaining shards) again with the same settings, "
                           "then 'edgebus grid report'")
    return cells


def _matches_cell(task, per_split: dict, chosen: dict, source: str, log) -> bool:
    """Whether the chosen model scores what its grid cell said (val and test); a note when it does not."""
    same = all(_close(per_split[k], chosen[k], task) for k in ("val", "test"))
    if not same:
        why = ("re-trained: TensorFlow on this machine is not bit-reproducible" if source == "retrained"
               else "check the candidate")
        log(f"note: the chosen model's val/test metrics differ from the grid cell's ({why})")
    return same


def _draw_figures(out: Path, run: Run, task, chosen: dict, heads: list, split: dict, data: dict, probs: dict,
                  per_split: dict) -> dict:
    """The grid plot and the chosen model's test figure (confusion matrix or mask overlays), recorded as
    artifacts; {kind: file name}."""
    from edgebus.reports import figures

    ident = run.manifest.grid["identity"]
    metric = ident["select"]
    name = (run.manifest.grid.get("recipe") or {}).get("name") or ident["model"]
    figs = {"grid": f"grid_{metric}.png"}
    figures.grid_plot(heads, metric, out / figs["grid"], f"{name}: {metric} vs learning rate ({ident['size']} px)",
                      chosen={"lr": chosen["lr"], "val": _head(task, chosen["val"]),
                              "test": _head(task, chosen["test"])})
    if task.name == "classify":
        figs["confusion_matrix"] = "confusion_matrix.png"
        figures.confusion_matrix_plot(per_split["test"]["confusion_matrix"], out / figs["confusion_matrix"],
                                      f"{name}: test, lr {_lr_tag(chosen['lr'])}, {chosen['epochs']} epochs "
                                      f"(n={per_split['test']['n']})")
    else:
        figs["overlay"] = "overlay.png"
        figures.overlay_grid(data["test"][0], data["test"][1], probs["test"], out / figs["overlay"],
                             names=[f"case {i}" for i in split["test"]], threshold=ident["threshold"],
                             title=f"{name}: test images, true and predicted masks")
    for f in figs.values():
        run.add_artifact(f, "figure")
    return figs


def _write_report(out: Path, run: Run, report: dict, source: str, log) -> None:
    """report.json and report.md, recorded with the chosen cell and the report stage in the manifest."""
    from edgebus.reports.grid import grid_markdown

    write_json(out / "report.json", report)
    atomic_write(out / "report.md", grid_markdown(report, run.manifest))
    run.add_artifact("report.json", "report")
    run.add_artifact("report.md", "report")
    run.manifest.metrics["chosen"] = report["chosen"] | {"source": source}
    run.stage("report", finished=now())
    run.save()
    log(f"{out}: report.md, {', '.join(report['figures'].values())}; chosen model in {out / 'best'} ({source})")


def finalize(out: str | Path, log=print, progress: bool = False) -> dict:
    """Select the chosen cell by val, write best/, the figures, report.md and report.json."""
    from edgebus.engine.fit import predict

    out = Path(out)
    run = _grid_run(out)
    ident = run.manifest.grid["identity"]
    task, metric = get_task(ident["task"]), ident["select"]
    cells = _all_cells(out, ident)
    chosen = select(cells, metric, task)
    log(f"chosen by validation {metric}: lr {_lr_tag(chosen['lr'])}, {chosen['epochs']} epochs "
        f"(val {task.headline_text(chosen['val'])}; test {task.headline_text(chosen['test'])})")

    ds = run_dataset(run)
    by_id = {c.case_id: c for c in ds.lesions()}
    split = {k: v for k, v in run.read_artifact_json("split.json").items() if k in ("train", "val", "test")}
    data = load_split_data(by_id, split, run.manifest.preprocess, task)
    best_run, model, source = _write_best_run(out, run.manifest, chosen, ds, split, data, progress, log)

    probs = {k: predict(model, data[k][0], ident["batch"]) for k in ("train", "val", "test")}
    per_split = {k: task.metrics(data[k][1], probs[k], ident["threshold"]) for k in probs}
    same = _matches_cell(task, per_split, chosen, source, log)
    test = task.case_record(data["test"][1], probs["test"], per_split["test"])
    ci = task.pooled(task.fold_arrays(test), ident["threshold"], 2000, ident["seed"])[1]

    heads = [{"lr": c["lr"], "epochs": c["epochs"], "val": _head(task, c["val"]), "test": _head(task, c["test"]),
              **({"resumed_from": c["resumed_from"]} if c.get("resumed_from") else {})} for c in cells]
    figs = _draw_figures(out, run, task, chosen, heads, split, data, probs, per_split)
    report = {
        "schema": "edgebus.grid/1", "task": task.name, "model": ident["model"], "size": ident["size"],
        "recipe": run.manifest.grid.get("recipe"),
        "select": metric, "tiebreak": [task.tiebreak(metric), "fewer epochs", "lower lr"],
        "chosen": {"lr": chosen["lr"], "epochs": chosen["epochs"], "val": chosen["val"], "test": chosen["test"]},
        "best_run": "best", "best_source": source, "metrics_match_cell": same,
        "per_split": per_split, "test_bootstrap": ci, "figures": figs,
        "cells": sorted(heads, key=cell_key),
    }
    _write_report(out, run, report, source, log)
    return report | {"complete": True, "out": str(out)}


def _close(a: dict, b: dict, task, tol: float = 1e-6) -> bool:
    keys = list(task.headline(a))
    return all((a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and abs(a[k] - b[k]) <= tol)
               for k in keys)


def _head(task, m: dict) -> dict:
    """The grid-table numbers of a cell: its selectable metrics."""
    f = task.flat(m)
    return {k: f[k] for k in task.select}
