"""Does an operating point transfer to a scanner setting the models never saw?

Takes the threshold a CV with case folds chose (its operating_point.json, int8) and applies it to the
out-of-fold int8 predictions of a CV grouped by acquisition (`edgebus cv ... --group-by acquisition`),
where every case is scored by models that never saw its frame size (scanner + preset). Prints a
markdown table: sensitivity / specificity there [95% bootstrap CI], per held-out fold too.

    python benchmarks/threshold_transfer.py CASE_CV GROUPED_CV [GROUPED_CV ...]
"""

import sys
from pathlib import Path

import numpy as np

from edgebus.core.io import read_json, read_jsonl
from edgebus.core.stats import bootstrap_classification, interval_text


def oof(cv: Path):
    recs = sorted(read_jsonl(cv / "folds.jsonl"), key=lambda r: r["fold"])
    y = np.concatenate([r["test_label"] for r in recs])
    p = np.concatenate([r["test_prob_int8"] for r in recs])
    fold = np.concatenate([[r["fold"]] * len(r["test_label"]) for r in recs])
    return y, p, fold


def main(case_cv: Path, grouped: list[Path]) -> str:
    op = read_json(case_cv / "operating_point.json")
    thr = float(op["threshold"])
    y0, p0, _ = oof(case_cv)
    b0 = bootstrap_classification(y0, p0, thr)
    lines = [f"Threshold {thr:.4f}: chosen by `edgebus operating-point {case_cv}` (case folds, int8, target sensitivity "
             f"{op['target_sensitivity']:.2f}; cross-fitted there: sensitivity {op['cross_fitted']['sensitivity']:.3f}, "
             f"specificity {op['cross_fitted']['specificity']:.3f}).", "",
             "| out-of-fold int8 predictions of | AUC [95% CI] | sensitivity at that threshold [95% CI] | specificity "
             "[95% CI] | sensitivity per held-out fold (cases, malignant) |", "|---|---|---|---|---|",
             f"| `{case_cv.name}` (case folds: the threshold's own predictions) | {interval_text(b0['auc'])} | "
             f"{interval_text(b0['malignant_recall'])} | {interval_text(b0['benign_recall'])} | |"]
    for g in grouped:
        y, p, fold = oof(g)
        b = bootstrap_classification(y, p, thr)
        per = []
        for f in np.unique(fold):
            m = (fold == f) & (y == 1)
            per.append(f"{(p[m] >= thr).mean():.2f} ({int((fold == f).sum())}, {int(m.sum())})")
        by = read_json(g / "folds.json").get("group_by", "case") if (g / "folds.json").is_file() else "case"
        what = "acquisition folds: unseen scanner settings" if by == "acquisition" else "case folds"
        lines.append(f"| `{g.name}` ({what}) | {interval_text(b['auc'])} | "
                     f"{interval_text(b['malignant_recall'])} | {interval_text(b['benign_recall'])} | {'; '.join(per)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]))
