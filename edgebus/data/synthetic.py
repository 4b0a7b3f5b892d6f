"""A synthetic stand-in for BrEaST-Lesions_USG, in exactly its layout, for tests and demos.

The real set cannot be redistributed, so CI and first-time users need something that reads,
trains and segments the same way. Images are speckled layered tissue with one hypoechoic lesion
that differs by class the way radiologists tell them apart (BI-RADS lexicon):
benign = oval, wider-than-tall, circumscribed, sometimes posterior enhancement;
malignant = irregular/spiculated, taller-than-wide, posterior acoustic shadowing.
Everything comes from np.random.default_rng(seed); the xlsx is written with fixed timestamps
so the same seed gives byte-identical files (and the same fingerprint).
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgebus.data.breast import IMAGES_DIR, SHEET_GLOB
from edgebus.core.errors import EdgebusError
from edgebus.core.io import staging

SHEET_NAME = "BrEaST-Lesions-USG-clinical-data-synthetic.xlsx"
COLUMNS = (
    "CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", "Age",
    "Tissue_composition", "Signs", "Symptoms", "Shape", "Margin", "Echogenicity", "Posterior_features",
    "Halo", "Calcifications", "Skin_thickening", "Interpretation", "BIRADS", "Verification", "Diagnosis",
    "Classification",
)
_FIXED_TIME = (2023, 12, 15, 0, 0, 0)


def _smooth_field(rng, h: int, w: int, grid: tuple[int, int], lo: float, hi: float) -> np.ndarray:
    """Low-frequency random field in [lo, hi]: a small random grid upsampled bilinearly."""
    g = rng.uniform(0, 255, size=grid).astype(np.uint8)
    a = np.asarray(Image.fromarray(g, "L").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    return lo + (hi - lo) * a


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _tissue(rng, h: int, w: int) -> np.ndarray:
    """Mean echo level of breast layers: skin line, fat, fibroglandular, muscle, dark chest wall."""
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]

    def wavy(base, amp):
        return base + amp * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * x + rng.uniform(0, 1)))

    fat_top, gland_top = wavy(rng.uniform(0.05, 0.08), 0.01), wavy(rng.uniform(0.22, 0.32), 0.04)
    gland_bot, chest = wavy(rng.uniform(0.66, 0.74), 0.04), wavy(rng.uniform(0.86, 0.92), 0.02)
    fat, gland, muscle = rng.uniform(0.28, 0.36), rng.uniform(0.52, 0.64), rng.uniform(0.34, 0.42)
    t = fat * _sigmoid((y - fat_top) / 0.01)
    t = t + (gland - fat) * _sigmoid((y - gland_top) / 0.02)
    t = t + (muscle - gland) * _sigmoid((y - gland_bot) / 0.02)
    t = t * (1 - 0.8 * _sigmoid((y - chest) / 0.015))  # darker band at the bottom
    t = t + 0.8 * np.exp(-((y - 0.025) / 0.01) ** 2)  # bright skin line
    t = t * _smooth_field(rng, h, w, (4, 5), 0.8, 1.15)
    # Echogenic strands (Cooper's ligaments, fibrous septa): thin, gently curved, mostly sideways.
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    for _ in range(rng.integers(5, 10)):
        x0 = rng.uniform(-0.2, 0.8) * w
        x1 = x0 + rng.uniform(0.25, 0.6) * w
        y0 = rng.uniform(0.1, 0.8) * h
        slope, bend, phase = rng.uniform(-0.15, 0.15), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        curve = y0 + slope * (xs - x0) + bend * np.sin(xs / w * 2 * np.pi + phase)
        along = _sigmoid((xs - x0) / 4) * _sigmoid((x1 - xs) / 4)
        t = t + rng.uniform(0.15, 0.35) * along * np.exp(-(((ys - curve) / rng.uniform(0.8, 1.6)) ** 2))
    return t


def _speckle(rng, h: int, w: int) -> np.ndarray:
    """Multiplicative Rayleigh speckle (mean 1), grains elongated sideways as in real probes."""
    sh, sw = max(h * 4 // 5, 8), max(w * 2 // 3, 8)
    amp = np.hypot(rng.standard_normal((sh, sw)), rng.standard_normal((sh, sw))).astype(np.float32)
    amp = amp / amp.mean()
    img = Image.fromarray(np.clip(amp * 64, 0, 255).astype(np.uint8), "L").resize((w, h), Image.BILINEAR)
    s = np.asarray(img, dtype=np.float32) / 64.0
    return s / s.mean()


def _lesion(rng, h: int, w: int, malignant: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(soft darkness weight in [0, 1], boolean mask, geometry) of one lesion."""
    size = rng.uniform(0.10, 0.30) * w  # the larger extent, in pixels
    ratio = rng.uniform(0.55, 0.80)
    if malignant:
        half_w, half_h = size * ratio / 2, size / 2  # taller-than-wide
    else:
        half_w, half_h = size / 2, size * ratio / 2  # wider-than-tall (parallel to the skin)
    reach = 1.45 if malignant else 1.1  # spicules reach beyond the core
    cx = rng.uniform(max(0.22 * w, half_w * reach + 2), min(0.78 * w, w - half_w * reach - 2))
    top, bottom = max(0.14 * h, half_h * reach + 2), min(0.58 * h, h - half_h * reach - 0.2 * h)
    cy = rng.uniform(top, max(top, bottom))
    tilt = rng.uniform(-0.25, 0.25)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / half_w
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / half_h
    rho, theta = np.hypot(u, v), np.arctan2(v, u)

    radius = np.ones_like(theta)
    if malignant:
        for n in (2, 3, 5, 7):  # angular, irregular outline
            radius += rng.uniform(0.04, 0.12) * np.cos(n * theta + rng.uniform(0, 2 * np.pi))
        for angle in rng.uniform(0, 2 * np.pi, size=rng.integers(6, 12)):  # radial spicules
            d = (theta - angle + np.pi) % (2 * np.pi) - np.pi
            radius += rng.uniform(0.25, 0.45) * np.exp(-((d / rng.uniform(0.05, 0.09)) ** 2))
        edge = 0.08  # indistinct margin
    else:
        radius += rng.uniform(0.0, 0.04) * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))  # gently lobulated
        edge = 0.025  # circumscribed margin
    mask = rho < radius
    weight = _sigmoid((radius - rho) / edge)
    return weight, mask, {"cx": cx, "cy": cy}


def _posterior(h: int, w: int, mask: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of the column of tissue below the lesion (where shadow/enhancement shows)."""
    cols = mask.any(axis=0)
    if not cols.any():
        return np.zeros((h, w), np.float32)
    rows = np.arange(h)[:, None]
    bottom = np.where(cols, np.where(mask, rows, -1).max(axis=0), h).astype(np.float32)
    occupancy = np.convolve(cols.astype(np.float32), np.ones(5, np.float32) / 5, mode="same")
    below = _sigmoid((rows - bottom[None, :]) / 2.0)
    return (below * occupancy[None, :]).astype(np.float32)


def _cyst(rng, h: int, w: int, avoid_x: float) -> np.ndarray:
    """A small round anechoic finding on the other side of the image (an 'other' mask)."""
    r = rng.uniform(0.03, 0.05) * w
    cx = 0.15 * w + r if avoid_x > w / 2 else 0.85 * w - r
    cy = rng.uniform(0.18, 0.26) * h + r
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r


def _transparent(rng, h: int, w: int, kind: int) -> np.ndarray:
    """Where alpha is 0, as outside the scan area of some real frames (top corners or a side strip)."""
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        leg_x, leg_y = 0.12 * w, 0.18 * h
        return (xx / leg_x + yy / leg_y < 1) | ((w - 1 - xx) / leg_x + yy / leg_y < 1)
    strip = int(rng.uniform(0.04, 0.08) * w)
    return xx < strip if rng.random() < 0.5 else xx >= w - strip


def _rgba(gray: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([gray, gray, gray, alpha]).astype(np.uint8), "RGBA")


def _mask_rgba(mask: np.ndarray) -> Image.Image:
    """Like the real masks: white opaque lesion on transparent black."""
    v = mask.astype(np.uint8) * 255
    return Image.fromarray(np.dstack([v, v, v, v]), "RGBA")


def _row(rng, case_id: int, image: str, tumor: str | None, other: str | None, cls: str, enhancement: bool) -> dict:
    pick = lambda *xs: xs[rng.integers(len(xs))]  # noqa: E731
    row = {
        "CaseID": case_id, "Image_filename": image, "Mask_tumor_filename": tumor, "Mask_other_filename": other,
        "Pixel_size": pick(0.007812, 0.007812, 0.007525, 0.006462, 0.008929),
        "Age": "not available" if rng.random() < 0.15 else int(rng.integers(25, 86)),
        "Tissue_composition": pick("heterogeneous: predominantly fat", "heterogeneous: predominantly fibroglandular",
                                   "homogeneous: fibroglandular", "homogeneous: fat", "not available"),
        "Signs": pick("no", "no", "palpable", "not available"),
        "Symptoms": pick("no", "no", "not available", "family history of breast/ovarian cancer"),
        "Skin_thickening": "no",
        "Classification": cls,
    }
    if cls == "normal":
        na = "not applicable"
        row.update(Shape=na, Margin=na, Echogenicity=na, Posterior_features=na, Halo=na, Calcifications=na,
                   Interpretation=na, BIRADS=1, Verification=na, Diagnosis=na)
    elif cls == "benign":
        row.update(Shape=pick("oval", "oval", "round"), Margin="circumscribed", Echogenicity="hypoechoic",
                   Posterior_features="enhancement" if enhancement else "no", Halo=pick("no", "yes"),
                   Calcifications="no", Interpretation=pick("Fibroadenoma", "Dysplasia&Fibroadenoma"),
                   BIRADS=pick(2, 3, 3, "4a"), Verification=pick("confirmed by biopsy", "confirmed by follow-up care"),
                   Diagnosis=pick("Fibroadenoma", "Benign mammary dysplasia", "not applicable"))
    else:
        row.update(Shape="irregular",
                   Margin=pick("not circumscribed - spiculated", "not circumscribed - spiculated&indistinct",
                               "not circumscribed - spiculated&angular&indistinct"),
                   Echogenicity=pick("hypoechoic", "heterogeneous"), Posterior_features="shadowing",
                   Halo=pick("no", "yes"), Calcifications=pick("no", "no", "in a mass"),
                   Interpretation="Suspicion of malignancy", BIRADS=pick("4b", "4c", 5, 5),
                   Verification="confirmed by biopsy",
                   Diagnosis=pick("Invasive carcinoma of no special type (NST)", "Invasive lobular carcinoma"))
    return {c: row[c] for c in COLUMNS}


def _write_xlsx(path: Path, rows: list[dict]) -> None:
    """Write the sheet, then pin the zip and document timestamps so equal rows give equal bytes."""
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(rows, columns=list(COLUMNS)).to_excel(buf, index=False, engine="openpyxl")
    stamp = "%04d-%02d-%02dT%02d:%02d:%02dZ" % _FIXED_TIME
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*", rb"\g<1>" + stamp.encode(), data)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME), data, zipfile.ZIP_DEFLATED)
    path.write_bytes(out.getvalue())


def _frame_size(out: Path, image_size, n_cases: int, malignant_fraction: float, n_normal: int) -> tuple[int, int]:
    """(H, W) around which the frames vary, once the request is checked: before anything is written, a set
    that could not be made, or would land beside another sheet, is refused."""
    h0, w0 = int(image_size[0]), int(image_size[1])
    if min(h0, w0) < 32:
        raise EdgebusError(f"synthetic: image_size {image_size} is too small; use at least 32x32 pixels")
    if not 0 <= n_normal < n_cases:
        raise EdgebusError(f"synthetic: need 0 <= n_normal ({n_normal}) < n_cases ({n_cases})")
    if not 0 <= malignant_fraction <= 1:
        raise EdgebusError(f"synthetic: malignant_fraction {malignant_fraction} must be in [0, 1]")
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another output folder")
    others = [p.name for p in out.glob(SHEET_GLOB) if p.name != SHEET_NAME] if out.is_dir() else []
    if others:
        raise EdgebusError(f"{out}: already holds another sheet ({others[0]}); pick an empty output folder")
    return h0, w0


def _classes(rng, n_cases: int, malignant_fraction: float, n_normal: int) -> list[str]:
    """Each case's class, in shuffled order."""
    n_lesion = n_cases - n_normal
    n_malignant = int(round(n_lesion * malignant_fraction))
    classes = ["malignant"] * n_malignant + ["benign"] * (n_lesion - n_malignant) + ["normal"] * n_normal
    return [classes[i] for i in rng.permutation(n_cases)]


def _add_lesion(rng, intensity: np.ndarray, h: int, w: int, malignant: bool, images: Path, stem: str) -> tuple:
    """(intensity with the lesion and what shows behind it, tumor mask file, other mask file or None,
    posterior enhancement): the lesion's masks written beside the image."""
    weight, mask, geo = _lesion(rng, h, w, malignant)
    behind = _posterior(h, w, mask)
    enhancement = False
    if malignant:
        intensity = intensity * (1 - rng.uniform(0.35, 0.5) * behind)  # acoustic shadow
    elif rng.random() < 0.5:
        enhancement = True
        intensity = intensity * (1 + rng.uniform(0.2, 0.4) * behind)
    inside = rng.uniform(0.05, 0.12) * (_smooth_field(rng, h, w, (6, 6), 0.7, 1.4) if malignant else 1.0)
    intensity = intensity * (1 - weight) + inside * weight
    tumor_name, other_name = f"{stem}_tumor.png", None
    _mask_rgba(mask).save(images / tumor_name, compress_level=1)
    if rng.random() < 0.06:
        cyst = _cyst(rng, h, w, geo["cx"]) & ~mask
        intensity = np.where(cyst, 0.03, intensity)
        other_name = f"{stem}_other1.png"
        _mask_rgba(cyst).save(images / other_name, compress_level=1)
    return intensity, tumor_name, other_name, enhancement


def _write_case(rng, images: Path, i: int, cls: str, h0: int, w0: int, digits: int) -> dict:
    """Case i + 1: its frame (and masks) written to `images`; its sheet row."""
    case_id = i + 1
    stem = f"case{case_id:0{digits}d}"
    h = int(round(h0 * rng.uniform(0.92, 1.08)))
    w = int(round(w0 * rng.uniform(0.92, 1.08)))
    intensity = _tissue(rng, h, w)
    tumor_name = other_name = None
    enhancement = False
    if cls != "normal":
        intensity, tumor_name, other_name, enhancement = _add_lesion(rng, intensity, h, w, cls == "malignant",
                                                                     images, stem)
    pixels = intensity * _speckle(rng, h, w) ** 0.55
    gray = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    alpha = np.full((h, w), 255, np.uint8)
    if i % 9 == 4:  # a few frames with transparent areas, as in the real set
        alpha[_transparent(rng, h, w, (i // 9) % 2)] = 0
    _rgba(gray, alpha).save(images / f"{stem}.png", compress_level=1)
    return _row(rng, case_id, f"{stem}.png", tumor_name, other_name, cls, enhancement)


def make_synthetic(out_dir, n_cases: int = 120, image_size: tuple[int, int] = (192, 224),
                   malignant_fraction: float = 0.4, n_normal: int = 2, seed: int = 0, _in_place: bool = False) -> Path:
    """Write a BrEaST-layout data set of n_cases rows (n_normal of them normal) into out_dir; returns out_dir.

    Of the n_cases - n_normal lesion cases, round(that * malignant_fraction) are malignant.
    image_size is the (H, W) around which each case's size varies by a few percent.
    """
    out = Path(out_dir)
    h0, w0 = _frame_size(out, image_size, n_cases, malignant_fraction, n_normal)
    if not _in_place and not (out.is_dir() and any(out.iterdir())):  # a new set: built aside, renamed into place whole
        with staging(out) as tmp:  # so a full disk or a kill leaves no half set to block the same command again
            make_synthetic(tmp, n_cases, image_size, malignant_fraction, n_normal, seed, _in_place=True)
        return out
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    classes = _classes(rng, n_cases, malignant_fraction, n_normal)
    digits = max(3, len(str(n_cases)))
    rows = [_write_case(rng, images, i, cls, h0, w0, digits) for i, cls in enumerate(classes)]
    _write_xlsx(out / SHEET_NAME, rows)
    return out
