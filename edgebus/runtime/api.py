"""The Python entry point a user can guess: `edgebus.load(path)` gives a cart, calling it gives a `Prediction`.

    import edgebus
    cart = edgebus.load("edgebus-demo/cart")      # a cart bundle, an exported .tflite, or a run folder
    p = cart("frame.png", pixel_size_mm=0.078)   # a path, a numpy array or a PIL image
    p.label, p.prob, p.bbox, p.area_mm2, p.findings, p.warnings
    p.plot().save("overlay.png"); p.save("out/"); json.dumps(p.to_dict())
    for p in cart.predict("scans/"): ...        # folders, globs and lists stream, one frame at a time

Core install only (no TensorFlow). Errors are `edgebus.EdgebusError` with one line that names the file
and the fix. The same pipeline as `edgebus predict` (edgebus.runtime.pipeline), so a row of
predictions.jsonl and `Prediction.to_dict()` hold the same fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgebus.core.errors import EdgebusError
from edgebus.core.io import json_default, make_dir, write_json
from edgebus.runtime.dicom import is_dicom
from edgebus.data.inputs import resolve_inputs
from edgebus.runtime.metadata import read_metadata
from edgebus.runtime.model import resolve_model_path
from edgebus.runtime.overlay import render_overlay, save_png
from edgebus.runtime.pipeline import LesionPipeline

WHAT = "give a cart bundle folder ('edgebus bundle'), an exported .tflite ('edgebus export') or a run folder"


class Prediction:
    """One frame's result. The fields are the pipeline's row (`.result`, documented in
    edgebus.runtime.pipeline); the properties name the ones most read."""

    def __init__(self, result: dict, gray: np.ndarray | None = None):
        self.result, self.gray = result, gray

    file = property(lambda self: self.result.get("file"))
    label = property(lambda self: self.result.get("label"), doc="benign / malignant at the shipped threshold, "
                     "'no lesion found' (a presence rule), or None for a segmenter alone")
    prob = property(lambda self: self.result.get("prob_malignant"), doc="the shown (calibrated) malignancy probability")
    threshold = property(lambda self: self.result.get("threshold"))
    mask = property(lambda self: self.result.get("mask"), doc="uint8 HxW at the frame's size, 1 = the lesion")
    bbox = property(lambda self: self.result.get("bbox"), doc="[x0, y0, x1, y1] in frame pixels, exclusive ends")
    area_mm2 = property(lambda self: self.result.get("mask_area_mm2"))
    size_mm = property(lambda self: None if self.result.get("lesion_width_mm") is None else
                       (self.result["lesion_width_mm"], self.result["lesion_height_mm"]),
                       doc="(width along the transducer face, anteroposterior height) of the lesion in mm, or None")
    area_px = property(lambda self: self.result.get("mask_area_px"))
    findings = property(lambda self: self.result.get("findings"), doc="the BI-RADS words, e.g. 'irregular shape, ...'")
    warnings = property(lambda self: list(self.result.get("warnings") or []))
    error = property(lambda self: self.result.get("error"))

    def __repr__(self) -> str:
        if self.error:
            return f"Prediction({self.file!r}, error={self.error!r})"
        prob = None if self.prob is None else round(self.prob, 3)
        return (f"Prediction({self.file!r}, label={self.label!r}, prob={prob}, area_mm2={self.area_mm2}, "
                f"bbox={self.bbox}, warnings={len(self.warnings)})")

    def to_dict(self) -> dict:
        """JSON-safe: the row as predictions.jsonl holds it (the mask is left out: `save` writes it as a PNG)."""
        row = {k: v for k, v in self.result.items() if k != "mask"}
        return json.loads(json.dumps(row, default=json_default))

    def plot(self):
        """The overlay as a PIL image: the frame, the lesion's contour and box, the label and the warnings."""
        if self.gray is None:
            raise EdgebusError(f"{self.file or 'frame'}: no frame to draw on ({self.error or 'not kept'})")
        return render_overlay(self.gray, self.result)

    def save(self, folder: str | Path, overwrite: bool = False) -> dict:
        """NAME.json, and NAME_overlay.png and NAME_mask.png (0/255) where there is a frame and a mask, into
        `folder`; each written whole (temp file + rename). A file already there is kept unless `overwrite`
        (two frames of one name from two folders must not lose the first one's results). Returns {kind: path}."""
        folder = make_dir(folder, "folder to save in")
        stem = Path(str(self.file)).stem if self.file else "frame"
        names = {"overlay": f"{stem}_overlay.png", "mask": f"{stem}_mask.png", "json": f"{stem}.json"}
        there = [folder / n for n in names.values() if (folder / n).exists()]
        if there and not overwrite:
            raise EdgebusError(f"{there[0]}: exists (another frame named {stem}?); save into another folder, or pass "
                               "overwrite=True to replace it")
        out = {}
        if self.gray is not None:
            out["overlay"] = save_png(folder / names["overlay"], self.plot())
        if self.mask is not None:
            out["mask"] = save_png(folder / names["mask"], Image.fromarray(self.mask * np.uint8(255)))
        out["json"] = write_json(folder / names["json"], self.to_dict())
        return {k: str(v) for k, v in out.items()}


class Cart:
    """Loaded models (edgebus.load); call it on one frame, or `predict` many."""

    def __init__(self, pipeline: LesionPipeline, source: Path):
        self.pipeline, self.source = pipeline, source

    @property
    def warnings(self) -> list[str]:
        """What every prediction of this cart says (e.g. a model of a synthetic set)."""
        return list(self.pipeline.warnings)

    def describe(self) -> dict:
        """The models: files, sha256, thresholds, calibration, gates (as summary.json's `models`)."""
        return self.pipeline.describe()

    def __repr__(self) -> str:
        roles = ", ".join(self.describe())
        return f"Cart({str(self.source)!r}: {roles})"

    def __call__(self, frame, pixel_size_mm: float | None = None) -> Prediction:
        """One frame (a file path, a numpy array or a PIL image) -> Prediction; EdgebusError for a bad one."""
        if isinstance(frame, (list, tuple)) or (isinstance(frame, (str, Path)) and Path(frame).is_dir()):
            raise EdgebusError(f"{frame}: several frames; use cart.predict(...), which streams them")
        if isinstance(frame, (str, Path)) and is_dicom(frame):
            rows = self.pipeline.predict_dicom(frame, pixel_size_mm)
            if len(rows) > 1:
                raise EdgebusError(f"{frame}: a cine loop of {len(rows)} frames; use cart.predict(...)")
            res, gray = rows[0], None
        else:
            res, gray = self.pipeline.predict_with_frame(frame, pixel_size_mm)
        if res.get("error"):
            raise EdgebusError(res["error"])
        return Prediction(res, gray)

    def predict(self, frames, pixel_size_mm: float | None = None, skip_errors: bool = False):
        """Predictions of a folder, a glob ('scans/*.png'), a list of paths or arrays, or one path, one at a
        time (a generator: nothing is held beyond the current frame). A bad frame raises EdgebusError,
        or with skip_errors yields a Prediction whose `.error` says why."""
        if isinstance(frames, (str, Path)):  # a frame, a folder or a pattern
            frames = resolve_inputs(frames)[0]
        for frame in frames:
            if isinstance(frame, (str, Path)) and is_dicom(frame):  # every frame of a cine loop
                pairs = self.pipeline.iter_dicom(frame, pixel_size_mm)
            else:
                pairs = [self.pipeline.predict_with_frame(frame, pixel_size_mm)]
            for res, gray in pairs:
                if res.get("error") and not skip_errors:
                    raise EdgebusError(res["error"])
                yield Prediction(res, gray)


def load(path: str | Path, threads: int = 1, accept_failed_gates: bool = False) -> Cart:
    """A cart from a bundle folder (`edgebus bundle`: its classifier, segmenter, fusion, presence rule and
    site threshold), an exported .tflite (classifier or segmenter, by its metadata) or a run folder (its
    int8 export). Nothing is downloaded; the files are checked against their sha256 and gates."""
    p = Path(path)
    if not p.exists():
        raise EdgebusError(f"{p}: not found; {WHAT}")
    if p.is_dir() and (p / "bundle.json").is_file():
        return Cart(LesionPipeline.from_bundle(p, threads, accept_failed_gates=accept_failed_gates), p)
    if p.is_dir() and not (p / "manifest.json").is_file():
        raise EdgebusError(f"{p}: neither a cart bundle (no bundle.json) nor a run folder (no manifest.json); {WHAT}")
    model = resolve_model_path(p)
    task = (read_metadata(model) or {}).get("task")  # None: ExportedModel says what is wrong with the file
    role = "segmenter" if task == "segment" else "classifier"
    return Cart(LesionPipeline(**{role: model}, num_threads=threads, accept_failed_gates=accept_failed_gates), p)
