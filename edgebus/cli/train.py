"""edgebus train / grid / cv: training stages. Each command: parse -> settings -> library call -> print.
Their options are the stage dataclasses' fields (edgebus.config.stages), declared once."""

from __future__ import annotations

from pathlib import Path

import typer

from edgebus.cli.common import backend_of, friendly
from edgebus.cli.options import OPT, config_about, options
from edgebus.config.stages import CVConfig, GridConfig, TrainConfig
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.tasks import TASKS

train_app = typer.Typer(help="Train a model on a BrEaST-layout data set; writes a run directory.", no_args_is_help=True)
grid_app = typer.Typer(
    help="The study's grid search (learning rate x epochs), resumable and shardable; writes a grid directory. "
         "'edgebus grid --config training/<name> --data DIR' runs a recipe.",
    invoke_without_command=True)
cv_app = typer.Typer(help="Stratified k-fold cross-validation with bootstrap 95% intervals (the honest protocol).",
                     no_args_is_help=True)


def _file_task(task: str | None, command: str) -> str:
    """The command's task, or the settings file's; they must agree."""
    about = config_about() or {}
    if task and about.get("task") and about["task"] != task:
        raise EdgebusError(f"{about['path']}: a {about['task']} recipe; use 'edgebus {command} {about['task']}'")
    if not (task or about.get("task")):
        raise EdgebusError(f"{about.get('path', 'the settings file')}: no task; add task = \"classify\" or use "
                           f"'edgebus {command} classify'")
    return task or about["task"]


def _train_command(task: str):
    def command(settings: dict, quiet: bool = OPT):
        from edgebus.training import train
        from edgebus.training.config import resolve

        _file_task(task, "train")
        cfg = TrainConfig(task=task, **settings)
        resolve(cfg, "train")
        cfg.out = str(cfg.out or Path("runs") / f"{cfg.model}-{cfg.size}")
        run = train(cfg, progress=not quiet, log=typer.echo)
        t = run.manifest.keras_metrics("test")
        typer.echo(f"{run.path}: test {run.task.headline_text(t)} (n={t['n']})")

    command.__doc__ = ("Benign vs malignant classifier (whole frame, or a crop around the lesion with --crop-margin)."
                       if task == "classify" else "Lesion segmenter (one sigmoid mask).")
    return options(command, settings=TrainConfig)


def _grid(task: str | None, settings: dict, shard, quiet, backend) -> None:
    from edgebus.training.cells import parse_shard
    from edgebus.training.grid import run_grid

    task = _file_task(task, "grid")
    about = config_about()
    cfg = GridConfig(task=task, recipe=about and {k: v for k, v in about.items() if k != "task"}, **settings)
    if cfg.out is None:
        cfg.out = str(Path("runs") / f"grid-{about['name']}") if about else None
    res = run_grid(cfg, parse_shard(shard), progress=not quiet, log=typer.echo, backend=backend)
    if res.get("complete"):
        typer.echo(f"report: {Path(res['out']) / 'report.md'}")


@grid_app.callback()
@friendly
@options(settings=GridConfig)
def grid_main(ctx: typer.Context, settings: dict, shard: str = OPT, quiet: bool = OPT, backend: str = OPT,
              address: str = OPT, cpus_per_task: float = OPT, gpus_per_task: float = OPT):
    """Run a recipe (edgebus grid --config training/resnet50 --data DIR), or use a subcommand."""
    if ctx.invoked_subcommand is not None:
        if settings or config_about():
            raise EdgebusError(f"put the options after the subcommand: edgebus grid {ctx.invoked_subcommand} "
                               f"{flag('config')} ...")
        return
    if config_about() is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _grid(None, settings, shard, quiet, backend_of(backend, address, cpus_per_task, gpus_per_task))


def _grid_command(task: str):
    def command(settings: dict, shard: str = OPT, quiet: bool = OPT, backend: str = OPT, address: str = OPT,
                cpus_per_task: float = OPT, gpus_per_task: float = OPT):
        _grid(task, settings, shard, quiet, backend_of(backend, address, cpus_per_task, gpus_per_task))

    command.__doc__ = ("Grid of " + ("benign/malignant classifiers; selection by validation accuracy, as the study did"
                                     if task == "classify" else "lesion segmenters; selection by validation IoU") + ".")
    return options(command, settings=GridConfig)


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
def grid_table(grids: list[Path] = typer.Argument(None, help="grid directories"), cv: list[Path] = OPT,
               out: Path = OPT):
    """The study's numbers beside the grid reproduction and the k-fold protocol, as markdown (printed, or
    written to --out)."""
    from edgebus.core.io import atomic_write
    from edgebus.reports.study import study_table

    md = study_table(grids or [], cv or [])
    if out:
        atomic_write(out, md)
        typer.echo(f"table: {out}")
    else:
        typer.echo(md)


def _cv_command(task: str):
    def command(settings: dict, quiet: bool = OPT, backend: str = OPT, address: str = OPT,
                cpus_per_task: float = OPT, gpus_per_task: float = OPT):
        from edgebus.core.stats import interval_text
        from edgebus.training.cv import run_cv

        _file_task(task, "cv")
        about = config_about()
        cfg = CVConfig(task=task, recipe=about and {k: v for k, v in about.items() if k != "task"}, **settings)
        if cfg.out is None and about:
            cfg.out = str(Path("runs") / f"cv-{about['name']}")
        s = run_cv(cfg, progress=not quiet, log=typer.echo,
                   backend=backend_of(backend, address, cpus_per_task, gpus_per_task))
        for k in TASKS[task].headline(s["pooled"]):
            ms = s["mean_std"][k]
            mean = "n/a" if ms["mean"] is None else f"{ms['mean']:.3f} +- {ms['std']:.3f}"
            typer.echo(f"{k}: {mean} over {s['k']} folds; pooled {interval_text(s['bootstrap'][k])} (95% bootstrap CI)")

    command.__doc__ = (f"k-fold CV of a {TASKS[task].role}: "
                       + ("accuracy, malignant recall, AUC" if task == "classify" else "IoU and Dice")
                       + " as mean +- std and bootstrap CI.")
    return options(command, settings=CVConfig)


for _task in TASKS:
    train_app.command(_task)(friendly(_train_command(_task)))
    grid_app.command(_task)(friendly(_grid_command(_task)))
    cv_app.command(_task)(friendly(_cv_command(_task)))
