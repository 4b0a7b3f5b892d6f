"""Cross-validation reports: summary.json rendered as markdown (report.md of a CV directory)."""

from __future__ import annotations

from edgebus.core.errors import flag
from edgebus.core.metrics import CLASS_NAMES
from edgebus.core.stats import interval_text
from edgebus.core.tasks import get_task


def _cv_head(summary: dict, manifest) -> list[str]:
    """The report's title, recipe, data and content check, how folds were drawn and crops cut, and the
    header of the metric table."""
    k = summary["k"]
    ident = manifest.cv["identity"]
    cc = manifest.cv["content_check"]
    crop = ident.get("crop_margin")
    boxes_from = manifest.cv.get("boxes_from")
    lines = [
        f"# {k}-fold cross-validation: {ident['model']} at {ident['size']} px"
        + (f", lesion-crop classifier (margin {crop:g})" if crop is not None else ""),
        "",
        f"Adam lr {ident['lr']:g}, {ident['epochs']} epochs, batch {ident['batch']}, seed {ident['seed']}, "
        f"weights {ident['weights']}, kept weights: {ident['keep']} (by each fold's own validation part). "
        f"Data fingerprint `{manifest.data.fingerprint[:12]}`, {manifest.data.n_lesions} lesion cases; "
        f"every case is in exactly one test fold.",
        "",
        f"Content check: {cc['images']} images, {cc['unique']} unique by {cc['hash']}; "
        + (f"{len(cc['duplicate_groups'])} duplicate group(s) kept within one fold "
           f"({cc['label_conflicts']} with conflicting labels)." if cc["duplicate_groups"]
           else "no duplicates; no image in two parts of any fold."),
        "",
        "| metric | mean +- std over folds | pooled out-of-fold [95% bootstrap CI] | per fold |",
        "|---|---|---|---|",
    ]
    if ident.get("group_by") == "acquisition":
        lines[4:4] = [
            "Folds grouped by acquisition setting: every frame size (on BrEaST, a scanner and its preset) sits in one "
            "test fold only, so each case is scored by models that never saw its scanner setting, the internal "
            "stand-in for another clinic's scanner. Val parts are drawn from the training folds' cases.", ""]
    if crop is not None:
        lines[4:4] = [
            "Segmentation-guided: every frame is cut to a square around the lesion (side = (1 + 2 x margin) x the "
            "box's longer side) before the resize. Training crops use the true masks; "
            + (f"val and test crops use the boxes a segmenter predicted in the same fold, never having seen those "
               f"images (`{boxes_from}`; the int8 rows use the int8 segmenter's boxes), as on the cart."
               if boxes_from else "val and test crops ALSO use the true masks: an oracle upper bound, not a cart "
               "result."),
            "",
        ]
    return lines


def _int8_lines(summary: dict, keys, ident: dict) -> list[str]:
    """The full-int8 results (QAT beside PTQ, or PTQ alone) and how far int8 strays from its float parent."""
    lines = []
    if "bootstrap_int8" in summary and "bootstrap_int8_ptq" in summary:
        lines += ["", "Full-int8 TFLite (each fold's model, quantization-aware fine-tuned for "
                  f"{ident.get('qat_epochs')} epochs at lr {0.1 * ident['lr']:g} on its own training part, as "
                  f"`edgebus export {flag('int8')}`; "
                  "and, for comparison, post-training quantized), run with the interpreter on its test part:", "",
                  "| metric | pooled out-of-fold int8 QAT [95% bootstrap CI] | int8 PTQ |", "|---|---|---|"]
        lines += [f"| {key} | {interval_text(summary['bootstrap_int8'][key])} | "
                  f"{interval_text(summary['bootstrap_int8_ptq'][key])} |"
                  for key in keys if key in summary["bootstrap_int8"]]
    elif "bootstrap_int8" in summary:
        lines += ["", "Full-int8 TFLite (each fold's model, post-training quantized on its own training part, run "
                  "with the interpreter on its test part):", "",
                  "| metric | pooled out-of-fold int8 [95% bootstrap CI] |", "|---|---|"]
        lines += [f"| {key} | {interval_text(summary['bootstrap_int8'][key])} |" for key in keys
                  if key in summary["bootstrap_int8"]]
        if "int8_label_agreement" in summary:
            lines.append(f"\nint8 vs float label agreement (pooled): {summary['int8_label_agreement']:.3f}")
    if "int8_fidelity" in summary and "mask_iou_mean" in summary["int8_fidelity"]:
        f = summary["int8_fidelity"]
        lines.append(f"\nint8 masks against their float parent's, image by image over all {f['n']} out-of-fold cases: "
                     f"IoU {f['mask_iou_mean']:.3f} mean, {f['mask_iou_min']:.3f} worst; "
                     f"{f['images_below_0.9']} images below 0.9.")
    elif "int8_fidelity" in summary:
        f = summary["int8_fidelity"]
        lines.append(f"\nint8 against its float parent, case by case over all {f['n']} out-of-fold cases: "
                     f"{f['flips']} labels flipped ({f['benign_to_malignant']} benign -> malignant, "
                     f"{f['malignant_to_benign']} malignant -> benign); probability gap mean "
                     f"{f['mean_abs_diff']:.3f}, max {f['max_abs_diff']:.3f}.")
    return lines


def _extra_lines(summary: dict, keys) -> list[str]:
    """What only some CVs have: a multi-task mask, true-mask crops, BI-RADS descriptors, crop fallbacks."""
    lines = []
    if "mask" in summary:  # a multi-task classifier: the lesion mask from the same model (and int8 file)
        mk = summary["mask"]
        lines.append("\nLesion mask from the same model (multi-task), pooled out-of-fold IoU against the truth: float "
                     + interval_text(mk["bootstrap"])
                     + ("; int8 " + interval_text(mk["bootstrap_int8"]) if "bootstrap_int8" in mk else "") + ".")
    if "bootstrap_oracle" in summary:
        lines += ["", "The same float models on crops around the TRUE masks (what segmentation errors cost):", "",
                  "| metric | pooled out-of-fold, true-mask crops [95% bootstrap CI] |", "|---|---|"]
        lines += [f"| {key} | {interval_text(summary['bootstrap_oracle'][key])} |" for key in keys]
    if "descriptors" in summary:
        lines += ["", "BI-RADS descriptors predicted beside malignancy (float, pooled out-of-fold; unknown cells "
                  "left out):", "",
                  "| descriptor | n | present | accuracy | Cohen's kappa | AUC |", "|---|---|---|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        for name, m in summary["descriptors"].items():
            lines.append(f"| {name} | {m['n']} | {m['positive']} | {fmt(m['accuracy'])} | {fmt(m['kappa'])} | "
                         f"{fmt(m['auc'])} |")
    if "crop_fallbacks" in summary:
        fb = summary["crop_fallbacks"]
        lines.append("\nFrames where the segmenter found no lesion (classified whole, padded to a square): "
                     + ", ".join(f"{k} {v}" for k, v in fb.items()))
    return lines


def cv_markdown(summary: dict, recs: list, manifest) -> str:
    """report.md of a CV directory from its summary, fold records and (typed) manifest."""
    task = summary["task"]
    keys = get_task(task).ci_keys
    lines = _cv_head(summary, manifest)
    for key in keys:
        ms = summary["mean_std"][key]
        b = summary["bootstrap"][key]
        folds = ", ".join("n/a" if v is None else f"{v:.3f}" for v in ms["folds"])
        mean = "n/a" if ms["mean"] is None else f"{ms['mean']:.3f} +- {ms['std']:.3f}"
        lines.append(f"| {key} | {mean} | {interval_text(b)} | {folds} |")
    lines += _int8_lines(summary, keys, manifest.cv["identity"])
    lines += _extra_lines(summary, keys)
    meta = summary["bootstrap"]["_meta"]
    lines += ["", f"Bootstrap: {meta['method']}, {meta['resamples']} resamples, seed {meta['seed']}, n={meta['n']}. "
              "An interval shown without brackets was undefined in the resamples (e.g. no case predicted malignant)."]
    if "confusion_matrix" in summary["pooled"]:  # a classifier
        lines += ["", "The pooled AUC ranks scores of k different models against each other; the mean of the "
                  "per-fold AUCs is the cleaner estimate of one model's ranking quality."]
        lines += ["", classification_report_md(summary["pooled"], "pooled out-of-fold predictions"), "",
                  "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "| fold | test n | kept epoch | wall s |", "|---|---|---|---|"]
    for r in recs:
        wall = (f"{r['wall_s']} (from epoch {r['resumed_from']}, after a stop)" if r.get("resumed_from")
                else r["wall_s"])
        lines.append(f"| {r['fold'] + 1} | {r['test']['n']} | {r['kept_epoch']} | {wall} |")
    if manifest.cv.get("acquisition_audit") and not get_task(task).truth_is_mask:
        lines += ["", audit_markdown(manifest.cv["acquisition_audit"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def classification_report_md(m: dict, title: str = "") -> str:
    """sklearn-style classification report as a markdown table, plus accuracy and ROC AUC."""
    lines = [f"Classification report{': ' + title if title else ''} (n={m['n']}, threshold {m['threshold']:g})", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in CLASS_NAMES:
        pc = m["per_class"][c]
        lines.append(f"| {c} | {pc['precision']:.4f} | {pc['recall']:.4f} | {pc['f1']:.4f} | {pc['support']} |")
    for avg in ("macro", "weighted"):
        a = m[avg]
        lines.append(f"| {avg} avg | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | {m['n']} |")
    auc = "n/a (one class)" if m["auc"] is None else f"{m['auc']:.4f}"
    lines += ["", f"accuracy {m['accuracy']:.4f}; ROC AUC {auc}; confusion matrix (rows truth, columns predicted, "
              f"benign/malignant) {m['confusion_matrix']}"]
    return "\n".join(lines)


def audit_markdown(audit: dict) -> str:
    """The acquisition shortcut audit (edgebus.data.acquisition.shortcut_audit) as a report section."""
    lines = ["## Acquisition shortcut audit", "",
             f"What the acquisition settings alone say about malignancy ({audit['n']} cases, "
             f"{audit['frame_size_groups']} frame sizes). AUC 0.5 says nothing; the further from 0.5, the easier "
             "a whole-frame model learns the scanner setting instead of the lesion.", "",
             "| setting | AUC alone |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |" for k, v in audit["auc_alone"].items()]
    lines += ["", "| frame size | cases | malignant fraction |", "|---|---|---|"]
    lines += [f"| {g['frame']} | {g['cases']} | {g['malignant_fraction']:.2f} |" for g in audit["largest_groups"]]
    return "\n".join(lines) + "\n"
