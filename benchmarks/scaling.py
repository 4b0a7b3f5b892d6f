"""Latency vs input size and threads, so a cart can pick the size that fits its frame budget.

    python benchmarks/scaling.py --sizes 128,160,224,256 --threads 1,2 --out benchmarks/results/scaling

Random-weight models (latency does not depend on the weights), float32 and int8 (PTQ calibrated on
random images), timed with edgebus's harness. Needs edgebus[train] to build and convert.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgebus.benchmarks.bench import machine_info, time_model
from edgebus.core.io import atomic_write, write_json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenetv2,unet-efficientnetb2")
    ap.add_argument("--sizes", default="128,160,224,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/scaling")
    a = ap.parse_args()
    from edgebus.export.convert import convert
    from edgebus.models import build_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            for size in map(int, a.sizes.split(",")):
                model = build_model(name, size)
                calib = np.random.default_rng(0).random((8, size, size, 3), dtype=np.float32)
                for fmt in ("float32", "int8"):
                    path = Path(tmp) / f"{name}_{size}_{fmt}.tflite"
                    path.write_bytes(convert(model, fmt, calib if fmt == "int8" else None))
                    for t in map(int, a.threads.split(",")):
                        row, _ = time_model(path, t, warmup=5, runs=a.runs)
                        rows.append({"model": name, "size": size, "format": fmt, "threads": t,
                                     "median_ms": row["latency_ms"]["median"], "p90_ms": row["latency_ms"]["p90"],
                                     "size_mb": row["size_bytes"] / 1e6, "xnnpack": row["xnnpack"]})
                        print(json.dumps(rows[-1]))
    out = Path(a.out)
    m = machine_info()
    write_json(out.with_suffix(".json"), {"machine": m, "rows": rows})
    lines = [f"# Latency vs input size and threads ({m['cpu']}, {m['cores']} cores, {m['interpreter']})", "",
             f"Made by: `python benchmarks/scaling.py --models {a.models} --sizes {a.sizes} --threads {a.threads} "
             f"--runs {a.runs}`. Random weights; median of {a.runs} invokes after 5 warm-up; ms.", "",
             "| model | size | " + " | ".join(f"{f} t{t}" for f in ("float32", "int8") for t in a.threads.split(",")) + " |",
             "|---|---|" + "---|" * (2 * len(a.threads.split(",")))]
    for name in a.models.split(","):
        for size in map(int, a.sizes.split(",")):
            cells = []
            for f in ("float32", "int8"):
                for t in map(int, a.threads.split(",")):
                    r = [x for x in rows if x["model"] == name and x["size"] == size and x["format"] == f and x["threads"] == t]
                    cells.append(f"{r[0]['median_ms']:.2f}" if r else "-")
            lines.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
    atomic_write(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
