"""The calibration edgebus would choose (edgebus.evaluation.calibration_choice) for a committed CV's out-of-fold
int8 scores, with slopes per held-out fold and scanner setting. Made the table beside it:

    python training/results/calibration/choose_from_folds.py training/results/robust2-ens3/folds.jsonl \
        ../shared/data/BrEaST-Lesions_USG > training/results/calibration/recommended-classifier.md
"""
import json
import sys

import numpy as np

from edgebus.evaluation.calibration_choice import calibration_md, choose

recs = sorted((json.loads(line) for line in open(sys.argv[1])), key=lambda r: r["fold"])
key = "test_prob_int8" if "test_prob_int8" in recs[0] else "test_prob"
y = np.concatenate([r["test_label"] for r in recs])
p = np.concatenate([r[key] for r in recs])
fold = np.concatenate([[r["fold"]] * len(r["test_label"]) for r in recs])
ids = [i for r in recs for i in r["test_ids"]]
print(f"# {sys.argv[1]}: {key}, n = {len(y)}\n")
print("\n".join(calibration_md(choose(y, p, fold, ids, sys.argv[2]), "malignancy probability")))
