"""An operating point chosen out-of-fold: Platt calibration, a threshold for a target sensitivity
chosen on other folds' predictions only, its cross-fitted estimate with intervals, and the chain
CV -> operating point -> run -> int8 export -> cart, where the calibration is applied."""

import json

import numpy as np
import pytest

from edgebus.core.calibration import apply, choose_calibration, crossfit_operating_point, fit_platt, raw_threshold
from edgebus.core.metrics import expected_calibration_error
from tests.conftest import cli, manifest, one_line_error


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 20000)
    z = np.log(p / (1 - p))
    y = rng.random(len(p)) < 1 / (1 + np.exp(-(0.5 * z - 0.3)))  # the truth is half as confident, shifted
    cal = fit_platt(y, p)
    assert cal["a"] == pytest.approx(0.5, abs=0.05) and cal["b"] == pytest.approx(-0.3, abs=0.06)
    assert expected_calibration_error(y, apply(cal, p)) < 0.02 < expected_calibration_error(y, p)
    for t in (0.1, 0.5, 0.8):  # the raw threshold is the same decision as the calibrated one
        assert apply(cal, [raw_threshold(cal, t)])[0] == pytest.approx(t, abs=1e-9)


def test_platt_fits_scores_far_from_calibrated():
    """A new site's scores may sit several logits low: the fit moves its intercept by that much and keeps
    the slope (plain Newton from the identity diverged there, to slopes of 10^5), and the intercept-only
    form absorbs the shift alone."""
    rng = np.random.default_rng(1)
    z = rng.normal(-0.5, 1.6, 130)
    y = rng.random(130) < 1 / (1 + np.exp(-z))
    base = fit_platt(y, 1 / (1 + np.exp(-z)))
    for shift in (1.0, 3.0, 5.0):
        cal = fit_platt(y, 1 / (1 + np.exp(-(z - shift))))
        assert cal["a"] == pytest.approx(base["a"], abs=0.01) and cal["b"] - shift * cal["a"] == pytest.approx(base["b"], abs=0.05)
        one = fit_platt(y, 1 / (1 + np.exp(-(z - shift))), slope=False)
        assert one["a"] == 1.0 and one["b"] == pytest.approx(shift + fit_platt(y, 1 / (1 + np.exp(-z)), slope=False)["b"], abs=0.05)


def test_threshold_is_chosen_on_other_folds_only():
    """Folds 1 and 2 separate the classes at ~0.9 vs ~0.1; fold 0's cancers score only 0.3. A
    threshold chosen without fold 0 misses them; one that saw fold 0 would not."""
    rng = np.random.default_rng(1)
    y, p, fold = [], [], []
    for f in range(3):
        mal, ben = 20, 30
        y += [1] * mal + [0] * ben
        hi = 0.3 if f == 0 else 0.9
        p += list(np.clip(rng.normal(hi, 0.02, mal), 0.01, 0.99)) + list(np.clip(rng.normal(0.1, 0.02, ben), 0.01, 0.99))
        fold += [f] * (mal + ben)
    op = crossfit_operating_point(y, p, fold, target=0.9, n_boot=200)
    assert op["in_sample"]["sensitivity"] >= 0.9  # chosen on all predictions it reaches the target there
    assert op["cross_fitted"]["sensitivity"] <= 2 / 3 + 1e-9  # ... but fold 0's cancers were never seen
    lo, hi = op["cross_fitted"]["sensitivity_ci"]
    assert lo <= op["cross_fitted"]["sensitivity"] <= hi and lo < hi
    assert op["calibration"]["a"] > 0 and 0 < op["threshold"] < 1
    per = op["cross_fitted"]["per_fold"]  # the miss is fold 0's, and the report says which fold strays
    assert [r["fold"] for r in per] == [0, 1, 2] and [r["malignant"] for r in per] == [20, 20, 20]
    assert per[0]["sensitivity"] == 0 and per[1]["sensitivity"] == per[2]["sensitivity"] == 1
    assert sum(r["sensitivity"] * r["malignant"] for r in per) / 60 == pytest.approx(op["cross_fitted"]["sensitivity"])


@pytest.fixture(scope="module")
def cv_dir(synthetic_breast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("op") / "cv"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--folds", 3,
            "--epochs", 8, "--lr", 3e-3, "--int8", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("operating-point", out, "--target-sensitivity", 0.9)
    assert r.exit_code == 0, r.output
    return out


def test_cv_operating_point_uses_the_pooled_out_of_fold_int8_predictions(cv_dir, tmp_path):
    recs = sorted((json.loads(line) for line in (cv_dir / "folds.jsonl").read_text().splitlines()), key=lambda r: r["fold"])
    y = np.concatenate([r["test_label"] for r in recs])
    p = np.concatenate([r["test_prob_int8"] for r in recs])
    fold = np.concatenate([[r["fold"]] * len(r["test_label"]) for r in recs])
    op = json.loads((cv_dir / "operating_point.json").read_text())
    chosen = choose_calibration(y, p, fold)["chosen"]  # the calibration chosen out of fold (tested on its own)
    assert op["calibration_choice"]["chosen"] == chosen and "Calibration of the malignancy probability" in (
        cv_dir / "operating_point.md").read_text()
    want = crossfit_operating_point(y, p, fold, 0.9, method=chosen)
    assert op["source"] == "int8" and op["n"] == len(y) == manifest(cv_dir)["data"]["n_lesions"]
    assert op["threshold"] == pytest.approx(want["threshold"]) and op["calibration"] == want["calibration"]
    assert op["cross_fitted"] == want["cross_fitted"]
    # chosen again for the same target: rewritten; for another: not replaced silently
    assert cli("operating-point", cv_dir, "--target-sensitivity", 0.9).exit_code == 0
    one_line_error(cli("operating-point", cv_dir, "--target-sensitivity", 0.8), "operating_point.json", "--overwrite")
    assert json.loads((cv_dir / "operating_point.json").read_text())["target_sensitivity"] == 0.9
    assert cli("operating-point", cv_dir, "--target-sensitivity", 0.8, "--out", tmp_path).exit_code == 0
    assert cli("operating-point", cv_dir, "--target-sensitivity", 0.7, "--out", tmp_path, "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "operating_point.json").read_text())["target_sensitivity"] == 0.7
    assert manifest(cv_dir)["operating_point"]["threshold"] == op["threshold"]
    assert (cv_dir / "reliability.png").stat().st_size > 1000
    assert "cross-fitted" in (cv_dir / "operating_point.md").read_text()


def test_a_run_takes_the_cv_operating_point_into_its_int8_file_and_the_cart_applies_it(
        cv_dir, synthetic_breast_dir, tmp_path):
    from edgebus.runtime import LesionPipeline
    from edgebus.runtime.metadata import read_metadata

    run = tmp_path / "run"
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 8,
            "--lr", 3e-3, "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("operating-point", run, "--from-cv", cv_dir)
    assert r.exit_code == 0, r.output
    op = json.loads((cv_dir / "operating_point.json").read_text())
    m = manifest(run)
    assert m["threshold"] == op["threshold"] and m["calibration"] == op["calibration"]
    assert m["metrics"]["keras"]["test"]["threshold"] == op["threshold"]
    r = cli("export", run, "--int8", "--ptq")
    assert r.exit_code == 0, r.output
    meta = read_metadata(run / "model_int8.tflite")
    assert meta["calibration"] == op["calibration"] and meta["threshold"] == op["threshold"]
    assert meta["operating_point"]["rule"] == "cv" and f"{cv_dir}: pooled out-of-fold int8 scores" in meta["operating_point"]["chosen_on"]
    frames = sorted((synthetic_breast_dir / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[:6]
    pipe = LesionPipeline(classifier=run / "model_int8.tflite")
    for f in frames:
        res = pipe.predict(f)
        assert res["prob_malignant"] == pytest.approx(float(apply(op["calibration"], res["prob_raw"])), abs=1e-5)
        assert res["label"] == ("malignant" if res["prob_raw"] >= op["threshold"] else "benign")
    # a site's recalibration (edgebus site-threshold) moves the shipped calibrated probability's logit, not the raw one's
    site = {"threshold": 0.2, "calibration": {"method": "platt", "a": 1.0, "b": 0.7}, "sha256": "x",
            "shipped_threshold": op["threshold"], "chosen_on": {}}
    at_site = LesionPipeline(classifier=run / "model_int8.tflite", site=site)
    for f in frames:
        shipped, res = pipe.predict(f), at_site.predict(f)
        q = apply(op["calibration"], shipped["prob_raw"])
        assert res["prob_malignant"] == pytest.approx(float(apply(site["calibration"], q)), abs=1e-5)
        assert res["label"] == ("malignant" if res["prob_raw"] >= 0.2 else "benign") and res["threshold"] == 0.2


def test_operating_point_bad_input(cv_dir, synthetic_breast_dir, tmp_path):
    run = tmp_path / "run64"
    assert cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 64, "--epochs", 1,
               "--out", run, "--quiet").exit_code == 0
    one_line_error(cli("operating-point", run, "--from-cv", cv_dir), "preprocessing contract", "size [32, 32] vs [64, 64]")
    one_line_error(cli("operating-point", run, "--from-cv", tmp_path), "operating_point.json")
    one_line_error(cli("operating-point", cv_dir, "--source", "fp16"), "--source")
    one_line_error(cli("operating-point", cv_dir, "--from-cv", cv_dir), "--from-cv")


def test_a_cv_becomes_a_fold_ensemble_bundle(cv_dir, seg_run, synthetic_breast_dir, tmp_path):
    """`edgebus bundle --classifier CV_DIR`: every fold's int8 file, averaged, at the out-of-fold threshold."""
    from edgebus.runtime import ExportedModel, LesionPipeline

    out = tmp_path / "cart"
    r = cli("bundle", "--classifier", cv_dir, "--segmenter", seg_run, "--out", out)
    assert r.exit_code == 0, r.output
    b = json.loads((out / "bundle.json").read_text())
    op = json.loads((cv_dir / "operating_point.json").read_text())
    assert len(b["classifier"]["ensemble"]) == 3 and b["classifier"]["threshold"] == op["threshold"]
    assert "3-member ensemble" in (out / "classifier_model_card.md").read_text()  # the CV's card travels with it
    members = [ExportedModel(out / m["file"], "classify") for m in b["classifier"]["ensemble"]]
    pipe = LesionPipeline.from_bundle(out)
    frame = sorted((synthetic_breast_dir / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[0]
    res = pipe.predict(frame)
    x0, y0, x1, y1 = res["image_area"]  # what the models see: the frame's image area
    x = members[0].input_for(pipe.load(frame)[y0:y1, x0:x1])
    assert res["prob_raw"] == pytest.approx(float(np.mean([m.run(x).ravel()[0] for m in members])), abs=1e-6)
    assert res["prob_malignant"] == pytest.approx(float(apply(op["calibration"], res["prob_raw"])), abs=1e-5)
    assert res["threshold"] == op["threshold"] and res["mask"] is not None
    r = cli("predict", "--bundle", out, frame, "--out", tmp_path / "pred")
    assert r.exit_code == 0, r.output
    (out / "classifier_fold1.tflite").write_bytes((out / "classifier_fold0.tflite").read_bytes())
    one_line_error(cli("predict", "--bundle", out, frame, "--out", tmp_path / "p2"), "classifier_fold1.tflite", "sha256")


def test_model_card_is_filled_from_the_run_and_its_cv(cv_dir, synthetic_breast_dir, tmp_path):
    """Issue 14: every section of model_card.json / .md comes from the run (and the CV its operating
    point came from), the latency appears once benched, and the bundle carries the card."""
    from edgebus.core.io import read_jsonl

    run = tmp_path / "run"
    assert cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 2,
               "--out", run, "--quiet").exit_code == 0
    assert cli("operating-point", run, "--from-cv", cv_dir).exit_code == 0
    r = cli("export", run, "--int8", "--ptq")
    assert r.exit_code == 0 and "model card:" in r.output, r.output
    card = json.loads((run / "model_card.json").read_text())
    m = manifest(run)
    assert card["model"]["sha256"] == m["artifacts"]["model_int8.tflite"]["sha256"]
    assert card["training_data"]["fingerprint"] == m["data"]["fingerprint"] and card["intended_use"] and card["not_for"]
    assert card["io"]["inputs"]["image"]["dtype"] == "uint8" and card["io"]["outputs"]["malignant_probability"]["threshold"] == m["threshold"]
    cv = card["evaluation"]["cv"]
    assert cv["n"] == len([i for r in read_jsonl(cv_dir / "folds.jsonl") for i in r["test_ids"]]) == m["data"]["n_lesions"]
    assert cv["pooled"]["auc"]["value"] is not None and cv["operating_point"]["threshold"] == m["threshold"]
    assert cv["group_by"] == "case"  # the card says its estimate comes from case folds (every scanner also in training)
    groups = cv["subgroups"]
    assert set(groups) == {"BI-RADS", "tissue composition", "age band", "lesion size"}
    for kind, rows in groups.items():
        assert sum(r["n"] for r in rows) == cv["n"] or kind == "BI-RADS", kind  # every case in one band
    assert card["calibration"]["raw"] is not None
    f = card["int8_vs_float"]["fidelity"]
    assert f["n"] == m["metrics"]["keras"]["test"]["n"] and f["flips"] == f["benign_to_malignant"] + f["malignant_to_benign"]
    assert card["latency"] == [] and card["versions"]["tensorflow"]
    md = (run / "model_card.md").read_text()
    for heading in ("Intended use", "Inputs and outputs", "Training data", "Evaluation", "By subgroup", "Calibration",
                    "int8 against its float parent", "Latency", "Known limits", "Versions"):
        assert f"## {heading}" in md or f"### {heading}" in md, heading
    assert "Folds: by case: every scanner setting was also in training" in md
    assert cli("bench", run, "--runs", 3, "--warmup", 0, "--no-keras").exit_code == 0
    card = json.loads((run / "model_card.json").read_text())
    assert {row["file"] for row in card["latency"]} >= {"model_int8.tflite"} and all(row["median_ms"] > 0 for row in card["latency"])
    assert cli("bundle", "--classifier", run, "--out", tmp_path / "cart").exit_code == 0
    assert json.loads((tmp_path / "cart" / "classifier_model_card.json").read_text()) == card
