"""The study's grid search (Adam learning rate x epochs), resumable and shardable, with its report.

Cost: one training run per learning rate. With a constant learning rate and a fixed seed, a
50-epoch run seen at epoch 10 *is* the 10-epoch run, so each run is evaluated (in inference mode,
model.predict on val and test) at every epoch count of the grid on its way: 35 cells cost 7 runs.

Results: `cells.jsonl` in the grid directory (`cells-shard<i>of<n>.jsonl` for a shard), one JSON
line per finished cell, appended and fsync'ed at once. A re-run with the same settings reads every
cells*.jsonl there, skips the cells already done (a learning rate whose cells are all done is not
trained at all), and re-trains a partly done learning rate from scratch up to its remaining epoch
counts, appending only the cells that are missing. A killed grid loses at most the run in progress.

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
os._exit(75) right after its n-th cell line is written (cv.py honours it for folds too).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from edgebus.errors import EdgebusError
from edgebus.training.train import FitConfig
from edgebus.training.cv import (CLASSIFY_KEYS, _maybe_exit, append_jsonl, bootstrap_classification, bootstrap_means,
                                 check_split, classification_report_md, content_groups, content_hashes,
                                 content_summary, dice_from_iou, flat_classification, grouped_split, interval_text,
                                 now, open_results_dir, read_jsonl, repair_jsonl)

SELECT = {"classify": ("accuracy", "auc", "malignant_recall", "f1_macro"), "segment": ("iou", "dice")}
TIEBREAK = {"classify": "auc", "segment": "dice"}

# Dosch & Shaw, as the issue quotes them: test split of 27 images (16 benign, 11 malignant).
STUDY = {
    "mobilenetv2": {
        "task": "classify", "test_n": 27, "accuracy": 0.6296,
        "benign": {"precision": 0.6667, "recall": 0.75, "f1": 0.7059},
        "malignant": {"precision": 0.5556, "recall": 0.4545, "f1": 0.50},
    },
    "resnet50": {
        "task": "classify", "test_n": 27, "accuracy": 0.6667,
        "benign": {"precision": 0.6842, "recall": 0.8125, "f1": 0.7429},
        "malignant": {"precision": 0.6250, "recall": 0.4545, "f1": 0.5263},
    },
    "unet-efficientnetb2": {"task": "segment", "val_iou": 0.697, "test_iou": 0.629, "epochs": 20, "lr": 5e-3},
}
STUDY_LRS = [1e-6, 1e-5, 1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
STUDY_EPOCHS = [10, 20, 30, 40, 50]


@dataclasses.dataclass(kw_only=True)
class GridConfig(FitConfig):
    lrs: list
    epochs: list
    split_fractions: tuple = (0.8, 0.1, 0.1)
    select: str | None = None  # default: accuracy (classify), iou (segment)
    recipe: dict | None = None  # {"name", "path", "sha256", "reduced", "description"} when run from a recipe


_IDENTITY = ("task", "model", "lrs", "epochs", "size", "batch", "seed", "weights", "model_kwargs", "split_fractions",
             "augment", "threshold", "select")

# --- recipes ------------------------------------------------------------------------------------

_RECIPE_KEYS = {"name", "description", "reduced", "task", "model", "size", "batch", "seed", "weights", "lrs", "epochs",
                "select", "split", "augment", "threshold", "data", "out", "model_kwargs", "cv"}
_CV_KEYS = {"folds", "lr", "epochs", "keep", "val_fraction", "n_boot", "batch", "size", "out"}


def find_recipe(path: str | Path) -> Path:
    """`training/resnet50`, `training/resnet50.toml` or a name under training/."""
    p = Path(path)
    for c in (p, p.with_name(p.name + ".toml"), Path("training") / p, Path("training") / f"{p.name}.toml"):
        if c.is_file():
            return c
    here = sorted(x.stem for x in Path("training").glob("*.toml")) if Path("training").is_dir() else []
    hint = f" (recipes in ./training: {', '.join(here)})" if here else ""
    raise EdgebusError(f"{p}: recipe not found{hint}; pass a .toml file such as training/mobilenetv2.toml")


def load_recipe(path: str | Path) -> dict:
    """A TOML recipe as a dict, checked for unknown keys and types."""
    import tomllib

    from edgebus.rundir import sha256_file

    p = find_recipe(path)
    try:
        r = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EdgebusError(f"{p}: not valid TOML ({e}); fix the file") from None
    unknown = sorted(set(r) - _RECIPE_KEYS)
    if unknown:
        raise EdgebusError(f"{p}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_RECIPE_KEYS))}")
    cv_unknown = sorted(set(r.get("cv", {})) - _CV_KEYS)
    if cv_unknown:
        raise EdgebusError(f"{p}: unknown key(s) in [cv]: {', '.join(cv_unknown)}; allowed: {', '.join(sorted(_CV_KEYS))}")
    if "model" not in r:
        raise EdgebusError(f"{p}: no 'model' key; add e.g. model = \"mobilenetv2\"")
    for key in ("lrs", "epochs"):
        if key in r and (not isinstance(r[key], list) or not r[key]):
            raise EdgebusError(f"{p}: '{key}' must be a non-empty list, e.g. {key} = [1e-4, 1e-3]")
    r["_path"], r["_sha256"] = str(p), sha256_file(p)
    return r


def recipe_info(r: dict) -> dict:
    return {"name": r.get("name", Path(r["_path"]).stem), "path": r["_path"], "sha256": r["_sha256"],
            "reduced": bool(r.get("reduced", False)), "description": r.get("description", "")}


def config_from_recipe(r: dict, **overrides) -> GridConfig:
    """GridConfig from a recipe; overrides that are not None win (the command line)."""
    keys = {"task", "model", "size", "batch", "seed", "weights", "lrs", "epochs", "select", "augment", "threshold",
            "data", "out", "model_kwargs"}
    kw = {k: r[k] for k in keys if k in r}
    if "split" in r:
        kw["split_fractions"] = tuple(r["split"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if not kw.get("data"):
        raise EdgebusError(f"{r['_path']}: no data folder; pass --data (a BrEaST-layout folder)")
    kw["recipe"] = recipe_info(r)
    if not kw.get("out"):
        kw["out"] = str(Path("runs") / f"grid-{kw['recipe']['name']}")
    return GridConfig(**kw)


# --- cells --------------------------------------------------------------------------------------


def cell_key(c: dict) -> tuple:
    return (float(c["lr"]), int(c["epochs"]))


def cells_files(out: Path) -> list[Path]:
    return sorted(Path(out).glob("cells*.jsonl"))


def read_cells(out: str | Path) -> list[dict]:
    """Finished cells from every cells*.jsonl in the grid directory, first occurrence of each kept."""
    seen, cells = set(), []
    for f in cells_files(Path(out)):
        for c in read_jsonl(f):
            if cell_key(c) not in seen:
                seen.add(cell_key(c))
                cells.append(c)
    return cells


def rank_key(c: dict, metric: str, task: str) -> tuple:
    """Larger is better: val metric, then the val tie-break metric, then fewer epochs, lower lr."""

    def val(name):
        v = c["val"].get(name)
        if v is None and task == "classify":
            v = flat_classification(c["val"]).get(name)
        return -math.inf if v is None else float(v)

    tb = TIEBREAK[task] if TIEBREAK[task] != metric else ("accuracy" if task == "classify" else "iou")
    return (val(metric), val(tb), -int(c["epochs"]), -float(c["lr"]))


def select(cells: list[dict], metric: str, task: str) -> dict:
    return max(cells, key=lambda c: rank_key(c, metric, task))


def parse_shard(s: str | None) -> tuple[int, int]:
    if not s:
        return 1, 1
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise EdgebusError(f"--shard '{s}': give i/n, e.g. 1/3 (shards are numbered 1..n)") from None
    if not 1 <= i <= n:
        raise EdgebusError(f"--shard '{s}': need 1 <= i <= n (shards are numbered 1..n)")
    return i, n


def shard_lrs(lrs: list[float], shard: tuple[int, int]) -> list[float]:
    """Learning rates of shard i of n: every n-th of the sorted list, starting at the i-th."""
    i, n = shard
    return [lr for j, lr in enumerate(sorted(lrs)) if j % n == i - 1]


def _lr_tag(lr: float) -> str:
    return f"{lr:g}"


def _shard_tag(shard) -> str:
    return "all" if shard == (1, 1) else f"shard{shard[0]}of{shard[1]}"


def _validate(cfg: GridConfig, task: str) -> None:
    try:
        cfg.lrs = [float(v) for v in cfg.lrs]
        cfg.epochs = [int(v) for v in cfg.epochs]
    except (TypeError, ValueError):
        raise EdgebusError(f"grid: learning rates {cfg.lrs} and epochs {cfg.epochs} must be numbers") from None
    if not cfg.lrs or any(not (v > 0 and math.isfinite(v)) for v in cfg.lrs) or len(set(cfg.lrs)) != len(cfg.lrs):
        raise EdgebusError(f"grid: learning rates {cfg.lrs}: give distinct positive numbers, e.g. --lrs 1e-4,1e-3")
    if not cfg.epochs or any(e < 1 for e in cfg.epochs) or len(set(cfg.epochs)) != len(cfg.epochs):
        raise EdgebusError(f"grid: epochs {cfg.epochs}: give distinct positive whole numbers, e.g. --epochs 10,20")
    cfg.lrs, cfg.epochs = sorted(cfg.lrs), sorted(cfg.epochs)
    cfg.select = cfg.select or SELECT[task][0]
    if cfg.select not in SELECT[task]:
        raise EdgebusError(f"grid: --select '{cfg.select}' is not a {task} metric; choose one of {', '.join(SELECT[task])}")
    cfg.split_fractions = tuple(float(v) for v in cfg.split_fractions)


def _identity(cfg: GridConfig, task: str, fp: str) -> dict:
    ident = {k: getattr(cfg, k) for k in _IDENTITY}
    ident.update(task=task, split_fractions=list(cfg.split_fractions), data_fingerprint=fp)
    return ident


def _cell_record(task, lr, epoch, metrics, probs, wall, shard) -> dict:
    rec = {"lr": lr, "epochs": epoch, "val": metrics["val"], "test": metrics["test"]}
    if task == "classify":
        rec["test_prob"] = [round(float(v), 6) for v in np.asarray(probs["test"]).ravel()]
    rec.update(wall_s=round(wall, 1), shard=f"{shard[0]}/{shard[1]}", finished=now())
    return rec


def run_grid(cfg: GridConfig, shard: tuple[int, int] = (1, 1), progress: bool = False, log=print,
             finish: bool = True) -> dict:
    """Run this shard's part of the grid (resuming), then, when every cell is done, `finalize`."""
    from edgebus.data.breast import fingerprint
    from edgebus.data.preprocess import preprocess_contract
    from edgebus.models.registry import model_task
    from edgebus.rundir import atomic_write, sha256_file, write_json
    from edgebus.training.train import (build_compiled, classifier_only, device_name, fit_eval, has_aux_mask,
                                        history_csv, load_split_data, manifest_data, manifest_model,
                                        read_lesions, save_model)

    task = model_task(cfg.model)
    if cfg.task and cfg.task != task:
        raise EdgebusError(f"model '{cfg.model}' is a {task} model; use 'edgebus grid {task}'")
    _validate(cfg, task)
    ds, cases = read_lesions(cfg.data)
    by_id = {c.case_id: c for c in cases}
    label_of = {c.case_id: c.label for c in cases}
    hashes = content_hashes(cases)
    groups = content_groups(hashes)
    split = grouped_split(cases, groups, cfg.split_fractions, cfg.seed)
    check_split(split, hashes, "grid split")
    fp = fingerprint(ds)
    contract = preprocess_contract(cfg.size, 3)
    out = Path(cfg.out or Path("runs") / f"grid-{cfg.model}-{cfg.size}")

    from edgebus.compat import keras, set_seed

    set_seed(cfg.seed)
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)  # fails before the folder exists
    run, fresh = open_results_dir(out, task, "grid", _identity(cfg, task, fp), "grid")
    if fresh:
        write_json(run.file("split.json"), {"seed": cfg.seed, "fractions": list(cfg.split_fractions), **split})
        run.add_artifact("split.json", "split")
        run.manifest.update({
            "data": manifest_data(ds, fp, len(cases)),
            "split": {"file": "split.json", "seed": cfg.seed, "counts": {k: len(v) for k, v in split.items()}},
            "model": manifest_model(cfg, task),
            "preprocess": contract,
            "threshold": cfg.threshold,
            "grid": {"identity": _identity(cfg, task, fp), "recipe": cfg.recipe, "results": "cells*.jsonl",
                     "content_check": content_summary(hashes, groups, label_of)},
        })
        run.save()
    dups = run.manifest["grid"]["content_check"]["duplicate_groups"]
    if dups:
        log(f"note: {len(dups)} group(s) of identical images, kept in one split part each: "
            + "; ".join(str(d["case_ids"]) for d in dups[:5]))

    results = out / ("cells.jsonl" if shard == (1, 1) else f"cells-{_shard_tag(shard)}.jsonl")
    repair_jsonl(results)
    cells = read_cells(out)
    done = {cell_key(c) for c in cells}
    best = select(cells, cfg.select, task) if cells else None
    cand = out / "candidates" / f"{_shard_tag(shard)}.keras"
    cand.parent.mkdir(exist_ok=True)
    mine = shard_lrs(cfg.lrs, shard)
    todo_all = {lr: [e for e in cfg.epochs if (lr, e) not in done] for lr in mine}
    n_todo = sum(len(v) for v in todo_all.values())
    log(f"{out}: grid {len(cfg.lrs)} lr x {len(cfg.epochs)} epochs = {len(cfg.lrs) * len(cfg.epochs)} cells; "
        f"{len(done)} done; this {'shard (' + str(shard[0]) + '/' + str(shard[1]) + ')' if shard != (1, 1) else 'run'}: "
        f"{n_todo} cell(s) in {sum(1 for v in todo_all.values() if v)} training run(s)")
    data = load_split_data(by_id, split, contract, task, masks=has_aux_mask(model)) if n_todo else None
    written = 0
    t_start = time.time()
    for lr in mine:
        todo = todo_all[lr]
        if not todo:
            log(f"lr {_lr_tag(lr)}: all {len(cfg.epochs)} cells done, skipped")
            continue
        if model is None:
            keras.backend.clear_session()
            set_seed(cfg.seed)
            model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
        log(f"lr {_lr_tag(lr)}: training to {max(todo)} epochs, evaluating at {', '.join(map(str, todo))}")
        t0 = time.time()

        def on_eval(epoch, metrics, probs, m, lr=lr, t0=t0):
            nonlocal best, written
            rec = _cell_record(task, lr, epoch, metrics, probs, time.time() - t0, shard)
            if best is None or rank_key(rec, cfg.select, task) > rank_key(best, cfg.select, task):
                save_model(classifier_only(m), cand)  # the model first, then its sidecar, then the cell line
                write_json(cand.with_suffix(".json"), {"lr": lr, "epochs": epoch, "sha256": sha256_file(cand),
                                                       "val": rec["val"], "saved": now()})
                best = rec
            append_jsonl(results, rec)
            done.add((lr, epoch))
            written += 1
            log(f"  lr {_lr_tag(lr)}, {epoch} epochs: val {_short(task, rec['val'])} | test {_short(task, rec['test'])}")
            _maybe_exit(written)

        hist, _ = fit_eval(model, task, lr, data, todo, cfg.batch, cfg.seed, cfg.augment, cfg.threshold, on_eval,
                           progress)
        atomic_write(out / "histories" / f"lr={_lr_tag(lr)}.csv", history_csv(hist.history))
        model = None
    run = type(run).load(out)
    run.stage(f"grid-{_shard_tag(shard)}", cells_written=written, wall_s=round(time.time() - t_start, 1),
              device=device_name(), finished=now())
    run.save()
    remaining = [(lr, e) for lr in cfg.lrs for e in cfg.epochs if (lr, e) not in {cell_key(c) for c in read_cells(out)}]
    if remaining:
        log(f"{out}: {len(remaining)} cell(s) left for other shards; when all are done run 'edgebus grid report {out}'")
        return {"complete": False, "remaining": len(remaining), "out": str(out)}
    if not finish:
        return {"complete": True, "out": str(out)}
    return finalize(out, log=log, progress=progress)


def _short(task: str, m: dict) -> str:
    if task == "classify":
        return f"acc {m['accuracy']:.3f} AUC {m['auc'] if m['auc'] is not None else float('nan'):.3f}"
    return f"IoU {m['iou']:.3f} Dice {m['dice']:.3f}"


# --- finalize: the chosen cell's run, figures, report -------------------------------------------


def _matching_candidate(out: Path, chosen: dict) -> Path | None:
    from edgebus.rundir import sha256_file

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


def _write_best_run(out: Path, manifest: dict, chosen: dict, ds, data: dict, progress: bool, log):
    """The chosen cell as a standard run directory `best/`; returns (Run, model, source)."""
    from edgebus.compat import keras, set_seed, tf
    from edgebus.rundir import MANIFEST, Run, atomic_write
    from edgebus.training.train import (TrainConfig, build_compiled, device_name, fit_arrays, load_model,
                                        write_metrics, write_run_header)

    ident = manifest["grid"]["identity"]
    task = ident["task"]
    best_dir = out / "best"
    if (best_dir / MANIFEST).exists():
        old = Run.load(best_dir)
        cell = old.manifest.get("stages", {}).get("train", {}).get("grid_cell")
        if cell and (float(cell["lr"]), int(cell["epochs"])) == cell_key(chosen) and (best_dir / "model.keras").is_file():
            return old, load_model(best_dir / "model.keras"), old.manifest["stages"]["train"].get("source", "candidate")
    cfg = TrainConfig(data=manifest["data"]["root"], model=ident["model"], out=str(best_dir), task=task,
                      size=ident["size"], epochs=int(chosen["epochs"]), lr=float(chosen["lr"]), batch=ident["batch"],
                      seed=ident["seed"], weights=ident["weights"], model_kwargs=ident["model_kwargs"],
                      split_fractions=tuple(ident["split_fractions"]), augment=ident["augment"], keep="last",
                      threshold=ident["threshold"], overwrite=True)
    if best_dir.exists():
        shutil.rmtree(best_dir)
    split = json.loads((out / "split.json").read_text())
    split = {k: split[k] for k in ("train", "val", "test")}
    cand = _matching_candidate(out, chosen)
    t0 = time.time()
    history = None
    if cand is not None:
        source = "candidate"
        model = load_model(cand)
        history = _history_rows(out, cfg.lr, cfg.epochs)
    else:
        source = "retrained"
        log(f"no saved model for the chosen cell (lr {_lr_tag(cfg.lr)}, {cfg.epochs} epochs); re-training it once")
        keras.backend.clear_session()
        set_seed(cfg.seed)
        model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
        hist = fit_arrays(model, task, cfg.lr, data, cfg.epochs, cfg.batch, cfg.seed, cfg.augment, (), progress)
        from edgebus.training.train import classifier_only, history_csv

        model = classifier_only(model)
        history = history_csv(hist.history)
    run = Run.create(best_dir, task)
    write_run_header(run, cfg, task, ds, manifest["data"]["n_lesions"], split, manifest["preprocess"],
                     manifest["data"]["fingerprint"])
    if cand is not None:
        tmp = best_dir / ".tmp-model.keras"
        shutil.copyfile(cand, tmp)
        tmp.replace(best_dir / "model.keras")
    else:
        from edgebus.training.train import save_model

        save_model(model, best_dir / "model.keras")
    run.add_artifact("model.keras", "keras-model")
    if history is not None:
        atomic_write(run.file("history.csv"), history)
        run.add_artifact("history.csv", "history")
    from edgebus.metrics import task_metrics
    from edgebus.training.train import predict

    metrics = {k: task_metrics(task, data[k][1], predict(model, data[k][0], cfg.batch), cfg.threshold)
               for k in ("val", "test")}
    write_metrics(run, metrics)
    run.stage("train", wall_s=round(chosen.get("wall_s", 0) if source == "candidate" else time.time() - t0, 1),
              epochs=cfg.epochs, kept_epoch=cfg.epochs, keep="last", lr=cfg.lr, batch=cfg.batch,
              tensorflow=tf.__version__, keras=keras.__version__, device=device_name(), source=source,
              grid_dir="..", grid_cell={"lr": cfg.lr, "epochs": cfg.epochs})
    run.save()
    return run, model, source


def finalize(out: str | Path, log=print, progress: bool = False) -> dict:
    """Select the chosen cell by val, write best/, the figures, report.md and report.json."""
    from edgebus.data.breast import fingerprint, read_breast
    from edgebus.rundir import Run, atomic_write, write_json
    from edgebus.training import figures
    from edgebus.training.train import load_split_data, predict

    out = Path(out)
    if not (out / "manifest.json").is_file():
        raise EdgebusError(f"{out}: no manifest.json; pass a grid directory made by 'edgebus grid'")
    run = Run.load(out)
    if "grid" not in run.manifest:
        raise EdgebusError(f"{out}: not a grid directory (no 'grid' in manifest.json); pass a folder made by 'edgebus grid'")
    ident = run.manifest["grid"]["identity"]
    task, metric = ident["task"], ident["select"]
    want = {(float(lr), int(e)) for lr in ident["lrs"] for e in ident["epochs"]}
    cells = [c for c in read_cells(out) if cell_key(c) in want]
    missing = sorted(want - {cell_key(c) for c in cells})
    if missing:
        lr, e = missing[0]
        raise EdgebusError(f"{out}: {len(missing)} of {len(want)} cells not done (e.g. lr {_lr_tag(lr)}, {e} epochs); "
                           "run the grid (or its remaining shards) again with the same settings, then 'edgebus grid report'")
    chosen = select(cells, metric, task)
    log(f"chosen by validation {metric}: lr {_lr_tag(chosen['lr'])}, {chosen['epochs']} epochs "
        f"(val {_short(task, chosen['val'])}; test {_short(task, chosen['test'])})")

    ds = read_breast(run.manifest["data"]["root"])
    if fingerprint(ds) != run.manifest["data"]["fingerprint"]:
        raise EdgebusError(f"{ds.root}: the data changed since the grid ran (fingerprint differs); "
                           "restore it or run a new grid into another --out")
    by_id = {c.case_id: c for c in ds.lesions()}
    split = json.loads(run.verify_artifact("split.json").read_text())
    split = {k: split[k] for k in ("train", "val", "test")}
    data = load_split_data(by_id, split, run.manifest["preprocess"], task)
    best_run, model, source = _write_best_run(out, run.manifest, chosen, ds, data, progress, log)

    probs = {k: predict(model, data[k][0], ident["batch"]) for k in ("train", "val", "test")}
    from edgebus.metrics import task_metrics

    per_split = {k: task_metrics(task, data[k][1], probs[k], ident["threshold"]) for k in probs}
    same = all(_close(per_split[k], chosen[k], task) for k in ("val", "test"))
    if not same:
        log("note: the chosen model's val/test metrics differ from the grid cell's "
            f"({'re-trained: TensorFlow on this machine is not bit-reproducible' if source == 'retrained' else 'check the candidate'})")
    if task == "classify":
        ci = bootstrap_classification(data["test"][1], probs["test"], ident["threshold"], 2000, ident["seed"])
    else:
        iou = per_split["test"]["iou_per_image"]
        ci = bootstrap_means({"iou": iou, "dice": dice_from_iou(iou)}, 2000, ident["seed"])

    name = (run.manifest["grid"].get("recipe") or {}).get("name") or ident["model"]
    figs = {"grid": f"grid_{metric}.png"}
    heads = [{"lr": c["lr"], "epochs": c["epochs"], "val": _head(task, c["val"]), "test": _head(task, c["test"])}
             for c in cells]
    figures.grid_plot(heads, metric, out / figs["grid"], f"{name}: {metric} vs learning rate ({ident['size']} px)",
                      chosen={"lr": chosen["lr"], "val": _head(task, chosen["val"]), "test": _head(task, chosen["test"])})
    if task == "classify":
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
    report = {
        "schema": "edgebus.grid/1", "task": task, "model": ident["model"], "recipe": run.manifest["grid"].get("recipe"),
        "select": metric, "tiebreak": [TIEBREAK[task] if TIEBREAK[task] != metric else "", "fewer epochs", "lower lr"],
        "chosen": {"lr": chosen["lr"], "epochs": chosen["epochs"], "val": chosen["val"], "test": chosen["test"]},
        "best_run": "best", "best_source": source, "metrics_match_cell": same,
        "per_split": per_split, "test_bootstrap": ci, "figures": figs,
        "cells": sorted(heads, key=cell_key),
    }
    write_json(out / "report.json", report)
    atomic_write(out / "report.md", grid_markdown(report, run.manifest))
    run.add_artifact("report.json", "report")
    run.add_artifact("report.md", "report")
    run.manifest["metrics"]["chosen"] = report["chosen"] | {"source": source}
    run.stage("report", finished=now())
    run.save()
    log(f"{out}: report.md, {', '.join(figs.values())}; chosen model in {out / 'best'} ({source})")
    return report | {"complete": True, "out": str(out)}


def _close(a: dict, b: dict, task: str, tol: float = 1e-6) -> bool:
    keys = ("accuracy", "auc") if task == "classify" else ("iou", "dice")
    return all((a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and abs(a[k] - b[k]) <= tol)
               for k in keys)


def _head(task: str, m: dict) -> dict:
    if task == "classify":
        f = flat_classification(m)
        return {k: f[k] for k in ("accuracy", "auc", "malignant_recall", "f1_macro")}
    return {"iou": m["iou"], "dice": m["dice"]}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def grid_markdown(report: dict, manifest: dict) -> str:
    task, metric = report["task"], report["select"]
    ident = manifest["grid"]["identity"]
    cc = manifest["grid"]["content_check"]
    rec = report.get("recipe") or {}
    lrs, eps = ident["lrs"], ident["epochs"]
    by = {(c["lr"], c["epochs"]): c for c in report["cells"]}
    ch = report["chosen"]
    lines = [
        f"# Grid search: {ident['model']} at {ident['size']} px" + (f" (recipe `{rec.get('path')}`)" if rec else ""),
        "",
    ]
    if rec.get("reduced"):
        lines += ["**Reduced recipe** (not the study's full grid or input size): " + rec.get("description", ""), ""]
    elif not (set(lrs) >= set(STUDY_LRS) and set(eps) >= set(STUDY_EPOCHS)):
        lines += [f"**Reduced grid** (not the study's 7 x 5): learning rates {', '.join(f'{v:g}' for v in lrs)}, "
                  f"epochs {', '.join(map(str, eps))}.", ""]
    lines += [
        f"Adam, constant learning rate; batch {ident['batch']}, seed {ident['seed']}, weights {ident['weights']}, "
        f"augmentation {'left-right flip' if ident['augment'] else 'none'}. Data fingerprint "
        f"`{manifest['data']['fingerprint'][:12]}`, {manifest['data']['n_lesions']} lesion cases, stratified split "
        f"{ident['split_fractions']} (seed {ident['seed']}): " + ", ".join(f"{k} {v}" for k, v in manifest["split"]["counts"].items()) + ".",
        "",
        f"Content check: {cc['images']} images, {cc['unique']} unique ({cc['hash']}); "
        + (f"{len(cc['duplicate_groups'])} duplicate group(s), each kept within one split part." if cc["duplicate_groups"]
           else "no duplicates; no image sits in two split parts."),
        "",
        f"One training run per learning rate, evaluated in inference mode at each epoch count on the way. "
        f"Selection by **validation {metric}** only (ties: {', '.join(t for t in report['tiebreak'] if t)}); the test "
        f"numbers of every cell come from the same pass and were not used to choose.",
        "",
    ]
    for part in ("val", "test"):
        lines += [f"## {'Validation' if part == 'val' else 'Test'} {metric} (rows: epochs, columns: learning rate)", "",
                  "| epochs | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
        for e in eps:
            row = []
            for lr in lrs:
                v = by[(lr, e)][part].get(metric)
                s = _fmt(v)
                row.append(f"**{s}**" if (lr, e) == (ch["lr"], ch["epochs"]) else s)
            lines.append(f"| {e} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [f"![grid]({report['figures']['grid']})", "",
              f"## Chosen: lr {ch['lr']:g}, {ch['epochs']} epochs",
              "",
              f"Model in `best/` ({report['best_source']}; a standard run directory for `edgebus export`)."
              + ("" if report["metrics_match_cell"] else " Its val/test metrics differ slightly from the grid cell's."),
              ""]
    ps = report["per_split"]
    ci = report["test_bootstrap"]
    if task == "classify":
        lines += ["| split | n | accuracy | malignant recall | ROC AUC | macro F1 |", "|---|---|---|---|---|---|"]
        for k in ("train", "val", "test"):
            f = flat_classification(ps[k])
            lines.append(f"| {k} | {ps[k]['n']} | {f['accuracy']:.3f} | {f['malignant_recall']:.3f} | {_fmt(f['auc'])} | {f['f1_macro']:.3f} |")
        lines += ["", classification_report_md(ps["test"], "test split"), "",
                  "Test 95% bootstrap intervals (" + f"{ci['_meta']['resamples']} resamples of the {ci['_meta']['n']} test cases): "
                  + "; ".join(f"{k} {interval_text(ci[k])}" for k in CLASSIFY_KEYS), "",
                  f"![confusion matrix]({report['figures']['confusion_matrix']})", ""]
    else:
        lines += ["| split | n | IoU | Dice | empty predictions |", "|---|---|---|---|---|"]
        for k in ("train", "val", "test"):
            lines.append(f"| {k} | {ps[k]['n']} | {ps[k]['iou']:.3f} | {ps[k]['dice']:.3f} | {ps[k]['empty_predictions']} |")
        lines += ["", "Test 95% bootstrap intervals (" + f"{ci['_meta']['resamples']} resamples of the {ci['_meta']['n']} test images): "
                  + "; ".join(f"{k} {interval_text(ci[k])}" for k in ("iou", "dice")), "",
                  f"![overlay]({report['figures']['overlay']})", ""]
    return "\n".join(lines)


# --- the side-by-side table ---------------------------------------------------------------------


def _crop_words(s: dict) -> str:
    if s.get("crop_margin") is None:
        return ""
    boxes = "boxes from the same fold's segmenter" if s.get("boxes_from") else "boxes from the TRUE masks (oracle)"
    return f", lesion crop (margin {s['crop_margin']:g}, {boxes})"


def cv_overview(cvs) -> list[str]:
    """One row per cross-validation: the candidates side by side, float and full-int8."""
    out = ["## Cross-validated candidates", "",
           "Pooled out-of-fold results [95% bootstrap CI]; int8 = each fold's model converted to full-int8 TFLite "
           "and run with the interpreter.", ""]
    cls = [(d, s) for d, s in cvs if s["task"] == "classify"]
    seg = [(d, s) for d, s in cvs if s["task"] == "segment"]
    if cls:
        out += ["| classifier | input | int8 from | accuracy (%) | accuracy int8 (%) | malignant recall (%) | recall int8 (%) | AUC (%) | AUC int8 (%) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for d, s in cls:
            b, b8 = s["bootstrap"], s.get("bootstrap_int8")
            cells = [interval_text(b[k], pct=True) for k in ("accuracy", "malignant_recall", "auc")]
            cells8 = [interval_text(b8[k], pct=True) if b8 else "—" for k in ("accuracy", "malignant_recall", "auc")]
            src = (s.get("int8_source") or "ptq").upper() if b8 else "—"
            out.append(f"| {s['model']} (`{Path(d).name}`) | {s['size']} px{_crop_words(s)} | {src} | {cells[0]} | {cells8[0]} | "
                       f"{cells[1]} | {cells8[1]} | {cells[2]} | {cells8[2]} |")
        out.append("")
    if seg:
        out += ["| segmenter | input | IoU | IoU int8 | Dice |", "|---|---|---|---|---|"]
        for d, s in seg:
            b8 = s.get("bootstrap_int8")
            out.append(f"| {s['model']} (`{Path(d).name}`) | {s['size']} px | {interval_text(s['bootstrap']['iou'])} | "
                       f"{interval_text(b8['iou']) if b8 else '—'} | {interval_text(s['bootstrap']['dice'])} |")
        out.append("")
    return out


def study_table(grid_dirs=(), cv_dirs=()) -> str:
    """Markdown: the study's numbers beside this reproduction (val-selected grid cell, single test
    split, 95% bootstrap CI) and the honest protocol (k-fold mean +- std, pooled bootstrap CI)."""
    from edgebus.rundir import read_json

    grids, cvs = [], []
    for d in grid_dirs:
        d = Path(d)
        if not (d / "report.json").is_file():
            raise EdgebusError(f"{d}: no report.json; finish the grid (or run 'edgebus grid report {d}') first")
        grids.append((d, read_json(d / "report.json")))
    for d in cv_dirs:
        d = Path(d)
        if not (d / "summary.json").is_file():
            raise EdgebusError(f"{d}: no summary.json; finish the cross-validation ('edgebus cv') first")
        cvs.append((d, read_json(d / "summary.json")))
    if not grids and not cvs:
        raise EdgebusError("study table: give at least one grid or cross-validation directory")
    # one section per grid, with the first CV of the same model beside it; CVs left over get their own
    sections, used = [], set()
    for g in grids:
        c = next((c for c in cvs if c[1]["model"] == g[1]["model"] and id(c) not in used), None)
        if c is not None:
            used.add(id(c))
        sections.append((g[1]["model"], g, c))
    sections += [(c[1]["model"], None, c) for c in cvs if id(c) not in used]
    out = ["# The study beside this reproduction", "",
           "Study: Dosch & Shaw, single split, test n=27 (16 benign, 11 malignant); the 95% interval of an accuracy "
           "near 65% on 27 images is about +-18 points. Reproduction: the same grid and selection rule (best "
           "validation metric), test numbers of the chosen cell with a 95% percentile-bootstrap interval. Honest "
           "protocol: stratified k-fold cross-validation at fixed settings, mean +- std over folds and a 95% bootstrap "
           "interval over the pooled out-of-fold predictions.", ""]
    if cvs:
        out += cv_overview(cvs)
    for m, g, c in sections:
        st = STUDY.get(m)
        task = (g[1]["task"] if g else c[1]["task"])
        head = f"## {m}"
        if g and (g[1].get("recipe") or {}).get("name"):
            head += f", recipe {g[1]['recipe']['name']}"
        if g:
            rr = g[1]
            head += f" (grid `{g[0]}`: chosen lr {rr['chosen']['lr']:g}, {rr['chosen']['epochs']} epochs, test n={rr['per_split']['test']['n']}"
            full = {(c["lr"], c["epochs"]) for c in rr["cells"]} >= {(lr, e) for lr in STUDY_LRS for e in STUDY_EPOCHS}
            head += ", reduced grid)" if (rr.get("recipe") or {}).get("reduced") or not full else ")"
        out += [head, ""]
        if c:
            s = c[1]
            out += [f"Cross-validation `{c[0]}`: {s['k']} folds, lr {s['lr']:g}, {s['epochs']} epochs, {s['size']} px"
                    f"{_crop_words(s)}.", ""]
        out += ["| metric | study | reproduction: chosen cell, test [95% CI] | honest: k-fold mean +- std | honest: pooled [95% CI] |",
                "|---|---|---|---|---|"]
        if task == "classify":
            rows = [("accuracy", "accuracy")] + [(f"{cl}_{k}", (cl, k)) for cl in ("benign", "malignant")
                                                 for k in ("precision", "recall", "f1")] + [("auc", None)]
            for key, skey in rows:
                sv = None
                if st and skey is not None:
                    sv = st[skey] if isinstance(skey, str) else st[skey[0]][skey[1]]
                rep = interval_text(g[1]["test_bootstrap"][key], pct=True) if g else "—"
                ms = c[1]["mean_std"][key] if c else None
                msv = "—" if not c or ms["mean"] is None else f"{100 * ms['mean']:.1f} +- {100 * ms['std']:.1f}"
                pooled = interval_text(c[1]["bootstrap"][key], pct=True) if c else "—"
                out.append(f"| {key} (%) | {'—' if sv is None else f'{100 * sv:.2f}'} | {rep} | {msv} | {pooled} |")
            if c and "bootstrap_int8" in c[1]:
                for key in ("accuracy", "malignant_recall", "auc"):
                    out.append(f"| {key}, full-int8 (%) | — | — | — | {interval_text(c[1]['bootstrap_int8'][key], pct=True)} |")
        else:
            for key in ("iou", "dice"):
                sv = st.get(f"test_{key}") if st else None
                rep = interval_text(g[1]["test_bootstrap"][key]) if g else "—"
                ms = c[1]["mean_std"][key] if c else None
                msv = "—" if not c else f"{ms['mean']:.3f} +- {ms['std']:.3f}"
                pooled = interval_text(c[1]["bootstrap"][key]) if c else "—"
                out.append(f"| test {key} | {'—' if sv is None else f'{sv:.3f}'} | {rep} | {msv} | {pooled} |")
            if c and "bootstrap_int8" in c[1]:
                out.append(f"| test iou, full-int8 | — | — | — | {interval_text(c[1]['bootstrap_int8']['iou'])} |")
            if st or g:
                vv = f"{g[1]['chosen']['val']['iou']:.3f}" if g else "—"
                out.append(f"| val IoU (selection) | {st['val_iou'] if st else '—'} | {vv} | — | — |")
                sc = f"lr {st['lr']:g}, {st['epochs']} epochs" if st else "—"
                gc = f"lr {g[1]['chosen']['lr']:g}, {g[1]['chosen']['epochs']} epochs" if g else "—"
                out.append(f"| chosen cell | {sc} | {gc} | — | — |")
        out.append("")
    return "\n".join(out)
