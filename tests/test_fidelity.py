"""int8 fidelity case by case (issue 14): labels flipped against the float parent, by direction;
mask IoU between float and int8 masks; the --max-flips gate."""

import shutil

import numpy as np
import pytest

from edgebus.core.metrics import label_flips, mask_fidelity
from edgebus.export.validate import gate_check
from tests.conftest import cli, manifest, one_line_error


def test_flip_counts_are_exact_on_a_hand_made_case():
    ref = [0.1, 0.6, 0.7, 0.4, 0.9]
    other = [0.6, 0.6, 0.2, 0.3, 0.95]
    f = label_flips(ref, other, 0.5)
    assert (f["n"], f["flips"], f["benign_to_malignant"], f["malignant_to_benign"]) == (5, 2, 1, 1)
    assert f["max_abs_diff"] == pytest.approx(0.5) and f["mean_abs_diff"] == pytest.approx(0.23)
    assert label_flips(ref, other, 0.05)["flips"] == 0  # at a low threshold both call all malignant


def test_mask_fidelity_is_the_iou_between_the_two_masks():
    a = np.zeros((2, 4, 4, 1))
    b = np.zeros((2, 4, 4, 1))
    a[0, :2, :2] = 0.9  # 4 pixels
    b[0, :2, :3] = 0.8  # 6 pixels, 4 shared
    f = mask_fidelity(a, b)  # image 2: both empty, they agree
    assert f["n"] == 2 and f["pixel_flips"] == 2
    assert f["mask_iou_min"] == pytest.approx(4 / 6) and f["mask_iou_mean"] == pytest.approx((4 / 6 + 1) / 2)


def test_max_flips_gate():
    ref = {"accuracy": 0.8, "malignant_recall": 0.8}
    fid = label_flips([0.1, 0.6, 0.7, 0.4, 0.9, 0.2], [0.6, 0.6, 0.2, 0.3, 0.95, 0.7])
    g = gate_check("classify", ref, ref, {"max_flips": 1}, fid)
    assert not g["passed"] and g["failures"] == [
        "3 of 6 test labels flipped against the float model: 2 benign->malignant, 1 malignant->benign (> --max-flips 1)"]
    assert gate_check("classify", ref, ref, {"max_flips": 3}, fid)["passed"]
    assert not gate_check("classify", ref, ref, {}, fid)["passed"]  # default: a tenth of 6 cases, at least 1
    seg = gate_check("segment", {"iou": 0.5}, {"iou": 0.5}, {"max_flips": 0, "min_mask_iou": 0.9},
                     mask_fidelity(np.ones((1, 2, 2)), np.ones((1, 2, 2))))
    assert seg["passed"] and [c["option"] for c in seg["checks"]] == ["--min-mask-iou"]


def test_missed_cancers_gate_counts_cases_each_at_its_own_threshold():
    """The file at its own threshold against the float model at its own, case by case: a cancer the
    float model caught and the file calls benign fails --max-missed 0, even where the file catches
    another the float model missed; a shifted scale with a matching threshold does not."""
    y = [1, 1, 1, 0, 0]
    ref = [0.9, 0.6, 0.3, 0.2, 0.1]  # the float model at 0.5 misses one cancer (0.3)
    f = label_flips(ref, [0.9, 0.4, 0.3, 0.2, 0.1], 0.5, 0.5, truth=y)
    assert (f["malignant"], f["missed_float"], f["missed"], f["missed_new"]) == (3, 1, 2, 1)
    g = gate_check("classify", {}, {}, {"max_missed": 0, "max_flips": 5}, f)
    assert g["failures"] == ["calls 1 test cancer(s) benign that the float model caught (2 of 3 called benign, the "
                             "float model 1) (> --max-missed 0)"]
    assert gate_check("classify", {}, {}, {"max_missed": 1, "max_flips": 5}, f)["passed"]
    swapped = label_flips(ref, [0.9, 0.4, 0.7, 0.2, 0.1], 0.5, 0.5, truth=y)  # misses one the float caught, catches another
    assert swapped["missed"] == swapped["missed_float"] == 1 and swapped["missed_new"] == 1
    assert not gate_check("classify", {}, {}, {"max_missed": 0, "max_flips": 5}, swapped)["passed"]
    shifted = label_flips(ref, [0.45, 0.2, 0.05, 0.04, 0.02], 0.5, 0.1, truth=y)  # the same ranking at a lower threshold
    assert shifted["flips"] == 0 and shifted["missed"] == 1 and shifted["missed_new"] == 0
