"""Files that survive a crash: atomic writes (temp file + rename), sha256, JSON, and the
append-only JSONL results file that makes grids and CV resumable (one fsync'ed line per finished
unit; a killed process loses at most the unit in progress)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgebus.core.errors import EdgebusError

_UMASK = os.umask(0)
os.umask(_UMASK)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


def json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgebusError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise EdgebusError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); restore or delete it") from None


def append_jsonl(path: str | Path, record: dict) -> bytes:
    """Append one JSON line and fsync it before returning (so a finished unit survives a kill)."""
    line = (json.dumps(record, default=json_default, separators=(",", ":")) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)  # one write of the whole line: O_APPEND keeps concurrent writers' lines apart
        os.fsync(fd)
    finally:
        os.close(fd)
    return line


def repair_jsonl(path: str | Path) -> int:
    """Cut a torn last line (a process killed inside a write) so the next append starts clean.
    Returns the number of bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(data) - keep


def read_jsonl(path: str | Path) -> list[dict]:
    """The complete lines of a results file (a torn last line, without its newline, is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]  # torn tail: the unit was not finished
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise EdgebusError(f"{path}: line {i} is not valid JSON ({e.msg}); delete that line and re-run to redo it") from None
    return out
