"""Figures for grid searches and cross-validation, as PNG files (matplotlib, Agg backend).

matplotlib is imported inside the functions, with the non-interactive Agg backend, so importing
this module is cheap and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.core.metrics import CLASS_NAMES
from edgebus.core.io import atomic_write

_LABELS = {"accuracy": "accuracy", "auc": "ROC AUC", "malignant_recall": "malignant recall", "iou": "IoU",
           "dice": "Dice", "f1_macro": "macro F1"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Render to PNG bytes, then write atomically (a killed process never leaves half an image)."""
    import io

    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def grid_plot(cells: list[dict], metric: str, path: str | Path, title: str = "",
              parts=("val", "test"), chosen: dict | None = None) -> Path:
    """The study's multiline figure: `metric` against the learning rate (log axis), one line per
    epoch count, one panel per split part. The chosen cell is ringed."""
    plt = _plt()
    epochs = sorted({c["epochs"] for c in cells})
    lrs = sorted({c["lr"] for c in cells})
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, part in zip(axes[0], parts):
        for i, e in enumerate(epochs):
            pts = sorted((c["lr"], c[part][metric]) for c in cells if c["epochs"] == e and c[part].get(metric) is not None)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="os^Dv"[i % 5], markersize=5, alpha=0.85,
                        color=cmap(i / max(len(epochs) - 1, 1)), label=f"{e} epochs")
        if chosen is not None and chosen[part].get(metric) is not None:
            ax.scatter([chosen["lr"]], [chosen[part][metric]], s=180, facecolors="none", edgecolors="red",
                       linewidths=1.5, zorder=5, label="chosen (by val)")
        ax.set_xscale("log")
        ax.set_xticks(lrs)
        ax.set_xticklabels([f"{v:g}" for v in lrs], rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("learning rate")
        ax.set_ylim(-0.02, 1.02)  # every metric here is in [0, 1]; a full axis keeps differences honest
        ax.set_title(f"{'validation' if part == 'val' else part} {_LABELS.get(metric, metric)}")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(_LABELS.get(metric, metric))
    axes[0][-1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix_plot(cm, path: str | Path, title: str = "", labels=CLASS_NAMES) -> Path:
    """Counts (rows = truth, columns = prediction) with the row percentage in each cell."""
    plt = _plt()
    cm = np.asarray(cm, dtype=int)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    rows = cm.sum(1, keepdims=True)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            pct = 100.0 * cm[i, j] / rows[i, 0] if rows[i, 0] else 0.0
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, f"{cm[i, j]}\n{pct:.0f}%", ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix (n={int(cm.sum())})", fontsize=10)
    return _save(fig, path)


def overlay_grid(images, masks_true, masks_prob, path: str | Path, names=None, threshold: float = 0.5,
                 n: int = 6, title: str = "") -> Path:
    """Rows of (image, true mask, predicted mask), like the study's Figure 9.

    Rows are spread evenly over the IoU ranking (best to worst), so the figure shows typical cases,
    not the best ones only."""
    plt = _plt()
    images = np.asarray(images)
    t = np.asarray(masks_true).reshape(len(images), *images.shape[1:3]) > 0
    p = np.asarray(masks_prob).reshape(len(images), *images.shape[1:3]) >= threshold
    inter = (t & p).sum((1, 2))
    union = (t | p).sum((1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    order = np.argsort(-iou, kind="stable")
    k = min(n, len(images))
    rows = order[np.unique(np.linspace(0, len(images) - 1, k).round().astype(int))] if k else []
    fig, axes = plt.subplots(max(len(rows), 1), 3, figsize=(7.5, 2.5 * max(len(rows), 1)), squeeze=False)
    for r, i in enumerate(rows):
        gray = images[i][..., 0] if images.ndim == 4 else images[i]
        name = f"{names[i]}" if names is not None else f"#{i}"
        for c, (img, label) in enumerate(((gray, f"{name}: image"), (t[i], "true mask"),
                                          (p[i], f"predicted (IoU {iou[i]:.2f})"))):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if c == 2:
                ax.contour(t[i].astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def reliability_plot(curves: dict, path: str | Path, title: str = "") -> Path:
    """Observed malignant rate against mean predicted probability per bin, one line per curve
    ({name: edgebus.core.calibration.reliability(...)}), marker size by cases in the bin."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for name, bins in curves.items():
        pts = [(b["predicted"], b["observed"], b["n"]) for b in bins if b["n"]]
        if pts:
            x, y, n = zip(*pts)
            ax.plot(x, y, marker="o", lw=1.2, label=name)
            ax.scatter(x, y, s=[8 + 2 * k for k in n], alpha=0.35)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted malignant probability")
    ax.set_ylabel("observed malignant rate")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "reliability", fontsize=10)
    return _save(fig, path)
