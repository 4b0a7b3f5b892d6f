"""Pixel sizes a breast-ultrasound frame can have, and what a wrong unit looks like.

Linear-array breast probes image 3-6 cm deep on 300-1000 pixel rows: 0.03-0.2 mm per pixel (BrEaST:
0.05-0.12). PIXEL_MM_RANGE is wider on purpose (a zoomed or a very coarse frame still passes); a value
outside it is a wrong unit, not a frame, and every lesion area in mm^2 computed from it would mislead.
"""

from __future__ import annotations

import math

PIXEL_MM_RANGE = (0.01, 1.0)  # mm per pixel accepted for breast ultrasound


def _within(x: float) -> bool:
    return PIXEL_MM_RANGE[0] <= x <= PIXEL_MM_RANGE[1]


def pixel_size_problem(mm, where: str = "pixel size") -> str | None:
    """None for a plausible mm-per-pixel value, else one line that says which unit was probably meant."""
    lo, hi = PIXEL_MM_RANGE
    try:
        x = float(mm)
    except (TypeError, ValueError):
        return f"{where} {mm!r}: not a number of mm per pixel"
    if not (math.isfinite(x) and x > 0):
        return f"{where} {mm!r}: must be a positive number of mm per pixel"
    if _within(x):
        return None
    guesses = []
    if x < lo and _within(x * 10):
        guesses.append(f"centimetres per pixel (as BrEaST's sheet lists it): give {x * 10:.4g}")
    if x > hi and _within(1 / x):
        guesses.append(f"pixels per mm: give {1 / x:.4g}")
    if x > hi and _within(x / 1000):
        guesses.append(f"micrometres per pixel: give {x / 1000:.4g}")
    hint = "; probably " + ", or ".join(guesses) if guesses else ""
    return f"{where} {x:g} mm per pixel is outside {lo:g}-{hi:g}, the range of breast ultrasound{hint}"
