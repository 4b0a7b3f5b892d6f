"""The calibration a cart ships, chosen out of fold (issue #35): each candidate's fit checked against
an independent optimiser, the calibration slope and intercept against scikit-learn / scipy, and the
choice shown to pick nothing for calibrated scores and a stretch for flat ones."""

import numpy as np
import pytest
from scipy import optimize
from sklearn.linear_model import LogisticRegression

from edgebus.core import calibration as cal
from edgebus.core.errors import EdgebusError


def _scores(seed, n, flat=1.0, shift=0.0):
    """True risk sigmoid(z); the model shows sigmoid(z / flat + shift): flat > 1 too flat, shift off-centre."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-(z / flat + shift)))


def _ll(y, s):
    return np.sum(np.logaddexp(0, s) - y * s)


@pytest.mark.parametrize("seed,flat,shift", [(0, 1.0, 0.0), (1, 2.0, 0.0), (2, 0.6, 0.8), (3, 1.5, -0.5)])
def test_each_fit_is_the_maximum_likelihood_of_its_form(seed, flat, shift):
    y, p = _scores(seed, 400, flat, shift)
    z = cal.logit(p)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(z[:, None], y)
    platt = cal.fit_calibration(y, p, "platt")  # the documented small pull towards the identity: within 1e-2
    assert (platt["a"], platt["b"]) == pytest.approx((lr.coef_[0, 0], lr.intercept_[0]), abs=1e-2)
    t = optimize.minimize_scalar(lambda a: _ll(y, a * z) + 1e-3 / 2 * (a - 1) ** 2, bounds=(1e-3, 20), method="bounded",
                                 options={"xatol": 1e-10}).x
    temp = cal.fit_calibration(y, p, "temperature")
    assert temp["b"] == 0.0 and temp["a"] == pytest.approx(t, abs=1e-5) and temp["fit"] == "temperature"
    b = optimize.brentq(lambda b: np.sum(1 / (1 + np.exp(-(z + b))) - y) + 1e-3 * b, -30, 30, xtol=1e-14)
    inter = cal.fit_calibration(y, p, "intercept")
    assert inter["a"] == 1.0 and inter["b"] == pytest.approx(b, abs=1e-5)
    assert cal.fit_calibration(y, p, "none") is None and cal.valid_calibration(temp) and cal.valid_calibration(None)
    with pytest.raises(EdgebusError, match="isotonic"):
        cal.fit_calibration(y, p, "isotonic")


@pytest.mark.parametrize("seed,flat,shift", [(4, 1.0, 0.0), (5, 1.8, 0.0), (6, 0.7, -1.0)])
def test_calibration_line_matches_sklearn_and_scipy(seed, flat, shift):
    y, p = _scores(seed, 500, flat, shift)
    z = cal.logit(p)
    line = cal.calibration_line(y, p)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(z[:, None], y)
    assert line["slope"] == pytest.approx(lr.coef_[0, 0], abs=1e-4)
    b = optimize.brentq(lambda b: np.sum(1 / (1 + np.exp(-(z + b))) - y), -30, 30, xtol=1e-14)  # offset logit(p)
    assert line["intercept"] == pytest.approx(b, abs=1e-4) and line["n"] == 500 and line["malignant"] == y.sum()
    assert line["slope"] == pytest.approx(flat, rel=0.25)  # the slope recovers how flat the scores were made
    assert cal.calibration_line(np.zeros(10), p[:10]) is None


def test_choice_keeps_calibrated_scores_and_stretches_flat_ones():
    fold = np.arange(1000) % 5
    y, p = _scores(7, 1000)
    good = cal.choose_calibration(y, p, fold)
    assert good["chosen"] == "none" and good["calibration"] is None
    y, p = _scores(8, 1000, flat=2.5)
    flat = cal.choose_calibration(y, p, fold)
    assert flat["chosen"] in ("temperature", "platt") and flat["calibration"]["a"] == pytest.approx(2.5, rel=0.2)
    rows = flat["methods"]
    assert rows["none"]["line"]["slope"] > 2 and 0.8 < rows[flat["chosen"]]["line"]["slope"] < 1.25
    assert rows[flat["chosen"]]["log_loss"] < rows["none"]["log_loss"] - 0.01
    assert [r["fold"] for r in rows["none"]["per_fold"]] == list(range(5))
    # the log loss it chose by is the cross-fitted one: each fold calibrated by a fit on the others only
    q = cal.crossfit_calibrated(y, p, fold, "temperature")
    for f in range(5):
        rest = fold != f
        assert np.allclose(q[fold == f], cal.apply(cal.fit_calibration(y[rest], p[rest], "temperature"), p[fold == f]))
    assert rows["temperature"]["log_loss"] == pytest.approx(cal.log_loss(y, q))


def test_settings_big_enough_get_their_own_line():
    y, p = _scores(9, 600, flat=1.5)
    fold = np.arange(600) % 4
    big, tiny = np.zeros(600, bool), np.zeros(600, bool)
    big[:200], tiny[200:215] = True, True
    out = cal.choose_calibration(y, p, fold, {"800x600": big, "640x480": tiny}, min_group=20)
    for row in out["methods"].values():
        assert set(row["per_setting"]) == {"800x600"}  # 15 cases: too few for a slope of its own
        q = cal.crossfit_calibrated(y, p, fold, next(m for m, r in out["methods"].items() if r is row))
        want, got = cal.calibration_line(y[big], q[big]), row["per_setting"]["800x600"]
        assert {k: got[k] for k in want} == want
    chosen = out["methods"][out["chosen"]]
    for line in [chosen["per_setting"]["800x600"], *chosen["per_fold"]]:  # the shipped one's lines carry intervals
        assert line["slope_ci"][0] < line["slope"] < line["slope_ci"][1]
        assert line["intercept_ci"][0] < line["intercept"] < line["intercept_ci"][1]


def test_calibration_line_interval_covers_like_a_bootstrap():
    y, p = _scores(11, 300, flat=1.5)
    line = cal.calibration_line(y, p, n_boot=300, seed=3)
    rng, slopes = np.random.default_rng(3), []
    for _ in range(300):  # the same resamples, each fitted by sklearn
        i = rng.integers(0, 300, 300)
        z = cal.logit(p[i])
        slopes.append(LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(z[:, None], y[i]).coef_[0, 0])
    assert line["slope_ci"] == pytest.approx(list(np.quantile(slopes, [0.025, 0.975])), abs=1e-3)


def test_operating_point_is_the_same_whichever_calibration():
    """Calibration is monotone: the threshold's decisions, and so the cross-fitted sensitivity and
    specificity, do not depend on which one is chosen; only the shown probability does."""
    y, p = _scores(10, 400, flat=2.0)
    fold = np.arange(400) % 5
    ops = {m: cal.crossfit_operating_point(y, p, fold, 0.9, n_boot=50, method=m) for m in cal.CALIBRATIONS}
    for m, op in ops.items():
        assert op["cross_fitted"]["sensitivity"] == ops["none"]["cross_fitted"]["sensitivity"]
        assert op["cross_fitted"]["specificity"] == ops["none"]["cross_fitted"]["specificity"]
        assert op["threshold"] == pytest.approx(ops["none"]["threshold"], abs=1e-9)
