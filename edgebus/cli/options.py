"""Typer options derived from the declarations in edgebus.config.options: one typer option per
declared name, shared by every command that takes it, so its help, type and range are written once.

A command names its options with the default `OPT`; `options` (applied by `common.friendly`) gives it
the declared type and help, adds `--config FILE`, reads that file under the command line (defaults <
file < command line), turns comma lists and JSON into values and checks each value by its
declaration before the command runs. A stage command adds `settings=StageConfig`: every option of
that dataclass, passed on as one dict of the options that were set."""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Optional

import contextvars

import typer
from typer.models import OptionInfo

from edgebus.config.options import OPTIONS, check, settings_of
from edgebus.core.errors import EdgebusError, flag

OPT = object()  # a parameter default: "the declared option of this name"
_CTX = "edgebus_ctx"  # the click context, added to a command that does not take one itself
_ABOUT = contextvars.ContextVar("edgebus_config", default=None)  # the settings file of the running command
_TYPES = {"int": int, "float": float, "str": str, "path": Path, "paths": list[Path], "flag": bool, "bool": bool,
          "ints": str, "floats": str, "strs": str, "json": str}
_ITEM = {"ints": int, "floats": float, "strs": str}


@functools.cache
def option_info(name: str) -> OptionInfo:
    """The one typer option of a declared name (cached: every command shares the same object)."""
    o = OPTIONS[name]
    decl = flag(name)
    decls = (f"{decl}/--no-{decl[2:]}",) if o.kind == "bool" else (decl, *o.aliases)
    default = False if o.kind == "flag" else o.default
    return typer.Option(default, *decls, help=o.help, show_default=o.default is not None)


def annotation(name: str):
    o = OPTIONS[name]
    t = _TYPES[o.kind]
    return t if o.kind == "flag" or o.default is not None else Optional[t]


def _parsed(name: str, value):
    """A command-line string of a list or JSON option as its value; a settings file's value as it is."""
    o = OPTIONS[name]
    if o.kind == "path" and isinstance(value, str):  # from a settings file
        return Path(value)
    if o.kind == "paths" and isinstance(value, list):
        return [Path(v) for v in value]
    if not isinstance(value, str) or o.kind not in (*_ITEM, "json"):
        return value
    if o.kind == "json":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise EdgebusError(f"{flag(name)} '{value}': give a JSON table, e.g. '{{\"alpha\": 0.35}}'") from None
    try:
        return [_ITEM[o.kind](t.strip()) for t in value.split(",") if t.strip()]
    except ValueError:
        example = "10,20" if o.kind == "ints" else "1e-4,1e-3"
        raise EdgebusError(f"{flag(name)} '{value}': give comma-separated values, e.g. {example}") from None


def command_name(ctx) -> str:
    """The command as a settings file's table names it: 'cv' for 'edgebus cv classify' (however the
    program was started: `edgebus`, `python -m edgebus`)."""
    while ctx.parent is not None and ctx.parent.parent is not None:
        ctx = ctx.parent
    return ctx.info_name


def options(fn=None, *, settings=None):
    """The command's OPT parameters made into their declared options, plus --config (see module doc)."""
    if fn is None:
        return functools.partial(options, settings=settings)
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "settings"]
    names = [p.name for p in own if p.default is OPT]
    stage = [n for n in (settings_of(settings) if settings else ()) if n not in sig.parameters]
    params = [p.replace(default=option_info(p.name), annotation=annotation(p.name)) if p.default is OPT else p
              for p in own]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=option_info(n), annotation=annotation(n))
               for n in stage + (["config"] if "config" not in sig.parameters else [])]
    ctx_name = next((p.name for p in own if p.annotation in (typer.Context, "typer.Context")), None)
    if ctx_name is None:
        params.append(inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
    params.sort(key=lambda p: p.kind)

    @functools.wraps(fn)
    def run(*args, **kw):
        ctx = kw[ctx_name] if ctx_name else kw.pop(_CTX)
        path = kw["config"] if "config" in sig.parameters else kw.pop("config")
        _ABOUT.set(None)
        if path is not None:
            from edgebus.config.files import read_config

            values, about = read_config(path, command_name(ctx))
            _ABOUT.set(about)
            for k, v in values.items():  # the file under the command line
                if k in kw and getattr(ctx.get_parameter_source(k), "name", "") != "COMMANDLINE":
                    kw[k] = v
        for n in names + stage:
            kw[n] = _parsed(n, kw[n])
            check(n, kw[n])
        if settings is not None:  # the stage's dataclass holds paths as strings
            kw["settings"] = {n: str(v) if isinstance(v, Path) else v for n in stage if (v := kw.pop(n)) is not None}
        return fn(*args, **kw)

    run.declared_options = True
    run.__signature__ = sig.replace(parameters=params)
    run.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    return run


def config_about() -> dict | None:
    """The settings file the running command read (path, sha256, name, description, reduced, task), if any."""
    return _ABOUT.get()
