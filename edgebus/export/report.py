"""export_report.md: every exported file beside its float parent, the gates' verdicts, each file's
threshold, the interpreters that load it, and where int8 loses."""

from __future__ import annotations

from edgebus.core.errors import flag
from edgebus.core.io import atomic_write
from edgebus.core.manifest import Run
from edgebus.config.stages import ExportConfig
from edgebus.export.threshold import differs
from edgebus.export.validate import status_text, validation_table


def stability_line(task, s: dict) -> str:
    if task.truth_is_mask:
        return (f"Float model against itself with one gray level of noise (σ 1/255): mask IoU {s['mask_iou_mean']:.3f} mean, "
                f"{s['mask_iou_min']:.3f} worst; no file can be expected to follow it more closely.")
    return (f"Float model against itself with one gray level of noise (σ 1/255): {s['flips']} of {s['n']} labels flip, "
            f"|Δp| p95 {s['p95_abs_diff']:.3f}" + ("; a parent this fragile cannot be followed exactly by any int8 copy."
                                                    if s["flips"] else "."))



def write_report(run: Run, refs, results: dict, cfg: ExportConfig, n: int, edgetpu: bool, parent: dict, stability: dict) -> str:
    table = validation_table(run.task, refs, results)
    rt_lines = [f"- {e['file']}: " + "; ".join(f"{k}: {v['status']}" + (f" ({v['error']})" if v.get("error") else "")
                                               for k, v in e.get("runtimes", {}).items()) for e in results.values()]
    off = lambda v: "off" if v is None else f"{v:g}"  # noqa: E731
    if run.task.truth_is_mask:
        gates = f"{flag('min_mask_iou')} {cfg.min_mask_iou:g} (mean per-image mask IoU against the float model)"
    else:
        flips = off(cfg.max_flips) if cfg.max_flips is not None else "a tenth of the test cases, at least 1"
        gates = (f"{flag('max_missed')} {cfg.max_missed} (test cancers the float model caught that the file calls "
                 f"benign), {flag('max_flips')} {flips}")
    md = [f"# Export validation: {run.manifest.model.name} ({run.task.name})", "",
          f"Test split, n={n}; Δ and flips against the float Keras model (threshold {parent['threshold']:.4f}), "
          "each classifier file decided at its own threshold. "
          f"Gates: {gates}; {flag('max_drop')} {off(cfg.max_drop)}, {flag('max_recall_drop')} "
          f"{off(cfg.max_recall_drop)}.", "",
          table, "", "## Gates and thresholds", "", stability_line(run.task, stability), ""]
    for e in results.values():
        if "gate" not in e:
            continue
        verdict = status_text(e) if e.get("role") != "comparison" else \
            ("passed" if e["gate"]["passed"] else "FAILED: " + "; ".join(e["gate"]["failures"])) + \
            " (a comparison file: the export does not stop on it; bundle and predict refuse it if it failed)"
        md.append(f"- {e['file']}: {verdict}.")
        point = e.get("operating_point")
        if point is not None:
            moved = (f" differs from the float model's {parent['threshold']:.4f}" if differs(point["threshold"], parent["threshold"])
                     else " is the float model's")
            there = "" if point.get("sensitivity") is None else \
                f" (sensitivity {point['sensitivity']:.3f}, specificity {point.get('specificity') or float('nan'):.3f} there)"
            md.append(f"  Threshold {point['threshold']:.4f}{moved}; chosen on {point['chosen_on']}{there}.")
    masks = [e for e in results.values() if e.get("mask")]
    if masks:
        md += ["", "## Lesion mask (multi-task files: the same invoke gives the mask)", "",
               "| file | IoU vs truth | Dice vs truth | mask IoU vs float (mean / min) |", "|---|---|---|---|"]
        md += [f"| {e['file']} | {e['mask']['iou']:.3f} | {e['mask']['dice']:.3f} | "
               f"{e['mask']['fidelity']['mask_iou_mean']:.3f} / {e['mask']['fidelity']['mask_iou_min']:.3f} |" for e in masks]
    md += ["", "## Interpreters", ""] + rt_lines
    if edgetpu:
        md += ["", "## Edge TPU", "", "See edgetpu_report.md."]
    lit = (results.get("int8_litert") or {}).get("litert")
    if lit:
        kept = ", ".join(f"`{t}`" for t in lit["int16_tensors"]) or "none"
        md += ["", f"## Where int8 loses (AI Edge quantizer {lit.get('version')}, {lit['layers']} tensors)", "",
               f"Tensors kept at 16-bit activations ({flag('sensitive_int16')}): {kept}.", "",
               "| tensor | MSE vs float, all int8 | MSE, as exported |", "|---|---|---|"]
        after = {r["tensor"]: r["mse"] for r in lit["layer_errors"]}
        md += [f"| `{r['tensor'][:90]}` | {r['mse']:.3g} | {after[r['tensor']]:.3g} |" if r["tensor"] in after else
               f"| `{r['tensor'][:90]}` | {r['mse']:.3g} | - |" for r in lit["layer_errors_int8"][:10]]
    atomic_write(run.file("export_report.md"), "\n".join(md) + "\n")
    run.add_artifact("export_report.md", "export-report")
    return table
