"""Edge TPU readiness of an int8 .tflite, offline: every operator checked against the Coral Edge
TPU's supported-op table and model requirements, and where the compiler would split the graph.
Optionally compile with `edgetpu_compiler` when it is installed.

Sources (Coral documentation, "TensorFlow models on the Edge TPU",
https://coral.ai/docs/edgetpu/models-intro/#supported-operations, and "Edge TPU Compiler",
https://coral.ai/docs/edgetpu/compiler/):

* Model requirements: tensor parameters quantized to 8 bits (int8/uint8); tensor sizes constant at
  compile time (no dynamic sizes); model parameters (e.g. bias tensors) constant at compile time;
  tensors 1-, 2- or 3-dimensional, and a tensor with more than 3 dimensions may have a size greater
  than 1 only in its 3 innermost dimensions; only the supported operations below.
* Partitioning: the compiler maps the graph up to the first operation the Edge TPU cannot run;
  that operation and every operation after it run on the CPU, even ones the Edge TPU supports
  (the compiler partitions the graph once).
* The compiler runs on 64-bit x86 Debian-based Linux only (Debian 6.0+, Ubuntu 10.0+) and is
  installed from Coral's apt repository (INSTALL_HINT below); it writes <name>_edgetpu.tflite and
  <name>_edgetpu.log.

The table below is that page's table ("Operation name" / "Known limitations"). It was read from
two copies: the current table as reproduced in Axis's ARTPEC-7 (an Edge TPU) supported-ops page
(https://developer.axis.com/computer-vision/on-device/system-on-chip/artpec-7/supported-ops/),
entries Add .. ResizeBilinear, and the earlier Coral table (mirrored in
github.com/dgist-datalab/Datalab_Intern, Edge_TPU/convert_model_for_Edge_TPU.md) for
ResizeNearestNeighbor, Slice, Softmax, SpaceToDepth, Split, Squeeze, StridedSlice, Sub, Tanh. The
remaining entries of the current table (Rsqrt, Squared-difference, Sum, Transpose, TransposeConv)
were not in the retrieved text and are marked `confirmed: False`: treat a verdict that depends on
them as "probably". The compiler, where installed, is the final word.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag

DOC_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
COMPILER_DOC_URL = "https://coral.ai/docs/edgetpu/compiler/"

INSTALL_HINT = (
    "edgetpu_compiler is not on PATH. It runs on 64-bit x86 Debian/Ubuntu only; install it from Coral's apt repository:\n"
    "  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -\n"
    '  echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list\n'
    "  sudo apt-get update && sudo apt-get install edgetpu-compiler\n"
    f"then re-run with {flag('edgetpu')} (see {COMPILER_DOC_URL}; on other machines use Coral's Colab compiler)."
)

# TFLite builtin operator -> (name in Coral's table, known limitation, confirmed in the retrieved text)
SUPPORTED_OPS: dict[str, tuple[str, str, bool]] = {
    "ADD": ("Add", "", True),
    "AVERAGE_POOL_2D": ("AveragePool2d", "No fused activation function.", True),
    "CONCATENATION": ("Concatenation", "No fused activation function. If any input is a compile-time constant tensor, "
                      "there must be only 2 inputs, and this constant tensor must be all zeros (effectively, a zero-padding op).", True),
    "CONV_2D": ("Conv2d", "Must use the same dilation in x and y dimensions.", True),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2d", "Must use the same dilation in x and y dimensions.", True),
    "EXPAND_DIMS": ("ExpandDims", "", True),
    "FULLY_CONNECTED": ("FullyConnected", "Only the default format is supported for fully-connected weights. "
                        "Output tensor is one-dimensional.", True),
    "L2_NORMALIZATION": ("L2Normalization", "", True),
    "LOGISTIC": ("Logistic", "", True),
    "LSTM": ("LSTM", "Unidirectional LSTM only.", True),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("LSTM", "Unidirectional LSTM only.", True),
    "MAXIMUM": ("Maximum", "", True),
    "MAX_POOL_2D": ("MaxPool2d", "No fused activation function.", True),
    "MEAN": ("Mean", "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.", True),
    "MINIMUM": ("Minimum", "", True),
    "MUL": ("Mul", "", True),
    "PACK": ("Pack", "No packing in batch dimension.", True),
    "PAD": ("Pad", "No padding in batch dimension.", True),
    "PRELU": ("PReLU", "Alpha must be 1-dimensional (only the innermost dimension can be >1 size).", True),
    "QUANTIZE": ("Quantize", "", True),
    "REDUCE_MAX": ("ReduceMax", "Cannot operate on the batch dimension.", True),
    "REDUCE_MIN": ("ReduceMin", "Cannot operate on the batch dimension.", True),
    "RELU": ("ReLU", "", True),
    "RELU6": ("ReLU6", "", True),
    "RELU_N1_TO_1": ("ReLUN1To1", "", True),
    "RESHAPE": ("Reshape", "Certain reshapes might not be mapped for large tensor sizes.", True),
    "RESIZE_BILINEAR": ("ResizeBilinear", "Input/output is a 3-dimensional tensor. Depending on input/output size, "
                        "this operation might not be mapped to the Edge TPU to avoid loss in precision.", True),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighbor", "Input/output is a 3-dimensional tensor. Depending on input/output "
                                "size, this operation may not be mapped to the Edge TPU to avoid loss in precision.", True),
    "SLICE": ("Slice", "", True),
    "SOFTMAX": ("Softmax", "Supports only 1D input tensor with a max of 16,000 elements.", True),
    "SPACE_TO_DEPTH": ("SpaceToDepth", "", True),
    "SPLIT": ("Split", "", True),
    "SQUEEZE": ("Squeeze", "Supported only when input tensor dimensions that have leading 1s (that is, no relayout needed).", True),
    "STRIDED_SLICE": ("StridedSlice", "Supported only when all strides are equal to 1 (that is, effectively a Stride op), "
                      "and with ellipsis-axis-mask == 0, and new-axis-max == 0.", True),
    "SUB": ("Sub", "", True),
    "TANH": ("Tanh", "", True),
    "RSQRT": ("Rsqrt", "", False),
    "SQUARED_DIFFERENCE": ("Squared-difference", "", False),
    "SUM": ("Sum", "", False),
    "TRANSPOSE": ("Transpose", "", False),
    "TRANSPOSE_CONV": ("TransposeConv", "", False),
}

_POOL_LIKE = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_BATCH_AXIS_OPS = {"MEAN", "REDUCE_MAX", "REDUCE_MIN", "PACK", "SUM"}
_SOFTMAX_MAX = 16000


def _schema():
    from edgebus.compat import tf  # noqa: F401  (sets TensorFlow's environment before the schema import)
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _shape(t) -> list[int]:
    return [int(d) for d in (t.shape if t.shape is not None else [])]


def _signature(t) -> list[int]:
    sig = t.shapeSignature
    return [int(d) for d in sig] if sig is not None and len(sig) else _shape(t)


def _const(model, t) -> bool:
    b = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
    return bool(b is not None and ((b.data is not None and len(b.data)) or getattr(b, "size", 0)))


def _const_values(model, t):
    b = model.buffers[t.buffer]
    if b.data is None or not len(b.data):
        return None
    dt = {2: np.int32, 4: np.int64, 9: np.int8, 3: np.uint8, 0: np.float32}.get(t.type)
    return None if dt is None else np.frombuffer(bytes(bytearray(b.data)), dtype=dt).reshape(_shape(t) or [-1])


def _op_problems(op_name, op, model, tensors, type_names) -> tuple[list[str], list[str]]:
    """(blocking problems, warnings) of one operator."""
    if op_name not in SUPPORTED_OPS:
        return [f"{op_name} is not in the Edge TPU's supported operations"], []
    ins = [tensors[i] for i in (op.inputs if op.inputs is not None else []) if i >= 0]
    outs = [tensors[i] for i in (op.outputs if op.outputs is not None else []) if i >= 0]
    opts = op.builtinOptions
    problems = [p for t in ins + outs for p in _tensor_problems(model, t, type_names)]
    problems += _option_problems(op_name, opts, outs)
    if op_name == "CONCATENATION":
        problems += _concat_problems(model, ins)
    problems += _batch_problems(op_name, model, ins, opts)
    problems += _shape_problems(op_name, model, ins, opts)
    warnings = []
    if op_name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        warnings.append(f"{op_name}: depending on input/output size the compiler may leave it on the CPU to "
                        "avoid precision loss")
    if op_name == "RESHAPE":
        warnings.append("RESHAPE: certain reshapes might not be mapped for large tensor sizes")
    if not SUPPORTED_OPS[op_name][2]:
        warnings.append(f"{op_name}: listed in the current Coral table but not confirmed from the retrieved text")
    return problems, warnings


def _tensor_problems(model, t, type_names) -> list[str]:
    """The model requirements on each tensor: 8-bit, a static shape, at most 3 dimensions of size > 1."""
    problems = []
    tname = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    const = _const(model, t)
    dtype = type_names.get(t.type, str(t.type))
    if not const and dtype not in ("INT8", "UINT8"):
        problems.append(f"tensor '{tname}' is {dtype.lower()}, not 8-bit quantized")
    elif const and dtype not in ("INT8", "UINT8", "INT32", "INT64"):
        problems.append(f"constant tensor '{tname}' is {dtype.lower()}, not quantized")
    if any(d < 0 for d in _signature(t)):
        problems.append(f"tensor '{tname}' has a dynamic shape {_signature(t)}; export a batch-1 static graph")
    shp = _shape(t)
    if not const and len(shp) > 3 and any(d > 1 for d in shp[:-3]):
        problems.append(f"tensor '{tname}' {shp}: more than 3 dimensions with size > 1 (only the 3 innermost "
                        "may be > 1)")
    return problems


def _option_problems(op_name, opts, outs) -> list[str]:
    """The table's limits on an op's options (fused activation, dilation, weights format) and FC output."""
    problems = []
    act = getattr(opts, "fusedActivationFunction", 0) if opts is not None else 0
    if op_name in _POOL_LIKE and act:
        problems.append(f"{op_name} has a fused activation function")
    if op_name in ("CONV_2D", "DEPTHWISE_CONV_2D") and opts is not None:
        if getattr(opts, "dilationHFactor", 1) != getattr(opts, "dilationWFactor", 1):
            problems.append(f"{op_name} uses different dilations in y and x")
    if op_name == "FULLY_CONNECTED":
        if opts is not None and getattr(opts, "weightsFormat", 0) != 0:
            problems.append("FULLY_CONNECTED weights are not in the default format")
        if outs and sum(d > 1 for d in _shape(outs[0])) > 1:
            problems.append(f"FULLY_CONNECTED output {_shape(outs[0])} is not one-dimensional")
    return problems


def _concat_problems(model, ins) -> list[str]:
    """A concatenation with a constant input maps only as a zero padding: 2 inputs, the constant all zeros."""
    consts = [t for t in ins if _const(model, t)]

    def is_zero(t):  # all real zeros: every stored value equals the zero point
        v = _const_values(model, t)
        q = t.quantization
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
        return v is not None and bool(np.all(v == zp))

    if consts and (len(ins) != 2 or not all(is_zero(t) for t in consts)):
        return ["CONCATENATION with a constant input is supported only as a 2-input zero padding"]
    return []


def _batch_problems(op_name, model, ins, opts) -> list[str]:
    """Reductions, packing and padding leave the batch alone; a channel mean needs a multiple of 4."""
    problems = []
    if op_name in _BATCH_AXIS_OPS and len(ins) >= 2 and _const(model, ins[1]):
        axes = _const_values(model, ins[1])
        rank = len(_shape(ins[0]))
        if axes is not None:
            axes = [int(a) % max(rank, 1) for a in np.ravel(axes)]
            if 0 in axes and rank > 1:
                problems.append(f"{op_name} reduces over the batch dimension")
            if op_name == "MEAN" and rank >= 1 and (rank - 1) in axes and _shape(ins[0])[-1] % 4:
                problems.append(f"MEAN over channels: the channel count {_shape(ins[0])[-1]} is not a multiple of 4")
    if op_name == "PACK" and opts is not None and getattr(opts, "axis", 1) == 0:
        problems.append("PACK along the batch dimension")
    if op_name == "PAD" and len(ins) >= 2 and _const(model, ins[1]):
        pads = _const_values(model, ins[1])
        if pads is not None and pads.ndim == 2 and pads.shape[0] >= 1 and np.any(pads[0] != 0):
            problems.append("PAD pads the batch dimension")
    return problems


def _shape_problems(op_name, model, ins, opts) -> list[str]:
    """The table's limits on the input of a softmax (1-D, <= 16,000), squeeze (leading 1s) and strided slice."""
    problems = []
    if op_name == "SOFTMAX" and ins:
        shp = _shape(ins[0])
        if sum(d > 1 for d in shp) > 1:
            problems.append(f"SOFTMAX input {shp} is not one-dimensional")
        if int(np.prod(shp or [0])) > _SOFTMAX_MAX:
            problems.append(f"SOFTMAX input has {int(np.prod(shp))} elements (> {_SOFTMAX_MAX})")
    if op_name == "SQUEEZE" and ins:
        shp = _shape(ins[0])
        lead = 0
        while lead < len(shp) and shp[lead] == 1:
            lead += 1
        dims = list(getattr(opts, "squeezeDims", None) or []) if opts is not None else []
        dims = [d % len(shp) for d in dims] if dims else [i for i, d in enumerate(shp) if d == 1]
        if any(d >= lead for d in dims):
            problems.append(f"SQUEEZE of {shp} needs a relayout (only leading 1s can be squeezed)")
    if op_name == "STRIDED_SLICE":
        if opts is not None and (getattr(opts, "ellipsisMask", 0) or getattr(opts, "newAxisMask", 0)):
            problems.append("STRIDED_SLICE with an ellipsis or new-axis mask")
        if len(ins) >= 4 and _const(model, ins[3]):
            strides = _const_values(model, ins[3])
            if strides is not None and np.any(strides != 1):
                problems.append("STRIDED_SLICE with strides other than 1")
    return problems


def check_model(path: str | Path) -> dict:
    """The offline Edge TPU compatibility report of one .tflite file."""
    path = Path(path)
    if not path.is_file():
        raise EdgebusError(f"{path}: model file not found; re-run 'edgebus export'")
    schema, fu = _schema()
    try:
        model = fu.convert_bytearray_to_object(bytearray(path.read_bytes()))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise EdgebusError(f"{path}: not a readable TFLite flatbuffer ({e}); re-export the model") from None
    op_names = _names(schema.BuiltinOperator)
    type_names = _names(schema.TensorType)
    ops = []
    for sg_i, sg in enumerate(model.subgraphs):
        tensors = sg.tensors
        for i, op in enumerate(sg.operators or []):
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            name = op_names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode}"
            problems, warnings = _op_problems(name, op, model, tensors, type_names)
            if sg_i > 0:
                problems.append("in a second subgraph (control flow); the Edge TPU maps one subgraph")
            ops.append({"index": i, "subgraph": sg_i, "op": name, "mappable": not problems,
                        "problems": problems, "warnings": warnings})
    first = next((o for o in ops if not o["mappable"]), None)
    n = len(ops)
    on_tpu = n if first is None else (first["index"] if first["subgraph"] == 0 else len(model.subgraphs[0].operators or []))
    sg0 = model.subgraphs[0]
    io = {}
    for kind, idxs in (("inputs", sg0.inputs), ("outputs", sg0.outputs)):
        io[kind] = [{"name": (sg0.tensors[i].name.decode() if isinstance(sg0.tensors[i].name, bytes) else sg0.tensors[i].name),
                     "dtype": type_names.get(sg0.tensors[i].type, "?").lower(), "shape": _shape(sg0.tensors[i])} for i in idxs]
    counts: dict[str, int] = {}
    for o in ops:
        counts[o["op"]] = counts.get(o["op"], 0) + 1
    return {
        "file": path.name,
        "fully_mappable": first is None,
        "n_ops": n,
        "ops_on_edgetpu": on_tpu,
        "ops_on_cpu": n - on_tpu,
        "first_unmappable": None if first is None else {"index": first["index"], "op": first["op"], "problems": first["problems"]},
        "split": None if first is None else (
            f"the Edge TPU runs ops 0..{first['index'] - 1}; op {first['index']} ({first['op']}) and the "
            f"{n - first['index'] - 1} ops after it run on the CPU" if first["index"] > 0 else
            f"op 0 ({first['op']}) is unmappable: the whole graph runs on the CPU"),
        "op_counts": dict(sorted(counts.items())),
        "unmappable_ops": sorted({o["op"] for o in ops if not o["mappable"]}),
        "warnings": sorted({w for o in ops for w in o["warnings"]}),
        "io": io,
        "ops": ops,
        "source": DOC_URL,
    }


def compiler_path() -> str | None:
    return shutil.which("edgetpu_compiler")


def compile_model(path: str | Path, timeout: int = 600) -> dict:
    """Compile with edgetpu_compiler if installed. Keeps <stem>_edgetpu.tflite, the compiler's own
    <stem>_edgetpu.log and its console output in <stem>_edgetpu_compile.txt, all beside `path`."""
    path = Path(path)
    exe = compiler_path()
    if exe is None:
        note = "" if platform.machine() in ("x86_64", "AMD64") and platform.system() == "Linux" else \
            f" (this machine is {platform.system()} {platform.machine()}: the compiler will not run here)"
        return {"compiled": False, "reason": "edgetpu_compiler not on PATH" + note, "install": INSTALL_HINT}
    out = path.parent
    cmd = [exe, "-s", "-o", str(out), str(path)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        text, rc = f"edgetpu_compiler timed out after {timeout} s\n", -1
    except OSError as e:
        text, rc = f"edgetpu_compiler could not start: {e}\n", -1
    console = out / f"{path.stem}_edgetpu_compile.txt"
    console.write_text(f"$ {' '.join(cmd)}\n{text}")
    compiled = out / f"{path.stem}_edgetpu.tflite"
    log = out / f"{path.stem}_edgetpu.log"
    res = {"compiled": rc == 0 and compiled.is_file(), "returncode": rc, "command": cmd,
           "console": console.name, "log": log.name if log.is_file() else None,
           "file": compiled.name if compiled.is_file() else None}
    m = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    if m:
        res["ops_on_edgetpu"] = int(m.group(1))
    m = re.search(r"Number of operations that will run on CPU:\s*(\d+)", text)
    if m:
        res["ops_on_cpu"] = int(m.group(1))
    v = re.search(r"Edge TPU Compiler version\s*(\S+)", text)
    if v:
        res["compiler_version"] = v.group(1)
    if not res["compiled"]:
        last = [ln for ln in text.strip().splitlines() if ln.strip()]
        res["error"] = last[-1] if last else f"exit code {rc}"
    return res


def summary(report: dict) -> dict:
    """The few fields a manifest entry keeps."""
    return {k: report[k] for k in ("fully_mappable", "n_ops", "ops_on_edgetpu", "ops_on_cpu", "first_unmappable",
                                   "unmappable_ops", "split")}


def markdown(reports: dict[str, dict], compiled: dict[str, dict] | None = None) -> str:
    """A short human summary of several files' reports."""
    lines = ["# Edge TPU readiness", "",
             f"Offline check against the Coral Edge TPU supported-op table and model requirements ({DOC_URL}). "
             "The compiler partitions once: from the first unmappable op on, everything runs on the CPU.", "",
             "| file | verdict | ops on Edge TPU | first unmappable op | why |", "|---|---|---|---|---|"]
    for name, r in reports.items():
        f = r["first_unmappable"]
        verdict = "fully mappable" if r["fully_mappable"] else "splits"
        lines.append(f"| {name} | {verdict} | {r['ops_on_edgetpu']}/{r['n_ops']} | "
                     f"{'-' if f is None else '#%d %s' % (f['index'], f['op'])} | {'-' if f is None else '; '.join(f['problems'])} |")
    warns = sorted({w for r in reports.values() for w in r["warnings"]})
    if warns:
        lines += ["", "Warnings (may still be left on the CPU by the compiler):", ""] + [f"- {w}" for w in warns]
    if compiled:
        lines += ["", "## edgetpu_compiler", ""]
        for name, c in compiled.items():
            if c.get("compiled"):
                lines.append(f"- {name}: compiled to {c['file']} (log {c.get('log') or c['console']}; "
                             f"{c.get('ops_on_edgetpu', '?')} ops on the Edge TPU, {c.get('ops_on_cpu', '?')} on the CPU)")
            elif "install" in c:
                lines.append(f"- {name}: not compiled: {c['reason']}")
            else:
                lines.append(f"- {name}: compilation failed: {c.get('error')} (see {c['console']})")
        if any("install" in c for c in compiled.values()):
            lines += ["", "```", INSTALL_HINT, "```"]
    return "\n".join(lines) + "\n"


def write_reports(run_path: Path, reports: dict[str, dict], compiled: dict[str, dict] | None = None) -> tuple[Path, Path]:
    """edgetpu_report.json (full, per op) and edgetpu_report.md in the run."""
    from edgebus.core.io import atomic_write, write_json

    js = write_json(Path(run_path) / "edgetpu_report.json", {"source": DOC_URL, "files": reports, "compiled": compiled or {}})
    md = atomic_write(Path(run_path) / "edgetpu_report.md", markdown(reports, compiled))
    return js, md
