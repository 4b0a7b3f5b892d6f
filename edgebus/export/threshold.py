"""An operating point per exported file.

A classifier's threshold lives on its own probability scale: a QAT fine-tune or a quantized graph
can move that scale, and a threshold chosen for the float model then decides something else (the
demo's first QAT file called 5 of 6 cancers benign at its parent's threshold). So every exported
classifier file gets its threshold by the same rule, and from the same data, that chose the run's:

* "fixed": no operating point was chosen (the run's threshold, 0.5 unless --threshold): every file
  keeps it, and the gates say whether the file still decides as its parent does;
* "val": `edgebus operating-point RUN` chose it for a target sensitivity on the validation part:
  each file's threshold is chosen on the file's own validation scores for the same target;
* "cv": `edgebus operating-point RUN --from-cv CV` took it from a CV's pooled out-of-fold scores:
  an int8 file takes the one chosen on the CV's int8 scores (with their calibration), a float file
  the one chosen on the CV's float scores.
"""

from __future__ import annotations

import numpy as np

from edgebus.core.errors import flag
from edgebus.core.metrics import threshold_for_sensitivity


def rule_of(run) -> str:
    """"fixed", "val" or "cv": how the run's threshold was chosen (the module docstring)."""
    op = run.manifest.operating_point or {}
    if not op:
        return "fixed"
    return "val" if op.get("chosen_on") == "val" else "cv"


def parent_point(run) -> dict:
    """The float Keras model's own threshold and calibration (what the gates compare a file with)."""
    op = run.manifest.operating_point or {}
    per = (op.get("per_source") or {}).get("float")
    if rule_of(run) == "cv" and per:
        return {"threshold": per["threshold"], "calibration": per.get("calibration")}
    return {"threshold": float(run.manifest.threshold), "calibration": run.manifest.calibration}


def file_point(run, fmt: str, val: tuple | None = None) -> dict:
    """The operating point of one exported classifier file: {"threshold", "calibration", "rule",
    "chosen_on", and where chosen on data: "sensitivity", "specificity", "n"}. val: (labels, this
    file's validation scores), needed by the "val" rule."""
    rule = rule_of(run)
    op = run.manifest.operating_point or {}
    if rule == "fixed":
        return {"rule": rule, "threshold": float(run.manifest.threshold), "calibration": run.manifest.calibration,
                "chosen_on": "no data: it is the run's fixed threshold (no operating point was chosen)"}
    if rule == "val":
        y, p = val
        t = threshold_for_sensitivity(y, p, op["target_sensitivity"])
        return {"rule": rule, "threshold": t["threshold"], "calibration": run.manifest.calibration,
                "chosen_on": f"this file's scores on the run's validation part (n={t['n']}), target sensitivity "
                             f"{op['target_sensitivity']:g}",
                "target_sensitivity": op["target_sensitivity"], "sensitivity": t["sensitivity"],
                "specificity": t["specificity"], "n": t["n"]}
    source = "int8" if fmt == "int8" else "float"
    per = (op.get("per_source") or {}).get(source)
    if per is None:  # a run given its CV point before per-source points were recorded
        return {"rule": rule, "threshold": float(run.manifest.threshold), "calibration": run.manifest.calibration,
                "chosen_on": f"{op.get('cv')}: out-of-fold {op.get('source')} scores (the run's; no {source} point "
                             f"recorded: re-run 'edgebus operating-point RUN {flag('from_cv')} CV')"}
    return {"rule": rule, "threshold": per["threshold"], "calibration": per.get("calibration"),
            "chosen_on": f"{op.get('cv')}: pooled out-of-fold {source} scores (n={per['n']}), target sensitivity "
                         f"{op['target_sensitivity']:g}",
            "target_sensitivity": op["target_sensitivity"], "sensitivity": per["sensitivity"],
            "specificity": per["specificity"], "n": per["n"]}


def differs(a: float, b: float) -> bool:
    return not np.isclose(a, b, rtol=0, atol=1e-6)
