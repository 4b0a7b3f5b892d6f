"""The cart runtime (`edgebus predict`, `edgebus.runtime.LesionPipeline`) on tiny exported models:
result fields, overlays, bad frames in a folder, refused model files, bundles, and a run where
TensorFlow cannot be imported."""

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli, one_line_error as _one_line_error

IMAGES = "BrEaST-Lesions_USG-images_and_masks"


def _frames(data: Path, n: int) -> list[Path]:
    return sorted(p for p in (data / IMAGES).glob("case*.png") if "_" not in p.stem)[:n]


DOCUMENTED = {"file", "width", "height", "image_area", "lesion", "prob_malignant", "prob_raw", "prob_classifier", "label", "descriptors", "findings", "shape",
              "threshold", "mask_threshold", "mask",
              "mask_area_px", "pixel_size_mm", "mask_area_mm2", "lesion_width_mm", "lesion_height_mm", "bbox", "regions", "crop",
              "latency_ms", "gates", "warnings", "error"}


def test_pipeline_predicts_documented_fields(cart_models, synthetic_breast_dir):
    from edgebus.runtime import LesionPipeline

    pipe = LesionPipeline(cart_models["cls_file"], cart_models["seg_file"])
    frame = _frames(synthetic_breast_dir, 1)[0]
    w, h = Image.open(frame).size
    r = pipe.predict(frame, pixel_size_mm=0.1)
    assert set(r) == DOCUMENTED
    assert r["error"] is None and r["file"] == str(frame)
    assert r["crop"] is None  # a whole-frame classifier (lesion-crop ones: tests/test_guided.py)
    assert r["shape"] is None and r["prob_classifier"] is None  # no fusion here (tests/test_fusion.py)
    assert r["lesion"] is None  # no presence rule here (tests/test_presence.py)
    assert (r["width"], r["height"]) == (w, h)
    assert 0.0 <= r["prob_malignant"] <= 1.0
    assert r["prob_raw"] == r["prob_malignant"]  # this model carries no calibration
    assert r["label"] == ("malignant" if r["prob_raw"] >= r["threshold"] else "benign")
    m = r["mask"]
    assert m.shape == (h, w) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert r["mask_area_px"] == int(m.sum())
    assert r["mask_area_mm2"] == pytest.approx(r["mask_area_px"] * 0.01, rel=1e-6)
    if r["mask_area_px"]:
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        # the calipers' size: the mask's extent across (along the transducer face) and down (along the beam), in mm
        assert (r["lesion_width_mm"], r["lesion_height_mm"]) == pytest.approx(((xs.max() + 1 - xs.min()) * 0.1,
                                                                                (ys.max() + 1 - ys.min()) * 0.1))
    else:
        assert r["bbox"] is None and r["lesion_width_mm"] is None
    assert set(r["latency_ms"]) >= {"classify", "segment", "total"}
    assert r["latency_ms"]["total"] >= r["latency_ms"]["classify"] + r["latency_ms"]["segment"] > 0
    # the same frame as an array (what a cart's frame grabber hands over) gives the same answer
    from edgebus.data.preprocess import load_gray

    r2 = pipe.predict(load_gray(frame))
    assert r2["prob_malignant"] == r["prob_malignant"] and np.array_equal(r2["mask"], m)
    assert r2["mask_area_mm2"] is None and r2["file"] is None
    # only one model: the other's fields stay None
    only = LesionPipeline(classifier=cart_models["cls_file"]).predict(frame)
    assert only["prob_malignant"] == r["prob_malignant"] and only["mask"] is None and only["bbox"] is None


def test_black_margins_around_a_frame_change_nothing(cart_models, synthetic_breast_dir):
    """A frame inside a wider, taller screen capture (black bars beside and above, a label in a
    bar) is classified and segmented as the bare frame: the models see its image area only, and
    the mask comes back at the capture's size, zero in the bars."""
    from PIL import ImageDraw

    from edgebus.data.preprocess import image_area, load_gray
    from edgebus.runtime import LesionPipeline

    pipe = LesionPipeline(cart_models["cls_file"], cart_models["seg_file"])
    gray = load_gray(_frames(synthetic_breast_dir, 1)[0])
    h, w = gray.shape
    gray = gray[h // 10:, w // 10:w - w // 10]  # all image (synthetic frames have black corners or a side strip)
    h, w = gray.shape
    assert image_area(gray) == (0, 0, w, h)
    cap = Image.new("L", (w + 90, h + 30))
    cap.paste(Image.fromarray(gray), (40, 30))
    ImageDraw.Draw(cap).text((2, 40), "L12-5", fill=255)  # a probe label in the left bar
    big = np.asarray(cap)
    assert image_area(big) == (40, 30, 40 + w, 30 + h)
    bare, boxed = pipe.predict(gray), pipe.predict(big)
    assert boxed["image_area"] == [40, 30, 40 + w, 30 + h] and bare["image_area"] == [0, 0, w, h]
    assert boxed["prob_raw"] == bare["prob_raw"] and boxed["label"] == bare["label"]
    assert boxed["mask"].shape == big.shape and boxed["mask"][30:, 40:40 + w].sum() == boxed["mask"].sum()
    assert np.array_equal(boxed["mask"][30:, 40:40 + w], bare["mask"])
    if bare["bbox"]:
        assert boxed["bbox"] == [bare["bbox"][0] + 40, bare["bbox"][1] + 30, bare["bbox"][2] + 40, bare["bbox"][3] + 30]


def test_overlay_is_a_valid_image_of_the_frame_size(cart_models, synthetic_breast_dir):
    from edgebus.runtime import LesionPipeline, render_overlay

    pipe = LesionPipeline(cart_models["cls_file"], cart_models["seg_file"])
    frame = _frames(synthetic_breast_dir, 1)[0]
    r, gray = pipe.predict_with_frame(frame)
    # a known mask so the contour is certainly drawn
    mask = np.zeros_like(gray)
    mask[20:60, 30:90] = 1
    img = render_overlay(gray, {**r, "mask": mask, "bbox": [30, 20, 90, 60]})
    assert img.size == (gray.shape[1], gray.shape[0]) and img.mode == "RGB"
    a = np.asarray(img)
    assert (a[40, 30] == (255, 0, 0)).all()  # the contour on the mask's left edge
    assert not (a[40, 60] == (255, 0, 0)).all()  # not inside it
    assert (a[40, 29] == (255, 255, 0)).all()  # the box just outside the lesion


def test_cli_folder_with_bad_frames_finishes_the_others(cart_models, synthetic_breast_dir, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    good = _frames(synthetic_breast_dir, 3)
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    good = [folder / p.name for p in good]
    Image.open(good[0]).convert("RGB").save(folder / "frame.JPG")  # JPEG, upper-case suffix
    g16 = (np.asarray(Image.open(good[1]).convert("L"), dtype=np.uint16) * 257)
    Image.frombytes("I;16", g16.shape[::-1], g16.astype("<u2").tobytes()).save(folder / "frame16.png")  # 16-bit: accepted
    good = good + [folder / "frame.JPG", folder / "frame16.png"]
    (folder / "case001_tumor.png").write_bytes(good[0].read_bytes())  # a mask file: skipped, not predicted
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("1", (40, 30)).save(folder / "onebit.png")
    (folder / "huge.png").write_bytes(_png_with_header_size(good[0], 30000, 30000))
    (folder / "notes.txt").write_text("not a frame")
    out = tmp_path / "pred"
    r = cli("predict", "--classifier", cart_models["cls_file"], "--segmenter", cart_models["seg_file"],
            folder, "--out", out, "--pixel-size", 0.08)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "skipping 1 mask files" in r.output and "frames/s" in r.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    names = [Path(row["file"]).name for row in rows]
    assert names == sorted([p.name for p in good] + ["corrupt.png", "empty.jpg", "huge.png", "onebit.png"])
    by = dict(zip(names, rows))
    for p in good:
        row = by[p.name]
        assert row["error"] is None and row["prob_malignant"] is not None
        assert row["mask_area_mm2"] == pytest.approx(row["mask_area_px"] * 0.0064, rel=1e-6)
        ov = Image.open(row["overlay"])
        assert ov.size == Image.open(p).size and ov.format == "PNG"
        assert Image.open(row["mask_file"]).size == ov.size
    for bad, words in (("corrupt.png", "not a readable image"), ("empty.jpg", "empty file"),
                       ("huge.png", "too large"), ("onebit.png", "bit depth")):
        err = by[bad]["error"]
        assert bad in err and words in err and "\n" not in err, err
        assert by[bad]["prob_malignant"] is None and by[bad]["overlay"] is None
        assert f"{bad}: error:" in r.output
    with open(out / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"prob_malignant", "bbox_x0", "latency_total_ms", "error"} <= set(table[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 5 and summary["failed"] == 4 and summary["fps"]["inference"] > summary["fps"]["wall"] > 0
    assert set(summary["models"]) == {"classifier", "segmenter"}
    # all frames fine -> exit 0
    r = cli("predict", "--classifier", cart_models["cls_file"], "--segmenter", cart_models["seg_file"],
            good[0], "--out", tmp_path / "one", "--no-overlays")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "one" / "overlays").exists()


def _png_with_header_size(src: Path, w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (pixel data unchanged): a huge or corrupt header."""
    b = bytearray(src.read_bytes())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", w, h)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def test_bad_model_files_are_refused(cart_models, synthetic_breast_dir, tmp_path):
    frame = _frames(synthetic_breast_dir, 1)[0]
    cls, seg = cart_models["cls_file"], cart_models["seg_file"]
    # a segmenter given as the classifier
    _one_line_error(cli("predict", "--classifier", seg, frame, "--out", tmp_path / "a"), "task 'segment'", "--segmenter")
    # no edgebus metadata (the metadata entry renamed, the model itself intact)
    raw = cls.read_bytes()
    name = struct.pack("<I", 7) + b"edgebus\x00"
    assert raw.count(name) == 1
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(raw.replace(name, struct.pack("<I", 7) + b"another\x00"))
    _one_line_error(cli("predict", "--classifier", bare, frame, "--out", tmp_path / "b"),
                    "bare.tflite", "no edgebus metadata", "edgebus export")
    # metadata whose preprocess size disagrees with the model's input shape (same byte length)
    assert raw.count(b'"size": [64, 64]') == 1
    liar = tmp_path / "liar.tflite"
    liar.write_bytes(raw.replace(b'"size": [64, 64]', b'"size": [96, 96]'))
    _one_line_error(cli("predict", "--classifier", liar, frame, "--out", tmp_path / "c"),
                    "liar.tflite", "does not match", "96x96")
    # a truncated file and a missing one
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(raw[:300])
    _one_line_error(cli("predict", "--classifier", cut, frame, "--out", tmp_path / "d"), "cut.tflite")
    _one_line_error(cli("predict", "--segmenter", tmp_path / "nope.tflite", frame), "nope.tflite")
    _one_line_error(cli("predict", frame), "--classifier")
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_bundle_and_pixel_sizes_from_the_sheet(cart_models, synthetic_breast_dir, tmp_path):
    b = tmp_path / "bundle"
    r = cli("bundle", "--classifier", cart_models["cls"], "--segmenter", cart_models["seg"], "--out", b)
    assert r.exit_code == 0, r.output
    assert {p.name for p in b.iterdir()} == {"classifier.tflite", "segmenter.tflite", "bundle.json",
                                            *(f"{role}_model_card.{ext}" for role in ("classifier", "segmenter")
                                              for ext in ("md", "json"))}  # each run's card travels with its model
    # the whole BrEaST-layout folder: its frames, without mask files, pixel size from the sheet (cm -> mm)
    out = tmp_path / "pred"
    r = cli("predict", "--bundle", b, synthetic_breast_dir, "--out", out, "--no-overlays", "--no-masks")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    from edgebus.data.breast import read_breast

    cases = read_breast(synthetic_breast_dir).cases
    assert len(rows) == len(cases)
    px = {c.image.name: c.pixel_size for c in cases}
    for row in rows[:5]:
        assert row["pixel_size_mm"] == pytest.approx(px[Path(row["file"]).name] * 10)
        assert row["mask_area_mm2"] == pytest.approx(row["mask_area_px"] * row["pixel_size_mm"] ** 2, rel=1e-6)
    # a folder of .tflite files without bundle.json is not a cart (what a killed 'bundle' would leave): refused
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.tflite").write_bytes(cart_models["seg_file"].read_bytes())
    (loose / "b.tflite").write_bytes(cart_models["cls_file"].read_bytes())
    from edgebus.runtime import find_bundle

    assert find_bundle(b) == (b / "classifier.tflite", b / "segmenter.tflite")
    _one_line_error(cli("predict", "--bundle", loose, synthetic_breast_dir, "--out", tmp_path / "y"), "no bundle.json",
                    "--classifier")
    assert not (tmp_path / "y").exists()
    # a bundled model changed after bundling is refused
    (b / "segmenter.tflite").write_bytes(cart_models["cls_file"].read_bytes())
    _one_line_error(cli("predict", "--bundle", b, synthetic_breast_dir, "--out", tmp_path / "x"), "sha256")


def test_runtime_runs_where_tensorflow_cannot_be_imported(cart_models, synthetic_breast_dir, tmp_path, without_tf):
    frames = _frames(synthetic_breast_dir, 2)
    without_tf(f"""
        import json
        import numpy as np
        from edgebus.runtime import LesionPipeline
        cart = LesionPipeline({str(cart_models['cls_file'])!r}, {str(cart_models['seg_file'])!r})
        r = cart.predict({str(frames[0])!r}, pixel_size_mm=0.1)
        assert r['error'] is None and r['mask'].shape == (r['height'], r['width']), r
        assert cart.overlay({str(frames[0])!r}).size == (r['width'], r['height'])
        from typer.testing import CliRunner
        from edgebus.cli import app
        res = CliRunner().invoke(app, ['predict', '--classifier', {str(cart_models['cls_file'])!r},
                                       '--segmenter', {str(cart_models['seg_file'])!r}, {str(frames[0].parent)!r},
                                       '--out', {str(tmp_path / 'out')!r}, '--pixel-size', '0.1'])
        assert res.exit_code == 0, res.output
        # --data needs pandas: a clear message, not a traceback
        res = CliRunner().invoke(app, ['predict', '--classifier', {str(cart_models['cls_file'])!r},
                                       {str(frames[1])!r}, '--data', {str(synthetic_breast_dir)!r}, '--out', {str(tmp_path / 'o2')!r}])
        assert res.exit_code == 2 and '--pixel-size' in res.output, res.output
        assert not any(m in sys.modules for m in ('tensorflow', 'tf_keras', 'pandas'))
    """)


def test_cart_example_runs_on_a_bundle(cls_run, seg_run, chain_data, tmp_path, without_tf):
    """examples/cart_predict.py uses only the public API, with TensorFlow blocked."""
    from pathlib import Path

    from edgebus.runtime import make_bundle

    bundle = make_bundle(tmp_path / "cart", cls_run, seg_run)
    frame = sorted((chain_data / "BrEaST-Lesions_USG-images_and_masks").glob("case00[0-9].png"))[0]
    example = Path(__file__).resolve().parents[1] / "examples" / "cart_predict.py"
    out = without_tf(f"import sys, runpy; sys.argv = ['cart_predict.py', {str(bundle)!r}, {str(frame)!r}, '0.08']; "
                     f"runpy.run_path({str(example)!r}, run_name='__main__')", timeout=120, cwd=tmp_path)
    assert "overlay.png written" in out.stdout and "mm^2" in out.stdout
    assert (tmp_path / "overlay.png").stat().st_size > 0
