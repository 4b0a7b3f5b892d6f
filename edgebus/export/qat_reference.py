"""The run's QAT Keras model in an export whose int8 file comes from QAT: fine-tuned, saved, proven to
reload the same, and scored on the test split as the second reference that int8 file is compared with."""

from __future__ import annotations

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.manifest import Run
from edgebus.config.stages import ExportConfig
from edgebus.export.qat import QAT_MODEL


def qat_reference(run: Run, model, data, calib, cfg: ExportConfig, threshold: float, refs: list, log) -> tuple:
    """(QAT model, its record, its test outputs): the QAT Keras model is a second reference, in the
    manifest and the report's table, that its own int8 file is compared with."""
    from edgebus.engine.fit import predict

    qmodel, qat_info = _train_qat(run, model, data, calib, cfg, log)
    qat_prob = predict(qmodel, data["test"][0])
    qat_metrics = run.task.metrics(data["test"][1], qat_prob, threshold)
    run.manifest.metrics["keras_qat_test"] = qat_metrics
    refs.append((f"{QAT_MODEL} (QAT Keras)", "qat", qat_metrics))
    return qmodel, qat_info, qat_prob


def qat_meta(qat_info: dict) -> dict:
    """The QAT part of the metadata of a file made from the QAT model: how that model was fine-tuned."""
    return {"qat": {"epochs": qat_info["epochs"], "lr": qat_info["lr"], "distill": qat_info["distill"],
                    "keras_weights": QAT_MODEL}}


def _train_qat(run: Run, model, data, calib, cfg: ExportConfig, log) -> tuple:
    """The run's QAT model: fine-tuned on its training split with the run's training augmentation
    (older runs recorded none: clean images), saved, and proven to reload the same."""
    from edgebus.engine.fit import predict
    from edgebus.export import qat
    from edgebus.export.int8 import QAT_LR_FRACTION, qat_model

    train_stage = run.manifest.stages.get("train", {})
    lr = cfg.qat_lr if cfg.qat_lr is not None else QAT_LR_FRACTION * float(train_stage.get("lr", 1e-3))
    batch = cfg.qat_batch or int(train_stage.get("batch", 16))
    xte = data["test"][0]
    qmodel, info = qat_model(model, run.task, data["train"], calib, cfg.qat_epochs, lr, batch,
                             seed=run.manifest.split.seed if run.manifest.split else 0, log=log,
                             augment=train_stage.get("augment", "none"), distill=cfg.qat_distill)
    qat.save_qat_model(qmodel, run.file(qat.QAT_MODEL))
    # the saved file, not the object in memory, is what a later session has: prove it reloads the same
    again = qat.load_qat_model(run.file(qat.QAT_MODEL), model)
    k = min(len(xte), 2)
    diff = float(np.abs(predict(qmodel, xte[:k]) - predict(again, xte[:k])).max()) if k else 0.0
    if diff > 1e-4:
        raise EdgebusError(f"{run.file(qat.QAT_MODEL)}: reloaded QAT model differs from the trained one "
                           f"(max {diff:.2g}); re-run the export")
    info["reload_max_abs_diff"] = diff
    run.add_artifact(qat.QAT_MODEL, "keras-qat-weights", epochs=cfg.qat_epochs, lr=lr)
    log(f"QAT: {info['wall_s']} s; saved {qat.QAT_MODEL} (weights only; reloads onto the run's rebuilt model)")
    return qmodel, info
