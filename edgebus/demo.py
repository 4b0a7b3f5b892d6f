"""The README's main job: the whole chain on a synthetic (or given) data set, small and quick:
data -> train MobileNetV2 + EfficientNetB2 U-Net -> float32 / int8 (PTQ and QAT) export ->
benchmark -> cart bundle -> predict on a few frames -> one report."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write


DEMO_CASES = 240  # a 24-image test split: one case is 4 points there, and the gates count cases


def run_demo(out: Path, data: Path | None = None, size: int = 96, epochs: int = 15, overwrite: bool = False,
             threads=(1, 2), log=print) -> Path:
    """The chain with export's own defaults, gates included: a file that fails them stops the demo
    (export raises) before anything is bundled."""
    from edgebus.benchmarks import bench_run, write_report
    from edgebus.benchmarks.report import markdown
    from edgebus.config.stages import ExportConfig
    from edgebus.export.exporter import export_run
    from edgebus.runtime import LesionPipeline, make_bundle, predict_files
    from edgebus.runtime.console import cart_lines
    from edgebus.data.inputs import list_frames
    from edgebus.training import TrainConfig, train

    out = Path(out)
    report = out / "report.md"
    if report.exists() and not overwrite:
        raise EdgebusError(f"{out}: a finished demo is there; pass {flag('overwrite')} or pick another {flag('out')}")
    if data is None:
        from edgebus.data.synthetic import make_synthetic

        data = out / "data"
        if not (data / "BrEaST-Lesions_USG-images_and_masks").exists():
            log(f"writing a synthetic BrEaST-layout set to {data} ...")
            make_synthetic(data, n_cases=DEMO_CASES, seed=0)
    plans = [("mobilenetv2", dict(lr=1e-3)), ("unet-efficientnetb2", dict(lr=1e-3))]  # batch: the registry's
    parts, runs = [], {}
    for model, kw in plans:
        run_dir = out / "runs" / f"{model}-{size}"
        log(f"training {model} at {size}x{size} for {epochs} epochs -> {run_dir}")
        run = train(TrainConfig(data=str(data), model=model, out=str(run_dir), size=size, epochs=epochs,
                                overwrite=overwrite, **kw))
        runs[run.task.name] = run_dir
        cfg = ExportConfig(formats=["float32", "int8"], overwrite=True)
        log(f"exporting {run_dir}: float32, int8 PTQ and int8 QAT ({cfg.qat_epochs} epochs distilled from the float model), "
            "gated against the float model ...")
        exports = export_run(run_dir, cfg, log=log)
        parts.append(_gates_md(run, exports))
        result = bench_run(run_dir, threads, warmup=5, runs=30, log=log)
        write_report(result, run_dir)
        parts.append(markdown(result))

    bundle = make_bundle(out / "cart", runs["classify"], runs["segment"], overwrite=True)
    frames, _ = list_frames(Path(data) / "BrEaST-Lesions_USG-images_and_masks")
    log(f"cart bundle {bundle}: predicting {min(4, len(frames))} frames with the int8 models ...")
    pipe = LesionPipeline.from_bundle(bundle)
    for line in cart_lines(pipe):  # the synthetic-data warning first, as 'edgebus predict' prints it
        log(line)
    summary = predict_files(pipe, frames[:4], out / "predictions", log=log, overwrite=True)
    warned = "".join(f"- **WARNING**: {w}\n" for w in pipe.warnings)
    parts.append(f"# Cart: int8 classifier + segmenter on {summary['ok']} frames\n\n{warned}"
                 f"- bundle: `{bundle}`; predictions, overlays and masks: `{out / 'predictions'}`\n"
                 f"- frames per second, 1 thread: {summary['fps']['wall']} wall clock (with overlay and mask files); "
                 f"{summary['fps']['inference']} inference only (classify + segment); "
                 f"{summary['fps']['pipeline']} pipeline (decode to mask)\n")
    atomic_write(report, "\n".join(parts))
    return report


def _gates_md(run, exports: dict) -> str:
    """The int8 file's verdict against its float parent, as export_report.md states it."""
    e = exports["int8"]
    f, g = e["fidelity"], e["gates"]
    if run.task.truth_is_mask:
        what = (f"mask IoU against the float model {f['mask_iou_mean']:.3f} mean, {f['mask_iou_median']:.3f} median, "
                f"{f['mask_iou_min']:.3f} worst of {f['n']} test images")
    else:
        what = (f"{f['flips']} of {f['n']} test labels flipped against the float model ({f['benign_to_malignant']} benign->"
                f"malignant, {f['malignant_to_benign']} malignant->benign); cancers called benign: {f['missed']} of "
                f"{f['malignant']} (float model: {f['missed_float']}), {f['missed_new']} of them caught by the float model; "
                f"threshold {e['threshold']:.3f}")
    limits = ", ".join(f"{k} {v}" for k, v in g["limits"].items() if v is not None)
    return (f"# {run.manifest.model.name}: int8 QAT file against its float parent\n\n- gates {g['status']} ({limits}): "
            f"{what}\n- details: `{run.path / 'export_report.md'}`\n")
