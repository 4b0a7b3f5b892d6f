"""Where the units of a grid (one learning-rate run) or a CV (one fold) run: in this process, one
after the other ("local", the default), or as Ray tasks on a cluster ("ray", `pip install
'edgebus[cluster]'`).

The driver stays the one writer: a unit returns its result (cell lines, a fold record, model files
as bytes) and the driver appends it to cells.jsonl / folds.jsonl and writes the files, so nothing
is written twice or lost, and a re-run resumes from those files exactly as a local run does. The
preprocessed data set is put in Ray's object store once and every task gets a reference to it.
A task whose worker process dies is retried (`retries`); an error raised by the unit itself is
not retried, it is reported. EDGEBUS_* environment variables travel to the workers.

Epoch checkpoints are the one thing a task writes itself, as a local unit does: scratch, not
results. A task checkpoints into the run folder only when it can see the driver's mark there (the
same machine, or a file system the nodes share), so a retried task goes on from its last epoch;
on a node that cannot see it a retry starts from epoch 0.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from edgebus.core.errors import EdgebusError, flag

BACKENDS = ("local", "ray")
MARK = ".driver-"  # out/checkpoints/.driver-<token>: this run's driver made it, so a task that sees it shares its files
KILL_ENV = "EDGEBUS_KILL_TASK_ONCE"  # tests: a folder; the first Ray task to start there kills its worker


def _task(fn: Callable, *args):
    """What a Ray worker runs: fn(*args). With EDGEBUS_KILL_TASK_ONCE=DIR (tests), the first task
    to claim DIR/killed ends its worker process at once, as a lost node would, so Ray retries it."""
    marker = os.environ.get(KILL_ENV)
    if marker:
        try:
            fd = os.open(os.path.join(marker, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            os._exit(1)
        except FileExistsError:
            pass
    return fn(*args)


@dataclass
class Backend:
    name: str = "local"
    address: str | None = None  # a Ray cluster ("auto", "ray://host:10001"); None starts or joins a local one
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    retries: int = 3  # a task whose worker dies is tried again this many times

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise EdgebusError(f"{flag('backend')} '{self.name}': choose {' or '.join(BACKENDS)}")
        if self.cpus_per_task <= 0 or self.gpus_per_task < 0:
            raise EdgebusError(f"{flag('cpus_per_task')} must be > 0 and {flag('gpus_per_task')} >= 0")
        if self.name == "local" and self.address:
            raise EdgebusError(f"{flag('address')} names a Ray cluster; give {flag('backend')} ray too")

    def describe(self) -> dict:
        d = {"backend": self.name}
        if self.name == "ray":
            d.update(cpus_per_task=self.cpus_per_task, gpus_per_task=self.gpus_per_task)
        return d


def _ray():
    try:
        import ray
    except ImportError:
        raise EdgebusError(f"{flag('backend')} ray needs Ray; pip install 'edgebus[cluster]'") from None
    return ray


def run_units(backend: Backend, fn: Callable, units: list[tuple], shared, log=print,
              checkpoints: Path | None = None) -> Iterator:
    """fn(*unit, shared) for every unit: locally in order, or as Ray tasks, yielded as each finishes.
    Ray: shared (a dict) gets "checkpoints", the run's checkpoint folder marked for the tasks (see
    `task_checkpoints`; None without `checkpoints`)."""
    if backend.name == "local":
        for u in units:
            yield fn(*u, shared)
        return
    if not units:
        return
    with nullcontext() if checkpoints is None else checkpoint_root(checkpoints) as root:
        yield from _ray_units(backend, fn, units, {**shared, "checkpoints": root}, log)


def _ray_units(backend: Backend, fn: Callable, units: list[tuple], shared: dict, log) -> Iterator:
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=backend.address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise EdgebusError(f"{flag('address')} {backend.address}: cannot reach the Ray cluster ({str(e)[:160]}); "
                               "start it with 'ray start --head' or check the address") from None
    env = {k: v for k, v in os.environ.items() if k.startswith("EDGEBUS_")}
    remote = ray.remote(_task).options(num_cpus=backend.cpus_per_task, num_gpus=backend.gpus_per_task,
                                    max_retries=backend.retries, runtime_env={"env_vars": env} if env else None)
    ref = ray.put(shared)  # the data set travels once; every task reads it from the object store
    pending = [remote.remote(fn, *u, ref) for u in units]
    log(f"ray: {len(pending)} task(s) submitted ({backend.cpus_per_task:g} CPU, {backend.gpus_per_task:g} GPU each; "
        f"cluster {ray.cluster_resources().get('CPU', 0):g} CPUs)")
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            yield ray.get(done[0])
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), EdgebusError) else None
            for p in pending:
                ray.cancel(p)
            if cause is not None:
                raise cause from None
            raise EdgebusError(f"a Ray task failed: {str(e).strip().splitlines()[-1][:200]}") from None
        except ray.exceptions.WorkerCrashedError:
            for p in pending:
                ray.cancel(p)
            raise EdgebusError(f"a Ray task's worker died {backend.retries + 1} times; see the Ray logs, and re-run "
                               "to resume") from None


@contextmanager
def checkpoint_root(folder: Path) -> Iterator[dict]:
    """Driver side: the checkpoint folder with a fresh mark while the Ray tasks run, as {"path",
    "token"} to hand to them (see `task_checkpoints`); the mark goes when they are done, and one a
    killed driver left goes now."""
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{MARK}*"):
        stale.unlink(missing_ok=True)
    token = uuid.uuid4().hex
    mark = root / f"{MARK}{token}"
    mark.touch()
    try:
        yield {"path": str(root), "token": token}
    finally:
        mark.unlink(missing_ok=True)


def task_checkpoints(root: dict | None) -> Path | None:
    """Task side: the run's checkpoint folder when this node sees the driver's mark in it, else None."""
    if root is None:
        return None
    path = Path(root["path"])
    return path if (path / f"{MARK}{root['token']}").is_file() else None


def take(parts: tuple, index: list[int]) -> tuple:
    """The rows `index` of every array in a part (x, truth[, masks, descriptors]); None stays None."""
    return tuple(None if a is None else a[index] for a in parts)
