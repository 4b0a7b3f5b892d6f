"""Grid reports: report.json of a grid directory rendered as markdown."""

from __future__ import annotations

from edgebus.core.metrics import flat_classification
from edgebus.core.stats import CLASSIFY_KEYS, interval_text
from edgebus.reports.cv import classification_report_md
from edgebus.reports.study import STUDY_EPOCHS, STUDY_LRS


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _grid_head(report: dict, manifest) -> list[str]:
    """Title, how the grid differs from the study's, the recipe, data, content check and selection rule,
    and the cells trained on after a stop."""
    metric = report["select"]
    ident = manifest.grid["identity"]
    cc = manifest.grid["content_check"]
    rec = report.get("recipe") or {}
    lrs, eps = ident["lrs"], ident["epochs"]
    lines = [
        f"# Grid search: {ident['model']} at {ident['size']} px" + (f" (recipe `{rec.get('path')}`)" if rec else ""),
        "",
    ]
    if rec.get("reduced"):
        lines += ["**Reduced recipe** (not the study's full grid or input size): " + rec.get("description", ""), ""]
    elif not (set(lrs) >= set(STUDY_LRS) and set(eps) >= set(STUDY_EPOCHS)):
        lines += [f"**Reduced grid** (not the study's 7 x 5): learning rates {', '.join(f'{v:g}' for v in lrs)}, "
                  f"epochs {', '.join(map(str, eps))}.", ""]
    lines += [
        f"Adam, constant learning rate; batch {ident['batch']}, seed {ident['seed']}, weights {ident['weights']}, "
        f"augmentation {'left-right flip' if ident['augment'] else 'none'}. Data fingerprint "
        f"`{manifest.data.fingerprint[:12]}`, {manifest.data.n_lesions} lesion cases, stratified split "
        f"{ident['split_fractions']} (seed {ident['seed']}): "
        + ", ".join(f"{k} {v}" for k, v in manifest.split.counts.items()) + ".",
        "",
        f"Content check: {cc['images']} images, {cc['unique']} unique ({cc['hash']}); "
        + (f"{len(cc['duplicate_groups'])} duplicate group(s), each kept within one split part."
           if cc["duplicate_groups"] else "no duplicates; no image sits in two split parts."),
        "",
        f"One training run per learning rate, evaluated in inference mode at each epoch count on the way. "
        f"Selection by **validation {metric}** only (ties: {', '.join(t for t in report['tiebreak'] if t)}); the test "
        f"numbers of every cell come from the same pass and were not used to choose.",
        "",
    ]
    resumed = sorted({(c["lr"], c["resumed_from"]) for c in report["cells"] if c.get("resumed_from")})
    if resumed:
        lines += ["Trained on from an epoch checkpoint after the run was stopped (same recipe; the data order after "
                  "the stop is not the one an unbroken run would have drawn): "
                  + "; ".join(f"lr {lr:g} from epoch {e}" for lr, e in resumed) + ".", ""]
    return lines


def _cell_tables(report: dict, lrs: list, eps: list) -> list[str]:
    """The selection metric of every cell, on val and on test, the chosen cell in bold."""
    metric, ch = report["select"], report["chosen"]
    by = {(c["lr"], c["epochs"]): c for c in report["cells"]}
    lines = []
    for part in ("val", "test"):
        lines += [f"## {'Validation' if part == 'val' else 'Test'} {metric} (rows: epochs, columns: learning rate)",
                  "",
                  "| epochs | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
        for e in eps:
            row = []
            for lr in lrs:
                v = by[(lr, e)][part].get(metric)
                s = _fmt(v)
                row.append(f"**{s}**" if (lr, e) == (ch["lr"], ch["epochs"]) else s)
            lines.append(f"| {e} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _split_lines(report: dict) -> list[str]:
    """The chosen model on each split part, and its test intervals and figure."""
    ps = report["per_split"]
    ci = report["test_bootstrap"]
    lines = []
    if report["task"] == "classify":
        lines += ["| split | n | accuracy | malignant recall | ROC AUC | macro F1 |", "|---|---|---|---|---|---|"]
        for k in ("train", "val", "test"):
            f = flat_classification(ps[k])
            lines.append(f"| {k} | {ps[k]['n']} | {f['accuracy']:.3f} | {f['malignant_recall']:.3f} | "
                         f"{_fmt(f['auc'])} | {f['f1_macro']:.3f} |")
        lines += ["", classification_report_md(ps["test"], "test split"), "",
                  "Test 95% bootstrap intervals ("
                  + f"{ci['_meta']['resamples']} resamples of the {ci['_meta']['n']} test cases): "
                  + "; ".join(f"{k} {interval_text(ci[k])}" for k in CLASSIFY_KEYS), "",
                  f"![confusion matrix]({report['figures']['confusion_matrix']})", ""]
    else:
        lines += ["| split | n | IoU | Dice | empty predictions |", "|---|---|---|---|---|"]
        for k in ("train", "val", "test"):
            lines.append(f"| {k} | {ps[k]['n']} | {ps[k]['iou']:.3f} | {ps[k]['dice']:.3f} | "
                         f"{ps[k]['empty_predictions']} |")
        lines += ["", "Test 95% bootstrap intervals ("
                  + f"{ci['_meta']['resamples']} resamples of the {ci['_meta']['n']} test images): "
                  + "; ".join(f"{k} {interval_text(ci[k])}" for k in ("iou", "dice")), "",
                  f"![overlay]({report['figures']['overlay']})", ""]
    return lines


def grid_markdown(report: dict, manifest: dict) -> str:
    """report.md of a grid directory from its report and (typed) manifest."""
    ident = manifest.grid["identity"]
    ch = report["chosen"]
    lines = _grid_head(report, manifest) + _cell_tables(report, ident["lrs"], ident["epochs"])
    lines += [f"![grid]({report['figures']['grid']})", "",
              f"## Chosen: lr {ch['lr']:g}, {ch['epochs']} epochs",
              "",
              f"Model in `best/` ({report['best_source']}; a standard run directory for `edgebus export`)."
              + ("" if report["metrics_match_cell"]
                 else " Its val/test metrics differ slightly from the grid cell's."),
              ""]
    return "\n".join(lines + _split_lines(report))
