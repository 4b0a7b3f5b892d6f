"""What an export does: `ExportConfig`, filled from an export profile (export/<target>.toml: option
values for one deployment target) and the options given on the command line, which win."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.export.distill import DEFAULT_WEIGHT

FORMATS = ("float32", "float16", "dynamic", "int8")
INT8_SOURCES = ("qat", "ptq")
QUANTIZERS = ("tflite", "litert")  # the TF converter's (PTQ / QAT), and the AI Edge quantizer's beside it

PROFILE_KEYS = {"target", "formats", "int8_source", "io_type", "calibration_images", "qat_epochs", "qat_lr",
                "qat_distill", "max_drop", "max_recall_drop", "max_flips", "max_missed", "min_mask_iou", "edgetpu",
                "quantizer", "sensitive_int16"}


def load_profile(path: str | Path) -> dict:
    """An export profile (export/<target>.toml): option values for one deployment target."""
    import tomllib

    path = Path(path)
    try:
        prof = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdgebusError(f"{path}: profile not found; see export/README.md for the shipped ones") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgebusError(f"{path}: not valid TOML ({e}); fix the file") from None
    unknown = sorted(set(prof) - PROFILE_KEYS)
    if unknown:
        raise EdgebusError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PROFILE_KEYS))}")
    bad = [f for f in prof.get("formats", []) if f not in FORMATS]
    if bad:
        raise EdgebusError(f"{path}: unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    return prof


@dataclasses.dataclass(kw_only=True)
class ExportConfig:
    formats: list = dataclasses.field(default_factory=lambda: ["float32"])
    int8_source: str = "qat"  # "qat": quantization-aware fine-tune (the deliverable) + the PTQ file beside it
    calibration_images: int = 100
    io_type: str = "uint8"
    qat_epochs: int = 3
    qat_lr: float | None = None  # default: a tenth of the training lr
    qat_batch: int | None = None  # default: the training batch
    qat_distill: float = DEFAULT_WEIGHT  # QAT's target: 1.0 the float model's outputs only, 0.0 the labels only
    max_drop: float | None = None
    max_recall_drop: float | None = None
    # the clinical gates, on by default (README "Export gates"): a file that fails them is kept, marked FAILED,
    # and refused by bundle / predict without --accept-failed-gates
    max_flips: int | None = None  # labels decided differently from the float model; None: a tenth of the test split, >= 1
    max_missed: int = 0  # malignant test cases the float model caught and the file calls benign
    min_mask_iou: float = 0.9  # a segmenter's mean per-image mask IoU against the float model
    edgetpu: bool = False
    quantizer: str = "tflite"  # "litert": also quantize with the AI Edge quantizer (model_int8_litert.tflite, compared)
    sensitive_int16: int = 0  # with quantizer litert: keep the N tensors that lose most at 16-bit activations
    overwrite: bool = False

    @classmethod
    def build(cls, profile: str | Path | None = None, int8: bool = False, ptq: bool = False, **given) -> "ExportConfig":
        """Defaults, then the profile's values, then `given` (the options set on the command line);
        `int8` adds the int8 format, `ptq` makes it by post-training calibration only."""
        kw = {}
        if profile is not None:
            prof = load_profile(profile)
            kw.update({k: v for k, v in prof.items() if k != "target"})
        kw.update({k: v for k, v in given.items() if v is not None})
        if isinstance(kw.get("formats"), str):
            kw["formats"] = [f.strip() for f in kw["formats"].split(",") if f.strip()]
        cfg = cls(**kw)
        if int8 and "int8" not in cfg.formats:
            cfg.formats.append("int8")
        if ptq:
            cfg.int8_source = "ptq"
        cfg.check(ptq_given=ptq)
        return cfg

    def check(self, ptq_given: bool = False) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise EdgebusError(f"unknown format(s) {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}")
        if self.quantizer not in QUANTIZERS:
            raise EdgebusError(f"--quantizer '{self.quantizer}': choose {' or '.join(QUANTIZERS)}")
        if self.quantizer == "litert" and "int8" not in self.formats:
            raise EdgebusError("--quantizer litert makes an int8 file: add --int8")
        if self.sensitive_int16 and self.quantizer != "litert":
            raise EdgebusError("--sensitive-int16 applies to --quantizer litert")
        if self.sensitive_int16 < 0:
            raise EdgebusError(f"--sensitive-int16 {self.sensitive_int16}: give 0 or more layers")
        if self.int8_source not in INT8_SOURCES:
            raise EdgebusError(f"int8 source '{self.int8_source}': choose qat or ptq")
        if self.io_type not in ("uint8", "int8"):
            raise EdgebusError(f"--io-type '{self.io_type}': choose uint8 or int8")
        if ptq_given and "int8" not in self.formats:
            raise EdgebusError("--ptq chooses how int8 is made: add --int8 (or int8 in --formats)")
        if self.edgetpu and "int8" not in self.formats:
            raise EdgebusError("--edgetpu compiles the int8 model: add --int8")
        if self.qat_epochs < 0 or (self.qat_lr is not None and not self.qat_lr > 0) or \
                (self.qat_batch is not None and self.qat_batch < 1):
            raise EdgebusError("--qat-epochs must be >= 0, --qat-lr > 0 and --qat-batch >= 1")
        if self.max_flips is not None and self.max_flips < 0:
            raise EdgebusError(f"--max-flips {self.max_flips}: give 0 or more labels")
        if self.max_missed is None or self.max_missed < 0:
            raise EdgebusError(f"--max-missed {self.max_missed}: give 0 or more cases")
        if self.min_mask_iou is None or not 0 <= self.min_mask_iou <= 1:
            raise EdgebusError(f"--min-mask-iou {self.min_mask_iou}: give an IoU from 0 to 1, e.g. 0.9")
        if self.max_drop is not None and self.max_drop < 0 or self.max_recall_drop is not None and self.max_recall_drop < 0:
            raise EdgebusError(f"--max-drop {self.max_drop} / --max-recall-drop {self.max_recall_drop}: give 0 or more")
        if not 0 <= self.qat_distill <= 1:
            raise EdgebusError(f"--qat-distill {self.qat_distill}: give a weight from 0 (labels only) to 1 (the float model only)")
        if self.calibration_images < 1 and "int8" in self.formats:
            raise EdgebusError(f"--calibration-images {self.calibration_images}: int8 needs at least 1 calibration image")

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
