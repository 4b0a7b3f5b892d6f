"""Files that survive a crash: atomic writes (temp file + rename), sha256, JSON, and the
append-only JSONL results file that makes grids and CV resumable (one fsync'ed line per finished
unit; a killed process loses at most the unit in progress)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgebus.core.errors import EdgebusError, flag

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
    with named(path):
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


@contextlib.contextmanager
def named(path: str | Path):
    """An OSError inside (a full disk: ENOSPC from a write names no file) names `path`, so the
    one-line error says which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def make_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create (or reuse) an output folder, refusing one that is a symlink or a file: a link planted
    in a run or output folder must not send writes outside it."""
    path = Path(path)
    if path.is_symlink():
        raise EdgebusError(f"{path}: is a symbolic link; edgebus does not write through links, remove it or pick another {what}")
    if path.exists() and not path.is_dir():
        raise EdgebusError(f"{path}: exists and is not a folder; pick another {what}")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def staging(out: str | Path):
    """Yield a fresh temp folder beside `out` (mkdtemp: no planted name is followed); on success it
    replaces `out` (an older folder there is renamed aside first and then removed), on failure it is
    removed. A kill leaves `out` whole, or absent, never half made."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        tmp.chmod(0o777 & ~_UMASK)
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "x")
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(folder: str | Path, fix: str) -> None:
    """Before the work: one line if `folder` (or, not made yet, the folder it would go in) cannot be
    written, instead of a failure after minutes of work."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EdgebusError(f"{probe}: cannot write there (read-only or no permission); {fix}")


def atomic_save(path: str | Path, save) -> Path:
    """Let `save(tmp_path)` write a file (a Keras model, say) under a temp folder made fresh in the
    target folder (mkdtemp: a planted name cannot be followed), then rename it to `path`. A final
    name that is a symlink is replaced, not followed."""
    path = Path(path)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp = tmp_dir / path.name
        with named(path):
            save(tmp)
        if tmp.is_symlink() or not tmp.is_file():
            raise EdgebusError(f"{path}: the writer made no regular file")
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        for p in sorted(tmp_dir.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
        tmp_dir.rmdir()
    return path


@contextlib.contextmanager
def locked(folder: str | Path):
    """An exclusive advisory lock on `folder` (fcntl on its .edgebus.lock file) for a
    read-modify-write of a shared file in it: two stages at once wait for each other instead of
    one silently dropping the other's entries. Released when the process dies."""
    import fcntl

    lock = Path(folder) / ".edgebus.lock"
    fd = _open_for_write(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def merge3(base, mine, theirs):
    """Three-way merge of JSON values: what this process changed since it read `base` (mine) is
    laid over what is on disk now (theirs); dicts merge key by key, anything else that both sides
    changed takes mine."""
    if mine == base:
        return theirs
    if theirs == base or not (isinstance(mine, dict) and isinstance(theirs, dict)):
        return mine
    if not isinstance(base, dict):  # both sides made the dict (an empty or absent entry before)
        base = {}
    out = {}
    for k in list(theirs) + [k for k in mine if k not in theirs]:
        v = merge3(base.get(k, _MISSING), mine.get(k, _MISSING), theirs.get(k, _MISSING))
        if v is not _MISSING:
            out[k] = v
    return out


_MISSING = object()


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


def check_report(report: str | Path, inputs: dict, overwrite: bool = False) -> dict:
    """Refuse, before anything is written, to replace a report (a JSON file) made from other inputs: a re-run
    must not silently swap results made from other models, data or settings. One made from the same
    inputs is rewritten (the same numbers). Returns `inputs` as the report stores them."""
    inputs = json.loads(json.dumps(inputs, default=json_default))
    report = Path(report)
    if report.is_file() and not overwrite:
        try:
            old = json.loads(report.read_text()).get("inputs")
        except (OSError, ValueError, AttributeError):
            old = None
        if old != inputs:
            why = "records no inputs (an older edgebus made it)" if old is None else \
                "made from other inputs (models, data or settings) than this run"
            raise EdgebusError(f"{report}: {why}; pick another {flag('out')} or pass {flag('overwrite')} "
                               "to replace it")
    return inputs


def _open_for_write(path: Path, flags: int) -> int:
    """os.open with O_NOFOLLOW: a results file, lock or marker that is a planted link is refused with
    one line naming it, never written (or truncated) through."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise EdgebusError(f"{path}: is a symbolic link; edgebus does not write through links, remove it") from None
        if e.errno in (errno.EISDIR, errno.ENOTDIR):
            raise EdgebusError(f"{path}: is not a regular file; remove it or pick another {flag('out')}") from None
        raise


def append_jsonl(path: str | Path, record: dict) -> bytes:
    """Append one JSON line and fsync it before returning (so a finished unit survives a kill)."""
    line = (json.dumps(record, default=json_default, separators=(",", ":")) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_for_write(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        with named(path):
            os.write(fd, line)  # one write of the whole line: O_APPEND keeps concurrent writers' lines apart
            os.fsync(fd)
    finally:
        os.close(fd)
    return line


def repair_jsonl(path: str | Path) -> int:
    """Cut a torn last line (a process killed inside a write) so the next append starts clean.
    Returns the number of bytes removed. A link is refused before anything is read."""
    path = Path(path)
    if path.is_symlink():
        _open_for_write(path, os.O_RDONLY)  # raises the one line
    if not path.exists():
        return 0
    fd = _open_for_write(path, os.O_RDWR)
    try:
        with os.fdopen(fd, "r+b", closefd=False) as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return 0
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            f.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    return len(data) - keep


def read_jsonl(path: str | Path, key: str | tuple | None = None) -> list[dict]:
    """The complete lines of a results file (a torn last line, without its newline, is ignored).
    Every line must be a JSON object; with `key` (a field or a tuple of fields), two rows with the
    same key are refused: a file two processes wrote at once would count its units twice."""
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
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise EdgebusError(f"{path}: line {i} is not valid JSON ({why}); delete that line and re-run to redo it") from None
        if not isinstance(row, dict):
            raise EdgebusError(f"{path}: line {i} is not a JSON object; delete that line and re-run to redo it")
        out.append(row)
    if key is not None:
        refuse_duplicates(path, out, key)
    return out


def refuse_duplicates(path: str | Path, rows: list[dict], key: str | tuple) -> None:
    """One line naming `path` when two rows share a key (frame, fold, cell): results written twice
    (two processes on one folder) must not be counted twice by a clinical number."""
    fields = (key,) if isinstance(key, str) else tuple(key)
    seen, dups = set(), []
    for i, r in enumerate(rows, start=1):
        if any(f not in r for f in fields):
            raise EdgebusError(f"{path}: row {i} has no {'/'.join(fields)}; it is not an edgebus results file, "
                               f"restore it or re-run into a new {flag('out')}")
        k = json.dumps([r[f] for f in fields], default=str)
        if k in seen:
            dups.append(k)
        seen.add(k)
    if dups:
        raise EdgebusError(f"{path}: {len(dups)} row(s) repeat a {'/'.join(fields)} (first: {dups[0]}); two processes "
                           f"wrote there at once? re-run into a new {flag('out')}")


_WRITERS: dict[str, int] = {}
WRITER_FILE = ".edgebus.writer"


@contextlib.contextmanager
def one_writer(folder: str | Path):
    """Hold `folder` as this process's output folder: a second edgebus that wants to write results
    there gets one line naming the first one's pid instead of appending duplicate rows (flock on
    .edgebus.writer, non-blocking; released when this process ends or dies). Re-entrant in one process."""
    import fcntl

    folder = Path(folder)
    key = str(folder.resolve())
    if key in _WRITERS:
        yield
        return
    marker = folder / WRITER_FILE
    fd = _open_for_write(marker, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise EdgebusError(f"{folder}: another edgebus is writing there (pid {pid}); wait for it to end "
                           f"or pick another {flag('out')}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _WRITERS[key] = fd
    try:
        yield
    finally:
        del _WRITERS[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def checked_file(path: Path, kind: str, command: str, args: str = ""):
    """Reading and checking a model file from elsewhere (a bundle's fusion.json, presence.json) inside this
    block: a missing file, or any field missing or malformed, becomes one EdgebusError line naming the file
    and the command that makes it again."""
    try:
        yield
    except FileNotFoundError:
        raise EdgebusError(f"{path}: not found; make it with '{command}{' ' + args if args else ''}'") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise EdgebusError(f"{path}: not a {kind} file of this edgebus ({type(e).__name__}: {e}); "
                           f"re-run '{command}'") from None
