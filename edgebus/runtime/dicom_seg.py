"""Lesion masks out as DICOM Segmentation objects (`edgebus predict --dicom-seg`, highdicom, in the
dicom extra), so a PACS viewer overlays them on the source image.

A SEG references its source image by SOP Instance UID, with one binary segment ("Mass", SNOMED CT
4147007), written even when the mask is empty (the model looked and found nothing: that is a
result too). Single-frame images only: a multi-frame ultrasound loop has no Frame of Reference,
and highdicom 0.28 cannot index SEG frames without one (highdicom issue #284), so a loop's masks
stay PNGs and the run says so. edgebus cuts a frame to its B-mode region
before it predicts, so each mask is pasted back at that region's place in the full frame. The
segment is marked AUTOMATIC, with the segmenter file and its sha256 as the algorithm, so a viewer
shows that it is the model's outline and not a radiologist's.

`read_seg_mask` reads the mask of one source frame back from a SEG file (edgebus's own, or a
radiologist's corrected copy), which `edgebus evaluate --format dicom` scores against.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write


def _highdicom(what: str = "writing or reading DICOM SEG"):
    try:
        import highdicom
    except ImportError:
        raise EdgebusError(f"{what} needs highdicom; pip install 'edgebus[dicom]'") from None
    return highdicom


def save_referencing(source: Path, build, what: str, needs: str, out) -> Path:
    """Build a DICOM object that references `source` (build()) and write it atomically to `out`; a source
    header without what it needs (study, series, patient) is one line, not a traceback."""
    try:
        obj = build()
    except (AttributeError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise EdgebusError(f"{source}: a {what} cannot reference it ({first}); its header lacks what {needs} "
                           "needs (study, series, patient)") from None
    buf = io.BytesIO()
    obj.save_as(buf)
    return atomic_write(out, buf.getvalue())


def full_frame_mask(mask: np.ndarray, region: list[int] | None, rows: int, cols: int) -> np.ndarray:
    """A mask of the B-mode region (what the model saw) placed in a rows x cols zero frame."""
    out = np.zeros((rows, cols), bool)
    if region is None:
        if mask.shape != (rows, cols):
            raise EdgebusError(f"mask {mask.shape} does not match the {rows}x{cols} frame it came from")
        return mask.astype(bool)
    x0, y0 = max(region[0], 0), max(region[1], 0)
    h, w = mask.shape
    out[y0:y0 + h, x0:x0 + w] = mask[:rows - y0, :cols - x0].astype(bool)
    return out


def write_seg(source: str | Path, masks: dict[int, np.ndarray], region: list[int] | None, out: str | Path,
              algorithm: dict) -> Path:
    """Write a DICOM SEG of `masks` ({1-based frame number: region-sized 0/1 mask}) referencing
    `source`, atomically, to `out`. algorithm: {"name", "version"} of the segmenter."""
    hd = _highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    source = Path(source)
    ds = pydicom.dcmread(source, stop_before_pixels=True)  # the header is all a SEG needs
    rows, cols = int(ds.Rows), int(ds.Columns)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n > 1 and "FrameOfReferenceUID" not in ds:
        raise EdgebusError(f"{source}: a {n}-frame loop without a Frame of Reference; highdicom writes a SEG of "
                           "single-frame ultrasound only (its issue #284), so this loop's masks are PNGs in masks/")
    missing = sorted(set(range(1, n + 1)) - set(masks))
    if missing:
        raise EdgebusError(f"{source}: no mask for frame(s) {missing[:5]}; a SEG covers every frame of its source")
    pixels = np.stack([full_frame_mask(masks[i], region, rows, cols) for i in range(1, n + 1)])
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=str(algorithm["name"])[:64], version=str(algorithm["version"])[:64],
            family=codes.DCM.ArtificialIntelligence))
    return save_referencing(source, lambda: _segmentation(hd, ds, pixels if n > 1 else pixels[0], description),
                            "DICOM SEG", "a Segmentation", out)


def _segmentation(hd, ds, pixels, description):
    from edgebus import __version__

    return hd.seg.Segmentation(
        source_images=[ds], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=9100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="edgebus", manufacturer_model_name="edgebus LesionPipeline", software_versions=__version__,
        device_serial_number="none", series_description="edgebus lesion mask (automatic, not reviewed)",
        omit_empty_frames=False)


def read_seg_mask(seg_path: str | Path, source_uid: str) -> np.ndarray:
    """The full-frame 0/1 mask that a SEG file gives the single-frame source image `source_uid`
    (all its segments merged)."""
    hd = _highdicom()
    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as e:  # not a SEG, truncated, unreadable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise EdgebusError(f"{seg_path}: not a readable DICOM Segmentation ({first}); replace it or give a PNG mask") from None
    refs = {uid for _, _, uid in seg.get_source_image_uids()}
    if source_uid not in refs:
        raise EdgebusError(f"{seg_path}: does not reference the image {source_uid}; pair each image with its own SEG")
    try:
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source_uid], combine_segments=True,
                                                skip_overlap_checks=True)
    except (ValueError, KeyError, IndexError) as e:
        raise EdgebusError(f"{seg_path}: has no mask for {source_uid} ({str(e)[:120]})") from None
    return (np.asarray(arr)[0] > 0).astype(np.uint8)
