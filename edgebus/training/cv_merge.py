"""`edgebus cv-merge`: a seed ensemble measured honestly. Several CVs on the SAME folds (same data,
folds and settings, other training seeds: `edgebus cv ... --seed 1 --fold-seed 0`) become one CV
directory whose fold k averages the members' fold-k models. Every case is still scored by models
that never saw it, so what averaging buys (AUC, calibration, stress worst case) is measured out
of fold, against each member alone.

This is the proxy for the cart's fold ensemble (`edgebus bundle --classifier CV_DIR`), whose own
out-of-sample score no data set here can give: each of its members trained on 4/5 of the cases.

The merged folder is a CV directory like any other: `operating-point`, `stress` and `bundle` read
it. Each fold's member models are copied into it (fold<k>/m<j>/), sha256-checked, so it stands
alone on a cart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import append_jsonl, make_dir, now, read_jsonl, sha256_file, staging, write_json
from edgebus.core.manifest import MANIFEST, Run
from edgebus.runtime.ensemble import member_files

# settings that must agree for the members' folds to be averaged (seed is what differs)
_SAME = ("task", "model", "folds", "size", "val_fraction", "keep", "threshold", "int8", "int8_source", "qat_distill", "crop_margin",
         "normalize", "descriptors", "data_fingerprint")
_AVERAGED = ("test_prob_int8_ptq", "test_descriptor_prob")  # comparisons, averaged as recorded


def _member(path: Path) -> tuple[Run, list[dict], dict]:
    if not (path / MANIFEST).is_file():
        raise EdgebusError(f"{path}: not a CV folder (no {MANIFEST}); pass folders 'edgebus cv' wrote")
    run = Run.load(path)
    if run.manifest.cv is None:
        raise EdgebusError(f"{path}: not a cross-validation folder")
    if run.manifest.cv.get("members"):
        raise EdgebusError(f"{path}: a merged CV already; merge the CVs it was made from")
    if run.task.truth_is_mask:
        raise EdgebusError(f"{path}: a segmenter CV; cv-merge averages classifiers")
    k = run.manifest.cv["identity"]["folds"]
    recs = sorted(read_jsonl(path / "folds.jsonl", key="fold"), key=lambda r: r["fold"])
    if len(recs) != k:
        raise EdgebusError(f"{path}: {len(recs)} of {k} folds done; finish 'edgebus cv' first")
    return run, recs, run.read_artifact_json("folds.json")


def merge_cv(members: list[str | Path], out: str | Path, n_boot: int = 2000, log=print) -> dict:
    """Average the fold models of `members` (CVs on the same folds) into the CV directory `out`;
    returns its summary (edgebus.training.cv_summary.summarize_cv)."""
    members = [Path(m) for m in members]
    if len(members) < 2:
        raise EdgebusError(f"cv-merge: give two or more CV folders (the same folds, other {flag('seed')})")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EdgebusError(f"{out}: exists; cv-merge writes a new folder, pick another {flag('out')}")
    loaded = [_member(m) for m in members]
    run0, recs0, folds0 = loaded[0]
    id0 = run0.manifest.cv["identity"]
    seeds = []
    for path, (run, recs, folds) in zip(members, loaded):
        ident = run.manifest.cv["identity"]
        diff = [k for k in _SAME if json.dumps(ident.get(k), sort_keys=True) != json.dumps(id0.get(k), sort_keys=True)]
        if diff:
            raise EdgebusError(f"{path}: differs from {members[0]} in {', '.join(diff)}; merge CVs made with the same settings")
        if folds["folds"] != folds0["folds"]:
            raise EdgebusError(f"{path}: other folds than {members[0]}; run it with {flag('fold_seed')} "
                               f"{folds0['seed']}")
        if run.manifest.preprocess != run0.manifest.preprocess:
            raise EdgebusError(f"{path}: another preprocessing contract than {members[0]}")
        seeds.append(ident["seed"])
    if len(set(seeds)) < len(seeds):
        raise EdgebusError(f"cv-merge: members share a training seed ({seeds}); the same seed gives the same models")
    if id0.get("crop_margin") is not None:
        raise EdgebusError(f"{members[0]}: a lesion-crop CV; cv-merge averages whole-frame classifiers")
    task, thr = run0.task, id0["threshold"]
    from edgebus.data.arrays import run_dataset

    by_id = {c.case_id: c for c in run_dataset(run0).lesions()}
    make_dir(out.parent, flag("out"))
    with staging(out) as tmp:  # built aside in a fresh temp folder, renamed into place complete
        summary = _merge_into(tmp, members, loaded, seeds, by_id, task, thr, id0, run0, folds0, n_boot)
    log(f"{out}: {len(members)} CVs (seeds {seeds}) averaged fold by fold")
    return summary


def _merge_into(tmp, members, loaded, seeds, by_id, task, thr, id0, run0, folds0, n_boot) -> dict:
    """Write the merged CV into the temp folder `tmp`."""
    from edgebus.data.breast import load_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_model
    from edgebus.runtime.ensemble import EnsembleModel
    from edgebus.training.cv_summary import summarize_cv

    run = Run.create(tmp, task.name)
    m = run.manifest
    m.data, m.model, m.preprocess, m.threshold = run0.manifest.data, run0.manifest.model, run0.manifest.preprocess, thr
    identity = {**id0, "seed": seeds[0], "seeds": seeds, "members": len(members)}
    m.cv = {"identity": identity, "results": "folds.jsonl", "recipe": run0.manifest.cv.get("recipe"),
            "members": [{"folder": str(p.resolve()), "seed": s} for p, s in zip(members, seeds)],
            "combine": "mean of the members' outputs, fold by fold", "content_check": run0.manifest.cv.get("content_check")}
    write_json(run.file("folds.json"), folds0)
    run.add_artifact("folds.json", "folds")
    run.save()
    for f in range(id0["folds"]):
        recs = [loaded[j][1][f] for j in range(len(members))]
        if any(r["test_ids"] != recs[0]["test_ids"] for r in recs):
            raise EdgebusError(f"{members[0]}: fold {f + 1} lists other test cases than a member's; re-run the CVs")
        rec = {"fold": f, "test_ids": recs[0]["test_ids"], "test_label": recs[0]["test_label"], "finished": now(),
               "kept_epoch": [r["kept_epoch"] for r in recs], "wall_s": round(sum(r["wall_s"] for r in recs), 1),
               "members": []}
        for key in _AVERAGED:
            if all(key in r for r in recs):
                rec[key] = np.round(np.mean([np.asarray(r[key], np.float64) for r in recs], axis=0), 6).tolist()
        for key in ("test_descriptors", "int8_source"):
            if key in recs[0]:
                rec[key] = recs[0][key]
        for j, (path, r) in enumerate(zip(members, recs)):
            dest = make_dir(tmp / f"fold{f}" / f"m{j}", flag("out"))
            files = {}
            for name, src in member_files(r, path)[0].items():  # sha256-checked
                shutil.copyfile(src, dest / name)
                files[name] = {"file": f"fold{f}/m{j}/{name}", "sha256": sha256_file(dest / name)}
            if "model.keras" not in files:
                raise EdgebusError(f"{path}: fold {f + 1} kept no model; re-run it with this edgebus")
            rec["members"].append(files)
        # the ensemble's own outputs on the fold's test part, as stress and the cart compute them (averaging
        # the members' recorded, rounded probabilities would move ties between quantized int8 outputs)
        x, y, _ = load_arrays([by_id[i] for i in rec["test_ids"]], run0.manifest.preprocess)
        if y.tolist() != rec["test_label"]:
            raise EdgebusError(f"{members[0]}: fold {f + 1}'s labels differ from the data set's; re-run the CVs")
        p = np.mean([predict(load_model(tmp / g["model.keras"]["file"], run0.manifest.model), x) for g in rec["members"]],
                    axis=0)
        rec["test_prob"] = np.round(np.asarray(p, np.float64).ravel(), 6).tolist()
        rec["test"] = task.metrics(y, p, thr)
        rec["val"] = None  # each member kept its own epoch on its own validation part
        if all("model_int8.tflite" in g for g in rec["members"]):
            q = EnsembleModel([tmp / g["model_int8.tflite"]["file"] for g in rec["members"]], thr).predict(x)
            rec["test_prob_int8"] = np.round(np.asarray(q, np.float64).ravel(), 6).tolist()
            rec["test_int8"] = task.metrics(y, q, thr)
        append_jsonl(tmp / "folds.jsonl", rec)
    summary = summarize_cv(tmp, n_boot)
    run = Run.load(tmp)
    run.stage("cv-merge", members=len(members), finished=now())
    run.save()
    return summary

