"""What every command shares: the one-line error wrapper (which also gives a command its declared
options, edgebus.cli.options) and the training backend."""

from __future__ import annotations

import errno
import functools
import typer

from edgebus.core.errors import EdgebusError, flag


# a machine's limits, not a bug: one line with the fix (every write is atomic, so nothing finished is lost)
_WRITE_FIXES = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
                errno.EROFS: f"write to another folder ({flag('out')})", errno.EACCES: f"fix its permissions or use another {flag('out')}",
                errno.EPERM: f"fix its permissions or use another {flag('out')}"}


def friendly(fn):
    """Bad input, a full disk or a folder it may not write end with one line on stderr and exit code
    2, never a traceback. Gives the command its declared options and --config (edgebus.cli.options)."""
    from edgebus.cli.options import options

    fn = fn if getattr(fn, "declared_options", False) else options(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgebusError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except OSError as e:
            if e.errno not in _WRITE_FIXES:
                raise
            where = f"{e.filename}: " if e.filename else ""
            typer.echo(f"error: {where}{e.strerror}; {_WRITE_FIXES[e.errno]}, then run the same command again "
                       "(what was finished is kept)", err=True)
            raise typer.Exit(2)

    return wrapper


def backend_of(name: str | None, address, cpus: float | None, gpus: float | None):
    from edgebus.training.backends import Backend

    return Backend(name or "local", address, 1.0 if cpus is None else cpus, 0.0 if gpus is None else gpus)
