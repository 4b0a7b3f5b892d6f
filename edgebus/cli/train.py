"""edgebus train / grid / cv: training stages. Each command: parse -> config -> library call -> print."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgebus.cli.common import (ADDRESS, AUGMENT, BACKEND, BATCH, CPUS_PER_TASK, GPUS_PER_TASK, backend_of, CROP_MARGIN, DATA, DESCRIPTORS, KEEP, NORMALIZE, QUIET, RECIPE, SCHEDULE, SEED, SIZE, WEIGHTS,
                                friendly, given, model_option, numbers)
from edgebus.core.errors import EdgebusError
from edgebus.core.tasks import TASKS

train_app = typer.Typer(help="Train a model on a BrEaST-layout data set; writes a run directory.", no_args_is_help=True)
grid_app = typer.Typer(
    help="The study's grid search (learning rate x epochs), resumable and shardable; writes a grid directory. "
         "'edgebus grid --recipe training/<name> --data DIR' runs a recipe.",
    invoke_without_command=True)
cv_app = typer.Typer(help="Stratified k-fold cross-validation with bootstrap 95% intervals (the honest protocol).",
                     no_args_is_help=True)

OUT = typer.Option(None, "--out", help="output directory (default under runs/)")
SHARD = typer.Option(None, help="i/n: run only this machine's share of the learning rates, e.g. 1/3")


TEACHER = typer.Option(None, "--teacher", help="distil: a classifier CV made with --int8 (a merged seed ensemble "
                       "too) whose files' answers on the training cases are mixed into the malignancy target; in a CV, each "
                       "fold learns from its own fold's files (same folds required)")
TEACHER_MASKS = typer.Option(None, "--teacher-masks", help="distil: a segment CV made with --int8 whose lesion maps "
                             "are mixed into a multi-task model's mask target (same folds)")
TEACHER_WEIGHT = typer.Option(None, "--teacher-weight", help="the teachers' share of each training target (default 0.5)")
LESION_FREE = typer.Option(False, "--lesion-free", help="segmenters: also train on each training frame's lesion-free "
                           "band (tissue beside the lesion) with an empty mask, so the mask learns 'no lesion here'")


def _train_command(task: str):
    def command(data: Path = typer.Option(..., "--data", help="BrEaST-layout folder (sheet .xlsx + images_and_masks/)"),
                model: Optional[str] = model_option(task), out: Optional[Path] = OUT, size: Optional[int] = SIZE,
                epochs: Optional[int] = typer.Option(None, help="training epochs (default 20)"),
                lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 1e-3)"),
                batch: Optional[int] = BATCH, seed: Optional[int] = typer.Option(None, help="seed for the split and training (default 0)"),
                weights: Optional[str] = typer.Option(None, help="none (default), imagenet (needs internet) or a local weights file"),
                keep: Optional[str] = typer.Option(None, help="best (default): the epoch with the best validation accuracy (segment: IoU); last"),
                recipe: Optional[Path] = typer.Option(None, "--recipe", help="a recipe (training/<name>.toml): its model settings "
                                                      "and its [cv] learning rate and epochs; options given here win"),
                overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run at --out"),
                quiet: bool = QUIET, crop_margin: Optional[float] = CROP_MARGIN,
                augment: Optional[str] = AUGMENT, normalize: Optional[str] = NORMALIZE, descriptors: bool = DESCRIPTORS,
                schedule: Optional[str] = SCHEDULE,
                segmenter: Optional[Path] = typer.Option(None, help="segment run (same split) whose predicted lesion boxes "
                                                         "cut the val/test crops; without it they use the true masks (oracle)"),
                teacher: Optional[Path] = TEACHER, teacher_masks: Optional[Path] = TEACHER_MASKS,
                teacher_weight: Optional[float] = TEACHER_WEIGHT, lesion_free: bool = LESION_FREE):
        from edgebus.training import train
        from edgebus.training.recipes import train_config

        if task != "classify" and (crop_margin is not None or segmenter is not None or teacher or teacher_masks):
            raise EdgebusError("--crop-margin, --segmenter and --teacher are for 'edgebus train classify'")
        cfg = train_config(task, recipe, **given(data=data, model=model, size=size, epochs=epochs, lr=lr, batch=batch,
                                                 seed=seed, weights=weights, keep=keep, overwrite=overwrite or None,
                                                 crop_margin=crop_margin, segmenter=segmenter, normalize=normalize,
                                                 augment=augment, descriptors=descriptors or None, schedule=schedule,
                                                 teacher=teacher, teacher_masks=teacher_masks,
                                                 teacher_weight=teacher_weight, lesion_free=lesion_free or None))
        cfg.resolve("train")
        cfg.out = str(out or Path("runs") / f"{cfg.model}-{cfg.size}")
        run = train(cfg, progress=not quiet, log=typer.echo)
        t = run.manifest.keras_metrics("test")
        typer.echo(f"{run.path}: test {run.task.headline_text(t)} (n={t['n']})")

    command.__doc__ = ("Benign vs malignant classifier (whole frame, or a crop around the lesion with --crop-margin)."
                       if task == "classify" else "Lesion segmenter (one sigmoid mask).")
    return command


def _grid(task: Optional[str], recipe, shard, quiet, backend=None, **opts) -> None:
    from edgebus.training.cells import parse_shard
    from edgebus.training.grid import GridConfig, run_grid
    from edgebus.training.recipes import grid_config, load_recipe

    sh = parse_shard(shard)
    opts["lrs"] = numbers(opts.get("lrs"), "--lrs")
    opts["epochs"] = numbers(opts.get("epochs"), "--epochs", int)
    if recipe is not None:
        r = load_recipe(recipe)
        if task and r.get("task") and r["task"] != task:
            raise EdgebusError(f"{r['_path']}: a {r['task']} recipe; use 'edgebus grid {r['task']}' or 'edgebus grid --recipe'")
        cfg = grid_config(r, task=task, **opts)
    else:
        if opts.get("data") is None:
            raise EdgebusError("grid: pass --data (a BrEaST-layout folder) or --recipe training/<name>")
        cfg = GridConfig.from_options(task, **opts)
    res = run_grid(cfg, sh, progress=not quiet, log=typer.echo, backend=backend)
    if res.get("complete"):
        typer.echo(f"report: {Path(res['out']) / 'report.md'}")


@grid_app.callback()
@friendly
def grid_main(ctx: typer.Context, recipe: Optional[Path] = RECIPE, data: Optional[Path] = DATA,
              out: Optional[Path] = OUT, shard: Optional[str] = SHARD, quiet: bool = QUIET,
              backend: str = BACKEND, address: Optional[str] = ADDRESS, cpus_per_task: float = CPUS_PER_TASK,
              gpus_per_task: float = GPUS_PER_TASK):
    """Run a recipe (edgebus grid --recipe training/resnet50 --data DIR), or use a subcommand."""
    if ctx.invoked_subcommand is not None:
        if recipe is not None or data is not None:
            raise EdgebusError(f"put --recipe/--data after the subcommand: edgebus grid {ctx.invoked_subcommand} --recipe ...")
        return
    if recipe is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _grid(None, recipe, shard, quiet, backend_of(backend, address, cpus_per_task, gpus_per_task), data=data, out=out)


def _grid_command(task: str):
    def command(data: Optional[Path] = DATA, model: Optional[str] = model_option(task),
                lrs: Optional[str] = typer.Option(None, help="comma-separated Adam learning rates (default: the study's 7)"),
                epochs: Optional[str] = typer.Option(None, help="comma-separated epoch counts (default: 10,20,30,40,50)"),
                size: Optional[int] = SIZE, batch: Optional[int] = BATCH, seed: Optional[int] = SEED,
                weights: Optional[str] = WEIGHTS,
                select: Optional[str] = typer.Option(None, help="validation metric that picks the cell (default: "
                                                     f"{TASKS[task].select[0]}; any of {', '.join(TASKS[task].select)})"),
                out: Optional[Path] = OUT, shard: Optional[str] = SHARD, recipe: Optional[Path] = RECIPE,
                quiet: bool = QUIET, backend: str = BACKEND, address: Optional[str] = ADDRESS,
                cpus_per_task: float = CPUS_PER_TASK, gpus_per_task: float = GPUS_PER_TASK):
        _grid(task, recipe, shard, quiet, backend_of(backend, address, cpus_per_task, gpus_per_task), data=data, model=model, lrs=lrs, epochs=epochs, size=size, batch=batch,
              seed=seed, weights=weights, select=select, out=out)

    command.__doc__ = (f"Grid of {'benign/malignant classifiers; selection by validation accuracy, as the study did' if task == 'classify' else 'lesion segmenters; selection by validation IoU'}.")
    return command


@grid_app.command("report")
@friendly
def grid_report(grid_dir: Path = typer.Argument(..., help="grid directory (all cells done; shards' cells*.jsonl and "
                                                           "candidates/ copied in)")):
    """Select by val, write best/, the figures and report.md (runs on its own once a grid completes)."""
    from edgebus.training.grid_report import finalize

    finalize(grid_dir, log=typer.echo)
    typer.echo(f"report: {grid_dir / 'report.md'}")


@grid_app.command("table")
@friendly
def grid_table(grids: list[Path] = typer.Argument(None, help="grid directories"),
               cv: Optional[list[Path]] = typer.Option(None, "--cv", help="cross-validation directory (repeatable)"),
               out: Optional[Path] = typer.Option(None, "--out", help="write the markdown here (default: print)")):
    """The study's numbers beside the grid reproduction and the k-fold protocol, as markdown."""
    from edgebus.core.io import atomic_write
    from edgebus.reports.study import study_table

    md = study_table(grids or [], cv or [])
    if out:
        atomic_write(out, md)
        typer.echo(f"table: {out}")
    else:
        typer.echo(md)


def _cv_command(task: str):
    def command(data: Optional[Path] = DATA, model: Optional[str] = model_option(task),
                folds: Optional[int] = typer.Option(None, help="number of folds (default 5)"),
                lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 1e-3)"),
                epochs: Optional[int] = typer.Option(None, help="training epochs per fold (default 40)"),
                size: Optional[int] = SIZE, batch: Optional[int] = BATCH, seed: Optional[int] = SEED,
                weights: Optional[str] = WEIGHTS, keep: Optional[str] = KEEP, out: Optional[Path] = OUT,
                recipe: Optional[Path] = RECIPE, quiet: bool = QUIET,
                int8: bool = typer.Option(False, "--int8", help="also convert each fold's model to full-int8 TFLite "
                                          "and score it on the fold's test part"),
                int8_source: Optional[str] = typer.Option(None, "--int8-source", help="ptq (default: post-training "
                                                          "calibration) or qat (quantization-aware fine-tuning per fold, as "
                                                          "'edgebus export --int8'; PTQ is scored too)"),
                qat_distill: Optional[float] = typer.Option(None, "--qat-distill", help="with --int8-source qat: QAT's "
                                                            "target, 1.0 (default) the fold's float model, 0.0 the labels"),
                crop_margin: Optional[float] = CROP_MARGIN, augment: Optional[str] = AUGMENT,
                normalize: Optional[str] = NORMALIZE, descriptors: bool = DESCRIPTORS, schedule: Optional[str] = SCHEDULE,
                boxes_from: Optional[Path] = typer.Option(None, help="a segment CV folder (same folds) whose predicted "
                                                          "lesion boxes cut the val/test crops (classify only)"),
                fold_seed: Optional[int] = typer.Option(None, "--fold-seed", help="seed of the folds, when it differs "
                                                        "from --seed: another training seed on the same folds (for "
                                                        "'edgebus cv-merge' seed ensembles)"),
                group_by: Optional[str] = typer.Option(None, "--group-by", help="case (default: stratified by case) or "
                                                       "acquisition (every frame size, i.e. scanner + preset, in one "
                                                       "test fold only: scores each case as a new scanner would see it)"),
                teacher: Optional[Path] = TEACHER, teacher_masks: Optional[Path] = TEACHER_MASKS,
                teacher_weight: Optional[float] = TEACHER_WEIGHT, lesion_free: bool = LESION_FREE,
                backend: str = BACKEND, address: Optional[str] = ADDRESS, cpus_per_task: float = CPUS_PER_TASK,
                gpus_per_task: float = GPUS_PER_TASK):
        from edgebus.core.stats import interval_text
        from edgebus.training.cv import run_cv
        from edgebus.training.recipes import cv_config

        if task != "classify" and (crop_margin is not None or boxes_from is not None or teacher or teacher_masks):
            raise EdgebusError("--crop-margin, --boxes-from and --teacher are for 'edgebus cv classify'")
        cfg = cv_config(task, recipe, **given(data=data, model=model, folds=folds, lr=lr, epochs=epochs, size=size,
                                              batch=batch, seed=seed, weights=weights, keep=keep, out=out,
                                              int8=int8 or None, int8_source=int8_source, qat_distill=qat_distill,
                                              crop_margin=crop_margin,
                                              boxes_from=boxes_from, augment=augment, normalize=normalize,
                                              descriptors=descriptors or None, fold_seed=fold_seed,
                                              schedule=schedule, group_by=group_by, teacher=teacher,
                                              teacher_masks=teacher_masks, teacher_weight=teacher_weight,
                                              lesion_free=lesion_free or None))
        s = run_cv(cfg, progress=not quiet, log=typer.echo,
                   backend=backend_of(backend, address, cpus_per_task, gpus_per_task))
        for k in TASKS[task].headline(s["pooled"]):
            ms = s["mean_std"][k]
            mean = "n/a" if ms["mean"] is None else f"{ms['mean']:.3f} +- {ms['std']:.3f}"
            typer.echo(f"{k}: {mean} over {s['k']} folds; pooled {interval_text(s['bootstrap'][k])} (95% bootstrap CI)")

    command.__doc__ = (f"k-fold CV of a {TASKS[task].role}: "
                       + ("accuracy, malignant recall, AUC" if task == "classify" else "IoU and Dice")
                       + " as mean +- std and bootstrap CI.")
    return command


for _task in TASKS:
    train_app.command(_task)(friendly(_train_command(_task)))
    grid_app.command(_task)(friendly(_grid_command(_task)))
    cv_app.command(_task)(friendly(_cv_command(_task)))
