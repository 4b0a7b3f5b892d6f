"""Where a frame's time goes outside invoke(): each step of the cart's per-frame work timed on its own.

    python benchmarks/frame_steps.py MODEL.tflite [--frames DIR] [--n 40]

MODEL: a segmenter or a multi-task classifier (its mask is measured). On each real frame: the image area, the
resize and percentile stretch to the model (pixels_for), the table lookup, invoke(), the map resized to the frame,
mask / area / box, the largest region in the frame, the lesion's shape and its echo pattern; mean ms per frame.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgebus.core.echo import echo_features
from edgebus.core.shape import shape_features
from edgebus.data.preprocess import image_area, lesion_in_frame, prob_in_frame
from edgebus.runtime.frames import load_frame
from edgebus.runtime.model import ExportedModel
from edgebus.runtime.pipeline import _mask_fields

sys.path.insert(0, str(Path(__file__).parent))
from cart_speed import frames_of  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--frames", default="../shared/data/BrEaST-Lesions_USG")
    ap.add_argument("--n", type=int, default=40)
    a = ap.parse_args()
    m = ExportedModel(a.model)
    thr = m.mask_threshold if m.has_mask else m.threshold
    spent = {}

    def step(name, f, *args):
        t0 = time.perf_counter()
        out = f(*args)
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return out

    grays = [load_frame(f) for f in frames_of(Path(a.frames), a.n)]
    for g in grays:
        x0, y0, x1, y1 = step("image area", image_area, g)
        im = g[y0:y1, x0:x1]
        px = step("resize + stretch to the model", m.pixels_for, im)
        t = step("table lookup", m.tensor_for, px)
        out = step("invoke()", m.outputs_for, t)
        full = step("map resized to the frame", prob_in_frame, out["mask"], im.shape)
        step("mask, area, box", _mask_fields, {}, full, thr, g.shape, (x0, y0, x1, y1), 0.1)
        mask = step("largest region in the frame", lesion_in_frame, out["mask"], im.shape, thr, full)
        if mask is None:
            continue
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        step("lesion shape", shape_features, mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        step("echo pattern", echo_features, im, mask)
    for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"{name:32s} {s / len(grays) * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
