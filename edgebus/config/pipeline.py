"""`edgebus pipeline FILE --data D --out R`: a session of edgebus commands from one file, resumable.

A pipeline file (TOML) lists steps, each one command with its positional arguments and its options (names
as in settings files; `{data}`, `{runs}` and `{weights}` in a string are replaced). Each step runs in its own process
(`python -m edgebus ...`), in order. A finished step is recorded in `R/pipeline.jsonl` with its identity:
the step, the sha256 of any settings file it reads, and the identities of the steps before it. Run the
same command again after a stop: a step whose identity is recorded and whose output exists is skipped;
any other step runs, and the commands themselves resume a half-done CV or grid and refuse to replace a
finished run made otherwise, so nothing finished is lost or silently replaced."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from edgebus.config.options import OPTIONS
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import append_jsonl, make_dir, one_writer, read_jsonl, sha256_file

STEP_KEYS = {"name", "command", "args", "options", "output"}


def read_pipeline(path: str | Path) -> dict:
    """A pipeline file, checked: every step has a name, a command and known options."""
    import tomllib

    p = Path(path)
    try:
        d = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise EdgebusError(f"{p}: pipeline file not found; see training/cart.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgebusError(f"{p}: not valid TOML ({e}); fix the file") from None
    steps = d.get("step")
    if not isinstance(steps, list) or not steps:
        raise EdgebusError(f"{p}: no [[step]] tables; each step names a command, e.g. command = \"cv classify\"")
    names = set()
    for i, s in enumerate(steps, 1):
        unknown = sorted(set(s) - STEP_KEYS)
        if unknown or "name" not in s or "command" not in s:
            raise EdgebusError(f"{p}: step {i}: needs name and command (keys: {', '.join(sorted(STEP_KEYS))})"
                               + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        if s["name"] in names:
            raise EdgebusError(f"{p}: step name {s['name']!r} used twice; give each step its own name")
        names.add(s["name"])
        bad = sorted(k for k in s.get("options", {}) if k not in OPTIONS)
        if bad:
            raise EdgebusError(f"{p}: step {s['name']!r}: unknown option(s) {', '.join(bad)}")
    return d


def _fill(v, names: dict):
    """`{data}`, `{runs}`, `{weights}` in a step's strings replaced by the pipeline command's values."""
    if isinstance(v, str):
        for k, x in names.items():
            v = v.replace("{" + k + "}", x)
        return v
    if isinstance(v, list):
        return [_fill(x, names) for x in v]
    return v


def command_line(step: dict, names: dict) -> list[str]:
    """The step as `edgebus` arguments: command words, positional arguments, then its options."""
    argv = step["command"].split() + [str(_fill(a, names)) for a in step.get("args", [])]
    for k, v in step.get("options", {}).items():
        v, kind = _fill(v, names), OPTIONS[k].kind
        if kind == "flag":
            argv += [flag(k)] if v else []
        elif kind == "bool":
            argv.append(flag(k) if v else f"--no-{flag(k)[2:]}")
        elif kind == "paths":
            for x in v if isinstance(v, list) else [v]:
                argv += [flag(k), str(x)]
        elif kind == "json":
            argv += [flag(k), json.dumps(v)]
        else:
            argv += [flag(k), ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return argv


def _identity(argv: list[str], before: str) -> str:
    """The step's command line, the content of every settings file it names, and the steps before it."""
    files = [sha256_file(Path(a)) for a in argv if a.endswith((".toml", ".yaml", ".yml")) and Path(a).is_file()]
    return hashlib.sha256(json.dumps([argv, files, before]).encode()).hexdigest()


def run_pipeline(path: str | Path, data: str | Path, runs: str | Path, weights: str = "none", log=print,
                 dry_run: bool = False) -> dict:
    """Run the pipeline's steps in order, skipping those already done with the same identity."""
    d = read_pipeline(path)
    runs = Path(runs)
    names = {"data": str(data), "runs": str(runs), "weights": str(weights)}
    if dry_run:
        return _run_steps(d["step"], names, runs, log, dry_run)
    make_dir(runs, flag("out"))
    with one_writer(runs):  # a second pipeline on this folder would run every step twice
        return _run_steps(d["step"], names, runs, log, dry_run)


def _run_steps(steps: list, names: dict, runs: Path, log, dry_run: bool) -> dict:
    state = runs / "pipeline.jsonl"
    done = {r["identity"]: r for r in read_jsonl(state)} if state.is_file() else {}
    before, ran, skipped, would = "", [], [], []
    for step in steps:
        argv = command_line(step, names)
        ident = _identity(argv, before)
        output = _fill(step.get("output", step.get("options", {}).get("out", "")), names)
        if ident in done and (not output or Path(output).exists()):
            log(f"[{step['name']}] done before, skipped: edgebus {' '.join(argv)}")
            skipped.append(step["name"])
        elif dry_run:
            log(f"[{step['name']}] would run: edgebus {' '.join(argv)}")
            would.append(step["name"])
        else:
            log(f"[{step['name']}] edgebus {' '.join(argv)}")
            rc = subprocess.call([sys.executable, "-m", "edgebus", *argv])
            if rc != 0:
                raise EdgebusError(f"step {step['name']!r} stopped (exit {rc}); fix what it said, then run the same "
                                   "pipeline command again: the finished steps are skipped")
            append_jsonl(state, {"step": step["name"], "identity": ident, "argv": argv, "output": output})
            ran.append(step["name"])
        before = ident
    return {"ran": ran, "skipped": skipped, "would_run": would, "state": str(state)}
