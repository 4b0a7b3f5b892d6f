"""The one loader for exported models: `ExportedModel` is a .tflite checked against its embedded
edgebus metadata (task, preprocessing contract, I/O shapes) and, when it comes from a run, against
the sha256 the run's manifest recorded. Export validation, bench, CV, evaluation and the cart all
load exported files through it, so they all see the same checks and the same preprocessing.

Core install only: numpy, Pillow, a TFLite interpreter; never TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.calibration import apply as calibrate, valid_calibration, valid_threshold
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import sha256_file
from edgebus.core.manifest import MANIFEST, Run
from edgebus.core.metrics import DEFAULT_THRESHOLD
from edgebus.core.tasks import TASKS, get_task
from edgebus.data.preprocess import PREPROCESS_VERSION, SUPPORTED_VERSIONS, pixels_to_input, to_model_input, to_uint8_input
from edgebus.runtime.interpreter import TFLiteModel
from edgebus.runtime.metadata import read_metadata


def run_export(run: Run, key: str = "int8") -> Path:
    """The file of a run's `key` export, sha256-checked against the manifest."""
    e = run.manifest.exports.get(key)
    if not e or e.get("status") not in ("ok", "gate_failed"):  # a file that failed its gates is refused by check_gates
        raise EdgebusError(f"{run.path}: no usable {key} export; run 'edgebus export {run.path} {flag('int8')}' "
                           "or pass a .tflite file")
    return run.verify_artifact(e["file"])


def resolve_model_path(path: str | Path, key: str = "int8") -> Path:
    """A .tflite path as given, or a run directory's `key` export (sha256-checked)."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise EdgebusError(f"{path}: a folder but not a run directory (no {MANIFEST}); pass a .tflite file")
        return run_export(Run.load(path), key)
    if not path.is_file():
        raise EdgebusError(f"{path}: model file not found; check the path or re-run 'edgebus export'")
    return path


class ExportedModel:
    """One exported .tflite of a task, loaded and checked against its own metadata.

    path: a .tflite, or a run directory (its `key` export, sha256-checked). task: the task it must
    have (None: whatever its metadata says)."""

    def __init__(self, path: str | Path, task=None, num_threads: int = 1, xnnpack: bool = True,
                 key: str = "int8", delegates=None):
        path = resolve_model_path(path, key)
        meta = read_metadata(path)
        if meta is None:
            raise EdgebusError(f"{path}: no edgebus metadata; export it with 'edgebus export'")
        have = meta.get("task")
        if have not in TASKS:
            raise EdgebusError(f"{path}: metadata names no known task ({have!r}); re-export it with 'edgebus export'")
        if task is not None and get_task(task).name != have:
            want = get_task(task)
            raise EdgebusError(f"{path}: metadata says task '{have}' but it was given as the {want.role}; "
                               f"pass it as --{TASKS[have].role}")
        self.task = TASKS[have]
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
        self.model = TFLiteModel(path, num_threads=num_threads, xnnpack=xnnpack, experimental_delegates=delegates)
        if self.model.input_shape != (1, h, w, c):
            raise EdgebusError(f"{path}: input shape {self.model.input_shape} does not match its metadata's preprocess "
                               f"size {h}x{w}x{c}; the file was altered or mislabelled, re-export it")
        shapes = [tuple(int(s) for s in o["shape"]) for o in self.model.outputs]
        self.descriptors = meta.get("descriptors") or []  # [{"name", "column", "labels"}], in output order
        # the outputs are told apart by size: the interpreter does not keep the Keras output order
        self.out_index = next((i for i, sh in enumerate(shapes) if self.task.check_output(sh, (h, w)) is None), None)
        if self.out_index is None:
            raise EdgebusError(f"{path}: output shape {shapes[0]} is not {self.task.check_output(shapes[0], (h, w))}; "
                               f"not an edgebus {have} model")
        self.desc_index = None
        if self.descriptors:
            n = len(self.descriptors)
            self.desc_index = next((i for i, sh in enumerate(shapes) if i != self.out_index and int(np.prod(sh[1:])) == n), None)
            if self.desc_index is None:
                raise EdgebusError(f"{path}: metadata names {n} BI-RADS descriptors but no output has {n} values; re-export it")
        self.mask_index, self.mask_threshold = None, None
        if meta.get("mask") and self.task.name == "classify":  # a multi-task file: malignancy and lesion mask
            self.mask_index = next((i for i, sh in enumerate(shapes) if i not in (self.out_index, self.desc_index)
                                    and get_task("segment").check_output(sh, (h, w)) is None), None)
            self.mask_threshold = meta["mask"].get("threshold", DEFAULT_THRESHOLD) if isinstance(meta["mask"], dict) else None
            if self.mask_index is None or not valid_threshold(self.mask_threshold):
                raise EdgebusError(f"{path}: metadata names a lesion-mask output but no {h}x{w} output or no mask "
                                   "threshold from 0 to 1 is there; re-export it")
            self.mask_threshold = float(self.mask_threshold)
        self.threshold = meta.get("threshold", DEFAULT_THRESHOLD)
        if not valid_threshold(self.threshold):
            raise EdgebusError(f"{path}: metadata threshold {self.threshold!r} is not a number from 0 to 1; re-export it")
        self.threshold = float(self.threshold)
        self.calibration = meta.get("calibration")
        if not valid_calibration(self.calibration):
            raise EdgebusError(f"{path}: metadata calibration {self.calibration!r} is not a usable Platt map; re-export it")
        self.path, self.meta, self.contract, self.size = path, meta, pre, (h, w)
        self.gates = meta.get("gates")  # the export's verdict: {"status": "passed" | "FAILED", "failures", ...}
        self.labels = list(meta.get("labels") or self.task.labels)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """NHWC float [0, 1] at the contract's size -> the task's output (malignant probability or
        mask), one invoke per image. A frame (a file, a photo-sized array) goes through edgebus.load."""
        _check_batch(x, self)
        return self.model.predict(x, (self.out_index,))

    @property
    def has_mask(self) -> bool:
        """A multi-task classifier: its one invoke also gives the lesion mask."""
        return self.mask_index is not None

    def predict_all(self, x: np.ndarray) -> dict:
        """NHWC float [0, 1] -> {"prob", "descriptors" (None without), "mask" (None without)}, one
        invoke per image."""
        idx = [i for i in (self.out_index, self.desc_index, self.mask_index) if i is not None]
        got = dict(zip(idx, self.model.predict(x, tuple(idx)) if len(idx) > 1 else [self.model.predict(x, tuple(idx))]))
        return {"prob": got[self.out_index], "descriptors": None if self.desc_index is None else got[self.desc_index].reshape(len(x), -1),
                "mask": got.get(self.mask_index)}

    def pixels_for(self, gray: np.ndarray, box=None) -> np.ndarray:
        """A uint8 HxW frame through the model's preprocessing contract, kept uint8 (HxWxC)."""
        return to_uint8_input(gray, self.contract, box)

    def tensor_for(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HxWxC pixels -> the batch-1 input tensor, by table lookup (no float copy)."""
        return self.model.pixel_table()[pixels][None]

    def outputs_for(self, tensor: np.ndarray) -> dict:
        """One invoke on an input tensor (tensor_for) -> {"prob": float, "descriptors": (k,) or None,
        "mask": (h, w) float32 or None}; a segmenter's map is its "mask"."""
        m = self.model
        m.set_tensor(tensor)
        m.invoke()
        if self.task.truth_is_mask:  # a segmenter: its one output is the mask
            return {"prob": None, "descriptors": None, "mask": m.get_output(self.out_index).reshape(self.size)}
        return {"prob": float(m.get_output(self.out_index).reshape(-1)[0]),
                "descriptors": None if self.desc_index is None else m.get_output(self.desc_index).reshape(-1),
                "mask": None if self.mask_index is None else m.get_output(self.mask_index).reshape(self.size)}

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 pixels at the model's size (an evaluation pack) -> outputs."""
        return self.predict(pixels_to_input(pixels, self.contract))

    def run(self, x: np.ndarray) -> np.ndarray:
        """HxWxC float [0, 1] at the contract's size -> the model's float output (batch dim dropped)."""
        return self.predict(x[None])[0]

    def calibrated(self, p) -> np.ndarray:
        """The probability to show for raw outputs `p` (the identity without a calibration)."""
        return calibrate(self.calibration, p)

    def input_for(self, gray: np.ndarray, box=None) -> np.ndarray:
        """A uint8 HxW frame through the model's own preprocessing contract."""
        return to_model_input(gray, self.contract, box)

    def gate_status(self) -> str:
        """"passed", "FAILED", or "not gated" (a file exported before gates, or a CV fold's file)."""
        return (self.gates or {}).get("status") or "not gated"

    def describe(self) -> dict:
        m = self.meta
        return {"file": str(self.path), "sha256": sha256_file(self.path), "task": self.task.name,
                "format": m.get("format"), "source": m.get("source"), "model": (m.get("model") or {}).get("name"),
                "input_size": list(self.size), "threshold": self.threshold, "labels": self.labels,
                "calibration": self.calibration, "descriptors": [d["name"] for d in self.descriptors],
                "mask": None if self.mask_index is None else {"threshold": self.mask_threshold},
                "source_run": m.get("source_run"), "data_fingerprint": m.get("data_fingerprint"),
                "interpreter": f"{self.model.backend} {self.model.backend_version}",
                "xnnpack": self.model.xnnpack, "threads": self.model.num_threads, "gates": self.gate_status(),
                "gate_failures": (self.gates or {}).get("failures") or []}


def _check_batch(x, model) -> None:
    """A model's own input, or one line saying how a frame is predicted instead (not a numpy traceback)."""
    h, w = model.size
    c = model.contract["channels"]
    if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        got = f"an array of shape {x.shape}" if isinstance(x, np.ndarray) else f"{type(x).__name__} {str(x)[:60]!r}"
        raise EdgebusError(f"{model.path}: predict takes a batch of preprocessed images, shape (N, {h}, {w}, {c}), "
                           f"float in [0, 1]; got {got}. For a frame (a file, an array or a PIL image) use "
                           "edgebus.load(model)(frame)")


ACCEPT_HINT = (f"re-export it (see its export_report.md), or pass {flag('accept_failed_gates')} to use it anyway "
               "(recorded in bundle.json, the model card and every prediction row)")


def check_gates(model, accept: bool = False) -> str | None:
    """Refuse an exported file that failed its export gates (it may call cancers benign that its float
    parent caught) unless `accept`; returns the line that records an accepted failure, else None."""
    if not isinstance(model, ExportedModel) or model.gate_status() != "FAILED":
        return None
    why = "; ".join(model.gates.get("failures") or []) or "no reason recorded"
    if not accept:
        raise EdgebusError(f"{model.path}: failed its export gates ({why}); {ACCEPT_HINT}")
    return f"{model.path.name}: FAILED its export gates ({why}); accepted with {flag('accept_failed_gates')}"
