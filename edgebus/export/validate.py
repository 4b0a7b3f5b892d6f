"""Export validation: every exported file scored beside its float Keras parent, gates on what
int8 may cost, and the markdown table of export_report.md."""

from __future__ import annotations

from edgebus.core.errors import flag
from edgebus.core.tasks import get_task


def default_max_flips(n: int) -> int:
    """--max-flips when not given: a tenth of the test cases, at least one (one case is 4-6 points
    on a 16-25 image test split, so a fixed count would be stricter on a larger split)."""
    return max(1, int(n) // 10)


def gate_check(task, ref: dict, got: dict, limits: dict, fidelity: dict | None = None,
               mask_fidelity: dict | None = None) -> dict:
    """Compare a file with its float Keras parent on the test split, each at its own threshold.

    limits: max_drop, max_recall_drop (off when None: accuracy and malignant recall points for a
    classifier, IoU for a segmenter), and the clinical gates, on by default: max_missed (malignant
    cases the parent caught that the file calls benign, case by case), max_flips (labels decided differently;
    None: default_max_flips), min_mask_iou (a segmenter's mean per-image mask IoU against its parent, or
    a multi-task classifier's: its `mask_fidelity`).
    Returns {"passed", "checks", "failures"}; a failure reads as one sentence naming its option."""
    task = get_task(task)
    checks, failures = [], []

    def check(metric, ok, option, limit, text, **kw):
        checks.append({"metric": metric, "limit": limit, "option": option, "passed": bool(ok), **kw})
        if not ok:
            failures.append(f"{text} (> {option} {limit:g})" if metric != "mask_iou" else f"{text} (< {option} {limit:g})")

    by_option = {flag("max_drop"): limits.get("max_drop"), flag("max_recall_drop"): limits.get("max_recall_drop")}
    for key, label, opt, scale, unit in task.gates:
        limit = by_option[opt]
        if limit is None:
            continue
        drop = (ref[key] - got[key]) * scale
        amount = f"{drop:.1f} {unit}" if unit else f"{drop:.3f}"
        check(key, drop <= limit + 1e-9, opt, limit, f"{label} dropped {amount}", drop=round(drop, 4), unit=unit or key)
    fid = fidelity or {}
    mask = fid if task.truth_is_mask else (mask_fidelity or {})
    limit = limits.get("min_mask_iou")
    if limit is not None and mask.get("mask_iou_mean") is not None:
        v = mask["mask_iou_mean"]
        check("mask_iou", v >= limit - 1e-9, flag("min_mask_iou"), limit,
              f"mean mask IoU against the float model {v:.3f} over {mask['n']} test images", value=round(v, 4))
    if task.truth_is_mask:
        return {"passed": not failures, "checks": checks, "failures": failures}
    if limits.get("max_missed") is not None and "missed_new" in fid:  # case by case: a cancer the parent caught
        check("missed_malignant", fid["missed_new"] <= limits["max_missed"], flag("max_missed"), limits["max_missed"],
              f"calls {fid['missed_new']} test cancer(s) benign that the float model caught ({fid['missed']} of "
              f"{fid['malignant']} called benign, the float model {fid['missed_float']})", value=fid["missed_new"])
    if "flips" in fid:
        limit = limits.get("max_flips")
        limit = default_max_flips(fid["n"]) if limit is None else limit
        check("flips", fid["flips"] <= limit, flag("max_flips"), limit,
              f"{fid['flips']} of {fid['n']} test labels flipped against the float model: {fid['benign_to_malignant']} "
              f"benign->malignant, {fid['malignant_to_benign']} malignant->benign", value=fid["flips"])
    return {"passed": not failures, "checks": checks, "failures": failures}


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def _d(v, ref, scale=1.0, fmt="+.3f"):
    return f"{(v - ref) * scale:{fmt}}"


# per task: (column, cell of (metrics, reference metrics, agreement or None))
COLUMNS = {
    "classify": [
        ("threshold", lambda m, r, a: _fmt(m.get("threshold"))),
        ("accuracy", lambda m, r, a: _fmt(m["accuracy"])),
        ("malignant recall", lambda m, r, a: _fmt(m["per_class"]["malignant"]["recall"])),
        ("benign recall", lambda m, r, a: _fmt(m["per_class"]["benign"]["recall"])),
        ("AUC", lambda m, r, a: _fmt(m["auc"])),
        ("Δacc (pts)", lambda m, r, a: _d(m["accuracy"], r["accuracy"], 100, "+.1f")),
        ("Δrecall (pts)", lambda m, r, a: _d(m["malignant_recall"], r["malignant_recall"], 100, "+.1f")),
        ("flips b→m / m→b", lambda m, r, a: f"{a['benign_to_malignant']} / {a['malignant_to_benign']} of {a['n']}"
         if a and "n" in a else "-"),
        ("abs Δp median / p95 / max", lambda m, r, a: f"{a['median_abs_diff']:.3f} / {a['p95_abs_diff']:.3f} / "
         f"{a['max_abs_diff']:.3f}" if a and a.get("p95_abs_diff") is not None else "-"),
    ],
    "segment": [
        ("IoU", lambda m, r, a: _fmt(m["iou"])),
        ("Dice", lambda m, r, a: _fmt(m["dice"])),
        ("pixel acc", lambda m, r, a: _fmt(m["pixel_accuracy"])),
        ("ΔIoU", lambda m, r, a: _d(m["iou"], r["iou"])),
        ("pixel agreement", lambda m, r, a: _fmt(a["pixel_agreement"]) if a else "-"),
        ("mask IoU vs float (mean / median / min)", lambda m, r, a: f"{a['mask_iou_mean']:.3f} / "
         f"{a['mask_iou_median']:.3f} / {a['mask_iou_min']:.3f}" if a and a.get("mask_iou_median") is not None else "-"),
        ("abs Δp median / p95", lambda m, r, a: f"{a['median_abs_diff']:.4f} / {a['p95_abs_diff']:.4f}"
         if a and a.get("p95_abs_diff") is not None else "-"),
    ],
}


def status_text(e: dict) -> str:
    """An exported file's status as the report shows it: ok, FAILED (gates: why), failed."""
    if e["status"] == "gate_failed":
        return "FAILED: " + "; ".join((e.get("gate") or {}).get("failures") or [e.get("error", "")])
    return e["status"]


def validation_table(task, refs: list[tuple[str, str, dict]], entries: dict) -> str:
    """Markdown: the float (and QAT) Keras references, then every exported file, same columns."""
    cols = COLUMNS[get_task(task).name]
    head = ["model", "source", "MB", *(c for c, _ in cols), "status"]
    ref = refs[0][2]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(name, source, size, m, agree, status):
        return "| " + " | ".join([name, source, size, *(f(m, ref, agree) for _, f in cols), status]) + " |"

    for name, source, m in refs:
        lines.append(cells(name, source, "-", m, None, "reference" if m is ref else "-"))
    for e in entries.values():
        status = status_text(e) if e.get("role") != "comparison" else e["status"] + " (comparison" + (
            ", FAILED: " + "; ".join(e["gate"]["failures"]) if (e.get("gate") or {}).get("failures") else "") + ")"
        lines.append(cells(e["file"], e.get("source", "-"), f"{e['bytes'] / 1e6:.2f}", e["metrics"],
                           {**e["agreement"], **(e.get("fidelity") or {})}, status))
    return "\n".join(lines)
