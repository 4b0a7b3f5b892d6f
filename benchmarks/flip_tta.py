"""Would averaging each frame with its mirror image (flip test-time augmentation) pay on the cart? Rule 9 of
training/results/robustness.md.

Scores every case out of fold with its own fold's int8 classifier (ensemble), on the frame and on its left-right
mirror, both cut to the image area as the cart cuts them, measures the lesion shape as `edgebus fuse` does, and
fits the fused logistic model cross-fitted on the CV's folds for each arm: the classifier's score alone, and
averaged with the mirrored frame's. Prints AUC [95% bootstrap CI] and the cross-fitted sensitivity /
specificity at the threshold for sensitivity 0.90, per arm.

    python benchmarks/flip_tta.py CLS_CV SEG_CV
"""

import sys
from pathlib import Path

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import crossfit_operating_point
from edgebus.core.manifest import Run
from edgebus.core.metrics import roc_auc
from edgebus.core.stats import bootstrap_classification, interval_text
from edgebus.data.preprocess import cut_area, load_gray, to_model_input
from edgebus.evaluation.shape_fusion import fusion_inputs
from edgebus.evaluation.stress import _cv_groups


def main(cls: Path, seg: Path) -> None:
    inp = fusion_inputs(cls, seg)
    pos = {i: k for k, i in enumerate(inp["ids"])}
    run = Run.load(cls)
    contract = run.manifest.preprocess
    plain, flipped = np.zeros(len(pos)), np.zeros(len(pos))
    for g in _cv_groups(run, cls):
        grays = [cut_area(load_gray(c.image))[0] for c in g.cases]
        idx = [pos[c.case_id] for c in g.cases]
        plain[idx] = g.int8_model.predict(np.stack([to_model_input(x, contract) for x in grays])).ravel()
        flipped[idx] = g.int8_model.predict(np.stack([to_model_input(x[:, ::-1].copy(), contract) for x in grays])).ravel()
    y, fold = inp["y"], inp["fold"]
    print("| classifier score | classifier AUC | fused AUC [95% CI] | sensitivity / specificity, cross-fitted 0.90 |")
    print("|---|---|---|---|")
    for name, p in (("the frame", plain), ("frame and mirror averaged", (plain + flipped) / 2)):
        fused = fusion.cross_fitted(fusion.feature_rows(p, inp["shapes"]), y, fold, "fused")
        op = crossfit_operating_point(y, fused, fold, 0.9)["cross_fitted"]
        print(f"| {name} | {roc_auc(y, p):.3f} | {interval_text(bootstrap_classification(y, fused)['auc'])} | "
              f"{op['sensitivity']:.3f} / {op['specificity']:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
