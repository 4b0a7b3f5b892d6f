"""Every command-line option of edgebus, declared once: its kind, help, range and choices.

The CLI builds each typer option from its entry here (edgebus.cli.options), the stage dataclasses
(training, export) take their fields from it with `field(name, default)`, a settings file is checked
against it, and `check` gives the one-line error for a bad value. A stage's default lives in its
dataclass (train trains 20 epochs, a CV 40), so the command line's default here is None: not given."""

from __future__ import annotations

import dataclasses
import json
import math

from edgebus.core.errors import EdgebusError, flag

KINDS = ("int", "float", "str", "path", "paths", "flag", "bool", "ints", "floats", "strs", "json")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option. kind: int, float, str, path, paths (repeatable), flag (--x), bool (--x/--no-x), ints /
    floats / strs (comma-separated on the command line, a list in a settings file), json (a table)."""

    name: str
    kind: str
    help: str
    default: object = None  # the command line's; None: the stage or the command decides
    choices: tuple | None = None
    lo: float | None = None  # inclusive bounds of a number (each item of a list)
    hi: float | None = None
    lo_open: bool = False  # lo itself refused: (lo, hi]
    aliases: tuple = ()  # other spellings of the same option (e.g. --recipe for --config)
    legacy: tuple = ()  # values older settings files hold beside the choices (augment = true)

    @property
    def is_list(self) -> bool:
        return self.kind in ("ints", "floats", "strs", "paths")


OPTIONS: dict[str, Option] = {}


def _o(name: str, kind: str, help: str, **kw) -> None:
    assert kind in KINDS and name not in OPTIONS, name
    OPTIONS[name] = Option(name, kind, help, **kw)


RANGE_01 = {"lo": 0.0, "hi": 1.0}

# settings files, data, models --------------------------------------------------------------------
_o("config", "path", "a settings file (TOML or YAML): a recipe in training/, an export profile in export/, or a "
   "run's own config.toml; its top-level keys and its [<command>] table fill the options not given here",
   aliases=("--recipe", "--profile"))
_o("data", "path", "the data set folder: BrEaST layout (sheet .xlsx + images_and_masks/), or as --format says")
_o("format", "str", "the data set's layout: breast, busi or dicom (labels.csv: file,label[,mask][,frame]); "
   "for bundle, which export of a run to take (default int8)")
_o("out", "path", "where to write (the command's description says its default)")
_o("overwrite", "flag", "replace what an earlier command wrote there (otherwise a finished result is kept)")
_o("quiet", "flag", "no progress bar")
_o("model", "str", "a model from 'edgebus models' (default: the task's, mobilenetv2 or unet-efficientnetb2)")
_o("model_kwargs", "json", "the model builder's own arguments, a JSON table, e.g. '{\"alpha\": 0.35}'")
_o("size", "int", "input size in pixels, square (default: the model's, see 'edgebus models')", lo=1)
_o("batch", "int", "batch size (default: the model's, see 'edgebus models')", lo=1)
_o("seed", "int", "random seed: the split and training, or a command's random draws (default 0)", lo=0)
_o("weights", "str", "none (default), imagenet (needs internet) or a local weights file")
_o("threshold", "float", "the decision threshold a run is scored at until an operating point is chosen "
   "(default 0.5)", lo=0.0, hi=1.0)

# training ----------------------------------------------------------------------------------------
_o("epochs", "ints", "training epochs (default: train 20, cv 40, demo 15); a grid takes several, comma-separated "
   "(default the study's 10,20,30,40,50)", lo=1)
_o("lr", "float", "Adam learning rate (default 1e-3)", lo=1e-12)
_o("lrs", "floats", "a grid's comma-separated Adam learning rates (default: the study's 7)", lo=1e-12)
_o("select", "str", "the validation metric that picks a grid's cell (classify: accuracy, auc, malignant_recall, "
   "f1_macro; segment: iou, dice; default accuracy / iou)")
_o("split_fractions", "floats", "train/val/test fractions of a grid's or a run's split (default 0.8,0.1,0.1)",
   lo=0.0, hi=1.0)
_o("keep", "str", "best (default): the weights of the epoch with the best validation accuracy (segment: IoU), as "
   "the study selected; last: the final epoch", choices=("best", "last"))
_o("schedule", "str", "learning-rate schedule: constant (default) or cosine (warm-up over the first tenth of the "
   "epochs, then cosine decay to 1% of --lr)", choices=("constant", "cosine"))
_o("augment", "str", "training augmentation: flip (default), ultrasound (gain, gamma, contrast, noise, blur, depth, "
   "frame aspect, flip: the stress benchmark's changes at training strength), scanner (ultrasound plus another "
   "scanner's frame geometry: aspect and depth) or none", choices=("none", "flip", "ultrasound", "scanner"),
   legacy=(True, False))
_o("normalize", "str", "percentile: stretch each frame's gray levels between its 0.5th and 99.5th percentiles (in "
   "the preprocessing contract, so the cart does the same); default none", choices=("percentile",))
_o("descriptors", "bool", "also train BI-RADS descriptor heads (shape, margin, echogenicity, posterior shadowing, "
   "halo, calcifications) from the sheet; the cart then explains its call in the lexicon's words")
_o("lesion_free", "bool", "segmenters: also train on each training frame's lesion-free band (tissue beside the "
   "lesion) with an empty mask, so the mask learns 'no lesion here'")
_o("crop_margin", "float", "segmentation-guided: classify a square crop around the lesion, this fraction of its "
   "size added on each side (e.g. 0.5)", lo=0.0)
_o("segmenter", "path", "a segmenter, a run directory or .tflite: the cart's (predict, bundle), or the one whose "
   "lesion boxes cut a crop classifier's val/test frames (train, evaluate)")
_o("classifier", "path", "a classifier: a .tflite, a run directory (its int8 export) or, for bundle, a CV folder "
   "(a fold ensemble)")
_o("teacher", "path", "distil: a classifier CV made with --int8 (a merged seed ensemble too) whose files' answers on "
   "the training cases are mixed into the malignancy target; in a CV each fold learns from its own fold's files")
_o("teacher_masks", "path", "distil: a segment CV made with --int8 whose lesion maps are mixed into a multi-task "
   "model's mask target (same folds)")
_o("teacher_weight", "float", "the teachers' share of each training target (default 0.5)", **RANGE_01)
_o("folds", "int", "number of folds (default 5)", lo=2)
_o("fold_seed", "int", "seed of the folds, when it differs from --seed: another training seed on the same folds "
   "(for 'edgebus cv-merge' seed ensembles)", lo=0)
_o("group_by", "str", "case (default: stratified by case) or acquisition (every frame size, i.e. scanner + preset, "
   "in one test fold only: scores each case as a new scanner would see it)", choices=("case", "acquisition"))
_o("val_fraction", "float", "the share of each CV fold's training part held out for validation (default 0.1)",
   lo=0.0, hi=0.5)
_o("n_boot", "int", "bootstrap resamples of a CV's pooled intervals (default 2000)", lo=100)
_o("boxes_from", "path", "a segment CV folder (same folds) whose predicted lesion boxes cut the val/test crops "
   "(classify only)")
_o("shard", "str", "i/n: run only this machine's share of a grid's learning rates, e.g. 1/3")
_o("backend", "str", "local (this process, one unit after another; default) or ray (each unit a Ray task; "
   "pip install 'edgebus\\[cluster]')", choices=("local", "ray"))
_o("address", "str", "with --backend ray: the cluster (auto, or ray://HEAD:10001); default: start a Ray instance "
   "on this machine")
_o("cpus_per_task", "float", "with --backend ray: CPUs each task asks for (default 1)", lo=0.0)
_o("gpus_per_task", "float", "with --backend ray: GPUs each task asks for (default 0)", lo=0.0)
_o("cv", "paths", "a cross-validation folder (repeatable)")

# int8 and export ---------------------------------------------------------------------------------
_o("int8", "bool", "export: also write a full-integer int8 model (quantization-aware by default); cv: also "
   "convert each fold's model to full-int8 TFLite and score it on the fold's test part")
_o("int8_source", "str", "how int8 is made: qat (quantization-aware fine-tuning; export's default) or ptq "
   "(post-training calibration; a CV's default, which scores PTQ beside QAT)", choices=("qat", "ptq"))
_o("ptq", "flag", "export: int8 by post-training calibration only (no QAT fine-tune)")
_o("formats", "strs", "comma-separated: float32 (default), float16, dynamic, int8",
   choices=("float32", "float16", "dynamic", "int8"))
_o("calibration_images", "int", "training images used to calibrate int8 (default 100)", lo=1)
_o("io_type", "str", "int8 model input/output type: uint8 (default) or int8", choices=("uint8", "int8"))
_o("qat_epochs", "int", "QAT fine-tune epochs on the training split (default 3)", lo=0)
_o("qat_lr", "float", "QAT learning rate (default: a tenth of the training lr)", lo=1e-12)
_o("qat_batch", "int", "QAT batch size (default: the training batch)", lo=1)
_o("qat_distill", "float", "QAT's target: 1.0 the float model's own outputs (distillation, the default), 0.0 the "
   "labels alone, between: a mix", **RANGE_01)
_o("quantizer", "str", "tflite (default); litert: also make model_int8_litert.tflite with the AI Edge (LiteRT) "
   "quantizer, compared beside QAT and PTQ", choices=("tflite", "litert"))
_o("sensitive_int16", "int", "with --quantizer litert: keep the N layers whose int8 error is largest at 16-bit "
   "activations (default 0)", lo=0)
_o("max_drop", "float", "gate: fail if a file loses more than this vs the float Keras model: accuracy points for a "
   "classifier (1.0), IoU for a segmenter (0.01)", lo=0.0)
_o("max_recall_drop", "float", "gate: fail if malignant recall drops more than this many points", lo=0.0)
_o("max_flips", "int", "gate: fail if a classifier file decides more than this many test cases differently from "
   "the float Keras model (default: a tenth of the test split, at least 1)", lo=0)
_o("max_missed", "int", "gate: fail if a classifier file calls more than this many test cancers benign that the "
   "float model caught (default 0)", lo=0)
_o("min_mask_iou", "float", "gate: fail if a segmenter file's mean per-image mask IoU against the float model is "
   "below this (default 0.9)", **RANGE_01)
_o("edgetpu", "bool", "Coral Edge TPU: export compiles the int8 files with edgetpu_compiler if installed; bench "
   "also times *_edgetpu.tflite files with the Coral delegate")

# judging a model ---------------------------------------------------------------------------------
_o("target_sensitivity", "float", "the malignant sensitivity the threshold is chosen for (default 0.9)",
   lo=0.0, hi=1.0, lo_open=True)
_o("from_cv", "path", "give the run the operating point and calibration chosen on this CV folder's out-of-fold "
   "predictions")
_o("source", "str", "CV: choose on int8 (the cart's file; auto, the default, when the CV scored it) or float "
   "predictions", choices=("auto", "int8", "float"))
_o("max_miss", "float", "the share of lesion frames the cart may call lesion-free (sets the threshold, out of "
   "fold; default 0.02)", **RANGE_01)
_o("stress", "flag", "also score the rule under every acquisition change of 'edgebus stress' (each fold's rule, "
   "fitted on clean frames)")
_o("fuse", "path", "with a classifier CV: the segment CV 'edgebus fuse' was given, to stress the fused score "
   "(classifier + lesion shape) too")
_o("model_file", "path", "an exported .tflite of the run instead of the Keras model")

# the cart ----------------------------------------------------------------------------------------
_o("bundle", "path", "a cart folder holding the models (see 'edgebus bundle')")
_o("fusion", "path", "a fusion.json or its folder ('edgebus fuse CLS_CV SEG_CV'): the classifier's score and the "
   "segmenter's lesion shape in one model, at its out-of-fold operating point")
_o("presence", "path", "a presence.json or its folder ('edgebus presence SEG_CV'): the cart says 'no lesion found' "
   "before any malignancy label where the lesion map shows none")
_o("accept_failed_gates", "flag", "use a model file that failed its export gates anyway (recorded in bundle.json, "
   "the model card and every result row)")
_o("pixel_size", "float", "pixel size in MILLIMETRES per pixel, for lesion areas in mm^2 (BrEaST's sheet lists cm "
   "per pixel: multiply by 10)")
_o("threads", "ints", "interpreter threads per model (default 1); bench takes several, comma-separated, e.g. 1,2",
   lo=1)
_o("xnnpack", "bool", "use the XNNPACK delegate (LiteRT's default)", default=True)
_o("overlays", "bool", "write overlay PNGs (contour, box, label)", default=True)
_o("masks", "bool", "write frame-sized lesion masks (PNG, 0/255)", default=True)
_o("dicom_seg", "flag", "also write each single-frame DICOM's lesion mask as a DICOM Segmentation referencing it "
   "(seg/NAME.seg.dcm; the dicom extra)")
_o("dicom_sr", "flag", "also write each DICOM frame's findings as a DICOM Structured Report (TID 1500: presence, "
   "probability, label, BI-RADS findings, area, the models' sha256; sr/NAME.sr.dcm; the dicom extra)")

# benchmarks and tools ----------------------------------------------------------------------------
_o("warmup", "int", "untimed invokes before timing", default=10, lo=0)
_o("runs", "int", "timed invokes", default=50, lo=1)
_o("keras", "bool", "add a Keras predict row where TensorFlow is installed", default=True)
_o("eval_pack", "path", "with .tflite files: an eval_pack.npz to score them on")
_o("pack", "path", "instead of timing, write a device pack of the run to this folder")
_o("dry_run", "flag", "say what would run, run nothing")
_o("cases", "int", "number of synthetic cases (default 120)", lo=1)


def settings_of(cls) -> dict[str, dataclasses.Field]:
    """A stage dataclass's settings: its fields made with `field` (name -> field)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("option")}


def field(name: str, default=None, *, factory=None):
    """A stage dataclass field that is the option `name` (declared above), with the stage's default."""
    if name not in OPTIONS:
        raise KeyError(f"{name}: not declared in edgebus.config.options")
    meta = {"option": name}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _number_problem(o: Option, v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (o.kind == "int" or o.kind == "ints") \
            and not float(v).is_integer() or not math.isfinite(v):
        return "a whole number" if o.kind in ("int", "ints") else "a number"
    if o.lo is not None and (v < o.lo or o.lo_open and v == o.lo) or o.hi is not None and v > o.hi:
        if o.lo_open:
            return f"a number in ({o.lo:g}, {o.hi:g}]"
        if o.hi is None:
            return f"{'a whole number' if o.kind in ('int', 'ints') else 'a number'} >= {o.lo:g}"
        return f"a number from {o.lo:g} to {o.hi:g}"
    return None


def check(name: str, value, label: str | None = None) -> None:
    """The one-line error for a value the declaration of `name` refuses (None is 'not given'); the
    message starts with `label` (default: the option, --name)."""
    o = OPTIONS[name]
    if value is None:
        return
    items = value if o.is_list and isinstance(value, (list, tuple)) else [value]
    for v in items:
        problem = None
        if o.kind in ("int", "float", "ints", "floats"):
            problem = _number_problem(o, v)
        elif o.kind in ("flag", "bool") and not isinstance(v, bool):
            problem = "true or false"
        elif o.kind == "json" and not isinstance(v, dict):
            problem = "a table, e.g. {\"alpha\": 0.35}"
        elif o.choices and v not in o.choices and not any(v is x for x in o.legacy):
            problem = f"one of {', '.join(map(str, o.choices))}"
        if problem:
            shown = json.dumps(value) if isinstance(value, (list, dict)) else repr(value)
            raise EdgebusError(f"{label or flag(name)} {shown}: give {problem}")


def check_settings(cfg) -> None:
    """Every setting of a stage dataclass checked against its declaration."""
    for name in settings_of(type(cfg)):
        check(name, getattr(cfg, name))
