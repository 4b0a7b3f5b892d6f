"""Distilled QAT at other learning rates on one fold of a segment CV: the int8 file's mask IoU against its
float parent on the fold's test part (issue 30's follow-up: is a tenth of the training rate too high?).

    python benchmarks/distill_rate.py CV_DIR --fold 0 --lrs 1e-5
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cv", type=Path)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--lrs", default="1e-5")
    a = ap.parse_args()
    from edgebus.core.manifest import Run
    from edgebus.core.metrics import mask_agreement_iou
    from edgebus.data.arrays import load_split_data, run_dataset
    from edgebus.engine.augment import augment_name
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_model
    from edgebus.export.int8 import calibration_set, int8_probs, qat_model

    run = Run.load(a.cv)
    ident = run.manifest.cv["identity"]
    fold = json.loads((a.cv / "folds.json").read_text())["folds"][a.fold]
    by_id = {c.case_id: c for c in run_dataset(run).lesions()}
    data = load_split_data(by_id, fold, run.manifest.preprocess, run.task)
    model = load_model(a.cv / f"fold{a.fold}" / "model.keras", run.manifest.model)
    calib = calibration_set(data["train"][0], 100, ident["seed"])
    xte = data["test"][0]
    parent = predict(model, xte)
    for lr in (float(v) for v in a.lrs.split(",")):
        t0 = time.time()
        q, info = qat_model(model, run.task, data["train"], calib, ident["qat_epochs"], lr, ident["batch"], ident["seed"],
                            augment=augment_name(ident["augment"]), distill=1.0)
        iou = mask_agreement_iou(parent, int8_probs({"qat": q}, run.task, calib, run.manifest.preprocess, 0.5, xte)["qat"])
        print(f"lr {lr:g}: distill loss {info['history']['distill_loss']}; mask IoU against float mean {iou.mean():.3f}, "
              f"median {np.median(iou):.3f}, worst {iou.min():.3f} (n={len(iou)}); {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
