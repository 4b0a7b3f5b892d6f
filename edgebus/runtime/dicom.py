"""Ultrasound DICOM frames for the cart (`pip install 'edgebus[dicom]'`: pydicom, with pylibjpeg's
OpenJPEG plugin for JPEG 2000; Pillow decodes baseline JPEG).

A file is opened once and decoded one frame at a time (pydicom.pixels.iter_pixels), so a long cine
loop keeps memory flat. Colour (RGB, YBR_*) and palette frames become RGB, MONOCHROME1 is inverted,
and then every frame goes through the shared preprocessing (`gray_from_array`) as a PNG would.
Where the Sequence of Ultrasound Regions describes a 2D tissue (B-mode) region in centimetres, the
frame is cut to it and its PhysicalDeltaX/Y give the pixel size, so mm^2 needs no --pixel-size.
A malformed header (a B-mode region without a corner, one in centimetres without PhysicalDeltaX/Y,
a NumberOfFrames that is not a whole number) is one EdgebusError naming the file and the attribute:
in a folder run, that file's error row, and the run goes on.
JPEG Lossless and JPEG-LS need a GPL plugin (pylibjpeg-libjpeg) that edgebus does not install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.runtime.frames import MAX_FRAME_PIXELS, gray_from_array

DICOM_SUFFIXES = (".dcm", ".dicom")
_CM = 3  # PhysicalUnitsX/YDirection code for centimetres
_TISSUE = 1  # RegionDataType: tissue (B-mode)
_2D = 1  # RegionSpatialFormat: 2D


@dataclass
class DicomFrame:
    """One decoded frame: uint8 gray, where it came from, and its physical pixel size."""
    gray: np.ndarray
    number: int  # 1-based, as DICOM counts frames
    frames: int
    sop_instance_uid: str | None
    pixel_size_mm: float | None
    region: list[int] | None  # [x0, y0, x1, y1) of the B-mode region the frame was cut to
    note: str | None


def is_dicom(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401
    except ImportError:
        raise EdgebusError("reading DICOM needs pydicom; pip install 'edgebus[dicom]'") from None
    return pydicom


def _open(path: Path):
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, defer_size="4 KB")  # the header now; large values (the pixels) on access
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError) as e:
        raise EdgebusError(f"{path}: not a readable DICOM file ({str(e).splitlines()[0][:120]}); "
                           "replace or remove it") from None
    modality = str(ds.get("Modality", "") or "")
    if modality != "US":
        raise EdgebusError(f"{path}: not an ultrasound image (Modality {modality or 'missing'}); "
                           "edgebus reads ultrasound DICOM (Modality US) only")
    return ds


def _header_fault(path, what: str) -> EdgebusError:
    return EdgebusError(f"{path}: {what}; fix the file's header (or export it again from the scanner)")


def _number(r, key: str, path, where: str, kind=int, required: bool = True):
    """An ultrasound region's value as a number; one line naming the file and the attribute where it is
    missing (required) or not a number."""
    v = r.get(key, None)
    if v is None or (isinstance(v, str) and not v.strip()):
        if not required:
            return None
        raise _header_fault(path, f"{where} has no {key}")
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise _header_fault(path, f"{where} has {key} {str(v)[:40]!r}, not a number") from None


def tissue_region(ds, path) -> tuple[list[int] | None, float | None, str | None]:
    """(region [x0, y0, x1, y1), mm per pixel, a note) from the Sequence of Ultrasound Regions:
    the largest 2D tissue region; (None, None, None) without usable regions. A B-mode region that
    lacks a corner or, in centimetres, its PhysicalDeltaX/Y is an EdgebusError naming it."""
    regions = list(ds.get("SequenceOfUltrasoundRegions", None) or [])
    tissue, boxes = [], []
    for i, r in enumerate(regions, start=1):
        where = f"ultrasound region {i} of {len(regions)}"
        if (_number(r, "RegionSpatialFormat", path, where, required=False) or 0) != _2D or \
                (_number(r, "RegionDataType", path, where, required=False) or 0) != _TISSUE:
            continue
        x0, y0, x1, y1 = (_number(r, k, path, f"{where} (B-mode)") for k in
                          ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1"))
        if x1 < x0 or y1 < y0:
            raise _header_fault(path, f"{where} (B-mode) is inverted ([{x0}, {y0}] to [{x1}, {y1}])")
        tissue.append((r, where))
        boxes.append([x0, y0, x1 + 1, y1 + 1])
    if not tissue:
        return None, None, ("no B-mode region in its ultrasound regions; the whole frame is used" if regions else None)
    k = max(range(len(boxes)), key=lambda j: (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1]))
    (best, where), box = tissue[k], boxes[k]
    note = f"uses the B-mode region {box} (1 of {len(regions)} regions)" if len(regions) > 1 else None
    px = None
    units = [_number(best, f"PhysicalUnits{a}Direction", path, where, required=False) or 0 for a in "XY"]
    if units == [_CM, _CM]:
        dx, dy = (_number(best, f"PhysicalDelta{a}", path, f"{where} (B-mode, in cm)", float) for a in "XY")
        if np.isfinite(dx) and np.isfinite(dy) and dx > 0 and dy > 0:
            px = 10.0 * float(np.sqrt(dx * dy))  # an area from dx * dy, whichever way the pixel is longer
            if abs(dx - dy) > 0.01 * max(dx, dy):  # a width or height in mm would be off by up to sqrt(dx / dy)
                note = "; ".join(filter(None, [note, f"pixels are not square ({10 * dx:.4g} x {10 * dy:.4g} mm): the "
                                               f"lesion's width and height in mm use their mean, {px:.4g} mm"]))
    return box, px, note


def _to_frame_array(a: np.ndarray, ds) -> np.ndarray:
    """A decoded frame as uint8 RGB or uint8 / uint16 gray, what gray_from_array takes."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        a = apply_color_lut(a, ds)
        if a.dtype != np.uint8:
            a = (a >> 8).astype(np.uint8)
    if a.ndim == 2:
        if a.dtype not in (np.uint8, np.uint16):
            a = np.clip(a, 0, None).astype(np.uint16)
        if photometric == "MONOCHROME1":
            a = np.iinfo(a.dtype).max - a
        return a
    if a.dtype != np.uint8:
        a = (a.astype(np.float64) * 255.0 / max(float(a.max()), 1.0)).round().astype(np.uint8)
    return a


def iter_frames(path: str | Path, max_pixels: int | None = None) -> Iterator[DicomFrame]:
    """The frames of an ultrasound DICOM file, decoded one at a time."""
    path = Path(path)
    ds = _open(path)
    if "PixelData" not in ds:
        raise EdgebusError(f"{path}: the DICOM file holds no pixel data (an image-less object); "
                           "pass the ultrasound image series")
    try:
        raw = ds.get("NumberOfFrames", None)
        try:
            n = 1 if raw is None or str(raw).strip() == "" else int(raw)  # an IS value is an int already
        except (TypeError, ValueError):
            n = -1
        if n < 0:
            raise _header_fault(path, f"NumberOfFrames {str(raw)[:40]!r} is not a whole number of frames")
        n = n or 1
        region, px, note = tissue_region(ds, path)
        uid = str(ds.get("SOPInstanceUID", "")) or None
    except EdgebusError:
        raise
    except Exception as e:  # any other malformed value pydicom reads lazily: the file's fault, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise _header_fault(path, f"cannot read its header ({type(e).__name__}: {first})") from None
    from pydicom.pixels import iter_pixels

    try:
        for i, a in enumerate(iter_pixels(path, as_rgb=True), start=1):
            a = _to_frame_array(a, ds)
            if region is not None:
                x0, y0, x1, y1 = region
                a = a[max(y0, 0):y1, max(x0, 0):x1]
            yield DicomFrame(gray_from_array(a, max_pixels or MAX_FRAME_PIXELS), i, n, uid, px, region, note)
    except EdgebusError:
        raise
    except Exception as e:  # a decoder's error: truncated data, a transfer syntax without a plugin
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise EdgebusError(f"{path}: cannot decode its pixel data ({type(e).__name__}: {first}); "
                           "check the file, or install the decoder it names") from None


def loop_summary(rows: list[dict]) -> dict:
    """A cine loop's summary: its frames, the frame with the largest lesion, the mean probability."""
    ok = [r for r in rows if r.get("error") is None]
    probs = [r["prob_malignant"] for r in ok if r.get("prob_malignant") is not None]
    areas = [(r.get("mask_area_px") or 0, r["frame"]) for r in ok if r.get("mask_area_px") is not None]
    largest = max(areas) if areas else None
    return {"frames": len(rows), "ok": len(ok), "sop_instance_uid": rows[0].get("sop_instance_uid") if rows else None,
            "mean_prob_malignant": round(float(np.mean(probs)), 6) if probs else None,
            "largest_lesion_frame": largest[1] if largest and largest[0] > 0 else None,
            "largest_lesion_area_px": largest[0] if largest else None}
