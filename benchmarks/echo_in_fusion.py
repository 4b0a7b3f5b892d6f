"""Rule 4 of training/results/robustness.md: do the echo-pattern numbers beside the mask (edgebus.core.echo)
add to the malignancy fusion of classifier + lesion shape?

Measures every case exactly as `edgebus fuse` does (each fold's int8 segmenter on its own test frames, the
cart's path), then scores two logistic models cross-fitted on the CVs' folds: classifier logit + shape, and
the same + echo, echo-posterior, heterogeneity. Prints a markdown table: AUC [95% bootstrap CI] and the
cross-fitted sensitivity / specificity at the threshold for sensitivity 0.90.

    python benchmarks/echo_in_fusion.py CLS_CV SEG_CV
"""

import sys

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import crossfit_operating_point
from edgebus.core.stats import bootstrap_classification, interval_text
from edgebus.training.shape_fusion import fusion_inputs


def cross_fitted(x, y, fold):
    out = np.zeros(len(y))
    names = [str(i) for i in range(x.shape[1])]
    for f in np.unique(fold):
        model = fusion.fit_logistic(x[fold != f], y[fold != f], names, "rule4")
        out[fold == f] = fusion.predict(model, x[fold == f], names)
    return out


def main(cls_cv, seg_cv) -> str:
    inp = fusion_inputs(cls_cv, seg_cv)
    y, fold, x, m = inp["y"], inp["fold"], inp["x"], inp["m"]
    echo = m[:, len(fusion.MEASURES) - 3:]
    lines = [f"Classifier CV `{cls_cv}`, segment CV `{seg_cv}` ({inp['group_by']} folds, n={len(y)}, int8)", "",
             "| malignancy model | AUC [95% CI] | sensitivity / specificity, cross-fitted threshold for 0.90 |",
             "|---|---|---|"]
    for name, cols in (("classifier + shape (the cart's)", x), ("classifier + shape + echo", np.c_[x, echo])):
        s = cross_fitted(cols, y, fold)
        c = crossfit_operating_point(y, s, fold, 0.9)["cross_fitted"]
        lines.append(f"| {name} | {interval_text(bootstrap_classification(y, s)['auc'])} | "
                     f"{c['sensitivity']:.3f} / {c['specificity']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
