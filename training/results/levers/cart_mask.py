"""Rule 17 (training/results/clinic.md): the U-Net scored as the cart shows its mask (the largest region of the
int8 map at the frame's own size), clean and under the 23 acquisition changes, beside the whole map on the model's
grid (what every earlier IoU scored), and hole filling of the cart's region as the one lever; and (Rule 19) the map
averaged over the frame and its left-right mirror (mirrored back) before the cart's region is taken.

Frames, changes and fold models are exactly those of `edgebus stress` (its helpers); int8 maps only. Run with the
segment CVs of training/results/student.md and clinic.md on this machine; writes cart_mask.json beside this script:
    python training/results/levers/cart_mask.py /work/runs/t31/unet-cv /work/runs/t32/unetlf-cv /work/runs/t33/unetlf-s1
"""
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_fill_holes

from edgebus.core.metrics import segmentation_metrics
from edgebus.core.stats import bootstrap_means
from edgebus.data.breast import case_mask
from edgebus.data.preprocess import lesion_and_regions, load_gray, to_model_input
from edgebus.data.stress import conditions
from edgebus.evaluation.stress import _changed, _target


def iou(truth, pred) -> float:
    return segmentation_metrics(truth[None], pred[None].astype(np.uint8), 0.5)["iou"]


def cart_mask(prob, gray, thr) -> np.ndarray:
    lesion = lesion_and_regions(prob, gray.shape[:2], thr)[0]
    return np.zeros(gray.shape[:2], bool) if lesion is None else lesion > 0


def score(cv: str) -> dict:
    groups, task, contract, thr, _ = _target(Path(cv), None, "breast")
    frames = [[(c, load_gray(c.image), case_mask(c)) for c in g.cases] for g in groups]
    rows = {}
    for name, strength in [("clean", None), *conditions()]:
        per = {"grid": [], "cart": [], "cart_filled": [], "cart_flip": []}
        for g, items in zip(groups, frames):
            x, changed, _, small, full = _changed(items, name, strength, 0, contract)
            maps = g.int8_model.predict(x)
            mirrored = g.int8_model.predict(np.stack([to_model_input(f[:, ::-1].copy(), contract) for f in changed]))
            for prob, back, gray, s, truth in zip(maps, mirrored[:, :, ::-1], changed, small, full):
                lesion = cart_mask(prob, gray, thr)
                per["grid"].append(iou(s[..., 0] > 0, prob[..., 0] >= thr))
                per["cart"].append(iou(truth, lesion))
                per["cart_filled"].append(iou(truth, binary_fill_holes(lesion)))
                per["cart_flip"].append(iou(truth, cart_mask((prob + back) / 2, gray, thr)))  # Rule 19
        label = "clean" if strength is None else f"{name} {strength:g}"
        rows[label] = bootstrap_means(per) if strength is None else {k: float(np.mean(v)) for k, v in per.items()}
        print(cv, label, {k: round(float(np.mean(v)), 4) for k, v in per.items()}, flush=True)
    clean = {k: rows["clean"][k]["value"] for k in per}
    worst = {k: max(((clean[k] - r[k]), c) for c, r in rows.items() if c != "clean") for k in clean}
    return {"threshold": thr, "n": rows["clean"]["_meta"]["n"], "rows": rows,
            "worst_drop": {k: {"drop": d, "change": c} for k, (d, c) in worst.items()}}


if __name__ == "__main__":
    out = Path(__file__).with_name("cart_mask.json")
    res = json.loads(out.read_text()) if out.is_file() else {}
    for cv in sys.argv[1:]:
        res[cv] = score(cv)
        out.write_text(json.dumps(res, indent=1))
