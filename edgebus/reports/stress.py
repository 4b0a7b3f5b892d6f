"""The stress benchmark's report: stress.json as markdown, and one figure of the key metric per
acquisition change, float beside int8."""

from __future__ import annotations

from pathlib import Path

from edgebus.reports.figures import _plt, _save


def _label(r: dict) -> str:
    return "clean" if r["strength"] is None else f"{r['change']} {r['strength']:g}"


def stress_markdown(res: dict) -> str:
    kinds = res["kinds"]
    metrics = list(res["rows"][0][kinds[0]])
    fid = "int8_vs_float" in res["rows"][0]
    seg = res["task"] == "segment"
    head = ["change"] + [f"{m} {k}" for k in kinds for m in metrics] + [f"drop {k}" for k in kinds]
    head += ["int8 vs float: mask IoU mean / worst" if seg else "int8 vs float: labels flipped (b->m / m->b)"] if fid else []
    lines = [f"# Scanner-shift stress benchmark ({res['task']})", "",
             f"{res['description']}, n={res['n']}; threshold {res['threshold']:.4f}; seed {res['seed']}. Each change is "
             "applied to the full-resolution frame before the preprocessing the cart uses (edgebus/data/stress.py "
             "documents them). Drop = clean minus changed " + res["summary"][kinds[0]]["metric"] + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if "cart" in kinds:
        lines[4:4] = ["`cart`: the int8 map as the cart shows its mask (the largest region, at the frame's own size, "
                      "against the frame's own mask); `float` and `int8`: the whole map on the model's grid.", ""]
    for r in res["rows"]:
        cells = [_label(r)] + [("n/a" if r[k][m] is None else f"{r[k][m]:.3f}") for k in kinds for m in metrics]
        cells += ["" if "drop" not in r[k] else f"{r[k]['drop']:+.3f}" for k in kinds]
        if fid:
            f = r["int8_vs_float"]
            cells.append(f"{f['mask_iou_mean']:.3f} / {f['mask_iou_min']:.3f}" if seg else
                         f"{f['flips']} of {f['n']} ({f['benign_to_malignant']} / {f['malignant_to_benign']})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Worst case: " + "; ".join(
        f"{k} {s['metric']} {s['clean']:.3f} clean, {s['worst']:.3f} under {s['worst_change']} (drop {s['worst_drop']:.3f})"
        + (f", lowest sensitivity {s['worst_sensitivity']:.3f}" if "worst_sensitivity" in s else "")
        for k, s in res["summary"].items())]
    if "int8_vs_float" in res:
        f = res["int8_vs_float"]
        what = ("mask IoU {:.3f} mean".format(f["worst"]["mask_iou_mean"]) if seg else f"{f['worst']['flips']} labels flipped")
        lines.append(f"\nint8 furthest from its float parent under {f['worst_change']}: {what} (clean: "
                     + (f"{f['clean']['mask_iou_mean']:.3f}" if seg else f"{f['clean']['flips']}") + ").")
    lines += ["", "![stress](stress.png)", ""]
    return "\n".join(lines)


def stress_plot(res: dict, path: str | Path) -> Path:
    """The drop of the key metric (clean minus changed) per acquisition change, one bar per model kind, on
    an axis scaled to the drops: they are a few hundredths of AUC or IoU, invisible on a 0-1 axis of the
    metric itself. A bar right of zero is a loss, left of it a gain; the clean values are in the title."""
    plt = _plt()
    rows = [r for r in res["rows"] if r["strength"] is not None]  # the clean row's drop is 0 by definition
    kinds = res["kinds"]
    metric = res["summary"][kinds[0]]["metric"]
    fig, ax = plt.subplots(figsize=(7.2, 0.3 * len(rows) * max(1, len(kinds) / 2) + 1.6))
    ys = list(range(len(rows)))[::-1]
    width = 0.8 / len(kinds)
    drops = []
    for i, k in enumerate(kinds):
        pts = [(y + ((len(kinds) - 1) / 2 - i) * width, r[k]["drop"]) for y, r in zip(ys, rows) if r[k].get("drop") is not None]
        if not pts:
            continue
        yk, dk = zip(*pts)
        drops += dk
        ax.barh(yk, dk, height=width, label=k, color=f"C{i}")
        for y, d in pts:
            ax.annotate(f"{round(d, 3) + 0.0:+.3f}", (d, y), xytext=(3 if d >= 0 else -3, 0), textcoords="offset points",
                        ha="left" if d >= 0 else "right", va="center", fontsize=6)
    ax.axvline(0, color="0.2", lw=0.8)
    lo, hi = min(drops + [0.0]), max(drops + [0.0])
    pad = max(hi - lo, 0.01) * 0.18  # room for the value labels
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks(ys)
    ax.set_yticklabels([_label(r) for r in rows], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"drop in {metric} (clean minus changed; > 0 is worse)")
    clean = ", ".join(f"{k} {res['rows'][0][k][metric]:.3f}" for k in kinds if res["rows"][0][k].get(metric) is not None)
    ax.set_title(f"stress: {metric} drop per acquisition change (n={res['n']}; clean {clean})", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)
