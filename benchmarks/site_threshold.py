"""What a site's own labelled cases buy (`edgebus site-check`, then `edgebus site-threshold`), on BrEaST.

The cart's fused score of every case out of fold on the acquisition folds (each case scored by models and a
fusion that never saw its scanner setting; its shipped threshold chosen, cross-fitted, on the other settings'
scores, as `edgebus fuse` ships it) stands in for the scores a cart gives at a new site. Two sites:

- as measured: the scores as they are (BrEaST's own scanner settings, a mild shift);
- shifted (simulated): every logit lowered by the one amount that leaves the shipped threshold catching 40.5% of
  the cancers, what the held-back external set gave issue #12's first cart. The ranking is kept, so this isolates
  a threshold that does not transfer; a real site also ranks worse (external AUC 0.72).

Each repetition splits the site's cases at random into the cases a site labels (L malignant and the benign in the
site's proportion) and the cases it meets afterwards (the rest); on the labelled ones it chooses the threshold for
sensitivity 0.90 and a Platt recalibration, as `edgebus site-threshold` does, and both are scored on the cases met
afterwards, against the shipped threshold and the shown probability. Rule (fixed before the first run): the
site-threshold floor of 20 malignant cases (runtime.bundle.MIN_MALIGNANT) stands if, on the shifted site with
L = 20, the site threshold's sensitivity on the later cases is at least 0.85 on average and at least 0.75 in 95%
of repetitions; otherwise it rises to the smallest L of 30 or 50 that meets both.

Second rule (fixed after the first run, which showed in-sample Platt recalibration with a heavy tail, before
the intercept-only column was computed): the site copy's recalibration is whichever of Platt (slope and
intercept) and intercept only (slope kept at 1: "recalibration in the large", the usual update for small
samples) has the lower 95th-percentile ECE on later cases on the shifted site at the floor L, and none if
neither is below the shown probability's 95th-percentile ECE there.

    python benchmarks/site_threshold.py CLS_CV SEG_CV [--reps 1000]
"""

import argparse
from pathlib import Path

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import apply, fit_platt, logit, sigmoid
from edgebus.core.metrics import expected_calibration_error, threshold_for_sensitivity
from edgebus.evaluation.shape_fusion import fusion_inputs

TARGET = 0.9


def shipped(y, p, fold) -> np.ndarray:
    """Each case's shipped threshold: chosen on the other folds' out-of-fold scores (cross-fitted)."""
    thr = np.zeros(len(y))
    for k in np.unique(fold):
        thr[fold == k] = threshold_for_sensitivity(y[fold != k], p[fold != k], TARGET)["threshold"]
    return thr


def shift_for(y, p, thr, sensitivity: float) -> float:
    """The logit shift after which the shipped thresholds catch `sensitivity` of the cancers (bisection)."""
    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (sigmoid(logit(p) - mid) >= thr)[y == 1].mean() > sensitivity:
            lo = mid
        else:
            hi = mid
    return hi


def repeat(y, p, thr, n_mal: int, reps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mal, ben = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_ben = int(round(n_mal * len(ben) / len(mal)))
    out = {k: [] for k in ("sens_shipped", "spec_shipped", "sens_site", "spec_site", "ece_shown", "ece_site",
                           "ece_intercept")}
    for _ in range(reps):
        lab = np.concatenate([rng.choice(mal, n_mal, replace=False), rng.choice(ben, n_ben, replace=False)])
        new = np.setdiff1d(np.arange(len(y)), lab)
        t = threshold_for_sensitivity(y[lab], p[lab], TARGET)["threshold"]
        cal = fit_platt(y[lab], p[lab])
        yn, pn = y[new], p[new]
        out["sens_shipped"].append((pn >= thr[new])[yn == 1].mean())
        out["spec_shipped"].append((pn < thr[new])[yn == 0].mean())
        out["sens_site"].append((pn >= t)[yn == 1].mean())
        out["spec_site"].append((pn < t)[yn == 0].mean())
        out["ece_shown"].append(expected_calibration_error(yn, pn))
        out["ece_site"].append(expected_calibration_error(yn, apply(cal, pn)))
        out["ece_intercept"].append(expected_calibration_error(yn, apply(fit_platt(y[lab], p[lab], slope=False), pn)))
    return {k: np.asarray(v) for k, v in out.items()}


def cell(v) -> str:
    return f"{v.mean():.3f} [{np.percentile(v, 5):.3f}, {np.percentile(v, 95):.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cls_cv", type=Path)
    ap.add_argument("seg_cv", type=Path)
    ap.add_argument("--reps", type=int, default=1000)
    a = ap.parse_args()
    inp = fusion_inputs(a.cls_cv, a.seg_cv)
    y, fold = inp["y"], inp["fold"]
    p = fusion.cross_fitted(inp["x"], y, fold, "fused")
    thr = shipped(y, p, fold)
    delta = shift_for(y, p, thr, 0.405)
    print(f"{len(y)} cases ({int(y.sum())} malignant); shipped sensitivity as measured "
          f"{(p >= thr)[y == 1].mean():.3f}; simulated shift: logit - {delta:.3f}\n")
    print("| site | labelled malignant (benign) | sensitivity on later cases: shipped / site threshold | "
          "specificity: shipped / site | ECE: shown / Platt / intercept only |")
    print("|---|---|---|---|---|")
    for name, q in (("as measured", p), ("shifted (simulated)", sigmoid(logit(p) - delta))):
        for n_mal in (20, 30, 50):
            r = repeat(y, q, thr, n_mal, a.reps)
            n_ben = int(round(n_mal * (1 - y).sum() / y.sum()))
            print(f"| {name} | {n_mal} ({n_ben}) | {cell(r['sens_shipped'])} / {cell(r['sens_site'])} | "
                  f"{cell(r['spec_shipped'])} / {cell(r['spec_site'])} | {cell(r['ece_shown'])} / {cell(r['ece_site'])} / "
                  f"{cell(r['ece_intercept'])} |")
    print(f"\nmean [5th, 95th percentile] over {a.reps} random splits of the site's cases into labelled and later ones")


if __name__ == "__main__":
    main()
