"""The honest protocol beside the study's single split: stratified k-fold cross-validation (mean
+- std over folds) and percentile-bootstrap 95% intervals over the pooled out-of-fold predictions.

The study reports one 27-image test split; a proportion measured on 27 images carries a 95%
interval of about +-18 points, so the differences it reports between models are inside the noise.
k folds put every image in exactly one test fold. Identical images (by content hash) share a fold.
Results: `folds.jsonl`, one fsync'ed line per finished fold, so a killed CV resumes where it was; the
fold in progress goes on from its last epoch checkpoint (`checkpoints/fold<i>/`; on Ray where the
task sees the run folder).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import append_jsonl, atomic_write, make_dir, now, one_writer, read_jsonl, repair_jsonl, sha256_file, write_json
from edgebus.core.manifest import Run, open_results_dir
from edgebus.core.splits import check_split, content_groups, content_summary, group_kfold, grouped_kfold, merge_groups
from edgebus.core.tasks import get_task
from edgebus.data.acquisition import acquisition_groups, shortcut_audit
from edgebus.data.arrays import data_info, load_split_data, read_lesions
from edgebus.data.breast import fingerprint
from edgebus.data.content import content_hashes
from edgebus.data.preprocess import preprocess_contract
from edgebus.engine.resume import discard
from edgebus.training.backends import Backend, run_units, take, task_checkpoints
from edgebus.config.files import write_run_config
from edgebus.config.options import settings_of
from edgebus.config.stages import CVConfig
from edgebus.training.config import maybe_exit, resolve, use_descriptors


# what makes two CVs the same CV: every setting but where it reads and writes (the data by its fingerprint,
# boxes_from by its boxes' sha256) and how many bootstrap draws its summary takes
_CV_IDENTITY = ("task", *(n for n in settings_of(CVConfig) if n not in ("data", "out", "boxes_from", "n_boot")))


def _fold_record(task, f, fold, data, probs, metrics, kept_epoch, wall, threshold) -> dict:
    from edgebus.training.crops import predicted_boxes

    rec = {"fold": f, "kept_epoch": kept_epoch, "wall_s": round(wall, 1), "val": metrics["val"],
           "test": metrics["test"], "test_ids": fold["test"], "finished": now(),
           **task.case_record(data["test"][1], probs["test"], metrics["test"])}
    if task.truth_is_mask:  # the lesion boxes a crop classifier's cross-validation cuts its val/test frames with
        rec["val_ids"] = fold["val"]
        rec["boxes"] = {part: predicted_boxes(probs[part], threshold) for part in ("val", "test")}
    return rec


def _mask_record(truth, prob, suffix: str = "") -> dict:
    """A multi-task classifier's masks scored per test image, as a segment CV stores them
    (test_iou / test_dice), under `mask_` names: summaries and `edgebus fuse` read them."""
    from edgebus.core.metrics import DEFAULT_THRESHOLD, segmentation_metrics
    from edgebus.core.stats import dice_from_iou

    iou = segmentation_metrics(truth, prob, DEFAULT_THRESHOLD)["iou_per_image"]
    return {f"test_mask_iou{suffix}": iou, f"test_mask_dice{suffix}": [round(v, 4) for v in dice_from_iou(iou)]}


def _int8_fold(model, task, data, cfg: CVConfig, contract: dict, test_x=None, keep=None, float_test=None) -> dict:
    """The fold's model as full-integer TFLite, made as `edgebus export --int8` makes it
    (edgebus.export.int8: calibrated on the fold's training part; with int8_source "qat" also
    quantization-aware fine-tuned there, and then the QAT file is the result and PTQ the
    comparison), scored on the fold's test part (test_x: other inputs, e.g. cut with the int8
    segmenter's boxes) by the interpreter as the cart runs it."""
    from edgebus.engine.augment import augment_name
    from edgebus.export.int8 import QAT_LR_FRACTION, calibration_set, int8_probs, qat_model
    from edgebus.training.crops import predicted_boxes

    xte, yte = data["test"][:2]
    calib = calibration_set(data["train"][0], 100, cfg.seed)
    models = {"ptq": model}
    if cfg.int8_source == "qat":
        models["qat"] = qat_model(model, task, data["train"], calib, cfg.qat_epochs, QAT_LR_FRACTION * cfg.lr, cfg.batch,
                                  cfg.seed, augment=augment_name(cfg.augment), distill=cfg.qat_distill)[0]
    src = "qat" if "qat" in models else "ptq"
    from edgebus.core.descriptors import metadata as descriptor_metadata

    heads = descriptor_metadata() if cfg.model_kwargs.get("descriptors") else None
    masks = {}
    probs = int8_probs(models, task, calib, contract, cfg.threshold, xte if test_x is None else test_x,
                       keep={src: keep} if keep else None, descriptors=heads, masks=masks)
    rec = {"test_int8": task.metrics(yte, probs[src], cfg.threshold), "int8_source": src}
    if src in masks and len(data["test"]) > 2 and data["test"][2] is not None:  # a multi-task file's lesion masks
        rec.update(_mask_record(data["test"][2], masks[src], "_int8"))
    rec.update(task.case_record(yte, probs[src], rec["test_int8"], "_int8"))
    if src == "qat":
        rec.update(task.case_record(yte, probs["ptq"], task.metrics(yte, probs["ptq"], cfg.threshold), "_int8_ptq"))
    if task.truth_is_mask:
        rec["boxes_int8"] = {"test": predicted_boxes(probs[src], cfg.threshold)}
        if float_test is not None:  # case by case: how far each int8 mask is from its float parent's
            from edgebus.core.metrics import mask_agreement_iou

            rec["test_mask_iou_float_int8"] = [round(float(v), 5) for v in
                                               mask_agreement_iou(float_test, probs[src], cfg.threshold)]
    return rec


def _crop_extras(model, task, cfg, contract, fold, by_id, fold_boxes, rec) -> np.ndarray | None:
    """A crop classifier's fold: the same model on crops around the TRUE masks (what segmentation
    errors cost), the frames where no lesion was found; returns the int8 segmenter's test crops."""
    from edgebus.data.breast import load_arrays
    from edgebus.engine.fit import predict

    test_cases = [by_id[i] for i in fold["test"]]
    rec["crop_fallbacks"] = {k: sum(v is None for v in fold_boxes[k].values()) for k in fold_boxes}
    x_gt, y, _ = load_arrays(test_cases, contract)
    p_gt = predict(model, x_gt, cfg.batch)
    rec["test_oracle"] = task.metrics(y, p_gt, cfg.threshold)
    rec.update(task.case_record(y, p_gt, rec["test_oracle"], "_oracle"))
    if cfg.int8 and "test_int8" in fold_boxes:
        return load_arrays(test_cases, contract, boxes=fold_boxes["test_int8"])[0]
    return None


def fold_unit(cfg: CVConfig, contract: dict, f: int, fold: dict, data: dict, progress: bool = False,
              crop: tuple | None = None, checkpoint: Path | None = None, log=print) -> dict:
    """Train, score (and with cfg.int8 convert) one fold on its arrays; {"fold", "rec", "files":
    {name: bytes}}. Writes its models only into a temp folder of its own, so it runs in the driver
    or in a Ray worker alike. crop: (cases by id, the fold's boxes) for a lesion-crop classifier.
    checkpoint: the folder of its epoch checkpoint, so a killed fold goes on from
    its last finished epoch (engine.resume) and its record says so (`resumed_from`)."""
    import shutil
    import tempfile
    import time

    from edgebus.compat import keras, set_seed
    from edgebus.engine.fit import build_compiled, fit_keep, predict
    from edgebus.engine.models import save_model
    from edgebus.models.registry import AUX_MASK, DESCRIPTORS_OUTPUT, has_aux_mask, has_descriptors

    task = get_task(cfg.task)
    keras.backend.clear_session()
    set_seed(cfg.seed)
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task.name)
    ckpt = None if checkpoint is None else (checkpoint, {"fold": f, **{k: getattr(cfg, k) for k in _CV_IDENTITY}})
    start = []
    model, _, kept, wall = fit_keep(model, task.name, cfg, data, progress, ckpt, log, start.append)
    probs = {k: predict(model, data[k][0], cfg.batch) for k in ("val", "test")}
    metrics = {k: task.metrics(data[k][1], probs[k], cfg.threshold) for k in probs}
    rec = _fold_record(task, f, fold, data, probs, metrics, kept, wall, cfg.threshold)
    if start[0]:
        rec["resumed_from"] = start[0]
    if has_aux_mask(model) and data["test"][2] is not None:  # a multi-task model's own lesion masks, out of fold
        from edgebus.engine.fit import predict_outputs

        rec.update(_mask_record(data["test"][2], predict_outputs(model, data["test"][0], cfg.batch)[AUX_MASK]))
    if has_descriptors(model):  # out-of-fold BI-RADS descriptor outputs, for per-descriptor scores
        from edgebus.engine.fit import predict_outputs

        d = predict_outputs(model, data["test"][0], cfg.batch)[DESCRIPTORS_OUTPUT]
        rec["test_descriptor_prob"] = np.round(d, 5).tolist()
        rec["test_descriptors"] = data["test"][3].astype(int).tolist()
    test_x8 = None if crop is None else _crop_extras(model, task, cfg, contract, fold, crop[0], crop[1], rec)
    tmp = Path(tempfile.mkdtemp(prefix="edgebus-fold-"))
    try:
        save_model(model, tmp / "model.keras")
        if cfg.int8:
            t0 = time.time()
            rec.update(_int8_fold(model, task, data, cfg, contract, test_x8, keep=tmp / "model_int8.tflite",
                                  float_test=probs["test"]))
            rec["int8_wall_s"] = round(time.time() - t0, 1)
        files = {p.name: p.read_bytes() for p in sorted(tmp.iterdir()) if p.suffix in (".keras", ".tflite")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"fold": f, "rec": rec, "files": files}


def _checkpoint(root: Path, f: int) -> Path:
    return root / f"fold{f}"


def ray_fold(f: int, fold: dict, shared: dict) -> dict:
    """A fold as a Ray task: its arrays cut from the data set put once in the object store; it
    checkpoints its epochs where the run folder is visible (backends.task_checkpoints)."""
    pos = {i: n for n, i in enumerate(shared["ids"])}
    data = {k: take(shared["parts"], [pos[i] for i in fold[k]]) for k in ("train", "val", "test")}
    root = task_checkpoints(shared["checkpoints"])
    return fold_unit(shared["cfg"], shared["contract"], f, fold, data, shared["progress"],
                     checkpoint=None if root is None else _checkpoint(root, f))


@dataclasses.dataclass
class _CVInputs:
    """What a CV reads and derives before its folder exists."""
    contract: dict
    ds: object
    cases: list
    by_id: dict
    hashes: dict
    groups: dict
    fold_seed: int
    folds: list
    fp: str
    teachers: dict | None
    identity: dict
    seg_boxes: list | None


def _check_settings(cfg: CVConfig, task) -> None:
    """Refuse settings that do not go together, before any data is read."""
    # each value is checked by its declaration in resolve(); what is left is how they combine
    if cfg.crop_margin is not None and task.truth_is_mask:
        raise EdgebusError(f"{flag('crop_margin')} is for classifiers")
    if cfg.boxes_from is not None and cfg.crop_margin is None:
        raise EdgebusError(f"{flag('boxes_from')} serves a lesion-crop classifier: give {flag('crop_margin')} too")


def _make_folds(cfg: CVConfig, cases: list, hashes: dict, groups) -> tuple[int, list]:
    """The k folds (their seed too), each checked, so that no image's copy sits on both sides of one."""
    fold_seed = cfg.seed if cfg.fold_seed is None else cfg.fold_seed
    if cfg.group_by == "acquisition":  # whole frame-size groups per test fold (identical images stay together too)
        folds = group_kfold(cases, merge_groups(groups, acquisition_groups(cases)), cfg.folds, fold_seed,
                            cfg.val_fraction)
    else:
        folds = grouped_kfold(cases, groups, cfg.folds, fold_seed, cfg.val_fraction)
    for f, fold in enumerate(folds):
        check_split(fold, hashes, f"fold {f + 1} of {cfg.folds}")
    return fold_seed, folds


def _fold_teachers(cfg: CVConfig, fp: str, folds: list, backend: Backend | None):
    """Distillation's teachers, each fold's own (None without a teacher); the local backend only, where
    each fold's targets are softened as it loads."""
    if cfg.teacher is None and cfg.teacher_masks is None:
        return None
    from edgebus.training.teacher import load_teachers

    if (backend or Backend()).name != "local":
        raise EdgebusError(f"{flag('teacher')} runs with the local backend (each fold's targets come from its own "
                           "teachers)")
    return load_teachers(cfg.teacher, cfg.teacher_masks, fp, folds)


def _read_inputs(cfg: CVConfig, task, log, backend: Backend | None) -> _CVInputs:
    """Load the data and folds, the teachers and the segmenter's boxes: a bad input fails here, with
    nothing written yet."""
    contract = preprocess_contract(cfg.size, 3, cfg.crop_margin, cfg.normalize)
    ds, cases = read_lesions(cfg.data)
    use_descriptors(cfg, ds, log)
    by_id = {c.case_id: c for c in cases}
    hashes = content_hashes(cases)
    groups = content_groups(hashes)
    fold_seed, folds = _make_folds(cfg, cases, hashes, groups)
    fp = fingerprint(ds)
    teachers = _fold_teachers(cfg, fp, folds, backend)
    identity = {k: getattr(cfg, k) for k in _CV_IDENTITY}
    identity.update(task=task.name, data_fingerprint=fp)
    seg_boxes = None
    if cfg.boxes_from is not None:
        from edgebus.training.crops import segmenter_cv_boxes

        seg_boxes, identity["boxes_sha256"] = segmenter_cv_boxes(cfg.boxes_from, folds, fp)
    return _CVInputs(contract, ds, cases, by_id, hashes, groups, fold_seed, folds, fp, teachers, identity, seg_boxes)


def _open_folder(out: Path, cfg: CVConfig, task, inp: _CVInputs, log) -> None:
    """Open or resume the results folder; a new one gets its folds, settings and manifest first."""
    from edgebus.training.train import model_info

    defaults = {f.name: f.default for f in dataclasses.fields(CVConfig) if f.default is not dataclasses.MISSING}
    run, fresh = open_results_dir(out, task.name, "cv", inp.identity, "cross-validation", defaults)
    if fresh:
        write_json(run.file("folds.json"), {"seed": inp.fold_seed, "k": cfg.folds, "val_fraction": cfg.val_fraction,
                                            "group_by": cfg.group_by, "folds": inp.folds})
        run.add_artifact("folds.json", "folds")
        write_run_config(run, cfg, "cv")
        m = run.manifest
        m.data, m.model, m.preprocess, m.threshold = (data_info(inp.ds, inp.fp, len(inp.cases)), model_info(cfg),
                                                      inp.contract, cfg.threshold)
        m.cv = {"identity": inp.identity, "results": "folds.jsonl", "recipe": cfg.recipe, "boxes_from": cfg.boxes_from,
                "content_check": content_summary(inp.hashes, inp.groups, {c.case_id: c.label for c in inp.cases}),
                "acquisition_audit": shortcut_audit(inp.cases)}
        run.save()
    dups = run.manifest.cv["content_check"]["duplicate_groups"]
    if dups:
        log(f"note: {len(dups)} group(s) of identical images, kept in one fold each: "
            + "; ".join(str(d["case_ids"]) for d in dups[:5]))


def _done_folds(results: Path, ckpts: Path) -> set:
    """The folds already in folds.jsonl (a torn last line repaired first); their checkpoints have done their job."""
    repair_jsonl(results)
    done = {r["fold"] for r in read_jsonl(results, key="fold")}
    for f in done:  # a checkpoint left by a stop right after its fold's line
        discard(_checkpoint(ckpts, f))
    return done


def _local_unit(cfg: CVConfig, task, inp: _CVInputs, heads: dict, progress: bool, ckpts: Path, log):
    """A fold run in this process: its arrays (crops, lesion-free bands, softened targets) loaded as it starts."""
    by_id, seg_boxes = inp.by_id, inp.seg_boxes

    def unit(f, fold, _):
        log(f"fold {f + 1}/{cfg.folds}: train {len(fold['train'])}, val {len(fold['val'])}, "
            f"test {len(fold['test'])}")
        boxes = None if seg_boxes is None else {**seg_boxes[f]["val"], **seg_boxes[f]["test"]}
        data = load_split_data(by_id, fold, inp.contract, task, boxes, **heads)
        if cfg.lesion_free:  # the fold's own training frames' lesion-free bands, with empty masks
            from edgebus.data.presence import with_bands

            data["train"] = with_bands(data["train"], [by_id[i] for i in fold["train"]], inp.contract)
        if inp.teachers is not None:
            from edgebus.training.teacher import soften

            data["train"] = soften(data["train"], [by_id[i] for i in fold["train"]], inp.teachers, f,
                                   cfg.teacher_weight)
        crop = None if seg_boxes is None else (by_id, seg_boxes[f])
        return fold_unit(cfg, inp.contract, f, fold, data, progress, crop, _checkpoint(ckpts, f), log)
    return unit


def _ray_shared(cfg: CVConfig, task, inp: _CVInputs, heads: dict) -> dict:
    """What every Ray fold reads from the object store: the whole set's arrays, put once. Folds that
    need arrays of their own (lesion-free bands, crops cut with their own boxes) are refused."""
    if cfg.lesion_free:
        raise EdgebusError(f"{flag('lesion_free')} runs with the local backend (each fold adds its own training "
                           "frames' bands)")
    if inp.seg_boxes is not None or cfg.crop_margin is not None:
        raise EdgebusError(f"{flag('backend')} ray runs whole-frame CVs; a lesion-crop CV cuts each fold's frames "
                           "with its own boxes: run it with the local backend")
    ids = [c.case_id for c in inp.cases]
    return {"cfg": cfg, "contract": inp.contract, "ids": ids, "progress": False,
            "parts": load_split_data(inp.by_id, {"train": ids}, inp.contract, task, **heads)["train"]}


def _run_folds(backend: Backend, unit, todo: list, shared, out: Path, results: Path, ckpts: Path,
               cfg: CVConfig, task, log) -> None:
    """Run the folds left; each finished fold's models are written, then its line, then its checkpoint goes."""
    written = 0
    for res in run_units(backend, unit, todo, shared, log, checkpoints=ckpts):
        f, rec = res["fold"], res["rec"]
        fold_dir = make_dir(out / f"fold{f}", "CV folder")
        for name, blob in res["files"].items():  # the fold's deployable models: stress, ensembles, bundles
            atomic_write(fold_dir / name, blob)
        rec["models"] = {name: {"file": f"{fold_dir.name}/{name}", "sha256": sha256_file(fold_dir / name)}
                         for name in sorted(res["files"])}
        append_jsonl(results, rec)
        discard(_checkpoint(ckpts, f))  # the fold is written: its checkpoint has done its job
        written += 1
        if "test_int8" in rec:
            log(f"fold {f + 1}/{cfg.folds}: int8 test {task.headline_text(rec['test_int8'])}")
        log(f"fold {f + 1}/{cfg.folds}: test {task.headline_text(rec['test'])} (kept epoch {rec['kept_epoch']})")
        maybe_exit(written)


def _summarise(out: Path, cfg: CVConfig, backend: Backend) -> dict:
    """Summarise every fold, and record the CV stage and its headline metrics in the manifest."""
    from edgebus.engine.models import device_name
    from edgebus.training.cv_summary import summarize_cv

    summary = summarize_cv(out, cfg.n_boot)
    run = Run.load(out)
    run.stage("cv", folds=cfg.folds, device=device_name(), finished=now(), **backend.describe())
    run.manifest.metrics["cv"] = {k: v for k, v in summary.items() if k in ("mean_std", "bootstrap")}
    run.save()
    return summary


def run_cv(cfg: CVConfig, progress: bool = False, log=print, backend: Backend | None = None) -> dict:
    """k-fold cross-validation with fixed hyper-parameters; resumable (folds.jsonl); writes
    summary.json, report.md and (classification) the pooled confusion matrix PNG.

    A lesion-crop classifier (crop_margin) trains on crops around the true masks; its val and test
    crops are cut with the boxes a segmenter predicted in the same fold (boxes_from, honest: what
    the cart does) or, without boxes_from, around the true masks (an oracle, reported as such)."""
    task = get_task(resolve(cfg, "cv"))
    _check_settings(cfg, task)
    inp = _read_inputs(cfg, task, log, backend)
    out = Path(cfg.out or Path("runs") / f"cv-{cfg.model}-{cfg.size}")

    from edgebus.compat import set_seed
    from edgebus.engine.fit import build_compiled
    from edgebus.models.registry import has_aux_mask, has_descriptors

    backend = backend or Backend()

    set_seed(cfg.seed)
    # a bad model name or weights file fails before the folder exists; this model serves the first fold
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task.name)
    make_dir(out, flag("out"))
    with one_writer(out):  # a second CV on this folder would write every fold twice
        _open_folder(out, cfg, task, inp, log)
        ckpts = out / "checkpoints"  # epoch checkpoints of the folds in progress (engine.resume)
        results = out / "folds.jsonl"
        done = _done_folds(results, ckpts)
        heads = {"masks": has_aux_mask(model), "descriptors": has_descriptors(model)}
        model = None
        todo = [(f, fold) for f, fold in enumerate(inp.folds) if f not in done]
        if backend.name == "local":
            unit, shared = _local_unit(cfg, task, inp, heads, progress, ckpts, log), None
        else:
            unit, shared = ray_fold, _ray_shared(cfg, task, inp, heads)
        _run_folds(backend, unit, todo, shared, out, results, ckpts, cfg, task, log)
        return _summarise(out, cfg, backend)
