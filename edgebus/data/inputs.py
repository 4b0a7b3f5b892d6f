"""Which frames a user's inputs name: frame files, folders of frames and quoted patterns ('scans/*.png').
Readers-free (no sheet, no pandas), so the cart's runtime resolves them the same way (`edgebus.load(...).predict`);
BrEaST- and BUSI-layout folders: edgebus.data.layouts."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from edgebus.core.errors import EdgebusError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")  # DICOM: edgebus.runtime.dicom
_MASK_NAME = re.compile(r"_(tumor|other\d*)$", re.IGNORECASE)


def list_frames(folder: str | Path) -> tuple[list[Path], int]:
    """(sorted PNG/JPEG frames in folder, number of BrEaST mask files skipped: *_tumor, *_otherN)."""
    folder = Path(folder)
    frames, skipped = [], 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in FRAME_SUFFIXES:
            continue
        if _MASK_NAME.search(p.stem):
            skipped += 1
            continue
        frames.append(p)
    return frames, skipped


def resolve_inputs(path) -> tuple[list[Path], int]:
    """(frames, mask files skipped) for an image, a folder of frames, a glob ('scans/*.png', quoted so
    the shell leaves it), or a list of those; each file once, in the order given."""
    if isinstance(path, (list, tuple)):
        files, skipped = [], 0
        for p in path:
            f, k = resolve_inputs(p)
            files, skipped = files + f, skipped + k
        return list(dict.fromkeys(files)), skipped
    path = Path(path)
    if not path.exists() and any(c in str(path) for c in "*?["):
        hits = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in hits if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and not _MASK_NAME.search(p.stem)]
        if not files:
            raise EdgebusError(f"{path}: no PNG/JPEG/DICOM frames match this pattern")
        return files, sum(bool(_MASK_NAME.search(p.stem)) for p in hits if p.suffix.lower() in FRAME_SUFFIXES)
    if not path.exists():
        raise EdgebusError(f"{path}: not found; pass an image, a folder of frames or a pattern such as 'scans/*.png'")
    if not path.is_dir():
        return [path], 0
    files, skipped = list_frames(path)
    if not files:
        raise EdgebusError(f"{path}: no PNG/JPEG/DICOM frames in the folder")
    return files, skipped

