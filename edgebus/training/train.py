"""Train a classifier or a segmenter on a BrEaST-layout data set and write a run directory."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, make_dir, one_writer, write_json
from edgebus.core.manifest import MANIFEST, ModelInfo, Run, SplitInfo
from edgebus.core.splits import stratified_split
from edgebus.data.arrays import data_info, load_split_data, read_lesions
from edgebus.data.breast import fingerprint
from edgebus.data.preprocess import preprocess_contract
from edgebus.config.files import write_run_config
from edgebus.config.stages import FitConfig, TrainConfig
from edgebus.training.config import resolve, use_descriptors

__all__ = ["TrainConfig", "train"]


def model_info(cfg: FitConfig) -> ModelInfo:
    """The manifest's `model` entry: what rebuilds the model from the registry."""
    return ModelInfo(name=cfg.model, task=cfg.task, input_size=[cfg.size, cfg.size], weights=cfg.weights,
                     kwargs=cfg.model_kwargs)


def write_run_header(run: Run, cfg: TrainConfig, ds, n_lesions: int, split: dict, contract: dict, fp: str) -> None:
    """config.toml (the settings, which make the run again), split.json and the manifest's
    data/split/model/preprocess entries of a run."""
    write_run_config(run, cfg, "train")
    write_json(run.file("split.json"), {"seed": cfg.seed, "fractions": list(cfg.split_fractions), **split})
    run.add_artifact("split.json", "split")
    m = run.manifest
    m.data = data_info(ds, fp, n_lesions)
    m.split = SplitInfo(file="split.json", seed=cfg.seed, counts={k: len(v) for k, v in split.items()})
    m.model = model_info(cfg)
    m.preprocess = contract
    m.threshold = cfg.threshold
    run.save()


def write_model(run: Run, model, history_csv: str | None) -> None:
    """model.keras and history.csv, atomically, recorded with their sha256."""
    from edgebus.engine.models import save_model

    save_model(model, run.file("model.keras"))
    run.add_artifact("model.keras", "keras-model")
    if history_csv is not None:
        atomic_write(run.file("history.csv"), history_csv)
        run.add_artifact("history.csv", "history")


def write_metrics(run: Run, model, data: dict, batch: int) -> dict:
    """The float Keras model's val/test metrics at the run's threshold (and, with descriptor heads,
    each descriptor's accuracy and Cohen's kappa): metrics.json and the manifest."""
    from edgebus.core.descriptors import DESCRIPTORS
    from edgebus.core.metrics import descriptor_metrics
    from edgebus.engine.fit import predict_outputs
    from edgebus.models.registry import DESCRIPTORS_OUTPUT

    metrics, desc = {}, {}
    for k in ("val", "test"):
        out = predict_outputs(model, data[k][0], batch)
        metrics[k] = run.task.metrics(data[k][1], out.get("malignant_prob", next(iter(out.values()))), run.manifest.threshold)
        if DESCRIPTORS_OUTPUT in out:
            desc[k] = descriptor_metrics(data[k][3], out[DESCRIPTORS_OUTPUT], [d.name for d in DESCRIPTORS])
    write_json(run.file("metrics.json"), {**metrics, **({"descriptors": desc} if desc else {})})
    run.add_artifact("metrics.json", "metrics")
    run.manifest.metrics["keras"] = metrics
    if desc:
        run.manifest.metrics["descriptors"] = desc
    return metrics


def _unfinished(out) -> bool:
    """A run folder an earlier train left before its end (a full disk, a kill): no train stage and no
    grid or CV in it. (A train still writing it holds the folder: one_writer turns this one away.)"""
    if not (Path(out) / MANIFEST).is_file():
        return False
    m = Run.load(out).manifest
    return not (m.stages or m.grid is not None or m.cv is not None)


def _check_settings(cfg: TrainConfig, task: str) -> None:
    """Refuse settings that are missing or do not go together, before any data is read."""
    if not cfg.out:
        raise EdgebusError(f"train: no run directory given; pass {flag('out')} (TrainConfig.out)")
    if cfg.segmenter is not None and cfg.crop_margin is None:
        raise EdgebusError(f"{flag('segmenter')} cuts lesion crops: give {flag('crop_margin')} too (e.g. 0.5)")


def _crop_boxes(cfg: TrainConfig, by_id: dict, split: dict, fp: str) -> tuple:
    """A crop classifier's val/test boxes and where they come from: a segmenter run's predictions, or
    (without one) the true masks, an oracle said as such; (None, None) for a whole-frame model."""
    if cfg.segmenter is not None:
        from edgebus.training.crops import segmenter_run_boxes

        return segmenter_run_boxes(cfg.segmenter, by_id, split, fp)
    if cfg.crop_margin is not None:
        return None, {"oracle": "val/test crops cut around the TRUE masks: an upper bound, not what a cart sees"}
    return None, None


def _load_teachers(cfg: TrainConfig, fp: str):
    """Distillation's teachers, every fold's averaged; None without a teacher."""
    if cfg.teacher is None and cfg.teacher_masks is None:
        return None
    from edgebus.training.teacher import load_teachers

    return load_teachers(cfg.teacher, cfg.teacher_masks, fp)


def _start_again(cfg: TrainConfig) -> bool:
    """Whether an unfinished earlier train's folder is started again; a finished run there is refused
    (unless overwrite) before anything is written."""
    again = _unfinished(cfg.out)
    if (Path(cfg.out) / MANIFEST).is_file() and not (cfg.overwrite or again):
        raise EdgebusError(f"{cfg.out}: a run already exists there; pick another {flag('out')} or pass "
                           f"{flag('overwrite')} to replace it")
    return again


def _write_boxes(run: Run, boxes: dict | None, box_source: dict) -> None:
    """boxes.json: the crop classifier's val/test boxes and their source, in the manifest too."""
    write_json(run.file("boxes.json"), {"source": box_source, "boxes": {str(k): v for k, v in (boxes or {}).items()}})
    run.add_artifact("boxes.json", "lesion-boxes")
    run.manifest.crop = {"boxes": "boxes.json", "train": "true masks", "val_test": box_source}
    run.save()


def _train_data(cfg: TrainConfig, task: str, model, by_id: dict, split: dict, contract: dict, boxes,
                teachers) -> tuple[dict, dict]:
    """The split's arrays (with the model's extra heads' targets), the training part with lesion-free
    bands and teachers' soft targets; and what the train stage records of those."""
    from edgebus.models.registry import has_aux_mask, has_descriptors

    data = load_split_data(by_id, split, contract, task, boxes, masks=has_aux_mask(model),
                           descriptors=has_descriptors(model))
    distil = {}
    if cfg.lesion_free:  # the training frames' lesion-free bands, with empty masks (edgebus.data.presence)
        from edgebus.data.presence import with_bands

        n = len(data["train"][0])
        data["train"] = with_bands(data["train"], [by_id[i] for i in split["train"]], contract)
        distil = {"lesion_free_bands": len(data["train"][0]) - n}
    if teachers is not None:
        from edgebus.training.teacher import soften

        data["train"] = soften(data["train"], [by_id[i] for i in split["train"]], teachers, None, cfg.teacher_weight)
        distil["teacher"] = {**teachers["source"], "weight": cfg.teacher_weight}
    return data, distil


def train(cfg: TrainConfig, progress: bool = True, log=print) -> Run:
    """Read the data, split it, train, evaluate on val and test, and write the run directory."""
    task = resolve(cfg, "train")
    _check_settings(cfg, task)
    contract = preprocess_contract(cfg.size, 3, cfg.crop_margin, cfg.normalize)
    ds, cases = read_lesions(cfg.data)
    use_descriptors(cfg, ds, log)
    by_id = {c.case_id: c for c in cases}
    split = stratified_split([c.case_id for c in cases], [c.label for c in cases], cfg.split_fractions, cfg.seed)
    fp = fingerprint(ds)
    boxes, box_source = _crop_boxes(cfg, by_id, split, fp)

    # Everything that can fail on bad input (model name, weights path) fails before the run exists.
    from edgebus.compat import set_seed
    from edgebus.engine.augment import augment_name
    from edgebus.engine.fit import build_compiled, fit_keep, history_csv
    from edgebus.engine.models import framework

    teachers = _load_teachers(cfg, fp)
    set_seed(cfg.seed)
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
    again = _start_again(cfg)
    make_dir(cfg.out, flag("out"))
    with one_writer(cfg.out):  # two trains into one folder would mix their files
        if again:
            log(f"{cfg.out}: an earlier train there did not finish; starting it again")
        run = Run.create(cfg.out, task, overwrite=cfg.overwrite or again)
        write_run_header(run, cfg, ds, len(cases), split, contract, fp)
        if cfg.crop_margin is not None:
            _write_boxes(run, boxes, box_source)
        data, distil = _train_data(cfg, task, model, by_id, split, contract, boxes, teachers)
        model, hist, kept, wall = fit_keep(model, task, cfg, data, progress)
        write_model(run, model, history_csv(hist.history))
        write_metrics(run, model, data, cfg.batch)
        run.stage("train", wall_s=round(wall, 1), epochs=cfg.epochs, kept_epoch=kept, keep=cfg.keep, lr=cfg.lr,
                  schedule=cfg.schedule, batch=cfg.batch, augment=augment_name(cfg.augment), **distil, **framework())
        run.save()
        return run
