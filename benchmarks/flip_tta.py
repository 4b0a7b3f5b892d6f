"""Would averaging each frame with its mirror image (flip test-time augmentation) pay on the cart? Rule 9 of
training/results/robustness.md.

Scores every case out of fold with its own fold's int8 classifier (ensemble), on the frame and on its left-right
mirror, both cut to the image area as the cart cuts them, measures the lesion shape as `edgebus fuse` does, and
fits the fused logistic model cross-fitted on the CV's folds for each arm: the classifier's score alone, and
averaged with the mirrored frame's, and (Rule 18 of training/results/clinic.md) both that and the segmenter's map
averaged with its mirrored frame's (mirrored back) before the shape is measured. Prints AUC [95% bootstrap CI] and
the cross-fitted sensitivity / specificity at the threshold for sensitivity 0.90, per arm, and the IoU of the mask
the cart shows (largest region at the frame's size) from the segmenter's map with and without the flip.

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
from edgebus.data.breast import case_mask
from edgebus.data.preprocess import cut_area, load_gray, to_model_input
from edgebus.evaluation.shape_fusion import fusion_inputs
from edgebus.evaluation.stress import _cv_groups, cart_mask_scores
from edgebus.runtime.fusion import measure_lesion


def flipped_shapes(inp: dict, cases: dict) -> tuple[list, dict]:
    """(the lesion shape of every case from its fold's int8 segmenter's map averaged over the frame and its mirror,
    the cart-mask IoU of the plain and of the averaged maps)."""
    fold_of = dict(zip(inp["ids"], inp["fold"]))
    shapes, maps, frames, truths = [], {"plain": [], "flip": []}, [], []
    for i in inp["ids"]:
        seg = inp["segmenters"][fold_of[i]]
        gray, mask = cut_area(load_gray(cases[i].image), case_mask(cases[i]), str(cases[i].mask))
        plain = seg.run(seg.input_for(gray))[..., 0]
        both = (plain + seg.run(seg.input_for(gray[:, ::-1].copy()))[..., 0][:, ::-1]) / 2
        shapes.append(measure_lesion(both, gray, seg.threshold)[0])
        maps["plain"].append(plain)
        maps["flip"].append(both)
        frames.append(gray)
        truths.append(mask > 0)
    thr = inp["segmenters"][inp["fold"][0]].threshold
    return shapes, {k: cart_mask_scores(np.stack(v), frames, truths, thr)["iou"] for k, v in maps.items()}


def main(cls: Path, seg: Path) -> None:
    inp = fusion_inputs(cls, seg)
    pos = {i: k for k, i in enumerate(inp["ids"])}
    run = Run.load(cls)
    contract = run.manifest.preprocess
    plain, flipped = np.zeros(len(pos)), np.zeros(len(pos))
    groups = _cv_groups(run, cls)
    for g in groups:
        grays = [cut_area(load_gray(c.image))[0] for c in g.cases]
        idx = [pos[c.case_id] for c in g.cases]
        plain[idx] = g.int8_model.predict(np.stack([to_model_input(x, contract) for x in grays])).ravel()
        flipped[idx] = g.int8_model.predict(np.stack([to_model_input(x[:, ::-1].copy(), contract) for x in grays])).ravel()
    y, fold = inp["y"], inp["fold"]
    seg_shapes, seg_iou = flipped_shapes(inp, {c.case_id: c for g in groups for c in g.cases})
    print("| classifier score | classifier AUC | fused AUC [95% CI] | sensitivity / specificity, cross-fitted 0.90 |")
    print("|---|---|---|---|")
    for name, p, shapes in (("the frame", plain, inp["shapes"]),
                            ("frame and mirror averaged (A)", (plain + flipped) / 2, inp["shapes"]),
                            ("A, and the segmenter's map too (B)", (plain + flipped) / 2, seg_shapes),
                            ("the frame, the segmenter's map averaged (Rule 19 c)", plain, seg_shapes)):
        fused = fusion.cross_fitted(fusion.feature_rows(p, shapes), y, fold, "fused")
        op = crossfit_operating_point(y, fused, fold, 0.9)["cross_fitted"]
        print(f"| {name} | {roc_auc(y, p):.3f} | {roc_auc(y, fused):.4f} {interval_text(bootstrap_classification(y, fused)['auc'])} | "
              f"{op['sensitivity']:.3f} / {op['specificity']:.3f} |")
    print(f"\ncart-mask IoU of the segmenter's map: the frame {seg_iou['plain']:.4f}, frame and mirror averaged "
          f"{seg_iou['flip']:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
