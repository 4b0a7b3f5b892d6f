"""Overlay images for the cart: the frame in gray, the lesion contour, its box and the label.

numpy + Pillow only (the core install): the contour is the mask minus its 4-neighbour erosion,
made with array shifts, so no scipy or OpenCV is needed on the device.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write
from edgebus.runtime.cautions import overlay_line

CONTOUR_RGB = (255, 0, 0)
BOX_RGB = (255, 255, 0)
CROP_RGB = (0, 200, 255)  # the square a lesion-crop classifier saw
TEXT_RGB = {"malignant": (255, 80, 80), "benign": (80, 255, 80)}
WARNING_RGB = (255, 165, 0)  # a warning (a synthetic-data model, several candidate regions): orange, bottom-left


def _shifts(p: np.ndarray):
    return p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]


def erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; pixels outside the frame count as background."""
    c, u, d, l, r = _shifts(np.pad(mask.astype(bool), 1, constant_values=False))
    return c & u & d & l & r


def dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary dilation."""
    c, u, d, l, r = _shifts(np.pad(mask.astype(bool), 1, constant_values=False))
    return c | u | d | l | r


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean HxW: the mask's border pixels (mask XOR eroded mask), grown to `thickness` pixels."""
    m = mask.astype(bool)
    edge = m & ~erode(m)
    for _ in range(max(1, int(thickness)) - 1):
        edge = dilate(edge)
    return edge


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font
        return ImageFont.load_default()


def caption(result: dict) -> list[str]:
    """The text lines drawn on an overlay, e.g. ['malignant 0.83', 'lesion 41.2 mm2'], then the short
    form of each warning (a synthetic-data model, several candidate regions)."""
    return _finding_lines(result) + [overlay_line(w) for w in result.get("warnings") or []]


def size_text(result: dict) -> str:
    """", W x H mm" (the lesion's width and anteroposterior height), or "" where the result has no size."""
    w, h = result.get("lesion_width_mm"), result.get("lesion_height_mm")
    return "" if w is None or h is None else f", {w:.1f} x {h:.1f} mm"


def _finding_lines(result: dict) -> list[str]:
    lines = []
    lesion = result.get("lesion")
    if lesion and not lesion["present"]:  # the presence rule decided: no malignancy call to show
        return [f"no lesion found (presence {lesion['score']:.2f} < {lesion['threshold']:.2f})"]
    if result.get("prob_malignant") is not None:
        lines.append(f"{result['label']} {result['prob_malignant']:.2f}")
    for v in (result.get("descriptors") or {}).values():  # the findings the model sees, in the lexicon's words
        if v["probability"] >= 0.5:
            lines.append(v["finding"])
    if result.get("mask_area_px") is not None:
        if not result["mask_area_px"]:
            lines.append("no lesion found")
        elif result.get("mask_area_mm2") is not None:
            lines.append(f"lesion {result['mask_area_mm2']:.1f} mm2{size_text(result)}")
        else:
            lines.append(f"lesion {result['mask_area_px']} px")
    return lines


def _contour_window(mask: np.ndarray, thickness: int):
    """(contour of the mask's window, x0, y0): the contour computed on the mask's bounding box grown by
    `thickness` pixels (the dilation grows the edge by thickness - 1 at most, and a window side that is
    not the frame's has a background line beyond the mask), so it equals contour() on the whole frame
    while costing the lesion's area, not the frame's."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    y0, y1 = max(rows[0] - thickness, 0), min(rows[-1] + 1 + thickness, h)
    x0, x1 = max(cols[0] - thickness, 0), min(cols[-1] + 1 + thickness, w)
    return contour(mask[y0:y1, x0:x1], thickness), int(x0), int(y0)


def render_overlay(gray: np.ndarray, result: dict, mask: np.ndarray | None = None, box: bool = True) -> Image.Image:
    """An RGB image of the frame's size: gray frame, red lesion contour, yellow box, the square a
    lesion-crop classifier classified (cyan), label text.

    `gray` is the frame as the pipeline decoded it (LesionPipeline.predict_with_frame returns it): it
    is drawn on as uint8, never decoded again. The gray-to-RGB step and the contour paste are Pillow's
    (no HxWx3 numpy copy), and the contour is computed on the lesion's window only.
    `result` is a LesionPipeline.predict dict; `mask` defaults to result['mask'] (frame-sized)."""
    gray = np.asarray(gray, dtype=np.uint8)
    h, w = gray.shape
    img = Image.fromarray(gray, "L").convert("RGB")
    mask = result.get("mask") if mask is None else mask
    scale = max(h, w)
    if mask is not None and mask.any():
        if mask.shape != (h, w):
            raise EdgebusError(f"overlay: mask shape {mask.shape} differs from the frame's {(h, w)}")
        edge, x0, y0 = _contour_window(np.asarray(mask), max(1, round(scale / 400)))
        paint = Image.fromarray(edge.astype(np.uint8) * np.uint8(255), "L")  # 255: the contour colour, opaque
        img.paste(CONTOUR_RGB, (x0, y0, x0 + paint.width, y0 + paint.height), paint)
    draw = ImageDraw.Draw(img)
    bbox = result.get("bbox")
    if box and bbox:
        x0, y0, x1, y1 = bbox
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=BOX_RGB, width=1)  # just outside, the contour stays visible
    crop = result.get("crop")
    if box and crop:
        x0, y0, x1, y1 = crop
        draw.rectangle([max(x0, 0), max(y0, 0), min(x1, w) - 1, min(y1, h) - 1], outline=CROP_RGB, width=1)
    font = _font(max(10, round(scale / 30)))
    _text(draw, _finding_lines(result), font, (w, h), TEXT_RGB.get(result.get("label"), (255, 255, 255)), top=True)
    # the warnings along the bottom edge, apart from the findings, so neither hides the lesion's top
    _text(draw, [overlay_line(x) for x in result.get("warnings") or []], font, (w, h), WARNING_RGB, top=False)
    return img


def _text(draw, lines: list[str], font, size, fill, top: bool) -> None:
    """Lines on a black box in the frame's top-left (top) or bottom-left corner."""
    if not lines:
        return
    (w, h), pad, text = size, 2, "\n".join(lines)
    left, t, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font)
    dy = 0 if top else max(0, h - 1 - (bottom + pad))  # the same box, moved down to the bottom edge
    draw.rectangle([0, dy, min(w - 1, right + pad), min(h - 1, dy + bottom + pad)], fill=(0, 0, 0))
    draw.multiline_text((pad, pad + dy), text, font=font, fill=fill)


PNG_COMPRESS_LEVEL = 1
"""zlib level of overlay and mask PNGs: 1, the fastest level that still compresses. render_overlay +
save_png on 20 BrEaST frames (median ms a frame, time.perf_counter, a 2-core VM): Pillow's default
level 6 took 56.5 ms for 210 KB files, level 1 takes 15.5 ms for 250 KB (the PNG encoding alone 53.9 ->
12.6 ms); level 0 (stored: 6.0 ms to encode) would write 850 KB a frame to the cart's disk."""


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def save_png(path: str | Path, img: Image.Image) -> Path:
    """Write an image as PNG atomically (never a half-written file beside finished ones)."""
    try:
        return atomic_write(path, png_bytes(img))
    except OSError as e:
        raise EdgebusError(f"{path}: cannot write ({e.strerror or e}); check the output folder") from None
