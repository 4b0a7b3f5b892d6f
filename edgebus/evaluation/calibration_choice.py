"""The calibration a cart ships, chosen out of fold (issue #35): none, an intercept, a temperature or
Platt's two numbers, whichever gives the lowest cross-fitted log loss, reported with its calibration
slope and intercept on each held-out fold and on each scanner setting big enough to measure one.
With acquisition folds every held-out fold is scanner settings no model of that fold saw: the
proxy for "does the shown probability mean the same on a new scanner"."""

from __future__ import annotations

import numpy as np

from edgebus.core.calibration import CALIBRATIONS, choose_calibration

MIN_SETTING = 20  # cases in a scanner setting (5 of each class) before its own slope is reported


def scanner_settings(ids, root) -> tuple[dict | None, str]:
    """({"WxH": mask over ids}, note): each case's scanner setting (frame size) read from the data
    folder, or (None, why not) where the data is not on this machine."""
    try:
        from edgebus.data.acquisition import acquisition_keys
        from edgebus.data.arrays import read_lesions

        keys = acquisition_keys(read_lesions(root)[1])
        names = np.array([keys.get(int(i), "?") for i in ids])
    except Exception as e:  # the data is not here (a CV folder copied elsewhere): per fold only
        return None, f"per scanner setting: not available ({str(e).splitlines()[0][:160]})"
    return {k: names == k for k in sorted(set(names)) if k != "?"}, "per scanner setting: frame size"


def choose(y, p, fold, ids=None, root=None) -> dict:
    """choose_calibration on pooled out-of-fold scores, with scanner settings where the data is here."""
    groups, note = scanner_settings(ids, root) if ids is not None and root else (None, "per scanner setting: no data")
    out = choose_calibration(y, p, fold, groups, MIN_SETTING)
    out["settings_note"] = note
    return out


def _f(v, fmt=".3f"):
    return "n/a" if v is None else format(v, fmt)


def calibration_md(choice: dict, what: str = "probability") -> list[str]:
    """Markdown lines: each method's cross-fitted scores, then the chosen one's slope and intercept per
    held-out fold and scanner setting."""
    rows = choice["methods"]
    lines = [f"## Calibration of the {what}, chosen out of fold", "",
             f"Rule: {choice['rule']}. Each method was fitted on the other folds' out-of-fold scores and applied to "
             "the held-out fold. Calibration slope: 1 is ideal, above 1 the probabilities are too flat, below 1 too "
             "extreme; intercept (slope held at 1): 0 is ideal, above 0 they run low.", "",
             "| method | log loss | Brier | ECE | slope | intercept | slope per held-out fold |", "|---|---|---|---|---|---|---|"]
    ci = lambda v, k, fmt: (f"{v[k]:{fmt}} [{v[k + '_ci'][0]:{fmt}}, {v[k + '_ci'][1]:{fmt}}]"  # noqa: E731
                            if k + "_ci" in v else f"{v[k]:{fmt}}")
    for m in CALIBRATIONS:
        r, line = rows[m], rows[m]["line"] or {}
        per = ", ".join(_f(f.get("slope"), ".2f") for f in r["per_fold"])
        mark = " (chosen)" if m == choice["chosen"] else ""
        lines.append(f"| {m}{mark} | {r['log_loss']:.4f} | {r['brier']:.4f} | {r['ece']:.3f} | {_f(line.get('slope'), '.2f')} "
                     f"| {_f(line.get('intercept'), '+.2f')} | {per} |")
    chosen = rows[choice["chosen"]]
    settings = chosen["per_setting"]
    folds = [f for f in chosen["per_fold"] if "slope" in f]
    if folds:
        lines += ["", f"The chosen calibration ({choice['chosen']}) per held-out fold [95% CI, cases resampled]:", "",
                  "| held-out fold | n | malignant | slope | intercept |", "|---|---|---|---|---|"]
        lines += [f"| {f['fold']} | {f['n']} | {f['malignant']} | {ci(f, 'slope', '.2f')} | {ci(f, 'intercept', '+.2f')} |"
                  for f in folds]
    lines += ["", f"Chosen: **{choice['chosen']}**. {choice['settings_note'].capitalize()}"
              + (f"; the settings with at least {MIN_SETTING} cases, 5 of each class:" if settings else
                 f"; no setting has {MIN_SETTING} cases with 5 of each class.")]
    if settings:
        lines += ["", "| scanner setting | n | malignant | slope | intercept |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['malignant']} | {ci(v, 'slope', '.2f')} | {ci(v, 'intercept', '+.2f')} |"
                  for k, v in settings.items()]
    return lines + [""]
