"""Run directories and their typed manifest.

Every stage reads one folder's `manifest.json` and extends it: data fingerprint, split, the model's
build arguments, the preprocessing contract, artifacts with sha256, metrics, exports. `RunManifest`
is its one schema: `RunManifest.from_dict` is the one reader (it checks a manifest from elsewhere
before anything uses it, and reads older layouts), `to_dict` the one writer. A finished run is
never overwritten silently, and the manifest is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgebus import __version__
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import WRITER_FILE, locked, merge3, now, read_json, sha256_file, write_json
from edgebus.core.metrics import DEFAULT_THRESHOLD
from edgebus.core.tasks import TASKS, Task, get_task

MANIFEST = "manifest.json"


@dataclass
class DataInfo:
    """The data set a run saw, tied to its content by the fingerprint."""

    root: str
    fingerprint: str
    n_lesions: int
    n_rows: int = 0
    format: str = "breast"
    classes: list = field(default_factory=list)
    synthetic: bool = False  # made by `edgebus synth`: every model trained on it says so, up to the cart's overlays


@dataclass
class ModelInfo:
    """What rebuilds the model from the registry (edgebus.models.registry.build_from_manifest)."""

    name: str
    task: str
    input_size: list
    weights: str = "none"
    kwargs: dict = field(default_factory=dict)


@dataclass
class SplitInfo:
    file: str
    seed: int
    counts: dict = field(default_factory=dict)


@dataclass
class RunManifest:
    task: str
    created: str
    edgebus_version: str = __version__
    stages: dict = field(default_factory=dict)  # stage name -> what it did, when
    artifacts: dict = field(default_factory=dict)  # file name -> {"kind", "bytes", "sha256", ...}
    metrics: dict = field(default_factory=dict)  # "keras": {"val", "test"} at the run's threshold; ...
    data: DataInfo | None = None
    model: ModelInfo | None = None
    split: SplitInfo | None = None
    preprocess: dict | None = None  # the preprocessing contract (edgebus.data.preprocess)
    threshold: float = DEFAULT_THRESHOLD
    exports: dict = field(default_factory=dict)  # key ("float32", "int8", ...) -> validated export entry
    operating_point: dict | None = None
    calibration: dict | None = None  # Platt scaling of the malignant probability (edgebus.core.calibration)
    crop: dict | None = None  # lesion-crop classifier: where its boxes came from
    grid: dict | None = None  # a grid directory: identity, recipe, content check
    cv: dict | None = None  # a cross-validation directory: identity, recipe, content check
    external: dict = field(default_factory=dict)
    pack_of: str | None = None  # a device pack: the run it was copied from

    @property
    def kind(self) -> Task:
        return get_task(self.task)

    def keras_metrics(self, part: str = "test") -> dict | None:
        """The float Keras model's metrics on a split part, at the run's threshold."""
        return (self.metrics.get("keras") or {}).get(part)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != {} or k in _ALWAYS}

    @classmethod
    def from_dict(cls, d, where: str = MANIFEST) -> "RunManifest":
        """Check and read a manifest (from any edgebus version since 0.1.0)."""
        if not isinstance(d, dict):
            raise EdgebusError(f"{where}: not an edgebus manifest (a JSON object is expected); restore it")
        d = dict(d)
        if not isinstance(d.get("task"), str) or d["task"] not in TASKS:
            raise EdgebusError(f"{where}: unknown task {d.get('task')!r}; not an edgebus run, or a damaged manifest")
        metrics = dict(d.get("metrics") or {})
        if "keras_test" in metrics:  # before 0.1.1 export stored the Keras test metrics a second time
            metrics.setdefault("keras", {})["test"] = metrics.pop("keras_test")
        if "keras_op" in metrics:  # ... and the operating point a third
            metrics["keras"] = metrics.pop("keras_op")
        d["metrics"] = metrics
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            for key, typ in (("data", DataInfo), ("model", ModelInfo), ("split", SplitInfo)):
                if d.get(key) is not None:
                    fields = {f.name for f in dataclasses.fields(typ)}
                    d[key] = typ(**{k: v for k, v in d[key].items() if k in fields})
            m = cls(**{k: v for k, v in d.items() if k in known})
            for obj in (m, m.data, m.model, m.split):
                if obj is not None:
                    _check_types(obj)
        except (TypeError, AttributeError) as e:
            raise EdgebusError(f"{where}: malformed manifest ({e}); restore it or re-run the stage that wrote it") from None
        for name, art in m.artifacts.items():
            if not isinstance(art, dict) or not isinstance(art.get("sha256"), str) or Path(name).name != name:
                raise EdgebusError(f"{where}: malformed artifact entry {name!r}; restore the manifest")
        if isinstance(m.threshold, bool) or not isinstance(m.threshold, (int, float)) or not 0 <= m.threshold <= 1:
            raise EdgebusError(f"{where}: threshold {m.threshold!r} is not a number from 0 to 1; restore the manifest")
        m.threshold = float(m.threshold)
        return m


_TYPES = {"str": str, "int": int, "float": (int, float), "list": list, "dict": dict, "bool": bool}


def _check_types(obj) -> None:
    """Every field of a manifest dataclass holds the JSON type its annotation names (a hand-edited or
    damaged manifest is refused here, not deep inside a stage)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if v is None and "None" in kinds:
            continue
        allowed = tuple(t for k in kinds for t in (_TYPES.get(k),) if t is not None)
        allowed = tuple(x for t in allowed for x in (t if isinstance(t, tuple) else (t,)))
        if allowed and (not isinstance(v, allowed) or (isinstance(v, bool) and "bool" not in kinds)):
            raise TypeError(f"{f.name} is {type(v).__name__}, not {' or '.join(kinds)}")


_ALWAYS = {"task", "created", "edgebus_version", "stages", "artifacts", "metrics", "threshold"}


class Run:
    """A run directory and its manifest. Every stage loads the run, does its work, records
    artifacts and metrics, then `save()`s."""

    def __init__(self, path: str | Path, manifest: RunManifest, base: dict | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self._base = base  # the manifest as read, for the merge in save(); None: write as is

    @classmethod
    def create(cls, path: str | Path, task: str, overwrite: bool = False) -> "Run":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise EdgebusError(f"{path}: exists and is not a folder; pick another {flag('out')}")
        if (path / MANIFEST).exists() and not overwrite:
            raise EdgebusError(f"{path}: a run already exists there; pick another {flag('out')} or pass "
                               f"{flag('overwrite')} to replace it")
        if path.exists() and any(not _leftover(p) for p in path.iterdir()) and not (path / MANIFEST).exists():
            raise EdgebusError(f"{path}: folder is not empty and is not an edgebus run; pick another {flag('out')}")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, RunManifest(task=get_task(task).name, created=now()))
        run.save()
        return run

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise EdgebusError(f"{path}: no {MANIFEST}; pass a run directory made by 'edgebus train'")
        m = RunManifest.from_dict(read_json(path / MANIFEST), str(path / MANIFEST))
        return cls(path, m, m.to_dict())

    @property
    def task(self) -> Task:
        return self.manifest.kind

    def file(self, name: str) -> Path:
        return self.path / name

    def add_artifact(self, name: str, kind: str, **extra) -> dict:
        """Record a file already written in the run folder, with its size and sha256."""
        p = self.file(name)
        entry = {"kind": kind, "bytes": p.stat().st_size, "sha256": sha256_file(p), **extra}
        self.manifest.artifacts[name] = entry
        return entry

    def verify_artifact(self, name: str) -> Path:
        """The path of a recorded artifact, refusing one that is missing or was changed."""
        p = self.file(name)
        entry = self.manifest.artifacts.get(name)
        if entry is None or not p.is_file():
            raise EdgebusError(f"{p}: missing from the run; re-run the stage that makes it")
        if sha256_file(p) != entry["sha256"]:
            raise EdgebusError(f"{p}: sha256 differs from manifest.json; the file was changed, re-run that stage")
        return p

    def read_artifact_json(self, name: str):
        """A recorded JSON artifact (split.json, boxes.json, ...), sha256-checked."""
        return read_json(self.verify_artifact(name))

    def stage(self, name: str, **info) -> None:
        info.setdefault("finished", now())
        self.manifest.stages[name] = info

    def save(self) -> None:
        """Write the manifest under the run's lock, merged with what other processes saved since
        this one read it (two exports at once both keep their entries)."""
        import copy

        with locked(self.path):
            mine = self.manifest.to_dict()
            path = self.path / MANIFEST
            merged = mine
            if self._base is not None and path.is_file():
                theirs = RunManifest.from_dict(read_json(path), str(path)).to_dict()
                merged = merge3(self._base, mine, theirs)
            write_json(path, merged)
            self._base = copy.deepcopy(mine)  # the next save lays only what changes after this over the file


def _leftover(p: Path) -> bool:
    """A lock file, or a temp file of an atomic write that a killed process left: neither is a result."""
    return p.name in (".edgebus.lock", WRITER_FILE) or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file())


def open_results_dir(out: Path, task: str, kind: str, identity: dict, what: str, defaults: dict | None = None):
    """Create a grid/CV directory, or reopen one made with the same settings (to resume). A setting
    an older edgebus did not record matches its default (`defaults`). Returns (Run, fresh)."""
    out = Path(out)
    if (out / MANIFEST).exists():
        run = Run.load(out)
        old = getattr(run.manifest, kind)
        if old is None:
            if not run.manifest.artifacts and not run.manifest.stages:  # killed while it was being set up
                return Run.create(out, task, overwrite=True), True
            raise EdgebusError(f"{out}: holds a run that is not a {what}; pick another {flag('out')}")
        for k, v in identity.items():
            if k not in old["identity"] and defaults and k in defaults and defaults[k] == v:
                continue
            if json.dumps(old["identity"].get(k), sort_keys=True) != json.dumps(v, sort_keys=True, default=str):
                raise EdgebusError(f"{out}: an earlier {what} there used {k}={old['identity'].get(k)!r}, not {v!r}; "
                                   f"pick another {flag('out')} to start a new one")
        return run, False
    return Run.create(out, task), True
