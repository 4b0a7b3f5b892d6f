"""Latency harness in the spirit of TensorFlow's benchmark_model: load/init time, first
inference, warm-up, then N timed invokes. Runs on the device path: numpy + an interpreter only."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from edgebus import __version__
from edgebus.errors import EdgebusError
from edgebus.metrics import headline, task_metrics
from edgebus.runtime.interpreter import TFLiteModel, interpreter_backend


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
    return {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "interpreter": f"{name} {version}",
        "edgebus": __version__,
    }


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if platform.system() != "Darwin" else r / 1e6


def time_model(path: str | Path, threads: int = 1, warmup: int = 10, runs: int = 50, xnnpack: bool = True) -> tuple[dict, TFLiteModel | None]:
    """Timing row for one file and thread count. A file that will not load gives a failed row."""
    path = Path(path)
    row = {"file": path.name, "threads": threads, "size_bytes": path.stat().st_size if path.exists() else None,
           "warmup": warmup, "runs": runs, "status": "ok", "error": None}
    t0 = time.perf_counter()
    try:
        m = TFLiteModel(path, num_threads=threads, xnnpack=xnnpack)
    except EdgebusError as e:
        row.update(status="load_failed", error=str(e))
        return row, None
    row["load_ms"] = (time.perf_counter() - t0) * 1e3
    row["xnnpack"] = m.xnnpack
    row["xnnpack_error"] = m.xnnpack_error
    x = np.random.default_rng(0).random(m.input_shape, dtype=np.float32)
    m.set_input(x)
    t0 = time.perf_counter()
    m.invoke()
    row["first_ms"] = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        m.invoke()
    invoke = m.interpreter.invoke
    times = np.empty(runs)
    for i in range(runs):  # the bare loop: nothing but invoke() between the two clock reads
        t0 = time.perf_counter()
        invoke()
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    row["latency_ms"] = {
        "min": float(ms.min()), "median": float(np.median(ms)), "mean": float(ms.mean()), "std": float(ms.std()),
        "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
    }
    row["fps"] = 1e3 / row["latency_ms"]["median"]
    row["peak_rss_mb"] = _peak_rss_mb()
    return row, m


def load_pack(path: str | Path) -> dict:
    path = Path(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise EdgebusError(f"{path}: evaluation pack not found; run 'edgebus export' on the run first") from None
    except (ValueError, OSError) as e:
        raise EdgebusError(f"{path}: unreadable evaluation pack ({e}); re-run 'edgebus export'") from None


def evaluate(m: TFLiteModel, pack: dict, task: str, threshold: float = 0.5) -> dict:
    """Score a loaded model on an evaluation pack (uint8 test images at the model's size)."""
    c = m.input_shape[-1]
    x = np.repeat(pack["images"][..., None], c, axis=-1).astype(np.float32) / 255.0
    prob = m.predict(x)
    truth = pack["labels"] if task == "classify" else pack["masks"]
    return task_metrics(task, truth, prob, threshold)


def bench_run(run_dir: str | Path, threads=(1,), warmup: int = 10, runs: int = 50, xnnpack: bool = True, log=print) -> dict:
    """Time and score every exported file of a run; the Keras test metrics are the reference."""
    from edgebus.rundir import Run

    run = Run.load(run_dir)
    exports = run.manifest.get("exports")
    if not exports:
        raise EdgebusError(f"{run.path}: nothing exported yet; run 'edgebus export {run.path} --int8' first")
    pack = load_pack(run.verify_artifact("eval_pack.npz"))
    thr = run.manifest.get("threshold", 0.5)
    ref = run.manifest["metrics"].get("keras_test") or run.manifest["metrics"]["keras"]["test"]
    ref_head = headline(run.task, ref)
    rows = []
    for fmt, e in exports.items():
        for t in threads:
            log(f"benchmarking {e['file']} ({t} thread{'s' if t > 1 else ''}) ...")
            row, m = time_model(run.file(e["file"]), t, warmup, runs, xnnpack)
            row["format"] = fmt
            if m is not None:
                try:
                    row["metrics"] = headline(run.task, evaluate(m, pack, run.task, thr))
                    row["delta_vs_keras"] = {k: (row["metrics"][k] - v if v is not None and row["metrics"][k] is not None else None)
                                             for k, v in ref_head.items()}
                except (EdgebusError, ValueError, RuntimeError) as err:
                    row.update(status="metric_failed", error=str(err).splitlines()[0])
            rows.append(row)
    return {
        "schema": "edgebus.bench/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "run": str(run.path.resolve()),
        "task": run.task,
        "model": run.manifest["model"]["name"],
        "input_size": run.manifest["preprocess"]["size"],
        "data_fingerprint": run.manifest["data"]["fingerprint"],
        "eval_split": {"name": "test", "n": int(len(pack["images"]))},
        "keras_reference": ref_head,
        "rows": rows,
    }
