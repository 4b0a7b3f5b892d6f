"""Ultrasound frames in: a file or a numpy / PIL frame becomes uint8 HxW grayscale through the
shared preprocessing (edgebus.data.preprocess), with a clear one-line error for a bad one."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgebus.core.errors import EdgebusError
from edgebus.data.preprocess import _to_gray

MAX_FRAME_PIXELS = 50_000_000  # refuse bigger frames before decoding them (about 7000 x 7000)
# Pillow modes a frame may have; 16-bit gray is rescaled to 8 bits by the shared preprocessing.
_FRAME_MODES = {"L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                "I;16", "I;16B", "I;16L", "I;16N"}
_MODE_WORDS = {"1": "1-bit black-and-white", "F": "32-bit float", "I": "32-bit integer"}


def _check_frame(where, w: int, h: int, mode: str, fmt: str | None, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise EdgebusError(f"{where}: empty image ({w}x{h} pixels); replace or remove the file")
    if w * h > max_pixels:
        raise EdgebusError(f"{where}: image too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit "
                           f"{max_pixels / 1e6:.0f} Mpx); pass ultrasound frames, not a mosaic or a corrupt header")
    if mode == "I" and fmt == "PNG":  # older Pillow opens 16-bit gray PNGs as "I"
        return
    if mode not in _FRAME_MODES:
        words = _MODE_WORDS.get(mode, f"mode {mode}")
        raise EdgebusError(f"{where}: unsupported bit depth ({words} image); save the frame as 8-bit grayscale "
                           "or RGB(A) PNG/JPEG (16-bit grayscale is accepted)")


def load_frame(path: str | Path, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """A frame file as uint8 HxW grayscale, with a clear EdgebusError for a bad one: missing, not an
    image, empty, wrong bit depth, or too large (checked from the header, before decoding)."""
    path = Path(path)
    if path.is_dir():
        raise EdgebusError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise EdgebusError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise EdgebusError(f"{path}: empty file (0 bytes); replace or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as e:
        raise EdgebusError(f"{path}: image too large ({e}); pass ultrasound frames only") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EdgebusError(f"{path}: not a readable image ({e}); replace or remove the file") from None
    with im:  # opened once: checked from its header, then decoded
        _check_frame(path, im.width, im.height, im.mode, im.format, max_pixels)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:  # a truncated or corrupt image body
            raise EdgebusError(f"{path}: not a readable image ({e}); replace or remove the file") from None
        return np.asarray(_to_gray(im), dtype=np.uint8)  # the shared preprocessing: alpha over black -> 8-bit gray


def gray_from_array(frame, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """A numpy frame (HxW uint8/uint16 gray, HxWx3 RGB or HxWx4 RGBA uint8) or PIL image -> uint8 HxW gray."""
    if isinstance(frame, Image.Image):
        _check_frame("frame", frame.width, frame.height, frame.mode, frame.format, max_pixels)
        return np.asarray(_to_gray(frame), dtype=np.uint8)
    a = np.asarray(frame)
    ok = (a.ndim == 2 and a.dtype in (np.uint8, np.uint16)) or (a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8)
    if not ok:
        raise EdgebusError(f"frame: array of shape {a.shape} and dtype {a.dtype} is not a frame; pass HxW uint8 "
                           "(or uint16) grayscale, or HxWx3 / HxWx4 uint8 RGB(A)")
    h, w = a.shape[:2]
    _check_frame("frame", w, h, "L", None, max_pixels)
    if a.ndim == 2 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        im = Image.frombytes("I;16", (w, h), np.ascontiguousarray(a, dtype="<u2").tobytes())
    else:
        im = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(_to_gray(im), dtype=np.uint8)


def printable(text: str) -> str:
    """`text` as valid UTF-8 for a log line or predictions.csv: a file name that is not UTF-8 on disk
    (POSIX names are bytes: b"caf\\xe9.png" is os.fsdecode'd, surrogateescape, to "caf\\udce9.png") shows
    its odd bytes as backslash escapes, "caf\\xe9.png". The JSON files (predictions.jsonl, summary.json)
    keep the exact name instead, as JSON escapes ("caf\\udce9.png" in Python; os.fsencode gives the bytes
    back), so a resumed run matches its frames; overlay and mask PNGs are named with the frame's own bytes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name holds
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
