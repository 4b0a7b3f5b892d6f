"""The lesion's echo pattern and posterior acoustic features, measured on the gray frame around its
mask: BI-RADS echogenicity and posterior features as numbers.

Each compares the lesion with tissue at the same depth beside it (ultrasound dims with depth, so
only same-depth tissue is a fair reference), as a ratio, so an overall gain change cancels:

- echo: log((mean gray in the lesion + 1) / (mean gray beside it, same rows + 1)); < 0 hypoechoic;
- posterior: log((mean gray below the lesion + 1) / (mean gray beside that band + 1)), the band half
  the lesion's height deep; < 0 shadowing, > 0 enhancement;
- heterogeneity: std of gray in the lesion / (mean gray beside it + 1).

"Beside" is half the lesion's width to each side, clipped to the frame; pixels exactly 0 (outside
the scan sector, transparent areas composited on black) are left out of the references. A
reference with under MIN_PIXELS pixels (a lesion at the frame's edge) gives NaN: the models that
use these fill it with their training median. numpy only: the cart computes these too.
"""

from __future__ import annotations

import numpy as np

from edgebus.core.errors import EdgebusError

FEATURES = ("echo", "posterior", "heterogeneity")
MIN_PIXELS = 10


def _beside(shape, rows: slice, x0: int, x1: int, half: int) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[rows, max(0, x0 - half):x0] = True
    out[rows, x1:min(shape[1], x1 + half)] = True
    return out


def echo_features(gray: np.ndarray, mask: np.ndarray) -> list[float] | None:
    """FEATURES of the lesion `mask` (nonzero = lesion) in the 2-D `gray` frame of the same size;
    None when the mask is empty."""
    g = np.asarray(gray)
    m = np.asarray(mask) > 0
    if g.ndim != 2 or m.shape != g.shape:
        raise EdgebusError(f"echo: a 2-D gray frame and a mask of its size are needed, got {g.shape} and {m.shape}")
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    if not len(rows):
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    half = max(1, (x1 - x0) // 2)
    # every region below lies in this window: measure there (the same pixels; no full-frame copies)
    wy1, wx0, wx1 = min(g.shape[0], y1 + max(1, (y1 - y0) // 2)), max(0, x0 - half), min(g.shape[1], x1 + half)
    g, m = g[y0:wy1, wx0:wx1].astype(np.float64), m[y0:wy1, wx0:wx1]
    y0, y1, x0, x1 = 0, y1 - y0, x0 - wx0, x1 - wx0
    h_all = g.shape[0]
    tissue = (g > 0) & ~m
    side = _beside(g.shape, slice(y0, y1), x0, x1, half) & tissue
    band = slice(y1, min(h_all, y1 + max(1, (y1 - y0) // 2)))
    below = np.zeros(g.shape, bool)
    below[band, x0:x1] = True
    below &= tissue
    below_side = _beside(g.shape, band, x0, x1, half) & tissue
    lesion = g[m]
    ref = g[side].mean() if side.sum() >= MIN_PIXELS else np.nan
    posterior = (np.log((g[below].mean() + 1) / (g[below_side].mean() + 1))
                 if below.sum() >= MIN_PIXELS and below_side.sum() >= MIN_PIXELS else np.nan)
    return [float(np.log((lesion.mean() + 1) / (ref + 1))), float(posterior), float(lesion.std() / (ref + 1))]
