"""Which mask decoder runs best in int8 on this CPU? (issue #31: decoder shapes XNNPACK runs in one piece)

    python benchmarks/decoder_shapes.py [--size 160] [--runs 100] [--rounds 7] [--out benchmarks/results/decoder-shapes.md]

Builds efficientnet-lite0-segaux with each x2 upsampling of its mask decoder (nearest resize, bilinear
resize, 2x2 transposed convolution), the same model without its decoder (the plain classifier) and the
README's Lite0 U-Net at 128 px, converts each to full int8 (random weights, calibrated on random
images: time does not depend on the weights), and times `invoke()` at 1 thread with XNNPACK, the files
interleaved in rounds. Also counts the ops XNNPACK does not take (nearest-neighbour resize) and the
multiply-accumulates per invoke, so each file's fraction of the CPU's int8 peak can be read off.
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def macs(model) -> int:
    """Multiply-accumulates of the conv / depthwise / dense layers of a Keras model, batch 1."""
    from edgebus.compat import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            k = int(np.prod(layer.kernel_size))
            total += k * int(np.prod(layer.output.shape[1:]))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            cin = int(layer.input.shape[-1])
            k = int(np.prod(layer.kernel_size))
            out = int(np.prod(layer.output.shape[1:]))
            if isinstance(layer, keras.layers.Conv2DTranspose):  # every input pixel meets the whole kernel
                total += int(np.prod(layer.input.shape[1:])) * k * int(layer.output.shape[-1])
            else:
                total += out * k * cin
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.input.shape[-1]) * int(layer.units)
    return total


def build_files(size: int, tmp: Path) -> dict:
    from edgebus.export.convert import convert
    from edgebus.models.registry import build_model, classifier_only

    rng = np.random.default_rng(0)
    out = {}
    specs = [("classifier only (no decoder)", "efficientnet-lite0-segaux", size, {}, True),
             *[(f"multi-task, {u} x2", "efficientnet-lite0-segaux", size, {"upsample": u}, False)
               for u in ("nearest", "bilinear", "transpose")],
             ("U-Net Lite0 (today's segmenter)", "unet-efficientnet-lite0", 128, {}, False)]
    for name, model_name, s, kw, only in specs:
        m = build_model(model_name, s, "none", **kw)
        if only:
            m = classifier_only(m)
        calib = rng.random((8, s, s, 3), dtype=np.float32)
        path = tmp / f"{len(out)}.tflite"
        path.write_bytes(convert(m, "int8", calib))
        out[name] = (path, macs(m), s)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from edgebus.runtime import TFLiteModel

    with tempfile.TemporaryDirectory() as tmp:
        files = build_files(a.size, Path(tmp))
        models = {n: TFLiteModel(p, num_threads=1) for n, (p, _, _) in files.items()}
        for m in models.values():
            m.set_input(np.zeros(m.input_shape, np.float32))
            for _ in range(10):
                m.invoke()
        times = {n: [] for n in models}
        for r in range(a.rounds):
            order = list(models) if r % 2 == 0 else list(models)[::-1]
            for n in order:
                t0 = time.perf_counter()
                for _ in range(a.runs):
                    models[n].invoke()
                times[n].append((time.perf_counter() - t0) / a.runs * 1000)
        rows = ["| model | input | ops XNNPACK leaves (nearest resize) | MMAC | median ms / invoke (1 thread) | GMAC/s |",
                "|---|---|---|---|---|---|"]
        for n, (p, mac, s) in files.items():
            ms = float(np.median(times[n]))
            nearest = models[n].op_names().count("RESIZE_NEAREST_NEIGHBOR")
            rows.append(f"| {n} | {s} px | {nearest} | {mac / 1e6:.0f} | {ms:.2f} | {mac / ms / 1e6:.1f} |")
    text = "\n".join(rows)
    print(text)
    if a.out:
        head = (f"# Mask decoder shapes in int8 ({time.strftime('%Y-%m-%d')})\n\n`python benchmarks/decoder_shapes.py "
                f"--size {a.size} --runs {a.runs} --rounds {a.rounds}` on {platform.processor() or platform.machine()}, "
                f"{a.rounds} interleaved rounds of {a.runs} invokes, 1 thread, XNNPACK; random weights (time does not "
                "depend on them).\n\n")
        Path(a.out).write_text(head + text + "\n")


if __name__ == "__main__":
    main()
