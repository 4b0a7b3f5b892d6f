"""DICOM out and DICOM evaluation (issue 14): --dicom-seg writes a Segmentation that reads back as
the cart's mask at its place in the stored frame; `evaluate --format dicom` scores the frames a cart
receives exactly as the same images in the BrEaST layout; a resumed loop does not run done frames."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli
from tests.test_dicom import dicom_testdata, write_us_dicom

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")
pytest.importorskip("highdicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")

PAD = (30, 50)  # rows, cols of black frame around the tissue region in the written files


def _models(cls_run, seg_run):
    return ["--classifier", cls_run / "model_int8.tflite", "--segmenter", seg_run / "model_int8.tflite"]


def _uid(path):
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_dicom_seg_reads_back_as_the_carts_mask_in_the_stored_frame(chain_data, cls_run, seg_run, tmp_path):
    from edgebus.data.breast import read_breast
    from edgebus.data.preprocess import load_gray
    from edgebus.runtime.dicom_seg import read_seg_mask

    case = read_breast(chain_data).lesions()[0]
    gray = load_gray(case.image)
    (tmp_path / "in").mkdir()
    dcm = write_us_dicom(tmp_path / "in" / "still.dcm", [gray], pixel_size_cm=0.01, pad=PAD, single=True)
    out = tmp_path / "out"
    r = cli("predict", tmp_path / "in", *_models(cls_run, seg_run), "--dicom-seg", "--out", out)
    assert r.exit_code == 0, r.output
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    seg_file = out / "seg" / "still.seg.dcm"
    assert row["dicom_seg"] == str(seg_file) and seg_file.is_file()
    assert json.loads((out / "summary.json").read_text())["dicom_seg"] == [str(seg_file)]
    seg = pydicom.dcmread(seg_file)
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.StudyInstanceUID == pydicom.dcmread(dcm).StudyInstanceUID
    full = read_seg_mask(seg_file, _uid(dcm))
    cart = (np.asarray(Image.open(row["mask_file"])) > 127).astype(np.uint8)
    assert cart.shape == gray.shape and cart.sum() > 0  # the model finds the synthetic lesion
    top, left = PAD
    assert np.array_equal(full[top:top + gray.shape[0], left:left + gray.shape[1]], cart)
    assert full.sum() == cart.sum()  # nothing outside the tissue region


def test_dicom_seg_of_real_pydicom_data_file_and_a_loop(cls_run, seg_run, tmp_path):
    from edgebus.runtime.dicom_seg import read_seg_mask

    path = dicom_testdata("US1_UNCR.dcm")
    r = cli("predict", path, *_models(cls_run, seg_run), "--dicom-seg", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "a" / "predictions.jsonl").read_text().splitlines()[0])
    back = read_seg_mask(row["dicom_seg"], _uid(path))
    assert np.array_equal(back, (np.asarray(Image.open(row["mask_file"])) > 127).astype(np.uint8))
    # a cine loop without a Frame of Reference: no SEG, one line saying why, the masks still written
    loop = write_us_dicom(tmp_path / "loop.dcm", [np.full((40, 60), 90, np.uint8)] * 3, pixel_size_cm=0.01)
    r = cli("predict", loop, *_models(cls_run, seg_run), "--dicom-seg", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert r.output.count("no DICOM SEG") == 1 and "issue #284" in r.output, r.output
    assert len(list((tmp_path / "b" / "masks").glob("*.png"))) == 3
    assert not list((tmp_path / "b" / "seg").glob("*"))
    r = cli("predict", path, "--classifier", cls_run / "model_int8.tflite", "--dicom-seg", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "give a segmenter too" in r.output, r.output


def _dicom_set(chain_data, root, seg_masks=True):
    """Every lesion case of chain_data as a single-frame ultrasound DICOM with a tissue region; the
    truth mask of odd cases as a DICOM SEG, of even cases as a full-frame PNG."""
    from edgebus.data.breast import case_mask, read_breast
    from edgebus.data.preprocess import load_gray
    from edgebus.runtime.dicom_seg import write_seg

    root.mkdir()
    rows = []
    top, left = PAD
    for i, c in enumerate(read_breast(chain_data).lesions()):
        gray, mask = load_gray(c.image), case_mask(c)
        dcm = write_us_dicom(root / f"us{i:03d}.dcm", [gray], pixel_size_cm=0.01, pad=PAD, single=True)
        if seg_masks and i % 2:
            region = [left, top, left + gray.shape[1], top + gray.shape[0]]
            write_seg(dcm, {1: mask}, region, root / f"us{i:03d}.seg.dcm", {"name": "truth", "version": "1"})
            name = f"us{i:03d}.seg.dcm"
        else:
            full = np.zeros((gray.shape[0] + 2 * top, gray.shape[1] + 2 * left), np.uint8)
            full[top:top + gray.shape[0], left:left + gray.shape[1]] = mask * 255
            Image.fromarray(full).save(root / f"us{i:03d}_mask.png")
            name = f"us{i:03d}_mask.png"
        rows.append({"file": dcm.name, "label": c.classification, "mask": name, "frame": ""})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "mask", "frame"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_evaluate_on_dicom_equals_the_same_images_in_the_breast_layout(chain_data, cls_run, seg_run, tmp_path):
    import shutil

    root = _dicom_set(chain_data, tmp_path / "dicom")
    for run in (seg_run, cls_run):
        mine = tmp_path / run.name
        shutil.copytree(run, mine)
        for fmt, data in (("breast", chain_data), ("dicom", root)):
            r = cli("evaluate", mine, "--data", data, "--format", fmt, "--model-file", "model_int8.tflite")
            assert r.exit_code == 0, r.output
        res = {fmt: json.loads(next(mine.glob(f"external-{fmt}-*.json")).read_text()) for fmt in ("breast", "dicom")}
        assert res["dicom"]["data"]["n_cases"] == res["breast"]["data"]["n_cases"] > 100
        a, b = res["breast"]["metrics"], res["dicom"]["metrics"]
        if run is seg_run:
            assert b["iou"] == pytest.approx(a["iou"], abs=1e-9) and a["iou"] > 0.3
        else:
            assert b["auc"] == pytest.approx(a["auc"], abs=1e-9) and b["accuracy"] == a["accuracy"]


def test_bad_dicom_sets_get_one_line(chain_data, seg_run, tmp_path):
    root = _dicom_set(chain_data, tmp_path / "d", seg_masks=True)
    labels = (root / "labels.csv").read_text()

    def evaluate(text):
        (root / "labels.csv").write_text(text)
        return cli("evaluate", seg_run, "--data", root, "--format", "dicom", "--model-file", "model_int8.tflite")

    lines = labels.splitlines()
    r = evaluate("\n".join([lines[0], lines[1].replace("benign", "maybe").replace("malignant", "maybe"), *lines[2:]]))
    assert r.exit_code == 2 and "row 2: label 'maybe'" in r.output, r.output
    r = evaluate("\n".join([lines[0], lines[1].replace("us000.dcm", "gone.dcm"), *lines[2:]]))
    assert r.exit_code == 2 and "gone.dcm not found" in r.output, r.output
    # a SEG paired with the wrong image
    swapped = lines[2].split(",")
    other = lines[4].split(",")
    swapped[2] = other[2]
    r = evaluate("\n".join([lines[0], lines[1], ",".join(swapped), *lines[3:]]))
    assert r.exit_code == 2 and "does not reference the image" in r.output and "Traceback" not in r.output, r.output
    (root / "labels.csv").unlink()
    r = cli("evaluate", seg_run, "--data", root, "--format", "dicom")
    assert r.exit_code == 2 and "no labels.csv" in r.output, r.output


def test_a_resumed_loop_does_not_run_the_frames_already_done(cls_run, seg_run, tmp_path):
    from edgebus.runtime import LesionPipeline, predict_files

    loop = write_us_dicom(tmp_path / "loop.dcm", [np.full((40, 60), 20 * i, np.uint8) for i in range(4)], pixel_size_cm=0.01)
    pipe = LesionPipeline(cls_run / "model_int8.tflite", seg_run / "model_int8.tflite")
    first = predict_files(pipe, [loop], tmp_path / "out", log=lambda *_: None)
    calls = []
    original = pipe.predict_with_frame
    pipe.predict_with_frame = lambda *a, **k: calls.append(1) or original(*a, **k)
    again = predict_files(pipe, [loop], tmp_path / "out", log=lambda *_: None)
    assert first["ok"] == 4 and again["resumed"] == 4 and calls == []
