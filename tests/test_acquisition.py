"""Acquisition shift as BrEaST itself holds it: the frame geometry (scanner + preset) says something
about the label, so a CV can be grouped by it (no scanner setting in two test folds), the report
audits the shortcut, and the "scanner" augmentation varies the geometry in training."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgebus.core.errors import EdgebusError
from edgebus.core.splits import group_kfold, merge_groups
from tests.conftest import cli, one_line_error, square_lesion


@dataclass
class _Case:
    case_id: int
    label: int
    image: Path = None
    pixel_size: float | None = None


def _cases_and_groups(seed=0):
    rng = np.random.default_rng(seed)
    cases, groups, i = [], [], 0
    for size in (30, 22, 15, 12, 9, 8, 6, 5, 4, 3, 3, 2, 1, 1):
        frac = rng.uniform(0.1, 0.8)
        g = []
        for _ in range(size):
            cases.append(_Case(i, int(rng.random() < frac)))
            g.append(i)
            i += 1
        groups.append(g)
    return cases, groups


def test_group_kfold_keeps_every_group_in_one_test_fold_and_balances_the_folds():
    cases, groups = _cases_and_groups()
    folds = group_kfold(cases, groups, 4, seed=1, val_fraction=0.1)
    label = {c.case_id: c.label for c in cases}
    tests = [set(f["test"]) for f in folds]
    assert sorted(i for t in tests for i in t) == sorted(label)  # the test parts partition the cases
    for g in groups:
        assert sum(bool(set(g) & t) for t in tests) == 1  # a group is never split between test folds
    for f in folds:
        assert not set(f["train"]) & set(f["test"]) and not set(f["val"]) & set(f["test"])
        assert set(f["train"]) | set(f["val"]) | set(f["test"]) == set(label)
    sizes = [len(t) for t in tests]
    assert max(sizes) <= 30 + 2 and min(sizes) >= len(cases) / 4 - 8  # as even as whole groups allow
    malignant = [sum(label[i] for i in t) for t in tests]
    assert max(malignant) - min(malignant) <= max(4, 0.5 * np.mean(malignant))
    assert group_kfold(cases, groups, 4, seed=1) == folds  # the seed reproduces the folds


def test_group_kfold_and_merge_groups_bad_input():
    cases, groups = _cases_and_groups()
    with pytest.raises(EdgebusError, match="number of groups"):
        group_kfold(cases, groups[:3] + [sum(groups[3:], [])], 5)
    with pytest.raises(EdgebusError, match="every case exactly once"):
        group_kfold(cases, groups[1:], 3)
    assert merge_groups([[1, 2], [3], [4]], [[2, 3], [4], [1]]) == [[1, 2, 3], [4]]


def test_shortcut_audit_finds_a_planted_frame_geometry_confound(tmp_path):
    from edgebus.data.acquisition import acquisition_groups, shortcut_audit

    cases = []
    for i in range(12):
        label = i % 2
        p = tmp_path / f"case{i:03d}.png"
        Image.new("L", (300 if label else 400, 200)).save(p)  # malignant frames are narrower
        cases.append(_Case(i, label, p, 0.01 if label else 0.007))
    audit = shortcut_audit(cases)
    assert audit["auc_alone"]["frame width (px)"] == 0.0  # every malignant frame is narrower: a perfect shortcut
    assert audit["auc_alone"]["frame height (px)"] == 0.5
    assert audit["auc_alone"]["pixel size (sheet, cm)"] == 1.0
    assert audit["frame_size_groups"] == 2 and len(acquisition_groups(cases)) == 2
    (tmp_path / "case000.png").write_bytes(b"not a png")
    with pytest.raises(EdgebusError, match="case000.png: not a readable image"):
        shortcut_audit(cases)


def test_scanner_augmentation_is_deterministic_changes_the_geometry_and_moves_masks():
    from edgebus.compat import set_seed, tf
    from edgebus.engine import augment

    img, mask = square_lesion()

    def draw(seed):
        set_seed(seed)
        return [tuple(t.numpy() for t in (lambda r: (r[0], r[1][0]))(augment.scanner(tf, tf.constant(img),
                                                                                    [tf.constant(mask)])))
                for _ in range(12)]

    first, again = draw(5), draw(5)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(first, again))
    aspects = set()
    for a, m in first:
        assert a.shape == img.shape and m.shape == mask.shape and set(np.unique(m)) <= {0.0, 1.0}
        rows, cols = np.nonzero(m[..., 0])
        aspects.add(round((np.ptp(cols) + 1) / (np.ptp(rows) + 1), 2))  # the lesion's width / height after the change
        assert a[..., 0][m[..., 0] == 1].mean() > a[..., 0][m[..., 0] == 0].mean() + 0.2  # the mask is on the lesion
    assert len(aspects) >= 3  # the lesion is shown at several aspects: the squash is no longer a constant


def _three_scanners(src: Path, dst: Path) -> Path:
    """A copy of a synthetic set whose frames (and masks) come at three scanner frame sizes."""
    shutil.copytree(src, dst)
    sizes = [(224, 192), (180, 200), (260, 170)]
    folder = next(dst.glob("*images_and_masks"))
    for p in sorted(folder.glob("case*.png")):
        case = int(p.name[4:7])
        w, h = sizes[case % 3]
        with Image.open(p) as im:
            im.load()
            im.resize((w, h), Image.NEAREST if "_tumor" in p.name or "_other" in p.name else Image.BILINEAR).save(p)
    return dst


def test_cv_grouped_by_acquisition_keeps_each_frame_size_in_one_test_fold(synthetic_breast_dir, tmp_path):
    from edgebus.data.acquisition import acquisition_keys
    from edgebus.data.arrays import read_lesions

    data = _three_scanners(synthetic_breast_dir, tmp_path / "data")
    out = tmp_path / "gcv"
    r = cli("cv", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--epochs", 1, "--folds", 3,
            "--group-by", "acquisition", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    folds = json.loads((out / "folds.json").read_text())
    assert folds["group_by"] == "acquisition"
    key = acquisition_keys(read_lesions(data)[1])
    test_sizes = [{key[i] for i in f["test"]} for f in folds["folds"]]
    assert all(len(s) == 1 for s in test_sizes) and len(set.union(*test_sizes)) == 3  # one scanner per test fold
    report = (out / "report.md").read_text()
    assert "grouped by acquisition setting" in report and "## Acquisition shortcut audit" in report
    assert json.loads((out / "summary.json").read_text())["group_by"] == "acquisition"
    again = cli("cv", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--epochs", 1, "--folds", 3,
                "--out", out, "--quiet")  # the same folder with case folds: refused, not mixed
    one_line_error(again, "group_by")
    one_line_error(cli("cv", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--folds", 3,
                       "--group-by", "scanner", "--out", tmp_path / "x"), "--group-by 'scanner'")
    one_line_error(cli("cv", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--folds", 4,
                       "--group-by", "acquisition", "--out", tmp_path / "y"), "number of groups (3)")
