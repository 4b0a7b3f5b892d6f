"""The lesion's size in mm as the cart gives it (`lesion_width_mm`, `lesion_height_mm`: the extents of its mask, the
largest region of the int8 map at the frame's size) against the same extents of the lesion's true mask, out of fold on
BrEaST (each frame scored by its own fold's int8 U-Net, the frame cut to its image area as the cart cuts it; the
sheet's Pixel_size, in cm). A measurement of what ships: nothing is chosen on it.

    python training/results/levers/size_mm.py /work/runs/t31/unet-cv    # writes size_mm.json beside this script
"""
import json
import sys
from pathlib import Path

import numpy as np

from edgebus.core.stats import bootstrap_means
from edgebus.data.breast import case_mask
from edgebus.data.preprocess import lesion_and_regions, lesion_box, load_gray
from edgebus.evaluation.stress import _changed, _target


def extents_mm(mask: np.ndarray, mm: float) -> tuple[float, float] | None:
    """(width, height) in mm of the largest region of a frame-size mask, as the cart's box is measured."""
    box = lesion_box(mask)
    if box is None:
        return None
    h, w = mask.shape
    return (box[2] - box[0]) * w * mm, (box[3] - box[1]) * h * mm


def main(cv: str) -> dict:
    groups, _, contract, thr, _ = _target(Path(cv), None, "breast")
    pred, true, missing = [], [], 0
    for g in groups:
        items = [(c, load_gray(c.image), case_mask(c)) for c in g.cases]
        x, frames, _, _, masks = _changed(items, "clean", None, 0, contract)
        for c, prob, gray, truth in zip(g.cases, g.int8_model.predict(x), frames, masks):
            mm = float(c.pixel_size) * 10.0
            lesion = lesion_and_regions(prob, gray.shape[:2], thr)[0]
            p = None if lesion is None else extents_mm(lesion, mm)
            if p is None:
                missing += 1
                continue
            pred.append(p)
            true.append(extents_mm(truth.astype(np.uint8), mm))
    pred, true = np.asarray(pred), np.asarray(true)
    err = pred - true
    out = {"cv": cv, "n": int(len(pred) + missing), "no_mask": missing, "true_mm_median": np.median(true, 0).tolist()}
    for k, name in enumerate(("width", "height")):
        e = err[:, k]
        ci = bootstrap_means({"abs": np.abs(e), "bias": e})
        out[name] = {"mean_abs_error_mm": ci["abs"], "bias_mm": ci["bias"],
                     "limits_of_agreement_mm": [float(e.mean() - 1.96 * e.std(ddof=1)), float(e.mean() + 1.96 * e.std(ddof=1))],
                     "within_2mm": float(np.mean(np.abs(e) <= 2.0)), "within_20pct": float(np.mean(np.abs(e) <= 0.2 * true[:, k]))}
    big_t, big_p = true.max(1) > 20.0, pred.max(1) > 20.0  # the T1 line: a lesion's greatest dimension over 20 mm
    out["over_20mm"] = {"true": int(big_t.sum()), "cart": int(big_p.sum()), "agree": float(np.mean(big_t == big_p))}
    return out


if __name__ == "__main__":
    res = main(sys.argv[1])
    Path(__file__).with_name("size_mm.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
