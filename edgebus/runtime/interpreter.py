"""A thin wrapper over whichever TFLite interpreter is installed: ai_edge_litert or tflite_runtime.

Never imports TensorFlow: this is the path a Raspberry Pi or a cart runs. Inputs are quantized and
outputs dequantized with the model's own scale/zero-point, never with constants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError


def interpreter_backend() -> tuple[str, str, type]:
    """(package name, version, Interpreter class) of the installed interpreter."""
    try:
        from ai_edge_litert import interpreter as mod
        from importlib.metadata import version

        return "ai-edge-litert", version("ai-edge-litert"), mod.Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod
        from importlib.metadata import version

        return "tflite-runtime", version("tflite-runtime"), mod.Interpreter
    except ImportError:
        raise EdgebusError(
            "no TFLite interpreter installed; install one with: pip install ai-edge-litert"
        ) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _resolver_module(backend: str):
    if backend == "ai-edge-litert":
        from ai_edge_litert import interpreter as mod
    else:
        from tflite_runtime import interpreter as mod
    return mod


class TFLiteModel:
    """One loaded .tflite file: batch-1 float-in/float-out `predict`, whatever its I/O types."""

    def __init__(self, path: str | Path, num_threads: int = 1, xnnpack: bool = True, experimental_delegates=None):
        """Load `path`. With xnnpack=True the default XNNPACK delegate is tried first; if it refuses
        the graph (it rejects some int8 scale combinations), the built-in kernels run it instead
        and `xnnpack_error` says why, so a benchmark row can say which kernels it timed."""
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgebusError(f"{self.path}: model file not found; check the path or re-run 'edgebus export'")
        self.backend, self.backend_version, self._cls = interpreter_backend()
        self.num_threads = num_threads
        self.xnnpack_error = None
        try:
            self.interpreter = self._load(xnnpack, experimental_delegates)
            self.xnnpack = xnnpack
        except (ValueError, RuntimeError) as e:
            if not xnnpack or "XNNPACK" not in str(e):
                raise self._load_error(e) from None
            self.xnnpack_error = _first_line(e)
            try:
                self.interpreter = self._load(False, experimental_delegates)
            except (ValueError, RuntimeError) as e2:
                raise self._load_error(e2) from None
            self.xnnpack = False
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def _load(self, xnnpack: bool, delegates):
        kw = {"model_path": str(self.path), "num_threads": self.num_threads}
        if delegates:
            kw["experimental_delegates"] = delegates
        if not xnnpack:
            kw["experimental_op_resolver_type"] = _resolver_module(self.backend).OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        it = self._cls(**kw)
        it.allocate_tensors()
        return it

    def _load_error(self, e: Exception) -> EdgebusError:
        return EdgebusError(
            f"{self.path}: cannot be loaded by {self.backend} {self.backend_version} ({_first_line(e)}); "
            "re-export it or use a newer interpreter"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input["dtype"])

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """float [0, 1] NHWC -> the tensor the model takes, using its own quantization params."""
        dt = self.input_dtype
        if dt.kind == "f":
            return x.astype(dt)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dt)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dt)

    def pixel_table(self) -> np.ndarray:
        """The input tensor's value for each uint8 pixel 0..255: exactly quantize_input(pixel / 255),
        computed once, so a uint8 frame goes in by one table lookup (no float copy of the frame)."""
        if getattr(self, "_table", None) is None:
            self._table = self.quantize_input(np.arange(256, dtype=np.float32) / 255.0)
        return self._table

    def set_tensor(self, t: np.ndarray) -> None:
        """Set an input tensor already in the model's dtype (pixel_table()[pixels], shared by an ensemble)."""
        self.interpreter.set_tensor(self.input["index"], t)

    def dequantize(self, y: np.ndarray, detail: dict) -> np.ndarray:
        if np.dtype(detail["dtype"]).kind == "f":
            return y.astype(np.float32)
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def set_input(self, x: np.ndarray) -> None:
        """Set a batch-1 NHWC float [0, 1] input (quantized as the model wants)."""
        self.interpreter.set_tensor(self.input["index"], self.quantize_input(x))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_output(self, i: int = 0) -> np.ndarray:
        d = self.outputs[i]
        return self.dequantize(self.interpreter.get_tensor(d["index"]), d)

    def predict(self, x: np.ndarray, outputs=(0,)) -> np.ndarray | list:
        """NHWC float [0, 1] batch of any size -> float outputs, one invoke per image: the first
        output, or a list of the outputs at the indices in `outputs` when more than one is asked."""
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise EdgebusError(
                f"{self.path}: input shape {tuple(x.shape[1:])} does not match the model's {self.input_shape[1:]}; "
                "preprocess with the model's own contract"
            )
        out = [[] for _ in outputs]
        for xi in x:
            self.set_input(xi[None])
            self.invoke()
            for k, i in enumerate(outputs):
                out[k].append(self.get_output(i)[0])
        res = [np.stack(o) for o in out]
        return res[0] if len(outputs) == 1 else res

    def tensor_dtypes(self) -> list[str]:
        return sorted({np.dtype(t["dtype"]).name for t in self.interpreter.get_tensor_details()})

    def op_names(self) -> list[str]:
        """Operator names in the graph (private interpreter API, present in LiteRT and tflite_runtime)."""
        try:
            return [op["op_name"] for op in self.interpreter._get_ops_details()]
        except AttributeError:  # pragma: no cover
            return []
