"""Lesion shape from the segmenter's mask beside the classifier's score.

A whole-frame classifier loses ranking on a scanner setting it never saw (on BrEaST, case folds
0.78 -> acquisition folds ~0.65 on the largest held-out setting), while scale-free shape numbers of
the lesion (edgebus.core.shape) keep theirs: they are measured in the frame's geometry, so zoom,
depth and frame size cancel. A segment CV records the shape of every out-of-fold predicted mask
(`measure`), so a fusion of the two can be scored out of fold on the same folds.
"""

from __future__ import annotations

import numpy as np

from edgebus.core.shape import shape_features
from edgebus.data.preprocess import lesion_in_frame


def measure(probs, frames_hw: list, threshold: float) -> list:
    """Shape features (edgebus.core.shape.FEATURES, rounded) of each predicted (H, W, 1) map's lesion
    in its frame (h, w); None where nothing reaches the threshold."""
    out = []
    for p, hw in zip(np.asarray(probs), frames_hw):
        mask = lesion_in_frame(p[..., 0] if p.ndim == 3 else p, tuple(hw), threshold)
        f = None if mask is None else shape_features(mask)
        out.append(None if f is None else [round(float(v), 5) for v in f])
    return out
