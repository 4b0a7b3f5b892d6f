"""Ultrasound DICOM into the cart (issue 14): pydicom-data's real ultrasound files, and multi-frame
files written with pydicom from BrEaST frames with proper ultrasound region tags."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")

IMAGES = "BrEaST-Lesions_USG-images_and_masks"


def dicom_testdata(name):
    pytest.importorskip("data_store", reason="pydicom-data (the dev extra) is not installed")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)  # from the installed pydicom-data; nothing is downloaded
    assert path, f"{name} is not in pydicom-data"
    return path


def write_us_dicom(path, frames, pixel_size_cm=None, pad=(30, 50), extra_region=False, modality="US", single=False):
    """A multi-frame MONOCHROME2 ultrasound DICOM of `frames` (HxW uint8 each), placed at offset
    `pad` (rows, cols) in a larger black frame, with a 2D tissue region around them (in cm);
    single: one frame as an Ultrasound Image (not multi-frame) object."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, generate_uid

    h, w = frames[0].shape
    top, left = pad
    canvas = np.zeros((len(frames), h + 2 * top, w + 2 * left), np.uint8)
    for i, f in enumerate(frames):
        canvas[i, top:top + h, left:left + w] = f
    canvas[:, 5:15, 5:60] = 255  # burned-in text outside the tissue region
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage if single else UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "EB0001", "Test^Phantom", "20261202", "120000", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.PatientSex, ds.PatientBirthDate = "1", 1, 1, "F", ""
    ds.ReferringPhysicianName = ""
    ds.Rows, ds.Columns = canvas.shape[-2:]
    if single:
        assert len(frames) == 1
        canvas = canvas[0]
    else:
        ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    regions = []

    def region(x0, y0, x1, y1, data_type, dx):
        r = Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, data_type, 0
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
        r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
        r.PhysicalDeltaX = r.PhysicalDeltaY = dx
        return r

    if pixel_size_cm is not None:
        if extra_region:  # a small colour-flow box elsewhere, listed first
            regions.append(region(0, 0, 20, 20, 2, pixel_size_cm))
        regions.append(region(left, top, left + w - 1, top + h - 1, 1, pixel_size_cm))
        ds.SequenceOfUltrasoundRegions = regions
    ds.PixelData = canvas.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm"])
def test_real_ultrasound_dicom_files_run_through_the_cart(name, cls_run, seg_run, tmp_path):
    from edgebus.runtime import LesionPipeline

    path = dicom_testdata(name)
    pipe = LesionPipeline(cls_run / "model_int8.tflite", seg_run / "model_int8.tflite")
    res = pipe.predict(path)
    assert res["error"] is None, res["error"]
    assert (res["width"], res["height"]) == (640, 480) and res["frame"] == 1
    assert res["sop_instance_uid"] == str(pydicom.dcmread(path).SOPInstanceUID)
    assert 0 <= res["prob_malignant"] <= 1 and res["mask"].shape == (480, 640)
    assert res["pixel_size_from"] is None and res["mask_area_mm2"] is None  # these files carry no regions


def test_uncompressed_and_jpeg2000_copies_give_the_same_frame():
    from edgebus.runtime.dicom import iter_frames

    a = next(iter_frames(dicom_testdata("US1_UNCR.dcm"))).gray
    b = next(iter_frames(dicom_testdata("US1_J2KR.dcm"))).gray
    assert a.shape == b.shape == (480, 640)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # lossless J2K (reversible colour): same picture


def _breast_frames(root, n):
    imgs = sorted(p for p in (root / IMAGES).glob("case*.png") if "_" not in p.stem)[:n]
    from edgebus.data.preprocess import load_gray

    return imgs, [load_gray(p) for p in imgs]


def test_multi_frame_dicom_gives_a_row_per_frame_and_the_sheets_mm2(real_breast_dir, cls_run, seg_run, tmp_path):
    from edgebus.data.breast import breast_pixel_sizes

    imgs, grays = _breast_frames(real_breast_dir, 1)
    px_mm = breast_pixel_sizes(real_breast_dir)[imgs[0].name]
    loop = [grays[0], np.clip(grays[0].astype(int) + 10, 0, 255).astype(np.uint8), grays[0]]
    dcm = write_us_dicom(tmp_path / "loop.dcm", loop, pixel_size_cm=px_mm / 10, extra_region=True)
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    Image.fromarray(grays[0]).save(png_dir / imgs[0].name)
    common = ["--classifier", cls_run / "model_int8.tflite", "--segmenter", seg_run / "model_int8.tflite"]
    r = cli("predict", dcm, *common, "--out", tmp_path / "d")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "d" / "predictions.jsonl").read_text().splitlines()]
    assert [row["frame"] for row in rows] == [1, 2, 3] and len({row["file"] for row in rows}) == 3
    assert all(row["pixel_size_from"] == "dicom regions" and "B-mode region" in row["note"] for row in rows)
    assert (rows[0]["width"], rows[0]["height"]) == grays[0].shape[::-1]  # cut to the tissue region
    r = cli("predict", png_dir, *common, "--pixel-size", px_mm, "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    png_row = json.loads((tmp_path / "p" / "predictions.jsonl").read_text().splitlines()[0])
    assert rows[0]["mask_area_px"] == png_row["mask_area_px"] == rows[2]["mask_area_px"]
    assert rows[0]["mask_area_mm2"] == pytest.approx(png_row["mask_area_mm2"], rel=1e-6)
    assert rows[0]["prob_malignant"] == png_row["prob_malignant"]
    loops = json.loads((tmp_path / "d" / "summary.json").read_text())["loops"]
    s = loops[str(dcm)]
    assert s["frames"] == 3 and s["mean_prob_malignant"] == pytest.approx(np.mean([r["prob_malignant"] for r in rows]), abs=1e-6)
    assert s["largest_lesion_frame"] in (1, 2, 3) or s["largest_lesion_area_px"] == 0


def test_frames_are_decoded_one_at_a_time(tmp_path):
    from edgebus.runtime import dicom

    loop = [np.full((40, 60), i * 10, np.uint8) for i in range(20)]
    path = write_us_dicom(tmp_path / "long.dcm", loop, pixel_size_cm=0.01)
    it = dicom.iter_frames(path)
    first = next(it)
    assert first.number == 1 and first.frames == 20 and first.gray.shape == (40, 60)
    assert first.pixel_size_mm == pytest.approx(0.1)
    assert [f.gray[0, 0] for f in it] == [i * 10 for i in range(1, 20)]


def test_bad_dicom_files_get_one_line(tmp_path, cls_run):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    model = cls_run / "model_int8.tflite"
    mr = dicom_testdata("emri_small.dcm")
    r = cli("predict", mr, "--classifier", model, "--out", tmp_path / "a")
    assert r.exit_code == 1 and "not an ultrasound image (Modality MR)" in r.output, r.output
    # an ultrasound object without pixels (say a structured report's sibling)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.Modality, ds.SOPInstanceUID = meta, "US", meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    r = cli("predict", tmp_path / "empty.dcm", "--classifier", model, "--out", tmp_path / "b")
    assert r.exit_code == 1 and "holds no pixel data" in r.output, r.output
    full = write_us_dicom(tmp_path / "full.dcm", [np.full((40, 60), 90, np.uint8)] * 3)
    data = full.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:len(data) - 3000])
    r = cli("predict", tmp_path / "cut.dcm", "--classifier", model, "--out", tmp_path / "c")
    assert r.exit_code == 1 and "cut.dcm" in r.output and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if "error" in line]
    assert len(errors) == 1, r.output


def test_pixels_that_are_not_square_are_said_to_be():
    """Areas take dx * dy; a width or height in mm takes their mean, so the frame's note says so."""
    from pydicom.dataset import Dataset

    from edgebus.runtime.dicom import tissue_region

    def region(dx, dy):
        r = Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = 10, 20, 209, 159
        r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
        r.PhysicalDeltaX, r.PhysicalDeltaY = dx, dy
        ds = Dataset()
        ds.SequenceOfUltrasoundRegions = [r]
        return tissue_region(ds, "x.dcm")

    box, px, note = region(0.01, 0.02)
    assert box == [10, 20, 210, 160] and px == pytest.approx(10 * (0.01 * 0.02) ** 0.5)
    assert "not square (0.1 x 0.2 mm)" in note
    assert region(0.01, 0.01)[1:] == (pytest.approx(0.1), None)
