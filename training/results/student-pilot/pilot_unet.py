"""Reference for the pilots: the Lite0 U-Net teacher's recipe on fold 0, its per-epoch val IoU."""
import json, os
from edgebus.compat import keras, set_seed
from edgebus.core.tasks import get_task
from edgebus.data.arrays import load_split_data, read_lesions
from edgebus.data.preprocess import preprocess_contract
from edgebus.engine.fit import build_compiled, fit_keep
from edgebus.training.cv import CVConfig

D = "/work/shared/data/BrEaST-Lesions_USG"; W = os.path.expanduser("~/.cache/edgebus/weights/efficientnet-lite0-imagenet.h5")
fold = json.load(open("/work/runs/t31/student-cv/folds.json"))["folds"][0]
contract = preprocess_contract(128, 3, None, "percentile")
ds, cases = read_lesions(D)
by_id = {c.case_id: c for c in cases}
data = load_split_data(by_id, fold, contract, get_task("segment"))
cfg = CVConfig(data=D, task="segment", model="unet-efficientnet-lite0", size=128, lr=1e-3, epochs=30, batch=8, seed=0,
               weights=W, augment="ultrasound", normalize="percentile", keep="best")
keras.backend.clear_session(); set_seed(0)
model = build_compiled(cfg.model, 128, W, {}, "segment")
model, hist, kept, wall = fit_keep(model, "segment", cfg, data, False)
h = {k: [round(float(x), 4) for x in v] for k, v in hist.history.items() if k.startswith("val_")}
json.dump({"name": "U", "kept": kept, "wall": wall, "history": h}, open("pilot-U.json", "w"))
print("U kept", kept, h.get("val_iou"))
