"""Latency harness in the spirit of TensorFlow's benchmark_model and `yolo benchmark`: per model
file and thread count, load/init time, first inference, warm-up, then N timed invokes, memory,
size and the model's metric on the run's test split, one row per file with a status.

Runs on the device path: numpy + a TFLite interpreter only. The Keras baseline row is added only
where TensorFlow is importable (a dev machine), never required.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from edgebus import __version__
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, make_dir, now, write_json
from edgebus.core.manifest import MANIFEST, Run
from edgebus.runtime.interpreter import TFLiteModel, interpreter_backend
from edgebus.runtime.metadata import read_metadata
from edgebus.runtime.model import ExportedModel

SCHEMA = "edgebus.bench/1"
EDGETPU_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    name, version, _ = interpreter_backend()
    os_name = f"{platform.system()} {platform.release()}"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} ({os_name})"
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": os_name,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "interpreter": f"{name} {version}",
        "edgebus": __version__,
    }


def _rss_mb() -> float | None:
    """Resident memory of this process now (Linux), to measure what loading a model adds."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _stats(seconds: np.ndarray) -> dict:
    ms = seconds * 1e3
    return {"min": float(ms.min()), "median": float(np.median(ms)), "mean": float(ms.mean()),
            "std": float(ms.std()), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99))}


def edgetpu_delegate():
    """The Coral Edge TPU delegate, or an EdgebusError saying what is missing and how to get it."""
    _, _, _ = interpreter_backend()
    try:
        from ai_edge_litert.interpreter import load_delegate
    except ImportError:
        from tflite_runtime.interpreter import load_delegate
    lib = EDGETPU_LIB.get(platform.system(), "libedgetpu.so.1")
    try:
        return load_delegate(lib)
    except (ValueError, OSError) as e:
        raise EdgebusError(
            f"Edge TPU delegate {lib} could not be loaded ({str(e).splitlines()[0] if str(e) else 'not found'}): "
            "install libedgetpu1-std from Coral's apt repository and plug in the accelerator "
            "(https://coral.ai/docs/accelerator/get-started)"
        ) from None


def timed_invokes(invoke, runs: int) -> np.ndarray:
    """Seconds per call of `invoke`, with nothing but the call between the two clock reads
    (benchmarks/harness_overhead.py measures what this loop adds over a bare one)."""
    clock = time.perf_counter
    times = np.empty(runs)
    for i in range(runs):
        t0 = clock()
        invoke()
        times[i] = clock() - t0
    return times


def _load(path: Path, threads: int, xnnpack: bool, delegates):
    """An ExportedModel where the file carries edgebus metadata (so it can be scored), else a bare
    TFLiteModel that is timed only."""
    if read_metadata(path) is not None:
        return ExportedModel(path, None, threads, xnnpack, delegates=delegates)
    return TFLiteModel(path, num_threads=threads, xnnpack=xnnpack, experimental_delegates=delegates)


def time_model(path: str | Path, threads: int = 1, warmup: int = 10, runs: int = 50, xnnpack: bool = True,
               edgetpu: bool = False) -> tuple[dict, ExportedModel | TFLiteModel | None]:
    """Timing row for one file and thread count. A file that will not load gives a failed row."""
    path = Path(path)
    row = {"file": path.name, "threads": threads, "size_bytes": path.stat().st_size if path.exists() else None,
           "warmup": warmup, "runs": runs, "status": "ok", "error": None, "xnnpack": None, "xnnpack_error": None,
           "delegate": "edgetpu" if edgetpu else None, "load_ms": None, "first_ms": None, "latency_ms": None,
           "fps": None, "rss_delta_mb": None, "metrics": None, "delta_vs_keras": None}
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    try:
        if not path.is_file():
            raise EdgebusError(f"{path}: model file not found; check the path or re-run 'edgebus export'")
        delegates = [edgetpu_delegate()] if edgetpu else None
        loaded = _load(path, threads, xnnpack and not edgetpu, delegates)
    except EdgebusError as e:
        row.update(status="load_failed", error=str(e))
        return row, None
    m = loaded.model if isinstance(loaded, ExportedModel) else loaded
    row["load_ms"] = (time.perf_counter() - t0) * 1e3
    row["xnnpack"], row["xnnpack_error"] = m.xnnpack, m.xnnpack_error
    x = np.random.default_rng(0).random(m.input_shape, dtype=np.float32)
    m.set_input(x)
    t0 = time.perf_counter()
    m.invoke()
    row["first_ms"] = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        m.invoke()
    row["latency_ms"] = _stats(timed_invokes(m.interpreter.invoke, runs))
    row["fps"] = 1e3 / row["latency_ms"]["median"]
    rss1 = _rss_mb()
    row["rss_delta_mb"] = None if rss0 is None or rss1 is None else rss1 - rss0
    return row, loaded


def load_pack(path: str | Path) -> dict:
    path = Path(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise EdgebusError(f"{path}: evaluation pack not found; run 'edgebus export' on the run first") from None
    except (ValueError, OSError, EOFError) as e:
        raise EdgebusError(f"{path}: unreadable evaluation pack ({e}); re-run 'edgebus export'") from None


def evaluate(m: ExportedModel, pack: dict) -> dict:
    """Score a loaded model on an evaluation pack (uint8 test pixels at the model's size), at the
    threshold its metadata carries."""
    truth = pack.get(m.task.pack_key)
    if truth is None:
        raise EdgebusError(f"evaluation pack has no {m.task.pack_key} for a {m.task.name} model; re-run 'edgebus export'")
    return m.task.metrics(truth, m.predict_pixels(pack["images"]), m.threshold)


def _score(row: dict, m, pack: dict | None, ref: dict | None) -> None:
    if pack is None or not isinstance(m, ExportedModel):
        return
    try:
        row["metrics"] = m.task.headline(evaluate(m, pack))
    except (EdgebusError, ValueError, RuntimeError) as err:
        row.update(status="metric_failed", error=str(err).splitlines()[0])
        return
    if ref:
        row["delta_vs_keras"] = {k: (row["metrics"][k] - v if v is not None and row["metrics"][k] is not None else None)
                                 for k, v in ref.items()}


def keras_row(run: Run, warmup: int, runs: int, ref: dict) -> dict:
    """The study's deployment: Keras float `predict` on one image. Needs TensorFlow."""
    model_path = run.file("model.keras")
    input_shape = (*run.manifest.preprocess["size"], run.manifest.preprocess["channels"])
    row = {"file": model_path.name, "format": "keras", "threads": None, "size_bytes": model_path.stat().st_size,
           "warmup": warmup, "runs": runs, "status": "ok", "error": None, "xnnpack": None, "xnnpack_error": None,
           "delegate": None, "first_ms": None, "rss_delta_mb": None, "metrics": ref,
           "delta_vs_keras": {k: 0.0 for k in ref}}
    import edgebus.compat  # noqa: F401  TensorFlow's import is not part of the load time
    from edgebus.engine.models import load_run_model

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    model = load_run_model(run)
    row["load_ms"] = (time.perf_counter() - t0) * 1e3
    x = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
    t0 = time.perf_counter()
    model.predict(x, verbose=0)
    row["first_ms"] = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        model.predict(x, verbose=0)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        model.predict(x, verbose=0)
        times[i] = time.perf_counter() - t0
    row["latency_ms"] = _stats(times)
    row["fps"] = 1e3 / row["latency_ms"]["median"]
    rss1 = _rss_mb()
    row["rss_delta_mb"] = None if rss0 is None or rss1 is None else rss1 - rss0
    return row


def _tensorflow_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def check_targets(targets) -> None:
    """Before anything is written: each target is a run directory or device pack (a manifest.json), or a
    .tflite file (the TFL3 identifier), so a frame or a typo never gets a report folder made beside it."""
    if not targets:
        raise EdgebusError("pass a run directory, a device pack or .tflite files")
    for t in map(Path, targets):
        if not t.exists():
            raise EdgebusError(f"{t}: not found; pass a run directory, a device pack or .tflite files")
        if t.is_dir():
            if not (t / "manifest.json").is_file():
                raise EdgebusError(f"{t}: a folder without manifest.json, so neither a run nor a device pack; "
                                   "pass a run directory ('edgebus train'), a pack ('edgebus bench RUN "
                                   f"{flag('pack')} DIR') or .tflite files")
            continue
        with open(t, "rb") as f:
            head = f.read(8)
        if t.suffix.lower() != ".tflite" and head[4:8] != b"TFL3":  # a damaged .tflite gets its failed row instead
            raise EdgebusError(f"{t}: not a .tflite model (no TFL3 identifier); bench times exported models: "
                               "pass a run directory or the .tflite files 'edgebus export' wrote")


def bench_run(run_dir: str | Path, threads=(1,), warmup: int = 10, runs: int = 50, xnnpack: bool = True,
              keras: bool = True, edgetpu: bool = False, log=print) -> dict:
    """Time and score every exported file of a run (or a device pack), each sha256-checked against
    the manifest first; the Keras test metrics are the reference. `keras`: add the Keras `predict`
    row where TensorFlow is installed."""
    run = Run.load(run_dir)
    exports = run.manifest.exports
    if not exports:
        raise EdgebusError(f"{run.path}: nothing exported yet; run 'edgebus export {run.path} {flag('int8')}' first")
    pack = load_pack(run.verify_artifact("eval_pack.npz"))
    ref_head = run.task.headline(run.manifest.keras_metrics("test"))
    rows = []
    if keras and "model.keras" in run.manifest.artifacts and _tensorflow_available():
        log("benchmarking Keras predict (float, 1 image) ...")
        try:
            rows.append(keras_row(run, min(warmup, 5), min(runs, 20), ref_head))
        except EdgebusError as e:
            rows.append({"file": "model.keras", "format": "keras", "threads": None, "status": "load_failed",
                         "error": str(e), "size_bytes": None})
    for fmt, e in exports.items():
        try:
            targets = [(run.verify_artifact(e["file"]), False)]
        except EdgebusError as err:  # changed or missing: a failed row, never a silent benchmark of another file
            rows.append({"file": e["file"], "format": fmt, "threads": None, "status": "load_failed", "error": str(err),
                         "size_bytes": None, "integrity": "failed"})
            continue
        if edgetpu and fmt.startswith("int8"):
            targets.append((run.file(e["file"]).with_name(Path(e["file"]).stem + "_edgetpu.tflite"), True))
        for path, on_tpu in targets:
            for t in threads:
                log(f"benchmarking {path.name} ({t} thread{'s' if t > 1 else ''}{', Edge TPU' if on_tpu else ''}) ...")
                if on_tpu and not path.exists():
                    row, m = time_model(path, t, warmup, runs)
                    row.update(status="load_failed",
                               error=f"{path}: not compiled for the Edge TPU; run 'edgebus export RUN {flag('int8')} "
                                     f"{flag('edgetpu')}' where edgetpu_compiler is installed")
                else:
                    row, m = time_model(path, t, warmup, runs, xnnpack, edgetpu=on_tpu)
                row["format"] = fmt + ("+edgetpu" if on_tpu else "")
                _score(row, m, pack, ref_head)
                rows.append(row)
    size = run.manifest.preprocess["size"]
    return {
        "schema": SCHEMA, "created": now(), "machine": machine_info(), "run": str(run.path.resolve()),
        "task": run.task.name, "model": run.manifest.model.name, "input_size": size,
        "data_fingerprint": run.manifest.data.fingerprint,
        "eval_split": {"name": "test", "n": int(len(pack["images"]))},
        "keras_reference": ref_head, "rows": rows,
    }


def bench_files(paths, threads=(1,), warmup: int = 10, runs: int = 50, xnnpack: bool = True,
                eval_pack: str | Path | None = None, log=print) -> dict:
    """Time lone .tflite files; those with edgebus metadata are scored on an evaluation pack."""
    pack = load_pack(eval_pack) if eval_pack else None
    rows, tasks = [], set()
    for p in map(Path, paths):
        for t in threads:
            log(f"benchmarking {p.name} ({t} thread{'s' if t > 1 else ''}) ...")
            row, m = time_model(p, t, warmup, runs, xnnpack)
            row["format"] = m.meta.get("format", p.stem) if isinstance(m, ExportedModel) else p.stem
            if isinstance(m, ExportedModel):
                tasks.add(m.task.name)
                _score(row, m, pack, None)
            rows.append(row)
    return {
        "schema": SCHEMA, "created": now(), "machine": machine_info(),
        "run": None, "task": tasks.pop() if len(tasks) == 1 else None, "model": ", ".join(Path(p).name for p in paths),
        "input_size": None, "data_fingerprint": None,
        "eval_split": {"name": "pack", "n": int(len(pack["images"]))} if pack else None,
        "keras_reference": {}, "rows": rows,
    }


def make_pack(run_dir: str | Path, out: str | Path) -> Path:
    """Copy what a device needs to benchmark a run (exported files, sidecars, evaluation pack and a
    manifest) into `out`; `edgebus bench OUT` then runs there with only the core install."""
    import dataclasses

    run = Run.load(run_dir)
    if not run.manifest.exports:
        raise EdgebusError(f"{run.path}: nothing exported yet; run 'edgebus export {run.path} {flag('int8')}' first")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgebusError(f"{out}: exists and is not an empty folder; pick a new folder for the pack")
    keep = {"eval_pack.npz"}
    for e in run.manifest.exports.values():
        keep |= {e["file"], e.get("metadata")} - {None}
    sources = {name: run.verify_artifact(name) for name in sorted(keep)}  # every file checked before any copy
    make_dir(out, "pack folder")
    for name, src in sources.items():
        atomic_write(out / name, src.read_bytes())  # a fresh temp file, renamed: never through a planted link
    manifest = dataclasses.replace(run.manifest, artifacts={k: v for k, v in run.manifest.artifacts.items() if k in keep},
                                   pack_of=str(run.path.resolve()))
    write_json(out / MANIFEST, manifest.to_dict())
    return out
