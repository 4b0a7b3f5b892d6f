"""Training's side of the stage settings (declared in edgebus.config.stages): `resolve` fills what was
not given from the model's registry defaults (task, model, size, batch) and refuses bad values in one
line, before any folder is made."""

from __future__ import annotations

from edgebus.config.options import check_settings
from edgebus.config.stages import FitConfig
from edgebus.core.errors import EdgebusError, flag


def resolve(cfg: FitConfig, command: str) -> str:
    """Fill the registry's defaults, check every value; returns the task."""
    from edgebus.core.tasks import get_task
    from edgebus.models.registry import check_task, model_defaults

    if cfg.model is None:
        if cfg.task is None:
            raise EdgebusError(f"{command}: pass {flag('model')} (see 'edgebus models')")
        cfg.model = get_task(cfg.task).default_model
    task = check_task(cfg.model, cfg.task, command)
    d = model_defaults(cfg.model)
    cfg.task = task
    cfg.size = d["size"] if cfg.size is None else cfg.size
    cfg.batch = d["batch"] if cfg.batch is None else cfg.batch
    if command != "grid" and isinstance(cfg.epochs, (list, tuple)):  # a grid takes several, the others one
        if len(cfg.epochs) != 1:
            raise EdgebusError(f"{flag('epochs')} {','.join(map(str, cfg.epochs))}: {command} trains for one number "
                               "of epochs (a grid takes several)")
        cfg.epochs = cfg.epochs[0]
    check_settings(cfg)
    crop = [k for k in ("crop_margin", "segmenter", "boxes_from", "teacher", "teacher_masks")
            if getattr(cfg, k, None) is not None]
    if task != "classify" and crop:
        raise EdgebusError(f"{', '.join(flag(k) for k in crop)}: for 'edgebus {command} classify'")
    if getattr(cfg, "descriptors", False) and task != "classify":
        raise EdgebusError(f"{flag('descriptors')} adds BI-RADS heads to a classifier; a segmenter has none")
    if getattr(cfg, "lesion_free", False) and task != "segment":
        raise EdgebusError(f"{flag('lesion_free')} teaches a segmenter empty masks on lesion-free tissue; it is for "
                           "'edgebus train segment' and 'edgebus cv segment'")
    return task


def use_descriptors(cfg: FitConfig, ds, log=print) -> bool:
    """Give the model its descriptor heads when asked and the sheet has the columns; else say so."""
    if not cfg.descriptors:
        return False
    from edgebus.core.descriptors import COLUMNS, DESCRIPTORS

    if not ds.has_descriptors:
        log(f"{ds.sheet}: no BI-RADS descriptor columns ({', '.join(COLUMNS)}); training malignancy only")
        return False
    cfg.model_kwargs = {**cfg.model_kwargs, "descriptors": len(DESCRIPTORS)}
    return True


EXIT_ENV = "EDGEBUS_EXIT_AFTER_UNITS"  # tests: os._exit after this many grid cells / CV folds are written


def maybe_exit(written: int) -> None:
    """Tests kill a grid or CV on purpose: with EDGEBUS_EXIT_AFTER_UNITS=n the process ends with
    os._exit(75) right after its n-th result line is written."""
    import os

    n = os.environ.get(EXIT_ENV)
    if n and written >= int(n):
        os._exit(75)
