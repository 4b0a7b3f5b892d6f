"""Settings files: read one (TOML or YAML) for a command, write a run's resolved settings back as
TOML, so `edgebus train classify --config runs/x/config.toml` makes that run again.

A file's top-level keys apply to every command that has that option; a `[<command>]` table (`[cv]`,
`[grid]`, `[export]`, ...) to that command only, over the top level. `train` also reads `[cv]`: the
cart's final model is trained as its CV's folds were. Keys that no command has are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgebus.config.options import OPTIONS, check
from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write, sha256_file

META = ("name", "description", "reduced", "task", "target")  # what a file says about itself
SECTIONS = {"train": ("cv", "train")}  # the tables a command reads, in order; default: its own name
SEARCH = ("training", "export")  # where a bare name is looked for: a recipe, an export profile
TABLES = ("train", "grid", "cv", "cv-merge", "export", "operating-point", "fuse", "presence", "evaluate", "stress",
          "bench", "report", "predict", "bundle", "site-check", "site-threshold", "synth", "models", "demo",
          "weights", "pipeline")  # the commands a [table] may name (tests/test_config.py: the CLI's, exactly)


def find_config(path: str | Path) -> Path:
    """`training/resnet50`, `training/resnet50.toml`, `export/coral` or a name in training/ or export/."""
    p = Path(path)
    tries = [p] + [p.with_name(p.name + s) for s in (".toml", ".yaml", ".yml")]
    tries += [Path(d) / f"{p.name}{s}" for d in SEARCH for s in ("", ".toml", ".yaml", ".yml")]
    for c in tries:
        if c.is_file():
            return c
    here = sorted(f"{d}/{x.stem}" for d in SEARCH if Path(d).is_dir() for x in Path(d).glob("*.toml"))
    hint = f" (settings files here: {', '.join(here)})" if here else ""
    raise EdgebusError(f"{p}: settings file not found{hint}; pass a .toml or .yaml file such as "
                       "training/mobilenetv2.toml")


def _parse(p: Path) -> dict:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgebusError(f"{p}: not a text file; a settings file is TOML or YAML text") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise EdgebusError(f"{p}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    else:
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise EdgebusError(f"{p}: not valid TOML ({e}); fix the file") from None
    if not isinstance(d, dict):
        raise EdgebusError(f"{p}: a settings file holds keys and values (key = value); fix the file")
    return d


def _checked(p: Path, where: str, table: dict) -> dict:
    unknown = sorted(k for k in table if k not in OPTIONS and k not in META)
    if unknown:
        raise EdgebusError(f"{p}: unknown key(s) {', '.join(unknown)}{where}; a key is an option's name with _ "
                           "for - (see 'edgebus COMMAND --help'), or one of " + ", ".join(META))
    for k, v in table.items():
        if k in OPTIONS:
            check(k, v, label=f"{p}: {k}{where} =")
    return table


def read_config(path: str | Path, command: str) -> tuple[dict, dict]:
    """(values, about) of a settings file for `command`: the top level, then its tables (SECTIONS),
    each key checked against its option's declaration; `about` names the file (path, sha256, and
    its name, description, reduced, task when it says them)."""
    p = find_config(path)
    d = _parse(p)
    tables = {k: v for k, v in d.items() if isinstance(v, dict) and (k not in OPTIONS or OPTIONS[k].kind != "json")}
    values = _checked(p, "", {k: v for k, v in d.items() if k not in tables})
    for name, table in tables.items():
        if name not in TABLES:
            raise EdgebusError(f"{p}: [{name}] is not a command; a table names the command it is for: "
                               + ", ".join(TABLES))
        _checked(p, f" in [{name}]", table)
    for name in SECTIONS.get(command, (command,)):
        values = {**values, **tables.get(name, {})}
    about = {"name": d.get("name", p.stem), "path": str(p), "sha256": sha256_file(p),
             "reduced": bool(d.get("reduced", False)), "description": d.get("description", "")}
    if "task" in d:
        about["task"] = d["task"]
    return {k: v for k, v in values.items() if k not in META}, about


def _toml_key(k) -> str:
    k = str(k)
    return k if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) else _toml_value(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v}: TOML settings hold finite numbers")
        return repr(v)
    if isinstance(v, str):  # a JSON string is a TOML basic string, with DEL escaped and no surrogate pairs
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ValueError(f"{v!r}: not a setting TOML can hold")


def write_config(path: str | Path, values: dict, comment: str = "") -> Path:
    """A flat TOML file of settings (None left out: not set), written atomically."""
    lines = [f"# {c}" for c in comment.splitlines()]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    atomic_write(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def record_config(cfg, leave_out=("out", "overwrite")) -> dict:
    """A stage dataclass's resolved settings as a settings file holds them: every option field,
    paths as strings, where the run is written left out (the file makes the run again elsewhere)."""
    from edgebus.config.options import settings_of

    rec = {}
    for name in settings_of(type(cfg)):
        v = getattr(cfg, name)
        if name in leave_out or v is None:
            continue
        if OPTIONS[name].kind == "path":  # absolute: the file makes the run again from any folder
            v = str(Path(v).resolve())
        rec[name] = list(v) if isinstance(v, tuple) else v
    return rec


def write_run_config(run, cfg, command: str) -> Path:
    """config.toml in a run, grid or CV folder (a core.manifest.Run): the settings it ran with, as a settings
    file, recorded with its sha256 among the run's artifacts."""
    path = write_config(run.path / "config.toml", {"task": cfg.task, **record_config(cfg)},
                        comment=f"The settings this {command} ran with (edgebus {__import__('edgebus').__version__}). "
                                f"Make it again:\n  edgebus {command} {cfg.task} --config config.toml --out NEW_FOLDER")
    run.add_artifact("config.toml", "settings")
    return path
