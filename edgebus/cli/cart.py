"""edgebus bench / report / predict / bundle: the device path (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path
import typer

from edgebus.cli.common import friendly
from edgebus.cli.options import OPT
from edgebus.core.errors import EdgebusError, flag


@friendly
def bench(targets: list[Path] = typer.Argument(..., help="a run directory (or a pack from --pack), or .tflite files"),
          threads: str = OPT, warmup: int = OPT, runs: int = OPT, xnnpack: bool = OPT, keras: bool = OPT,
          edgetpu: bool = OPT, eval_pack: Path = OPT, pack: Path = OPT, out: Path = OPT):
    """Time exported models and score them; writes report.md, report.json and report.html."""
    from edgebus.benchmarks.bench import bench_files, bench_run, check_targets, make_pack
    from edgebus.benchmarks.report import check_out, markdown, report_folder, write_report

    check_targets(targets)  # before any folder or file is made
    if pack is not None:
        if len(targets) != 1 or not targets[0].is_dir():
            raise EdgebusError(f"{flag('pack')} takes exactly one run directory")
        typer.echo(f"device pack written: {make_pack(targets[0], pack)} (copy it to the device, then: edgebus bench DIR)")
        return
    thread_counts = threads or [1]
    on_run = len(targets) == 1 and targets[0].is_dir()
    out = out or report_folder(targets)
    check_out(out, {"run": str(targets[0].resolve())} if on_run else  # before the work, not after
              {"run": None, "model": ", ".join(t.name for t in targets)})
    if on_run:
        result = bench_run(targets[0], thread_counts, warmup, runs, xnnpack, keras, bool(edgetpu), log=typer.echo)
    else:
        result = bench_files(targets, thread_counts, warmup, runs, xnnpack, eval_pack, log=typer.echo)
    md, _ = write_report(result, out)
    typer.echo(markdown(result))
    typer.echo(f"report: {md}")
    if len(targets) == 1 and (targets[0] / "model_card.json").is_file() and out == targets[0]:
        from edgebus.export.model_card import write_model_card

        typer.echo(f"model card (with this latency): {write_model_card(targets[0])}")
    bad = [r for r in result["rows"] if r.get("integrity") == "failed"]
    if bad:  # a changed or missing file is not a benchmark result: the command fails
        raise EdgebusError(f"{bad[0]['error']} ({len(bad)} file(s) in all); report kept at {md}")
    if result["rows"] and all(r.get("status") != "ok" for r in result["rows"]):
        raise EdgebusError(f"every benchmark row failed (first: {result['rows'][0].get('error')}); report kept at {md}")


@friendly
def report(results: list[Path] = typer.Argument(..., help="report.json files from 'edgebus bench' (any machines)"),
           out: Path = OPT):
    """Merge benchmark results from several machines into one report (in --out, default report/)."""
    from edgebus.benchmarks.report import load_results, markdown, write_report

    res = load_results(results)
    md, _ = write_report(res, out or Path("report"))
    typer.echo(markdown(res))
    typer.echo(f"report: {md} (and report.html, report.json)")


@friendly
def predict(
        inputs: list[Path] = typer.Argument(..., help="PNG/JPEG or ultrasound DICOM (.dcm) frames, folders of frames, BrEaST- or "
                                            "BUSI-layout folders, or quoted patterns ('scans/*.png'); several may be given"),
        classifier: Path = OPT, segmenter: Path = OPT, bundle: Path = OPT, out: Path = OPT, pixel_size: float = OPT,
        data: Path = OPT, threads: str = OPT, xnnpack: bool = OPT, overlays: bool = OPT, masks: bool = OPT,
        overwrite: bool = OPT, dicom_seg: bool = OPT, dicom_sr: bool = OPT, accept_failed_gates: bool = OPT):
    """Classify and segment ultrasound frames with exported .tflite models, offline and without TensorFlow.

    Results go to --out (default predictions/). --data: a BrEaST-layout folder whose sheet gives each frame's
    pixel size (its Pixel_size column, cm/pixel, converted to mm; --pixel-size covers frames not in it; needs
    pandas, the train extra).

    Per frame: malignancy probability and label at the classifier's stored threshold, lesion mask at the frame's size, its area (pixels, and mm^2 with a pixel size), bounding box [x0, y0, x1, y1) and an overlay PNG; per-image latency and overall frames per second.

    Results stream into predictions.jsonl as each frame finishes; run again with the same --out to go on where a killed run stopped (the frames done are kept, failed ones are tried again; other models or settings are refused).

    Exit code: 0 when every frame succeeded; 1 when some frames failed (each is reported, its row has 'error' set, the other frames are still processed); 2 for bad arguments or models.
    """
    from edgebus.data.layouts import frames_of, sheet_pixel_sizes
    from edgebus.runtime import LesionPipeline, predict_files
    from edgebus.runtime.batch import fps_line
    from edgebus.runtime.console import cart_lines
    from edgebus.core.units import pixel_size_problem
    from edgebus.runtime.frames import printable

    def say(line: str) -> None:  # valid UTF-8 whatever the file names are (runtime.frames.printable)
        typer.echo(printable(line))

    if bundle is not None and (classifier is not None or segmenter is not None):
        raise EdgebusError(f"pass either {flag('bundle')} or {flag('classifier')}/{flag('segmenter')}, not both")
    if bundle is None and classifier is None and segmenter is None:
        raise EdgebusError(f"pass {flag('classifier')} and/or {flag('segmenter')} (a .tflite file or a run directory), "
                           f"or {flag('bundle')} DIR")
    if threads is not None and len(threads) != 1:
        raise EdgebusError(f"{flag('threads')} {','.join(map(str, threads))}: predict runs one thread count")
    threads = threads[0] if threads else 1
    out = out or Path("predictions")
    if pixel_size is not None and pixel_size_problem(pixel_size, flag("pixel_size")):
        raise EdgebusError(pixel_size_problem(pixel_size, flag("pixel_size")))
    files, skipped, breast = frames_of(inputs)  # a BrEaST-layout folder's sheet gives its frames' pixel sizes
    data = data or breast
    if skipped:
        say(f"{', '.join(map(str, inputs))}: skipping {skipped} mask files (*_tumor, *_other)")
    pixel_sizes = sheet_pixel_sizes(data, files, pixel_size, say) if data is not None else None
    if bundle is not None:  # its models, fusion and site threshold, sha256-checked
        pipe = LesionPipeline.from_bundle(bundle, threads, xnnpack, accept_failed_gates)
    else:
        pipe = LesionPipeline(classifier, segmenter, num_threads=threads, xnnpack=xnnpack,
                              accept_failed_gates=accept_failed_gates)
    for line in cart_lines(pipe):
        say(line)
    s = predict_files(pipe, files, out, pixel_sizes, pixel_size, overlays, masks, log=typer.echo, overwrite=overwrite,
                      dicom_seg=dicom_seg, dicom_sr=dicom_sr)
    say(f"{s['frames']} frames: {s['ok']} ok, {s['failed']} failed; {fps_line(s['fps'])}")
    say(f"results: {s['predictions']['jsonl']}, {s['predictions']['csv']}, {s['summary_file']}")
    if s.get("viewer"):
        say(f"viewer: {s['viewer']} (open it in a browser: every frame, its overlay, label and warnings; works offline)")
    if s["failed"]:
        raise typer.Exit(1)


@friendly
def bundle(classifier: Path = OPT, segmenter: Path = OPT, out: Path = OPT, format: str = OPT, overwrite: bool = OPT,
           fusion: Path = OPT, accept_failed_gates: bool = OPT, presence: Path = OPT):
    """Copy a classifier and a segmenter into one folder for the cart (classifier.tflite, segmenter.tflite, bundle.json).

    A classifier given as a CV folder ('edgebus cv classify --int8') becomes a fold ensemble: every fold's int8 file,
    averaged on the cart, with the CV's out-of-fold operating point ('edgebus operating-point CV_DIR')."""
    from edgebus.runtime import make_bundle
    from edgebus.runtime.bundle import bundle_acceptances

    if out is None:
        raise EdgebusError(f"pass {flag('out')}: the folder of the new bundle")

    path = make_bundle(out, classifier, segmenter, format or "int8", overwrite, fusion, accept_failed_gates, presence)
    for line in bundle_acceptances(path):
        typer.echo(f"warning: {line}")
    typer.echo(f"bundle: {path} (edgebus predict --bundle {path} FRAMES)")


@friendly
def site_check(predictions: Path = typer.Argument(..., help="a folder 'edgebus predict --bundle CART DATA --out' wrote"),
               data: Path = OPT, format: str = OPT, target_sensitivity: float = OPT, out: Path = OPT,
               overwrite: bool = OPT):
    """Does the cart's operating point hold at this site? Scores its predictions of locally labelled cases: AUC,
    sensitivity and specificity at the shipped threshold with bootstrap intervals, calibration, and the threshold
    these cases would choose. Reads predictions and labels only (no TensorFlow), so it runs on the cart."""
    from edgebus.evaluation.site_check import site_check as run

    if data is None:
        raise EdgebusError(f"pass {flag('data')}: the labelled set of the same frames")
    target = 0.9 if target_sensitivity is None else target_sensitivity
    if not 0 < target < 1:
        raise EdgebusError(f"{flag('target_sensitivity')} {target}: give a number between 0 and 1")
    run(predictions, data, format or "breast", target, out, log=typer.echo, overwrite=overwrite)


@friendly
def site_threshold(cart: Path = typer.Argument(..., help="the shipped cart (a folder 'edgebus bundle' wrote)"),
                   site_check: Path = typer.Argument(..., help="its site check (the folder 'edgebus site-check' wrote)"),
                   out: Path = OPT, overwrite: bool = OPT):
    """A copy of the cart thresholded where this site's own labelled cases put it (the threshold the site check
    chose for its target). The shipped cart is not changed; the threshold is in-sample: confirm it with a site
    check of further cases."""
    from edgebus.runtime import adopt_site_threshold

    if out is None:
        raise EdgebusError(f"pass {flag('out')}: the folder for the site's copy of the cart")
    site = adopt_site_threshold(cart, site_check, out, overwrite)
    on = site["chosen_on"]
    typer.echo(f"site threshold {site['threshold']:.4f} (shipped {site['shipped_threshold']:.4f}), chosen on {on['n']} "
               f"cases ({on['malignant']} malignant) for sensitivity {site['target_sensitivity']:.2f}, in-sample: "
               f"confirm on further cases. Cart: {out} (edgebus predict --bundle {out} FRAMES)")


def register(app: typer.Typer) -> None:
    app.command()(bench)
    app.command()(report)
    app.command("predict")(predict)
    app.command("bundle")(bundle)
    app.command("site-check")(site_check)
    app.command("site-threshold")(site_threshold)
