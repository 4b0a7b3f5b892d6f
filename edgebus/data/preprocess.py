"""The one preprocessing path shared by training, export calibration, benchmarks and the cart runtime.

An ultrasound frame becomes: alpha composited over black -> 8-bit grayscale -> cut to its image
area (`image_area`: black margins beside and above the image dropped) -> bilinear resize to
(H, W) -> gray replicated to C channels -> float32 in [0, 1]. Models normalise further inside their
own graph, so an int8 model's uint8 input is simply the resized pixel value (scale 1/255, zero 0).
The parameters are written into every manifest and exported model as the "preprocessing contract".

A contract with a `normalize` entry (version 3) stretches each resized frame's gray levels between
two percentiles to the full range, so a scanner's overall gain or contrast setting cancels.

A lesion-crop classifier (segmentation-guided classification) has a contract with a `crop` entry
(version 2): before the resize, the frame is cut to a square around the lesion's box (from the ground
truth mask in training, from the segmenter's mask on the cart), with a margin so the lesion's border
and what lies below it (posterior shadowing) stay in view. An edgebus that knows only version 1
refuses such a model instead of feeding it whole frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgebus.core.errors import EdgebusError, flag

PREPROCESS_VERSION = 1  # whole frame
CROP_VERSION = 2  # lesion crop (contract has "crop")
NORMALIZE_VERSION = 3  # intensity normalisation (contract has "normalize")
SUPPORTED_VERSIONS = (PREPROCESS_VERSION, CROP_VERSION, NORMALIZE_VERSION)
NORMALIZE = ("percentile",)
PERCENTILES = (0.5, 99.5)
BOX_GRID = 128  # masks are reduced to at most this many pixels a side to find their largest region
AREA_LEVEL, AREA_SHARE = 10, 0.05  # a margin line: at most 5% of its pixels brighter than 10
AREA_RULE = ("cut to the image before the resize: it starts at the first of w/20 adjacent columns (from the left, "
             "from the right), then of h/20 adjacent rows (from the top, within those columns), each with over 5% of "
             "its pixels brighter than 10; never cut at the bottom; the whole frame when under a quarter of a side "
             "would be left")


def preprocess_contract(size: int | tuple[int, int], channels: int = 3, crop_margin: float | None = None,
                        normalize: str | None = None) -> dict:
    h, w = (size, size) if isinstance(size, int) else size
    contract = {
        "version": PREPROCESS_VERSION,
        "size": [int(h), int(w)],
        "channels": int(channels),
        "alpha": "composite-over-black",
        "color": "grayscale (PIL 'L')",
        "area": AREA_RULE,
        "resize": "bilinear",
        "range": [0.0, 1.0],
        "layout": "NHWC",
    }
    if crop_margin is not None:
        if not (0 <= crop_margin <= 2):
            raise EdgebusError(f"crop margin {crop_margin}: give a fraction of the lesion's size between 0 and 2")
        contract["version"] = CROP_VERSION
        contract["crop"] = {
            "kind": "lesion-square",
            "margin": float(crop_margin),
            "box": "largest 8-connected region of the lesion mask (the segmenter's, prob >= its threshold, on the cart)",
            "side": "max(box width, box height) * (1 + 2 * margin) frame pixels, at least 10% of the shorter frame side",
            "outside": "black",
            "no_lesion": "the whole frame, centred in a black square",
        }
    if normalize is not None:
        if normalize not in NORMALIZE:
            raise EdgebusError(f"{flag('normalize')} '{normalize}': choose {', '.join(NORMALIZE)} (or leave it out)")
        contract["version"] = NORMALIZE_VERSION
        contract["normalize"] = {"kind": normalize, "percentiles": list(PERCENTILES),
                                 "rule": "after the resize, the gray levels at these percentiles are stretched to 0 and "
                                         "255 (clipped): an overall gain or contrast change of the scanner cancels"}
    return contract


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise EdgebusError(f"{path}: file not found; check the path or the data set's sheet") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EdgebusError(f"{path}: not a readable image ({e}); replace or remove the file") from None
    if im.width == 0 or im.height == 0:
        raise EdgebusError(f"{path}: empty image (0 pixels); replace or remove the file")
    return im


def _to_gray(im: Image.Image) -> Image.Image:
    """Alpha over black, then 8-bit gray. RGBA (every BrEaST frame) as Pillow's premultiplied RGBa:
    round(c * alpha / 255) per channel is the black composite itself, so no black frame and no
    composite copy (1.1 vs 2.0 ms a BrEaST frame; the same bytes, tests/test_frame_speed.py). The
    premultiplied bytes are read back as RGBX, since Pillow's own RGBa -> L un-premultiplies."""
    if im.mode == "RGBA":
        premultiplied = im.convert("RGBa").tobytes()
        return Image.frombuffer("RGBX", im.size, premultiplied, "raw", "RGBX", 0, 1).convert("L")
    if im.mode in ("LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() or 1.0
        return Image.fromarray((a * (255.0 / hi)).round().astype(np.uint8), "L")
    return im.convert("L")


def load_gray(path: str | Path) -> np.ndarray:
    """An image file as uint8 HxW grayscale (transparent areas become black)."""
    return np.asarray(_to_gray(_open(path)), dtype=np.uint8)


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file as uint8 HxW in {0, 1}: any non-black, opaque pixel is lesion."""
    return (load_gray(path) > 127).astype(np.uint8)


def _first_run(is_image: np.ndarray) -> int | None:
    """Index of the first line from which a twentieth of the lines in a row are all image lines."""
    run = max(1, len(is_image) // 20)
    c = np.concatenate([[0], np.cumsum(is_image)])
    starts = np.nonzero(c[run:] - c[:-run] == run)[0]
    return int(starts[0]) if len(starts) else None


def image_area(gray: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: the frame without the black margins a scanner or a screen
    capture puts beside and above the image. Training frames have none, so a model never learned one;
    a 4:3 image in a 16:9 capture would otherwise shrink the lesion and move scores (the stress
    benchmark's `pad`). A line is image when over 5% of its pixels are brighter than 10; the image
    starts where a twentieth of the lines in a row are image, so a label or caliper mark in a margin
    does not keep it. The bottom is never cut: dark rows there are the image (posterior shadowing,
    depth below the lesion). Under a quarter of either side left: the whole frame."""
    g = np.asarray(gray)
    h, w = g.shape
    bright = g > AREA_LEVEL
    cols = bright.mean(axis=0) > AREA_SHARE
    x0, right = _first_run(cols), _first_run(cols[::-1])
    if x0 is None or right is None or 4 * (w - right - x0) < w:
        return 0, 0, w, h
    x1 = w - right
    y0 = _first_run(bright[:, x0:x1].mean(axis=1) > AREA_SHARE)  # rows judged within the columns kept: side bars
    if y0 is None or 4 * (h - y0) < h:                          # of any width do not change which rows are image
        return 0, 0, w, h
    return x0, y0, x1, h


def cut_area(gray: np.ndarray, mask: np.ndarray | None = None, where: str = "mask") -> tuple[np.ndarray, np.ndarray | None]:
    """(gray, mask) cut to the frame's image_area; the mask (at the frame's size) moves with it."""
    if mask is not None and np.shape(mask)[:2] != np.shape(gray):
        (mh, mw), (h, w) = np.shape(mask)[:2], np.shape(gray)
        raise EdgebusError(f"{where}: mask of {mw}x{mh} pixels on a frame of {w}x{h}; save the mask at its frame's size")
    x0, y0, x1, y1 = image_area(gray)
    return gray[y0:y1, x0:x1], None if mask is None else np.asarray(mask)[y0:y1, x0:x1]


def resize_gray(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(gray, "L").resize((w, h), Image.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    m = Image.fromarray((mask > 0).astype(np.uint8) * 255, "L").resize((w, h), Image.NEAREST)
    return (np.asarray(m) > 127).astype(np.uint8)


def uint8_percentiles(g: np.ndarray, q) -> list[float]:
    """np.percentile(g, q) (linear interpolation) of a uint8 array, read off its 256-bin histogram
    instead of sorting it: the same numbers, a fraction of the time on a model-size frame."""
    cum = np.cumsum(np.bincount(np.asarray(g, dtype=np.uint8).ravel(), minlength=256))
    n = int(cum[-1])
    out = []
    for p in np.atleast_1d(q):
        pos = float(p) / 100 * (n - 1)
        i = int(np.floor(pos))
        lo = int(np.searchsorted(cum, i + 1))  # the value at sorted index i
        hi = int(np.searchsorted(cum, min(i + 2, n)))  # and at i + 1
        t = pos - i
        out.append(float(hi - (hi - lo) * (1 - t)) if t >= 0.5 else float(lo + (hi - lo) * t))  # numpy's _lerp, exactly
    return out


def to_uint8_input(gray: np.ndarray, contract: dict, box: list[float] | None = None) -> np.ndarray:
    """HxW uint8 grayscale -> HxWxC uint8 at the contract's size (what a uint8 int8-model takes).
    A crop contract cuts the square around `box` (lesion_box of the lesion mask) first."""
    if "crop" in contract:
        gray = crop_to_box(gray, box, contract["crop"]["margin"])
    g = resize_gray(gray, tuple(contract["size"]))
    if "normalize" in contract:
        lo, hi = uint8_percentiles(g, contract["normalize"]["percentiles"])
        g = np.clip(np.round((g.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1.0))), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], contract["channels"], axis=-1)


def to_model_input(gray: np.ndarray, contract: dict, box: list[float] | None = None) -> np.ndarray:
    """HxW uint8 grayscale -> HxWxC float32 in [0, 1] (what float models take)."""
    return to_uint8_input(gray, contract, box).astype(np.float32) / 255.0


def pixels_to_input(pixels: np.ndarray, contract: dict) -> np.ndarray:
    """(N, H, W) uint8 pixels already at the model's size (an evaluation pack) -> (N, H, W, C)
    float32 in [0, 1]: the last steps of to_model_input."""
    p = np.asarray(pixels, dtype=np.uint8)
    return np.repeat(p[..., None], contract["channels"], axis=-1).astype(np.float32) / 255.0


def _run_regions(m: np.ndarray) -> tuple:
    """(rows, starts, ends, labels) of the runs of True pixels of a 2-D bool array, each labelled with
    its 8-connected region (the region's first run). Labelled by runs: each row's runs joined with the
    runs they touch (diagonals included) in the next row by union-find, so the work grows with the
    runs, not the pixels (a lesion map at a model's 160 px grid: about a millisecond, where a
    pixel-by-pixel search took tens)."""
    h = m.shape[0]
    d = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(d == 1)
    ends = np.nonzero(d == -1)[1]  # exclusive; runs come in raster order from both
    first = np.searchsorted(rows, np.arange(h + 1))
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    s, e = starts.tolist(), ends.tolist()
    for r in range(h - 1):
        i, i1, j, j1 = first[r], first[r + 1], first[r + 1], first[r + 2]
        while i < i1 and j < j1:
            if s[j] <= e[i] and s[i] <= e[j]:  # overlapping or diagonal neighbours
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if e[i] < e[j]:
                i += 1
            else:
                j += 1
    return rows, starts, ends, np.asarray([root(i) for i in range(len(rows))], dtype=np.int64)


def _regions(mask: np.ndarray) -> tuple:
    """((rows, cols) of the largest 8-connected True region of a 2-D array or None, the regions' pixel counts
    largest first), from one labelling. Of regions of equal size, the first in raster order is the largest."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None, np.zeros(0, dtype=np.int64)
    rows, starts, ends, labels = _run_regions(m)
    sizes = np.bincount(labels, weights=ends - starts)
    best = labels == int(np.argmax(sizes))  # roots are each region's first run: the first largest wins
    lengths = (ends - starts)[best]
    rr = np.repeat(rows[best], lengths)
    cc = np.concatenate([np.arange(a, b) for a, b in zip(starts[best], ends[best])])
    return np.stack([rr, cc]), np.sort(sizes[sizes > 0].astype(np.int64))[::-1]


def region_areas(mask: np.ndarray) -> np.ndarray:
    """Pixel counts of the 8-connected True regions of a 2-D array, largest first (empty: none)."""
    return _regions(mask)[1]


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    """(rows, cols) of the largest 8-connected True region of a 2-D bool array, or None."""
    return _regions(mask)[0]


def lesion_box(mask: np.ndarray) -> list[float] | None:
    """[x0, y0, x1, y1] as fractions of the frame (exclusive ends) of the largest connected region
    of a 2-D mask (nonzero = lesion), or None when it is empty. Stray specks of a predicted mask do
    not stretch the box. A large mask's regions are found on a copy reduced to BOX_GRID pixels a side;
    the box is then measured on the full mask, within that region's cells."""
    full = np.asarray(mask)
    if full.ndim != 2:
        full = full.reshape(full.shape[0], full.shape[1])
    full = full > 0
    h, w = full.shape
    gh, gw = min(h, BOX_GRID), min(w, BOX_GRID)
    rows = ((np.arange(gh) + 0.5) * h / gh).astype(int)
    cols = ((np.arange(gw) + 0.5) * w / gw).astype(int)
    region = _largest_region(full[rows][:, cols])
    if region is None:
        return None
    r, c = region
    if (gh, gw) == (h, w):
        return [float(c.min()) / w, float(r.min()) / h, float(c.max() + 1) / w, float(r.max() + 1) / h]
    # the region's cells, one cell wider each way, in full-mask pixels
    ya, yb = int((r.min() - 1) * h / gh), int(np.ceil((r.max() + 2) * h / gh))
    xa, xb = int((c.min() - 1) * w / gw), int(np.ceil((c.max() + 2) * w / gw))
    ya, xa, yb, xb = max(ya, 0), max(xa, 0), min(yb, h), min(xb, w)
    sub = full[ya:yb, xa:xb]
    ys, xs = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
    return [float(xa + xs[0]) / w, float(ya + ys[0]) / h, float(xa + xs[-1] + 1) / w, float(ya + ys[-1] + 1) / h]


def prob_in_frame(prob: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """A model's (H, W) probability map resized to the frame (h, w), bilinear: what the cart's mask
    and the lesion's measurements are thresholded from (made once per frame)."""
    prob = np.asarray(prob, dtype=np.float32).reshape(np.asarray(prob).shape[:2])
    h, w = frame_hw
    return np.asarray(Image.fromarray(prob).resize((w, h), Image.BILINEAR))


def lesion_in_frame(prob: np.ndarray, frame_hw: tuple[int, int], threshold: float,
                    full: np.ndarray | None = None) -> np.ndarray | None:
    """The lesion of lesion_and_regions, alone."""
    return lesion_and_regions(prob, frame_hw, threshold, full)[0]


def lesion_and_regions(prob: np.ndarray, frame_hw: tuple[int, int], threshold: float,
                       full: np.ndarray | None = None) -> tuple:
    """A segmenter's (H, W) lesion-probability map as the frame's lesion: resized to the frame
    (bilinear, as the cart's mask; `full`: that map already, prob_in_frame), thresholded, and kept to
    the largest 8-connected region found on the model's grid (one cell of slack), so a stray speck
    does not bend the lesion's measured shape: (uint8 (h, w) in {0, 1} or None when nothing reaches
    the threshold, the pixel counts of the map's regions on the model's grid, largest first)."""
    prob = np.asarray(prob, dtype=np.float32).reshape(np.asarray(prob).shape[:2])
    grid = prob >= threshold
    region, areas = _regions(grid)
    if region is None:
        return None, areas
    keep = np.zeros_like(grid)
    keep[region[0], region[1]] = True
    keep = np.pad(keep, 1)
    keep = np.logical_or.reduce([keep[1 + dy:keep.shape[0] - 1 + dy, 1 + dx:keep.shape[1] - 1 + dx]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])  # one cell of slack
    h, w = frame_hw
    full = prob_in_frame(prob, frame_hw) if full is None else full
    gh, gw = grid.shape
    rows = np.minimum((np.arange(h) + 0.5) * gh / h, gh - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * gw / w, gw - 1).astype(int)
    kr, kc = np.nonzero(keep.any(axis=1))[0], np.nonzero(keep.any(axis=0))[0]  # the kept cells' rows and columns:
    ya, yb = np.searchsorted(rows, kr[0]), np.searchsorted(rows, kr[-1], side="right")  # outside them the mask is 0
    xa, xb = np.searchsorted(cols, kc[0]), np.searchsorted(cols, kc[-1], side="right")
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[ya:yb, xa:xb] = (full[ya:yb, xa:xb] >= threshold) & keep[rows[ya:yb]][:, cols[xa:xb]]
    return (mask if mask[ya:yb, xa:xb].any() else None), areas


def crop_square_px(shape: tuple[int, int], box: list[float] | None, margin: float) -> list[int]:
    """[x0, y0, x1, y1] in frame pixels (exclusive ends; may reach outside the frame) of the square
    the crop contract cuts from an HxW frame around `box` (None: the whole frame, centred)."""
    h, w = shape
    if box is None:
        cx, cy, side = w / 2, h / 2, max(h, w)
    else:
        x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = max(max(x1 - x0, y1 - y0) * (1 + 2 * margin), 0.1 * min(h, w))
    s = max(1, int(round(side)))
    xa, ya = int(round(cx - s / 2)), int(round(cy - s / 2))
    return [xa, ya, xa + s, ya + s]


def crop_to_box(gray: np.ndarray, box: list[float] | None, margin: float) -> np.ndarray:
    """The square cut of an HxW frame the crop contract describes (black outside the frame)."""
    h, w = gray.shape
    xa, ya, xe, _ = crop_square_px(gray.shape, box, margin)
    s = xe - xa
    out = np.zeros((s, s), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(xa, 0), max(ya, 0), min(xa + s, w), min(ya + s, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - ya:sy1 - ya, sx0 - xa:sx1 - xa] = gray[sy0:sy1, sx0:sx1]
    return out
