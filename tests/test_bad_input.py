"""Bad settings, paths and data (issue 13): one line naming the file or option and the fix, exit 2,
and no run folder left behind to block the re-run."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import cli, one_line_error

IMAGES = "BrEaST-Lesions_USG-images_and_masks"


@pytest.mark.parametrize("option,value", [("--size", 0), ("--size", -5), ("--epochs", 0), ("--batch", 0),
                                          ("--lr", -1), ("--lr", 0)])
def test_bad_training_settings_fail_before_the_run_exists(synthetic_breast_dir, tmp_path, option, value):
    out = tmp_path / "run"
    one_line_error(cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", option, value,
                       "--out", out), option)
    assert not out.exists()


def test_out_pointing_at_a_file_is_one_line_for_every_command(synthetic_breast_dir, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"\0" * 64)
    one_line_error(cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--out", f), str(f))
    one_line_error(cli("grid", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--lrs", "1e-3", "--epochs", "1",
                       "--out", f), str(f))
    one_line_error(cli("synth", f), str(f))
    one_line_error(cli("bench", tflite, "--out", f), str(f))
    assert f.read_text() == "not a folder"


def test_bench_checks_its_input_before_writing_anything(synthetic_breast_dir, tmp_path):
    """Issue 33: bench pointed at a frame wrote report files beside it before failing."""
    frame = tmp_path / "frames" / "case001.png"
    frame.parent.mkdir()
    frame.write_bytes(next(Path(synthetic_breast_dir).rglob("case001.png")).read_bytes())
    one_line_error(cli("bench", frame), "case001.png", "not a .tflite model")
    one_line_error(cli("bench", tmp_path / "frames"), "without manifest.json")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["case001.png", "frames"]  # nothing written


def test_bench_where_every_row_failed_exits_non_zero_and_keeps_the_report(tmp_path):
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 200)
    one_line_error(cli("bench", bad, "--out", tmp_path / "b"), "every benchmark row failed", "truncated.tflite")
    assert (tmp_path / "b" / "report.json").is_file()


def test_a_sheet_with_one_class_is_refused(tmp_path):
    from edgebus.data.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "benign-only", n_cases=20, malignant_fraction=0.0, seed=3)
    out = tmp_path / "run"
    one_line_error(cli("train", "classify", "--data", data, "--model", "test-cnn", "--out", out), "benign",
                   "both classes")
    assert not out.exists()


def test_a_mask_of_another_size_or_a_broken_one_is_named_at_read_time(synthetic_breast_dir, tmp_path):
    resized, broken = tmp_path / "resized", tmp_path / "broken"
    for d in (resized, broken):
        shutil.copytree(synthetic_breast_dir, d)
    mask = sorted((resized / IMAGES).glob("*_tumor.png"))[0]
    with Image.open(mask) as im:
        im.resize((im.width // 2, im.height // 2)).save(mask)
    one_line_error(cli("train", "segment", "--data", resized, "--model", "test-unet", "--out", tmp_path / "r1"),
                   mask.name, "same size")
    bad = sorted((broken / IMAGES).glob("*_tumor.png"))[1]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one_line_error(cli("train", "segment", "--data", broken, "--model", "test-unet", "--out", tmp_path / "r2"),
                   bad.name, "not a readable image")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
