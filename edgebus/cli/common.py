"""What every command shares: the one-line error wrapper, list parsing, common options."""

from __future__ import annotations

import errno
import functools
from typing import Optional

import typer

from edgebus.core.errors import EdgebusError


# a machine's limits, not a bug: one line with the fix (every write is atomic, so nothing finished is lost)
_WRITE_FIXES = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
                errno.EROFS: "write to another folder (--out)", errno.EACCES: "fix its permissions or use another --out",
                errno.EPERM: "fix its permissions or use another --out"}


def friendly(fn):
    """Bad input, a full disk or a folder it may not write end with one line on stderr and exit code
    2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgebusError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except OSError as e:
            if e.errno not in _WRITE_FIXES:
                raise
            where = f"{e.filename}: " if e.filename else ""
            typer.echo(f"error: {where}{e.strerror}; {_WRITE_FIXES[e.errno]}, then run the same command again "
                       "(what was finished is kept)", err=True)
            raise typer.Exit(2)

    return wrapper


def numbers(s: Optional[str], what: str, kind=float) -> Optional[list]:
    """'1e-4,1e-3' -> [0.0001, 0.001] (kind=int: whole numbers); None stays None."""
    if s is None:
        return None
    try:
        return [kind(t) for t in s.split(",") if t.strip()]
    except ValueError:
        example = "10,20" if kind is int else "1e-4,1e-3"
        words = "whole numbers" if kind is int else "numbers"
        raise EdgebusError(f"{what} '{s}': give comma-separated {words}, e.g. {example}") from None


def given(**opts) -> dict:
    """The options that were set (not None)."""
    return {k: v for k, v in opts.items() if v is not None}


DATA = typer.Option(None, "--data", help="BrEaST-layout folder (sheet .xlsx + images_and_masks/)")
SIZE = typer.Option(None, help="input size in pixels, square (default: the model's, see 'edgebus models')")
BATCH = typer.Option(None, help="batch size (default: the model's, see 'edgebus models')")
SEED = typer.Option(None, help="seed for the split and training (default 0)")
BACKEND = typer.Option("local", "--backend", help="local (this process, one unit after another) or ray (each unit a Ray "
                       "task; pip install 'edgebus\\[cluster]')")
ADDRESS = typer.Option(None, "--address", help="with --backend ray: the cluster (auto, or ray://HEAD:10001); default: "
                       "start a Ray instance on this machine")
CPUS_PER_TASK = typer.Option(1.0, "--cpus-per-task", help="with --backend ray: CPUs each task asks for")
GPUS_PER_TASK = typer.Option(0.0, "--gpus-per-task", help="with --backend ray: GPUs each task asks for")


def backend_of(name: str, address, cpus: float, gpus: float):
    from edgebus.training.backends import Backend

    return Backend(name, address, cpus, gpus)
WEIGHTS = typer.Option(None, help="none (default), imagenet (needs internet) or a local weights file")
KEEP = typer.Option(None, help="best (default): weights of the epoch with the best validation accuracy (segment: IoU), "
                               "as the study selected; last: final epoch")
QUIET = typer.Option(False, "--quiet", help="no progress bar")
RECIPE = typer.Option(None, "--recipe", help="a recipe file, e.g. training/mobilenetv2.toml; options given here override it")
CROP_MARGIN = typer.Option(None, help="segmentation-guided: classify a square crop around the lesion, this fraction "
                                      "of its size added on each side (e.g. 0.5)")


def model_option(task: str):
    from edgebus.core.tasks import get_task

    return typer.Option(None, help=f"a {task} model from 'edgebus models' (default {get_task(task).default_model})")
AUGMENT = typer.Option(None, help="training augmentation: flip (default), ultrasound (gain, gamma, contrast, noise, blur, "
                                   "depth, frame aspect, flip: the stress benchmark's changes at training strength), scanner "
                                   "(ultrasound plus another scanner's frame geometry: aspect and depth) or none")
NORMALIZE = typer.Option(None, help="percentile: stretch each frame's gray levels between its 0.5th and 99.5th percentiles "
                                    "(in the preprocessing contract, so the cart does the same); default none")
SCHEDULE = typer.Option(None, help="learning-rate schedule: constant (default) or cosine (warm-up over the first "
                                   "tenth of the epochs, then cosine decay to 1% of --lr)")
DESCRIPTORS = typer.Option(False, "--descriptors", help="also train BI-RADS descriptor heads (shape, margin, echogenicity, "
                                                       "posterior shadowing, halo, calcifications) from the sheet; the "
                                                       "cart then explains its call in the lexicon's words")
