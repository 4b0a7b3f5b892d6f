"""Reader for the BUSI layout (Al-Dhabyani et al., Data in Brief 28:104863, 2020), for external
validation of models trained on BrEaST:

    Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png
                                                   <class> (N)_mask.png, <class> (N)_mask_1.png ...

Extra masks of one image are OR-merged; normal images have empty masks and no label (as BrEaST's
normal rows, `lesions()` leaves them out). No sheet, so no pixel size.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgebus.data.breast import Case, Dataset
from edgebus.core.errors import EdgebusError

BUSI_DIR = "Dataset_BUSI_with_GT"
BUSI_CLASSES = {"benign": 0, "malignant": 1, "normal": None}
_IMAGE = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$", re.IGNORECASE)
_MASK = re.compile(r"^(benign|malignant|normal) \((\d+)\)_mask(?:_(\d+))?\.png$", re.IGNORECASE)


def is_busi_layout(path: str | Path) -> bool:
    """A folder holding benign/ and/or malignant/ (or Dataset_BUSI_with_GT/ with them)."""
    path = Path(path)
    if (path / BUSI_DIR).is_dir():
        path = path / BUSI_DIR
    return path.is_dir() and any((path / d).is_dir() for d in ("benign", "malignant"))


def read_busi(root: str | Path) -> Dataset:
    root = Path(root)
    if (root / BUSI_DIR).is_dir():
        root = root / BUSI_DIR
    present = [d for d in BUSI_CLASSES if (root / d).is_dir()]
    if not present:
        raise EdgebusError(f"{root}: no benign/, malignant/ or normal/ folder; expected the BUSI layout "
                           f"{BUSI_DIR}/{{benign,malignant,normal}}/<class> (N).png with _mask.png files")
    cases, case_id = [], 0
    for cls in present:
        masks: dict[int, dict[int, Path]] = {}
        images: dict[int, Path] = {}
        for p in sorted((root / cls).iterdir()):
            if m := _MASK.match(p.name):
                masks.setdefault(int(m.group(2)), {})[int(m.group(3) or 0)] = p
            elif m := _IMAGE.match(p.name):
                images[int(m.group(2))] = p
        for n in sorted(images):
            found = masks.get(n, {})
            if 0 not in found:
                raise EdgebusError(f"{images[n]}: no mask '{images[n].stem}_mask.png' beside it; add it or remove the image")
            extra = tuple(found[k] for k in sorted(found) if k != 0)
            case_id += 1
            cases.append(Case(case_id=case_id, image=images[n], mask=found[0], label=BUSI_CLASSES[cls],
                              classification=cls, pixel_size=None, extra_masks=extra))
    if not cases:
        raise EdgebusError(f"{root}: no '<class> (N).png' images found in {', '.join(present)}")
    return Dataset(root=root, sheet=None, cases=cases)


def make_synthetic_busi(out: str | Path, per_class: int = 6, seed: int = 0) -> Path:
    """A small set in the BUSI layout, built from the synthetic BrEaST generator's frames; one
    image per lesion class gets its lesion split across two mask files (as BUSI does)."""
    import numpy as np
    from PIL import Image

    from edgebus.data.breast import read_breast
    from edgebus.data.synthetic import make_synthetic

    out = Path(out)
    src = make_synthetic(out / "_src", n_cases=3 * per_class, n_normal=per_class, seed=seed, malignant_fraction=0.5)
    ds = read_breast(src)
    root = out / BUSI_DIR
    counts = {k: 0 for k in BUSI_CLASSES}
    for c in ds.cases:
        cls = c.classification
        if counts[cls] >= per_class:
            continue
        counts[cls] += 1
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        stem = f"{cls} ({counts[cls]})"
        Image.open(c.image).convert("RGB").save(d / f"{stem}.png")
        mask = np.zeros(Image.open(c.image).size[::-1], np.uint8) if c.mask is None else \
            (np.asarray(Image.open(c.mask).convert("L")) > 127).astype(np.uint8) * 255
        if counts[cls] == 1 and mask.any():  # split the lesion: left half in _mask, right half in _mask_1
            cols = np.nonzero(mask.any(0))[0]
            mid = (cols[0] + cols[-1]) // 2
            left, right = mask.copy(), mask.copy()
            left[:, mid:] = 0
            right[:, :mid] = 0
            Image.fromarray(left).save(d / f"{stem}_mask.png")
            Image.fromarray(right).save(d / f"{stem}_mask_1.png")
        else:
            Image.fromarray(mask).save(d / f"{stem}_mask.png")
    import shutil

    shutil.rmtree(out / "_src")
    return out
