"""How much does edgebus's timing loop add over a bare `invoke()` loop? (target: <= 2%)

    python benchmarks/harness_overhead.py [MODEL.tflite] [--runs 200] [--rounds 21]

Without a model it converts a random-weight MobileNetV2 at 128x128 to int8 (needs edgebus[train]).
One interpreter; the harness loop (`timed_invokes`, exactly what `edgebus bench` uses) and a bare
loop alternate in rounds, in swapped order every other round, so drift and noise hit both alike.
Prints the ratio of the harness's wall time to the bare loop's (medians over rounds).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebus.benchmarks.bench import timed_invokes
from edgebus.runtime import TFLiteModel


def default_model(tmp: Path) -> Path:
    from edgebus.export.convert import convert
    from edgebus.models import build_model

    model = build_model("mobilenetv2", 128)
    calib = np.random.default_rng(0).random((8, 128, 128, 3), dtype=np.float32)
    path = tmp / "mobilenetv2_128_int8.tflite"
    path.write_bytes(convert(model, "int8", calib))
    return path


def bare(invoke, runs):
    for _ in range(runs):
        invoke()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=21)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.model) if a.model else default_model(Path(tmp))
        m = TFLiteModel(path, num_threads=1)
        m.set_input(np.random.default_rng(0).random(m.input_shape, dtype=np.float32))
        invoke = m.interpreter.invoke
        for _ in range(50):
            invoke()
        ratios = []
        for r in range(a.rounds):
            walls = {}
            for name in (("harness", "bare") if r % 2 == 0 else ("bare", "harness")):
                t0 = time.perf_counter()
                (timed_invokes if name == "harness" else bare)(invoke, a.runs)
                walls[name] = time.perf_counter() - t0
            ratios.append(walls["harness"] / walls["bare"])
        q = np.percentile(ratios, [25, 50, 75])
        print(f"model {path.name}: {a.rounds} rounds x {a.runs} invokes, 1 thread, {m.backend} {m.backend_version}")
        print(f"harness/bare wall-time ratio: median {q[1]:.4f} ({(q[1] - 1) * 100:+.2f}%), IQR {q[0]:.4f}..{q[2]:.4f}")


if __name__ == "__main__":
    main()
