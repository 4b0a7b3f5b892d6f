"""Run directories: one folder per run with a manifest.json every stage reads and extends.

Writes are atomic (temp file + rename) so an interrupted stage never leaves a half-written
artifact next to finished ones, and a finished run is never overwritten silently.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgebus import __version__
from edgebus.errors import EdgebusError

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgebusError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise EdgebusError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); restore or delete it") from None


class Run:
    """A run directory and its manifest.

    Every stage loads the run, does its work, records artifacts and metrics, then `save()`s.
    """

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def create(cls, path: str | Path, task: str, overwrite: bool = False) -> "Run":
        path = Path(path)
        if (path / MANIFEST).exists() and not overwrite:
            raise EdgebusError(
                f"{path}: a run already exists there; pick another --out or pass --overwrite to replace it"
            )
        if path.exists() and any(path.iterdir()) and not (path / MANIFEST).exists():
            raise EdgebusError(f"{path}: folder is not empty and is not an edgebus run; pick another --out")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, {
            "edgebus_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "task": task,
            "stages": {},
            "artifacts": {},
            "metrics": {},
        })
        run.save()
        return run

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise EdgebusError(f"{path}: no {MANIFEST}; pass a run directory made by 'edgebus train'")
        return cls(path, read_json(path / MANIFEST))

    @property
    def task(self) -> str:
        return self.manifest["task"]

    def file(self, name: str) -> Path:
        return self.path / name

    def add_artifact(self, name: str, kind: str, **extra) -> dict:
        """Record a file already written in the run folder, with its size and sha256."""
        p = self.file(name)
        entry = {"kind": kind, "bytes": p.stat().st_size, "sha256": sha256_file(p), **extra}
        self.manifest["artifacts"][name] = entry
        return entry

    def verify_artifact(self, name: str) -> Path:
        """The path of a recorded artifact, refusing one that is missing or was changed."""
        p = self.file(name)
        entry = self.manifest["artifacts"].get(name)
        if entry is None or not p.exists():
            raise EdgebusError(f"{p}: missing from the run; re-run the stage that makes it")
        if sha256_file(p) != entry["sha256"]:
            raise EdgebusError(f"{p}: sha256 differs from manifest.json; the file was changed, re-run that stage")
        return p

    def stage(self, name: str, **info) -> None:
        info.setdefault("finished", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.manifest["stages"][name] = info

    def save(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)
