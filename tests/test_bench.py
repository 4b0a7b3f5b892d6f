"""The benchmark harness beyond the chain: device packs, lone files, merged multi-machine reports."""

import json

import pytest

from tests.conftest import cli, manifest


def test_pack_benchmarks_without_tensorflow_or_the_run(cls_run, tmp_path, without_tf):
    pack = tmp_path / "pack"
    r = cli("bench", cls_run, "--pack", pack)
    assert r.exit_code == 0, r.output
    assert not (pack / "model.keras").exists()
    without_tf(f"""
        from typer.testing import CliRunner
        from edgebus.cli import app
        r = CliRunner().invoke(app, ['bench', {str(pack)!r}, '--warmup', '1', '--runs', '3'])
        assert r.exit_code == 0, r.output
    """)
    rep = json.loads((pack / "report.json").read_text())
    assert all(row["status"] == "ok" and row["metrics"] for row in rep["rows"])
    assert not any(row["format"] == "keras" for row in rep["rows"])
    assert (pack / "report.html").read_text().startswith("<!doctype html>")


def test_lone_tflite_files_and_a_failed_one(cls_run, tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"TFL3 not really a model")
    r = cli("bench", cls_run / "model_int8.tflite", bad, "--eval-pack", cls_run / "eval_pack.npz",
            "--warmup", 1, "--runs", 3, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [row["status"] for row in rows] == ["ok", "load_failed"]
    assert rows[0]["metrics"]["accuracy"] is not None
    assert "broken.tflite" in rows[1]["error"]


def test_report_merges_two_machines(cls_run, tmp_path):
    assert cli("bench", cls_run, "--warmup", 1, "--runs", 3, "--no-keras", "--out", tmp_path / "x86").exit_code == 0
    rep = json.loads((tmp_path / "x86" / "report.json").read_text())
    pi = json.loads(json.dumps(rep))
    pi["machine"].update(cpu="Cortex-A72", arch="aarch64", cores=4, hostname="cart-pi")
    a, b = tmp_path / "x86.json", tmp_path / "pi.json"
    a.write_text(json.dumps(rep))
    b.write_text(json.dumps(pi))
    r = cli("report", a, b, "--out", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "merged" / "report.md").read_text()
    assert "Cortex-A72 (aarch64, 4 cores)" in md and rep["machine"]["cpu"] in md
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert len(merged["results"]) == 2
    assert {r["machine"] for r in merged["ratios"]} == {"Cortex-A72 (aarch64, 4 cores)", f"{rep['machine']['cpu']} (x86_64, {rep['machine']['cores']} cores)"}
    assert all(0 < r["int8_over_float32"] for r in merged["ratios"] if r["int8_over_float32"] is not None)
    html = (tmp_path / "merged" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # latency and size plots at least


def test_report_refuses_a_foreign_json(tmp_path):
    f = tmp_path / "other.json"
    f.write_text('{"hello": 1}')
    r = cli("report", f, "--out", tmp_path / "m")
    assert r.exit_code == 2 and "other.json" in r.output and "edgebus.bench/1" in r.output


def test_threshold_selection_hits_requested_sensitivity():
    """Scores built so the default 0.5 cut-off misses most malignant cases: the chosen threshold
    must reach the target sensitivity and be the highest that does."""
    import numpy as np

    from edgebus.core.metrics import classification_metrics, expected_calibration_error, threshold_for_sensitivity

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(40)].astype(int)
    p = np.r_[rng.uniform(0.0, 0.35, 60), rng.uniform(0.2, 0.6, 40)]
    assert classification_metrics(y, p, 0.5)["malignant_recall"] < 0.5
    for target in (0.8, 0.9, 1.0):
        op = threshold_for_sensitivity(y, p, target)
        assert op["sensitivity"] >= target
        assert (p[y == 1] >= op["threshold"] + 1e-9).mean() < target  # any higher threshold falls short
        assert op["specificity"] == (p[y == 0] < op["threshold"]).mean()
    # calibrated scores have a small ECE, overconfident ones a large one
    q = rng.uniform(0, 1, 5000)
    assert expected_calibration_error(rng.uniform(0, 1, 5000) < q, q) < 0.03
    assert expected_calibration_error(np.zeros(100), np.full(100, 0.9)) > 0.85


def test_operating_point_threshold_reaches_the_exported_model(chain_data, tmp_path):
    """The threshold chosen on validation is stored in the run and embedded in the int8 file;
    once exported, a run refuses a new operating point (its models would disagree)."""
    from edgebus.runtime.metadata import read_metadata

    run = tmp_path / "op"
    assert cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 3,
               "--out", run, "--quiet").exit_code == 0
    r = cli("operating-point", run, "--target-sensitivity", 0.9)
    assert r.exit_code == 0, r.output
    m = manifest(run)
    assert m["operating_point"]["sensitivity"] >= 0.9 and m["threshold"] == m["operating_point"]["threshold"]
    assert cli("export", run, "--int8", "--ptq").exit_code == 0
    # each file's own point, by the same rule on its own validation scores (export.threshold): the float32 file
    # lands on the run's threshold, the int8 file on its own, with the target sensitivity reached there
    assert read_metadata(run / "model_float32.tflite")["threshold"] == pytest.approx(m["threshold"], abs=1e-5)
    meta = read_metadata(run / "model_int8.tflite")
    assert meta["operating_point"]["rule"] == "val" and meta["operating_point"]["sensitivity"] >= 0.9
    assert meta["threshold"] == manifest(run)["exports"]["int8"]["threshold"]
    r = cli("operating-point", run)
    assert r.exit_code == 2 and "already exported" in r.output
