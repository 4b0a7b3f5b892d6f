"""Acquisition settings read from the data itself, and how much they alone say about the label.

BrEaST mixes scanners and presets, and they are not spread evenly over the classes: on the real
set the sheet's Pixel_size alone ranks malignant above benign with AUC 0.71, and the frame width
with 0.65 (narrow frames are more often malignant). A whole-frame model can learn "this frame
geometry -> malignant", a rule that holds on no other scanner. Two tools follow from that:
`shortcut_audit` (the AUC of each setting alone, so a report shows the confound) and
`acquisition_groups` (cases grouped by frame size, the best proxy for scanner + preset the set
has), so a CV can keep every setting out of the folds it is tested on: the internal stand-in for
a clinic with another scanner.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import roc_auc



def frame_size(path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, ValueError, SyntaxError) as e:
        raise EdgebusError(f"{path}: not a readable image ({e}); replace or remove the file") from None


def acquisition_keys(cases) -> dict[int, str]:
    """{case_id: "WxH"}: the frame size, which on BrEaST identifies a scanner and its preset."""
    return {c.case_id: "{}x{}".format(*frame_size(c.image)) for c in cases}


def acquisition_groups(cases) -> list[list[int]]:
    """Case ids grouped by frame size, each group sorted, groups in order of their first id."""
    groups: dict[str, list[int]] = {}
    for i, key in sorted(acquisition_keys(cases).items()):
        groups.setdefault(key, []).append(i)
    return sorted(groups.values())


def shortcut_audit(cases) -> dict:
    """What the acquisition settings alone say about malignancy: the AUC of each (0.5 = nothing;
    below 0.5, the smaller value goes with malignant), and how the classes sit in frame-size groups.
    A setting far from 0.5 is a shortcut a whole-frame model can take."""
    sizes = np.asarray([frame_size(c.image) for c in cases], dtype=np.float64)
    y = np.asarray([c.label for c in cases], dtype=int)
    px = np.asarray([np.nan if c.pixel_size is None else c.pixel_size for c in cases], dtype=np.float64)
    features = {"frame width (px)": sizes[:, 0], "frame height (px)": sizes[:, 1],
                "aspect (width / height)": sizes[:, 0] / sizes[:, 1]}
    if np.isfinite(px).all():
        features.update({"pixel size (sheet, cm)": px, "field width (cm)": sizes[:, 0] * px,
                         "field depth (cm)": sizes[:, 1] * px})
    aucs = {}
    for name, v in features.items():
        a = roc_auc(y, v)
        aucs[name] = None if a is None else round(a, 3)
    by_key: dict[str, list[int]] = {}
    for (w, h), c in zip(sizes.astype(int), cases):  # the frame sizes read above: acquisition_keys' "WxH"
        by_key.setdefault(f"{w}x{h}", []).append(c.label)
    rates = sorted(((k, len(v), float(np.mean(v))) for k, v in by_key.items()), key=lambda t: -t[1])
    return {"n": len(cases), "auc_alone": aucs, "frame_size_groups": len(by_key),
            "largest_groups": [{"frame": k, "cases": n, "malignant_fraction": round(r, 3)} for k, n, r in rates[:8]],
            "note": "AUC of each setting alone against malignancy (rank, no fitting); 0.5 says nothing, "
                    "the further from 0.5 the stronger the shortcut"}

