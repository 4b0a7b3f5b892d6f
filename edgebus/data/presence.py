"""Lesion presence (issue #35): what a lesion-probability map says about whether the frame shows a
lesion at all, and lesion-free examples made from BrEaST's own frames to learn that from.

BrEaST has 4 frames without a lesion, too few to learn from. Every lesion frame also holds tissue
without the lesion: the largest band of the image area beside, above or below the lesion's box (the
box grown by a margin, so no lesion edge is left in it), kept where it is at least `MIN_SIDE` of the
image area in both directions. Such a band is shown to the model as a frame of its own, the way the
cart shows it a frame (resized to the model's input). One band per frame, so every example is a
different frame's tissue.
"""

from __future__ import annotations

import numpy as np

from edgebus.data.preprocess import _largest_region, cut_area, image_area, load_gray, load_mask, to_model_input

EVIDENCE = ("max_logit", "area_log", "region_log", "region_logit")  # the presence model's inputs
MARGIN = 0.25  # of the lesion box's size, added on each side before a band is cut beside it
MIN_SIDE = 0.4  # of the image area's width and height: a band narrower than this is not a frame
_EPS = 1e-4


def _logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1 - _EPS)
    return float(np.log(p / (1 - p)))


def evidence(prob: np.ndarray, threshold: float) -> list[float]:
    """The map's evidence of a lesion, on the model's own grid: its highest probability (logit), the
    share of it at or above the mask threshold and the share of its largest region (log10, floored at
    half a pixel), and the mean probability in that region (logit; the highest where there is none)."""
    p = np.asarray(prob, dtype=np.float64).squeeze()
    n, top = p.size, float(p.max())
    mask = p >= threshold
    region = _largest_region(mask)
    size = 0 if region is None else region.shape[1]
    inside = top if region is None else float(p[region[0], region[1]].mean())
    share = lambda k: float(np.log10(max(k, 0.5) / n))  # noqa: E731
    return [_logit(top), share(int(mask.sum())), share(size), _logit(inside)]


def lesion_free_band(area: tuple[int, int, int, int], mask: np.ndarray, margin: float = MARGIN,
                     min_side: float = MIN_SIDE) -> tuple[int, int, int, int] | None:
    """[x0, y0, x1, y1] (frame pixels, exclusive ends) of the largest band of the image `area` beside,
    above or below the lesion's box grown by `margin` of its size, or None where no band is at least
    `min_side` of the area in both directions."""
    ax0, ay0, ax1, ay1 = area
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    gx, gy = margin * (bx1 - bx0), margin * (by1 - by0)
    bx0, bx1 = int(np.floor(bx0 - gx)), int(np.ceil(bx1 + gx))
    by0, by1 = int(np.floor(by0 - gy)), int(np.ceil(by1 + gy))
    bands = [(ax0, ay0, min(bx0, ax1), ay1), (max(bx1, ax0), ay0, ax1, ay1),
             (ax0, ay0, ax1, min(by0, ay1)), (ax0, max(by1, ay0), ax1, ay1)]
    w, h = ax1 - ax0, ay1 - ay0
    ok = [b for b in bands if b[2] - b[0] >= min_side * w and b[3] - b[1] >= min_side * h]
    return max(ok, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if ok else None


def band_examples(cases, contract: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x, empty masks) of the lesion-free band of each case that has one, through `contract`: what a
    segmenter trained with --lesion-free also learns from (an empty mask: "no lesion here")."""
    xs = []
    for c in cases:
        gray = load_gray(c.image)
        band = lesion_free_band(image_area(gray), load_mask(c.mask))
        if band is not None:
            x0, y0, x1, y1 = band
            xs.append(to_model_input(cut_area(gray[y0:y1, x0:x1])[0], contract))
    h, w = contract["size"]
    x = np.stack(xs) if xs else np.zeros((0, h, w, contract["channels"]), np.float32)
    return x.astype(np.float32), np.zeros((len(x), h, w, 1), np.float32)


def with_bands(part: tuple, cases, contract: dict) -> tuple:
    """A segmenter's training part (x, masks) with its cases' lesion-free bands appended."""
    bx, bm = band_examples(cases, contract)
    return (np.concatenate([part[0], bx]), np.concatenate([part[1], bm]), *part[2:])
