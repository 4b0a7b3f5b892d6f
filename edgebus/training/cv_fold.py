"""One fold of a cross-validation (edgebus.training.cv): train it, score it out of fold, convert it to
int8 as `edgebus export --int8` does, and return its record and model files. It writes only into a temp
folder of its own, so it runs in the driver or in a Ray worker alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.config.options import settings_of
from edgebus.config.stages import CVConfig
from edgebus.core.io import now
from edgebus.core.tasks import get_task
from edgebus.training.backends import take, task_checkpoints


# what makes two CVs the same CV: every setting but where it reads and writes (the data by its fingerprint,
# boxes_from by its boxes' sha256) and how many bootstrap draws its summary takes
CV_IDENTITY = ("task", *(n for n in settings_of(CVConfig) if n not in ("data", "out", "boxes_from", "n_boot")))


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
    ckpt = None if checkpoint is None else (checkpoint, {"fold": f, **{k: getattr(cfg, k) for k in CV_IDENTITY}})
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


def fold_checkpoint(root: Path, f: int) -> Path:
    return root / f"fold{f}"


def ray_fold(f: int, fold: dict, shared: dict) -> dict:
    """A fold as a Ray task: its arrays cut from the data set put once in the object store; it
    checkpoints its epochs where the run folder is visible (backends.task_checkpoints)."""
    pos = {i: n for n, i in enumerate(shared["ids"])}
    data = {k: take(shared["parts"], [pos[i] for i in fold[k]]) for k in ("train", "val", "test")}
    root = task_checkpoints(shared["checkpoints"])
    return fold_unit(shared["cfg"], shared["contract"], f, fold, data, shared["progress"],
                     checkpoint=None if root is None else fold_checkpoint(root, f))
