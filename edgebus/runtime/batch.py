"""Folder runs of the cart pipeline: every frame predicted, one log line each, results written as
predictions.jsonl / .csv, summary.json, overlays/ and masks/."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, write_json
from edgebus.runtime.overlay import render_overlay, save_png
from edgebus.runtime.pipeline import LATENCY_KEYS, LesionPipeline

CSV_FIELDS = ("file", "width", "height", "prob_malignant", "prob_raw", "label", "threshold", "findings", "mask_threshold", "mask_area_px",
              "pixel_size_mm", "mask_area_mm2", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
              *(f"latency_{k}_ms" for k in LATENCY_KEYS), "overlay", "mask_file", "error")


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
    return {k: "" if v is None else v for k, v in out.items()}


def _out_names(files: list[Path]) -> list[str]:
    stems = [f.stem for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f.name.replace(".", "_") if f.stem in dup else f.stem for f in files]


def predict_files(pipeline: LesionPipeline, files: list[Path], out: str | Path, pixel_sizes: dict | None = None,
                  pixel_size_mm: float | None = None, overlays: bool = True, masks: bool = True, log=print) -> dict:
    """Predict every file, one log line each; write predictions.jsonl, predictions.csv, summary.json,
    overlays/<name>.png and masks/<name>.png (0/255) into `out`. A bad frame gets a row with `error`
    and the run goes on. Returns the summary (counts, frames per second, models, output paths)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebusError(f"{out}: exists and is not a folder; pick another --out")
    rows, infer_s, total_s = [], 0.0, 0.0
    pixel_sizes = pixel_sizes or {}
    t_start = time.perf_counter()
    for f, stem in zip(files, _out_names(files)):
        px = pixel_sizes.get(f.name, pixel_size_mm)
        res, gray = pipeline.predict_with_frame(f, px, name=str(f))
        ov = mk = None
        if res["error"] is None:
            lat = res["latency_ms"]
            infer_s += ((lat["classify"] or 0) + (lat["segment"] or 0)) / 1000
            total_s += lat["total"] / 1000
            if overlays:
                ov = str(save_png(out / "overlays" / f"{stem}.png", render_overlay(gray, res)))
            if masks and res["mask"] is not None:
                mk = str(save_png(out / "masks" / f"{stem}.png", Image.fromarray(res["mask"] * np.uint8(255))))
            log(f"{f.name}: {_describe_result(res)}")
        else:
            log(f"{f.name}: error: {res['error']}")
        rows.append(_row(res, ov, mk))
    wall = time.perf_counter() - t_start
    ok = sum(r["error"] is None for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(_csv_row(r) for r in rows)
    try:
        jsonl = atomic_write(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        csv_path = atomic_write(out / "predictions.csv", buf.getvalue())
    except OSError as e:
        raise EdgebusError(f"{out}: cannot write results ({e.strerror or e}); check the output folder") from None
    summary = {
        "schema": "edgebus.predict/1",
        "frames": len(rows), "ok": ok, "failed": len(rows) - ok,
        "failed_files": [r["file"] for r in rows if r["error"] is not None],
        "fps_inference": round(ok / infer_s, 2) if infer_s > 0 else None,  # classify + segment only
        "fps_end_to_end": round(ok / total_s, 2) if total_s > 0 else None,  # + decode and post-processing
        "wall_s": round(wall, 3),
        "models": pipeline.describe(),
        "predictions": {"jsonl": str(jsonl), "csv": str(csv_path)},
        "overlays": str(out / "overlays") if overlays and ok else None,
    }
    summary["summary_file"] = str(write_json(out / "summary.json", summary))
    return summary


def _describe_result(res: dict) -> str:
    parts = []
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
            area = f"{res['mask_area_mm2']:.1f} mm2" if res["mask_area_mm2"] is not None else f"{res['mask_area_px']} px"
            parts.append(f"lesion {area}, bbox {res['bbox']}")
    parts.append(f"{res['latency_ms']['total']:.1f} ms")
    return ", ".join(parts)
