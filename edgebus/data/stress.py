"""Acquisition changes for the scanner-shift stress benchmark: what another scanner, preset or
operator does to a frame, each at graded strengths, applied to the full-resolution uint8 grayscale
frame BEFORE the one preprocessing path (edgebus.data.preprocess), exactly as a cart would see it.

Every change is deterministic: its random draws come from (seed, change, strength, case id), so a
re-run gives the same images. Geometric changes (zoom, flip, pad) move the lesion mask with the
frame; intensity changes leave it as it is.

| change | strengths | what it models |
|---|---|---|
| gain | x0.7, x1.4 | overall gain / brightness |
| gamma | 0.6, 1.6 | dynamic range / compression curve |
| contrast | x0.6, x1.5 | contrast around the frame mean |
| speckle | 0.15, 0.30 | stronger multiplicative speckle (grain ~2 px) |
| noise | sigma 8, 16 | additive electronic noise (gray levels) |
| blur | 1, 2 | a softer transducer: Gaussian blur, radius x frame width / 256 px |
| lowres | 1/2, 1/4 | lower resolution: down-sampled, then up-sampled back |
| zoom | 0.85, 0.70 | less depth: the top, centred part of the frame rescaled to the full frame |
| flip | 1 | the probe turned round: left-right mirror |
| jpeg | quality 30, 10 | lossy re-compression on export from the scanner |
| pad | 20%, 40% | another frame aspect: black bars left and right |
| marks | 6, 12 | burned-in calipers (+) and text annotations |
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgebus.core.errors import EdgebusError

CHANGES: dict[str, tuple] = {
    "gain": (0.7, 1.4), "gamma": (0.6, 1.6), "contrast": (0.6, 1.5), "speckle": (0.15, 0.3), "noise": (8, 16),
    "blur": (1, 2), "lowres": (0.5, 0.25), "zoom": (0.85, 0.7), "flip": (1,), "jpeg": (30, 10), "pad": (0.2, 0.4),
    "marks": (6, 12),
}
GEOMETRIC = {"zoom", "flip", "pad"}


def conditions() -> list[tuple[str, float]]:
    """Every (change, strength) of the benchmark, in table order."""
    return [(name, s) for name, strengths in CHANGES.items() for s in strengths]


def _rng(seed: int, name: str, strength: float, case_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), int(round(strength * 1000)), int(case_id)])


def _u8(a) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _resize(a: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(a).resize((w, h), resample))


def apply_change(gray: np.ndarray, mask: np.ndarray | None, name: str, strength: float, seed: int = 0,
                 case_id: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(frame, mask) after one acquisition change: uint8 HxW frame, uint8 {0, 1} mask or None."""
    if name not in CHANGES:
        raise EdgebusError(f"unknown stress change '{name}'; choose one of {', '.join(CHANGES)}")
    g = np.asarray(gray, dtype=np.uint8)
    h, w = g.shape
    rng = _rng(seed, name, strength, case_id)
    f = g.astype(np.float64)
    if name == "gain":
        return _u8(f * strength), mask
    if name == "gamma":
        return _u8(255.0 * (f / 255.0) ** strength), mask
    if name == "contrast":
        return _u8(f.mean() + (f - f.mean()) * strength), mask
    if name == "speckle":
        grain = rng.standard_normal(((h + 1) // 2, (w + 1) // 2)).repeat(2, 0).repeat(2, 1)[:h, :w]
        return _u8(f * (1 + strength * grain)), mask
    if name == "noise":
        return _u8(f + strength * rng.standard_normal((h, w))), mask
    if name == "blur":
        return np.asarray(Image.fromarray(g).filter(ImageFilter.GaussianBlur(strength * w / 256))), mask
    if name == "lowres":
        small = (max(1, round(h * strength)), max(1, round(w * strength)))
        return _resize(_resize(g, small, Image.BILINEAR), (h, w), Image.BILINEAR), mask
    if name == "zoom":
        ch, cw = max(1, round(h * strength)), max(1, round(w * strength))
        x0 = (w - cw) // 2  # the near field: from the skin line down, centred
        g2 = _resize(g[:ch, x0:x0 + cw], (h, w), Image.BILINEAR)
        m2 = None if mask is None else _resize(np.asarray(mask, dtype=np.uint8)[:ch, x0:x0 + cw] * 255, (h, w), Image.NEAREST) // 255
        return g2, m2
    if name == "flip":
        return g[:, ::-1].copy(), None if mask is None else np.asarray(mask)[:, ::-1].copy()
    if name == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(g).save(buf, format="JPEG", quality=int(strength))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")), mask
    if name == "pad":
        side = round(w * strength / 2)
        g2 = np.zeros((h, w + 2 * side), dtype=np.uint8)
        g2[:, side:side + w] = g
        if mask is None:
            return g2, None
        m2 = np.zeros_like(g2)
        m2[:, side:side + w] = mask
        return g2, m2
    # marks: calipers and text burned into the pixels, as a scanner's measurement overlay
    im = Image.fromarray(g.copy())
    d = ImageDraw.Draw(im)
    arm = max(3, w // 60)
    for i in range(int(strength)):
        x, y = int(rng.integers(arm, w - arm)), int(rng.integers(arm, h - arm))
        if i % 3 == 2:
            d.text((x, y), f"{rng.uniform(0.2, 4.0):.1f} cm", fill=255)
        else:
            d.line([(x - arm, y), (x + arm, y)], fill=255, width=max(1, w // 300))
            d.line([(x, y - arm), (x, y + arm)], fill=255, width=max(1, w // 300))
    return np.asarray(im), mask
