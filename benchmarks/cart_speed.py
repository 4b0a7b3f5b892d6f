"""Carts side by side on the same real frames, in one run (issue #31): how many frames a second each
cart decides, where the time goes, and how close its networks come to this CPU's int8 peak.

    python benchmarks/cart_speed.py --frames ../shared/data/BrEaST-Lesions_USG --n 64 \
        --cart "15+1=cls:CV/fold*/model_int8.tflite*3+seg:UNET.tflite+fusion:FUSION.json" \
        --cart "student=bundle:CART_DIR" --threads 1 --out benchmarks/results/cart/speed.md

A cart is `bundle:DIR` (an `edgebus bundle` folder) or `cls:FILES[*K]` (int8 classifier files, a glob; `*K`
repeats the list K times, e.g. a 5-fold CV's files x 3 for the 15-member cart's cost) with optional
`+seg:FILE` and `+fusion:FILE`. Per cart, interleaved with the others in rounds over the same frames:
- live: `LesionPipeline.predict` on frames already in memory (a capture card's buffer), fusion and
  descriptors on, no overlay: frames/s, and the share of the frame spent outside `invoke()`;
- stream: `LesionPipeline.stream` on the same frames, 2 in flight (one in its interpreter call while
  another is in Python): frames/s with the cart's second core, interpreters still at --threads each;
- inference: `invoke()` alone (every network of the cart), frames/s;
- decode: reading the PNG files, ms per frame (what the file path adds to the live path);
- predict: `edgebus predict` as the command runs it (PNG in, overlays and masks written, results
  file), wall-clock frames/s, once per cart after the rounds;
- MMAC per frame (conv, depthwise, transposed conv and dense ops of every invoke) and the fraction of
  the CPU's int8 peak reached in `invoke()`: the peak is what XNNPACK reaches on one big 1x1 convolution
  on this CPU, measured first (measure_peak), or --peak-gmacs.
"""

import argparse
import glob
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

def measure_peak(threads: int, runs: int = 30) -> float:
    """GMAC/s of XNNPACK's int8 kernels at their best on this CPU: a 3x3 convolution, 512 -> 512 channels
    on 10x10 (236 MMAC), converted to full int8, median of `runs` invokes: the fastest of the shapes tried
    (1x1 and 3x3, 64 to 1024 channels: 130-199 GMAC/s on this project's 2-core EPYC, 2026-12-07). The
    practical int8 peak each cart's networks are compared with (needs edgebus[train] to convert)."""
    from edgebus.compat import keras
    from edgebus.export.convert import convert
    from edgebus.runtime import TFLiteModel

    inp = keras.Input((10, 10, 512))
    model = keras.Model(inp, keras.layers.Conv2D(512, 3, padding="same", use_bias=False)(inp))
    calib = np.random.default_rng(0).random((4, 10, 10, 512), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peak.tflite"
        path.write_bytes(convert(model, "int8", calib))
        m = TFLiteModel(path, num_threads=threads)
        m.set_input(calib[:1])
        for _ in range(5):
            m.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            m.invoke()
            times.append(time.perf_counter() - t0)
        return tflite_macs(m) / float(np.median(times)) / 1e9


def tflite_macs(model) -> int:
    """Multiply-accumulates of one invoke, from the graph's conv / depthwise / transposed conv / dense ops."""
    it = model.interpreter
    shapes = {t["index"]: tuple(int(s) for s in t["shape"]) for t in it.get_tensor_details()}
    total = 0
    for op in it._get_ops_details():
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            out = shapes[outs[0]]
            w = shapes[ins[1]]
            if name == "CONV_2D":  # w: (out_c, kh, kw, in_c)
                total += int(np.prod(out)) * w[1] * w[2] * w[3]
            elif name == "DEPTHWISE_CONV_2D":  # w: (1, kh, kw, out_c)
                total += int(np.prod(out)) * w[1] * w[2]
            elif name == "FULLY_CONNECTED":  # w: (out, in)
                total += int(np.prod(out)) * w[1]
            else:  # TRANSPOSE_CONV inputs: (output shape, weights (out_c, kh, kw, in_c), input)
                total += int(np.prod(shapes[ins[2]])) * w[0] * w[1] * w[2]
    return total


def build_cart(spec: str, threads: int):
    from edgebus.runtime import LesionPipeline
    from edgebus.runtime.ensemble import EnsembleModel
    from edgebus.runtime.fusion import ShapeFusion

    if spec.startswith("bundle:"):
        return LesionPipeline.from_bundle(spec[len("bundle:"):], num_threads=threads)
    parts = dict(p.split(":", 1) for p in spec.split("+"))
    files, times = parts["cls"], 1
    if "*" in files.rsplit("tflite", 1)[-1]:
        files, times = files.rsplit("*", 1)
        times = int(times)
    paths = sorted(glob.glob(files)) * times
    if not paths:
        raise SystemExit(f"{files}: no files")
    cls = EnsembleModel(paths, 0.5, num_threads=threads) if len(paths) > 1 else paths[0]
    fusion = ShapeFusion(parts["fusion"]) if "fusion" in parts else None
    return LesionPipeline(classifier=cls, segmenter=parts.get("seg"), num_threads=threads, fusion=fusion,
                          accept_failed_gates=True)


def networks(pipe) -> list:
    """Every interpreter the cart invokes per frame."""
    out = []
    for m in (pipe.classifier, pipe.segmenter):
        if m is not None:
            out += [x.model for x in getattr(m, "members", [m])]
    return out


class InvokeClock:
    """Wraps every interpreter's invoke() of a cart to add up the time spent inside it."""

    def __init__(self, models):
        self.total = 0.0
        for m in models:
            real = m.invoke

            def timed(real=real):
                t0 = time.perf_counter()
                real()
                self.total += time.perf_counter() - t0
            m.invoke = timed


def frames_of(root: Path, n: int) -> list:
    files = sorted(p for p in Path(root).rglob("*.png") if "_tumor" not in p.name and "_other" not in p.name)
    return files[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--cart", action="append", required=True, help="NAME=SPEC")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pixel-size", type=float, default=0.1)
    ap.add_argument("--peak-gmacs", type=float, default=None, help="int8 GMAC/s per thread (default: measured, measure_peak)")
    ap.add_argument("--out")
    a = ap.parse_args()
    from edgebus.runtime.batch import predict_files
    from edgebus.runtime.frames import load_frame

    a.peak_gmacs = a.peak_gmacs or measure_peak(1)
    print(f"int8 peak (3x3 convolution, XNNPACK, 1 thread): {a.peak_gmacs:.0f} GMAC/s")
    files = frames_of(Path(a.frames), a.n)
    t0 = time.perf_counter()
    grays = [load_frame(f) for f in files]
    decode_ms = (time.perf_counter() - t0) / len(files) * 1000
    carts = {}
    for c in a.cart:
        name, spec = c.split("=", 1)
        pipe = build_cart(spec, a.threads)
        nets = networks(pipe)
        carts[name] = {"pipe": pipe, "clock": InvokeClock(nets), "macs": sum(tflite_macs(m) for m in nets),
                       "networks": len(nets), "wall": [], "invoke": [], "stream": []}
        for g in grays[:3]:  # warm-up
            pipe.predict(g, a.pixel_size)
    for r in range(a.rounds):
        for name in (list(carts) if r % 2 == 0 else list(carts)[::-1]):
            c = carts[name]
            c["clock"].total = 0.0
            t0 = time.perf_counter()
            for g in grays:
                c["pipe"].predict(g, a.pixel_size)
            c["wall"].append(time.perf_counter() - t0)
            c["invoke"].append(c["clock"].total)
            t0 = time.perf_counter()
            for _ in c["pipe"].stream(grays, a.pixel_size, workers=2):
                pass
            c["stream"].append(time.perf_counter() - t0)
    for name, c in carts.items():
        with tempfile.TemporaryDirectory() as tmp:
            s = predict_files(c["pipe"], files, Path(tmp) / "p", pixel_size_mm=a.pixel_size, log=lambda *_: None)
        c["predict_fps"], c["predict_pipeline_fps"] = s["fps"]["wall"], s["fps"]["pipeline"]
    n = len(grays)
    rows = ["| cart | networks per frame | MMAC per frame | live frames/s (ms per frame) | stream, 2 in flight, frames/s | inference frames/s | "
            "outside invoke() | `edgebus predict` wall frames/s (overlays, files) / its pipeline frames/s (decode to mask) | "
            "int8 peak reached in invoke() |",
            "|---|---|---|---|---|---|---|---|---|"]
    base = None
    result = {}
    for name, c in carts.items():
        wall, inv = float(np.median(c["wall"])), float(np.median(c["invoke"]))
        live, infer = n / wall, n / inv
        base = base or live
        peak = c["macs"] * infer / (a.peak_gmacs * 1e9 * a.threads)
        stream = n / float(np.median(c["stream"]))
        result[name] = {"live_fps": live, "stream_fps": stream, "inference_fps": infer, "outside_invoke": 1 - inv / wall,
                        "predict_wall_fps": c["predict_fps"], "predict_pipeline_fps": c["predict_pipeline_fps"],
                        "mmac": c["macs"] / 1e6, "networks": c["networks"],
                        "peak_fraction": peak}
        rows.append(f"| {name} | {c['networks']} | {c['macs'] / 1e6:.0f} | {live:.1f} ({1000 / live:.1f}) | {stream:.1f} | {infer:.1f} | "
                    f"{100 * (1 - inv / wall):.0f}% | {c['predict_fps']:.1f} / {c['predict_pipeline_fps']:.1f} | {100 * peak:.0f}% |")
    text = "\n".join(rows)
    print(text)
    print(f"PNG decode: {decode_ms:.1f} ms per frame (mean over {n} frames)")
    if a.out:
        machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
            machine = f"{cpu} ({platform.machine()})"
        except (OSError, StopIteration):
            pass
        Path(a.out).with_suffix(".json").write_text(json.dumps(
            {"machine": machine, "threads": a.threads, "frames": n, "rounds": a.rounds, "decode_ms": decode_ms,
             "peak_gmacs_per_thread": a.peak_gmacs, "carts": dict(c.split("=", 1) for c in a.cart),
             "results": result, "date": time.strftime("%Y-%m-%d")}, indent=1))
        Path(a.out).write_text(f"{text}\n\nPNG decode (the file path only): {decode_ms:.1f} ms per frame. Machine: {machine}; "
                               f"{a.threads} thread(s), {n} real frames, {a.rounds} interleaved rounds (medians); int8 peak "
                               f"{a.peak_gmacs:.0f} GMAC/s per thread (measure_peak).\n")


if __name__ == "__main__":
    main()
