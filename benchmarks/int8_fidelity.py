"""int8 fidelity out of fold (issue 30): each fold's float model of a CV made on the real set, made int8
four ways on its own training part, every file scored by the interpreter on the fold's test part:

- float: the fold's Keras model (the parent);
- PTQ: post-training calibration only;
- QAT (labels): 3 quantization-aware epochs fitted to the labels (what `edgebus export --int8` did before);
- QAT (distilled): the same epochs fitted to the parent's outputs (`--qat-distill 1`, the default now);
- float_noise: the parent again, on its test frames plus Gaussian gray-level noise of sigma 1/255 (seeded):
  how far the parent is from itself under a change no reader would see, the floor for any int8 copy.

Every variant gets its own operating point the way the cart's is chosen (0.9 sensitivity on its own pooled
out-of-fold scores, Platt-calibrated); flips are counted with the parent at its own point. Resumable: one
line per fold and variant in OUT/folds.jsonl.

    python benchmarks/int8_fidelity.py CV_DIR [--out DIR] [--variants ptq,qat_labels,qat_distilled]
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {"ptq": None, "qat_labels": 0.0, "qat_distilled": 1.0}  # name -> QAT distillation weight (None: no QAT)
NOISE = "float_noise"  # the parent itself on its test frames plus one gray level of noise: the floor no copy can beat


def fold_records(cv_dir: Path, out: Path, variants: list[str], log=print, max_folds: int | None = None) -> list[dict]:
    from edgebus.core.io import append_jsonl, read_jsonl
    from edgebus.core.manifest import Run
    from edgebus.data.arrays import load_split_data, run_dataset
    from edgebus.engine.augment import augment_name
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_model
    from edgebus.export.int8 import QAT_LR_FRACTION, calibration_set, int8_probs, qat_model

    run = Run.load(cv_dir)
    ident, task = run.manifest.cv["identity"], run.task
    folds = json.loads((cv_dir / "folds.json").read_text())["folds"]
    by_id = {c.case_id: c for c in run_dataset(run).lesions()}
    results = out / "folds.jsonl"
    done = {(r["fold"], r["variant"]) for r in read_jsonl(results)} if results.is_file() else set()
    for f, fold in enumerate(folds[:max_folds]):
        if not (cv_dir / f"fold{f}" / "model.keras").is_file():
            log(f"fold {f + 1}: no model.keras yet (the CV has not finished it); stopping here")
            break
        todo = [v for v in ["float", *variants] if (f, v) not in done]
        if not todo:
            continue
        data = load_split_data(by_id, fold, run.manifest.preprocess, task)
        model = load_model(cv_dir / f"fold{f}" / "model.keras", run.manifest.model)
        xte, yte = data["test"][:2]
        calib = calibration_set(data["train"][0], 100, ident["seed"])
        for v in todo:
            t0 = time.time()
            if v == "float":
                prob = predict(model, xte)
            elif v == NOISE:
                noise = np.random.default_rng(f).normal(0, 1 / 255, xte.shape[:-1] + (1,))
                prob = predict(model, np.clip(xte + noise, 0, 1).astype(np.float32))
            else:
                m = model if VARIANTS[v] is None else qat_model(
                    model, task, data["train"], calib, ident["qat_epochs"], QAT_LR_FRACTION * ident["lr"], ident["batch"],
                    ident["seed"], augment=augment_name(ident["augment"]), distill=VARIANTS[v])[0]
                prob = int8_probs({v: m}, task, calib, run.manifest.preprocess, 0.5, xte)[v]
            rec = {"fold": f, "variant": v, "test_ids": fold["test"], "wall_s": round(time.time() - t0, 1)}
            if task.truth_is_mask:  # per image: IoU against the truth, and the mask itself as packed bits (base64)
                rec["iou_truth"] = [round(float(x), 5) for x in task.metrics(yte, prob)["iou_per_image"]]
                rec["masks"] = [base64.b64encode(np.packbits(np.asarray(m) >= 0.5).tobytes()).decode() for m in prob]
            else:
                rec["truth"] = np.asarray(yte).astype(int).ravel().tolist()
                rec["prob"] = [round(float(p), 6) for p in np.asarray(prob).ravel()]
            append_jsonl(results, rec)
            log(f"fold {f + 1}/{len(folds)} {v}: {rec['wall_s']} s")
    return read_jsonl(results)


def classify_table(recs: list[dict], variants: list[str], target: float = 0.9) -> tuple[list[str], dict]:
    from edgebus.core.calibration import crossfit_operating_point
    from edgebus.core.metrics import label_flips, roc_auc

    pooled = {}
    for v in ["float", *variants]:
        rs = sorted((r for r in recs if r["variant"] == v), key=lambda r: r["fold"])
        pooled[v] = {"y": np.concatenate([r["truth"] for r in rs]), "p": np.concatenate([r["prob"] for r in rs]),
                     "fold": np.concatenate([[r["fold"]] * len(r["prob"]) for r in rs])}
        pooled[v]["op"] = crossfit_operating_point(pooled[v]["y"], pooled[v]["p"], pooled[v]["fold"], target, n_boot=200)
    ref = pooled["float"]
    t_ref = ref["op"]["threshold"]
    rows = ["| model | its threshold | AUC | malignant recall (cases missed) | flips at own threshold: b→m / m→b "
            "of n | flips at the float threshold | abs Δp median / p95 / max | worst fold: cases missed beyond float |",
            "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for v, d in pooled.items():
        t = d["op"]["threshold"]
        f_own = label_flips(ref["p"], d["p"], t_ref, t, truth=d["y"])
        f_same = label_flips(ref["p"], d["p"], t_ref, t_ref)
        per_fold = []
        for k in np.unique(d["fold"]):
            m = d["fold"] == k
            per_fold.append(label_flips(ref["p"][m], d["p"][m], t_ref, t, truth=d["y"][m]))
        worst = max(pf["missed"] - pf["missed_float"] for pf in per_fold)
        auc = roc_auc(d["y"], d["p"])
        summary[v] = {"threshold": t, "auc": auc, "missed": f_own["missed"], "malignant": f_own["malignant"],
                      "flips_own": f_own, "flips_at_float_threshold": f_same["flips"], "worst_fold_extra_missed": worst,
                      "per_fold": [{k: pf[k] for k in ("n", "flips", "missed", "missed_float", "malignant")} for pf in per_fold]}
        recall = 1 - f_own["missed"] / f_own["malignant"]
        name = "float (parent)" if v == "float" else v
        rows.append(f"| {name} | {t:.4f} | {auc:.3f} | {recall:.3f} ({f_own['missed']} of {f_own['malignant']}) | "
                    f"{f_own['benign_to_malignant']} / {f_own['malignant_to_benign']} of {f_own['n']} | {f_same['flips']} | "
                    f"{f_own['median_abs_diff']:.3f} / {f_own['p95_abs_diff']:.3f} / {f_own['max_abs_diff']:.3f} | "
                    f"{worst:+d} |")
    return rows, summary


def segment_table(recs: list[dict], variants: list[str]) -> tuple[list[str], dict]:
    def masks(r):
        return np.stack([np.frombuffer(base64.b64decode(m), np.uint8) for m in r["masks"]])

    rows = ["| model | test IoU (mean per image) | mask IoU vs float: mean / median / min | images below 0.9 |",
            "|---|---|---|---|"]
    ref = {r["fold"]: np.unpackbits(masks(r), axis=1).astype(bool) for r in recs if r["variant"] == "float"}
    summary = {}
    for v in ["float", *variants]:
        rs = sorted((r for r in recs if r["variant"] == v), key=lambda r: r["fold"])
        iou_truth = np.concatenate([r["iou_truth"] for r in rs])
        agree = []
        for r in rs:
            a, b = ref[r["fold"]], np.unpackbits(masks(r), axis=1).astype(bool)
            inter, union = (a & b).sum(1), (a | b).sum(1)
            agree.append(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
        agree = np.concatenate(agree)
        summary[v] = {"iou": float(iou_truth.mean()), "mask_iou_mean": float(agree.mean()),
                      "mask_iou_median": float(np.median(agree)), "mask_iou_min": float(agree.min()),
                      "below_0.9": int((agree < 0.9).sum()), "n": int(len(agree))}
        s = summary[v]
        rows.append(f"| {'float (parent)' if v == 'float' else v} | {s['iou']:.3f} | {s['mask_iou_mean']:.3f} / "
                    f"{s['mask_iou_median']:.3f} / {s['mask_iou_min']:.3f} | {s['below_0.9']} of {s['n']} |")
    return rows, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cv", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--variants", default=",".join([*VARIANTS, NOISE]))
    ap.add_argument("--folds", type=int, default=None, help="only the first N folds (a reduced run; the table says so)")
    a = ap.parse_args()
    from edgebus.core.io import write_json
    from edgebus.core.manifest import Run

    variants = [v for v in a.variants.split(",") if v]
    out = a.out or a.cv / "int8-fidelity"
    out.mkdir(parents=True, exist_ok=True)
    recs = fold_records(a.cv, out, variants, max_folds=a.folds)
    done = [f for f in sorted({r["fold"] for r in recs}) if all((f, v) in {(r["fold"], r["variant"]) for r in recs}
                                                                  for v in ["float", *variants])]
    recs = [r for r in recs if r["fold"] in done]
    run = Run.load(a.cv)
    rows, summary = (segment_table if run.task.truth_is_mask else classify_table)(recs, variants)
    ident = run.manifest.cv["identity"]
    part = "" if len(done) == ident["folds"] else f" (REDUCED: folds {', '.join(str(f + 1) for f in done)} only)"
    head = (f"{ident['model']} at {ident['size']} px, {ident['folds']} folds grouped by {ident.get('group_by', 'case')}{part} "
            f"(`{a.cv}`), QAT {ident['qat_epochs']} epochs at lr {0.1 * ident['lr']:g}, batch {ident['batch']}, "
            f"augment {ident['augment']}")
    write_json(out / "summary.json", {"cv": str(a.cv), "identity": ident, "folds_done": done, "variants": summary})
    (out / "table.md").write_text("\n".join([head, "", *rows, ""]))
    print("\n".join([head, "", *rows]))


if __name__ == "__main__":
    main()
