"""One bad frame must not stop the cart (issue 32, section 4): a malformed ultrasound DICOM header, a
frame whose file name is not valid UTF-8, and a BrEaST sheet with a bad Pixel_size each cost that
frame (an error row, or its area in mm^2 with a warning), never the folder run: the later frames are
predicted and predictions.jsonl/.csv and summary.json are written."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli

IMAGES = "BrEaST-Lesions_USG-images_and_masks"


@pytest.fixture(scope="module")
def tiny_cart(cart_models):
    """A tiny int8 classifier + segmenter (conftest): only the plumbing matters here."""
    return ["--classifier", cart_models["cls_file"], "--segmenter", cart_models["seg_file"]]


def _good_pngs(data: Path, n: int) -> list[Path]:
    return sorted(p for p in (data / IMAGES).glob("case*.png") if "_" not in p.stem)[:n]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _finished(r, code: int) -> None:
    """The CLI ran to its end with exit `code`: no exception escaped (CliRunner gives exit 1 for one too)."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception) + r.output
    assert r.exit_code == code and "Traceback" not in r.output, r.output


def _table(out: Path) -> list[dict]:
    with open(out / "predictions.csv", encoding="utf-8") as f:  # strict UTF-8: it must be valid
        return list(csv.DictReader(f))


# --- ultrasound DICOM with a malformed header ------------------------------------------------------------

def _real_us(name="OBXXXX1A.dcm") -> str:
    pytest.importorskip("pydicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")
    pytest.importorskip("data_store", reason="pydicom-data (the dev extra) is not installed")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)  # a real ultrasound file with a B-mode region in cm; nothing is downloaded
    assert path, f"{name} is not in pydicom-data"
    return path


def _edit_region(src, dst, keyword):
    """A copy of a real ultrasound file whose B-mode region item lacks `keyword`."""
    import pydicom

    ds = pydicom.dcmread(src)
    tissue = [r for r in ds.SequenceOfUltrasoundRegions if r.RegionDataType == 1]
    delattr(tissue[0], keyword)
    ds.save_as(dst)
    return dst


def _frames_ab(src, dst):
    """A copy of a real 2-frame ultrasound file whose NumberOfFrames reads "ab" (edited in its bytes, as a
    broken exporter would leave it: pydicom refuses to write such a value)."""
    data = Path(src).read_bytes()
    tag = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) IS, 2 bytes, explicit VR little endian
    assert data.count(tag + b"2 ") == 1
    Path(dst).write_bytes(data.replace(tag + b"2 ", tag + b"ab"))
    return dst


DICOM_FAULTS = {
    "region_without_x0": (lambda dst: _edit_region(_real_us(), dst, "RegionLocationMinX0"), "RegionLocationMinX0"),
    "number_of_frames_ab": (lambda dst: _frames_ab(_real_us("OBXXXX1A_2frame.dcm"), dst), "NumberOfFrames"),
    "cm_region_without_delta": (lambda dst: _edit_region(_real_us(), dst, "PhysicalDeltaX"), "PhysicalDeltaX"),
}


@pytest.mark.parametrize("fault", sorted(DICOM_FAULTS))
def test_a_malformed_ultrasound_dicom_is_one_error_row(fault, tiny_cart, synthetic_breast_dir, tmp_path):
    make, words = DICOM_FAULTS[fault]
    folder = tmp_path / "frames"
    folder.mkdir()
    first, last = _good_pngs(synthetic_breast_dir, 2)
    shutil.copy(first, folder / "a_first.png")
    make(folder / "b_bad.dcm")
    shutil.copy(_real_us(), folder / "c_good.dcm")  # a good DICOM after the bad one
    shutil.copy(last, folder / "d_last.png")
    out = tmp_path / "pred"
    r = cli("predict", *tiny_cart, folder, "--out", out)
    _finished(r, 1)  # a frame failed: exit 1, and the run went on
    rows = _rows(out)
    names = [Path(row["file"]).name for row in rows]
    assert names == ["a_first.png", "b_bad.dcm", "c_good.dcm", "d_last.png"], names
    err = rows[1]["error"]
    assert err and "b_bad.dcm" in err and words in err and "\n" not in err, err
    assert rows[1]["prob_malignant"] is None
    assert "b_bad.dcm: error:" in r.output and words in r.output
    for row in rows[:1] + rows[2:]:  # the frames after the bad file were predicted
        assert row["error"] is None and row["prob_malignant"] is not None and row["mask_area_px"] is not None
    assert rows[2]["pixel_size_from"] == "dicom regions" and rows[2]["mask_area_mm2"] is not None
    table = _table(out)
    assert [Path(t["file"]).name for t in table] == names and table[1]["error"] == err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (3, 1)
    print(f"{fault}: {err}")


# --- a file name that is not valid UTF-8 -------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="POSIX file names are bytes; Windows' are UTF-16")
def test_a_file_name_that_is_not_utf8_is_predicted_and_every_file_written(tiny_cart, synthetic_breast_dir, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    first, mid, last = _good_pngs(synthetic_breast_dir, 3)
    cafe = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: "caf\udce9.png" in Python
    bad = os.fsdecode(b"bad\xff.png")
    shutil.copy(first, folder / "a.png")
    shutil.copy(mid, folder / cafe)
    (folder / bad).write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # an unreadable frame whose name is not UTF-8 either
    shutil.copy(last, folder / "z.png")
    out = tmp_path / "pred"
    r = cli("predict", *tiny_cart, folder, "--out", out, "--pixel-size", 0.08)
    _finished(r, 1)
    rows = _rows(out)
    assert [Path(row["file"]).name for row in rows] == ["a.png", bad, cafe, "z.png"]  # the exact names, back from JSON
    by = {Path(row["file"]).name: row for row in rows}
    assert by[cafe]["error"] is None and by[cafe]["prob_malignant"] is not None
    assert by[bad]["error"] and "not a readable image" in by[bad]["error"]
    # the overlay and mask carry the frame's own (byte) name
    assert os.fsencode(Path(by[cafe]["overlay"]).name) == b"caf\xe9.png" and Path(by[cafe]["overlay"]).is_file()
    assert os.fsencode(Path(by[cafe]["mask_file"]).name) == b"caf\xe9.png" and Path(by[cafe]["mask_file"]).is_file()
    # the CSV is valid UTF-8 and shows the byte that is not as \xe9
    table = _table(out)
    assert [Path(t["file"]).name for t in table] == ["a.png", "bad\\xff.png", "caf\\xe9.png", "z.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 3 and [Path(f).name for f in summary["failed_files"]] == [bad]
    assert "caf\\xe9.png:" in r.output and "bad\\xff.png: error:" in r.output  # the log says it readably
    # the same --out again: resumes (the failed frame is tried again), and writes every file again
    r = cli("predict", *tiny_cart, folder, "--out", out, "--pixel-size", 0.08)
    _finished(r, 1)
    assert "3 frames were already done there" in r.output, r.output
    assert len(_table(out)) == 4 and json.loads((out / "summary.json").read_text())["resumed"] == 3


# --- a BrEaST sheet with a bad Pixel_size --------------------------------------------------------------------

def test_a_bad_pixel_size_in_the_sheet_leaves_that_area_out_with_a_warning(tiny_cart, synthetic_breast_dir, tmp_path):
    import pandas as pd

    from edgebus.data.breast import SHEET_GLOB

    data = shutil.copytree(synthetic_breast_dir, tmp_path / "data")
    sheet = next(data.glob(SHEET_GLOB))
    df = pd.read_excel(sheet, engine="openpyxl")
    df["Pixel_size"] = df["Pixel_size"].astype(object)
    bad = {3: float("inf"), 7: "abc", 11: -0.01, 15: 0}  # row -> value; row 3 is the 4th frame
    for i, v in bad.items():
        df.loc[i, "Pixel_size"] = v
    df.to_excel(sheet, index=False, engine="openpyxl")
    case_of = {df.loc[i, "Image_filename"]: int(df.loc[i, "CaseID"]) for i in bad}
    out = tmp_path / "pred"
    r = cli("predict", *tiny_cart, data, "--out", out, "--no-overlays", "--no-masks", "--pixel-size", 0.05)
    _finished(r, 0)
    rows = _rows(out)
    assert len(rows) == len(df) and all(row["error"] is None for row in rows)
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:") and "Pixel_size" in line]
    assert len(warnings) == len(bad), r.output
    for name, case in case_of.items():
        line = next(w for w in warnings if f"CaseID {case} " in w)
        assert sheet.name in line and name in line, line
        row = next(row for row in rows if Path(row["file"]).name == name)
        # its prediction is kept; its area in mm^2 is left out (not taken from --pixel-size: the sheet has the case)
        assert row["prob_malignant"] is not None and row["mask_area_px"] is not None
        assert row["pixel_size_mm"] is None and row["mask_area_mm2"] is None
    good = next(row for row in rows if Path(row["file"]).name not in case_of)
    assert good["mask_area_mm2"] == pytest.approx(good["mask_area_px"] * good["pixel_size_mm"] ** 2, rel=1e-6)
    table = {Path(t["file"]).name: t for t in _table(out)}
    assert all(table[name]["mask_area_mm2"] == "" and table[name]["prob_malignant"] for name in case_of)
    print("\n".join(warnings))
