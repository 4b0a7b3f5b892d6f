"""Export validation: every exported file scored beside its float Keras parent, gates on what
int8 may cost, and the markdown table of export_report.md."""

from __future__ import annotations

from edgebus.core.tasks import get_task


def gate_check(task, ref: dict, got: dict, max_drop: float | None, max_recall_drop: float | None,
               fidelity: dict | None = None, max_flips: int | None = None) -> dict:
    """Compare a file's test metrics with the float Keras model's (task.gates).

    Classifiers: accuracy and malignant recall drops in percentage points (1.0 = one point), and
    the labels flipped case by case (fidelity["flips"]) against --max-flips.
    Segmenters: IoU drop as a fraction (0.01); --max-recall-drop and --max-flips do not apply."""
    limits = {"--max-drop": max_drop, "--max-recall-drop": max_recall_drop}
    checks, failures = [], []
    gates = get_task(task).gates
    for key, label, opt, scale, unit in gates:
        limit = limits[opt]
        drop = (ref[key] - got[key]) * scale
        ok = limit is None or drop <= limit + 1e-9
        checks.append({"metric": key, "drop": round(drop, 4), "unit": unit or key, "limit": limit, "option": opt, "passed": ok})
        if not ok:
            amount = f"{drop:.1f} {unit}" if unit else f"{drop:.3f}"
            failures.append(f"{label} dropped {amount} (> {opt} {limit:g})")
    if max_flips is not None and fidelity is not None and "flips" in fidelity:
        ok = fidelity["flips"] <= max_flips
        checks.append({"metric": "flips", "value": fidelity["flips"], "limit": max_flips, "option": "--max-flips",
                       "passed": ok})
        if not ok:
            failures.append(f"{fidelity['flips']} of {fidelity['n']} test labels flipped against the float model "
                            f"({fidelity['benign_to_malignant']} benign->malignant, {fidelity['malignant_to_benign']} "
                            f"malignant->benign; > --max-flips {max_flips})")
    elif max_flips is not None:
        limits["--max-flips"] = max_flips
    for opt in sorted(set(limits) - {g[2] for g in gates}):
        if limits[opt] is not None:
            checks.append({"option": opt, "limit": limits[opt], "passed": True,
                           "note": f"not applicable to a {get_task(task).role}"})
    return {"passed": not failures, "checks": checks, "failures": failures}


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def _d(v, ref, scale=1.0, fmt="+.3f"):
    return f"{(v - ref) * scale:{fmt}}"


# per task: (column, cell of (metrics, reference metrics, agreement or None))
COLUMNS = {
    "classify": [
        ("accuracy", lambda m, r, a: _fmt(m["accuracy"])),
        ("malignant recall", lambda m, r, a: _fmt(m["per_class"]["malignant"]["recall"])),
        ("benign recall", lambda m, r, a: _fmt(m["per_class"]["benign"]["recall"])),
        ("AUC", lambda m, r, a: _fmt(m["auc"])),
        ("Δacc (pts)", lambda m, r, a: _d(m["accuracy"], r["accuracy"], 100, "+.1f")),
        ("Δrecall (pts)", lambda m, r, a: _d(m["malignant_recall"], r["malignant_recall"], 100, "+.1f")),
        ("label agreement", lambda m, r, a: _fmt(a["label_agreement"]) if a else "-"),
        ("flips b→m / m→b", lambda m, r, a: f"{a['benign_to_malignant']} / {a['malignant_to_benign']} of {a['n']}"
         if a and "n" in a else "-"),
        ("max Δp", lambda m, r, a: _fmt(a["max_abs_diff"]) if a else "-"),
    ],
    "segment": [
        ("IoU", lambda m, r, a: _fmt(m["iou"])),
        ("Dice", lambda m, r, a: _fmt(m["dice"])),
        ("pixel acc", lambda m, r, a: _fmt(m["pixel_accuracy"])),
        ("ΔIoU", lambda m, r, a: _d(m["iou"], r["iou"])),
        ("pixel agreement", lambda m, r, a: _fmt(a["pixel_agreement"]) if a else "-"),
        ("mask IoU vs float (mean / min)", lambda m, r, a: f"{a['mask_iou_mean']:.3f} / {a['mask_iou_min']:.3f}"
         if a and "mask_iou_mean" in a else "-"),
        ("mean Δp", lambda m, r, a: _fmt(a["mean_abs_diff"], 4) if a else "-"),
    ],
}


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
        status = e["status"] + (" (comparison)" if e.get("role") == "comparison" else "")
        lines.append(cells(e["file"], e.get("source", "-"), f"{e['bytes'] / 1e6:.2f}", e["metrics"],
                           {**e["agreement"], **(e.get("fidelity") or {})}, status))
    return "\n".join(lines)
