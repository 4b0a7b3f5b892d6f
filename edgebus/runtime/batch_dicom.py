"""The DICOM outputs of a folder run (edgebus.runtime.batch): a DICOM frame's SEG of its mask and SR of
its result, and the summary's DICOM part. Each is optional and best-effort: a frame that cannot have one
gets a note in the log, never an error, so the run goes on."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.runtime.dicom import loop_summary
from edgebus.runtime.pipeline import LesionPipeline


def write_dicom_files(pipeline: LesionPipeline, res: dict, out: Path, stem: str, dicom_seg: bool, dicom_sr: bool,
                      log) -> None:
    """A DICOM frame's seg/<stem>.seg.dcm and sr/<stem>.sr.dcm, as asked, named in its row; the SR
    references the SEG, so the SEG comes first."""
    if dicom_seg and res.get("source_file") and res.get("frame") == 1:
        res["dicom_seg"], note = _write_seg(pipeline, res, out / "seg" / f"{stem}.seg.dcm")
        if note:
            log(note)
    if dicom_sr and res.get("source_file"):
        res["dicom_sr"], note = _write_sr(pipeline, res, out / "sr" / f"{stem}.sr.dcm")
        if note:
            log(note)


def dicom_summary(rows: list[dict], dicom_seg: bool, dicom_sr: bool) -> dict:
    """The summary's DICOM parts: the SEG and SR files written, and per cine loop the frame with the largest
    lesion and the mean probability."""
    part, loops = {}, {}
    for r in rows:
        if (r.get("frames") or 1) > 1:
            loops.setdefault(r["source_file"], []).append(r)
    if dicom_seg:
        part["dicom_seg"] = [r["dicom_seg"] for r in rows if r.get("dicom_seg")]
    if dicom_sr:
        part["dicom_sr"] = [r["dicom_sr"] for r in rows if r.get("dicom_sr")]
    if loops:
        part["loops"] = {src: loop_summary(rs) for src, rs in loops.items()}
    return part


def _write_seg(pipeline: LesionPipeline, res: dict, path: Path) -> tuple[str | None, str | None]:
    """(the SEG file, or None and the one line saying why not) for a DICOM frame's mask."""
    from edgebus.runtime.dicom_seg import write_seg

    seg = pipeline.segmenter.describe()
    try:
        return str(write_seg(res["source_file"], {1: res["mask"]}, res.get("region"), path,
                             {"name": f"{seg.get('model') or 'segmenter'} {Path(seg['file']).name}",
                              "version": seg.get("sha256", "")[:16] or "unknown"})), None
    except EdgebusError as e:
        return None, f"note: no DICOM SEG: {e}"


def _write_sr(pipeline: LesionPipeline, res: dict, path: Path) -> tuple[str | None, str | None]:
    """(the SR file, or None and the one line saying why not) of a DICOM frame's result."""
    from edgebus.runtime.dicom_sr import write_sr

    try:
        return str(write_sr(res["source_file"], res, path, pipeline.describe(), res.get("dicom_seg"))), None
    except EdgebusError as e:
        return None, f"note: no DICOM SR: {e}"
