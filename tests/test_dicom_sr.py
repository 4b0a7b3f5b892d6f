"""DICOM Structured Report out (issue #35): `predict --dicom-sr` writes, per ultrasound DICOM frame, a
Comprehensive 3D SR / TID 1500 report that highdicom reads back with the cart's own numbers: presence,
probability, label, findings, area, the lesion's place (its SEG where one was written, else its box in
the stored frame) and the models' identity; a lesion-free frame says so and makes no malignancy call."""

import json

import numpy as np
import pytest

from tests.conftest import cli
from tests.test_dicom import dicom_testdata, write_us_dicom

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")
hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")

PAD = (30, 50)


def _models(cls_run, seg_run):
    return ["--classifier", cls_run / "model_int8.tflite", "--segmenter", seg_run / "model_int8.tflite"]


def _texts(ds):
    """Every text value of an SR's content tree (the algorithm's parameters among them)."""
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from _texts(item)


def _group(path):
    sr = hd.sr.srread(path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    g = groups[0]
    return sr, {m.name.meaning: (m.value, m.unit.value) for m in g.get_measurements()}, \
        {q.name.meaning: q.value.meaning for q in g.get_qualitative_evaluations()}, g


def test_sr_reads_back_as_the_carts_result(chain_data, cls_run, seg_run, tmp_path):
    from edgebus.data.breast import read_breast
    from edgebus.data.preprocess import load_gray

    case = read_breast(chain_data).lesions()[0]
    gray = load_gray(case.image)
    (tmp_path / "in").mkdir()
    dcm = write_us_dicom(tmp_path / "in" / "still.dcm", [gray], pixel_size_cm=0.01, pad=PAD, single=True)
    out = tmp_path / "out"
    r = cli("predict", tmp_path / "in", *_models(cls_run, seg_run), "--dicom-sr", "--out", out)
    assert r.exit_code == 0, r.output
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert row["dicom_sr"] == str(out / "sr" / "still.sr.dcm")
    assert json.loads((out / "summary.json").read_text())["dicom_sr"] == [row["dicom_sr"]]
    sr, meas, evals, g = _group(row["dicom_sr"])
    src = pydicom.dcmread(dcm, stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"  # a machine's, for a person to read
    assert row["bbox"] is not None and evals["Mass"] == "Present"
    assert meas["Probability of cancer"][0] == pytest.approx(row["prob_malignant"], abs=1e-6)
    assert evals["Malignancy at the threshold"] == row["label"].capitalize()
    assert meas["Area"] == (pytest.approx(row["mask_area_mm2"], abs=1e-6), "mm2")
    x0, y0, x1, y1 = row["bbox"]  # 0.01 cm pixels: the size in mm is the box's extent / 10
    assert meas["Width"] == (pytest.approx((x1 - x0) * 0.1, abs=1e-6), "mm") == (pytest.approx(row["lesion_width_mm"]), "mm")
    assert meas["Height"] == (pytest.approx((y1 - y0) * 0.1, abs=1e-6), "mm")
    top, left = PAD  # the box in the stored frame's pixels: the B-mode region's offset added
    x0, y0, x1, y1 = row["bbox"]
    assert np.allclose(g.roi.value[[0, 2]], [[x0 + left, y0 + top], [x1 + left, y1 + top]])
    assert g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    texts = " | ".join(_texts(sr))
    sha = json.loads((out / "summary.json").read_text())["models"]["classifier"]["sha256"]
    assert f"classifier model_int8.tflite sha256 {sha}" in texts and f"threshold {row['threshold']}" in texts


def test_sr_references_the_seg_and_a_real_ultrasound_file(cls_run, seg_run, tmp_path):
    path = dicom_testdata("US1_UNCR.dcm")
    r = cli("predict", path, *_models(cls_run, seg_run), "--dicom-seg", "--dicom-sr", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "a" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["dicom_seg"] and row["dicom_sr"]
    sr = hd.sr.srread(row["dicom_sr"])
    g = sr.content.get_planar_roi_measurement_groups()[0]
    seg = pydicom.dcmread(row["dicom_seg"], stop_before_pixels=True)
    assert g.roi is None  # the lesion's place is the SEG's segment, not a box
    ref = g.referenced_segmentation_frame
    assert ref is not None and ref.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert list(ref.referenced_segment_numbers) == [1]
    assert pydicom.dcmread(row["dicom_sr"]).Modality == "SR"
    # a loop: one report per frame, each naming its frame
    loop = write_us_dicom(tmp_path / "loop.dcm", [np.full((40, 60), 90, np.uint8)] * 3, pixel_size_cm=0.01)
    r = cli("predict", loop, *_models(cls_run, seg_run), "--dicom-sr", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    reports = sorted((tmp_path / "b" / "sr").glob("*.sr.dcm"))
    assert len(reports) == 3
    frames = {int(pydicom.dcmread(p).InstanceNumber) for p in reports}
    assert frames == {1, 2, 3}


def test_sr_of_a_lesion_free_frame_makes_no_malignancy_call(cls_run, seg_run, tmp_path):
    from tests.test_presence import _rule

    path = dicom_testdata("US1_UNCR.dcm")
    cart = tmp_path / "cart"
    (tmp_path / "r").mkdir()
    rule = _rule(tmp_path / "r" / "presence.json", 1.0)  # threshold 1: no frame shows a lesion
    rule.write_text(rule.read_text().replace('"test-unet"', f'"{json.loads((seg_run / "manifest.json").read_text())["model"]["name"]}"'))
    r = cli("bundle", *_models(cls_run, seg_run), "--presence", rule, "--out", cart)
    assert r.exit_code == 0, r.output
    r = cli("predict", "--bundle", cart, path, "--dicom-sr", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "a" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["label"] == "no lesion found"
    _, meas, evals, _ = _group(row["dicom_sr"])
    assert evals == {"Mass": "Absent"} and not meas
