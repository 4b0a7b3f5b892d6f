"""The cart pipeline: classify and segment ultrasound frames with exported .tflite files, offline.

Core install only (numpy, Pillow, a TFLite interpreter): no TensorFlow, tf_keras or pandas is
imported here, so a cart application can embed it::

    from edgebus.runtime import LesionPipeline
    cart = LesionPipeline(classifier="classifier.tflite", segmenter="segmenter.tflite")  # load once
    r = cart.predict("frame.png", pixel_size_mm=0.078)                                     # per frame
    r["prob_malignant"], r["label"], r["mask"], r["mask_area_mm2"], r["bbox"]

With a pixel size the lesion's size is also given in mm as a radiologist's calipers take it on the frame:
`lesion_width_mm` along the transducer face and `lesion_height_mm` along the beam (anteroposterior), the
extents of the lesion's mask (pixels taken as square).

A classifier trained with BI-RADS descriptor heads also gives `descriptors` ({name: {"probability",
"finding"}}) and `findings` ("irregular shape, not circumscribed margin, posterior shadowing, ...").

A bundle with a fusion (`edgebus fuse`, `edgebus bundle --fusion`) also measures the segmenter's lesion
(`shape`: orientation, solidity, compactness, extent, in the frame) and decides on the classifier's score
and that shape together; `prob_classifier` then keeps the classifier's own output. Where the fusion
carries BI-RADS descriptors measured on the mask (shape, margin, posterior features...), `descriptors`
and `findings` are those (they replace a classifier head's), followed by the orientation.

A bundle with a presence rule (`edgebus presence`, `edgebus bundle --presence`) first decides whether the frame
shows a lesion at all (`lesion`: present, score, threshold, the rule); where it does not, the label is "no lesion
found" and the frame has no box, area, shape or findings (the probabilities stay, for audit).

`gates` says what each model's export gates decided ("classifier passed, segmenter passed"; "not gated"
for a file exported before gates or a CV fold's), or which failed file was accepted (--accept-failed-gates).

`prob_raw` is the output the stored threshold applies to (`label`): the classifier's, or with a fusion the
fused one; `prob_malignant` is that output through its calibration (Platt scaling fitted out-of-fold,
`edgebus operating-point CV_DIR` or `edgebus fuse`), or the same number when none is carried.

Each model is preprocessed with the contract recorded in its own embedded metadata (the shared
`edgebus.data.preprocess` path) and thresholded at the operating threshold stored there. A
lesion-crop classifier (segmentation-guided; its contract has a `crop`) needs the segmenter: the
frame is segmented first, and the classifier sees the square around the largest predicted region
(`r["crop"]`, frame pixels), or the whole frame padded square when no lesion is found.

Models see the frame's image area (`image_area`, [x0, y0, x1, y1] in the frame, a DICOM frame being
its B-mode region already: black margins beside and above the image cut off, as in training;
edgebus.data.preprocess.image_area). The mask is returned at the
ORIGINAL frame size (zero in the margins): the model's lesion-probability map is resized back to the
image area with bilinear interpolation, then thresholded (smoother outlines than resizing a binary
mask with nearest neighbour, and the same threshold rule, prob >= threshold, as the metrics).
The bbox is [x0, y0, x1, y1] in frame pixels with exclusive ends (PIL's box convention: the box
is x1 - x0 pixels wide), None when the mask is empty.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from edgebus.core.descriptors import findings
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.units import pixel_size_problem
from edgebus.data.preprocess import crop_square_px, image_area, lesion_and_regions, lesion_box, prob_in_frame
from edgebus.runtime.cautions import CANDIDATE_SHARE, SYNTHETIC, several_regions, trained_on_synthetic
from edgebus.runtime.bundle import bundle_acceptances, load_bundle, load_fusion, load_presence, load_site, read_bundle
from edgebus.runtime.ensemble import EnsembleModel
from edgebus.runtime.decision import cart_decision
from edgebus.runtime.dicom import is_dicom, iter_frames
from edgebus.runtime.frames import MAX_FRAME_PIXELS, gray_from_array, load_frame
from edgebus.runtime.fusion import orientation_words, shape_result
from edgebus.runtime.model import ExportedModel, check_gates
from edgebus.runtime.overlay import render_overlay
from edgebus.runtime.presence import NO_LESION

LATENCY_KEYS = ("load", "invoke", "classify", "segment", "total")  # invoke: the interpreter calls only


def dicom_fields(path, fr, pixel_size_mm=None) -> dict:
    """The DICOM part of a frame's result: where it came from and where its pixel size did."""
    return {"source_file": str(path), "frame": fr.number, "frames": fr.frames, "sop_instance_uid": fr.sop_instance_uid,
            "region": fr.region, "pixel_size_from": "dicom regions" if fr.pixel_size_mm else
            ("given" if pixel_size_mm else None), "note": fr.note}


RESULT_FIELDS = ("file", "width", "height", "image_area", "lesion", "prob_malignant", "prob_raw", "prob_classifier", "label", "threshold", "descriptors", "findings", "shape", "mask_threshold", "mask",
                 "mask_area_px", "pixel_size_mm", "mask_area_mm2", "lesion_width_mm", "lesion_height_mm", "bbox", "regions", "crop", "latency_ms", "gates", "warnings", "error")


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 3)


def _mask_fields(res: dict, found: tuple, threshold: float, hw, area_box, pixel_size_mm) -> None:
    """The lesion in the frame (zero in its margins), its area and box, into `res`. `found`: the
    lesion_and_regions of the lesion map (its largest 8-connected region at the image area's size, so
    specks do not stretch the box or add to the area, and the regions' areas); `regions` counts the
    candidate lesions (cautions.CANDIDATE_SHARE), and more than one adds a warning."""
    (h, w), (x0, y0, x1, y1), (lesion, areas) = hw, area_box, found
    mask = np.zeros((h, w), dtype=np.uint8)
    if lesion is not None:
        mask[y0:y1, x0:x1] = lesion
    area = int(mask.sum())
    res["mask"], res["mask_threshold"], res["mask_area_px"] = mask, threshold, area
    res["regions"] = int(sum(a >= CANDIDATE_SHARE * areas[0] for a in areas)) if area else 0
    if res["regions"] > 1:
        res["warnings"] = res["warnings"] + [several_regions(res["regions"])]
    if pixel_size_mm is not None:
        res["mask_area_mm2"] = round(area * float(pixel_size_mm) ** 2, 4)
    if area:
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        res["bbox"] = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
        if pixel_size_mm is not None:  # the calipers' width and (anteroposterior) height of the lesion
            res["lesion_width_mm"] = round((res["bbox"][2] - res["bbox"][0]) * float(pixel_size_mm), 2)
            res["lesion_height_mm"] = round((res["bbox"][3] - res["bbox"][1]) * float(pixel_size_mm), 2)


def _lesion_free(res: dict) -> None:
    """A frame the presence rule calls lesion-free: no malignancy label, no box, no area, no findings;
    the probabilities stay in the row for audit, and `lesion` says which rule decided."""
    res["label"] = NO_LESION
    if res["mask"] is not None:
        res["mask"] = np.zeros_like(res["mask"])
    if (res["regions"] or 0) > 1:  # no lesion, so no candidates to look at
        res["warnings"] = [x for x in res["warnings"] if x != several_regions(res["regions"])]
    for k in ("bbox", "mask_area_px", "mask_area_mm2", "lesion_width_mm", "lesion_height_mm", "shape", "descriptors",
              "findings", "crop", "regions"):
        res[k] = None


class LesionPipeline:
    """Classification + segmentation of one frame at a time. Load once, call `predict` per frame.

    classifier / segmenter: an exported .tflite (or a run directory: its int8 export); either may be
    None to run only the other. A file without edgebus metadata, of the wrong task, or whose input
    shape disagrees with its metadata raises EdgebusError here, at load time; so does a file that
    failed its export gates, unless accept_failed_gates (then every result's `gates` says so).
    """

    def __init__(self, classifier: str | Path | None = None, segmenter: str | Path | None = None,
                 num_threads: int = 1, xnnpack: bool = True, max_pixels: int = MAX_FRAME_PIXELS, fusion=None,
                 site: dict | None = None, accept_failed_gates: bool = False, presence=None):
        if classifier is None and segmenter is None:
            raise EdgebusError("pass a classifier and/or a segmenter model (or a bundle folder)")
        if classifier is None or isinstance(classifier, EnsembleModel):
            self.classifier = classifier
        else:
            self.classifier = ExportedModel(classifier, "classify", num_threads, xnnpack)
        self.segmenter = ExportedModel(segmenter, "segment", num_threads, xnnpack) if segmenter is not None else None
        self.crops = self.classifier is not None and "crop" in self.classifier.contract  # segmentation-guided
        if self.crops and self.segmenter is None:
            raise EdgebusError(f"{self.classifier.path}: classifies a crop around the lesion (segmentation-guided, per "
                               f"its metadata); give a segmenter too ({flag('segmenter')}, or a bundle with both)")
        self.max_pixels = int(max_pixels)
        self.fusion = fusion  # runtime.fusion.ShapeFusion: classifier score + the segmenter's lesion shape
        if fusion is not None and (self.classifier is None or (self.segmenter is None and not self.classifier.has_mask)):
            raise EdgebusError(f"{fusion.path}: fuses the classifier with the lesion's shape; give a segmenter too "
                               "(or a multi-task classifier, whose file gives the mask)")
        self.site = site  # runtime.site: a threshold chosen on a site's own cases replaces the shipped one
        self.presence = presence  # runtime.presence.LesionPresence: "no lesion found" before any malignancy label
        self.decision = cart_decision(self.classifier, fusion, site)  # which threshold and calibration, decided once
        self._invoking = threading.Lock()
        self._keys = {}  # id(model) -> its contract key (_contract_key)
        if presence is not None and self.segmenter is None and not (self.classifier is not None and self.classifier.has_mask):
            raise EdgebusError(f"{presence.path}: decides on the lesion-probability map; give a segmenter too "
                               "(or a multi-task classifier, whose file gives the mask)")
        models = [m for m in (self.classifier, self.segmenter) if m is not None]
        accepted = [a for a in (check_gates(m, accept_failed_gates) for m in models) if a]
        # what every result row says of the export gates: the acceptance of a failed file, or each file's verdict
        self.gates = "; ".join(accepted) or ", ".join(
            f"{m.task.role} {m.gate_status() if isinstance(m, ExportedModel) else 'not gated (fold ensemble)'}" for m in models)
        # said in every result row and on every overlay: a model of a synthetic set is no clinical model
        self.warnings = [SYNTHETIC] if any(trained_on_synthetic(m.meta) for m in models) else []
        failed = presence.gate() if presence is not None else None
        if failed:  # a presence rule that missed its stated rate out of fold: refused like a failed model file
            if not accept_failed_gates:
                raise EdgebusError(f"{failed}; fit it again ('edgebus presence'), or pass "
                                   f"{flag('accept_failed_gates')}")
            self.gates += f"; presence rule FAILED its gate, accepted: {failed}"

    @classmethod
    def from_bundle(cls, folder: str | Path, num_threads: int = 1, xnnpack: bool = True, accept_failed_gates: bool = False,
                    **kw) -> "LesionPipeline":
        """The cart of a bundle folder; a file that failed its gates runs where the bundle records that
        it was accepted ('edgebus bundle --accept-failed-gates') or accept_failed_gates is given."""
        rec = read_bundle(folder)  # every file it names sha256-checked once
        c, s = load_bundle(folder, num_threads, xnnpack, rec)
        accept = accept_failed_gates or bool(bundle_acceptances(folder, rec))
        return cls(classifier=c, segmenter=s, num_threads=num_threads, xnnpack=xnnpack, fusion=load_fusion(folder, rec),
                   site=load_site(folder, rec), accept_failed_gates=accept, presence=load_presence(folder, rec), **kw)

    def _contract_key(self, m) -> tuple:
        """What decides a model's resized pixels (size, channels, normalisation), worked out once per model."""
        if id(m) not in self._keys:
            self._keys[id(m)] = (tuple(m.contract["size"]), m.contract["channels"],
                                 json.dumps(m.contract.get("normalize"), sort_keys=True))
        return self._keys[id(m)]

    def describe(self) -> dict:
        d = {m.task.role: m.describe() for m in (self.classifier, self.segmenter) if m is not None}
        if self.fusion is not None:
            d["fusion"] = self.fusion.describe()
        if self.presence is not None:
            d["presence"] = self.presence.describe()
        if self.site is not None:
            d["site"] = {"threshold": self.site["threshold"], "calibration": self.site.get("calibration"),
                         "sha256": self.site["sha256"],
                         "shipped_threshold": self.site["shipped_threshold"], "chosen_on": self.site["chosen_on"]}
        return d

    def load(self, frame) -> np.ndarray:
        """A frame (path, numpy array or PIL image) as uint8 HxW gray; EdgebusError for a bad one."""
        if isinstance(frame, (str, Path)):
            return load_frame(frame, self.max_pixels)
        return gray_from_array(frame, self.max_pixels)

    def predict(self, frame, pixel_size_mm: float | None = None, name: str | None = None) -> dict:
        """One frame -> a result dict (see RESULT_FIELDS). Never raises for a bad frame: the result's
        `error` holds the message and the other values are None. A single-frame DICOM file is read
        as predict_dicom reads it."""
        if isinstance(frame, (str, Path)) and is_dicom(frame):
            rows = self.predict_dicom(frame, pixel_size_mm)
            if len(rows) > 1:
                raise EdgebusError(f"{frame}: a multi-frame DICOM ({len(rows)} frames); use predict_dicom")
            return rows[0]
        return self.predict_with_frame(frame, pixel_size_mm, name)[0]

    def stream(self, frames, pixel_size_mm: float | None = None, workers: int = 2):
        """Results of an iterable of frames (paths, arrays or PIL images; a live capture's buffer), in
        order, `workers` frames in flight: one frame's decode and post-processing (Python, which holds
        the GIL) run while another frame's interpreter call (which releases it) does, so a cart's
        second core is used. Each interpreter still runs one frame at a time. Results are those of
        predict_with_frame, frame by frame."""
        if workers < 1:
            raise EdgebusError(f"workers {workers}: give 1 or more")
        with ThreadPoolExecutor(workers) as pool:
            pending = deque()
            for frame in frames:
                pending.append(pool.submit(self.predict_with_frame, frame, pixel_size_mm))
                if len(pending) > workers:
                    yield pending.popleft().result()[0]
            while pending:
                yield pending.popleft().result()[0]

    def predict_dicom(self, path, pixel_size_mm: float | None = None) -> list[dict]:
        """Every frame of an ultrasound DICOM file, one result each (with frame number and SOP
        Instance UID); the pixel size from its ultrasound regions wins over `pixel_size_mm`."""
        return [res for res, _ in self.iter_dicom(path, pixel_size_mm)]

    def iter_dicom(self, path, pixel_size_mm: float | None = None, skip=None):
        """(result, gray) per frame of a DICOM file, decoded one at a time; a file that cannot be
        read gives one result with its `error`. skip(name) true: the frame is not run, its result
        is only {"file", "frame", "frames", "skipped": True} (a resumed folder run)."""
        try:
            for fr in iter_frames(path, self.max_pixels):
                name = f"{path}#{fr.number}" if fr.frames > 1 else str(path)
                if skip is not None and skip(name):
                    yield {"file": name, "frame": fr.number, "frames": fr.frames, "skipped": True}, None
                    continue
                res, gray = self.predict_with_frame(fr.gray, fr.pixel_size_mm or pixel_size_mm, name)
                res.update(dicom_fields(path, fr, pixel_size_mm))
                yield res, gray
        except Exception as e:  # EdgebusError, or what a reader throws for a file it did not foresee: one row
            error = str(e) if isinstance(e, EdgebusError) else \
                f"{path}: could not be read ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}); replace or remove it"
            res = {k: None for k in RESULT_FIELDS}
            res.update(file=str(path), error=error, source_file=str(path), gates=self.gates, warnings=list(self.warnings))
            yield res, None

    def predict_with_frame(self, frame, pixel_size_mm: float | None = None, name: str | None = None):
        """(result, uint8 gray frame or None): the frame too, e.g. for `render_overlay`."""
        if name is None:
            name = str(frame) if isinstance(frame, (str, Path)) else None
        res = {k: None for k in RESULT_FIELDS}
        res["file"] = name
        res["gates"] = self.gates
        res["warnings"] = list(self.warnings)
        if pixel_size_mm is not None and pixel_size_problem(pixel_size_mm):  # a wrong unit, not a frame
            raise EdgebusError(pixel_size_problem(pixel_size_mm))
        res["pixel_size_mm"] = None if pixel_size_mm is None else float(pixel_size_mm)
        t0 = time.perf_counter()
        gray = self._read(frame, name, res)
        if gray is None:
            return res, None
        t1 = time.perf_counter()
        lat = {"load": _ms(t0, t1), "invoke": 0.0, "classify": None, "segment": None}
        h, w = gray.shape
        res["height"], res["width"] = int(h), int(w)
        x0, y0, x1, y1 = image_area(gray)  # models see the image without black margins, as in training
        res["image_area"] = [x0, y0, x1, y1]
        image = gray[y0:y1, x0:x1]
        pixels = {}

        def model_input(m):  # one resize per contract, shared by the models; then each model's table lookup
            key = self._contract_key(m)
            if key not in pixels:
                pixels[key] = m.pixels_for(image)
            return m.tensor_for(pixels[key])

        box = prob = found = None
        mask_threshold = None
        if self.segmenter is not None:  # first: a lesion-crop classifier needs its box
            prob, mask_threshold, box = self._segment(model_input, lat)
        if self.classifier is not None:
            c = self.classifier
            ta = time.perf_counter()
            if self.crops:
                out = self._invoke(c, c.tensor_for(c.pixels_for(image, box)), lat)
                cx0, cy0, cx1, cy1 = crop_square_px(image.shape, box, c.contract["crop"]["margin"])
                res["crop"] = [cx0 + x0, cy0 + y0, cx1 + x0, cy1 + y0]
            else:
                out = self._invoke(c, model_input(c), lat)
            prob, mask_threshold, found = self._score(res, out, prob, mask_threshold, image)
            lat["classify"] = _ms(ta, time.perf_counter())
        if prob is not None:
            if self.classifier is None:  # a segmenter alone: its lesion is found here
                found = lesion_and_regions(prob, image.shape, mask_threshold, prob_in_frame(prob, image.shape))
            _mask_fields(res, found, mask_threshold, (h, w), (x0, y0, x1, y1), pixel_size_mm)
            if self.presence is not None:  # first of all: is there a lesion in this frame?
                res["lesion"] = self.presence.decide(prob, mask_threshold)
                if not res["lesion"]["present"]:
                    _lesion_free(res)
        lat["invoke"] = round(lat["invoke"], 3)
        lat["total"] = _ms(t0, time.perf_counter())
        res["latency_ms"] = lat
        return res, gray

    def _read(self, frame, name: str | None, res: dict) -> np.ndarray | None:
        """The frame as uint8 gray, or None with `res["error"]` saying why: a frame that cannot be read is
        one row's error, never the end of a run."""
        try:
            return self.load(frame)
        except EdgebusError as e:
            res["error"] = str(e)
        except Exception as e:  # anything else a decoder throws: still one frame's error, not a crash
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            res["error"] = f"{name or 'frame'}: could not be read ({type(e).__name__}: {first}); replace or remove it"
        return None

    def _invoke(self, m, tensor, lat: dict) -> dict:
        """One model's invoke(s), timed apart from the rest of the frame (lat["invoke"])."""
        with self._invoking:  # an interpreter runs one frame at a time (stream() overlaps the rest)
            ta = time.perf_counter()
            out = m.outputs_for(tensor)
            lat["invoke"] += (time.perf_counter() - ta) * 1000
        return out

    def _segment(self, model_input, lat: dict) -> tuple:
        """(lesion map, its threshold, the box a lesion-crop classifier sees) from the segmenter; its time
        (lat["segment"]) counts its input's resize too."""
        s = self.segmenter
        ta = time.perf_counter()
        prob = self._invoke(s, model_input(s), lat)["mask"]
        mask_threshold = s.threshold
        lat["segment"] = _ms(ta, time.perf_counter())
        box = None
        if self.crops:  # on the model's map, as in training (edgebus.training.crops)
            box = lesion_box(prob >= s.threshold)
        return prob, mask_threshold, box

    def _score(self, res: dict, out: dict, prob, mask_threshold, image) -> tuple:
        """The classifier's outputs into `res`: its findings, the fusion with the lesion's shape where there
        is one, then the label. Returns (lesion map, its threshold, the lesion found): a multi-task file's
        own mask stands in where no segmenter gave one."""
        c = self.classifier
        if prob is None and out["mask"] is not None:  # a multi-task file: the same invoke gave the mask
            prob, mask_threshold = out["mask"], c.mask_threshold
        full = None if prob is None else prob_in_frame(prob, image.shape)  # one resize: mask, area and shape
        found = None
        if prob is not None:  # the lesion, found once: the mask, box and area, and the fusion's shape
            found = lesion_and_regions(prob, image.shape, mask_threshold, full)
        p = float(np.clip(out["prob"], 0.0, 1.0))
        if out["descriptors"] is not None:  # the radiologist's words: "irregular shape, not circumscribed margin, ..."
            res["descriptors"], res["findings"] = findings(out["descriptors"][None], c.descriptors)
        if self.fusion is not None:  # the classifier's score and the lesion's measured shape, one model
            res["prob_classifier"] = round(p, 6)
            p, shape, desc = self.fusion.score(p, prob, image, mask_threshold, full, found[0])
            res["shape"] = shape_result(shape)
            if desc is not None:  # measured on the mask: these replace a classifier head's words
                res["descriptors"], res["findings"] = findings(desc, self.fusion.descriptors)
            if shape is not None:
                res["findings"] = ", ".join(x for x in (res["findings"], orientation_words(shape[0])) if x)
        res.update(self.decision.decide(p))  # threshold and calibration: the file's, the fusion's or the site's
        return prob, mask_threshold, found

    def overlay(self, frame, result: dict | None = None) -> Image.Image:
        """The overlay image of a frame (predicting it first when no result is given). With a file and its
        result, pass the gray frame predict_with_frame returned instead of the path: no second decode."""
        gray = self.load(frame)
        if result is None:
            result = self.predict(gray)
        return render_overlay(gray, result)
