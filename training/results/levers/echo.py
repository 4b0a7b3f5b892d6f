"""Rule 15 (training/results/clinic.md): the seed-0 cart's shape fusion with and without the echo measurements
(edgebus.core.echo: echo, posterior, heterogeneity) as more inputs.

Run with the CVs of training/results/student.md at /work/runs/t31 (cv-s0, unet-cv); writes echo.json (committed
beside this script):  python training/results/levers/echo.py
"""
import json
from pathlib import Path

import numpy as np

from edgebus.core import fusion
from edgebus.core.calibration import crossfit_operating_point
from edgebus.core.echo import FEATURES as ECHO
from edgebus.core.stats import bootstrap_classification
from edgebus.evaluation.shape_fusion import fusion_inputs

inp = fusion_inputs("/work/runs/t31/cv-s0", "/work/runs/t31/unet-cv")
x, y, fold, m = inp["x"], inp["y"], inp["fold"], inp["m"]
echo = m[:, -len(ECHO):]
names = list(fusion.INPUTS)


def crossfit(xx, nm):
    out = np.zeros(len(y))
    for f in np.unique(fold):
        t = fold == f
        out[t] = fusion.predict(fusion.fit_logistic(xx[~t], y[~t], nm, "fused"), xx[t], nm)
    return out


res = {}
for label, xx, nm in (("fused", x, names), ("fused + echo", np.c_[x, echo], names + list(ECHO))):
    s = crossfit(xx, nm)
    op = crossfit_operating_point(y, s, fold, 0.9, n_boot=2000)["cross_fitted"]
    auc = bootstrap_classification(y, s)["auc"]
    res[label] = {"auc": auc, "sensitivity": op["sensitivity"], "specificity": op["specificity"],
                  "specificity_ci": op["specificity_ci"]}
    print(label, "AUC %.3f [%.3f, %.3f]" % (auc["value"], auc["lo"], auc["hi"]),
          "sens %.3f spec %.3f [%.3f, %.3f]" % (op["sensitivity"], op["specificity"], *op["specificity_ci"]))
Path(__file__).with_name("echo.json").write_text(json.dumps(res, indent=1))
