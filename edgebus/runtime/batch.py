"""Folder runs of the cart pipeline: every frame predicted, one log line each, results streamed to
predictions.jsonl (resumable) and then predictions.csv, summary.json, overlays/ and masks/."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import (_open_for_write, atomic_write, json_default, make_dir, named, one_writer, read_json, read_jsonl,
                             refuse_duplicates, repair_jsonl, write_json)
from edgebus.runtime.batch_dicom import dicom_summary, write_dicom_files
from edgebus.runtime.dicom import is_dicom
from edgebus.runtime.frames import printable
from edgebus.runtime.overlay import render_overlay, save_png, size_text
from edgebus.runtime.pipeline import LATENCY_KEYS, LesionPipeline
from edgebus.runtime.viewer import write_viewer

CSV_FIELDS = ("file", "frame", "sop_instance_uid", "width", "height", "lesion_present", "lesion_score", "prob_malignant", "prob_raw", "prob_classifier", "label", "threshold", "findings", "mask_threshold", "mask_area_px",
              "pixel_size_mm", "mask_area_mm2", "lesion_width_mm", "lesion_height_mm", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "regions",
              *(f"latency_{k}_ms" for k in LATENCY_KEYS), "overlay", "mask_file", "dicom_seg", "dicom_sr", "warnings", "error")


def _row(res: dict, overlay: str | None, mask_file: str | None) -> dict:
    """A JSON-able result row (the mask array is written as a PNG, not inlined)."""
    row = {k: v for k, v in res.items() if k != "mask"}
    row["overlay"], row["mask_file"] = overlay, mask_file
    return row


def _csv_row(row: dict) -> dict:
    out = {k: row.get(k) for k in CSV_FIELDS}
    for i, k in enumerate(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
        out[k] = row["bbox"][i] if row.get("bbox") else None
    for k in LATENCY_KEYS:
        out[f"latency_{k}_ms"] = (row.get("latency_ms") or {}).get(k)
    out["warnings"] = "; ".join(row.get("warnings") or [])
    lesion = row.get("lesion") or {}  # the presence rule's decision, where the cart has one
    out["lesion_present"], out["lesion_score"] = lesion.get("present"), lesion.get("score")
    return {k: "" if v is None else v for k, v in out.items()}


FSYNC_EVERY_FRAMES = 32
"""predictions.jsonl is fsynced after this many new rows at most (and see FSYNC_EVERY_S): a power cut or
an OS crash loses at most this many finished frames, which the next run (same --out) predicts again.
An fsync per frame, as before, held every frame up by a disk flush (0.3 ms on this VM's disk, tens of
ms on a cart's eMMC or SD card); a killed process never needed it (see ResultsFile)."""
FSYNC_EVERY_S = 1.0
"""...or at the first row that finishes this many seconds after the last fsync, whichever comes first:
on a slow cart, a power cut loses at most about a second of frames, not 32 frames' worth of minutes."""


class ResultsFile:
    """predictions.jsonl, held open for one run. Each row is one O_APPEND write as its frame finishes,
    so the kernel has it: a killed process (SIGKILL, a crash, Ctrl-C) loses no finished frame. fsync
    (what a power cut or an OS crash needs) runs every FSYNC_EVERY_FRAMES rows or FSYNC_EVERY_S
    seconds, and on close (the run's end, or an error): such a cut loses at most the rows written since
    the last fsync, and a torn last line is cut by the next run (core.io.repair_jsonl). A link is
    refused, as core.io.append_jsonl refuses one."""

    def __init__(self, path: Path, every: int = FSYNC_EVERY_FRAMES, every_s: float = FSYNC_EVERY_S, clock=time.monotonic):
        self.path, self.every, self.every_s, self.clock = Path(path), int(every), float(every_s), clock
        self.fd = self._do(lambda: _open_for_write(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
        self.unsynced, self.synced_at = 0, clock()

    def _do(self, op):
        try:
            with named(self.path):
                return op()
        except OSError as e:
            raise EdgebusError(f"{self.path}: cannot write results ({e.strerror or e}); check the output folder") from None

    def append(self, row: dict) -> None:
        line = (json.dumps(row, default=json_default, separators=(",", ":")) + "\n").encode()
        self._do(lambda: os.write(self.fd, line))  # one write of the whole line
        self.unsynced += 1
        if self.unsynced >= self.every or self.clock() - self.synced_at >= self.every_s:
            self.sync()

    def sync(self) -> None:
        if self.unsynced:
            self._do(lambda: os.fsync(self.fd))
        self.unsynced, self.synced_at = 0, self.clock()

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            self.close()
        except EdgebusError:
            if kind is None:  # an error already on its way is the one to show
                raise

    def close(self) -> None:
        """Fsync what is left and close (once)."""
        if self.fd is None:
            return
        try:
            self.sync()
        finally:
            os.close(self.fd)
            self.fd = None


def _out_names(files: list[Path]) -> list[str]:
    stems = [f.stem for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f.name.replace(".", "_") if f.stem in dup else f.stem for f in files]


RUN_FILE = "predict.json"  # what made the rows in predictions.jsonl: a resume must match it


def model_identity(pipeline: LesionPipeline) -> dict:
    """What decides a frame's call: each model by content (file names, threads and runtime aside), as JSON
    reads it back (so a recorded identity compares equal)."""
    return json.loads(json.dumps({role: {k: v for k, v in d.items() if k not in ("file", "threads", "xnnpack", "interpreter")}
                                  for role, d in pipeline.describe().items()}, default=str))


def _identity(pipeline: LesionPipeline, pixel_size_mm, overlays: bool, masks: bool, dicom_seg: bool,
              dicom_sr: bool = False) -> dict:
    """What decides a frame's row: the models (by content) and the output settings."""
    return {"schema": "edgebus.predict-run/1", "models": model_identity(pipeline), "pixel_size_mm": pixel_size_mm,
            "overlays": overlays, "masks": masks, **({"dicom_seg": True} if dicom_seg else {}),
            **({"dicom_sr": True} if dicom_sr else {})}


def _clear(out: Path) -> None:
    """Remove what an earlier predict wrote into `out` (its own files only)."""
    for name in (RUN_FILE, "predictions.jsonl", "predictions.csv", "summary.json", "index.html"):
        (out / name).unlink(missing_ok=True)
    for sub, pattern in (("overlays", "*.png"), ("masks", "*.png"), ("seg", "*.seg.dcm"), ("sr", "*.sr.dcm")):
        if (out / sub).is_dir() and not (out / sub).is_symlink():
            for p in (out / sub).glob(pattern):
                p.unlink()


def read_rows(jsonl: Path) -> list[dict]:
    """predictions.jsonl's rows, each naming its frame, a frame predicted once (a failed frame may be
    tried again: its error row is followed by the retry's): every reader counts a frame once."""
    rows = read_jsonl(jsonl)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("file"), str):
            raise EdgebusError(f"{jsonl}: row {i} names no frame (file); not a predictions file edgebus wrote, "
                               f"delete it or pick another {flag('out')}")
    refuse_duplicates(jsonl, [r for r in rows if r.get("error") is None], "file")
    return rows


def _open_out(out: Path, ident: dict, overlays: bool, masks: bool, overwrite: bool, dicom_seg: bool = False,
              dicom_sr: bool = False) -> dict:
    """Create `out` or reopen it to resume: {file: row} of the frames already done. Refuses a
    folder whose rows came from other models or settings (they would mix), unless `overwrite`."""
    out = make_dir(out, flag("out"))
    if overwrite:
        _clear(out)
    for sub, wanted in (("overlays", overlays), ("masks", masks), ("seg", dicom_seg), ("sr", dicom_sr)):
        if wanted:
            make_dir(out / sub, flag("out"))
    run_file = out / RUN_FILE
    jsonl = out / "predictions.jsonl"
    if run_file.exists() or jsonl.exists():
        old = read_json(run_file) if run_file.exists() else None
        if old != json.loads(json.dumps(ident, default=str)):
            raise EdgebusError(f"{out}: holds predictions made with other models or settings; pick another "
                               f"{flag('out')} or pass {flag('overwrite')} to replace them")
        repair_jsonl(jsonl)
        return {r["file"]: r for r in read_rows(jsonl) if r.get("error") is None}
    write_json(run_file, ident)
    return {}


def _positive(x) -> bool:
    try:
        return bool(np.isfinite(x) and x > 0)
    except TypeError:  # not a number at all
        return False


def _predicted(pipeline: LesionPipeline, files, done: dict, pixel_sizes: dict, pixel_size_mm, log):
    """(name, output stem, result or None when done before, gray) for every frame of `files`: a
    PNG/JPEG is one frame, a DICOM file one per frame (decoded one at a time). A pixel size that is
    not a positive number leaves that frame's mm^2 out, with a warning, instead of ending the run."""
    for f, stem in zip(files, _out_names(files)):
        px = pixel_sizes.get(f.name, pixel_size_mm)
        if px is not None and not _positive(px):
            log(f"warning: {f.name}: pixel size {px!r} mm is not a positive number; its lesion area in mm^2 is left out")
            px = None
        if is_dicom(f):
            for res, gray in pipeline.iter_dicom(f, px, skip=done.__contains__):  # done frames: decoded, not run
                name = res["file"]
                many = (res.get("frames") or 1) > 1
                yield name, f"{stem}_f{res['frame']:04d}" if many else stem, (None if res.get("skipped") else res), gray
        elif str(f) in done:
            yield str(f), stem, None, None
        else:
            res, gray = pipeline.predict_with_frame(f, px, name=str(f))
            yield str(f), stem, res, gray


WRITE_AHEAD = 4  # frames whose overlay and mask PNGs may still be in writing while later frames run


def _write_files(out: Path, stem: str, res: dict, gray, overlays: bool, masks: bool) -> tuple[str | None, str | None]:
    """(overlay path, mask path) of one frame, written (in the writer thread)."""
    ov = mk = None
    if overlays:
        ov = str(save_png(out / "overlays" / f"{stem}.png", render_overlay(gray, res)))
    if masks and res["mask"] is not None:
        mk = str(save_png(out / "masks" / f"{stem}.png", Image.fromarray(res["mask"] * np.uint8(255))))
    return ov, mk


def predict_files(pipeline: LesionPipeline, files: list[Path], out: str | Path, pixel_sizes: dict | None = None,
                  pixel_size_mm: float | None = None, overlays: bool = True, masks: bool = True, log=print,
                  overwrite: bool = False, dicom_seg: bool = False, dicom_sr: bool = False) -> dict:
    """Predict every file, one log line each, into `out`: predictions.jsonl gets one line per frame
    once its overlays/<name>.png and masks/<name>.png (0/255) are written, by a second thread while
    later frames run (a killed run loses at most the WRITE_AHEAD frames in writing; a power cut at most
    FSYNC_EVERY_FRAMES or FSYNC_EVERY_S more, see ResultsFile), then predictions.csv and
    summary.json at the end. Run again with
    the same --out, it skips the frames already done (a frame that failed is tried again). A bad
    frame gets a row with `error` and the run goes on. overwrite: first remove what an earlier
    predict wrote there. dicom_seg: also write each single-frame DICOM's mask as a DICOM
    Segmentation referencing it, seg/<name>.seg.dcm (edgebus.runtime.dicom_seg). dicom_sr: also write
    each DICOM frame's structured report, sr/<name>.sr.dcm (edgebus.runtime.dicom_sr). Returns the summary.
    A file name that is not valid UTF-8 is kept exactly in the JSON files and shown escaped in the
    log and the CSV (edgebus.runtime.frames.printable)."""
    out = Path(out)

    def log(line: str, _say=log) -> None:  # a log line is always valid UTF-8
        _say(printable(line))

    if dicom_seg and pipeline.segmenter is None:
        raise EdgebusError(f"{flag('dicom_seg')} writes the segmenter's masks; give a segmenter too "
                           f"({flag('segmenter')}, or a bundle with both)")
    make_dir(out, flag("out"))
    with one_writer(out):  # a second predict here would write every frame twice
        done = _open_out(out, _identity(pipeline, pixel_size_mm, overlays, masks, dicom_seg, dicom_sr), overlays, masks,
                         overwrite, dicom_seg, dicom_sr)
        jsonl = out / "predictions.jsonl"
        t_start = time.perf_counter()
        frames = _predicted(pipeline, files, done, pixel_sizes or {}, pixel_size_mm, log)
        rows, resumed, infer_s, pipe_s = _run_frames(pipeline, frames, done, out, overlays=overlays, masks=masks,
                                                     dicom_seg=dicom_seg, dicom_sr=dicom_sr, log=log)
        wall = time.perf_counter() - t_start
        if resumed:
            log(f"{out}: {resumed} frames were already done there (kept); {len(rows) - resumed} predicted now")
        ok = sum(r["error"] is None for r in rows)
        # the rows in frame order, once each (a frame that failed before and now succeeded has two lines)
        final = {r["file"]: r for r in read_rows(jsonl)}
        rows = [final.get(r["file"], r) for r in rows]
        csv_path = _write_csv(out, rows)
        summary = {
            "schema": "edgebus.predict/2",
            "frames": len(rows), "ok": ok, "failed": len(rows) - ok, "resumed": resumed,
            "failed_files": [r["file"] for r in rows if r["error"] is not None],
            **_speed(ok - resumed, wall, infer_s, pipe_s),
            "wall_s": round(wall, 3),
            "models": pipeline.describe(),
            "predictions": {"jsonl": str(jsonl), "csv": str(csv_path)},
            "overlays": str(out / "overlays") if overlays and ok else None,
        }
        summary.update(dicom_summary(rows, dicom_seg, dicom_sr))
        summary["viewer"] = str(write_viewer(out, rows, summary))  # index.html: every frame on one page
        summary["summary_file"] = str(write_json(out / "summary.json", summary))
        return summary


def _run_frames(pipeline: LesionPipeline, frames, done: dict, out: Path, *, overlays: bool, masks: bool,
                dicom_seg: bool, dicom_sr: bool, log) -> tuple[list[dict], int, float, float]:
    """Each frame's row into predictions.jsonl, its overlay and mask PNGs written by a second thread while
    later frames run. Returns (rows in frame order, frames done before, inference s, pipeline s)."""
    rows, resumed = [], 0
    infer_s = pipe_s = 0.0
    pending = deque()  # (result, its files being written) in frame order

    def settle(every: bool = False) -> None:
        """Rows of the frames whose files are written, in frame order: a row is only ever written
        after its overlay and mask, so a kill never leaves a row pointing at a missing file."""
        while pending and (every or pending[0][1].done() or len(pending) > WRITE_AHEAD):
            res, files_done = pending.popleft()
            row = _row(res, *files_done.result())  # a writer's error (a full disk) is raised here
            results.append(row)
            rows.append(row)

    # the results are fsynced at the end, or on an error
    with ResultsFile(out / "predictions.jsonl") as results, ThreadPoolExecutor(1) as writer:
        for f, stem, res, gray in frames:
            if res is None:  # done in an earlier run
                settle(every=True)
                rows.append(done[f])
                resumed += 1
                continue
            if res["error"] is None:
                lat = res["latency_ms"]
                infer_s += lat["invoke"] / 1000
                pipe_s += lat["total"] / 1000
                write_dicom_files(pipeline, res, out, stem, dicom_seg, dicom_sr, log)
                log(f"{Path(f).name}: {_describe_result(res)}")
                # PNG encoding releases the GIL: the files are written while the next frame runs
                pending.append((res, writer.submit(_write_files, out, stem, res, gray, overlays, masks)))
            else:
                log(f"{Path(f).name}: error: {res['error']}")
                pending.append((res, writer.submit(lambda: (None, None))))
            settle()
        settle(every=True)
    return rows, resumed, infer_s, pipe_s


def _speed(new_ok: int, wall: float, infer_s: float, pipe_s: float) -> dict:
    """The summary's frames per second over the frames predicted in this call, each naming what it counts;
    wall first: what the command achieved (the others leave out overlays, masks and results files)."""
    return {
        "fps": {
            "wall": round(new_ok / wall, 2) if new_ok and wall > 0 else None,
            "inference": round(new_ok / infer_s, 2) if infer_s > 0 else None,
            "pipeline": round(new_ok / pipe_s, 2) if pipe_s > 0 else None,
        },
        "fps_includes": {
            "wall": "everything: the pipeline plus overlay and mask PNGs and the results lines, wall clock",
            "inference": "the interpreter calls only (every network of the cart)",
            "pipeline": "decode, preprocessing, inference and post-processing (mask, area, box, findings)",
        },
    }


def _write_csv(out: Path, rows: list[dict]) -> Path:
    """predictions.csv of the rows, written whole (valid UTF-8 whatever the file names are)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(_csv_row(r) for r in rows)
    try:
        return atomic_write(out / "predictions.csv", printable(buf.getvalue()))
    except OSError as e:
        raise EdgebusError(f"{out}: cannot write results ({e.strerror or e}); check the output folder") from None


def fps_line(fps: dict) -> str:
    """The frames/s of a predict summary for the console, wall clock (what the command achieved) first."""
    if not fps.get("wall"):
        return "no frame predicted now"
    return (f"frames/s: {fps['wall']} wall clock (with overlays and files), {fps['inference']} inference only, "
            f"{fps['pipeline']} pipeline (decode to mask)")


def _describe_result(res: dict) -> str:
    parts = []
    lesion = res.get("lesion")
    if lesion and not lesion["present"]:
        return (f"no lesion found (presence {lesion['score']:.3f} < {lesion['threshold']:.3f}; malignancy output "
                f"{res['prob_raw']:.3f} kept for audit)" if res.get("prob_raw") is not None else "no lesion found")
    if res["prob_malignant"] is not None:
        if res["prob_raw"] == res["prob_malignant"]:
            parts.append(f"{res['label']} {res['prob_malignant']:.3f} (threshold {res['threshold']:.2f})")
        else:
            parts.append(f"{res['label']} {res['prob_malignant']:.3f} calibrated (model output {res['prob_raw']:.3f}, "
                         f"threshold {res['threshold']:.2f})")
    if res.get("findings"):
        parts.append(res["findings"])
    if res["mask_area_px"] is not None:
        if res["mask_area_px"] == 0:
            parts.append("no lesion found")
        else:
            area = f"{res['mask_area_px']} px"
            if res["mask_area_mm2"] is not None:
                area = f"{res['mask_area_mm2']:.1f} mm2{size_text(res)}"
            parts.append(f"lesion {area}, bbox {res['bbox']}")
            if (res.get("regions") or 0) > 1:
                parts.append(f"{res['regions']} candidate regions (the largest measured)")
    parts.append(f"{res['latency_ms']['total']:.1f} ms")
    return ", ".join(parts)
