"""The cart pipeline: classify and segment ultrasound frames with exported .tflite files, offline.

Core install only (numpy, Pillow, a TFLite interpreter): no TensorFlow, tf_keras or pandas is
imported here, so a cart application can embed it::

    from edgebus.runtime import LesionPipeline
    cart = LesionPipeline(classifier="classifier.tflite", segmenter="segmenter.tflite")  # load once
    r = cart.predict("frame.png", pixel_size_mm=0.078)                                     # per frame
    r["prob_malignant"], r["label"], r["mask"], r["mask_area_mm2"], r["bbox"]

Each model is preprocessed with the contract recorded in its own embedded metadata (the shared
`edgebus.data.preprocess` path) and thresholded at the operating threshold stored there. A
lesion-crop classifier (segmentation-guided; its contract has a `crop`) needs the segmenter: the
frame is segmented first, and the classifier sees the square around the largest predicted region
(`r["crop"]`, frame pixels), or the whole frame padded square when no lesion is found.

The mask is returned at the ORIGINAL frame size: the model's lesion-probability map is resized
back with bilinear interpolation, then thresholded (smoother outlines than resizing a binary
mask with nearest neighbour, and the same threshold rule, prob >= threshold, as the metrics).
The bbox is [x0, y0, x1, y1] in frame pixels with exclusive ends (PIL's box convention: the box
is x1 - x0 pixels wide), None when the mask is empty.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgebus.data.breast import IMAGES_DIR, SHEET_GLOB
from edgebus.data.preprocess import (PREPROCESS_VERSION, SUPPORTED_VERSIONS, _to_gray, crop_square_px, lesion_box,
                                     load_gray, to_model_input)
from edgebus.errors import EdgebusError
from edgebus.rundir import MANIFEST, atomic_write, sha256_file, write_json
from edgebus.runtime.interpreter import TFLiteModel
from edgebus.runtime.metadata import read_metadata
from edgebus.runtime.overlay import render_overlay, save_png

MAX_FRAME_PIXELS = 50_000_000  # refuse bigger frames before decoding them (about 7000 x 7000)
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
BUNDLE_FILES = {"classify": "classifier.tflite", "segment": "segmenter.tflite"}
BUNDLE_JSON = "bundle.json"
ROLE = {"classify": "classifier", "segment": "segmenter"}
LATENCY_KEYS = ("load", "classify", "segment", "total")
RESULT_FIELDS = ("file", "width", "height", "prob_malignant", "label", "threshold", "mask_threshold", "mask",
                 "mask_area_px", "pixel_size_mm", "mask_area_mm2", "bbox", "crop", "latency_ms", "error")
CSV_FIELDS = ("file", "width", "height", "prob_malignant", "label", "threshold", "mask_threshold", "mask_area_px",
              "pixel_size_mm", "mask_area_mm2", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
              *(f"latency_{k}_ms" for k in LATENCY_KEYS), "overlay", "mask_file", "error")
# Pillow modes a frame may have; 16-bit gray is rescaled to 8 bits by the shared preprocessing.
_FRAME_MODES = {"L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                "I;16", "I;16B", "I;16L", "I;16N"}
_MODE_WORDS = {"1": "1-bit black-and-white", "F": "32-bit float", "I": "32-bit integer"}
_MASK_NAME = re.compile(r"_(tumor|other\d*)$", re.IGNORECASE)


# ---------------------------------------------------------------- frames

def _check_frame(where, w: int, h: int, mode: str, fmt: str | None, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise EdgebusError(f"{where}: empty image ({w}x{h} pixels); replace or remove the file")
    if w * h > max_pixels:
        raise EdgebusError(f"{where}: image too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit "
                           f"{max_pixels / 1e6:.0f} Mpx); pass ultrasound frames, not a mosaic or a corrupt header")
    if mode == "I" and fmt == "PNG":  # older Pillow opens 16-bit gray PNGs as "I"
        return
    if mode not in _FRAME_MODES:
        words = _MODE_WORDS.get(mode, f"mode {mode}")
        raise EdgebusError(f"{where}: unsupported bit depth ({words} image); save the frame as 8-bit grayscale "
                           "or RGB(A) PNG/JPEG (16-bit grayscale is accepted)")


def load_frame(path: str | Path, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """A frame file as uint8 HxW grayscale, with a clear EdgebusError for a bad one: missing, not an
    image, empty, wrong bit depth, or too large (checked from the header, before decoding)."""
    path = Path(path)
    if path.is_dir():
        raise EdgebusError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise EdgebusError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise EdgebusError(f"{path}: empty file (0 bytes); replace or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                w, h, mode, fmt = im.width, im.height, im.mode, im.format
    except Image.DecompressionBombError as e:
        raise EdgebusError(f"{path}: image too large ({e}); pass ultrasound frames only") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EdgebusError(f"{path}: not a readable image ({e}); replace or remove the file") from None
    _check_frame(path, w, h, mode, fmt, max_pixels)
    return load_gray(path)  # the one preprocessing path: alpha over black -> 8-bit gray


def gray_from_array(frame, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """A numpy frame (HxW uint8/uint16 gray, HxWx3 RGB or HxWx4 RGBA uint8) or PIL image -> uint8 HxW gray."""
    if isinstance(frame, Image.Image):
        _check_frame("frame", frame.width, frame.height, frame.mode, frame.format, max_pixels)
        return np.asarray(_to_gray(frame), dtype=np.uint8)
    a = np.asarray(frame)
    ok = (a.ndim == 2 and a.dtype in (np.uint8, np.uint16)) or (a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8)
    if not ok:
        raise EdgebusError(f"frame: array of shape {a.shape} and dtype {a.dtype} is not a frame; pass HxW uint8 "
                           "(or uint16) grayscale, or HxWx3 / HxWx4 uint8 RGB(A)")
    h, w = a.shape[:2]
    _check_frame("frame", w, h, "L", None, max_pixels)
    if a.ndim == 2 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        im = Image.frombytes("I;16", (w, h), np.ascontiguousarray(a, dtype="<u2").tobytes())
    else:
        im = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(_to_gray(im), dtype=np.uint8)


def list_frames(folder: str | Path) -> tuple[list[Path], int]:
    """(sorted PNG/JPEG frames in folder, number of BrEaST mask files skipped: *_tumor, *_otherN)."""
    folder = Path(folder)
    frames, skipped = [], 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in FRAME_SUFFIXES:
            continue
        if _MASK_NAME.search(p.stem):
            skipped += 1
            continue
        frames.append(p)
    return frames, skipped


def resolve_inputs(path: str | Path) -> tuple[list[Path], int, Path | None]:
    """(frames, mask files skipped, BrEaST root or None) for an image, a folder of frames, or a
    BrEaST-layout folder (sheet + images folder: its frames, and its sheet for pixel sizes)."""
    path = Path(path)
    if not path.exists():
        raise EdgebusError(f"{path}: not found; pass an image or a folder of frames")
    if not path.is_dir():
        return [path], 0, None
    root = None
    if (path / IMAGES_DIR).is_dir() and any(path.glob(SHEET_GLOB)):
        root, path = path, path / IMAGES_DIR
    files, skipped = list_frames(path)
    if not files:
        raise EdgebusError(f"{path}: no PNG/JPEG frames in the folder")
    return files, skipped, root


# ---------------------------------------------------------------- models

def model_file(path: str | Path, fmt: str = "int8") -> Path:
    """A .tflite path as given, or a run directory's export of `fmt` (from its manifest.json)."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise EdgebusError(f"{path}: a folder but not a run directory (no {MANIFEST}); pass a .tflite file")
        try:
            exports = json.loads((path / MANIFEST).read_text()).get("exports", {})
        except json.JSONDecodeError as e:
            raise EdgebusError(f"{path / MANIFEST}: not valid JSON ({e.msg}); restore it") from None
        e = exports.get(fmt)
        if not e or e.get("status") != "ok":
            raise EdgebusError(f"{path}: no usable {fmt} export; run 'edgebus export {path} --int8' "
                               "or pass a .tflite file")
        return path / e["file"]
    if not path.is_file():
        raise EdgebusError(f"{path}: model file not found; check the path or re-run 'edgebus export'")
    return path


class TaskModel:
    """One exported model checked against its own metadata: task, preprocess contract, I/O shapes."""

    def __init__(self, path: str | Path, task: str, num_threads: int = 1, xnnpack: bool = True):
        path = model_file(path)
        meta = read_metadata(path)
        if meta is None:
            raise EdgebusError(f"{path}: no edgebus metadata; export it with 'edgebus export'")
        have = meta.get("task")
        if have != task:
            other = ROLE.get(have)
            hint = f"pass it as --{other}" if other else "export it with 'edgebus export'"
            raise EdgebusError(f"{path}: metadata says task '{have}' but it was given as the {ROLE[task]}; {hint}")
        pre = meta.get("preprocess") or {}
        try:
            h, w = (int(s) for s in pre["size"])
            c = int(pre["channels"])
        except (KeyError, TypeError, ValueError):
            raise EdgebusError(f"{path}: metadata has no valid preprocess contract (size, channels); "
                               "re-export it with 'edgebus export'") from None
        if pre.get("version", PREPROCESS_VERSION) not in SUPPORTED_VERSIONS:
            raise EdgebusError(f"{path}: made for preprocess version {pre.get('version')}, this edgebus implements "
                               f"versions {', '.join(map(str, SUPPORTED_VERSIONS))}; use the matching edgebus or re-export")
        model = TFLiteModel(path, num_threads=num_threads, xnnpack=xnnpack)
        shape = model.input_shape
        if shape != (1, h, w, c):
            raise EdgebusError(f"{path}: input shape {shape} does not match its metadata's preprocess size "
                               f"{h}x{w}x{c}; the file was altered or mislabelled, re-export it")
        out = tuple(int(s) for s in model.outputs[0]["shape"])
        ok = (int(np.prod(out[1:])) == 1) if task == "classify" else (out[1:3] == (h, w) and int(np.prod(out[3:])) == 1)
        if not ok:
            want = "one malignant probability" if task == "classify" else f"one {h}x{w} probability map"
            raise EdgebusError(f"{path}: output shape {out} is not {want}; not an edgebus {task} model")
        self.path, self.meta, self.model, self.task = path, meta, model, task
        self.contract = pre
        self.size = (h, w)
        self.threshold = float(meta.get("threshold", 0.5))
        self.labels = list(meta.get("labels") or (["benign", "malignant"] if task == "classify" else ["background", "lesion"]))

    def run(self, x: np.ndarray) -> np.ndarray:
        """HxWxC float [0, 1] at the contract's size -> the model's float output (batch dim dropped)."""
        return self.model.predict(x[None])[0]

    def describe(self) -> dict:
        m = self.meta
        return {"file": str(self.path), "sha256": sha256_file(self.path), "task": self.task,
                "format": m.get("format"), "source": m.get("source"), "model": (m.get("model") or {}).get("name"),
                "input_size": list(self.size), "threshold": self.threshold, "labels": self.labels,
                "source_run": m.get("source_run"), "data_fingerprint": m.get("data_fingerprint"),
                "interpreter": f"{self.model.backend} {self.model.backend_version}",
                "xnnpack": self.model.xnnpack, "threads": self.model.num_threads}


# ---------------------------------------------------------------- bundles

def find_bundle(folder: str | Path) -> tuple[Path | None, Path | None]:
    """(classifier, segmenter) files of a bundle folder: classifier.tflite / segmenter.tflite, or else
    the .tflite files whose metadata says task classify / segment (at most one of each)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgebusError(f"{folder}: bundle folder not found; make one with 'edgebus bundle'")
    named = {t: folder / n for t, n in BUNDLE_FILES.items() if (folder / n).is_file()}
    if named:
        found = named
    else:
        found, dup = {}, {}
        for p in sorted(folder.glob("*.tflite")):
            task = (read_metadata(p) or {}).get("task")
            if task in ROLE:
                dup.setdefault(task, []).append(p.name)
                found.setdefault(task, p)
        for task, names in dup.items():
            if len(names) > 1:
                raise EdgebusError(f"{folder}: more than one {task} model ({', '.join(names)}); keep one, or name "
                                   f"them {BUNDLE_FILES['classify']} / {BUNDLE_FILES['segment']}")
        if not found:
            raise EdgebusError(f"{folder}: no .tflite with edgebus metadata; make a bundle with 'edgebus bundle'")
    manifest = folder / BUNDLE_JSON
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise EdgebusError(f"{manifest}: not valid JSON ({e.msg}); re-run 'edgebus bundle'") from None
        for task, p in found.items():
            entry = recorded.get(ROLE[task]) or {}
            if entry.get("file") == p.name and entry.get("sha256") and sha256_file(p) != entry["sha256"]:
                raise EdgebusError(f"{p}: sha256 differs from {BUNDLE_JSON}; the file was changed, re-run 'edgebus bundle'")
    return found.get("classify"), found.get("segment")


def make_bundle(out: str | Path, classifier: str | Path | None = None, segmenter: str | Path | None = None,
                fmt: str = "int8", overwrite: bool = False) -> Path:
    """Copy a classifier and/or segmenter (.tflite files or run directories: their `fmt` export) into
    `out` as classifier.tflite / segmenter.tflite, with bundle.json recording sources and sha256."""
    if classifier is None and segmenter is None:
        raise EdgebusError("bundle: pass --classifier and/or --segmenter")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise EdgebusError(f"{out}: folder is not empty; pick another --out or pass --overwrite")
    record = {"schema": "edgebus.bundle/1"}
    staged = []
    for task, src in (("classify", classifier), ("segment", segmenter)):
        if src is None:
            continue
        m = TaskModel(model_file(src, fmt), task)  # refuses a wrong or unlabelled file before anything is written
        staged.append((task, m))
    for task, m in staged:
        name = BUNDLE_FILES[task]
        atomic_write(out / name, m.path.read_bytes())
        record[ROLE[task]] = {**m.describe(), "file": name, "copied_from": str(m.path.resolve())}
    for task, name in BUNDLE_FILES.items():  # a replaced bundle keeps no stale model of the other task
        if task not in dict(staged) and (out / name).exists():
            (out / name).unlink()
    write_json(out / BUNDLE_JSON, record)
    return out


# ---------------------------------------------------------------- the pipeline

def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 3)


class LesionPipeline:
    """Classification + segmentation of one frame at a time. Load once, call `predict` per frame.

    classifier / segmenter: an exported .tflite (or a run directory: its int8 export); either may be
    None to run only the other. A file without edgebus metadata, of the wrong task, or whose input
    shape disagrees with its metadata raises EdgebusError here, at load time.
    """

    def __init__(self, classifier: str | Path | None = None, segmenter: str | Path | None = None,
                 num_threads: int = 1, xnnpack: bool = True, max_pixels: int = MAX_FRAME_PIXELS):
        if classifier is None and segmenter is None:
            raise EdgebusError("pass a classifier and/or a segmenter model (or a bundle folder)")
        self.classifier = TaskModel(classifier, "classify", num_threads, xnnpack) if classifier is not None else None
        self.segmenter = TaskModel(segmenter, "segment", num_threads, xnnpack) if segmenter is not None else None
        self.crops = self.classifier is not None and "crop" in self.classifier.contract  # segmentation-guided
        if self.crops and self.segmenter is None:
            raise EdgebusError(f"{self.classifier.path}: classifies a crop around the lesion (segmentation-guided, per "
                               "its metadata); give a segmenter too (--segmenter, or a bundle with both)")
        self.max_pixels = int(max_pixels)

    @classmethod
    def from_bundle(cls, folder: str | Path, **kw) -> "LesionPipeline":
        c, s = find_bundle(folder)
        return cls(classifier=c, segmenter=s, **kw)

    def describe(self) -> dict:
        return {ROLE[m.task]: m.describe() for m in (self.classifier, self.segmenter) if m is not None}

    def load(self, frame) -> np.ndarray:
        """A frame (path, numpy array or PIL image) as uint8 HxW gray; EdgebusError for a bad one."""
        if isinstance(frame, (str, Path)):
            return load_frame(frame, self.max_pixels)
        return gray_from_array(frame, self.max_pixels)

    def predict(self, frame, pixel_size_mm: float | None = None, name: str | None = None) -> dict:
        """One frame -> a result dict (see RESULT_FIELDS). Never raises for a bad frame: the result's
        `error` holds the message and the other values are None."""
        return self.predict_with_frame(frame, pixel_size_mm, name)[0]

    def predict_with_frame(self, frame, pixel_size_mm: float | None = None, name: str | None = None):
        """(result, uint8 gray frame or None): the frame too, e.g. for `render_overlay`."""
        if name is None:
            name = str(frame) if isinstance(frame, (str, Path)) else None
        res = {k: None for k in RESULT_FIELDS}
        res["file"] = name
        if pixel_size_mm is not None and not (np.isfinite(pixel_size_mm) and pixel_size_mm > 0):
            raise EdgebusError(f"pixel size {pixel_size_mm} mm: must be a positive number")
        res["pixel_size_mm"] = None if pixel_size_mm is None else float(pixel_size_mm)
        t0 = time.perf_counter()
        try:
            gray = self.load(frame)
        except EdgebusError as e:
            res["error"] = str(e)
            return res, None
        except Exception as e:  # anything else a decoder throws: still one frame's error, not a crash
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            res["error"] = f"{name or 'frame'}: could not be read ({type(e).__name__}: {first}); replace or remove it"
            return res, None
        t1 = time.perf_counter()
        lat = {"load": _ms(t0, t1), "classify": None, "segment": None}
        h, w = gray.shape
        res["height"], res["width"] = int(h), int(w)
        inputs = {}

        def model_input(m: TaskModel) -> np.ndarray:
            key = (tuple(m.contract["size"]), m.contract["channels"])
            if key not in inputs:
                inputs[key] = to_model_input(gray, m.contract)
            return inputs[key]

        box = None
        if self.segmenter is not None:  # first: a lesion-crop classifier needs its box
            s = self.segmenter
            ta = time.perf_counter()
            prob = s.run(model_input(s)).reshape(s.size).astype(np.float32)
            full = np.asarray(Image.fromarray(prob).resize((w, h), Image.BILINEAR))
            mask = (full >= s.threshold).astype(np.uint8)
            lat["segment"] = _ms(ta, time.perf_counter())
            area = int(mask.sum())
            res["mask"] = mask
            res["mask_threshold"] = s.threshold
            res["mask_area_px"] = area
            if pixel_size_mm is not None:
                res["mask_area_mm2"] = round(area * float(pixel_size_mm) ** 2, 4)
            if area:
                ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
                res["bbox"] = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
            if self.crops:  # on the model's map, as in training (edgebus.training.crops)
                box = lesion_box(prob >= s.threshold)
        if self.classifier is not None:
            c = self.classifier
            ta = time.perf_counter()
            if self.crops:
                x = to_model_input(gray, c.contract, box)
                res["crop"] = crop_square_px(gray.shape, box, c.contract["crop"]["margin"])
            else:
                x = model_input(c)
            p = float(np.clip(c.run(x).reshape(-1)[0], 0.0, 1.0))
            res["prob_malignant"] = round(p, 6)
            res["threshold"] = c.threshold
            res["label"] = c.labels[1] if p >= c.threshold else c.labels[0]
            lat["classify"] = _ms(ta, time.perf_counter())
        lat["total"] = _ms(t0, time.perf_counter())
        res["latency_ms"] = lat
        return res, gray

    def overlay(self, frame, result: dict | None = None) -> Image.Image:
        """The overlay image of a frame (predicting it first when no result is given)."""
        gray = self.load(frame)
        if result is None:
            result = self.predict(gray)
        return render_overlay(gray, result)


# ---------------------------------------------------------------- folder runs

def breast_pixel_sizes(root: str | Path) -> dict[str, float]:
    """{image file name: mm per pixel} from a BrEaST-layout sheet (its Pixel_size is cm per pixel: x10)."""
    import importlib.util

    try:
        missing = importlib.util.find_spec("pandas") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        raise EdgebusError("--data: reading the BrEaST sheet's Pixel_size needs pandas and openpyxl; "
                           "install edgebus[train] or pass --pixel-size")
    from edgebus.data.breast import read_breast

    ds = read_breast(root)
    return {c.image.name: c.pixel_size * 10.0 for c in ds.cases if c.pixel_size and c.pixel_size > 0}


def _row(res: dict, overlay: str | None, mask_file: str | None) -> dict:
    """A JSON-able result row (the mask array is written as a PNG, not inlined)."""
    row = {k: v for k, v in res.items() if k != "mask"}
    row["overlay"], row["mask_file"] = overlay, mask_file
    return row


def _csv_row(row: dict) -> dict:
    out = {k: row.get(k) for k in CSV_FIELDS}
    for i, k in enumerate(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
        out[k] = row["bbox"][i] if row.get("bbox") else None
    for k in LATENCY_KEYS:
        out[f"latency_{k}_ms"] = (row.get("latency_ms") or {}).get(k)
    return {k: "" if v is None else v for k, v in out.items()}


def _out_names(files: list[Path]) -> list[str]:
    stems = [f.stem for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f.name.replace(".", "_") if f.stem in dup else f.stem for f in files]


def predict_files(pipeline: LesionPipeline, files: list[Path], out: str | Path, pixel_sizes: dict | None = None,
                  pixel_size_mm: float | None = None, overlays: bool = True, masks: bool = True, log=print) -> dict:
    """Predict every file, one log line each; write predictions.jsonl, predictions.csv, summary.json,
    overlays/<name>.png and masks/<name>.png (0/255) into `out`. A bad frame gets a row with `error`
    and the run goes on. Returns the summary (counts, frames per second, models, output paths)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another --out")
    rows, infer_s, total_s = [], 0.0, 0.0
    pixel_sizes = pixel_sizes or {}
    t_start = time.perf_counter()
    for f, stem in zip(files, _out_names(files)):
        px = pixel_sizes.get(f.name, pixel_size_mm)
        res, gray = pipeline.predict_with_frame(f, px, name=str(f))
        ov = mk = None
        if res["error"] is None:
            lat = res["latency_ms"]
            infer_s += ((lat["classify"] or 0) + (lat["segment"] or 0)) / 1000
            total_s += lat["total"] / 1000
            if overlays:
                ov = str(save_png(out / "overlays" / f"{stem}.png", render_overlay(gray, res)))
            if masks and res["mask"] is not None:
                mk = str(save_png(out / "masks" / f"{stem}.png", Image.fromarray(res["mask"] * np.uint8(255))))
            log(f"{f.name}: {_describe_result(res)}")
        else:
            log(f"{f.name}: error: {res['error']}")
        rows.append(_row(res, ov, mk))
    wall = time.perf_counter() - t_start
    ok = sum(r["error"] is None for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(_csv_row(r) for r in rows)
    try:
        jsonl = atomic_write(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        csv_path = atomic_write(out / "predictions.csv", buf.getvalue())
    except OSError as e:
        raise EdgebusError(f"{out}: cannot write results ({e.strerror or e}); check the output folder") from None
    summary = {
        "schema": "edgebus.predict/1",
        "frames": len(rows), "ok": ok, "failed": len(rows) - ok,
        "failed_files": [r["file"] for r in rows if r["error"] is not None],
        "fps_inference": round(ok / infer_s, 2) if infer_s > 0 else None,  # classify + segment only
        "fps_end_to_end": round(ok / total_s, 2) if total_s > 0 else None,  # + decode and post-processing
        "wall_s": round(wall, 3),
        "models": pipeline.describe(),
        "predictions": {"jsonl": str(jsonl), "csv": str(csv_path)},
        "overlays": str(out / "overlays") if overlays and ok else None,
    }
    summary["summary_file"] = str(write_json(out / "summary.json", summary))
    return summary


def _describe_result(res: dict) -> str:
    parts = []
    if res["prob_malignant"] is not None:
        parts.append(f"{res['label']} {res['prob_malignant']:.3f} (threshold {res['threshold']:.2f})")
    if res["mask_area_px"] is not None:
        if res["mask_area_px"] == 0:
            parts.append("no lesion found")
        else:
            area = f"{res['mask_area_mm2']:.1f} mm2" if res["mask_area_mm2"] is not None else f"{res['mask_area_px']} px"
            parts.append(f"lesion {area}, bbox {res['bbox']}")
    parts.append(f"{res['latency_ms']['total']:.1f} ms")
    return ", ".join(parts)
