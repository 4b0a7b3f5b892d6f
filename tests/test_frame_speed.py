"""Issue #31 part 3, a frame pipeline with no waste: the faster gray conversion, overlay and results
file give what the slower ones gave (the same gray levels, the same overlay pixels, every finished
frame kept across a kill and predicted once on a re-run), and the summary shows wall-clock frames/s
first. No models are trained here: a stub pipeline stands in for LesionPipeline."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgebus.core.io import read_jsonl
from edgebus.runtime.pipeline import RESULT_FIELDS


# ---- gray conversion ---------------------------------------------------------------------------

def old_gray(a: np.ndarray) -> np.ndarray:
    """The formula before (data.preprocess._to_gray for RGBA): a black opaque frame, the frame
    alpha-composited over it, then Pillow's RGB -> L."""
    im = Image.fromarray(a, "RGBA")
    black = Image.new("RGBA", im.size, (0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(black, im).convert("L"))


def test_rgba_gray_equals_the_old_composite_exactly():
    """Tolerance 0, not 1: both round c * alpha / 255 to the nearest integer per channel (it is never
    a half: 255 is odd) and then run the same Pillow RGB -> L, so every gray level is the same. The
    grid covers every (channel value, alpha) pair; the random frames mix channels and odd sizes."""
    from edgebus.runtime.frames import gray_from_array

    v, alpha = np.meshgrid(np.arange(256), np.arange(256))
    for rgb in ((v, v, v), (v, 255 - v, (v * 7) % 256), (v, np.zeros_like(v), np.full_like(v, 255))):
        grid = np.stack([*rgb, alpha], axis=-1).astype(np.uint8)
        assert np.array_equal(gray_from_array(grid), old_gray(grid))
    rng = np.random.default_rng(31)
    for h, w in ((1, 1), (7, 13), (240, 320), (537, 485)):
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        a[..., 3][rng.random((h, w)) < 0.3] = 255  # mostly opaque, as a scanner frame with a transparent frame
        a[..., 3][rng.random((h, w)) < 0.1] = 0
        assert np.array_equal(gray_from_array(a), old_gray(a)), (h, w)
    # the composite step itself is the integer formula (c * alpha + 127) // 255
    premultiplied = np.asarray(Image.fromarray(grid, "RGBA").convert("RGBa"))[..., :3].astype(np.uint32)
    assert np.array_equal(premultiplied, (grid[..., :3].astype(np.uint32) * grid[..., 3:] + 127) // 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P-transparent", "RGB", "L", "I;16"])
def test_load_frame_equals_the_training_preprocessing(mode, tmp_path):
    """A frame file read on the cart (runtime.frames.load_frame) gives the gray levels training read
    (data.preprocess.load_gray), whatever its mode."""
    from edgebus.data.preprocess import load_gray
    from edgebus.runtime.frames import load_frame

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (50, 70, 4), dtype=np.uint8)
    im = Image.fromarray(a, "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    elif mode == "P-transparent":
        im = im.convert("RGB").quantize(16)
        im.info["transparency"] = 3
    elif mode == "I;16":
        im = Image.fromarray(a[..., 0].astype(np.uint16) * 200)  # 16-bit gray
    elif mode != "RGBA":
        im = im.convert(mode)
    path = tmp_path / "frame.png"
    im.save(path, **({"transparency": 3} if mode == "P-transparent" else {}))
    assert np.array_equal(load_frame(path), load_gray(path))


# ---- overlays ----------------------------------------------------------------------------------

def old_render_overlay(gray, result, mask=None, box=True):
    """render_overlay before: an HxWx3 numpy copy, the contour over the whole frame."""
    from edgebus.runtime.overlay import BOX_RGB, CONTOUR_RGB, CROP_RGB, TEXT_RGB, _font, caption, contour

    gray = np.asarray(gray, dtype=np.uint8)
    h, w = gray.shape
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    mask = result.get("mask") if mask is None else mask
    scale = max(h, w)
    if mask is not None and mask.any():
        rgb[contour(mask, thickness=max(1, round(scale / 400)))] = CONTOUR_RGB
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    bbox = result.get("bbox")
    if box and bbox:
        x0, y0, x1, y1 = bbox
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=BOX_RGB, width=1)
    crop = result.get("crop")
    if box and crop:
        x0, y0, x1, y1 = crop
        draw.rectangle([max(x0, 0), max(y0, 0), min(x1, w) - 1, min(y1, h) - 1], outline=CROP_RGB, width=1)
    lines = caption(result)
    if lines:
        font = _font(max(10, round(scale / 30)))
        text = "\n".join(lines)
        pad = 2
        left, top, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font)
        draw.rectangle([0, 0, min(w - 1, right + pad), min(h - 1, bottom + pad)], fill=(0, 0, 0))
        draw.multiline_text((pad, pad), text, font=font, fill=TEXT_RGB.get(result.get("label"), (255, 255, 255)))
    return img


def _masks(h, w, rng):
    """Lesions inside, touching each edge and corner, two at once, one pixel, the whole frame."""
    yield np.zeros((h, w), np.uint8)
    for y0, y1, x0, x1 in ((h // 4, h // 2, w // 3, w // 2), (0, h // 3, 0, w // 4), (h // 2, h, w // 2, w),
                           (0, h, w - 5, w), (h // 2, h // 2 + 1, w // 2, w // 2 + 1), (0, h, 0, w)):
        m = np.zeros((h, w), np.uint8)
        m[y0:y1, x0:x1] = 1
        yield m
    m = (rng.random((h, w)) < 0.002).astype(np.uint8)  # scattered specks
    m[10:40, 10:40] = 1
    yield m


@pytest.mark.parametrize("shape", [(64, 80), (537, 485), (1200, 900)])  # contour 1, 1 and 3 pixels thick
def test_overlay_has_the_same_pixels_as_before(shape):
    from edgebus.runtime.overlay import png_bytes, render_overlay

    rng = np.random.default_rng(1)
    h, w = shape
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    for i, mask in enumerate(_masks(h, w, rng)):
        ys, xs = np.nonzero(mask)
        res = {"mask": mask, "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None,
               "crop": [-5, 3, w // 2, h + 9] if i % 2 else None, "prob_malignant": 0.83, "label": "malignant",
               "mask_area_px": int(mask.sum()), "mask_area_mm2": 41.2 if i % 3 else None}
        new = render_overlay(gray, res)
        assert new.mode == "RGB" and new.size == (w, h)
        assert np.array_equal(np.asarray(new), np.asarray(old_render_overlay(gray, res))), i
        no_box = render_overlay(gray, res, box=False)
        assert np.array_equal(np.asarray(no_box), np.asarray(old_render_overlay(gray, res, box=False)))
    with Image.open(io.BytesIO(png_bytes(new))) as back:  # a valid PNG, lossless
        back.verify()
    with Image.open(io.BytesIO(png_bytes(new))) as back:
        assert np.array_equal(np.asarray(back), np.asarray(new))


# ---- results file: fsync in batches, nothing finished lost to a kill, a bounded loss to a power cut -----

def test_results_file_fsyncs_every_n_rows_or_t_seconds(tmp_path, monkeypatch):
    from edgebus.runtime import batch

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real(fd)))
    now = [0.0]
    path = tmp_path / "r.jsonl"
    with batch.ResultsFile(path, every=4, every_s=1.0, clock=lambda: now[0]) as f:
        for i in range(10):  # no time passes: an fsync every 4th row
            f.append({"i": i})
            assert len(read_jsonl(path)) == i + 1  # each row is in the file as soon as it is appended
        assert len(synced) == 2
        for i in range(10, 13):  # 0.4 s a row: the third row after is 1.2 s after the last fsync
            now[0] += 0.4
            f.append({"i": i})
        assert len(synced) == 2 + 1
    assert len(synced) == 4 and synced[-1] == path.stat().st_size  # close: the rest
    assert [r["i"] for r in read_jsonl(path)] == list(range(13))
    assert batch.FSYNC_EVERY_FRAMES == 32 and batch.FSYNC_EVERY_S == 1.0  # the bounds the docs state


class StubPipeline:
    """Stands in for LesionPipeline: decodes the frame (runtime.frames), a fixed square lesion.
    EDGEBUS_TEST_KILL_AFTER=k: SIGKILL itself when asked for frame k + 1 (k frames finished)."""

    segmenter = None

    def __init__(self):
        self.calls = 0
        self.kill_after = int(os.environ.get("EDGEBUS_TEST_KILL_AFTER", "-1"))

    def describe(self):
        return {"classifier": {"model": "stub", "sha256": "0" * 64, "file": "stub.tflite"}}

    def predict_with_frame(self, frame, pixel_size_mm=None, name=None):
        from edgebus.runtime.frames import load_frame

        if self.calls == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls += 1
        gray = load_frame(frame)
        h, w = gray.shape
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4:h // 2, w // 4:w // 2] = 1
        res = {k: None for k in RESULT_FIELDS}
        res.update(file=name, width=w, height=h, prob_malignant=0.7, prob_raw=0.7, label="malignant", threshold=0.5,
                   mask=mask, mask_threshold=0.5, mask_area_px=int(mask.sum()), bbox=[w // 4, h // 4, w // 2, h // 2],
                   latency_ms={"invoke": 2.0, "classify": 1.0, "segment": 1.0, "total": 3.0}, gates="passed")
        return res, gray


CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
real = os.fsync
log = os.open(sys.argv[4], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
def fsync(fd):  # records what is on disk for sure: (file, size) at every fsync
    real(fd)
    st = os.fstat(fd)
    os.write(log, f"{st.st_ino} {st.st_size}\\n".encode())
os.fsync = fsync
from pathlib import Path
from test_frame_speed import StubPipeline
from edgebus.runtime.batch import predict_files
predict_files(StubPipeline(), sorted(Path(sys.argv[2]).glob("*.png")), sys.argv[3], log=lambda line: None)
"""


def _frames(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        a = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
        a[..., 3] = np.where(rng.random((48, 64)) < 0.2, 0, 255)
        Image.fromarray(a, "RGBA").save(folder / f"case{i:03d}.png")
    return sorted(folder.glob("*.png"))


def test_a_kill_loses_no_finished_frame_a_power_cut_at_most_the_bound_and_a_rerun_does_each_once(tmp_path):
    """SIGKILL after k frames: predictions.jsonl holds the rows of all of them but the last
    WRITE_AHEAD at most, whose overlay and mask were still being written (a row is written after its
    files, so none points at a missing file; those frames are predicted again). A power cut at that
    moment keeps only what was fsynced: cut the file there, with half of the next line torn, and at
    most FSYNC_EVERY_FRAMES more are gone. A re-run into the same --out repairs the torn line, keeps
    the rows it has and predicts every other frame, each once."""
    from edgebus.runtime.batch import FSYNC_EVERY_FRAMES, WRITE_AHEAD, predict_files

    n, k = FSYNC_EVERY_FRAMES + 28, FSYNC_EVERY_FRAMES + 13
    files = _frames(tmp_path / "in", n)
    out, synced = tmp_path / "out", tmp_path / "fsyncs.txt"
    p = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(tmp_path / "in"), str(out), str(synced)],
                       env={**os.environ, "EDGEBUS_TEST_KILL_AFTER": str(k)}, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    jsonl = out / "predictions.jsonl"
    killed = read_jsonl(jsonl)
    assert [r["file"] for r in killed] == [str(f) for f in files[:len(killed)]]
    assert k - WRITE_AHEAD <= len(killed) <= k  # at most the frames whose files were in writing
    assert all(Path(r["overlay"]).is_file() for r in killed)
    assert not (out / "summary.json").exists()

    ino = jsonl.stat().st_ino
    sizes = [int(s) for i, s in (line.split() for line in synced.read_text().splitlines()) if int(i) == ino]
    assert sizes, "predictions.jsonl was never fsynced before the kill"
    data = jsonl.read_bytes()
    durable = max(sizes)
    torn = data[durable:(durable + data.index(b"\n", durable)) // 2] if durable < len(data) else b""
    jsonl.write_bytes(data[:durable] + torn)  # what a power cut leaves: the fsynced rows, a torn line
    kept = read_jsonl(jsonl)
    assert len(killed) - FSYNC_EVERY_FRAMES <= len(kept) <= len(killed) and kept == killed[:len(kept)]

    summary = predict_files(StubPipeline(), files, out, log=lambda line: None)
    rows = read_jsonl(jsonl, key="file")  # refuses a frame written twice
    assert [r["file"] for r in rows] == [str(f) for f in files] and rows[:len(kept)] == kept
    assert summary["frames"] == n and summary["resumed"] == len(kept) and summary["ok"] == n
    assert len((out / "predictions.csv").read_text().splitlines()) == n + 1
    assert all(Path(r["overlay"]).is_file() and Path(r["mask_file"]).is_file() for r in rows)


def test_summary_shows_wall_clock_frames_per_second_first(tmp_path):
    from edgebus.runtime.batch import fps_line, predict_files

    files = _frames(tmp_path / "in", 3)
    summary = predict_files(StubPipeline(), files, tmp_path / "out", log=lambda line: None)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    for s in (summary, on_disk):
        assert list(s["fps"]) == ["wall", "inference", "pipeline"] and list(s["fps_includes"])[0] == "wall"
        assert 0 < s["fps"]["wall"] < s["fps"]["inference"]
    line = fps_line(summary["fps"])
    assert line.startswith(f"frames/s: {summary['fps']['wall']} wall clock") and "inference only" in line
    assert fps_line({"wall": None, "inference": None, "pipeline": None}) == "no frame predicted now"


def test_stream_gives_each_frames_own_result_in_order(cart_models, synthetic_breast_dir):
    """stream() overlaps frames (one in its interpreter call, another in Python): every result equals the
    frame's own predict(), in the order given, arrays and files alike."""
    from edgebus.data.preprocess import load_gray
    from edgebus.runtime import LesionPipeline

    pipe = LesionPipeline(cart_models["cls_file"], cart_models["seg_file"])
    files = sorted((synthetic_breast_dir / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[:12]
    frames = [f if i % 2 else load_gray(f) for i, f in enumerate(files)]
    want = [pipe.predict(f) for f in frames]
    got = list(pipe.stream(iter(frames), workers=3))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert {k: v for k, v in a.items() if k not in ("mask", "latency_ms")} == \
            {k: v for k, v in b.items() if k not in ("mask", "latency_ms")}
        assert np.array_equal(a["mask"], b["mask"])
    assert [r["file"] for r in got] == [str(f) if i % 2 else None for i, f in enumerate(files)]
