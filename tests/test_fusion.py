"""Lesion shape measured in the frame's geometry, and the classifier + shape fusion scored out of fold:
shape numbers that ignore zoom and frame size, a fusion that learns from the signal that is there and
never from the fold it scores, and the CLI on two CVs of the same folds."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgebus.core import fusion
from edgebus.core.calibration import CALIBRATIONS, apply
from edgebus.core.descriptors import DESCRIPTORS
from edgebus.core.echo import echo_features
from edgebus.core.errors import EdgebusError
from edgebus.core.shape import FEATURES, on_grid, shape_features
from edgebus.data.preprocess import lesion_in_frame
from tests.conftest import cli, copy_run, one_line_error


def _ellipse(h, w, box):
    im = Image.new("L", (w, h))
    ImageDraw.Draw(im).ellipse(box, fill=255)
    return np.asarray(im) > 0


def test_shape_is_scale_free_and_measured_in_the_frames_geometry():
    tall = _ellipse(400, 600, (250, 100, 330, 260))  # 80 wide, 160 tall: taller than wide
    f = dict(zip(FEATURES, shape_features(tall)))
    assert 1.9 < f["orientation"] < 2.1 and f["solidity"] > 0.97 and 0.7 < f["extent"] < 0.82
    zoomed = _ellipse(800, 1200, (500, 200, 660, 520))  # the same lesion at twice the zoom
    assert np.allclose(shape_features(zoomed), shape_features(tall), rtol=0.03)
    # squashed into a square model grid, the wide frame exaggerates it (~3); with the frame's pixel spacing, ~2 again
    g = on_grid(tall, (128, 128))
    assert shape_features(g)[0] > 2.6 and 1.8 < shape_features(g, frame_hw=(400, 600))[0] < 2.2
    star = np.zeros((400, 400), bool)  # a spiculated outline: low solidity, high compactness
    yy, xx = np.mgrid[:400, :400]
    ang, r = np.arctan2(yy - 200, xx - 200), np.hypot(yy - 200, xx - 200)
    star[r < 60 + 50 * (np.cos(8 * ang) > 0.6)] = True
    s = dict(zip(FEATURES, shape_features(star)))
    disc = dict(zip(FEATURES, shape_features(r < 80)))
    assert s["solidity"] < disc["solidity"] - 0.15 and s["compactness"] > disc["compactness"] + 0.5
    assert shape_features(np.zeros((10, 10))) is None
    with pytest.raises(EdgebusError, match="2-D mask"):
        shape_features(np.zeros((2, 3, 4, 5)))


def test_lesion_in_frame_keeps_the_largest_region_at_frame_size():
    prob = np.zeros((32, 32), np.float32)
    prob[8:20, 4:12] = 0.9
    prob[28:30, 28:31] = 0.8  # a speck far away
    m = lesion_in_frame(prob, (200, 300), 0.5)
    assert m.shape == (200, 300) and m[170:, 250:].sum() == 0 and m[60:120, 50:100].all()
    assert lesion_in_frame(prob * 0.1, (200, 300), 0.5) is None


def test_echo_features_compare_the_lesion_with_tissue_at_its_depth():
    rng = np.random.default_rng(0)
    gray = np.clip(120 + rng.normal(0, 10, (300, 400)), 1, 255)
    lesion = _ellipse(300, 400, (160, 80, 240, 140))  # 80 wide, 60 tall, rows 80-140
    gray[lesion] = 40  # hypoechoic
    gray[141:171, 160:241] *= 0.4  # a shadow below it
    echo, posterior, het = echo_features(gray, lesion)
    assert echo < -0.7 and posterior < -0.5 and het < 0.1
    brighter = echo_features(gray * 1.5, lesion)  # an overall gain change cancels (up to the +1)
    assert np.allclose(brighter, [echo, posterior, het], atol=0.03)
    gray[141:171, 160:241] /= 0.16  # posterior enhancement instead
    assert echo_features(np.clip(gray, 0, 255), lesion)[1] > 0.3
    edge = np.zeros_like(lesion)
    edge[250:300, 150:250] = True  # at the bottom of the frame: nothing below to compare
    assert np.isnan(echo_features(gray, edge)[1])
    assert echo_features(gray, np.zeros_like(lesion)) is None
    with pytest.raises(EdgebusError, match="mask of its size"):
        echo_features(gray, lesion[:10])


def test_a_descriptor_is_shipped_only_with_agreement_beyond_chance():
    from edgebus.evaluation.shape_fusion import score_descriptors

    rng = np.random.default_rng(1)
    n = 240
    m = rng.normal(0, 1, (n, len(fusion.MEASURES)))
    truth = np.full((n, len(DESCRIPTORS)), -1)
    truth[:, 0] = (m[:, fusion.MEASURES.index("solidity")] + rng.normal(0, 0.5, n) < 0).astype(int)  # irregular: low solidity
    truth[:, 1] = rng.random(n) < 0.5  # margin: unrelated to anything measured
    truth[:20, 1] = -1  # unknown cells are left out
    res = {d["name"]: d for d in score_descriptors({"m": m, "fold": np.arange(n) % 5, "descriptors": truth})}
    assert res["shape"]["shipped"] and res["shape"]["kappa"]["lo"] > 0.4 and res["shape"]["auc"] > 0.85
    assert not res["margin"]["shipped"] and res["margin"]["n"] == n - 20 and "model" not in res["margin"]
    assert "note" in res["echogenicity"] and not res["echogenicity"]["shipped"]  # no known cell at all
    assert score_descriptors({"m": m, "fold": np.arange(n) % 5, "descriptors": None}) == []


def _signal(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    shapes = [[1.4 if m else 0.8, 0.8 if m else 0.97, 2.5 if m else 1.4, 0.6 if m else 0.78] for m in y]
    shapes = [list(np.asarray(s) * rng.normal(1, 0.15, 4)) for s in shapes]
    shapes[3] = None  # the segmenter found nothing: the classifier alone decides
    prob = 1 / (1 + np.exp(-rng.normal(0, 1, n)))  # a classifier that learned nothing
    return y.astype(int), prob, shapes, np.arange(n) % 5


def test_fusion_learns_the_shape_signal_and_never_sees_the_fold_it_scores():
    from edgebus.core.metrics import roc_auc

    y, prob, shapes, fold = _signal()
    x = fusion.feature_rows(prob, shapes)
    assert np.isnan(x[3, 1:]).all() and np.isfinite(x[3, 0])
    auc = {k: roc_auc(y, fusion.cross_fitted(x, y, fold, k)) for k in fusion.KINDS}
    assert auc["classifier"] < 0.65 and auc["shape"] > 0.9 and auc["fused"] > 0.9
    # relabelling fold 0 changes no fold-0 score: fold 0's model never saw fold 0
    y2 = y.copy()
    y2[fold == 0] = 1 - y2[fold == 0]
    a, b = fusion.cross_fitted(x, y, fold, "fused"), fusion.cross_fitted(x, y2, fold, "fused")
    assert np.allclose(a[fold == 0], b[fold == 0]) and not np.allclose(a[fold == 1], b[fold == 1])
    model = json.loads(json.dumps(fusion.fit(x, y)))  # JSON-able, as the cart would carry it
    assert model["inputs"] == list(fusion.INPUTS) and np.allclose(fusion.predict(model, x), fusion.predict(fusion.fit(x, y), x))
    with pytest.raises(EdgebusError, match="needs cases of both classes"):
        fusion.fit(x, np.zeros(len(y)))


def test_fuse_scores_a_classifier_cv_with_a_segment_cv_on_the_same_folds(tiny_cv, synthetic_breast_dir, tmp_path):
    common = ("--data", synthetic_breast_dir, "--size", 32, "--folds", 3, "--int8", "--quiet")
    copy_run(tiny_cv, tmp_path / "cls")  # the shared classifier CV; the segment CV below is on the same folds
    r = cli("cv", "segment", "--model", "test-unet", "--epochs", 2, "--out", tmp_path / "seg", *common)
    assert r.exit_code == 0, r.output
    r = cli("fuse", tmp_path / "cls", tmp_path / "seg")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "cls" / "fusion" / "fusion.json").read_text())
    assert res["n"] == sum(len(json.loads(line)["test_ids"]) for line in (tmp_path / "cls" / "folds.jsonl").read_text().splitlines())
    assert "int8 classifier" in res["sources"]["classifier"] and "int8 segmenter" in res["sources"]["shape"]
    assert [d["name"] for d in res["descriptors"]] == [d.name for d in DESCRIPTORS]
    shipped = {d["name"] for d in res["descriptors"] if d["shipped"]}
    assert all(d["model"]["inputs"] == list(fusion.MEASURES) for d in res["descriptors"] if d["shipped"])
    assert set(res["auc"]) == set(fusion.KINDS) and len(res["model"]["weights"]) == len(fusion.INPUTS)
    assert res["calibration"]["chosen"] in CALIBRATIONS and "Calibration of the fused probability, chosen out of fold" in (
        tmp_path / "cls" / "fusion" / "fusion.md").read_text()
    assert "classifier + shape (fused)" in (tmp_path / "cls" / "fusion" / "fusion.md").read_text()
    from edgebus.export.model_card import SUBGROUPS

    assert set(res["subgroups"]) == set(SUBGROUPS)  # where the fused cart misses, at its shipped threshold
    assert sum(r["n"] for r in res["subgroups"]["BI-RADS"]) == res["n"]
    assert "The fused score by subgroup" in (tmp_path / "cls" / "fusion" / "fusion.md").read_text()
    # a re-run from the same CVs rewrites the same numbers; other settings do not replace it silently
    assert cli("fuse", tmp_path / "cls", tmp_path / "seg").exit_code == 0
    assert json.loads((tmp_path / "cls" / "fusion" / "fusion.json").read_text())["auc"] == res["auc"]
    one_line_error(cli("fuse", tmp_path / "cls", tmp_path / "seg", "--target-sensitivity", 0.8), "fusion.json",
                   "other inputs", "--overwrite")
    assert json.loads((tmp_path / "cls" / "fusion" / "fusion.json").read_text()) == res
    # the fused score under the stress changes: its clean row is the fusion's own out-of-fold score
    r = cli("stress", tmp_path / "cls", "--fuse", tmp_path / "seg", "--out", tmp_path / "st")
    assert r.exit_code == 0, r.output
    st = json.loads((tmp_path / "st" / "stress.json").read_text())
    assert st["kinds"] == ["float", "int8", "fused"] and "fused" in st["summary"]
    assert st["rows"][0]["fused"]["auc"] == pytest.approx(res["auc"]["fused"]["value"], abs=1e-9)  # one cart path
    assert st["fused"]["threshold"] == pytest.approx(res["operating_point"]["fused"]["threshold"])
    assert any(row["fused"]["auc"] != st["rows"][0]["fused"]["auc"] for row in st["rows"][1:])
    one_line_error(cli("stress", tmp_path / "seg", "--fuse", tmp_path / "seg", "--out", tmp_path / "st2"), "classifier CV")
    one_line_error(cli("stress", tmp_path / "cls", "--fuse", tmp_path / "seg", "--out", tmp_path / "st", "--seed", 1),
                   "stress.json", "other inputs", "--overwrite")  # refused before minutes of scoring
    # the cart: the classifier CV's fold ensemble, a fold's int8 U-Net and the fusion, applied per frame
    cart = tmp_path / "cart"
    r = cli("bundle", "--classifier", tmp_path / "cls", "--segmenter", tmp_path / "seg" / "fold0" / "model_int8.tflite",
            "--fusion", tmp_path / "cls" / "fusion", "--out", cart)
    assert r.exit_code == 0, r.output
    assert (cart / "fusion.md").read_text() == (tmp_path / "cls" / "fusion" / "fusion.md").read_text()
    r = cli("predict", "--bundle", cart, synthetic_breast_dir, "--out", tmp_path / "pred", "--no-overlays")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    fused = [x for x in rows if x["shape"] is not None]
    assert fused and all(x["threshold"] == res["operating_point"]["fused"]["threshold"] for x in rows)
    for x in fused:
        assert x["prob_classifier"] is not None and set(x["shape"]) == set(FEATURES) and "orientation" in x["findings"]
        assert set(x["descriptors"] or {}) == shipped  # the measured descriptors the fusion shipped, and only those
        assert all(v["finding"] in x["findings"] for v in (x["descriptors"] or {}).values())
        assert x["label"] == ("malignant" if x["prob_raw"] >= x["threshold"] else "benign")
        # the shown probability: the fused output through the calibration `fuse` chose out of fold (None: as it is)
        assert x["prob_malignant"] == pytest.approx(float(apply(res["calibration"]["calibration"], x["prob_raw"])), abs=1e-6)
    # the Python API on the fused cart: the same row, JSON-safe (issue 33: every output kind round-trips)
    import edgebus

    p = edgebus.load(cart)(fused[0]["file"])
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d and d["shape"] == fused[0]["shape"] and p.prob == fused[0]["prob_malignant"]
    (cart / "fusion.json").write_text((cart / "fusion.json").read_text().replace('"intercept": ', '"intercept": 1 + '))
    one_line_error(cli("predict", "--bundle", cart, synthetic_breast_dir, "--out", tmp_path / "p2"), "sha256 differs")
    one_line_error(cli("bundle", "--classifier", tmp_path / "cls", "--fusion", tmp_path / "cls" / "fusion", "--out",
                       tmp_path / "c2"), "needs the lesion's mask", "--segmenter")
    other = cli("cv", "segment", "--model", "test-unet", "--epochs", 1, "--seed", 5, "--out", tmp_path / "seg5", *common)
    assert other.exit_code == 0, other.output
    one_line_error(cli("fuse", tmp_path / "cls", tmp_path / "seg5"), "folds differ")
    one_line_error(cli("fuse", tmp_path / "seg", tmp_path / "cls"), "not a classify cross-validation")
