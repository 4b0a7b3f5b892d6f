"""The layering of ARCHITECTURE.md, checked on the source: every import of an edgebus module (at
the top of a file or inside a function) is an edge; there is no cycle, each layer imports only the
layers below it, the cart runtime never reaches TensorFlow-side code, and no module grows past
~400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgebus"

# layer -> the layers it may import (besides itself). ARCHITECTURE.md draws the same table.
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "compat": {"core"},
    "data": {"core", "config"},
    "models": {"core", "compat", "config"},
    "reports": {"core", "config"},
    "runtime": {"core", "data.preprocess", "data.presence", "data.inputs"},
    "engine": {"core", "config", "data", "models", "compat"},
    "export": {"core", "config", "data", "models", "engine", "runtime", "compat"},
    "training": {"core", "config", "data", "models", "engine", "export", "runtime", "reports", "compat"},
    "evaluation": {"core", "config", "data", "models", "engine", "export", "runtime", "reports", "compat", "training"},
    "benchmarks": {"core", "config", "runtime", "engine", "compat"},
    "demo": {"core", "config", "data", "training", "export", "runtime", "benchmarks"},
    "cli": {"core", "config", "data", "models", "training", "evaluation", "export", "runtime", "benchmarks", "reports",
            "demo"},
    "__main__": {"cli"},
}
TF_SIDE = {"compat", "engine", "export", "training", "evaluation", "models", "benchmarks", "demo", "cli"}
THIRD_PARTY_TF = {"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "segmentation_models", "pandas"}
MAX_LINES = 400
MAX_FUNCTION_LINES = 60  # def to last line, docstring included


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(edgebus modules, other top-level packages) that a file imports anywhere in it."""
    mine, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from edgebus.x import y` imports edgebus.x.y when that is a module, else edgebus.x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        else:
            continue
        for n in names:
            if n == "edgebus" or n.startswith("edgebus."):
                while n not in MODULES:  # `import edgebus.x.y as z` style: the longest known prefix
                    n = n.rsplit(".", 1)[0]
                mine.add(n)
            else:
                other.add(n.split(".")[0])
    return mine, other


GRAPH = {m: _imports(p)[0] - {m} for m, p in MODULES.items()}
# `edgebus.load` / `Prediction` / `Cart`: the package re-exports the runtime's API lazily (a module
# __getattr__), the one edge from the top down; every module's `from edgebus import __version__` would
# otherwise close a cycle through it. It is checked on its own below.
LAZY_API = "edgebus.runtime.api"
assert LAZY_API in GRAPH["edgebus"], "edgebus/__init__ no longer re-exports the runtime API"
GRAPH["edgebus"] = GRAPH["edgebus"] - {LAZY_API}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"  # edgebus/__init__: the version and the error type


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_lazy_imports_and_cycles():
    """The checks below can fail: a function-level import is an edge, and a planted cycle is found."""
    assert "edgebus.engine.models" in GRAPH["edgebus.training.train"]  # imported inside train()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for m, deps in GRAPH.items():
        have = layer(m)
        for d in deps:
            target = layer(d)
            ok = target == have or target in ALLOWED[have] or (
                target == "data" and f"data.{d.split('.')[-1]}" in ALLOWED[have] and d.count(".") == 2)
            if not ok:
                wrong.append(f"{m} -> {d}")
    assert wrong == []


def _with_parents(module: str) -> set[str]:
    """A module and the packages Python imports first to reach it."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def test_runtime_never_reaches_tensorflow_side_code():
    seen, todo = set(), [m for m in MODULES if layer(m) == "runtime"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [p for d in GRAPH[m] for p in _with_parents(d) if p in MODULES]
    assert sorted(m for m in seen if layer(m) in TF_SIDE) == []
    assert "edgebus.data.breast" not in seen  # pandas' reader is not on the device path
    third = {pkg for m in seen for pkg in _imports(MODULES[m])[1]}
    assert third & THIRD_PARTY_TF == set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[module]}: {n} lines; split it by job"


def test_no_function_is_over_60_lines():
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path in MODULES.values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these by job:\n" + "\n".join(long)


def test_the_package_api_stays_lazy_and_off_tensorflow():
    """`import edgebus` loads no interpreter and no runtime module; edgebus.load is the runtime's API."""
    import subprocess
    import sys

    code = ("import sys, edgebus; assert 'edgebus.runtime.api' not in sys.modules; "
            "assert not any(m.startswith(('tensorflow', 'ai_edge_litert')) for m in sys.modules); "
            "from edgebus.runtime import api; assert edgebus.load is api.load and edgebus.Prediction is api.Prediction; "
            "assert not any(m.startswith('tensorflow') for m in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
