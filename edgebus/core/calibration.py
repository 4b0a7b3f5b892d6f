"""Probability calibration and an operating point chosen out-of-fold.

Platt scaling maps a model's malignant probability p to sigmoid(a * logit(p) + b), fitted by
maximum likelihood on predictions the model made for cases it never trained on (pooled out-of-fold
predictions of a k-fold CV). With a > 0 it is monotone, so a decision threshold keeps its meaning:
the operating threshold is stored in the model's raw output space and the calibrated probability
is what the cart shows.

The honest estimate of an operating point is cross-fitted: for each fold, the calibrator and the
threshold are fitted on the other folds' predictions only and applied to that fold; the pooled
decisions then say what the procedure gives on cases it did not see, with bootstrap intervals.
"""

from __future__ import annotations

import numpy as np

from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import expected_calibration_error, finite, threshold_for_sensitivity

EPS = 1e-6


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(z) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))  # 1 / (1 + e^-z), without overflow


def _logistic(y, z, l2: float, slope: bool = True, intercept: bool = True, steps: int = 100) -> np.ndarray:
    """[a, b] minimising the log loss of sigmoid(a * z + b) plus l2/2 * |[a, b] - [1, 0]|^2, by Newton
    steps each halved until the loss falls (plain Newton from the identity diverges on scores a few
    logits off). slope=False keeps a at 1, intercept=False keeps b at 0."""
    ident = np.array([1.0, 0.0])
    free = np.array([slope, intercept])

    def loss(w):
        s = w[0] * z + w[1]
        return float(np.sum(np.logaddexp(0.0, s) - y * s) + l2 / 2 * np.sum((w - ident) ** 2))

    w = ident.copy()
    for _ in range(steps):
        q = sigmoid(w[0] * z + w[1])
        g = (np.array([np.sum((q - y) * z), np.sum(q - y)]) + l2 * (w - ident)) * free
        h = q * (1 - q)
        hess = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]]) + l2 * np.eye(2)
        hess = np.where(np.outer(free, free), hess, np.eye(2))
        step = np.linalg.solve(hess, g)
        before, t = loss(w), 1.0
        while loss(w - t * step) > before and t > 1e-10:
            t /= 2
        w -= t * step
        if np.abs(t * step).max() < 1e-10:
            break
    return w


def _both_classes(y) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(np.unique(y)) < 2:
        raise EdgebusError("calibration needs both benign and malignant cases")
    return y


def fit_platt(y, p, l2: float = 1e-3, steps: int = 100, slope: bool = True, intercept: bool = True) -> dict:
    """{"method": "platt", "a", "b"} fitted by maximum likelihood (a small L2 pull towards the identity
    a=1, b=0 keeps it finite when the classes separate perfectly). slope=False keeps a at 1 and fits b
    alone ("recalibration in the large"); intercept=False keeps b at 0 and fits a alone (temperature
    scaling, a = 1/T)."""
    y = _both_classes(y)
    a, b = _logistic(y, logit(p).ravel(), l2, slope, intercept, steps)
    if not a > 0:
        raise EdgebusError(f"calibration slope {a:.3g} is not positive: the scores rank cases backwards; "
                           "the model has not learned the task")
    return {"method": "platt", "a": float(a), "b": float(b)}


CALIBRATIONS = ("none", "intercept", "temperature", "platt")  # simplest first: a tie goes to the simpler
_FITS = {"intercept": {"slope": False}, "temperature": {"intercept": False}, "platt": {}}


def fit_calibration(y, p, method: str) -> dict | None:
    """One of CALIBRATIONS fitted on (y, p), as a Platt map the cart applies ({"method": "platt", "a",
    "b", "fit": method}), or None for "none". Isotonic regression is not offered: it overfits below
    about a thousand cases (Niculescu-Mizil & Caruana, ICML 2005) and its steps would give one
    calibrated threshold a range of raw ones."""
    if method not in CALIBRATIONS:
        raise EdgebusError(f"calibration '{method}': choose one of {', '.join(CALIBRATIONS)}")
    if method == "none":
        return None
    return {**fit_platt(y, p, **_FITS[method]), "fit": method}


def calibration_line(y, p, n_boot: int = 0, seed: int = 0) -> dict | None:
    """The calibration slope and intercept of probabilities p on outcomes y (Cox 1958; Van Calster et
    al., J Clin Epidemiol 2016): slope from y ~ a * logit(p) + b (1 is ideal; below 1 too extreme,
    above 1 too flat), intercept "in the large" with the slope held at 1 (0 is ideal; above 0 the
    probabilities run low). None without both classes. n_boot > 0 adds 95% percentile intervals
    (cases resampled; resamples with one class only are skipped)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(np.unique(y)) < 2:
        return None
    z = logit(p).ravel()
    line = lambda yy, zz: (float(_logistic(yy, zz, 1e-6)[0]), float(_logistic(yy, zz, 1e-6, slope=False)[1]))  # noqa: E731
    out = dict(zip(("slope", "intercept"), line(y, z)), n=int(len(y)), malignant=int(y.sum()))
    if n_boot:
        rng, boot = np.random.default_rng(seed), []
        for _ in range(n_boot):
            i = rng.integers(0, len(y), len(y))
            if 0 < y[i].sum() < len(i):
                boot.append(line(y[i], z[i]))
        b = np.array(boot)
        out["slope_ci"], out["intercept_ci"] = ([float(v) for v in np.quantile(b[:, k], [0.025, 0.975])] for k in (0, 1))
    return out


def log_loss(y, p) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64).ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def crossfit_calibrated(y, p, fold, method: str) -> np.ndarray:
    """Each held-out fold's probabilities calibrated by `method` fitted on the other folds only."""
    y, p, fold = np.asarray(y).ravel(), np.asarray(p, dtype=np.float64).ravel(), np.asarray(fold).ravel()
    out = np.zeros(len(p))
    for f in np.unique(fold):
        test, rest = fold == f, fold != f
        out[test] = apply(fit_calibration(y[rest], p[rest], method), p[test])
    return out


def choose_calibration(y, p, fold, groups: dict | None = None, min_group: int = 20, n_boot: int = 500) -> dict:
    """Choose the calibration by its cross-fitted log loss (fitted on the other folds, scored on each
    held-out fold: with acquisition folds, on scanner settings it never saw); ties within 0.001 go to
    the simpler. Per method: log loss, Brier score, ECE, and the calibration slope and intercept of
    each held-out fold and of each scanner setting in `groups` ({name: case mask}) with at least
    `min_group` cases, 5 of each class (the chosen method's with n_boot-resample intervals). Returns {"chosen", "calibration" (fitted on all cases),
    "methods"}."""
    y = _both_classes(y)
    p, fold = np.asarray(p, dtype=np.float64).ravel(), np.asarray(fold).ravel()
    rows = {}
    for m in CALIBRATIONS:
        q = crossfit_calibrated(y, p, fold, m)
        rows[m] = {"log_loss": log_loss(y, q), "brier": float(np.mean((q - y) ** 2)),
                   "ece": expected_calibration_error(y, q), "line": calibration_line(y, q),
                   "per_fold": [{"fold": int(f), **(calibration_line(y[fold == f], q[fold == f]) or
                                                   {"n": int((fold == f).sum())})} for f in np.unique(fold)],
                   "per_setting": {k: calibration_line(y[v], q[v]) for k, v in (groups or {}).items()
                                   if v.sum() >= min_group and min(y[v].sum(), (1 - y[v]).sum()) >= 5}}
    best = min(rows[m]["log_loss"] for m in CALIBRATIONS)
    chosen = next(m for m in CALIBRATIONS if rows[m]["log_loss"] <= best + 1e-3)
    q, row = crossfit_calibrated(y, p, fold, chosen), rows[chosen]  # the shipped one's lines get intervals
    for r in row["per_fold"]:
        r.update(calibration_line(y[fold == r["fold"]], q[fold == r["fold"]], n_boot) or {})
    row["per_setting"] = {k: calibration_line(y[groups[k]], q[groups[k]], n_boot) for k in row["per_setting"]}
    return {"chosen": chosen, "calibration": fit_calibration(y, p, chosen), "methods": rows,
            "rule": "lowest cross-fitted log loss; within 0.001 of it, the simplest of " + ", ".join(CALIBRATIONS)}


def valid_calibration(cal) -> bool:
    """None (no calibration) or a usable Platt map: method "platt", a finite slope a > 0 (monotone, so
    a threshold keeps its meaning) and a finite intercept b. Files from elsewhere are checked with it."""
    return not cal and cal in (None, {}) or (isinstance(cal, dict) and cal.get("method") == "platt" and finite(cal.get("a"))
                           and cal["a"] > 0 and finite(cal.get("b")))


def valid_threshold(t) -> bool:
    """A decision threshold on a probability: a finite number from 0 to 1 (0 calls every frame malignant:
    degenerate, but a threshold a sensitivity target can choose on int8 outputs that reach exactly 0)."""
    return finite(t) and 0 <= t <= 1


def apply(cal: dict | None, p) -> np.ndarray:
    """Calibrated probabilities (the identity without a calibrator)."""
    p = np.asarray(p, dtype=np.float64)
    if not cal:
        return p
    if cal.get("method") != "platt":
        raise EdgebusError(f"unknown calibration method {cal.get('method')!r}; this edgebus knows platt")
    return sigmoid(cal["a"] * logit(p) + cal["b"])


def raw_threshold(cal: dict | None, t_cal: float) -> float:
    """The raw-output threshold equivalent to `t_cal` on calibrated probabilities."""
    if not cal:
        return float(t_cal)
    return float(sigmoid((logit(t_cal) - cal["b"]) / cal["a"]))


def reliability(y, p, bins: int = 10) -> list[dict]:
    """Per equal-width bin: cases, mean predicted probability, observed malignant rate."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return [{"bin": [b / bins, (b + 1) / bins], "n": int((idx == b).sum()),
             "predicted": float(p[idx == b].mean()) if (idx == b).any() else None,
             "observed": float(y[idx == b].mean()) if (idx == b).any() else None} for b in range(bins)]


def per_fold_text(est: dict) -> str:
    """'0.950 (20), 0.875 (16), ...': sensitivity (cancers) per held-out fold of a cross-fitted estimate."""
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return ", ".join(f"{f(r['sensitivity'])} ({r['malignant']})" for r in est.get("per_fold", []))


def _rates(y, pred) -> dict:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    return {"sensitivity": float(pred[y].mean()) if y.any() else None,
            "specificity": float((~pred[~y]).mean()) if (~y).any() else None}


def crossfit_operating_point(y, p, fold, target: float, n_boot: int = 2000, seed: int = 0,
                             method: str = "platt") -> dict:
    """Calibrate and pick the threshold for `target` sensitivity on pooled out-of-fold predictions.

    y, p: labels and out-of-fold probabilities; fold: each case's test fold. Returns the shipped
    operating point (calibrator and threshold fitted on all cases; threshold in raw output space),
    the cross-fitted estimate of what it gives on unseen cases (sensitivity, specificity with 95%
    bootstrap intervals, and per held-out fold), and calibration error before and after. method: the
    calibration (CALIBRATIONS; choose_calibration picks one out of fold)."""
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    fold = np.asarray(fold).ravel()
    if not (len(y) == len(p) == len(fold)) or len(np.unique(fold)) < 2:
        raise EdgebusError("an out-of-fold operating point needs per-case labels, probabilities and folds (2 or more)")
    cal = fit_calibration(y, p, method)
    pc = apply(cal, p)
    shipped = threshold_for_sensitivity(y, pc, target)
    pred_cf, pc_cf = np.zeros(len(y), dtype=bool), np.zeros(len(y))
    for f in np.unique(fold):
        test, rest = fold == f, fold != f
        c = fit_calibration(y[rest], p[rest], method)
        t = threshold_for_sensitivity(y[rest], apply(c, p[rest]), target)["threshold"]
        pc_cf[test] = apply(c, p[test])
        pred_cf[test] = pc_cf[test] >= t
    est = _rates(y, pred_cf)
    rng = np.random.default_rng(seed)
    boot = {"sensitivity": [], "specificity": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        for k, v in _rates(y[i], pred_cf[i]).items():
            if v is not None:
                boot[k].append(v)
    for k in boot:
        est[f"{k}_ci"] = [float(np.quantile(boot[k], 0.025)), float(np.quantile(boot[k], 0.975))]
    # per held-out fold: how far one unseen part (a scanner setting, with acquisition folds) strays from the pool
    est["per_fold"] = [{"fold": int(f), "n": int((fold == f).sum()), "malignant": int(y[fold == f].sum()),
                        **_rates(y[fold == f], pred_cf[fold == f])} for f in np.unique(fold)]
    return {
        "target_sensitivity": float(target), "n": int(len(y)), "folds": int(len(np.unique(fold))),
        "calibration": cal,
        "threshold": raw_threshold(cal, shipped["threshold"]),  # raw output space: what every stage compares
        "threshold_calibrated": shipped["threshold"],
        "in_sample": {"sensitivity": shipped["sensitivity"], "specificity": shipped["specificity"]},
        "cross_fitted": est,
        "ece": {"raw": expected_calibration_error(y, p), "calibrated_cross_fitted": expected_calibration_error(y, pc_cf)},
        "reliability": {"raw": reliability(y, p), "calibrated_cross_fitted": reliability(y, pc_cf)},
        "bootstrap": {"resamples": n_boot, "seed": seed, "method": "percentile, cases resampled"},
    }
