"""The edgebus command line: parse, call the library, print. TensorFlow loads only inside the
commands that need it, so `edgebus --help` and the device path stay light."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from edgebus.errors import EdgebusError

app = typer.Typer(help="Breast-ultrasound lesion models: train -> int8 TFLite export -> benchmark -> report.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
train_app = typer.Typer(help="Train a model on a BrEaST-layout data set; writes a run directory.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def friendly(fn):
    """Bad input ends with one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgebusError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)

    return wrapper


def _threads(s: str) -> list[int]:
    try:
        return [int(t) for t in s.split(",") if t.strip()]
    except ValueError:
        raise EdgebusError(f"--threads '{s}': give comma-separated integers, e.g. 1,2") from None


def _train(task: str, data: Path, model: str, out: Optional[Path], size: int, epochs: int, lr: float,
           batch: int, seed: int, weights: str, keep: str, overwrite: bool, quiet: bool) -> None:
    from edgebus.training import TrainConfig, train

    out = out or Path("runs") / f"{model}-{size}"
    cfg = TrainConfig(data=str(data), model=model, out=str(out), task=task, size=size, epochs=epochs, lr=lr,
                      batch=batch, seed=seed, weights=weights, keep=keep, overwrite=overwrite)
    run = train(cfg, progress=not quiet)
    t = run.manifest["metrics"]["keras"]["test"]
    head = (f"test accuracy {t['accuracy']:.3f}, malignant recall {t['malignant_recall']:.3f}, AUC {t['auc'] or 0:.3f}"
            if task == "classify" else f"test IoU {t['iou']:.3f}, Dice {t['dice']:.3f}")
    typer.echo(f"{run.path}: {head} (n={t['n']})")


_opts = dict(
    data=typer.Option(..., "--data", help="BrEaST-layout folder (sheet .xlsx + images_and_masks/)"),
    out=typer.Option(None, "--out", help="run directory (default runs/<model>-<size>)"),
    size=typer.Option(128, help="input size in pixels (square)"),
    epochs=typer.Option(20, help="training epochs"),
    lr=typer.Option(1e-3, help="Adam learning rate"),
    batch=typer.Option(16, help="batch size"),
    seed=typer.Option(0, help="seed for the split and training"),
    weights=typer.Option("none", help="none, imagenet (needs internet) or a local weights file"),
    keep=typer.Option("best", help="best: weights of the epoch with the lowest validation loss; last: final epoch"),
    overwrite=typer.Option(False, "--overwrite", help="replace an existing run at --out"),
    quiet=typer.Option(False, "--quiet", help="no progress bar"),
)


@train_app.command("classify")
@friendly
def train_classify(data: Path = _opts["data"], model: str = typer.Option("mobilenetv2", help="mobilenetv2, resnet50, test-cnn"),
                   out: Optional[Path] = _opts["out"], size: int = _opts["size"], epochs: int = _opts["epochs"],
                   lr: float = _opts["lr"], batch: int = _opts["batch"], seed: int = _opts["seed"],
                   weights: str = _opts["weights"], keep: str = _opts["keep"], overwrite: bool = _opts["overwrite"], quiet: bool = _opts["quiet"]):
    """Benign vs malignant classifier."""
    _train("classify", data, model, out, size, epochs, lr, batch, seed, weights, keep, overwrite, quiet)


@train_app.command("segment")
@friendly
def train_segment(data: Path = _opts["data"], model: str = typer.Option("unet-efficientnetb2", help="unet-efficientnetb2, test-unet"),
                  out: Optional[Path] = _opts["out"], size: int = _opts["size"], epochs: int = _opts["epochs"],
                  lr: float = _opts["lr"], batch: int = typer.Option(8, help="batch size"), seed: int = _opts["seed"],
                  weights: str = _opts["weights"], keep: str = _opts["keep"], overwrite: bool = _opts["overwrite"], quiet: bool = _opts["quiet"]):
    """Lesion segmenter (one sigmoid mask)."""
    _train("segment", data, model, out, size, epochs, lr, batch, seed, weights, keep, overwrite, quiet)


@app.command()
@friendly
def export(run: Path = typer.Argument(..., help="run directory made by 'edgebus train'"),
           int8: bool = typer.Option(False, "--int8", help="also write a full-integer int8 model"),
           formats: str = typer.Option("float32", help="comma-separated: float32, float16, dynamic, int8"),
           calibration_images: int = typer.Option(100, help="training images used to calibrate int8"),
           io_type: str = typer.Option("uint8", help="int8 model input/output type: uint8 or int8"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier exports of the run")):
    """Convert a run's model to TFLite and validate every file on the test split."""
    from edgebus.export import export_run

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    if int8 and "int8" not in fmts:
        fmts.append("int8")
    if io_type not in ("uint8", "int8"):
        raise EdgebusError(f"--io-type '{io_type}': choose uint8 or int8")
    from edgebus.metrics import headline
    from edgebus.rundir import Run

    res = export_run(run, fmts, calibration_images, io_type, overwrite, log=typer.echo)
    task = Run.load(run).task
    for e in res.values():
        h = ", ".join(f"{k} {v:.3f}" for k, v in headline(task, e["metrics"]).items() if v is not None)
        agree = ", ".join(f"{k} {v:.3f}" for k, v in e["agreement"].items() if k.endswith("agreement"))
        typer.echo(f"{e['file']}: {h}; {agree} with Keras")


@app.command()
@friendly
def bench(run: Path = typer.Argument(..., help="run directory with exported models"),
          threads: str = typer.Option("1", help="comma-separated thread counts, e.g. 1,2"),
          warmup: int = typer.Option(10, help="untimed invokes before timing"),
          runs: int = typer.Option(50, help="timed invokes"),
          xnnpack: bool = typer.Option(True, "--xnnpack/--no-xnnpack", help="use the XNNPACK delegate (LiteRT's default)")):
    """Time every exported file, score it on the test split, write report.md and report.json."""
    from edgebus.benchmarks import bench_run, write_report
    from edgebus.benchmarks.report import markdown

    result = bench_run(run, _threads(threads), warmup, runs, xnnpack, log=typer.echo)
    md, _ = write_report(result, run)
    typer.echo(markdown(result))
    typer.echo(f"report: {md}")


@app.command()
@friendly
def synth(out: Path = typer.Argument(..., help="folder to write the synthetic BrEaST-layout set into"),
          cases: int = typer.Option(120, help="number of cases"), seed: int = typer.Option(0)):
    """Write a synthetic data set in the exact BrEaST-Lesions_USG layout."""
    from edgebus.data.synthetic import make_synthetic

    if out.exists() and any(out.iterdir()):
        raise EdgebusError(f"{out}: folder is not empty; pick a new folder for the synthetic set")
    make_synthetic(out, n_cases=cases, seed=seed)
    typer.echo(f"{out}: {cases} synthetic cases")


@app.command()
def models():
    """List the model registry."""
    from edgebus.models.registry import MODELS

    for name, m in sorted(MODELS.items()):
        typer.echo(f"{name:22s} {m['task']:9s} {m['doc']}")


@app.command()
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


if __name__ == "__main__":  # pragma: no cover
    app()
