"""The README's main job: the whole chain on a synthetic (or given) data set, small and quick."""

from __future__ import annotations

from pathlib import Path

from edgebus.errors import EdgebusError
from edgebus.rundir import atomic_write


def run_demo(out: Path, data: Path | None = None, size: int = 96, epochs: int = 15, overwrite: bool = False,
             threads=(1, 2), log=print) -> Path:
    """Train MobileNetV2 and the EfficientNetB2 U-Net, export float32 + int8, benchmark, report."""
    from edgebus.benchmarks import bench_run, write_report
    from edgebus.benchmarks.report import markdown
    from edgebus.export import export_run
    from edgebus.training import TrainConfig, train

    out = Path(out)
    report = out / "report.md"
    if report.exists() and not overwrite:
        raise EdgebusError(f"{out}: a finished demo is there; pass --overwrite or pick another --out")
    if data is None:
        from edgebus.data.synthetic import make_synthetic

        data = out / "data"
        if not (data / "BrEaST-Lesions_USG-images_and_masks").exists():
            log(f"writing a synthetic BrEaST-layout set to {data} ...")
            make_synthetic(data, n_cases=160, seed=0)
    plans = [
        ("mobilenetv2", dict(lr=1e-3, batch=16)),
        ("unet-efficientnetb2", dict(lr=1e-3, batch=8)),
    ]
    parts = []
    for model, kw in plans:
        run_dir = out / "runs" / f"{model}-{size}"
        log(f"training {model} at {size}x{size} for {epochs} epochs -> {run_dir}")
        train(TrainConfig(data=str(data), model=model, out=str(run_dir), size=size, epochs=epochs,
                          overwrite=overwrite, **kw))
        log(f"exporting {run_dir} (float32, int8) ...")
        export_run(run_dir, ("float32", "int8"), overwrite=True, log=log)
        result = bench_run(run_dir, threads, warmup=5, runs=30, log=log)
        write_report(result, run_dir)
        parts.append(markdown(result))
    atomic_write(report, "\n".join(parts))
    return report
