"""Study recipes (training/<name>.toml): a grid's or a CV's settings in a file, checked for unknown
keys; options given on the command line override the recipe's."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError
from edgebus.core.io import sha256_file

_RECIPE_KEYS = {"name", "description", "reduced", "task", "model", "size", "batch", "seed", "weights", "lrs", "epochs",
                "select", "split", "augment", "normalize", "threshold", "data", "out", "model_kwargs", "cv"}
_CV_KEYS = {"folds", "lr", "epochs", "keep", "schedule", "val_fraction", "n_boot", "batch", "size", "out", "group_by"}


def find_recipe(path: str | Path) -> Path:
    """`training/resnet50`, `training/resnet50.toml` or a name under training/."""
    p = Path(path)
    for c in (p, p.with_name(p.name + ".toml"), Path("training") / p, Path("training") / f"{p.name}.toml"):
        if c.is_file():
            return c
    here = sorted(x.stem for x in Path("training").glob("*.toml")) if Path("training").is_dir() else []
    hint = f" (recipes in ./training: {', '.join(here)})" if here else ""
    raise EdgebusError(f"{p}: recipe not found{hint}; pass a .toml file such as training/mobilenetv2.toml")


def load_recipe(path: str | Path) -> dict:
    """A TOML recipe as a dict, checked for unknown keys and types."""
    import tomllib

    p = find_recipe(path)
    try:
        r = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EdgebusError(f"{p}: not valid TOML ({e}); fix the file") from None
    unknown = sorted(set(r) - _RECIPE_KEYS)
    if unknown:
        raise EdgebusError(f"{p}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_RECIPE_KEYS))}")
    cv_unknown = sorted(set(r.get("cv", {})) - _CV_KEYS)
    if cv_unknown:
        raise EdgebusError(f"{p}: unknown key(s) in [cv]: {', '.join(cv_unknown)}; allowed: {', '.join(sorted(_CV_KEYS))}")
    if "model" not in r:
        raise EdgebusError(f"{p}: no 'model' key; add e.g. model = \"mobilenetv2\"")
    for key in ("lrs", "epochs"):
        if key in r and (not isinstance(r[key], list) or not r[key]):
            raise EdgebusError(f"{p}: '{key}' must be a non-empty list, e.g. {key} = [1e-4, 1e-3]")
    r["_path"], r["_sha256"] = str(p), sha256_file(p)
    return r


def recipe_info(r: dict) -> dict:
    return {"name": r.get("name", Path(r["_path"]).stem), "path": r["_path"], "sha256": r["_sha256"],
            "reduced": bool(r.get("reduced", False)), "description": r.get("description", "")}


def grid_config(r: dict, **overrides):
    """GridConfig from a recipe; overrides that are not None win (the command line)."""
    from edgebus.training.grid import GridConfig

    keys = {"task", "model", "size", "batch", "seed", "weights", "lrs", "epochs", "select", "augment", "normalize", "threshold",
            "data", "out", "model_kwargs"}
    kw = {k: r[k] for k in keys if k in r}
    if "split" in r:
        kw["split_fractions"] = tuple(r["split"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if not kw.get("data"):
        raise EdgebusError(f"{r['_path']}: no data folder; pass --data (a BrEaST-layout folder)")
    kw["recipe"] = recipe_info(r)
    kw["data"] = str(kw["data"])
    kw["out"] = str(kw.get("out") or Path("runs") / f"grid-{kw['recipe']['name']}")
    return GridConfig(**kw)


_CV_FROM_RECIPE = ("model", "size", "batch", "seed", "weights", "model_kwargs", "data", "augment", "normalize", "threshold")


def cv_config(task: str, recipe: str | Path | None = None, **given):
    """CVConfig from an optional recipe (its top-level model settings and its [cv] table) and the
    options given on the command line (None: not given), which win."""
    from edgebus.training.cv import CVConfig

    kw = {}
    if recipe is not None:
        r = _task_recipe(recipe, task, "cv")
        kw.update({k: r[k] for k in _CV_FROM_RECIPE if k in r})
        kw.update(r.get("cv", {}))
        kw["recipe"] = recipe_info(r)
        kw.setdefault("out", str(Path("runs") / f"cv-{kw['recipe']['name']}"))
    return CVConfig(task=task, **_given_wins(kw, given, task, "cv", ("data", "out", "boxes_from", "teacher", "teacher_masks")))


def _task_recipe(recipe, task: str, command: str) -> dict:
    r = load_recipe(recipe)
    if r.get("task") and r["task"] != task:
        raise EdgebusError(f"{r['_path']}: a {r['task']} recipe; use 'edgebus {command} {r['task']}'")
    return r


def _given_wins(kw: dict, given: dict, task: str, command: str, paths) -> dict:
    """The recipe's settings `kw` with the options given on the command line over them, --data required,
    the task's default model, paths as strings."""
    from edgebus.core.tasks import get_task

    kw = {**kw, **{k: v for k, v in given.items() if v is not None}}
    if kw.get("data") is None:
        raise EdgebusError(f"{command}: pass --data (a BrEaST-layout folder)")
    kw.setdefault("model", get_task(task).default_model)
    return {k: str(v) if k in paths and v is not None else v for k, v in kw.items()}


def train_config(task: str, recipe: str | Path | None = None, **given):
    """TrainConfig from an optional recipe (its top-level model settings, model_kwargs among them, and its
    [cv] table's learning rate, epochs, keep and schedule: the recipe's one training run) and the options
    given on the command line (None: not given), which win. The cart's final model of a CV recipe."""
    from edgebus.training.config import TrainConfig

    kw = {}
    if recipe is not None:
        r = _task_recipe(recipe, task, "train")
        kw.update({k: r[k] for k in _CV_FROM_RECIPE if k in r})
        kw.update({k: v for k, v in r.get("cv", {}).items() if k in ("lr", "epochs", "keep", "schedule")})
    return TrainConfig(task=task, **_given_wins(kw, given, task, "train", ("data", "segmenter", "teacher", "teacher_masks")))
