"""The honest protocol beside the study's single split: content-hash leak checks, stratified k-fold
cross-validation (mean +- std over folds) and percentile-bootstrap 95% intervals.

The study reports one 27-image test split; a proportion measured on 27 images carries a 95%
interval of about +-18 points, so the differences it reports between models are inside the noise.
k folds put every image in exactly one test fold, and the bootstrap over the pooled out-of-fold
predictions gives an interval for each headline number.

Also here (shared with grid.py): the append-only JSONL results file that makes grids and CV
resumable (one fsync'ed line per finished unit; a killed process loses at most the unit in progress).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from edgebus.errors import EdgebusError
from edgebus.training.train import FitConfig
from edgebus.metrics import CLASS_NAMES, roc_auc

# --- append-only results files ------------------------------------------------------------------


def append_jsonl(path: str | Path, record: dict) -> bytes:
    """Append one JSON line and fsync it before returning (so a finished unit survives a kill)."""
    from edgebus.rundir import _json_default

    line = (json.dumps(record, default=_json_default, separators=(",", ":")) + "\n").encode()
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


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- content hashes and leak checks --------------------------------------------------------------


def content_hashes(cases) -> dict[int, dict]:
    """{case_id: {"file": sha256 of the image file's bytes, "pixels": sha256 of its decoded grayscale
    pixels}}. The pixel hash also catches the same image saved twice with different encodings."""
    from edgebus.data.preprocess import load_gray
    from edgebus.rundir import sha256_file

    out = {}
    for c in cases:
        g = load_gray(c.image)
        px = hashlib.sha256(f"{g.shape}".encode() + g.tobytes()).hexdigest()
        out[c.case_id] = {"file": sha256_file(c.image), "pixels": px}
    return out


def content_groups(hashes: dict[int, dict]) -> list[list[int]]:
    """Case ids grouped by identical content (same file bytes or same pixels), sorted; a unique
    image is a group of one."""
    parent = {i: i for i in hashes}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for kind in ("file", "pixels"):
        first: dict = {}
        for i in sorted(hashes):
            h = hashes[i][kind]
            if h in first:
                a, b = find(first[h]), find(i)
                parent[max(a, b)] = min(a, b)
            else:
                first[h] = i
    groups: dict = {}
    for i in sorted(hashes):
        groups.setdefault(find(i), []).append(i)
    return [groups[k] for k in sorted(groups)]


def duplicates(groups: list[list[int]], label_of: dict) -> list[dict]:
    """Groups of more than one case, with their labels; `conflict` when identical images disagree."""
    out = []
    for g in groups:
        if len(g) > 1:
            labels = [CLASS_NAMES[label_of[i]] for i in g]
            out.append({"case_ids": g, "labels": labels, "conflict": len(set(labels)) > 1})
    return out


def _expand(part: dict, members: dict) -> dict:
    return {k: sorted(i for rep in v for i in members[rep]) for k, v in part.items()}


def grouped_split(cases, groups, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """stratified_split over content groups (one representative each, labelled as its first case),
    so identical images land in the same part. Without duplicates it equals stratified_split."""
    from edgebus.data.split import stratified_split

    label_of = {c.case_id: c.label for c in cases}
    members = {g[0]: g for g in groups}
    part = stratified_split(list(members), [label_of[r] for r in members], fractions, seed)
    return _expand(part, members)


def grouped_kfold(cases, groups, k: int = 5, seed: int = 0, val_fraction: float = 0.1) -> list[dict]:
    """kfold_splits over content groups: the k test folds partition the cases; identical images
    share a fold. Without duplicates it equals kfold_splits."""
    from edgebus.data.split import kfold_splits

    label_of = {c.case_id: c.label for c in cases}
    members = {g[0]: g for g in groups}
    folds = kfold_splits(list(members), [label_of[r] for r in members], k, seed, val_fraction)
    return [_expand(f, members) for f in folds]


def leaks(split: dict, hashes: dict[int, dict]) -> list[dict]:
    """Content hashes found in more than one part of a split (should be empty)."""
    seen: dict = {}
    for part, ids in split.items():
        for i in ids:
            for kind in ("file", "pixels"):
                seen.setdefault((kind, hashes[i][kind]), {}).setdefault(part, []).append(i)
    return [{"hash": f"{kind}:{h[:16]}", "parts": parts} for (kind, h), parts in seen.items() if len(parts) > 1]


def check_split(split: dict, hashes: dict, where: str) -> None:
    found = leaks(split, hashes)
    if found:
        ex = found[0]
        raise EdgebusError(f"{where}: {len(found)} image(s) sit in two split parts by content hash "
                           f"(e.g. {ex['hash']} in {ex['parts']}); report this as a bug")


def content_summary(hashes: dict, groups: list, label_of: dict) -> dict:
    dups = duplicates(groups, label_of)
    return {"images": len(hashes), "unique": len(groups), "duplicate_groups": dups,
            "label_conflicts": sum(d["conflict"] for d in dups), "hash": "sha256 of file bytes and of decoded pixels"}


# --- bootstrap ----------------------------------------------------------------------------------


def flat_classification(m: dict) -> dict:
    """The numbers a table shows, flat: accuracy, AUC, per-class P/R/F1, macro F1."""
    out = {"accuracy": m["accuracy"], "auc": m["auc"]}
    for c in CLASS_NAMES:
        for k in ("precision", "recall", "f1"):
            out[f"{c}_{k}"] = m["per_class"][c][k]
    out["f1_macro"] = m["macro"]["f1"]
    out["malignant_recall"] = m["malignant_recall"]
    return out


CLASSIFY_KEYS = ("accuracy", "auc", "malignant_recall", "malignant_precision", "malignant_f1",
                 "benign_precision", "benign_recall", "benign_f1", "f1_macro")
SEGMENT_KEYS = ("iou", "dice")


def _pct(values, level):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return None, None
    a = (1 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def bootstrap_classification(y, prob, threshold: float = 0.5, n_boot: int = 2000, seed: int = 0,
                             level: float = 0.95) -> dict:
    """Percentile bootstrap over cases: {metric: {"value", "lo", "hi"}} for CLASSIFY_KEYS."""
    from edgebus.metrics import classification_metrics

    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    point = flat_classification(classification_metrics(y, p, threshold))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    yb, pb = y[idx], p[idx]
    pred = (pb >= threshold).astype(int)
    res: dict = {k: [] for k in CLASSIFY_KEYS}
    tp = ((pred == 1) & (yb == 1)).sum(1)
    tn = ((pred == 0) & (yb == 0)).sum(1)
    fp = ((pred == 1) & (yb == 0)).sum(1)
    fn = ((pred == 0) & (yb == 1)).sum(1)

    # A resample where a ratio is undefined (no case of the class, or none predicted) is left out
    # of that metric's interval rather than counted as 0.
    def ratio(a, b):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)

    def f1(pr, rc):
        return np.where(pr + rc > 0, 2 * pr * rc / np.maximum(pr + rc, 1e-12), np.where(np.isnan(pr + rc), np.nan, 0.0))

    res["accuracy"] = (tp + tn) / len(y)
    mp, mr = ratio(tp, tp + fp), ratio(tp, tp + fn)
    bp, br = ratio(tn, tn + fn), ratio(tn, tn + fp)
    res.update(malignant_precision=mp, malignant_recall=mr, malignant_f1=f1(mp, mr), benign_precision=bp,
               benign_recall=br, benign_f1=f1(bp, br), f1_macro=(f1(mp, mr) + f1(bp, br)) / 2)
    res["auc"] = [roc_auc(yb[b], pb[b]) for b in range(n_boot)]
    out = {}
    for k in CLASSIFY_KEYS:
        lo, hi = _pct(res[k], level)
        out[k] = {"value": point[k], "lo": lo, "hi": hi}
    out["_meta"] = {"n": int(len(y)), "resamples": n_boot, "seed": seed, "level": level, "method": "percentile, cases resampled"}
    return out


def bootstrap_means(values: dict, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap of the mean of each per-image array in `values` (same resamples for all)."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    n = len(next(iter(arrays.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    out = {}
    for k, a in arrays.items():
        lo, hi = _pct(a[idx].mean(1), level)
        out[k] = {"value": float(a.mean()), "lo": lo, "hi": hi}
    out["_meta"] = {"n": int(n), "resamples": n_boot, "seed": seed, "level": level, "method": "percentile, images resampled"}
    return out


def dice_from_iou(iou) -> list[float]:
    """Per image, Dice = 2 IoU / (1 + IoU) exactly (both are 1 for an empty truth and prediction)."""
    a = np.asarray(iou, dtype=np.float64)
    return [float(v) for v in 2 * a / (1 + a)]


def interval_text(ci: dict, pct: bool = False) -> str:
    if ci.get("value") is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    if ci.get("lo") is None:
        return f(ci["value"])
    return f"{f(ci['value'])} [{f(ci['lo'])}, {f(ci['hi'])}]"


# --- cross-validation ---------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class CVConfig(FitConfig):
    folds: int = 5
    epochs: int = 40
    lr: float = 1e-3
    val_fraction: float = 0.1
    keep: str = "best"  # as train(): the epoch with the best val accuracy (IoU) on the fold's own val part
    n_boot: int = 2000
    recipe: dict | None = None
    int8: bool = False  # also convert each fold's model to full-int8 TFLite and score it on the fold's test part
    int8_source: str = "ptq"  # or "qat": quantization-aware fine-tuning per fold, as `edgebus export --int8`
    qat_epochs: int = 3
    crop_margin: float | None = None  # lesion-crop classifier (segmentation-guided): train on mask crops
    boxes_from: str | None = None  # a segment CV directory (same folds) whose predicted boxes cut val/test


_CV_IDENTITY = ("task", "model", "folds", "size", "epochs", "lr", "batch", "seed", "weights", "model_kwargs",
                "val_fraction", "augment", "keep", "threshold", "int8", "crop_margin", "int8_source", "qat_epochs")

_EXIT_ENV = "EDGEBUS_EXIT_AFTER_UNITS"  # tests: os._exit after this many units are written


def _maybe_exit(written: int) -> None:
    n = os.environ.get(_EXIT_ENV)
    if n and written >= int(n):
        os._exit(75)


def open_results_dir(out: Path, task: str, kind: str, identity: dict, what: str, defaults: dict | None = None):
    """Create a grid/CV directory, or reopen one made with the same settings (to resume). A setting
    an older edgebus did not record matches its default (`defaults`)."""
    from edgebus.rundir import MANIFEST, Run

    if (out / MANIFEST).exists():
        run = Run.load(out)
        old = run.manifest.get(kind)
        if old is None:
            raise EdgebusError(f"{out}: holds a run that is not a {what}; pick another --out")
        for k, v in identity.items():
            if k not in old["identity"] and defaults and k in defaults and defaults[k] == v:
                continue
            if json.dumps(old["identity"].get(k), sort_keys=True) != json.dumps(v, sort_keys=True, default=str):
                raise EdgebusError(f"{out}: an earlier {what} there used {k}={old['identity'].get(k)!r}, not {v!r}; "
                                   f"pick another --out to start a new one")
        return run, False
    run = Run.create(out, task)
    return run, True


def _fold_record(task, f, fold, data, probs, metrics, kept_epoch, wall, threshold=0.5):
    rec = {"fold": f, "kept_epoch": kept_epoch, "wall_s": round(wall, 1), "val": metrics["val"],
           "test": metrics["test"], "test_ids": fold["test"], "finished": now()}
    if task == "classify":
        rec["test_prob"] = [round(float(v), 6) for v in np.asarray(probs["test"]).ravel()]
        rec["test_label"] = [int(v) for v in data["test"][1]]
    else:
        rec["test_iou"] = metrics["test"]["iou_per_image"]
        rec["test_dice"] = [round(v, 4) for v in dice_from_iou(metrics["test"]["iou_per_image"])]
        # the lesion boxes a crop classifier's cross-validation cuts its val/test frames with
        rec["val_ids"] = fold["val"]
        from edgebus.training.crops import predicted_boxes

        rec["boxes"] = {part: predicted_boxes(probs[part], threshold) for part in ("val", "test")}
    return rec


def _int8_fold(model, task, data, threshold, seed, test_x=None, qat: dict | None = None) -> dict:
    """Full-integer TFLite of a fold's model (calibrated on its own training part), scored on its
    test part with the interpreter, as the cart would run it (test_x: other test inputs, e.g. cut
    with the int8 segmenter's boxes). Post-training quantized; with `qat` ({"epochs", "lr",
    "batch"}) also quantization-aware fine-tuned on the fold's training part as `edgebus export
    --int8` does, and then the QAT file is the fold's int8 result and the PTQ file the comparison."""
    import tempfile

    from edgebus.export.tflite import convert, float_tensors
    from edgebus.metrics import task_metrics
    from edgebus.runtime import TFLiteModel

    xtr, ytr = data["train"][0], data["train"][1]
    calib = xtr[np.random.default_rng(seed).permutation(len(xtr))[:100]]
    x = data["test"][0] if test_x is None else test_x
    sources = {"ptq": model}
    if qat is not None:
        from edgebus.export import qat as q

        qmodel = q.quantize(model)
        q.calibrate_ranges(qmodel, calib, qat["batch"])
        q.fine_tune(qmodel, task, xtr, ytr, qat["epochs"], qat["lr"], qat["batch"], seed)
        sources["qat"] = qmodel
    probs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in sources.items():
            path = Path(tmp) / f"fold_int8_{name}.tflite"
            path.write_bytes(convert(m, "int8", calib))
            t = TFLiteModel(path)
            if float_tensors(t):
                raise EdgebusError(f"{path.name}: int8 conversion left float tensors; cannot score an int8 fold")
            probs[name] = t.predict(x)
    prob = probs["qat" if qat is not None else "ptq"]
    y = data["test"][1]
    rec = {"test_int8": task_metrics(task, y, prob, threshold), "int8_source": "qat" if qat is not None else "ptq"}
    if task == "classify":
        rec["test_prob_int8"] = [round(float(v), 6) for v in np.asarray(prob).ravel()]
        if qat is not None:
            rec["test_prob_int8_ptq"] = [round(float(v), 6) for v in np.asarray(probs["ptq"]).ravel()]
    else:
        rec["test_iou_int8"] = rec["test_int8"]["iou_per_image"]
        if qat is not None:
            rec["test_iou_int8_ptq"] = task_metrics(task, y, probs["ptq"], threshold)["iou_per_image"]
        from edgebus.training.crops import predicted_boxes

        rec["boxes_int8"] = {"test": predicted_boxes(prob, threshold)}
    return rec


def run_cv(cfg: CVConfig, progress: bool = False, log=print) -> dict:
    """k-fold cross-validation with fixed hyper-parameters; resumable (folds.jsonl); writes
    summary.json, report.md and (classification) the pooled confusion matrix PNG.

    A lesion-crop classifier (crop_margin) trains on crops around the true masks; its val and test
    crops are cut with the boxes a segmenter predicted in the same fold (boxes_from, honest: what
    the cart does) or, without boxes_from, around the true masks (an oracle, reported as such)."""
    from edgebus.data.breast import fingerprint
    from edgebus.metrics import task_metrics
    from edgebus.data.preprocess import preprocess_contract
    from edgebus.models.registry import model_task
    from edgebus.rundir import write_json
    from edgebus.training.train import (_KeepBest, build_compiled, classifier_only, device_name, fit_arrays,
                                        has_aux_mask, load_split_data, manifest_data, manifest_model, predict,
                                        read_lesions)

    task = model_task(cfg.model)
    if cfg.task and cfg.task != task:
        raise EdgebusError(f"model '{cfg.model}' is a {task} model; use 'edgebus cv {task}'")
    if cfg.keep not in ("best", "last"):
        raise EdgebusError(f"keep='{cfg.keep}': choose best or last")
    if cfg.int8_source not in ("ptq", "qat"):
        raise EdgebusError(f"--int8-source '{cfg.int8_source}': choose ptq or qat")
    ds, cases = read_lesions(cfg.data)
    by_id = {c.case_id: c for c in cases}
    label_of = {c.case_id: c.label for c in cases}
    hashes = content_hashes(cases)
    groups = content_groups(hashes)
    folds = grouped_kfold(cases, groups, cfg.folds, cfg.seed, cfg.val_fraction)
    for f, fold in enumerate(folds):
        check_split(fold, hashes, f"fold {f + 1} of {cfg.folds}")
    fp = fingerprint(ds)
    contract = preprocess_contract(cfg.size, 3, cfg.crop_margin)
    identity = {k: getattr(cfg, k) for k in _CV_IDENTITY}
    identity.update(task=task, data_fingerprint=fp)
    seg_boxes = None
    if cfg.boxes_from is not None:
        if cfg.crop_margin is None or task != "classify":
            raise EdgebusError("--boxes-from serves a lesion-crop classifier: give --crop-margin too")
        from edgebus.training.crops import segmenter_cv_boxes

        seg_boxes, identity["boxes_sha256"] = segmenter_cv_boxes(cfg.boxes_from, folds, fp)
    elif cfg.crop_margin is not None and task != "classify":
        raise EdgebusError("--crop-margin is for classifiers")
    out = Path(cfg.out or Path("runs") / f"cv-{cfg.model}-{cfg.size}")

    from edgebus.compat import keras, set_seed

    set_seed(cfg.seed)
    # a bad model name or weights file fails before the folder exists; this model serves the first fold
    model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
    defaults = {f.name: f.default for f in dataclasses.fields(CVConfig) if f.default is not dataclasses.MISSING}
    run, fresh = open_results_dir(out, task, "cv", identity, "cross-validation", defaults)
    if fresh:
        write_json(run.file("folds.json"), {"seed": cfg.seed, "k": cfg.folds, "val_fraction": cfg.val_fraction,
                                            "folds": folds})
        run.add_artifact("folds.json", "folds")
        run.manifest.update({
            "data": manifest_data(ds, fp, len(cases)),
            "model": manifest_model(cfg, task),
            "preprocess": contract,
            "threshold": cfg.threshold,
            "cv": {"identity": identity, "results": "folds.jsonl", "recipe": cfg.recipe,
                   "boxes_from": cfg.boxes_from,
                   "content_check": content_summary(hashes, groups, label_of)},
        })
        run.save()
    dups = run.manifest["cv"]["content_check"]["duplicate_groups"]
    if dups:
        log(f"note: {len(dups)} group(s) of identical images, kept in one fold each: "
            + "; ".join(str(d["case_ids"]) for d in dups[:5]))
    results = out / "folds.jsonl"
    repair_jsonl(results)
    done = {r["fold"] for r in read_jsonl(results)}
    written = 0
    for f, fold in enumerate(folds):
        if f in done:
            continue
        log(f"fold {f + 1}/{cfg.folds}: train {len(fold['train'])}, val {len(fold['val'])}, test {len(fold['test'])}")
        if model is None:
            keras.backend.clear_session()
            set_seed(cfg.seed)
            model = build_compiled(cfg.model, cfg.size, cfg.weights, cfg.model_kwargs, task)
        boxes = None if seg_boxes is None else {**seg_boxes[f]["val"], **seg_boxes[f]["test"]}
        data = load_split_data(by_id, fold, contract, task, boxes, masks=has_aux_mask(model))
        keep = _KeepBest(task)
        t0 = time.time()
        fit_arrays(model, task, cfg.lr, data, cfg.epochs, cfg.batch, cfg.seed, cfg.augment, [keep], progress)
        kept = cfg.epochs
        if cfg.keep == "best" and keep.weights is not None:
            model.set_weights(keep.weights)
            kept = keep.epoch
        model = classifier_only(model)
        probs = {k: predict(model, data[k][0], cfg.batch) for k in ("val", "test")}
        metrics = {k: task_metrics(task, data[k][1], probs[k], cfg.threshold) for k in probs}
        rec = _fold_record(task, f, fold, data, probs, metrics, kept, time.time() - t0, cfg.threshold)
        test_x8 = None
        if seg_boxes is not None:
            from edgebus.data.breast import load_arrays

            test_cases = [by_id[i] for i in fold["test"]]
            rec["crop_fallbacks"] = {k: sum(v is None for v in seg_boxes[f][k].values()) for k in seg_boxes[f]}
            # what segmentation errors cost: the same model on crops cut around the true masks
            x_gt = load_arrays(test_cases, contract)[0]
            p_gt = predict(model, x_gt, cfg.batch)
            rec["test_oracle"] = task_metrics(task, data["test"][1], p_gt, cfg.threshold)
            rec["test_prob_oracle"] = [round(float(v), 6) for v in np.asarray(p_gt).ravel()]
            if cfg.int8 and "test_int8" in seg_boxes[f]:
                test_x8 = load_arrays(test_cases, contract, boxes=seg_boxes[f]["test_int8"])[0]
        if cfg.int8:
            qat = None if cfg.int8_source == "ptq" else {"epochs": cfg.qat_epochs, "lr": 0.1 * cfg.lr, "batch": cfg.batch}
            rec.update(_int8_fold(model, task, data, cfg.threshold, cfg.seed, test_x8, qat))
            log(f"fold {f + 1}/{cfg.folds}: int8 test {_headline_text(task, rec['test_int8'])}")
        append_jsonl(results, rec)
        model = None
        written += 1
        h = _headline_text(task, metrics["test"])
        log(f"fold {f + 1}/{cfg.folds}: test {h} (kept epoch {kept})")
        _maybe_exit(written)
    summary = summarize_cv(out, cfg.n_boot)
    run = type(run).load(out)
    run.stage("cv", folds=cfg.folds, device=device_name(), finished=now())
    run.manifest["metrics"]["cv"] = {k: v for k, v in summary.items() if k in ("mean_std", "bootstrap")}
    run.save()
    return summary


def _headline_text(task: str, m: dict) -> str:
    if task == "classify":
        return f"accuracy {m['accuracy']:.3f}, malignant recall {m['malignant_recall']:.3f}, AUC {m['auc'] or 0:.3f}"
    return f"IoU {m['iou']:.3f}, Dice {m['dice']:.3f}"


def summarize_cv(out: str | Path, n_boot: int = 2000) -> dict:
    """mean +- std over folds and pooled bootstrap CIs; writes summary.json, report.md and figures."""
    from edgebus.metrics import classification_metrics
    from edgebus.rundir import Run, atomic_write, write_json

    out = Path(out)
    run = Run.load(out)
    task = run.task
    ident = run.manifest["cv"]["identity"]
    recs = {r["fold"]: r for r in read_jsonl(out / "folds.jsonl")}
    k = ident["folds"]
    missing = [f + 1 for f in range(k) if f not in recs]
    if missing:
        raise EdgebusError(f"{out}: fold(s) {missing} of {k} not done yet; run 'edgebus cv' again with the same settings")
    recs = [recs[f] for f in range(k)]
    keys = CLASSIFY_KEYS if task == "classify" else SEGMENT_KEYS
    per_fold = []
    for r in recs:
        flat = flat_classification(r["test"]) if task == "classify" else {"iou": r["test"]["iou"], "dice": r["test"]["dice"]}
        per_fold.append(flat)
    mean_std = {}
    for key in keys:
        v = np.asarray([p[key] for p in per_fold if p[key] is not None], dtype=np.float64)
        mean_std[key] = {"mean": float(v.mean()) if len(v) else None,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "folds": [p[key] for p in per_fold]}
    summary = {"task": task, "k": k, "model": ident["model"], "size": ident["size"], "lr": ident["lr"],
               "epochs": ident["epochs"], "crop_margin": ident.get("crop_margin"),
               "boxes_from": run.manifest["cv"].get("boxes_from"), "mean_std": mean_std}
    if task == "classify":
        y = np.concatenate([r["test_label"] for r in recs])
        p = np.concatenate([r["test_prob"] for r in recs])
        pooled = classification_metrics(y, p, ident["threshold"])
        summary["pooled"] = pooled
        summary["bootstrap"] = bootstrap_classification(y, p, ident["threshold"], n_boot, ident["seed"])
        if all("test_prob_int8" in r for r in recs):
            q = np.concatenate([r["test_prob_int8"] for r in recs])
            summary["pooled_int8"] = classification_metrics(y, q, ident["threshold"])
            summary["bootstrap_int8"] = bootstrap_classification(y, q, ident["threshold"], n_boot, ident["seed"])
            summary["int8_label_agreement"] = float(((p >= ident["threshold"]) == (q >= ident["threshold"])).mean())
            summary["int8_source"] = ident.get("int8_source") or "ptq"
        if all("test_prob_int8_ptq" in r for r in recs):
            q = np.concatenate([r["test_prob_int8_ptq"] for r in recs])
            summary["bootstrap_int8_ptq"] = bootstrap_classification(y, q, ident["threshold"], n_boot, ident["seed"])
        if all("test_prob_oracle" in r for r in recs):
            o = np.concatenate([r["test_prob_oracle"] for r in recs])
            summary["bootstrap_oracle"] = bootstrap_classification(y, o, ident["threshold"], n_boot, ident["seed"])
        if all("crop_fallbacks" in r for r in recs):
            summary["crop_fallbacks"] = {k: sum(r["crop_fallbacks"].get(k, 0) for r in recs)
                                         for k in recs[0]["crop_fallbacks"]}
        from edgebus.training.figures import confusion_matrix_plot

        confusion_matrix_plot(pooled["confusion_matrix"], out / "confusion_matrix.png",
                              f"{ident['model']}: pooled out-of-fold, {k} folds (n={len(y)})")
    else:
        iou = np.concatenate([r["test_iou"] for r in recs])
        dice = np.concatenate([r["test_dice"] for r in recs])
        summary["pooled"] = {"n": int(len(iou)), "iou": float(iou.mean()), "dice": float(dice.mean())}
        summary["bootstrap"] = bootstrap_means({"iou": iou, "dice": dice}, n_boot, ident["seed"])
        if all("test_iou_int8" in r for r in recs):
            iou8 = np.concatenate([r["test_iou_int8"] for r in recs])
            summary["pooled_int8"] = {"n": int(len(iou8)), "iou": float(iou8.mean()),
                                      "dice": float(np.mean(dice_from_iou(iou8)))}
            summary["bootstrap_int8"] = bootstrap_means({"iou": iou8, "dice": np.asarray(dice_from_iou(iou8))},
                                                        n_boot, ident["seed"])
    write_json(out / "summary.json", summary)
    atomic_write(out / "report.md", cv_markdown(summary, recs, run.manifest))
    return summary


def cv_markdown(summary: dict, recs: list, manifest: dict) -> str:
    task, k = summary["task"], summary["k"]
    ident = manifest["cv"]["identity"]
    cc = manifest["cv"]["content_check"]
    keys = CLASSIFY_KEYS if task == "classify" else SEGMENT_KEYS
    crop = ident.get("crop_margin")
    boxes_from = manifest["cv"].get("boxes_from")
    lines = [
        f"# {k}-fold cross-validation: {ident['model']} at {ident['size']} px"
        + (f", lesion-crop classifier (margin {crop:g})" if crop is not None else ""),
        "",
        f"Adam lr {ident['lr']:g}, {ident['epochs']} epochs, batch {ident['batch']}, seed {ident['seed']}, "
        f"weights {ident['weights']}, kept weights: {ident['keep']} (by each fold's own validation part). "
        f"Data fingerprint `{manifest['data']['fingerprint'][:12]}`, {manifest['data']['n_lesions']} lesion cases; "
        f"every case is in exactly one test fold.",
        "",
        f"Content check: {cc['images']} images, {cc['unique']} unique by {cc['hash']}; "
        + (f"{len(cc['duplicate_groups'])} duplicate group(s) kept within one fold "
           f"({cc['label_conflicts']} with conflicting labels)." if cc["duplicate_groups"] else "no duplicates; no image in two parts of any fold."),
        "",
        "| metric | mean +- std over folds | pooled out-of-fold [95% bootstrap CI] | per fold |",
        "|---|---|---|---|",
    ]
    if crop is not None:
        lines[4:4] = [
            "Segmentation-guided: every frame is cut to a square around the lesion (side = (1 + 2 x margin) x the "
            "box's longer side) before the resize. Training crops use the true masks; "
            + (f"val and test crops use the boxes a segmenter predicted in the same fold, never having seen those "
               f"images (`{boxes_from}`; the int8 rows use the int8 segmenter's boxes), as on the cart."
               if boxes_from else "val and test crops ALSO use the true masks: an oracle upper bound, not a cart result."),
            "",
        ]
    for key in keys:
        ms = summary["mean_std"][key]
        b = summary["bootstrap"][key]
        folds = ", ".join("n/a" if v is None else f"{v:.3f}" for v in ms["folds"])
        mean = "n/a" if ms["mean"] is None else f"{ms['mean']:.3f} +- {ms['std']:.3f}"
        lines.append(f"| {key} | {mean} | {interval_text(b)} | {folds} |")
    if "bootstrap_int8" in summary and "bootstrap_int8_ptq" in summary:
        lines += ["", f"Full-int8 TFLite (each fold's model, quantization-aware fine-tuned for {ident.get('qat_epochs')} "
                  f"epochs at lr {0.1 * ident['lr']:g} on its own training part, as `edgebus export --int8`; and, for "
                  "comparison, post-training quantized), run with the interpreter on its test part:", "",
                  "| metric | pooled out-of-fold int8 QAT [95% bootstrap CI] | int8 PTQ |", "|---|---|---|"]
        lines += [f"| {key} | {interval_text(summary['bootstrap_int8'][key])} | "
                  f"{interval_text(summary['bootstrap_int8_ptq'][key])} |" for key in keys if key in summary["bootstrap_int8"]]
    elif "bootstrap_int8" in summary:
        lines += ["", "Full-int8 TFLite (each fold's model, post-training quantized on its own training part, run "
                  "with the interpreter on its test part):", "",
                  "| metric | pooled out-of-fold int8 [95% bootstrap CI] |", "|---|---|"]
        lines += [f"| {key} | {interval_text(summary['bootstrap_int8'][key])} |" for key in keys
                  if key in summary["bootstrap_int8"]]
        if "int8_label_agreement" in summary:
            lines.append(f"\nint8 vs float label agreement (pooled): {summary['int8_label_agreement']:.3f}")
    if "bootstrap_oracle" in summary:
        lines += ["", "The same float models on crops around the TRUE masks (what segmentation errors cost):", "",
                  "| metric | pooled out-of-fold, true-mask crops [95% bootstrap CI] |", "|---|---|"]
        lines += [f"| {key} | {interval_text(summary['bootstrap_oracle'][key])} |" for key in keys]
    if "crop_fallbacks" in summary:
        fb = summary["crop_fallbacks"]
        lines.append("\nFrames where the segmenter found no lesion (classified whole, padded to a square): "
                     + ", ".join(f"{k} {v}" for k, v in fb.items()))
    meta = summary["bootstrap"]["_meta"]
    lines += ["", f"Bootstrap: {meta['method']}, {meta['resamples']} resamples, seed {meta['seed']}, n={meta['n']}. "
              "An interval shown without brackets was undefined in the resamples (e.g. no case predicted malignant)."]
    if task == "classify":
        lines += ["", "The pooled AUC ranks scores of k different models against each other; the mean of the "
                  "per-fold AUCs is the cleaner estimate of one model's ranking quality."]
    if task == "classify":
        lines += ["", classification_report_md(summary["pooled"], "pooled out-of-fold predictions"), "",
                  "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "| fold | test n | kept epoch | wall s |", "|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['fold'] + 1} | {r['test']['n']} | {r['kept_epoch']} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def classification_report_md(m: dict, title: str = "") -> str:
    """sklearn-style classification report as a markdown table, plus accuracy and ROC AUC."""
    lines = [f"Classification report{': ' + title if title else ''} (n={m['n']}, threshold {m['threshold']:g})", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in CLASS_NAMES:
        pc = m["per_class"][c]
        lines.append(f"| {c} | {pc['precision']:.4f} | {pc['recall']:.4f} | {pc['f1']:.4f} | {pc['support']} |")
    for avg in ("macro", "weighted"):
        a = m[avg]
        lines.append(f"| {avg} avg | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | {m['n']} |")
    auc = "n/a (one class)" if m["auc"] is None else f"{m['auc']:.4f}"
    lines += ["", f"accuracy {m['accuracy']:.4f}; ROC AUC {auc}; confusion matrix (rows truth, columns predicted, "
              f"benign/malignant) {m['confusion_matrix']}"]
    return "\n".join(lines)
