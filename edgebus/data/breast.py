"""Reader for the BrEaST-Lesions_USG data set (TCIA, DOI 10.7937/9WKK-Q141).

Layout: one clinical-data sheet `BrEaST-Lesions-USG-clinical-data-*.xlsx` next to a folder
`BrEaST-Lesions_USG-images_and_masks/` holding caseNNN.png, caseNNN_tumor.png and
caseNNN_otherN.png. Reading checks the sheet and that every referenced file exists, without
decoding PNGs, so it is fast; a corrupt PNG is reported by `load_gray` when it is loaded.
pandas/openpyxl are imported inside the functions so importing this module stays light.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebus.data.preprocess import cut_area, load_gray, load_mask, resize_mask, to_model_input
from edgebus.core.errors import EdgebusError, flag
from edgebus.core.metrics import CLASS_NAMES as CLASSES  # label 0, 1
from edgebus.core.io import sha256_file
from edgebus.core.units import PIXEL_MM_RANGE, pixel_size_problem

KNOWN_CLASSIFICATIONS = ("benign", "malignant", "normal")
REQUIRED_COLUMNS = ("CaseID", "Image_filename", "Mask_tumor_filename", "Pixel_size", "Classification")
IMAGES_DIR = "BrEaST-Lesions_USG-images_and_masks"
SHEET_GLOB = "BrEaST-Lesions-USG-clinical-data-*.xlsx"
DATASET_DIR = "BrEaST-Lesions_USG"

EXPECTED_LAYOUT = (
    f"expected a folder holding {SHEET_GLOB} and {IMAGES_DIR}/ "
    "(download BrEaST-Lesions_USG from TCIA, DOI 10.7937/9WKK-Q141, or make a synthetic set)"
)


@dataclass(frozen=True)
class Case:
    case_id: int
    image: Path
    mask: Path | None  # tumor mask, None for normal rows
    label: int | None  # 0 benign, 1 malignant, None otherwise
    classification: str  # as in the sheet, lower-cased, stripped
    pixel_size: float | None  # sheet's Pixel_size (cm per pixel), None if missing or not a positive number
    extra_masks: tuple = ()  # more masks of the same lesion, OR-merged (BUSI's _mask_1.png ...)
    descriptors: tuple | None = None  # BI-RADS findings (edgebus.core.descriptors): 1, 0, -1 unknown


@dataclass
class Dataset:
    root: Path
    sheet: Path | None  # None for layouts without a sheet (BUSI)
    cases: list[Case]  # every row of the sheet, in sheet order
    has_descriptors: bool = False  # the sheet has every BI-RADS descriptor column
    bad_pixel_sizes: dict = field(default_factory=dict)  # CaseID -> the sheet's Pixel_size that is not a size (inf, abc, 0)

    def lesions(self) -> list[Case]:
        """Rows with a tumor mask and a benign/malignant label (the study's filter: drops the normal cases)."""
        return [c for c in self.cases if c.mask is not None and c.label is not None]


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _find_sheet(root: Path) -> Path:
    sheets = sorted(root.glob(SHEET_GLOB))
    if len(sheets) > 1:
        names = ", ".join(s.name for s in sheets)
        raise EdgebusError(f"{root}: more than one sheet matches {SHEET_GLOB} ({names}); keep only one")
    if sheets:
        return sheets[0]
    if not any(root.iterdir()):
        raise EdgebusError(f"{root}: folder is empty; {EXPECTED_LAYOUT}")
    raise EdgebusError(f"{root}: no sheet {SHEET_GLOB} found; {EXPECTED_LAYOUT}")


def _read_sheet(sheet: Path):
    try:
        import pandas as pd
    except ImportError:
        raise EdgebusError("reading the BrEaST sheet needs pandas and openpyxl; pip install 'edgebus[train]'") from None
    try:
        return pd.read_excel(sheet, engine="openpyxl")
    except ImportError:
        raise EdgebusError("reading the BrEaST sheet needs openpyxl; pip install 'edgebus[train]'") from None
    except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, ... from a damaged file
        msg = " ".join(str(e).split()) or type(e).__name__
        raise EdgebusError(f"{sheet}: not a readable xlsx sheet ({msg}); re-download or restore it") from None


def _header_size(path: Path) -> tuple[int, int]:
    """An image's (width, height) from its header only (no decode), or one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EdgebusError(f"{path}: not a readable image ({e}); replace or remove the file") from None


def _check_pair(image: Path, mask: Path) -> None:
    """A tumor mask must cover its image pixel for pixel: a mask of another frame, or one resized,
    would train the U-Net on the wrong outline without a word."""
    a, b = _header_size(image), _header_size(mask)
    if a != b:
        raise EdgebusError(f"{mask}: mask is {b[0]}x{b[1]} but its image {image.name} is {a[0]}x{a[1]}; "
                           "they must be the same size, restore the pair")


def _dataset_root(root: str | Path) -> Path:
    """The folder holding the sheet: `root` itself, or its BrEaST-Lesions_USG/ (as the TCIA download
    unpacks)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise EdgebusError(f"{root}: folder not found; {EXPECTED_LAYOUT}")
    if not root.is_dir():
        raise EdgebusError(f"{root}: not a folder; {EXPECTED_LAYOUT}")
    if not any(root.glob(SHEET_GLOB)) and (root / DATASET_DIR).is_dir():
        root = root / DATASET_DIR
    return root


def _named_file(name, images: Path, on_disk: set, sheet: Path, case_id: int, what: str) -> str:
    """A file name the sheet gives, stripped, once it is in the images folder: a missing file is named
    here rather than when training reaches it."""
    name = str(name).strip()
    if name not in on_disk:
        raise EdgebusError(
            f"{images / name}: missing; {sheet.name} names it as the {what} of CaseID {case_id}, "
            "restore the file"
        )
    return name


def _case_id(value, seen: set, sheet: Path, i: int) -> int:
    """A row's CaseID as a whole number, each once: cases are found by it everywhere downstream."""
    try:
        case_id = int(value)
    except (TypeError, ValueError):
        raise EdgebusError(f"{sheet}: row {i}: CaseID {value!r} is not a whole number; fix the sheet") from None
    if case_id in seen:
        raise EdgebusError(f"{sheet}: CaseID {case_id} appears twice; each row needs its own CaseID, fix the sheet")
    seen.add(case_id)
    return case_id


def _pixel_size(value, case_id: int, bad_px: dict) -> float | None:
    """The sheet's Pixel_size, or None where it is missing or not a size (that value kept in bad_px,
    to be reported)."""
    try:
        px = None if _missing(value) else float(value)
    except (TypeError, ValueError):
        px = math.nan
    if px is not None and not (math.isfinite(px) and px > 0):  # inf, abc, -0.01, 0: no size (it is reported)
        bad_px[case_id], px = value, None
    return px


def _row_case(row: tuple, i: int, sheet: Path, images: Path, on_disk: set, seen: set, bad_px: dict,
              has_descriptors: bool) -> Case:
    """One sheet row (row i of the sheet) as a Case, after checking its id, files and classification."""
    from edgebus.core.descriptors import COLUMNS as DESCRIPTOR_COLUMNS, encode_row

    case_id, image_name, mask_name, pixel_size, classification = row[:len(REQUIRED_COLUMNS)]
    case_id = _case_id(case_id, seen, sheet, i)
    where = f"{sheet}: CaseID {case_id}"
    if _missing(image_name):
        raise EdgebusError(f"{where} has no Image_filename; fix the sheet or restore the original")
    image_name = _named_file(image_name, images, on_disk, sheet, case_id, "image")
    mask = None
    if not _missing(mask_name):
        mask = images / _named_file(mask_name, images, on_disk, sheet, case_id, "tumor mask")
        _check_pair(images / image_name, mask)
    cls = "" if _missing(classification) else str(classification).strip().lower()
    if cls not in KNOWN_CLASSIFICATIONS:
        raise EdgebusError(
            f"{where}: unknown Classification {classification!r}; "
            f"expected one of {', '.join(KNOWN_CLASSIFICATIONS)}"
        )
    px = _pixel_size(pixel_size, case_id, bad_px)
    desc = None
    if has_descriptors:
        desc = encode_row(dict(zip(DESCRIPTOR_COLUMNS, row[len(REQUIRED_COLUMNS):])), where)
    return Case(
        case_id=case_id,
        image=images / image_name,
        mask=mask,
        label=CLASSES.index(cls) if cls in CLASSES else None,
        classification=cls,
        pixel_size=px,
        descriptors=desc,
    )


def read_breast(root: str | Path) -> Dataset:
    """The sheet's rows as Cases, after checking the layout and that every named file exists."""
    root = _dataset_root(root)
    sheet = _find_sheet(root)
    df = _read_sheet(sheet)

    absent = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if absent:
        raise EdgebusError(
            f"{sheet}: missing column(s) {', '.join(absent)}; restore the original sheet "
            f"(needs {', '.join(REQUIRED_COLUMNS)})"
        )
    images = root / IMAGES_DIR
    if not images.is_dir():
        raise EdgebusError(f"{images}: images folder not found; {EXPECTED_LAYOUT}")
    on_disk = set(os.listdir(images))  # one listing instead of a stat per file

    from edgebus.core.descriptors import COLUMNS as DESCRIPTOR_COLUMNS

    has_descriptors = all(c in df.columns for c in DESCRIPTOR_COLUMNS)
    cases, seen, bad_px = [], set(), {}
    cols = list(REQUIRED_COLUMNS) + (list(DESCRIPTOR_COLUMNS) if has_descriptors else [])
    for i, row in enumerate(df[cols].itertuples(index=False), start=2):
        cases.append(_row_case(row, i, sheet, images, on_disk, seen, bad_px, has_descriptors))
    if not cases:
        raise EdgebusError(f"{sheet}: the sheet has no rows; restore the original sheet")
    return Dataset(root=root, sheet=sheet, cases=cases, has_descriptors=has_descriptors, bad_pixel_sizes=bad_px)


def fingerprint(ds: Dataset) -> str:
    """sha256 over the sheet and every referenced image/mask (by file name).

    Runs record it so a result can be tied to exactly the data it saw, wherever the folder lives.
    """
    h = hashlib.sha256()
    if ds.sheet is not None:
        h.update(Path(ds.sheet).read_bytes())
    files = {}
    for c in ds.cases:
        for p in (c.image, c.mask, *c.extra_masks):
            if p is not None:
                files[Path(p).name] = Path(p)
    for name in sorted(files):
        h.update(f"\n{name}\t{sha256_file(files[name])}".encode())
    return h.hexdigest()


def case_mask(case: Case) -> np.ndarray:
    """A case's tumor mask at frame size, uint8 {0, 1}, extra masks OR-merged."""
    m = load_mask(case.mask)
    for extra in case.extra_masks:
        e = load_mask(extra)
        if e.shape != m.shape:
            raise EdgebusError(f"{extra}: mask size {e.shape[::-1]} differs from {case.mask.name}'s {m.shape[::-1]}; fix or remove it")
        m |= e
    return m


def load_arrays(cases, contract: dict, with_masks: bool = False, boxes: dict | None = None) -> tuple:
    """(x, y, masks) for a list of Cases at the contract's size.

    x: float32 (N, H, W, C) in [0, 1]; y: int64 (N,), -1 for a case without a benign/malignant
    label; masks: uint8 (N, H, W, 1) in {0, 1} (all zero for a case without a tumor mask) when
    with_masks, else None. A crop contract cuts each frame around boxes[case_id] (a segmenter's
    lesion_box, None when it found nothing) or, for a case not in `boxes`, around its own mask.
    """
    from edgebus.data.preprocess import lesion_box

    cases = list(cases)
    h, w = contract["size"]
    c = contract["channels"]
    crop = "crop" in contract
    boxes = boxes or {}
    x = np.empty((len(cases), h, w, c), dtype=np.float32)
    y = np.array([-1 if k.label is None else k.label for k in cases], dtype=np.int64)
    masks = np.zeros((len(cases), h, w, 1), dtype=np.uint8) if with_masks else None
    for i, k in enumerate(cases):
        need_mask = k.mask is not None and (with_masks or (crop and k.case_id not in boxes))
        gray, m = cut_area(load_gray(k.image), case_mask(k) if need_mask else None, str(k.mask))
        box = None
        if crop:
            if k.case_id in boxes:
                box = boxes[k.case_id]
            elif m is not None:
                box = lesion_box(m)
        x[i] = to_model_input(gray, contract, box)
        if with_masks and m is not None:
            masks[i, ..., 0] = resize_mask(m, (h, w))
    return x, y, masks


def is_breast_layout(path: str | Path) -> bool:
    """A folder holding a BrEaST sheet and its images folder."""
    path = Path(path)
    return (path / IMAGES_DIR).is_dir() and any(path.glob(SHEET_GLOB))


def breast_pixel_sizes(root: str | Path, warn=None) -> dict[str, float | None]:
    """{image file name: mm per pixel} from a BrEaST-layout sheet (its Pixel_size is cm per pixel: x10).
    A case whose Pixel_size is there but not a positive number (inf, abc, -0.01, 0) maps to None: its
    frame is still predicted, its area in mm^2 left out (not taken from a --pixel-size meant for frames
    the sheet does not list), and warn(line) gets one line naming the sheet, the case and the value."""
    import importlib.util

    try:
        missing = importlib.util.find_spec("pandas") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        raise EdgebusError(f"{flag('data')}: reading the BrEaST sheet's Pixel_size needs pandas and openpyxl; "
                           f"install edgebus[train] or pass {flag('pixel_size')}")
    ds = read_breast(root)
    sizes = {c.image.name: c.pixel_size * 10.0 for c in ds.cases if c.pixel_size is not None}
    for c in ds.cases:
        if c.case_id in ds.bad_pixel_sizes:
            sizes[c.image.name] = None
            if warn is not None:
                warn(f"{ds.sheet}: CaseID {c.case_id} ({c.image.name}): Pixel_size {ds.bad_pixel_sizes[c.case_id]!r} is "
                     "not a positive number of cm per pixel; its lesion area in mm^2 is left out (fix the sheet)")
        elif sizes.get(c.image.name) is not None and pixel_size_problem(sizes[c.image.name]):  # a wrong unit
            sizes[c.image.name] = None
            if warn is not None:
                warn(f"{ds.sheet}: CaseID {c.case_id} ({c.image.name}): Pixel_size {c.pixel_size!r} cm per pixel is "
                     f"{c.pixel_size * 10:g} mm, outside {PIXEL_MM_RANGE[0]:g}-{PIXEL_MM_RANGE[1]:g} mm; its lesion "
                     "area in mm^2 is left out (fix the sheet: the column is in cm)")
    return sizes


def case_attributes(root: str | Path) -> dict[int, dict]:
    """{CaseID: age, tissue composition, BI-RADS, lesion equivalent diameter in mm} from a BrEaST
    sheet and its masks: the subgroups a model card reports performance by."""
    ds = read_breast(root)
    df = _read_sheet(ds.sheet).set_index("CaseID")
    out = {}
    for c in ds.lesions():
        row = df.loc[c.case_id]
        diameter = None
        if c.mask is not None and c.pixel_size:
            area_mm2 = float(load_mask(c.mask).sum()) * (c.pixel_size * 10.0) ** 2
            diameter = 2.0 * float(np.sqrt(area_mm2 / np.pi))
        out[c.case_id] = {"age": row.get("Age"), "tissue": row.get("Tissue_composition"), "birads": row.get("BIRADS"),
                          "diameter_mm": diameter}
    return out
