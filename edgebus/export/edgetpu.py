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

The table (edgebus.export.edgetpu_ops, with the per-operator checks) is that page's table ("Operation
name" / "Known limitations"). It was read from two copies: the current table as reproduced in Axis's
ARTPEC-7 (an Edge TPU) supported-ops page
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

from edgebus.core.errors import EdgebusError, flag
from edgebus.export.edgetpu_ops import op_problems, tensor_shape

DOC_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
COMPILER_DOC_URL = "https://coral.ai/docs/edgetpu/compiler/"

INSTALL_HINT = (
    "edgetpu_compiler is not on PATH. It runs on 64-bit x86 Debian/Ubuntu only; install it from Coral's apt repository:\n"
    "  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -\n"
    '  echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list\n'
    "  sudo apt-get update && sudo apt-get install edgetpu-compiler\n"
    f"then re-run with {flag('edgetpu')} (see {COMPILER_DOC_URL}; on other machines use Coral's Colab compiler)."
)

def _schema():
    from edgebus.compat import tf  # noqa: F401  (sets TensorFlow's environment before the schema import)
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


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
            problems, warnings = op_problems(name, op, model, tensors, type_names)
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
                     "dtype": type_names.get(sg0.tensors[i].type, "?").lower(), "shape": tensor_shape(sg0.tensors[i])} for i in idxs]
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
