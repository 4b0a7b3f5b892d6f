"""Every hand-written metric in edgebus.core checked against an independent reference (issue 32, section 6).

The cart keeps its own numpy code (edgebus.core.metrics, stats, calibration, fusion); these tests prove it
equal to scikit-learn, scipy or a plain Python loop written here from the docstring's definition, on
seeded random data: several seeds and sizes, imbalanced labels, tied scores, empty masks. Closed forms
must agree to 1e-9, fitted models to about 1e-6 (their optimisers stop at different points). Each test
also asserts that the data it uses tells the right metric from a plausible wrong one (a kappa of
2*accuracy-1, an ECE of |mean(p) - mean(y)|, a bootstrap of value +- 0.18), so none passes vacuously.

No TensorFlow: only edgebus.core, numpy, scipy and scikit-learn are imported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, jaccard_score,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgebus.core import calibration, fusion, metrics, stats as estats

TIGHT = 1e-9  # closed forms
FIT = 1e-6  # fitted models


def _scores(rng, y, ties: bool):
    """Scores that rank the classes imperfectly; with ties, rounded to a coarse grid (many equal scores,
    across and within the classes)."""
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    return np.round(s, 1) if ties else s


def _labels(rng, n, frac):
    y = (rng.uniform(size=n) < frac).astype(int)
    y[:2] = [0, 1]  # both classes present
    return y


CASES = [(seed, n, frac, ties) for seed, (n, frac) in enumerate([(12, 0.5), (40, 0.15), (97, 0.3), (250, 0.08), (500, 0.6)])
         for ties in (False, True)]


# ---------------------------------------------------------------- ROC AUC

@pytest.mark.parametrize("seed,n,frac,ties", CASES)
def test_roc_auc_matches_sklearn_with_ties(seed, n, frac, ties):
    rng = np.random.default_rng(seed)
    y = _labels(rng, n, frac)
    s = _scores(rng, y, ties)
    if ties:
        assert set(s[y == 1]) & set(s[y == 0]) and len(np.unique(s)) < n  # ties across and within the classes
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TIGHT)
    assert metrics.roc_auc(y.astype(bool), list(s)) == pytest.approx(roc_auc_score(y, s), abs=TIGHT)


def test_roc_auc_ties_count_half_and_one_class_is_none():
    # every positive tied with every negative: AUC 0.5 exactly (ties counted as half, not as wins or losses)
    assert metrics.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5 == roc_auc_score([0, 1, 0, 1], [0.3] * 4)
    y, s = [0, 0, 1, 1, 1], [0.1, 0.5, 0.5, 0.5, 0.9]
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TIGHT)
    assert metrics.roc_auc(y, s) == pytest.approx(5 / 6, abs=TIGHT)  # ties as wins would give 6/6, as losses 4/6
    assert metrics.roc_auc([1, 1, 1], [0.2, 0.4, 0.9]) is None
    assert metrics.roc_auc([0, 0], [0.2, 0.4]) is None


# ---------------------------------------------------------------- classification_metrics

@pytest.mark.parametrize("seed,n,frac,ties", CASES)
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.65])
def test_classification_metrics_match_sklearn(seed, n, frac, ties, threshold):
    rng = np.random.default_rng(100 + seed)
    y = _labels(rng, n, frac)
    p = _scores(rng, y, ties)
    m = metrics.classification_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    assert m["n"] == n and m["threshold"] == threshold
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=TIGHT)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=TIGHT)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0.0)
    for c, name in enumerate(metrics.CLASS_NAMES):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((prec[c], rec[c], f1[c]), abs=TIGHT)
        assert got["support"] == sup[c]
    for avg in ("macro", "weighted"):
        ref = precision_recall_fscore_support(y, pred, labels=[0, 1], average=avg, zero_division=0.0)[:3]
        assert (m[avg]["precision"], m[avg]["recall"], m[avg]["f1"]) == pytest.approx(ref, abs=TIGHT)
    assert m["malignant_recall"] == pytest.approx(rec[1], abs=TIGHT)
    flat = metrics.flat_classification(m)
    assert flat["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0.0), abs=TIGHT)


def test_classification_metrics_degenerate_predictions_match_sklearn_zero_division_0():
    # nothing predicted malignant (precision undefined -> 0), and a set with no malignant case at all
    for y, p in (([0, 1, 1, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.45]), ([0, 0, 0], [0.2, 0.7, 0.9])):
        y, p = np.array(y), np.array(p)
        m = metrics.classification_metrics(y, p)
        pred = (p >= 0.5).astype(int)
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0.0)
        for c, name in enumerate(metrics.CLASS_NAMES):
            assert (m["per_class"][name]["precision"], m["per_class"][name]["recall"], m["per_class"][name]["f1"]) \
                == pytest.approx((prec[c], rec[c], f1[c]), abs=TIGHT)


# ---------------------------------------------------------------- Cohen's kappa

@pytest.mark.parametrize("seed,n,frac", [(0, 30, 0.1), (1, 80, 0.2), (2, 200, 0.35), (3, 501, 0.05), (4, 64, 0.9)])
def test_cohen_kappa_matches_sklearn_on_imbalanced_labels(seed, n, frac):
    rng = np.random.default_rng(200 + seed)
    a = (rng.uniform(size=n) < frac).astype(int)
    a[:2] = [0, 1]
    flip = rng.uniform(size=n) < 0.15
    b = np.where(flip, 1 - a, a)
    b[2] = 1 - b[2]  # at least one disagreement
    k = metrics.cohen_kappa(a, b)
    assert k == pytest.approx(cohen_kappa_score(a, b), abs=TIGHT)
    assert abs(k - (2 * (a == b).mean() - 1)) > 0.01  # kappa = 2*acc-1 would fail here
    assert metrics.cohen_kappa(a.astype(bool), b.astype(bool)) == pytest.approx(k, abs=TIGHT)


def test_cohen_kappa_edge_cases_match_sklearn():
    assert metrics.cohen_kappa([0, 0, 0], [1, 1, 1]) == pytest.approx(cohen_kappa_score([0, 0, 0], [1, 1, 1]), abs=TIGHT)
    assert metrics.cohen_kappa([1, 1, 1, 1], [1, 0, 1, 1]) == pytest.approx(cohen_kappa_score([1, 1, 1, 1], [1, 0, 1, 1]), abs=TIGHT)
    # both raters constant on one class: chance agreement is 1, kappa undefined (sklearn: nan; edgebus: None)
    assert metrics.cohen_kappa([1, 1, 1], [1, 1, 1]) is None
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(cohen_kappa_score([1, 1, 1], [1, 1, 1], labels=[0, 1]))
    assert metrics.cohen_kappa([], []) is None


def test_descriptor_metrics_match_sklearn_on_known_cases():
    rng = np.random.default_rng(7)
    n, names = 120, ("a", "b", "c")
    truth = (rng.uniform(size=(n, 3)) < [0.2, 0.5, 0.1]).astype(int)
    truth[:2] = [[0, 0, 0], [1, 1, 1]]
    prob = np.clip(rng.normal(0.3 + 0.35 * truth, 0.25), 0, 1)
    prob[:, 1] = np.round(prob[:, 1], 1)  # ties
    truth[rng.uniform(size=(n, 3)) < 0.2] = -1  # unknown, left out
    truth[:2] = [[0, 0, 0], [1, 1, 1]]
    out = metrics.descriptor_metrics(truth, prob, names, threshold=0.45)
    for j, name in enumerate(names):
        known = truth[:, j] >= 0
        y, q = truth[known, j], prob[known, j]
        pred = (q >= 0.45).astype(int)
        assert out[name]["n"] == known.sum() and out[name]["positive"] == y.sum()
        assert out[name]["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=TIGHT)
        assert out[name]["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=TIGHT)
        assert out[name]["auc"] == pytest.approx(roc_auc_score(y, q), abs=TIGHT)


# ---------------------------------------------------------------- IoU / Dice on masks

def _masks(rng, n=9, h=12, w=10):
    """Truth masks (random rectangles, some empty) and probability maps that overlap them partly; image
    0 has empty truth and empty prediction, 1 empty truth and a non-empty prediction, 2 a non-empty
    truth and an empty prediction."""
    truth = np.zeros((n, h, w), dtype=np.uint8)
    prob = rng.uniform(0, 0.45, size=(n, h, w))
    for i in range(3, n):
        r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        truth[i, r0:r0 + rng.integers(2, h // 2), c0:c0 + rng.integers(2, w // 2)] = 1
        r1, c1 = r0 + rng.integers(-2, 3), c0 + rng.integers(-2, 3)
        prob[i, max(r1, 0):max(r1, 0) + rng.integers(2, h // 2), max(c1, 0):max(c1, 0) + rng.integers(2, w // 2)] = 0.8
        prob[i][rng.uniform(size=(h, w)) < 0.05] = 0.9  # speckle
    prob[1, 2:5, 3:6] = 0.7
    truth[2, 4:8, 1:4] = 1
    return truth, prob


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("channel", [False, True])
def test_segmentation_metrics_match_sklearn_per_image(seed, channel):
    truth, prob = _masks(np.random.default_rng(300 + seed))
    t_in, p_in = (truth[..., None], prob[..., None]) if channel else (truth, prob)
    m = metrics.segmentation_metrics(t_in, p_in, threshold=0.5)
    t, p = truth.reshape(len(truth), -1), (prob >= 0.5).reshape(len(prob), -1).astype(int)
    iou = np.array([jaccard_score(t[i], p[i], zero_division=1.0) for i in range(len(t))])
    dice = np.array([f1_score(t[i], p[i], zero_division=1.0) for i in range(len(t))])
    assert iou[0] == dice[0] == 1.0 and iou[1] == dice[1] == 0.0 and iou[2] == dice[2] == 0.0  # the edge images
    assert m["iou"] == pytest.approx(iou.mean(), abs=TIGHT)
    assert m["dice"] == pytest.approx(dice.mean(), abs=TIGHT)
    assert m["iou_per_image"] == [round(float(v), 4) for v in iou]
    assert m["pixel_accuracy"] == pytest.approx(accuracy_score(t.ravel(), p.ravel()), abs=TIGHT)
    assert m["empty_predictions"] == int((p.sum(1) == 0).sum()) == 2
    # pooled (micro) IoU differs from the per-image mean the docstring promises: the data tells them apart
    pooled = jaccard_score(t.ravel(), p.ravel())
    assert abs(pooled - m["iou"]) > 0.01
    # Dice per image from IoU (stats.dice_from_iou) is exactly sklearn's per-image F1
    assert estats.dice_from_iou(iou) == pytest.approx(list(dice), abs=TIGHT)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_agreement_and_fidelity_match_sklearn(seed):
    rng = np.random.default_rng(400 + seed)
    _, ref = _masks(rng)
    other = np.clip(ref + rng.normal(0, 0.08, size=ref.shape), 0, 1)
    other[0] = ref[0]  # two empty masks agree: 1.0
    a, b = (ref >= 0.5).reshape(len(ref), -1), (other >= 0.5).reshape(len(other), -1)
    iou = np.array([jaccard_score(a[i], b[i], zero_division=1.0) for i in range(len(a))])
    assert metrics.mask_agreement_iou(ref, other) == pytest.approx(iou, abs=TIGHT)
    f = metrics.mask_fidelity(ref, other)
    assert f["mask_iou_mean"] == pytest.approx(iou.mean(), abs=TIGHT)
    assert f["mask_iou_median"] == pytest.approx(np.median(iou), abs=TIGHT)
    assert f["mask_iou_min"] == pytest.approx(iou.min(), abs=TIGHT)
    assert f["pixel_flips"] == int((a != b).sum()) > 0
    gap = np.abs(ref - other).ravel()
    assert (f["median_abs_diff"], f["p95_abs_diff"]) == pytest.approx((np.median(gap), np.percentile(gap, 95)), abs=TIGHT)


def test_label_flips_and_output_agreement_match_a_confusion_matrix():
    rng = np.random.default_rng(5)
    ref = rng.uniform(size=300)
    other = np.clip(ref + rng.normal(0, 0.1, 300), 0, 1)
    truth = (rng.uniform(size=300) < 0.3).astype(int)
    fl = metrics.label_flips(ref, other, threshold=0.5, other_threshold=0.45, truth=truth)
    fa, fb = (ref >= 0.5).astype(int), (other >= 0.45).astype(int)
    cm = confusion_matrix(fa, fb, labels=[0, 1])  # rows: the float call, columns: the exported call
    assert (fl["benign_to_malignant"], fl["malignant_to_benign"]) == (cm[0, 1], cm[1, 0])
    assert fl["flips"] == cm[0, 1] + cm[1, 0] > 0
    assert fl["missed_float"] == confusion_matrix(truth, fa, labels=[0, 1])[1, 0]
    assert fl["missed"] == confusion_matrix(truth, fb, labels=[0, 1])[1, 0]
    assert fl["missed_new"] == int(((truth == 1) & (fa == 1) & (fb == 0)).sum())
    ag = metrics.output_agreement(ref, other, threshold=0.5, other_threshold=0.45)
    assert ag["agreement"] == pytest.approx(accuracy_score(fa, fb), abs=1e-6)  # float32 inside


# ---------------------------------------------------------------- threshold_for_sensitivity

def _threshold_loop(y, p, target):
    """Brute force from the docstring: the highest candidate threshold whose malignant recall reaches
    `target` (recall computed as a float share, compared with >=)."""
    for t in sorted(set(p[y == 1].tolist()), reverse=True):
        pred = p >= t
        if pred[y == 1].mean() >= target:
            return t, pred[y == 1].mean(), (~pred[y == 0]).mean() if (y == 0).any() else None
    raise AssertionError("unreachable")


def _threshold_roc(y, p, target):
    """The same from sklearn's ROC curve: the first (highest) threshold whose TPR reaches the target."""
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    i = int(np.argmax(tpr >= target))
    return thr[i], tpr[i], 1 - fpr[i]


@pytest.mark.parametrize("seed,n,frac,ties", CASES)
@pytest.mark.parametrize("target", [0.5, 0.55, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0])
def test_threshold_for_sensitivity_matches_roc_curve_and_loop(seed, n, frac, ties, target):
    rng = np.random.default_rng(500 + seed)
    y = _labels(rng, n, frac)
    p = _scores(rng, y, ties)
    op = metrics.threshold_for_sensitivity(y, p, target)
    loop = _threshold_loop(y, p, target)
    roc = _threshold_roc(y, p, target)
    assert op["threshold"] == loop[0] == pytest.approx(roc[0], abs=0)
    assert op["sensitivity"] == pytest.approx(loop[1], abs=TIGHT) and op["sensitivity"] == pytest.approx(roc[1], abs=TIGHT)
    assert op["sensitivity"] >= target
    assert op["specificity"] == pytest.approx(loop[2], abs=TIGHT) and op["specificity"] == pytest.approx(roc[2], abs=TIGHT)


@pytest.mark.parametrize("target,n_pos", [(0.55, 100), (0.55, 180), (0.81, 300), (0.07, 100), (0.9, 10), (0.95, 40)])
def test_threshold_for_sensitivity_is_the_highest_even_where_target_times_n_rounds_up(target, n_pos):
    # 0.55 * 100 == 55.000000000000007 in floats: a ceil() alone asks for 56 cancers where 55 reach 0.55
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(50, dtype=int)]
    p = np.r_[np.linspace(0.99, 0.2, n_pos), np.linspace(0.0, 0.6, 50)]
    op = metrics.threshold_for_sensitivity(y, p, target)
    k = min(j for j in range(1, n_pos + 1) if j / n_pos >= target)  # fewest cancers that reach the target
    assert op["threshold"] == np.sort(p[y == 1])[::-1][k - 1] == _threshold_roc(y, p, target)[0]
    assert op["sensitivity"] == k / n_pos >= target


def test_threshold_for_sensitivity_without_a_cancer_is_an_error():
    with pytest.raises(ValueError):
        metrics.threshold_for_sensitivity([0, 0, 0], [0.1, 0.5, 0.9])


# ---------------------------------------------------------------- expected calibration error

def _ece_loop(y, p, bins):
    """Equal-width bins [b/bins, (b+1)/bins), the last one closed at 1; each bin's |mean p - mean y|
    weighted by its share of the cases. Plain Python, no numpy."""
    y, p = [float(v) for v in y], [float(v) for v in p]
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(len(p)) if lo <= p[i] < hi or (b == bins - 1 and p[i] == hi)]
        if members:
            mp = sum(p[i] for i in members) / len(members)
            my = sum(y[i] for i in members) / len(members)
            total += len(members) / len(p) * abs(mp - my)
    return total


@pytest.mark.parametrize("seed,n", [(0, 50), (1, 333), (2, 2000)])
@pytest.mark.parametrize("bins", [5, 10, 15])
def test_ece_matches_a_plain_loop(seed, n, bins):
    rng = np.random.default_rng(600 + seed)
    p = rng.beta(0.7, 1.3, size=n)
    y = (rng.uniform(size=n) < 0.5 + 0.45 * (p - 0.5)).astype(int)  # under-confident: bins err both ways
    ece = metrics.expected_calibration_error(y, p, bins)
    assert ece == pytest.approx(_ece_loop(y, p, bins), abs=TIGHT)
    assert abs(ece - abs(p.mean() - y.mean())) > 0.01  # |mean(p) - mean(y)| would fail here


@pytest.mark.parametrize("bins", [5, 10, 15, 20])
def test_ece_on_bin_edges_and_extremes_matches_the_loop(bins):
    rng = np.random.default_rng(bins)
    p = np.r_[np.arange(bins + 1) / bins, 0.0, 1.0, rng.uniform(size=40)]  # every edge, 0 and 1
    y = (rng.uniform(size=len(p)) < 0.4).astype(int)
    assert metrics.expected_calibration_error(y, p, bins) == pytest.approx(_ece_loop(y, p, bins), abs=TIGHT)
    rel = calibration.reliability(y, p, bins)
    assert sum(r["n"] for r in rel) == len(p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reliability_bins_match_sklearn_calibration_curve(seed):
    rng = np.random.default_rng(700 + seed)
    p = rng.uniform(size=400)  # no value on a bin edge (sklearn's edges come from linspace)
    y = (rng.uniform(size=400) < p ** 2).astype(int)
    rel = [r for r in calibration.reliability(y, p, 10) if r["n"]]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert [r["observed"] for r in rel] == pytest.approx(list(prob_true), abs=TIGHT)
    assert [r["predicted"] for r in rel] == pytest.approx(list(prob_pred), abs=TIGHT)


# ---------------------------------------------------------------- bootstrap intervals

@pytest.mark.parametrize("seed,n,n_boot", [(0, 27, 999), (3, 60, 2000), (11, 200, 500)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_bootstrap_means_equals_scipy_percentile_bootstrap(seed, n, n_boot, level):
    rng = np.random.default_rng(800 + seed)
    a, b = rng.uniform(size=n), (rng.uniform(size=n) < 0.3).astype(float)
    out = estats.bootstrap_means({"a": a, "b": b}, n_boot=n_boot, seed=seed, level=level)
    for k, v in (("a", a), ("b", b)):
        ref = stats.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                              rng=np.random.default_rng(seed), vectorized=True).confidence_interval
        assert (out[k]["lo"], out[k]["hi"]) == pytest.approx((ref.low, ref.high), abs=TIGHT)
        assert out[k]["value"] == pytest.approx(v.mean(), abs=TIGHT)
        assert abs((out[k]["hi"] - out[k]["lo"]) - 0.36) > 0.01 or n != 27  # not a fixed +-0.18


def test_bootstrap_means_covers_the_true_mean_about_as_often_as_it_says():
    rng = np.random.default_rng(9)
    hits = 0
    for s in range(300):
        x = (rng.uniform(size=60) < 0.3).astype(float)
        ci = estats.bootstrap_means({"x": x}, n_boot=400, seed=s)["x"]
        hits += ci["lo"] <= 0.3 <= ci["hi"]
    assert 0.88 <= hits / 300 <= 0.99


def test_percentile_interval_is_numpy_quantile_of_the_finite_values():
    v = [0.3, None, float("nan"), 0.9, 0.1, float("inf"), 0.5, 0.7]
    finite = np.array([0.3, 0.9, 0.1, 0.5, 0.7])
    assert estats.percentile_interval(v, 0.8) == pytest.approx((np.percentile(finite, 10), np.percentile(finite, 90)), abs=TIGHT)
    assert estats.percentile_interval([None, float("nan")]) == (None, None)


def _bootstrap_classification_loop(y, p, threshold, n_boot, seed, level):
    """Case resampling drawn as bootstrap_classification draws it (one (n_boot, n) integers call), then
    each resample scored by scikit-learn in a plain loop; a resample where a metric is undefined (a
    ratio with no case in its denominator, an F1 from an undefined precision or recall, an AUC with one
    class) is left out of that metric's interval, as stats.py documents."""
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    vals: dict = {k: [] for k in estats.CLASSIFY_KEYS}
    for row in idx:
        yb, pb = y[row], p[row]
        pred = (pb >= threshold).astype(int)
        vals["accuracy"].append(accuracy_score(yb, pred))
        prec, rec, f1, _ = precision_recall_fscore_support(yb, pred, labels=[0, 1], zero_division=np.nan)
        f1 = np.where(np.isnan(prec) | np.isnan(rec), np.nan, f1)
        for c, name in enumerate(metrics.CLASS_NAMES):
            vals[f"{name}_precision"].append(prec[c])
            vals[f"{name}_recall" if name == "benign" else "malignant_recall"].append(rec[c])
            vals[f"{name}_f1"].append(f1[c])
        vals["f1_macro"].append(np.nan if np.isnan(f1).any() else f1.mean())
        vals["auc"].append(roc_auc_score(yb, pb) if 0 < yb.sum() < len(yb) else np.nan)
    a = (1 - level) / 2
    out = {}
    for k, v in vals.items():
        v = np.array(v, dtype=float)
        v = v[np.isfinite(v)]
        out[k] = (np.quantile(v, a), np.quantile(v, 1 - a))
    return out


@pytest.mark.parametrize("seed,n,frac,ties", [(0, 27, 0.3, False), (1, 40, 0.1, True), (2, 90, 0.5, True)])
def test_bootstrap_classification_equals_a_plain_sklearn_loop(seed, n, frac, ties):
    rng = np.random.default_rng(900 + seed)
    y = _labels(rng, n, frac)
    p = _scores(rng, y, ties)
    out = estats.bootstrap_classification(y, p, threshold=0.5, n_boot=300, seed=seed, level=0.95)
    ref = _bootstrap_classification_loop(y, p, 0.5, 300, seed, 0.95)
    point = metrics.flat_classification(metrics.classification_metrics(y, p, 0.5))
    for k in estats.CLASSIFY_KEYS:
        assert (out[k]["lo"], out[k]["hi"]) == pytest.approx(ref[k], abs=TIGHT), k
        assert out[k]["value"] == point[k]
    acc = out["accuracy"]
    assert acc["lo"] < acc["value"] < acc["hi"]
    assert abs(acc["hi"] - acc["value"] - 0.18) > 1e-3 or abs(acc["value"] - acc["lo"] - 0.18) > 1e-3


@pytest.mark.parametrize("seed,n", [(0, 30), (1, 120)])
def test_bootstrap_kappa_equals_a_plain_sklearn_loop(seed, n):
    rng = np.random.default_rng(1000 + seed)
    t = (rng.uniform(size=n) < 0.2).astype(int)
    t[:2] = [0, 1]
    q = np.where(rng.uniform(size=n) < 0.2, 1 - t, t)
    out = estats.bootstrap_kappa(t, q, n_boot=500, seed=seed)
    idx = np.random.default_rng(seed).integers(0, n, size=(500, n))
    ks = [cohen_kappa_score(t[i], q[i], labels=[0, 1]) for i in idx]
    ks = np.array([k for k in ks if np.isfinite(k)])
    assert out["value"] == pytest.approx(cohen_kappa_score(t, q), abs=TIGHT)
    assert (out["lo"], out["hi"]) == pytest.approx((np.quantile(ks, 0.025), np.quantile(ks, 0.975)), abs=TIGHT)


# ---------------------------------------------------------------- Platt scaling

def _platt_data(seed, n, a0, b0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.3, 1.6, size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(a0 * z + b0)))).astype(int)
    y[:2] = [0, 1]
    return y, 1 / (1 + np.exp(-z))


def _logit_feature(p):
    q = np.clip(p, calibration.EPS, 1 - calibration.EPS)  # the documented clip (EPS) applies to the reference too
    return np.log(q / (1 - q))[:, None]


PLATT = [(0, 80, 0.6, -0.8), (1, 300, 1.7, 0.5), (2, 1000, 1.0, 0.0), (3, 150, 0.35, 1.2)]


@pytest.mark.parametrize("seed,n,a0,b0", PLATT)
def test_platt_unpenalised_equals_sklearn_logistic_regression(seed, n, a0, b0):
    y, p = _platt_data(seed, n, a0, b0)
    x = _logit_feature(p)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(x, y)
    cal = calibration.fit_platt(y, p, l2=0.0)
    assert (cal["a"], cal["b"]) == pytest.approx((lr.coef_[0, 0], lr.intercept_[0]), abs=FIT)
    assert calibration.apply(cal, p) == pytest.approx(lr.predict_proba(x)[:, 1], abs=FIT)


@pytest.mark.parametrize("seed,n,a0,b0", PLATT)
def test_platt_default_equals_its_documented_penalised_likelihood(seed, n, a0, b0):
    """The default fit adds l2/2 * ((a-1)^2 + b^2), a pull towards the identity (a documented choice):
    checked against scipy minimising that objective, and within 1e-2 of the unpenalised sklearn fit."""
    y, p = _platt_data(seed, n, a0, b0)
    z = _logit_feature(p)[:, 0]
    l2 = 1e-3

    def f(w):
        s = w[0] * z + w[1]
        q = 1 / (1 + np.exp(-s))
        loss = np.sum(np.logaddexp(0, s) - y * s) + l2 / 2 * ((w[0] - 1) ** 2 + w[1] ** 2)
        return loss, np.array([np.sum((q - y) * z) + l2 * (w[0] - 1), np.sum(q - y) + l2 * w[1]])

    ref = optimize.minimize(f, [0.0, 0.0], jac=True, method="BFGS", options={"gtol": 1e-11}).x
    cal = calibration.fit_platt(y, p)
    assert (cal["a"], cal["b"]) == pytest.approx(tuple(ref), abs=FIT)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(z[:, None], y)
    assert (cal["a"], cal["b"]) == pytest.approx((lr.coef_[0, 0], lr.intercept_[0]), abs=1e-2)
    assert abs(cal["a"] - 1) > 0.05 or abs(cal["b"]) > 0.05  # the data are miscalibrated: identity would fail
    # the threshold mapping inverts apply()
    for t in (0.2, 0.5, 0.9):
        assert calibration.apply(cal, calibration.raw_threshold(cal, t)) == pytest.approx(t, abs=TIGHT)


@pytest.mark.parametrize("seed,n,a0,b0", PLATT)
def test_platt_intercept_only_solves_its_score_equation(seed, n, a0, b0):
    """slope=False: a = 1 and b solves sum(sigmoid(z + b) - y) + l2 * b = 0 (scipy's brentq)."""
    y, p = _platt_data(seed, n, a0, b0)
    z = _logit_feature(p)[:, 0]
    for l2 in (0.0, 1e-3):
        b = optimize.brentq(lambda b: np.sum(1 / (1 + np.exp(-(z + b))) - y) + l2 * b, -30, 30, xtol=1e-14)
        cal = calibration.fit_platt(y, p, l2=l2, slope=False)
        assert cal["a"] == 1.0 and cal["b"] == pytest.approx(b, abs=FIT)


def test_platt_clips_probabilities_0_and_1_as_documented():
    y, p = _platt_data(5, 200, 0.8, 0.3)
    p[:6] = [0.0, 1.0, 0.0, 1.0, 1e-9, 1 - 1e-9]
    x = _logit_feature(p)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(x, y)
    cal = calibration.fit_platt(y, p, l2=0.0)
    assert (cal["a"], cal["b"]) == pytest.approx((lr.coef_[0, 0], lr.intercept_[0]), abs=FIT)


# ---------------------------------------------------------------- fusion: standardised L2 logistic regression

def _fusion_data(seed, n, d, nan_share):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 20, size=d) + rng.uniform(-5, 5, size=d)
    w = rng.normal(size=d) / x.std(0)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-((x - x.mean(0)) @ w - 0.7)))).astype(int)
    y[:2] = [0, 1]
    x[rng.uniform(size=(n, d)) < nan_share] = np.nan
    return x, y


@pytest.mark.parametrize("seed,n,d,nan_share", [(0, 60, 1, 0.0), (1, 200, 5, 0.1), (2, 500, 8, 0.25), (3, 40, 3, 0.0)])
@pytest.mark.parametrize("l2", [1.0, 0.1, 5.0])
def test_fusion_logistic_equals_sklearn_median_impute_standardise_l2(seed, n, d, nan_share, l2):
    """fit_logistic = SimpleImputer(median) -> StandardScaler (population std) -> LogisticRegression with
    C = 1/l2 and an unpenalised intercept."""
    x, y = _fusion_data(seed, n, d, nan_share)
    if d >= 5:
        x[:, 2] = np.nan  # a column with no value at all: filled with 0 (keep_empty_features)
    names = [f"f{j}" for j in range(d)]
    model = fusion.fit_logistic(x, y, names, "test", l2=l2)
    ref = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                        LogisticRegression(C=1 / l2, tol=1e-12, max_iter=10000)).fit(x, y)
    imp, sc, lr = ref.steps[0][1], ref.steps[1][1], ref.steps[2][1]
    assert model["fill"] == pytest.approx(list(imp.statistics_), abs=TIGHT)
    assert model["mean"] == pytest.approx(list(sc.mean_), abs=1e-8)
    assert model["scale"] == pytest.approx(list(sc.scale_), rel=1e-9)
    assert model["weights"] == pytest.approx(list(lr.coef_[0]), abs=FIT)
    assert model["intercept"] == pytest.approx(lr.intercept_[0], abs=FIT)
    xn, _ = _fusion_data(seed + 50, 100, d, nan_share)
    assert fusion.predict(model, xn, names) == pytest.approx(ref.predict_proba(xn)[:, 1], abs=FIT)


def test_fusion_fit_uses_the_kind_columns_as_sklearn_does():
    x, y = _fusion_data(9, 150, len(fusion.INPUTS), 0.1)
    for kind in fusion.KINDS:
        cols = {"classifier": [0], "shape": list(range(1, len(fusion.INPUTS))), "fused": list(range(len(fusion.INPUTS)))}[kind]
        model = fusion.fit(x, y, kind)
        ref = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                            LogisticRegression(C=1.0, tol=1e-12, max_iter=10000)).fit(x[:, cols], y)
        assert model["inputs"] == [fusion.INPUTS[c] for c in cols]
        assert fusion.predict(model, x) == pytest.approx(ref.predict_proba(x[:, cols])[:, 1], abs=FIT)


def test_the_metric_modules_do_not_import_tensorflow():
    code = ("import sys, edgebus.core.metrics, edgebus.core.stats, edgebus.core.calibration, edgebus.core.fusion; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
