"""The classifier's score and the lesion's measured shape in one logistic model; and the lesion's
BI-RADS descriptors from its measurements.

Malignancy features: the classifier's logit, then edgebus.core.shape.FEATURES of the segmenter's mask
in the frame (compactness as a log: it is heavy-tailed). A frame where the segmenter found nothing gets
the training medians for its shape, so it falls back on the classifier. Descriptor features
(MEASURES): the same shape numbers and the echo pattern beside the mask (edgebus.core.echo). Each model
is standardised, L2-regularised, fitted by Newton's method: a handful of weights a cart applies with
numpy.
"""

from __future__ import annotations

import numpy as np

from edgebus.core.calibration import logit, sigmoid
from edgebus.core.metrics import finite
from edgebus.core.errors import EdgebusError
from edgebus.core.echo import FEATURES as ECHO_FEATURES
from edgebus.core.shape import FEATURES

INPUTS = ("classifier_logit", *FEATURES)
KINDS = ("classifier", "shape", "fused")  # which inputs a model uses
MEASURES = (*FEATURES, *ECHO_FEATURES)  # what a descriptor model reads


def feature_rows(prob, shapes) -> np.ndarray:
    """(N, 5): logit of each classifier probability and its lesion's shape (NaN where none was found)."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    if len(shapes) != len(prob):
        raise EdgebusError(f"fusion: {len(prob)} classifier scores but {len(shapes)} shapes")
    x = np.full((len(prob), len(INPUTS)), np.nan)
    x[:, 0] = logit(prob)
    for i, s in enumerate(shapes):
        if s is not None:
            x[i, 1:] = s
            x[i, 1 + FEATURES.index("compactness")] = np.log(max(s[FEATURES.index("compactness")], 1e-6))
    return x


def measure_rows(shapes, echoes) -> np.ndarray:
    """(N, len(MEASURES)): each lesion's shape (log compactness) and echo numbers; NaN where none."""
    if len(shapes) != len(echoes):
        raise EdgebusError(f"fusion: {len(shapes)} shapes but {len(echoes)} echo measurements")
    x = np.full((len(shapes), len(MEASURES)), np.nan)
    for i, (s, e) in enumerate(zip(shapes, echoes)):
        if s is not None:
            x[i, :len(FEATURES)] = s
            x[i, FEATURES.index("compactness")] = np.log(max(s[FEATURES.index("compactness")], 1e-6))
        if e is not None:
            x[i, len(FEATURES):] = e
    return x


def _columns(kind: str) -> list[int]:
    if kind not in KINDS:
        raise EdgebusError(f"fusion kind '{kind}': choose {', '.join(KINDS)}")
    return {"classifier": [0], "shape": list(range(1, len(INPUTS))), "fused": list(range(len(INPUTS)))}[kind]


def fit(x: np.ndarray, y, kind: str = "fused", l2: float = 1.0, steps: int = 50) -> dict:
    """A logistic model on the columns `kind` uses, as a JSON-able dict."""
    cols = _columns(kind)
    return fit_logistic(np.asarray(x, dtype=np.float64)[:, cols], y, [INPUTS[c] for c in cols], kind, l2, steps)


def fit_logistic(x: np.ndarray, y, names, kind: str, l2: float = 1.0, steps: int = 50) -> dict:
    """A logistic model on every column of x (named `names`), as a JSON-able dict."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(np.unique(y)) < 2:
        raise EdgebusError(f"fusion ({kind}) needs cases of both classes")
    x = np.asarray(x, dtype=np.float64)
    known = np.isfinite(x).any(axis=0)  # a column with no value at all is filled with 0
    fill = np.zeros(x.shape[1])
    fill[known] = np.nanmedian(x[:, known], axis=0)
    x = np.where(np.isfinite(x), x, fill)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    pen = np.r_[np.full(x.shape[1], l2), 0.0]  # the intercept is not pulled
    for _ in range(steps):
        q = sigmoid(z @ w)
        g = z.T @ (q - y) + pen * w
        hess = (z * (q * (1 - q))[:, None]).T @ z + np.diag(pen) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"kind": kind, "inputs": list(names), "fill": fill.tolist(), "mean": mean.tolist(),
            "scale": scale.tolist(), "weights": w[:-1].tolist(), "intercept": float(w[-1])}


def valid_model(model, names) -> bool:
    """A logistic model as fit_logistic writes it, over exactly `names`: finite numbers, one per input,
    non-zero scales. A fusion.json from elsewhere is checked with it before a frame is scored."""
    if not isinstance(model, dict) or model.get("inputs") != list(names):
        return False
    for key in ("fill", "mean", "scale", "weights"):
        v = model.get(key)
        if not isinstance(v, list) or len(v) != len(names) or not all(finite(a) for a in v):
            return False
    return finite(model.get("intercept")) and all(model["scale"])


def predict(model: dict, x: np.ndarray, names=INPUTS) -> np.ndarray:
    """Probability of each row of x (columns `names`: feature_rows, or MEASURES for a descriptor)."""
    cols = [list(names).index(n) for n in model["inputs"]]
    x = np.asarray(x, dtype=np.float64)[:, cols]
    x = np.where(np.isfinite(x), x, np.asarray(model["fill"]))
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return sigmoid(z @ np.asarray(model["weights"]) + model["intercept"])


def cross_fitted(x: np.ndarray, y, fold, kind: str = "fused") -> np.ndarray:
    """Each fold's probabilities from a model fitted on the other folds only (out-of-fold inputs in,
    out-of-fold outputs out)."""
    y, fold = np.asarray(y).ravel(), np.asarray(fold).ravel()
    out = np.zeros(len(y))
    for f in np.unique(fold):
        test = fold == f
        out[test] = predict(fit(x[~test], y[~test], kind), x[test])
    return out
