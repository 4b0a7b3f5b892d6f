"""Rule 14 (training/results/clinic.md): the seed-0 cart's shape fusion with and without the patient's age.

Run with the CVs of training/results/student.md at /work/runs/t31 (cv-s0, unet-cv); writes age.json (committed
beside this script):  python training/results/levers/age.py
"""
import json
from pathlib import Path
import numpy as np
from edgebus.core import fusion
from edgebus.core.calibration import crossfit_operating_point
from edgebus.core.stats import bootstrap_classification
from edgebus.data.breast import case_attributes
from edgebus.evaluation.shape_fusion import fusion_inputs

inp = fusion_inputs("/work/runs/t31/cv-s0", "/work/runs/t31/unet-cv")
x, y, fold, ids = inp["x"], inp["y"], inp["fold"], inp["ids"]
attrs = case_attributes("/work/shared/data/BrEaST-Lesions_USG")
age = np.array([float(a) if isinstance(a := attrs[i]["age"], (int, float)) else np.nan for i in ids])
print("age known", np.isfinite(age).sum(), "of", len(age))
names = list(fusion.INPUTS)
def crossfit(xx, nm):
    out = np.zeros(len(y))
    for f in np.unique(fold):
        t = fold == f
        m = fusion.fit_logistic(xx[~t], y[~t], nm, "fused")
        out[t] = fusion.predict(m, xx[t], nm)
    return out
res = {}
for label, xx, nm in (("fused", x, names), ("fused + age", np.c_[x, age], names + ["age"])):
    s = crossfit(xx, nm)
    op = crossfit_operating_point(y, s, fold, 0.9, n_boot=2000)["cross_fitted"]
    auc = bootstrap_classification(y, s)["auc"]
    res[label] = {"auc": auc, "sensitivity": op["sensitivity"], "specificity": op["specificity"],
                  "specificity_ci": op["specificity_ci"], "sensitivity_ci": op["sensitivity_ci"]}
    print(label, "AUC %.3f [%.3f, %.3f]" % (auc["value"], auc["lo"], auc["hi"]), "sens %.3f spec %.3f [%.3f, %.3f]" % (op["sensitivity"], op["specificity"], *op["specificity_ci"]))
Path(__file__).with_name("age.json").write_text(json.dumps(res, indent=1))
