"""The one preprocessing path shared by training, export calibration, benchmarks and the cart runtime.

An ultrasound frame becomes: alpha composited over black -> 8-bit grayscale -> bilinear resize to
(H, W) -> gray replicated to C channels -> float32 in [0, 1]. Models normalise further inside their
own graph, so an int8 model's uint8 input is simply the resized pixel value (scale 1/255, zero 0).
The parameters are written into every manifest and exported model as the "preprocessing contract".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgebus.errors import EdgebusError

PREPROCESS_VERSION = 1


def preprocess_contract(size: int | tuple[int, int], channels: int = 3) -> dict:
    h, w = (size, size) if isinstance(size, int) else size
    return {
        "version": PREPROCESS_VERSION,
        "size": [int(h), int(w)],
        "channels": int(channels),
        "alpha": "composite-over-black",
        "color": "grayscale (PIL 'L')",
        "resize": "bilinear",
        "range": [0.0, 1.0],
        "layout": "NHWC",
    }


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
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
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


def resize_gray(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(gray, "L").resize((w, h), Image.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    m = Image.fromarray((mask > 0).astype(np.uint8) * 255, "L").resize((w, h), Image.NEAREST)
    return (np.asarray(m) > 127).astype(np.uint8)


def to_uint8_input(gray: np.ndarray, contract: dict) -> np.ndarray:
    """HxW uint8 grayscale -> HxWxC uint8 at the contract's size (what a uint8 int8-model takes)."""
    g = resize_gray(gray, tuple(contract["size"]))
    return np.repeat(g[..., None], contract["channels"], axis=-1)


def to_model_input(gray: np.ndarray, contract: dict) -> np.ndarray:
    """HxW uint8 grayscale -> HxWxC float32 in [0, 1] (what float models take)."""
    return to_uint8_input(gray, contract).astype(np.float32) / 255.0
