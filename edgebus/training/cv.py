"""The honest protocol beside the study's single split: stratified k-fold cross-validation (mean
+- std over folds) and percentile-bootstrap 95% intervals over the pooled out-of-fold predictions.

The study reports one 27-image test split; a proportion measured on 27 images carries a 95%
interval of about +-18 points, so the differences it reports between models are inside the noise.
k folds put every image in exactly one test fold. Identical images (by content hash) share a fold.
Results: `folds.jsonl`, one fsync'ed line per finished fold, so a killed CV resumes where it was; the
fold in progress goes on from its last epoch checkpoint (`checkpoints/fold<i>/`; on Ray where the
task sees the run folder).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import append_jsonl, atomic_write, make_dir, now, one_writer, read_jsonl, repair_jsonl, sha256_file, write_json
from edgebus.core.manifest import Run, open_results_dir
from edgebus.core.splits import check_split, content_groups, content_summary, group_kfold, grouped_kfold, merge_groups
from edgebus.core.tasks import get_task
from edgebus.data.acquisition import acquisition_groups, shortcut_audit
from edgebus.data.arrays import data_info, load_split_data, read_lesions
from edgebus.data.breast import fingerprint
from edgebus.data.content import content_hashes
from edgebus.data.preprocess import preprocess_contract
from edgebus.engine.resume import discard
from edgebus.training.backends import Backend, run_units
from edgebus.config.files import write_run_config
from edgebus.config.stages import CVConfig
from edgebus.training.config import maybe_exit, resolve, use_descriptors
from edgebus.training.cv_fold import CV_IDENTITY, fold_checkpoint, fold_unit, ray_fold


@dataclasses.dataclass
class _CVInputs:
    """What a CV reads and derives before its folder exists."""
    contract: dict
    ds: object
    cases: list
    by_id: dict
    hashes: dict
    groups: dict
    fold_seed: int
    folds: list
    fp: str
    teachers: dict | None
    identity: dict
    seg_boxes: list | None


def _check_settings(cfg: CVConfig, task) -> None:
    """Refuse settings that do not go together, before any data is read."""
    # each value is checked by its declaration in resolve(); what is left is how they combine
    if cfg.crop_margin is not None and task.truth_is_mask:
        raise EdgebusError(f"{flag('crop_margin')} is for classifiers")
    if cfg.boxes_from is not None and cfg.crop_margin is None:
        raise EdgebusError(f"{flag('boxes_from')} serves a lesion-crop classifier: give {flag('crop_margin')} too")


def _make_folds(cfg: CVConfig, cases: list, hashes: dict, groups) -> tuple[int, list]:
    """The k folds (their seed too), each checked, so that no image's copy sits on both sides of one."""
    fold_seed = cfg.seed if cfg.fold_seed is None else cfg.fold_seed
    if cfg.group_by == "acquisition":  # whole frame-size groups per test fold (identical images stay together too)
        folds = group_kfold(cases, merge_groups(groups, acquisition_groups(cases)), cfg.folds, fold_seed,
                            cfg.val_fraction)
    else:
        folds = grouped_kfold(cases, groups, cfg.folds, fold_seed, cfg.val_fraction)
    for f, fold in enumerate(folds):
        check_split(fold, hashes, f"fold {f + 1} of {cfg.folds}")
    return fold_seed, folds


def _fold_teachers(cfg: CVConfig, fp: str, folds: list, backend: Backend | None):
    """Distillation's teachers, each fold's own (None without a teacher); the local backend only, where
    each fold's targets are softened as it loads."""
    if cfg.teacher is None and cfg.teacher_masks is None:
        return None
    from edgebus.training.teacher import load_teachers

    if (backend or Backend()).name != "local":
        raise EdgebusError(f"{flag('teacher')} runs with the local backend (each fold's targets come from its own "
                           "teachers)")
    return load_teachers(cfg.teacher, cfg.teacher_masks, fp, folds)


def _read_inputs(cfg: CVConfig, task, log, backend: Backend | None) -> _CVInputs:
    """Load the data and folds, the teachers and the segmenter's boxes: a bad input fails here, with
    nothing written yet."""
    contract = preprocess_contract(cfg.size, 3, cfg.crop_margin, cfg.normalize)
    ds, cases = read_lesions(cfg.data)
    use_descriptors(cfg, ds, log)
    by_id = {c.case_id: c for c in cases}
    hashes = content_hashes(cases)
    groups = content_groups(hashes)
    fold_seed, folds = _make_folds(cfg, cases, hashes, groups)
    fp = fingerprint(ds)
    teachers = _fold_teachers(cfg, fp, folds, backend)
    identity = {k: getattr(cfg, k) for k in CV_IDENTITY}
    identity.update(task=task.name, data_fingerprint=fp)
    seg_boxes = None
    if cfg.boxes_from is not None:
        from edgebus.training.crops import segmenter_cv_boxes

        seg_boxes, identity["boxes_sha256"] = segmenter_cv_boxes(cfg.boxes_from, folds, fp)
    return _CVInputs(contract, ds, cases, by_id, hashes, groups, fold_seed, folds, fp, teachers, identity, seg_boxes)


def _open_folder(out: Path, cfg: CVConfig, task, inp: _CVInputs, log) -> None:
    """Open or resume the results folder; a new one gets its folds, settings and manifest first."""
    from edgebus.training.train import model_info

    defaults = {f.name: f.default for f in dataclasses.fields(CVConfig) if f.default is not dataclasses.MISSING}
    run, fresh = open_results_dir(out, task.name, "cv", inp.identity, "cross-validation", defaults)
    if fresh:
        write_json(run.file("folds.json"), {"seed": inp.fold_seed, "k": cfg.folds, "val_fraction": cfg.val_fraction,
                                            "group_by": cfg.group_by, "folds": inp.folds})
        run.add_artifact("folds.json", "folds")
        write_run_config(run, cfg, "cv")
        m = run.manifest
        m.data, m.model, m.preprocess, m.threshold = (data_info(inp.ds, inp.fp, len(inp.cases)), model_info(cfg),
                                                      inp.contract, cfg.threshold)
        m.cv = {"identity": inp.identity, "results": "folds.jsonl", "recipe": cfg.recipe, "boxes_from": cfg.boxes_from,
                "content_check": content_summary(inp.hashes, inp.groups, {c.case_id: c.label for c in inp.cases}),
                "acquisition_audit": shortcut_audit(inp.cases)}
        run.save()
    dups = run.manifest.cv["content_check"]["duplicate_groups"]
    if dups:
        log(f"note: {len(dups)} group(s) of identical images, kept in one fold each: "
            + "; ".join(str(d["case_ids"]) for d in dups[:5]))


def _done_folds(results: Path, ckpts: Path) -> set:
    """The folds already in folds.jsonl (a torn last line repaired first); their checkpoints have done their job."""
    repair_jsonl(results)
    done = {r["fold"] for r in read_jsonl(results, key="fold")}
    for f in done:  # a checkpoint left by a stop right after its fold's line
        discard(fold_checkpoint(ckpts, f))
    return done


def _local_unit(cfg: CVConfig, task, inp: _CVInputs, heads: dict, progress: bool, ckpts: Path, log):
    """A fold run in this process: its arrays (crops, lesion-free bands, softened targets) loaded as it starts."""
    by_id, seg_boxes = inp.by_id, inp.seg_boxes

    def unit(f, fold, _):
        log(f"fold {f + 1}/{cfg.folds}: train {len(fold['train'])}, val {len(fold['val'])}, "
            f"test {len(fold['test'])}")
        boxes = None if seg_boxes is None else {**seg_boxes[f]["val"], **seg_boxes[f]["test"]}
        data = load_split_data(by_id, fold, inp.contract, task, boxes, **heads)
        if cfg.lesion_free:  # the fold's own training frames' lesion-free bands, with empty masks
            from edgebus.data.presence import with_bands

            data["train"] = with_bands(data["train"], [by_id[i] for i in fold["train"]], inp.contract)
        if inp.teachers is not None:
            from edgebus.training.teacher import soften

            data["train"] = soften(data["train"], [by_id[i] for i in fold["train"]], inp.teachers, f,
                                   cfg.teacher_weight)
        crop = None if seg_boxes is None else (by_id, seg_boxes[f])
        return fold_unit(cfg, inp.contract, f, fold, data, progress, crop, fold_checkpoint(ckpts, f), log)
    return unit


def _ray_shared(cfg: CVConfig, task, inp: _CVInputs, heads: dict) -> dict:
    """What every Ray fold reads from the object store: the whole set's arrays, put once. Folds that
    need arrays of their own (lesion-free bands, crops cut with their own boxes) are refused."""
    if cfg.lesion_free:
        raise EdgebusError(f"{flag('lesion_free')} runs with the local backend (each fold adds its own training "
                           "frames' bands)")
    if inp.seg_boxes is not None or cfg.crop_margin is not None:
        raise EdgebusError(f"{flag('backend')} ray runs whole-frame CVs; a lesion-crop CV cuts each fold's frames "
                           "with its own boxes: run it with the local backend")
    ids = [c.case_id for c in inp.cases]
    return {"cfg": cfg, "contract": inp.contract, "ids": ids, "progress": False,
            "parts": load_split_data(inp.by_id, {"train": ids}, inp.contract, task, **heads)["train"]}


def _run_folds(backend: Backend, unit, todo: list, shared, out: Path, results: Path, ckpts: Path,
               cfg: CVConfig, task, log) -> None:
    """Run the folds left; each finished fold's models are written, then its line, then its checkpoint goes."""
    written = 0
    for res in run_units(backend, unit, todo, shared, log, checkpoints=ckpts):
        f, rec = res["fold"], res["rec"]
        fold_dir = make_dir(out / f"fold{f}", "CV folder")
        for name, blob in res["files"].items():  # the fold's deployable models: stress, ensembles, bundles
            atomic_write(fold_dir / name, blob)
        rec["models"] = {name: {"file": f"{fold_dir.name}/{name}", "sha256": sha256_file(fold_dir / name)}
                         for name in sorted(res["files"])}
        append_jsonl(results, rec)
        discard(fold_checkpoint(ckpts, f))  # the fold is written: its checkpoint has done its job
        written += 1
        if "test_int8" in rec:
            log(f"fold {f + 1}/{cfg.folds}: int8 test {task.headline_text(rec['test_int8'])}")
        log(f"fold {f + 1}/{cfg.folds}: test {task.headline_text(rec['test'])} (kept epoch {rec['kept_epoch']})")
        maybe_exit(written)


def _summarise(out: Path, cfg: CVConfig, backend: Backend) -> dict:
    """Summarise every fold, and record the CV stage and its headline metrics in the manifest."""
    from edgebus.engine.models import device_name
    from edgebus.training.cv_summary import summarize_cv

    summary = summarize_cv(out, cfg.n_boot)
    run = Run.load(out)
    run.stage("cv", folds=cfg.folds, device=device_name(), finished=now(), **backend.describe())
    run.manifest.metrics["cv"] = {k: v for k, v in summary.items() if k in ("mean_std", "bootstrap")}
    run.save()
    return summary


def run_cv(cfg: CVConfig, progress: bool = False, log=print, backend: Backend | None = None) -> dict:
    """k-fold cross-validation with fixed hyper-parameters; resumable (folds.jsonl); writes
    summary.json, report.md and (classification) the pooled confusion matrix PNG.

    A lesion-crop classifier (crop_margin) trains on crops around the true masks; its val and test
    crops are cut with the boxes a segmenter predicted in the same fold (boxes_from, honest: what
    the cart does) or, without boxes_from, around the true masks (an oracle, reported as such)."""
    task = get_task(resolve(cfg, "cv"))
    _check_settings(cfg, task)
    inp = _read_inputs(cfg, task, log, backend)
    out = Path(cfg.out or Path("runs") / f"cv-{cfg.model}-{cfg.size}")

    from edgebus.compat import set_seed
    from edgebus.engine.fit import build_compiled
    from edgebus.models.registry import has_aux_mask, has_descriptors

    backend = backend or Backend()

    set_seed(cfg.seed)
    # a bad model name or weights file fails before the folder exists; this model serves the first fold
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task.name)
    make_dir(out, flag("out"))
    with one_writer(out):  # a second CV on this folder would write every fold twice
        _open_folder(out, cfg, task, inp, log)
        ckpts = out / "checkpoints"  # epoch checkpoints of the folds in progress (engine.resume)
        results = out / "folds.jsonl"
        done = _done_folds(results, ckpts)
        heads = {"masks": has_aux_mask(model), "descriptors": has_descriptors(model)}
        model = None
        todo = [(f, fold) for f, fold in enumerate(inp.folds) if f not in done]
        if backend.name == "local":
            unit, shared = _local_unit(cfg, task, inp, heads, progress, ckpts, log), None
        else:
            unit, shared = ray_fold, _ray_shared(cfg, task, inp, heads)
        _run_folds(backend, unit, todo, shared, out, results, ckpts, cfg, task, log)
        return _summarise(out, cfg, backend)
