"""edgebus export / operating-point / evaluate: what happens to a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgebus.cli.common import friendly
from edgebus.core.errors import EdgebusError


def _given(ctx: typer.Context, **opts) -> dict:
    """The options set on the command line (a profile fills the others)."""
    return {k: v for k, v in opts.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}


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
           qat_distill: float = typer.Option(1.0, "--qat-distill", help="QAT's target: 1.0 the float model's own outputs "
                                             "(distillation, the default), 0.0 the labels alone, between: a mix"),
           max_drop: Optional[float] = typer.Option(None, help="fail if a file loses more than this vs the float Keras model: "
                                                    "accuracy points for a classifier (1.0), IoU for a segmenter (0.01)"),
           max_recall_drop: Optional[float] = typer.Option(None, help="fail if malignant recall drops more than this many points"),
           quantizer: str = typer.Option("tflite", "--quantizer", help="litert: also make model_int8_litert.tflite with the "
                                         "AI Edge (LiteRT) quantizer, compared beside QAT and PTQ"),
           sensitive_int16: int = typer.Option(0, "--sensitive-int16", help="with --quantizer litert: keep the N layers "
                                               "whose int8 error is largest at 16-bit activations"),
           max_flips: Optional[int] = typer.Option(None, "--max-flips", help="gate: fail if a classifier file decides more than "
                                                   "this many test cases differently from the float Keras model (default: "
                                                   "a tenth of the test split, at least 1)"),
           max_missed: int = typer.Option(0, "--max-missed", help="gate: fail if a classifier file calls more than this many "
                                          "test cancers benign that the float model caught"),
           min_mask_iou: float = typer.Option(0.9, "--min-mask-iou", help="gate: fail if a segmenter file's mean per-image "
                                              "mask IoU against the float model is below this"),
           edgetpu: bool = typer.Option(False, "--edgetpu", help="compile the int8 files with edgetpu_compiler if installed"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier exports of the run")):
    """Convert a run's model to TFLite and validate every file on the test split.

    With --int8 the float model is fine-tuned quantization-aware (tfmot), distilled from its own
    outputs, and converted to a full-integer model_int8.tflite; the post-training
    model_int8_ptq.tflite is written beside it for comparison. Each classifier file gets its own
    threshold by the rule that chose the run's. Every file is scored next to the float Keras model
    (export_report.md), loaded in each installed interpreter, and each int8 file is checked for the
    Edge TPU (edgetpu_report.md). The clinical gates are on by default; a failed gate exits with
    code 2, keeps the files marked FAILED, and bundle / predict refuse them without --accept-failed-gates."""
    from edgebus.export.config import ExportConfig
    from edgebus.export.exporter import export_run

    opts = dict(formats=formats, calibration_images=calibration_images, io_type=io_type, qat_epochs=qat_epochs,
                qat_lr=qat_lr, qat_batch=qat_batch, qat_distill=qat_distill, max_drop=max_drop, max_recall_drop=max_recall_drop,
                max_flips=max_flips, max_missed=max_missed, min_mask_iou=min_mask_iou, edgetpu=edgetpu, quantizer=quantizer, sensitive_int16=sensitive_int16, overwrite=overwrite)
    cfg = ExportConfig.build(profile, int8=int8, ptq=ptq, **(_given(ctx, **opts) if profile is not None else opts))
    export_run(run, cfg, log=typer.echo)
    typer.echo(f"validation: {run / 'export_report.md'}" + (f"; Edge TPU: {run / 'edgetpu_report.md'}" if "int8" in cfg.formats else ""))


@friendly
def operating_point(target: Path = typer.Argument(..., help="a classifier CV folder ('edgebus cv classify'), or a run "
                                                  "directory before export"),
                    target_sensitivity: float = typer.Option(0.9, help="malignant sensitivity to reach"),
                    from_cv: Optional[Path] = typer.Option(None, "--from-cv", help="give the run the operating point and "
                                                           "calibration chosen on this CV folder's out-of-fold predictions"),
                    source: str = typer.Option("auto", help="CV: choose on int8 (the cart's file; auto when the CV scored "
                                               "it) or float predictions"),
                    out: Optional[Path] = typer.Option(None, "--out", help="CV: where to write operating_point.json/.md and "
                                                       "reliability.png (default: the CV folder)"),
                    overwrite: bool = typer.Option(False, "--overwrite", help="CV: replace an operating point chosen for "
                                                   "another target or source")):
    """Choose the decision threshold for a target malignant sensitivity, and calibrate.

    On a CV folder: on the pooled out-of-fold predictions, with Platt calibration and a cross-fitted
    estimate (95% CI) of the sensitivity and specificity it gives on unseen cases. On a run with
    --from-cv: take that CV's threshold and calibration (export embeds them). On a run alone: on its
    validation part (small; prefer a CV)."""
    from edgebus.evaluation.operating_point import apply_cv_operating_point, cv_operating_point, set_operating_point

    if (target / "folds.jsonl").is_file():
        if from_cv is not None:
            raise EdgebusError("--from-cv gives a run a CV's operating point: pass a run directory, not a CV folder")
        cv_operating_point(target, target_sensitivity, source, out, log=typer.echo, overwrite=overwrite)
    elif from_cv is not None:
        apply_cv_operating_point(target, from_cv, log=typer.echo)
    else:
        set_operating_point(target, target_sensitivity, log=typer.echo)


@friendly
def fuse(classifier_cv: Path = typer.Argument(..., help="a classifier CV folder ('edgebus cv classify')"),
         segment_cv: Path = typer.Argument(..., help="a segment CV folder on the same folds ('edgebus cv segment')"),
         target_sensitivity: float = typer.Option(0.9, help="malignant sensitivity to reach"),
         out: Optional[Path] = typer.Option(None, "--out", help="where to write fusion.json/.md (default: "
                                            "CLASSIFIER_CV/fusion)"),
         overwrite: bool = typer.Option(False, "--overwrite", help="replace a fusion made from other CVs or settings")):
    """Classifier score + the lesion's measured shape, scored out of fold: classifier alone, shape alone, fused.

    The shape (orientation, solidity, compactness, extent of the segmenter's mask in the frame) is
    scale-free, so it does not depend on the scanner's zoom, depth or frame size."""
    from edgebus.evaluation.shape_fusion import fuse_cv

    fuse_cv(classifier_cv, segment_cv, out, target_sensitivity, log=typer.echo, overwrite=overwrite)


@friendly
def presence(segment_cv: Path = typer.Argument(..., help="a segment CV made with --int8, or a multi-task classifier CV "
                                                 "(its files give the lesion mask)"),
             max_miss: float = typer.Option(0.02, "--max-miss", help="the share of lesion frames the cart may call "
                                            "lesion-free (sets the threshold, out of fold)"),
             out: Optional[Path] = typer.Option(None, "--out", help="where to write presence.json/.md (default: "
                                                "SEGMENT_CV/presence)"),
             overwrite: bool = typer.Option(False, "--overwrite", help="replace a presence rule made from other inputs"),
             stress: bool = typer.Option(False, "--stress", help="also score the rule under every acquisition change of "
                                         "'edgebus stress' (each fold's rule, fitted on clean frames)")):
    """When the cart says "no lesion found": a rule on the lesion map, learned and scored out of fold.

    Lesion-free examples come from the data set itself: a band of tissue beside each test frame's lesion,
    and the sheet's normal frames. Bundle the result with 'edgebus bundle --presence'."""
    from edgebus.evaluation.presence import presence_cv

    presence_cv(segment_cv, out, max_miss, log=typer.echo, overwrite=overwrite, stress=stress)


@friendly
def evaluate(run: Path = typer.Argument(..., help="a run directory"),
             data: Path = typer.Option(..., "--data", help="the data set to score on (not trained on)"),
             format: str = typer.Option("busi", "--format", help="busi, breast, or dicom (a folder of ultrasound DICOM "
                                        "files with labels.csv: file,label[,mask][,frame]; the dicom extra)"),
             model_file: Optional[str] = typer.Option(None, help="an exported .tflite of the run instead of the Keras model"),
             segmenter: Optional[Path] = typer.Option(None, help="for a lesion-crop classifier: a segment run or .tflite "
                                                      "that finds the lesions")):
    """External validation: score a trained or exported model on another data set."""
    from edgebus.core.manifest import Run
    from edgebus.evaluation.evaluate import evaluate_external

    res = evaluate_external(run, data, format, model_file, None if segmenter is None else str(segmenter), log=typer.echo)
    typer.echo(f"{Run.load(run).task.headline_text(res['metrics'])} (n={res['metrics']['n']})")


@friendly
def stress(target: Path = typer.Argument(..., help="a run directory, a CV folder (every case out-of-fold), or a .tflite"),
           data: Optional[Path] = typer.Option(None, "--data", help="with a .tflite: the data set to stress it on"),
           format: str = typer.Option("breast", "--format", help="with --data: breast or busi"),
           out: Optional[Path] = typer.Option(None, "--out", help="folder for stress.json/.md/.png (default TARGET/stress)"),
           seed: int = typer.Option(0, help="seed of the changes' random draws"),
           fuse: Optional[Path] = typer.Option(None, "--fuse", help="with a classifier CV: the segment CV 'edgebus fuse' "
                                               "was given, to stress the fused score (classifier + lesion shape) too"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace a stress report made from other models or settings")):
    """Scanner-shift stress benchmark: gain, dynamic range, speckle and noise, blur and resolution, depth,
    flip, JPEG, frame aspect, burned-in marks, each at graded strengths; float and int8 side by side."""
    from edgebus.evaluation.stress import run_stress

    res = run_stress(target, data, format, out, seed, log=typer.echo, fuse=fuse, overwrite=overwrite)
    for k, s in res["summary"].items():
        typer.echo(f"{k}: {s['metric']} {s['clean']:.3f} clean, worst {s['worst']:.3f} ({s['worst_change']}, "
                   f"drop {s['worst_drop']:.3f})")
    typer.echo(f"report: {Path(res['out']) / 'stress.md'}")


@friendly
def cv_merge(members: list[Path] = typer.Argument(..., help="two or more classifier CV folders on the same folds "
                                                 "(same settings, other --seed, the same --fold-seed)"),
             out: Path = typer.Option(..., "--out", help="the new CV folder of the averaged folds")):
    """A seed ensemble scored out of fold: fold k of the result averages the members' fold-k models.

    Then 'edgebus operating-point OUT', 'edgebus stress OUT' and 'edgebus bundle --classifier OUT' read it
    as any CV folder."""
    from edgebus.core.stats import interval_text
    from edgebus.training.cv_merge import merge_cv

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
