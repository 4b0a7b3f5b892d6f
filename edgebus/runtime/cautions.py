"""Warnings a result carries so that it cannot mislead: a model of synthetic data, several candidate
lesions in one frame. Each is a full sentence in the row's `warnings` and a short line burned into the
overlay (`overlay_line`), so a screenshot or a saved PNG carries it too."""

from __future__ import annotations

SYNTHETIC = ("model trained on SYNTHETIC data ('edgebus synth'), not on patient data: its labels mean nothing "
             "for a real frame; train on BrEaST-Lesions_USG for a real model")

CANDIDATE_SHARE = 0.2
"""The lesion is the largest 8-connected region of the thresholded lesion map (found on the model's grid);
another region counts as a candidate lesion when its area is at least this share of the largest's, and
smaller ones are specks, dropped from the mask, box and area without a word."""


def trained_on_synthetic(meta: dict | None) -> bool:
    """Whether an exported file's embedded metadata says its training set was synthetic."""
    return bool(((meta or {}).get("training_data") or {}).get("synthetic"))


def several_regions(n: int) -> str:
    return (f"{n} candidate lesion regions in this frame: the largest is measured (mask, box, area); "
            "look at the others on the frame")


def overlay_line(warning: str) -> str:
    """The short form of a warning drawn on an overlay."""
    if warning == SYNTHETIC:
        return "SYNTHETIC-DATA MODEL: NOT CLINICAL"
    n = warning.split()[0]
    if n.isdigit() and warning == several_regions(int(n)):
        return f"{n} candidate regions: largest shown"
    return warning[:40]
