"""The stages' settings as typed objects: train, grid, CV and export. Each field is an option declared
in edgebus.config.options (`field(name, default)`), with the stage's default; the CLI's options, a
settings file's keys and a run's recorded config.toml are these fields. Filling the registry's
defaults (size, batch) is training's (edgebus.training.config.resolve): this module imports no model."""

from __future__ import annotations

import dataclasses

from edgebus.config.options import OPTIONS, check_settings, field
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.metrics import DEFAULT_THRESHOLD

STUDY_LRS = [1e-6, 1e-5, 1e-4, 1e-3, 5e-3, 1e-2, 5e-2]  # Dosch & Shaw's grid
STUDY_EPOCHS = [10, 20, 30, 40, 50]
QAT_DISTILL = 1.0  # QAT's target: the float parent's own outputs (edgebus.export.distill)
FORMATS = OPTIONS["formats"].choices  # declared once, with the option


@dataclasses.dataclass(kw_only=True)
class FitConfig:
    """What every training stage (train, grid, cv) shares: the data, the model and how it is fed."""

    data: str = field("data")
    model: str = field("model")
    out: str | None = field("out")
    task: str | None = None  # the command's (classify / segment), checked against the model's
    size: int | None = field("size")  # default: the model's (registry)
    batch: int | None = field("batch")  # default: the model's (registry)
    seed: int = field("seed", 0)
    weights: str = field("weights", "none")  # none, imagenet (downloads) or a local weights file
    model_kwargs: dict = field("model_kwargs", factory=dict)
    augment: bool | str = field("augment", True)  # True / "flip", "ultrasound", "scanner", False / "none"
    normalize: str | None = field("normalize")  # "percentile": intensity normalisation in the contract
    threshold: float = field("threshold", DEFAULT_THRESHOLD)

    def __post_init__(self):
        if not self.data:
            raise EdgebusError(f"pass {flag('data')} (a BrEaST-layout folder)")


@dataclasses.dataclass(kw_only=True)
class TrainConfig(FitConfig):
    descriptors: bool = field("descriptors", False)  # BI-RADS descriptor heads, where the sheet has them
    lesion_free: bool = field("lesion_free", False)  # a segmenter also learns empty masks on lesion-free bands
    epochs: int = field("epochs", 20)
    lr: float = field("lr", 1e-3)
    split_fractions: tuple = field("split_fractions", (0.8, 0.1, 0.1))
    keep: str = field("keep", "best")  # "best": the epoch with the best validation accuracy (IoU); "last"
    schedule: str = field("schedule", "constant")  # or "cosine" (engine.fit.lr_at)
    overwrite: bool = field("overwrite", False)
    crop_margin: float | None = field("crop_margin")  # lesion-crop classifier: a square around the lesion first
    segmenter: str | None = field("segmenter")  # segment run (same split) whose boxes cut the val/test crops
    teacher: str | None = field("teacher")  # distil from a classifier CV's int8 files (training.teacher)
    teacher_masks: str | None = field("teacher_masks")  # and a segment CV's maps, for a multi-task mask target
    teacher_weight: float = field("teacher_weight", 0.5)  # the teachers' share of each training target


@dataclasses.dataclass(kw_only=True)
class GridConfig(FitConfig):
    lrs: list = field("lrs", factory=lambda: list(STUDY_LRS))
    epochs: list = field("epochs", factory=lambda: list(STUDY_EPOCHS))
    split_fractions: tuple = field("split_fractions", (0.8, 0.1, 0.1))
    select: str | None = field("select")  # default: accuracy (classify), iou (segment)
    recipe: dict | None = None  # {"name", "path", "sha256", "reduced", "description"}: its settings file


@dataclasses.dataclass(kw_only=True)
class CVConfig(FitConfig):
    descriptors: bool = field("descriptors", False)
    lesion_free: bool = field("lesion_free", False)
    folds: int = field("folds", 5)
    epochs: int = field("epochs", 40)
    lr: float = field("lr", 1e-3)
    val_fraction: float = field("val_fraction", 0.1)
    keep: str = field("keep", "best")  # as train(): the best epoch on the fold's own val part
    schedule: str = field("schedule", "constant")
    n_boot: int = field("n_boot", 2000)
    recipe: dict | None = None
    int8: bool = field("int8", False)  # also convert each fold's model to full-int8 TFLite and score it
    int8_source: str = field("int8_source", "ptq")  # or "qat", as `edgebus export --int8`
    qat_epochs: int = field("qat_epochs", 3)
    qat_distill: float = field("qat_distill", QAT_DISTILL)
    crop_margin: float | None = field("crop_margin")
    boxes_from: str | None = field("boxes_from")  # a segment CV (same folds) whose predicted boxes cut val/test
    fold_seed: int | None = field("fold_seed")  # seed of the folds when it differs from the training seed
    group_by: str = field("group_by", "case")  # or "acquisition": a new scanner's stand-in
    teacher: str | None = field("teacher")
    teacher_masks: str | None = field("teacher_masks")
    teacher_weight: float = field("teacher_weight", 0.5)


@dataclasses.dataclass(kw_only=True)
class ExportConfig:
    formats: list = field("formats", factory=lambda: ["float32"])
    int8_source: str = field("int8_source", "qat")  # QAT (the deliverable) + the PTQ file beside it
    calibration_images: int = field("calibration_images", 100)
    io_type: str = field("io_type", "uint8")
    qat_epochs: int = field("qat_epochs", 3)
    qat_lr: float | None = field("qat_lr")  # default: a tenth of the training lr
    qat_batch: int | None = field("qat_batch")  # default: the training batch
    qat_distill: float = field("qat_distill", QAT_DISTILL)
    max_drop: float | None = field("max_drop")
    max_recall_drop: float | None = field("max_recall_drop")
    # the clinical gates, on by default: a file that fails them is kept, marked FAILED, and refused by
    # bundle / predict without --accept-failed-gates
    max_flips: int | None = field("max_flips")  # None: a tenth of the test split, >= 1
    max_missed: int = field("max_missed", 0)
    min_mask_iou: float = field("min_mask_iou", 0.9)
    edgetpu: bool = field("edgetpu", False)
    quantizer: str = field("quantizer", "tflite")
    sensitive_int16: int = field("sensitive_int16", 0)
    overwrite: bool = field("overwrite", False)

    @classmethod
    def build(cls, profile=None, int8: bool = False, ptq: bool = False, **given) -> "ExportConfig":
        """Defaults, then an export profile's values (export/<target>.toml), then `given` (None: not
        given); `int8` adds the int8 format, `ptq` makes it by post-training calibration only."""
        kw = {}
        if profile is not None:
            from edgebus.config.files import read_config

            kw.update(read_config(profile, "export")[0])
        kw.update({k: v for k, v in given.items() if v is not None})
        kw = {k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(cls)}}
        if isinstance(kw.get("formats"), str):
            kw["formats"] = [f.strip() for f in kw["formats"].split(",") if f.strip()]
        cfg = cls(**kw)
        cfg.formats = list(cfg.formats)
        if int8 and "int8" not in cfg.formats:
            cfg.formats.append("int8")
        if ptq:
            cfg.int8_source = "ptq"
        cfg.check(ptq_given=ptq)
        return cfg

    def check(self, ptq_given: bool = False) -> None:
        """Each value by its declaration, then the settings that only make sense together."""
        check_settings(self)
        if not self.formats:
            raise EdgebusError(f"{flag('formats')}: give at least one of {', '.join(FORMATS)}")
        if self.quantizer == "litert" and "int8" not in self.formats:
            raise EdgebusError(f"{flag('quantizer')} litert makes an int8 file: add {flag('int8')}")
        if self.sensitive_int16 and self.quantizer != "litert":
            raise EdgebusError(f"{flag('sensitive_int16')} applies to {flag('quantizer')} litert")
        if ptq_given and "int8" not in self.formats:
            raise EdgebusError(f"{flag('ptq')} chooses how int8 is made: add {flag('int8')} (or int8 in "
                               f"{flag('formats')})")
        if self.edgetpu and "int8" not in self.formats:
            raise EdgebusError(f"{flag('edgetpu')} compiles the int8 model: add {flag('int8')}")

    def limits(self) -> dict:
        """The gates' limits as export validation reads them (validate.gate_check)."""
        return {k: getattr(self, k) for k in ("max_drop", "max_recall_drop", "max_flips", "max_missed", "min_mask_iou")}

    def plan(self) -> list[tuple[str, str, str]]:
        """(manifest key, format, source) of every file the export writes, in table order.

        int8 from QAT writes two files: the PTQ comparison ("int8_ptq", model_int8_ptq.tflite) and the
        QAT deliverable ("int8", model_int8.tflite); with --ptq, "int8" is the PTQ file."""
        plan = []
        for f in self.formats:
            if f == "int8" and self.int8_source == "qat":
                plan += [("int8_ptq", "int8", "ptq"), ("int8", "int8", "qat")]
            else:
                plan.append((f, f, "ptq" if f == "int8" else "float"))
            if f == "int8" and self.quantizer == "litert":
                plan.append(("int8_litert", "int8", "litert"))
        seen, out = set(), []
        for p in plan:
            if p[0] not in seen:
                seen.add(p[0])
                out.append(p)
        return out
