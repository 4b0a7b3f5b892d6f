"""Pilot (issue #31, session 15): the student's mask decoder on fold 0 of the acquisition folds, truth masks,
no teacher. Judged on fold 0's VAL part only (per-epoch Keras val metrics, inference mode)."""
import json, sys, time
import numpy as np
from edgebus.compat import keras, set_seed
from edgebus.core.tasks import get_task
from edgebus.data.arrays import load_split_data, read_lesions
from edgebus.data.preprocess import preprocess_contract
from edgebus.engine.fit import build_compiled, fit_keep
from edgebus.training.cv import CVConfig

D = "/work/shared/data/BrEaST-Lesions_USG"; W = "/root/.cache/edgebus/weights/efficientnet-lite0-imagenet.h5"
import os; W = os.path.expanduser("~/.cache/edgebus/weights/efficientnet-lite0-imagenet.h5")
name, kw = sys.argv[1], json.loads(sys.argv[2])
opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
LR, WM = opts.get("lr", 1e-4), opts.get("mask_weight", 1.0)
import edgebus.engine.fit as F
from edgebus.engine.losses import accuracy, iou_metric, optimizer, output_losses
from edgebus.compat import tf
def cm(model, task, lr):
    model.compile(optimizer=optimizer(model, lr), loss=output_losses(model, task), loss_weights=[1.0, WM],
                  metrics=[[accuracy(keras, tf), keras.metrics.AUC(name="auc")], [iou_metric(tf)]])
    return model
F.compile_model = cm
fold = json.load(open("/work/runs/t31/student-cv/folds.json"))["folds"][0]
contract = preprocess_contract(160, 3, None, "percentile")
ds, cases = read_lesions(D)
by_id = {c.case_id: c for c in cases}
task = get_task("classify")
data = load_split_data(by_id, fold, contract, task, masks=True)
cfg = CVConfig(data=D, task="classify", model="efficientnet-lite0-segaux", size=160, lr=LR, epochs=25, batch=16, seed=0,
               weights=W, augment="ultrasound", normalize="percentile", model_kwargs=kw, keep="best")
keras.backend.clear_session(); set_seed(0)
model = build_compiled(cfg.model, 160, W, kw, "classify")
t0 = time.time()
model, hist, kept, wall = fit_keep(model, "classify", cfg, data, False)
h = hist.history
out = {"name": name, "kw": kw, "opts": opts, "kept": kept, "wall": wall, "history": {k: [round(float(x), 4) for x in v] for k, v in h.items() if k.startswith("val_")}}
json.dump(out, open(f"/work/runs/t32/pilot-{name}.json", "w"))
print(name, "kept", kept, "val_iou", out["history"].get("val_aux_mask_iou"))
