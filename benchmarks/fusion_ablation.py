"""What else would add to the cart's malignancy fusion (classifier + lesion shape)? Rules 4 and 5 of
training/results/robustness.md.

Measures every case exactly as `edgebus fuse` does (each fold's int8 segmenter on its own test frames, the
cart's path), then scores logistic models cross-fitted on the CVs' folds: the cart's (classifier logit +
shape), + the echo-pattern numbers (edgebus.core.echo), and for each further classifier CV on the same folds
(e.g. a lesion-crop classifier): + its int8 logit, and it alone + shape. OTHER may join several seeds' CVs of
the same folds with "+" (A+B+C): their out-of-fold probabilities are averaged, as a seed ensemble's fold models
are. Prints a markdown table: AUC [95% bootstrap CI] and the cross-fitted sensitivity / specificity at the
threshold for sensitivity 0.90.

    python benchmarks/fusion_ablation.py CLS_CV SEG_CV [OTHER_CLS_CV[+OTHER_SEED_CV...] ...]
"""

import sys

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import crossfit_operating_point, logit
from edgebus.core.io import read_json, read_jsonl
from edgebus.core.stats import bootstrap_classification, interval_text
from edgebus.evaluation.shape_fusion import fusion_inputs


def cross_fitted(x, y, fold):
    out = np.zeros(len(y))
    names = [str(i) for i in range(x.shape[1])]
    for f in np.unique(fold):
        model = fusion.fit_logistic(x[fold != f], y[fold != f], names, "ablation")
        out[fold == f] = fusion.predict(model, x[fold == f], names)
    return out


def other_logit(cvs, inp) -> np.ndarray:
    """Other classifier CVs' out-of-fold int8 probabilities ("A+B": averaged), as logits in the order of
    inp["ids"] (the same folds)."""
    probs = []
    for cv in cvs.split("+"):
        if read_json(f"{cv}/folds.json")["folds"] != read_json(f"{inp['cls_cv']}/folds.json")["folds"]:
            raise SystemExit(f"{cv}: its folds differ from {inp['cls_cv']}'s")
        prob = {i: p for r in read_jsonl(f"{cv}/folds.jsonl") for i, p in zip(r["test_ids"], r["test_prob_int8"])}
        probs.append([prob[i] for i in inp["ids"]])
    return logit(np.mean(probs, axis=0))


def main(cls_cv, seg_cv, *others) -> str:
    inp = fusion_inputs(cls_cv, seg_cv) | {"cls_cv": cls_cv}
    y, fold, x, m = inp["y"], inp["fold"], inp["x"], inp["m"]
    shape, echo = x[:, 1:], m[:, len(fusion.MEASURES) - 3:]
    rows = [("classifier + shape (the cart's)", x), ("classifier + shape + echo", np.c_[x, echo])]
    for cv in others:
        extra = other_logit(cv, inp)[:, None]
        rows += [(f"`{cv}` alone", extra), (f"`{cv}` + shape", np.c_[extra, shape]),
                 (f"classifier + shape + `{cv}`", np.c_[x, extra])]
    lines = [f"Classifier CV `{cls_cv}`, segment CV `{seg_cv}` ({inp['group_by']} folds, n={len(y)}, int8)", "",
             "| malignancy model | AUC [95% CI] | sensitivity / specificity, cross-fitted threshold for 0.90 |",
             "|---|---|---|"]
    for name, cols in rows:
        s = cross_fitted(cols, y, fold)
        c = crossfit_operating_point(y, s, fold, 0.9)["cross_fitted"]
        lines.append(f"| {name} | {interval_text(bootstrap_classification(y, s)['auc'])} | "
                     f"{c['sensitivity']:.3f} / {c['specificity']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
