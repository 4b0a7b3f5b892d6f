"""Runtime compatibility: load (and invoke once) every exported file in each TFLite interpreter
that is installed, and record success or the exact error.

Each interpreter runs in its own subprocess: tflite_runtime 2.14 cannot even be imported next to
numpy 2 (`_ARRAY_API not found`), and a kernel that crashes on an unknown op version would take the
export down with it. A crash of the batch is retried file by file to name the file.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

# package name -> importable module with an Interpreter class
INTERPRETERS = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}

_PROBE = r"""
import json, sys
pkg, mod, paths = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def first(e):
    t = str(e).strip()
    return t.splitlines()[0] if t else type(e).__name__
out = {"version": None, "files": {}}
try:
    from importlib.metadata import version
    out["version"] = version(pkg)
except Exception:
    pass
try:
    import importlib
    m = importlib.import_module(mod)
    import numpy as np
except BaseException as e:
    out["import_error"] = f"{type(e).__name__}: {first(e)}"
    print(json.dumps(out)); sys.exit(0)

def run(path, **kw):
    it = m.Interpreter(model_path=path, **kw)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
    it.invoke()

for p in paths:
    try:
        run(p)
        out["files"][p] = {"status": "ok"}
    except BaseException as e:
        err = f"{type(e).__name__}: {first(e)}"
        if "XNNPACK" in str(e) and hasattr(m, "OpResolverType"):
            try:
                run(p, experimental_op_resolver_type=m.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                out["files"][p] = {"status": "ok", "note": "without the XNNPACK delegate (" + err + ")"}
                continue
            except BaseException as e2:
                err = f"{type(e2).__name__}: {first(e2)}"
        out["files"][p] = {"status": "error", "error": err}
print(json.dumps(out))
"""


def _probe(pkg: str, mod: str, paths: list[str], timeout: int) -> dict:
    try:
        p = subprocess.run([sys.executable, "-c", _PROBE, pkg, mod, json.dumps(paths)],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"crash": f"timed out after {timeout} s"}
    if p.returncode != 0:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"crash": f"exit code {p.returncode}" + (f" ({tail[-1][:200]})" if tail else "")}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"crash": f"no result ({p.stdout[-200:]!r})"}


def check_files(paths: list[str | Path], timeout: int = 300) -> dict[str, dict[str, dict]]:
    """{file name: {"<package> <version>": {"status": "ok"|"error"|"not installed"|..., "error": ...}}}."""
    paths = [str(Path(p).resolve()) for p in paths]
    result: dict[str, dict[str, dict]] = {Path(p).name: {} for p in paths}
    for pkg, mod in INTERPRETERS.items():
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            for p in paths:
                result[Path(p).name][pkg] = {"status": "not installed"}
            continue
        res = _probe(pkg, mod, paths, timeout)
        if "crash" in res:  # find the file that crashes it
            per = {p: _probe(pkg, mod, [p], timeout) for p in paths}
        else:
            per = {p: res for p in paths}
        for p in paths:
            r = per[p]
            key = f"{pkg} {r.get('version')}" if r.get("version") else pkg
            if "crash" in r:
                entry = {"status": "crashed", "error": r["crash"]}
            elif "import_error" in r:
                entry = {"status": "import_failed", "error": r["import_error"]}
            else:
                entry = r["files"].get(p, {"status": "error", "error": "no result"})
            result[Path(p).name][key] = entry
    return result
