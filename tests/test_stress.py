"""The scanner-shift stress benchmark: changes are deterministic per seed, geometric ones move the
mask with the frame, and the clean row reproduces the metrics the run (or the CV, out-of-fold)
recorded, so stress images go through exactly the preprocessing path everything else uses."""

import json

import numpy as np
import pytest

from edgebus.data.stress import CHANGES, GEOMETRIC, apply_change, conditions
from tests.conftest import cli, manifest, one_line_error


def _frame():
    rng = np.random.default_rng(0)
    g = (40 + 20 * rng.random((120, 160))).astype(np.uint8)
    m = np.zeros((120, 160), np.uint8)
    m[30:60, 50:90] = 1  # a bright lesion off-centre, in the near field (inside every zoom)
    g[m == 1] = 220
    return g, m


@pytest.mark.parametrize("name,strength", conditions())
def test_change_is_deterministic_and_keeps_its_mask_on_the_lesion(name, strength):
    g, m = _frame()
    a = apply_change(g, m, name, strength, seed=0, case_id=7)
    b = apply_change(g, m, name, strength, seed=0, case_id=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    g2, m2 = a
    assert g2.dtype == np.uint8 and g2.shape == m2.shape
    if name not in GEOMETRIC:
        assert g2.shape == g.shape and np.array_equal(m2, m)
    else:  # the mask moved with the frame: it still covers the bright lesion and nothing else
        assert m2.sum() > 0
        inside, outside = g2[m2 == 1].mean(), g2[m2 == 0].mean()
        assert inside > 150 > outside, (name, inside, outside)
    if name in ("noise", "speckle", "marks"):
        assert not np.array_equal(g2, apply_change(g, m, name, strength, seed=1, case_id=7)[0])


def test_geometry_exactly():
    g, m = _frame()
    assert np.array_equal(apply_change(g, m, "flip", 1)[1], m[:, ::-1])
    g2, m2 = apply_change(g, m, "pad", 0.4)
    assert g2.shape == (120, 160 + 64) and m2[:, 32:32 + 160].sum() == m.sum() and g2[:, :32].max() == 0
    _, m3 = apply_change(g, m, "zoom", 0.7)
    assert m3.sum() == pytest.approx(m.sum() / 0.49, rel=0.1)  # the lesion is magnified 1/0.7 each way
    assert set(CHANGES) >= {"gain", "gamma", "contrast", "speckle", "noise", "blur", "lowres", "zoom", "flip", "jpeg",
                            "pad", "marks"}


def test_image_area_cuts_margins_beside_and_above_never_below():
    from edgebus.data.preprocess import cut_area, image_area

    g, m = _frame()
    assert image_area(g) == (0, 0, 160, 120)
    g2, m2 = apply_change(g, m, "pad", 0.4)  # black bars beside the image: cut back to the image exactly
    c, cm = cut_area(g2, m2)
    assert np.array_equal(c, g) and np.array_equal(cm, m)
    faint = g.copy()
    faint[:10] = 0
    faint[:10, 70:80] = 200  # rows whose bright share (1/16) is near the 5% line: image, padded or not
    assert image_area(faint) == (0, 0, 160, 120)
    assert np.array_equal(cut_area(apply_change(faint, m, "pad", 0.4)[0])[0], faint)
    top = np.vstack([np.zeros((20, 160), np.uint8), g])  # a black band above: cut
    top[5:9, 3:40] = 255  # with a label in it (under 5% of each column's pixels)
    assert image_area(top) == (0, 20, 160, 140)
    low = np.vstack([g, np.zeros((30, 160), np.uint8)])  # dark rows below the image are the image (shadowing)
    assert image_area(low) == (0, 0, 160, 150)
    dark = np.zeros((120, 160), np.uint8)
    dark[50:60, 70:80] = 200  # almost nothing bright: the whole frame, not a sliver
    assert image_area(dark) == (0, 0, 160, 120) and image_area(np.zeros((4, 4), np.uint8)) == (0, 0, 4, 4)
    with pytest.raises(Exception, match="mask.pixels"):
        cut_area(g, m[:, :100], "mask.pixels")


@pytest.mark.parametrize("run_name", ["cls_run", "seg_run"])
def test_clean_row_reproduces_the_runs_own_metrics(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    r = cli("stress", run, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "stress.json").read_text())
    m = manifest(run)
    want = ["float", "int8"] if m["task"] == "classify" else ["float", "int8", "cart"]
    assert res["kinds"] == want and len(res["rows"]) == 1 + len(conditions())
    clean = res["rows"][0]
    key = "auc" if m["task"] == "classify" else "iou"
    assert clean["float"][key] == pytest.approx(m["metrics"]["keras"]["test"][key], abs=1e-6)
    assert clean["int8"][key] == pytest.approx(m["exports"]["int8"]["metrics"][key], abs=1e-6)
    assert res["summary"]["int8"]["worst_drop"] == max(r["int8"]["drop"] for r in res["rows"][1:])
    fid = m["exports"]["int8"]["fidelity"]  # the clean row's int8-vs-float agreement is export validation's
    for k in ("flips", "mask_iou_mean"):
        if k in fid:
            assert clean["int8_vs_float"][k] == pytest.approx(fid[k], abs=1e-9)
    assert (tmp_path / "stress.png").stat().st_size > 1000 and "Worst case" in (tmp_path / "stress.md").read_text()
    if "cart" in want:  # the mask the cart shows, scored under every change too
        assert all(0 <= r["cart"]["iou"] <= r["cart"]["dice"] <= 1 for r in res["rows"])
        assert res["summary"]["cart"]["worst_drop"] == max(r["cart"]["drop"] for r in res["rows"][1:])


def test_cart_mask_scores_keep_the_largest_region_at_the_frames_size():
    """The cart's mask (largest region, at the frame's own size) scored against sklearn's Jaccard; a speck
    the raw map counts is not in it."""
    from sklearn.metrics import f1_score, jaccard_score

    from edgebus.core.metrics import segmentation_metrics
    from edgebus.data.preprocess import lesion_and_regions, resize_mask
    from edgebus.evaluation.stress import cart_mask_scores

    prob = np.zeros((32, 32, 1), np.float32)
    prob[8:20, 8:22] = 0.9
    prob[27:30, 27:30] = 0.8  # a speck far from the lesion
    truth = np.zeros((64, 80), bool)
    truth[16:40, 20:52] = True
    frame = np.zeros((64, 80), np.uint8)
    lesion = lesion_and_regions(prob, (64, 80), 0.5)[0]
    assert lesion[50:, 60:].sum() == 0 and lesion.sum() > 0
    got = cart_mask_scores(prob[None], [frame], [truth], 0.5)
    assert got["iou"] == pytest.approx(jaccard_score(truth.ravel(), lesion.ravel() > 0))
    assert got["dice"] == pytest.approx(f1_score(truth.ravel(), lesion.ravel() > 0))
    small = resize_mask(truth.astype(np.uint8), (32, 32))  # the truth on the map's grid, as the int8 rows score it
    assert got["iou"] > segmentation_metrics(small[None], prob[None, ..., 0], 0.5)["iou"]  # the speck cost the raw map
    empty = np.zeros((1, 32, 32, 1), np.float32)
    assert cart_mask_scores(empty, [frame], [np.zeros((64, 80), bool)], 0.5)["iou"] == 1.0
    assert cart_mask_scores(empty, [frame], [truth], 0.5)["iou"] == 0.0
    two = cart_mask_scores(np.concatenate([prob[None], empty]), [frame, frame], [truth, truth], 0.5)
    assert two["iou"] == pytest.approx(got["iou"] / 2)  # a mean over frames


def test_cv_stress_scores_every_case_out_of_fold(synthetic_breast_dir, tmp_path):
    cv = tmp_path / "cv"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--folds", 3,
            "--epochs", 6, "--lr", 3e-3, "--int8", "--out", cv, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("stress", cv)
    assert r.exit_code == 0, r.output
    res = json.loads((cv / "stress" / "stress.json").read_text())
    s = json.loads((cv / "summary.json").read_text())
    assert res["n"] == s["pooled"]["n"] == manifest(cv)["data"]["n_lesions"]
    assert res["rows"][0]["float"]["auc"] == pytest.approx(s["pooled"]["auc"], abs=1e-6)
    assert res["rows"][0]["int8"]["auc"] == pytest.approx(s["pooled_int8"]["auc"], abs=1e-6)
    clean_fid = res["rows"][0]["int8_vs_float"]  # the clean row's flips are the CV's own (which rounds to 1e-6)
    assert {k: v for k, v in clean_fid.items() if "diff" not in k} == {k: v for k, v in s["int8_fidelity"].items() if "diff" not in k}
    assert clean_fid["max_abs_diff"] == pytest.approx(s["int8_fidelity"]["max_abs_diff"], abs=1e-5)
    worst = res["int8_vs_float"]["worst"]["flips"]
    assert worst == max(r["int8_vs_float"]["flips"] for r in res["rows"]) and "labels flipped" in (cv / "stress" / "stress.md").read_text()
    # a fold model changed after the CV is refused, naming the file
    (cv / "fold1" / "model_int8.tflite").write_bytes(b"TFL3" * 8)
    one_line_error(cli("stress", cv, "--out", tmp_path / "again"), "fold1/model_int8.tflite", "sha256")


def test_a_lone_file_needs_data(cls_run, chain_data, tmp_path):
    one_line_error(cli("stress", cls_run / "model_int8.tflite", "--out", tmp_path), "--data")
    (tmp_path / "taken").write_text("x")
    one_line_error(cli("stress", cls_run, "--out", tmp_path / "taken"), "taken", "not a folder")
    r = cli("stress", cls_run / "model_int8.tflite", "--data", chain_data, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "stress.json").read_text())
    from edgebus.data.breast import read_breast

    assert res["kinds"] == ["int8"] and res["n"] == len(read_breast(chain_data).lesions())
