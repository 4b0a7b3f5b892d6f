"""Seed ensembles scored out of fold (issue 12, deliverable 5): CVs on the same folds with other
training seeds, merged fold by fold; operating-point, stress and bundle read the merged folder."""

import json

import numpy as np
import pytest

from tests.conftest import cli, one_line_error

TINY = ["--model", "test-cnn", "--size", 32, "--folds", 3, "--epochs", 2, "--lr", 3e-3, "--int8", "--quiet"]


def _recs(cv):
    return sorted((json.loads(line) for line in (cv / "folds.jsonl").read_text().splitlines()), key=lambda r: r["fold"])


def test_merged_cv_averages_each_folds_members_and_the_stages_read_it(synthetic_breast_dir, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seeds in ((a, []), (b, ["--seed", 1, "--fold-seed", 0]), (c, ["--seed", 1])):
        r = cli("cv", "classify", "--data", synthetic_breast_dir, *TINY, *seeds, "--out", out)
        assert r.exit_code == 0, r.output
    assert json.loads((a / "folds.json").read_text())["folds"] == json.loads((b / "folds.json").read_text())["folds"]
    assert json.loads((a / "folds.json").read_text())["folds"] != json.loads((c / "folds.json").read_text())["folds"]
    ra, rb = _recs(a), _recs(b)
    assert ra[0]["test_prob"] != rb[0]["test_prob"]  # another seed: other models

    m = tmp_path / "merged"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".merged.partial").symlink_to(elsewhere)  # the temp name an older cv-merge used, planted as a link
    r = cli("cv-merge", a, b, "--out", m)
    assert r.exit_code == 0, r.output
    assert list(elsewhere.iterdir()) == [] and not list(tmp_path.glob(".merged.*.partial"))  # built aside, then renamed
    rm = _recs(m)
    for x, y, z in zip(ra, rb, rm):
        for key in ("test_prob", "test_prob_int8"):  # the ensemble's outputs are the mean of its members'
            assert np.allclose(z[key], (np.asarray(x[key]) + np.asarray(y[key])) / 2, atol=2e-6)
        assert len(z["members"]) == 2
    s = json.loads((m / "summary.json").read_text())
    assert s["pooled"]["n"] == sum(len(x["test_ids"]) for x in ra)

    r = cli("operating-point", m)
    assert r.exit_code == 0, r.output
    r = cli("stress", m)  # every fold's two members, averaged: the clean row is the merged CV's own score
    assert r.exit_code == 0, r.output
    res = json.loads((m / "stress" / "stress.json").read_text())
    op = json.loads((m / "operating_point.json").read_text())
    assert res["threshold"] == op["threshold"]
    assert res["rows"][0]["float"]["auc"] == pytest.approx(s["pooled"]["auc"], abs=1e-6)
    assert res["rows"][0]["int8"]["auc"] == pytest.approx(s["pooled_int8"]["auc"], abs=1e-6)
    # the ensemble's model card: written by operating-point, refreshed by stress, carried by the bundle
    card = json.loads((m / "model_card.json").read_text())
    assert card["evaluation"]["cv"]["operating_point"]["cross_fitted"] == op["cross_fitted"]
    assert card["evaluation"]["cv"]["pooled"] == s["bootstrap_int8"]
    assert card["stress"]["int8"] == res["summary"]["int8"] and card["ensemble"]["threshold"] == op["threshold"]
    r = cli("bundle", "--classifier", m, "--out", tmp_path / "cart")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "cart").rglob("*.tflite"))) == 6  # 3 folds x 2 seeds
    bundle = json.loads((tmp_path / "cart" / "bundle.json").read_text())
    assert [x["sha256"] for x in card["ensemble"]["members"]] == [x["sha256"] for x in bundle["classifier"]["ensemble"]]
    md = (tmp_path / "cart" / "classifier_model_card.md").read_text()
    assert "6-member ensemble" in md and "Scanner-shift stress" in md and "cross-fitted sensitivity" in md

    one_line_error(cli("cv-merge", a, c, "--out", tmp_path / "x"), "other folds", "--fold-seed")
    one_line_error(cli("cv-merge", a, a, "--out", tmp_path / "y"), "share a training seed")
    one_line_error(cli("cv-merge", a, b, "--out", m), "exists")
    one_line_error(cli("cv-merge", m, a, "--out", tmp_path / "z"), "merged CV already")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
