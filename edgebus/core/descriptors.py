"""BI-RADS descriptors (ACR ultrasound lexicon) as binary findings a model can predict beside
malignancy, and say in the radiologist's words: "irregular shape, not circumscribed margin,
posterior shadowing".

Each comes from one column of the BrEaST clinical sheet. A cell may hold several values joined by
"&" ("not circumscribed - spiculated&indistinct"); a finding is present when any value starts with
one of its positive terms. "not applicable" / "not available" / an empty cell is unknown (-1): it
is left out of the loss and of the scores. A value outside the known vocabulary is refused, naming
the sheet and the case, so a new sheet's wording is noticed, not silently mis-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgebus.core.errors import EdgebusError

UNKNOWN_WORDS = ("not applicable", "not available", "")


@dataclass(frozen=True)
class Descriptor:
    name: str
    column: str
    positive: tuple  # values (prefixes) that make the finding present
    negative: tuple  # values that make it absent
    labels: tuple  # (absent, present), in the lexicon's words


DESCRIPTORS = (
    Descriptor("shape", "Shape", ("irregular",), ("oval", "round"), ("oval or round shape", "irregular shape")),
    Descriptor("margin", "Margin", ("not circumscribed",), ("circumscribed",),
               ("circumscribed margin", "not circumscribed margin")),
    Descriptor("echogenicity", "Echogenicity", ("hypoechoic",),
               ("heterogeneous", "anechoic", "isoechoic", "complex cystic/solid", "hyperechoic"),
               ("not hypoechoic", "hypoechoic")),
    Descriptor("posterior", "Posterior_features", ("shadowing", "combined"), ("no", "enhancement"),
               ("no posterior shadowing", "posterior shadowing")),
    Descriptor("halo", "Halo", ("yes",), ("no",), ("no echogenic halo", "echogenic halo")),
    Descriptor("calcifications", "Calcifications", ("in a mass", "intraductal", "indefinable"), ("no",),
               ("no calcifications", "calcifications")),
)
COLUMNS = tuple(d.column for d in DESCRIPTORS)


def encode_value(d: Descriptor, cell, where: str = "") -> int:
    """1 present, 0 absent, -1 unknown, for one sheet cell."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return -1
    values = [v.strip().lower() for v in str(cell).split("&")]
    if all(v in UNKNOWN_WORDS for v in values):
        return -1
    if any(v.startswith(p) for v in values for p in d.positive):
        return 1
    if all(any(v.startswith(n) for n in d.negative) for v in values):
        return 0
    raise EdgebusError(f"{where}: {d.column} {cell!r} is not in the BI-RADS vocabulary edgebus knows "
                       f"({', '.join(d.positive + d.negative)}); fix the sheet or extend edgebus/core/descriptors.py")


def encode_row(cells: dict, where: str = "") -> tuple:
    """One lesion's descriptors, in DESCRIPTORS order."""
    return tuple(encode_value(d, cells.get(d.column), where) for d in DESCRIPTORS)


def findings(probs, described: list | None = None, threshold: float = 0.5) -> tuple[dict, str]:
    """({name: {"probability", "finding"}}, "irregular shape, not circumscribed margin, ...") of one
    lesion's descriptor outputs; `described`: an exported file's descriptor metadata (default: DESCRIPTORS)."""
    described = described or metadata()
    out = {}
    for d, p in zip(described, np.asarray(probs, dtype=np.float64).ravel()):
        out[d["name"]] = {"probability": round(float(p), 4), "finding": d["labels"][int(p >= threshold)]}
    return out, ", ".join(v["finding"] for v in out.values())


def metadata() -> list[dict]:
    """What an exported file says about its descriptor output, in output order."""
    return [{"name": d.name, "column": d.column, "labels": list(d.labels)} for d in DESCRIPTORS]
