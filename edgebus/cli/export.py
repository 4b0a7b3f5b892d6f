"""edgebus export / operating-point / evaluate: what happens to a trained run."""

from __future__ import annotations

from pathlib import Path
import typer

from edgebus.cli.common import friendly
from edgebus.cli.options import OPT, options
from edgebus.config.stages import ExportConfig
from edgebus.core.errors import EdgebusError, flag


@friendly
@options(settings=ExportConfig)
def export(run: Path = typer.Argument(..., help="run directory made by 'edgebus train'"), settings: dict = None,
           int8: bool = OPT, ptq: bool = OPT):
    """Convert a run's model to TFLite and validate every file on the test split.

    With --int8 the float model is fine-tuned quantization-aware (tfmot), distilled from its own
    outputs, and converted to a full-integer model_int8.tflite; the post-training
    model_int8_ptq.tflite is written beside it for comparison. Each classifier file gets its own
    threshold by the rule that chose the run's. Every file is scored next to the float Keras model
    (export_report.md), loaded in each installed interpreter, and each int8 file is checked for the
    Edge TPU (edgetpu_report.md). The clinical gates are on by default; a failed gate exits with
    code 2, keeps the files marked FAILED, and bundle / predict refuse them without --accept-failed-gates."""
    from edgebus.export.exporter import export_run

    cfg = ExportConfig.build(int8=bool(int8), ptq=ptq, **settings)  # the profile (--config) is already in settings
    export_run(run, cfg, log=typer.echo)
    typer.echo(f"validation: {run / 'export_report.md'}" + (f"; Edge TPU: {run / 'edgetpu_report.md'}" if "int8" in cfg.formats else ""))


@friendly
def operating_point(target: Path = typer.Argument(..., help="a classifier CV folder ('edgebus cv classify'), or a run "
                                                  "directory before export"),
                    target_sensitivity: float = OPT, from_cv: Path = OPT, source: str = OPT, out: Path = OPT,
                    overwrite: bool = OPT):
    """Choose the decision threshold for a target malignant sensitivity, and calibrate.

    On a CV folder: on the pooled out-of-fold predictions, with Platt calibration and a cross-fitted
    estimate (95% CI) of the sensitivity and specificity it gives on unseen cases. On a run with
    --from-cv: take that CV's threshold and calibration (export embeds them). On a run alone: on its
    validation part (small; prefer a CV). A CV's results go to --out (default: the CV folder)."""
    from edgebus.evaluation.operating_point import apply_cv_operating_point, cv_operating_point, set_operating_point

    target_sensitivity = 0.9 if target_sensitivity is None else target_sensitivity

    if (target / "folds.jsonl").is_file():
        if from_cv is not None:
            raise EdgebusError(f"{flag('from_cv')} gives a run a CV's operating point: pass a run directory, not a CV "
                               "folder")
        cv_operating_point(target, target_sensitivity, source or "auto", out, log=typer.echo, overwrite=overwrite)
    elif from_cv is not None:
        apply_cv_operating_point(target, from_cv, log=typer.echo)
    else:
        set_operating_point(target, target_sensitivity, log=typer.echo)


@friendly
def fuse(classifier_cv: Path = typer.Argument(..., help="a classifier CV folder ('edgebus cv classify')"),
         segment_cv: Path = typer.Argument(..., help="a segment CV folder on the same folds ('edgebus cv segment')"),
         target_sensitivity: float = OPT, out: Path = OPT, overwrite: bool = OPT):
    """Classifier score + the lesion's measured shape, scored out of fold: classifier alone, shape alone, fused.

    The shape (orientation, solidity, compactness, extent of the segmenter's mask in the frame) is
    scale-free, so it does not depend on the scanner's zoom, depth or frame size. Written to --out (default
    CLASSIFIER_CV/fusion)."""
    from edgebus.evaluation.shape_fusion import fuse_cv

    fuse_cv(classifier_cv, segment_cv, out, 0.9 if target_sensitivity is None else target_sensitivity, log=typer.echo, overwrite=overwrite)


@friendly
def presence(segment_cv: Path = typer.Argument(..., help="a segment CV made with --int8, or a multi-task classifier CV "
                                                 "(its files give the lesion mask)"),
             max_miss: float = OPT, out: Path = OPT, overwrite: bool = OPT, stress: bool = OPT):
    """When the cart says "no lesion found": a rule on the lesion map, learned and scored out of fold.

    Lesion-free examples come from the data set itself: a band of tissue beside each test frame's lesion,
    and the sheet's normal frames. Written to --out (default SEGMENT_CV/presence); bundle it with
    'edgebus bundle --presence'."""
    from edgebus.evaluation.presence import presence_cv

    presence_cv(segment_cv, out, 0.02 if max_miss is None else max_miss, log=typer.echo, overwrite=overwrite, stress=stress)


@friendly
def evaluate(run: Path = typer.Argument(..., help="a run directory"),
             data: Path = OPT, format: str = OPT, model_file: Path = OPT, segmenter: Path = OPT):
    """External validation: score a trained or exported model on another data set (--data, in --format busi
    by default; a crop classifier finds its lesions with --segmenter)."""
    from edgebus.core.manifest import Run
    from edgebus.evaluation.evaluate import evaluate_external

    if data is None:
        raise EdgebusError(f"pass {flag('data')}: the data set to score on (not trained on)")
    res = evaluate_external(run, data, format or "busi", None if model_file is None else str(model_file), None if segmenter is None else str(segmenter), log=typer.echo)
    typer.echo(f"{Run.load(run).task.headline_text(res['metrics'])} (n={res['metrics']['n']})")


@friendly
def stress(target: Path = typer.Argument(..., help="a run directory, a CV folder (every case out-of-fold), or a .tflite"),
           data: Path = OPT, format: str = OPT, out: Path = OPT, seed: int = OPT, fuse: Path = OPT,
           overwrite: bool = OPT):
    """Scanner-shift stress benchmark: gain, dynamic range, speckle and noise, blur and resolution, depth,
    flip, JPEG, frame aspect, burned-in marks, each at graded strengths; float and int8 side by side. A .tflite
    is stressed on --data (--format breast by default); results in --out (default TARGET/stress)."""
    from edgebus.evaluation.stress import run_stress

    res = run_stress(target, data, format or "breast", out, seed or 0, log=typer.echo, fuse=fuse, overwrite=overwrite)
    for k, s in res["summary"].items():
        typer.echo(f"{k}: {s['metric']} {s['clean']:.3f} clean, worst {s['worst']:.3f} ({s['worst_change']}, "
                   f"drop {s['worst_drop']:.3f})")
    typer.echo(f"report: {Path(res['out']) / 'stress.md'}")


@friendly
def cv_merge(members: list[Path] = typer.Argument(..., help="two or more classifier CV folders on the same folds "
                                                 "(same settings, other --seed, the same --fold-seed)"),
             out: Path = OPT):
    """A seed ensemble scored out of fold: fold k of the result averages the members' fold-k models.

    Then 'edgebus operating-point OUT', 'edgebus stress OUT' and 'edgebus bundle --classifier OUT' read it
    as any CV folder."""
    from edgebus.core.stats import interval_text
    from edgebus.training.cv_merge import merge_cv

    if out is None:
        raise EdgebusError(f"pass {flag('out')}: the new CV folder of the averaged folds")
    s = merge_cv(members, out, log=typer.echo)
    for key in ("auc", "accuracy"):
        for suffix, what in (("", "float"), ("_int8", "int8")):
            if f"bootstrap{suffix}" in s and key in s[f"bootstrap{suffix}"]:
                typer.echo(f"{key} {what}: pooled {interval_text(s[f'bootstrap{suffix}'][key])} (95% bootstrap CI)")


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command("cv-merge")(cv_merge)
    app.command("operating-point")(operating_point)
    app.command("fuse")(fuse)
    app.command()(presence)
    app.command()(evaluate)
    app.command()(stress)
