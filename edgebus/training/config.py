"""The settings of the training stages. `FitConfig` holds what train, grid and CV share; each
stage's config adds its own. `resolve()` fills what was not given from the model's registry
defaults (task, size, batch) and refuses bad values in one line, before any folder is made."""

from __future__ import annotations

import dataclasses
import math

from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import DEFAULT_THRESHOLD


@dataclasses.dataclass(kw_only=True)
class FitConfig:
    """What every training stage (train, grid, cv) shares: the data, the model and how it is fed."""

    data: str
    model: str
    out: str | None = None
    task: str | None = None  # checked against the model's task
    size: int | None = None  # default: the model's (registry)
    batch: int | None = None  # default: the model's (registry)
    seed: int = 0
    weights: str = "none"  # none, imagenet (downloads) or a local weights file
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    augment: bool | str = True  # True / "flip", "ultrasound" (edgebus.engine.augment), False / "none"
    normalize: str | None = None  # "percentile": intensity normalisation in the preprocessing contract
    descriptors: bool = False  # also train BI-RADS descriptor heads (edgebus.core.descriptors), where the sheet has them
    lesion_free: bool = False  # a segmenter also learns an empty mask on each training frame's lesion-free band
    threshold: float = DEFAULT_THRESHOLD

    def resolve(self, command: str) -> str:
        """Fill registry defaults, check every value; returns the task."""
        from edgebus.models.registry import check_task, model_defaults

        task = check_task(self.model, self.task, command)
        d = model_defaults(self.model)
        self.task = task
        self.size = d["size"] if self.size is None else self.size
        self.batch = d["batch"] if self.batch is None else self.batch
        _whole("--size", self.size, 1)
        _whole("--batch", self.batch, 1)
        from edgebus.engine.augment import augment_name

        augment_name(self.augment)
        if not 0 < self.threshold < 1:
            raise EdgebusError(f"threshold {self.threshold}: give a probability between 0 and 1")
        for name in ("epochs", "lr"):
            if hasattr(self, name) and isinstance(getattr(self, name), (int, float)):
                (_positive if name == "lr" else _whole)(f"--{name}", getattr(self, name), 1)
        if hasattr(self, "schedule"):
            from edgebus.engine.fit import lr_at

            lr_at(0, 1.0, 1, self.schedule)
        if self.descriptors and task != "classify":
            raise EdgebusError("--descriptors adds BI-RADS heads to a classifier; a segmenter has none")
        if self.lesion_free and task != "segment":
            raise EdgebusError("--lesion-free teaches a segmenter empty masks on lesion-free tissue; it is for "
                               "'edgebus train segment' and 'edgebus cv segment'")
        return task

    def use_descriptors(self, ds, log=print) -> bool:
        """Give the model its descriptor heads when asked and the sheet has the columns; else say so."""
        if not self.descriptors:
            return False
        from edgebus.core.descriptors import COLUMNS, DESCRIPTORS

        if not ds.has_descriptors:
            log(f"{ds.sheet}: no BI-RADS descriptor columns ({', '.join(COLUMNS)}); training malignancy only")
            return False
        self.model_kwargs = {**self.model_kwargs, "descriptors": len(DESCRIPTORS)}
        return True


def _whole(opt: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise EdgebusError(f"{opt} {v}: give a whole number >= {lo}")


def _positive(opt: str, v, _=None) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise EdgebusError(f"{opt} {v}: give a positive number")


@dataclasses.dataclass(kw_only=True)
class TrainConfig(FitConfig):
    epochs: int = 20
    lr: float = 1e-3
    split_fractions: tuple = (0.8, 0.1, 0.1)
    keep: str = "best"  # "best": the epoch with the best validation accuracy (IoU); "last": final epoch
    schedule: str = "constant"  # or "cosine": warm-up then cosine decay of the learning rate (engine.fit.lr_at)
    overwrite: bool = False
    crop_margin: float | None = None  # lesion-crop classifier: cut a square around the lesion first
    segmenter: str | None = None  # segment run (same split) whose predicted boxes cut the val/test crops
    teacher: str | None = None  # distil from a classifier CV's int8 files (every fold's, averaged; training.teacher)
    teacher_masks: str | None = None  # and a segment CV's lesion maps, for a multi-task model's mask target
    teacher_weight: float = 0.5  # the teachers' share of each training target


EXIT_ENV = "EDGEBUS_EXIT_AFTER_UNITS"  # tests: os._exit after this many grid cells / CV folds are written


def maybe_exit(written: int) -> None:
    """Tests kill a grid or CV on purpose: with EDGEBUS_EXIT_AFTER_UNITS=n the process ends with
    os._exit(75) right after its n-th result line is written."""
    import os

    n = os.environ.get(EXIT_ENV)
    if n and written >= int(n):
        os._exit(75)
