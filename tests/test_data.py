"""Data layer: BrEaST reader (real and synthetic), synthetic generator, splits, bad input."""

import collections
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgebus.data.breast import CLASSES, IMAGES_DIR, fingerprint, load_arrays, read_breast
from edgebus.data.preprocess import load_gray, load_mask, preprocess_contract
from edgebus.core.splits import kfold_splits, stratified_split
from edgebus.data.synthetic import COLUMNS, SHEET_NAME, make_synthetic
from edgebus.core.errors import EdgebusError

# What the conftest's synthetic set asks for: 40 rows, 2 normal, round(38 * 0.4) malignant.
SYN_COUNTS = {"benign": 23, "malignant": 15, "normal": 2}


def one_line_error(excinfo, *names):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for name in names:
        assert str(name) in msg, f"{name!r} not in {msg!r}"
    return msg


def image_size(path):
    with Image.open(path) as im:  # header only, no pixel decoding
        return im.size


def mask_extent(path):
    ys, xs = np.nonzero(load_mask(path))
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


# --- real data set ----------------------------------------------------------------------------


def test_real_reader(real_breast_dir):
    ds = read_breast(real_breast_dir)
    assert len(ds.cases) == 256
    counts = collections.Counter(c.classification for c in ds.cases)
    assert counts == {"benign": 154, "malignant": 98, "normal": 4}
    lesions = ds.lesions()
    assert len(lesions) == 252
    assert all(c.mask is not None and c.label in (0, 1) for c in lesions)
    assert all(c.mask is None and c.label is None for c in ds.cases if c.classification == "normal")
    assert [c.case_id for c in ds.cases] == sorted(c.case_id for c in ds.cases)
    assert all(c.pixel_size and 0.001 < c.pixel_size < 0.05 for c in ds.cases)
    for c in lesions:
        assert image_size(c.mask) == image_size(c.image), c.case_id


def test_real_fingerprint(real_breast_dir):
    a = fingerprint(read_breast(real_breast_dir))
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert fingerprint(read_breast(real_breast_dir)) == a


# --- synthetic data set -----------------------------------------------------------------------


def test_synthetic_round_trip(synthetic_breast_dir):
    ds = read_breast(synthetic_breast_dir)
    assert ds.sheet.name == SHEET_NAME
    assert len(ds.cases) == 40
    assert collections.Counter(c.classification for c in ds.cases) == SYN_COUNTS
    assert len(ds.lesions()) == 38
    for c in ds.cases:
        if c.classification == "normal":
            assert c.mask is None and c.label is None
            assert not (ds.root / IMAGES_DIR / f"case{c.case_id:03d}_tumor.png").exists()
        else:
            assert c.label == CLASSES.index(c.classification)
            assert image_size(c.mask) == image_size(c.image)
            assert 0.004 < c.pixel_size < 0.012
        with Image.open(c.image) as im:
            assert im.mode == "RGBA"
    sizes = {image_size(c.image) for c in ds.cases}
    assert len(sizes) > 5  # sizes vary like the real set


def test_synthetic_sheet_has_all_columns(synthetic_breast_dir):
    import pandas as pd

    syn = pd.read_excel(read_breast(synthetic_breast_dir).sheet)
    assert tuple(syn.columns) == COLUMNS
    assert syn["Mask_tumor_filename"].isna().sum() == SYN_COUNTS["normal"]


def test_real_sheet_columns_match_synthetic(real_breast_dir):
    import pandas as pd

    real = pd.read_excel(read_breast(real_breast_dir).sheet, nrows=1)
    assert tuple(real.columns) == COLUMNS


def test_load_arrays(synthetic_breast_dir):
    lesions = read_breast(synthetic_breast_dir).lesions()
    contract = preprocess_contract(64, channels=3)
    x, y, masks = load_arrays(lesions, contract, with_masks=True)
    assert x.shape == (38, 64, 64, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    assert y.dtype == np.int64 and y.tolist() == [c.label for c in lesions]
    assert masks.shape == (38, 64, 64, 1) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert (masks.sum(axis=(1, 2, 3)) > 0).all()  # every lesion visible at 64x64
    x1, _, none = load_arrays(lesions[:3], preprocess_contract((48, 56), channels=1))
    assert x1.shape == (3, 48, 56, 1) and none is None


def test_transparent_areas_become_black(synthetic_breast_dir):
    found = 0
    for c in read_breast(synthetic_breast_dir).cases:
        rgba = np.asarray(Image.open(c.image))
        clear = rgba[..., 3] == 0
        if clear.any():
            found += 1
            assert rgba[..., :3][clear].max() > 0  # raw pixels there are not black already
            assert (load_gray(c.image)[clear] == 0).all()
    assert found >= 2


def test_lesion_masks_and_shapes(synthetic_breast_dir):
    ratios = {"benign": [], "malignant": []}
    for c in read_breast(synthetic_breast_dir).lesions():
        mask = load_mask(c.mask)
        w = image_size(c.image)[0]
        assert mask.sum() > 0
        h_px, w_px = mask_extent(c.mask)
        assert 0.05 * w < max(h_px, w_px) < 0.5 * w
        ratios[c.classification].append(h_px / w_px)
    assert np.mean(ratios["malignant"]) > 1.1  # taller-than-wide
    assert np.mean(ratios["benign"]) < 0.9  # wider-than-tall
    # Lesions are hypoechoic: darker inside the mask than around it.
    c = read_breast(synthetic_breast_dir).lesions()[0]
    gray, mask = load_gray(c.image), load_mask(c.mask).astype(bool)
    assert gray[mask].mean() < 0.6 * gray[~mask].mean()


def test_synthetic_is_deterministic(tmp_path):
    fp = [fingerprint(read_breast(make_synthetic(tmp_path / f"s{i}", n_cases=6, n_normal=1, seed=s)))
          for i, s in enumerate((3, 3, 4))]
    assert fp[0] == fp[1] != fp[2]


def test_modules_import_without_pandas():
    code = ("import sys, edgebus.data.breast, edgebus.core.splits, edgebus.data.synthetic; "
            "assert 'pandas' not in sys.modules and 'openpyxl' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- splits -----------------------------------------------------------------------------------


def _labels(n_benign=154, n_malignant=98):
    ids = list(range(1, n_benign + n_malignant + 1))
    rng = np.random.default_rng(7)
    labels = rng.permutation([0] * n_benign + [1] * n_malignant).tolist()
    return ids, labels


def test_stratified_split_partition_and_proportions():
    ids, labels = _labels()
    label_of = dict(zip(ids, labels))
    parts = stratified_split(ids, labels, (0.8, 0.1, 0.1), seed=0)
    assert set(parts) == {"train", "val", "test"}
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == ids
    for name, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert parts[name] == sorted(parts[name])
        for lab, n in ((0, 154), (1, 98)):
            got = sum(label_of[i] == lab for i in parts[name])
            assert abs(got - n * frac) <= 1, (name, lab, got)


def test_stratified_split_determinism_and_small_classes():
    ids, labels = _labels()
    assert stratified_split(ids, labels, seed=1) == stratified_split(ids, labels, seed=1)
    assert stratified_split(ids, labels, seed=1) != stratified_split(ids, labels, seed=2)
    # Input order does not matter, only the set of (id, label).
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = stratified_split([ids[i] for i in order], [labels[i] for i in order], seed=1)
    assert shuffled == stratified_split(ids, labels, seed=1)
    tiny = stratified_split(["a", "b", "c", "d", "e"], [0, 0, 0, 1, 1], seed=0)
    assert len(tiny["val"]) >= 1 and len(tiny["test"]) >= 1 and len(tiny["train"]) >= 2
    with pytest.raises(EdgebusError):
        stratified_split(ids, labels, (0.5, 0.1, 0.1))


def test_kfold_splits():
    ids, labels = _labels(40, 25)
    label_of = dict(zip(ids, labels))
    folds = kfold_splits(ids, labels, k=5, seed=0)
    assert len(folds) == 5
    tests = [i for f in folds for i in f["test"]]
    assert sorted(tests) == ids  # test folds partition ids
    for f in folds:
        assert sorted(f["train"] + f["val"] + f["test"]) == ids
        assert not set(f["val"]) & set(f["test"]) and len(f["val"]) > 0
        assert abs(sum(label_of[i] for i in f["test"]) - 25 / 5) <= 1
    assert kfold_splits(ids, labels, k=5, seed=0) == folds
    assert kfold_splits(ids, labels, k=5, seed=1) != folds


# --- bad input --------------------------------------------------------------------------------


@pytest.fixture
def synthetic_copy(synthetic_breast_dir, tmp_path):
    return shutil.copytree(synthetic_breast_dir, tmp_path / "BrEaST-Lesions_USG")


def test_parent_folder_is_accepted(synthetic_copy):
    assert read_breast(synthetic_copy.parent).root == synthetic_copy


def test_missing_column(synthetic_copy):
    import pandas as pd

    sheet = synthetic_copy / SHEET_NAME
    pd.read_excel(sheet).drop(columns=["Classification"]).to_excel(sheet, index=False)
    with pytest.raises(EdgebusError) as e:
        read_breast(synthetic_copy)
    one_line_error(e, SHEET_NAME, "Classification")


def test_unknown_classification(synthetic_copy):
    import pandas as pd

    sheet = synthetic_copy / SHEET_NAME
    df = pd.read_excel(sheet)
    df.loc[3, "Classification"] = "suspicious"
    df.to_excel(sheet, index=False)
    with pytest.raises(EdgebusError) as e:
        read_breast(synthetic_copy)
    one_line_error(e, SHEET_NAME, "suspicious", f"CaseID {df.loc[3, 'CaseID']}")


def test_missing_mask(synthetic_copy):
    case = read_breast(synthetic_copy).lesions()[5]
    case.mask.unlink()
    with pytest.raises(EdgebusError) as e:
        read_breast(synthetic_copy)
    one_line_error(e, case.mask.name, f"CaseID {case.case_id}")


def test_missing_images_folder(synthetic_copy):
    shutil.rmtree(synthetic_copy / IMAGES_DIR)
    with pytest.raises(EdgebusError) as e:
        read_breast(synthetic_copy)
    one_line_error(e, IMAGES_DIR)


def test_corrupt_and_duplicate_sheet(synthetic_copy):
    extra = synthetic_copy / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx"
    extra.write_bytes(b"not a zip file")
    with pytest.raises(EdgebusError) as e:
        read_breast(synthetic_copy)
    one_line_error(e, "more than one sheet")
    (synthetic_copy / SHEET_NAME).unlink()
    with pytest.raises(EdgebusError) as e:
        read_breast(synthetic_copy)
    one_line_error(e, extra.name)


def test_corrupt_png(tmp_path):
    bad = tmp_path / "case001.png"
    bad.write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(EdgebusError) as e:
        load_gray(bad)
    one_line_error(e, bad.name)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(EdgebusError) as e:
        read_breast(tmp_path)
    msg = one_line_error(e, tmp_path)
    assert "TCIA" in msg and "10.7937/9WKK-Q141" in msg
    with pytest.raises(EdgebusError) as e:
        read_breast(tmp_path / "nowhere")
    one_line_error(e, "nowhere")
