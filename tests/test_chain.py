"""The walking skeleton end to end on the synthetic set: train -> export -> bench -> report,
with tiny registry models (test-cnn, test-unet) so the whole file runs in about a minute."""

import json
import shutil

import numpy as np
import pytest
from tests.conftest import cli, manifest, one_line_error as _one_line_error


def test_classifier_learns_synthetic_set(cls_run):
    m = manifest(cls_run)
    test = m["metrics"]["keras"]["test"]
    assert test["n"] == 12
    # majority class is 60%: a model that learned nothing cannot pass this
    assert test["accuracy"] >= 0.8, test
    assert test["auc"] >= 0.85, test
    for key in ("precision", "recall", "f1", "support"):
        assert key in test["per_class"]["malignant"]
    assert np.sum(test["confusion_matrix"]) == 12


def test_unet_reaches_real_iou(seg_run):
    test = manifest(seg_run)["metrics"]["keras"]["test"]
    assert test["iou"] >= 0.5, test
    assert test["dice"] > test["iou"]


def test_run_directory_records_everything(cls_run):
    m = manifest(cls_run)
    assert len(m["data"]["fingerprint"]) == 64
    assert m["model"] == {"name": "test-cnn", "task": "classify", "input_size": [64, 64], "weights": "none", "kwargs": {}}
    assert m["preprocess"]["size"] == [64, 64] and m["preprocess"]["range"] == [0.0, 1.0]
    split = json.loads((cls_run / "split.json").read_text())
    ids = split["train"] + split["val"] + split["test"]
    assert len(ids) == len(set(ids)) == m["data"]["n_lesions"]
    from edgebus.core.io import sha256_file

    for name, art in m["artifacts"].items():
        assert sha256_file(cls_run / name) == art["sha256"], name
    assert (cls_run / "history.csv").read_text().startswith("epoch,")


@pytest.mark.parametrize("run_name", ["cls_run", "seg_run"])
def test_int8_is_full_integer_and_agrees_with_float(run_name, request):
    from edgebus.export.convert import float_tensors
    from edgebus.runtime import TFLiteModel

    run = request.getfixturevalue(run_name)
    m = manifest(run)
    e = m["exports"]["int8"]
    assert e["status"] == "ok"
    assert e["io"]["input"]["dtype"] == "uint8" and e["io"]["output"]["dtype"] == "uint8"
    assert abs(e["io"]["input"]["scale"] - 1 / 255) < 1e-6 and e["io"]["input"]["zero_point"] == 0
    model = TFLiteModel(run / e["file"])
    assert float_tensors(model) == []
    assert "DEQUANTIZE" not in e["ops"]
    key = "label_agreement" if m["task"] == "classify" else "pixel_agreement"
    assert e["agreement"][key] >= (0.75 if m["task"] == "classify" else 0.95), e["agreement"]
    assert m["exports"]["float32"]["agreement"][key] == 1.0


def test_metadata_travels_inside_a_lone_tflite(cls_run, tmp_path):
    from edgebus.runtime.metadata import read_metadata

    lone = tmp_path / "cart.tflite"
    shutil.copy(cls_run / "model_int8.tflite", lone)
    meta = read_metadata(lone)
    assert meta == json.loads((cls_run / "model_int8.json").read_text())
    assert meta["labels"] == ["benign", "malignant"] and meta["task"] == "classify"
    assert meta["preprocess"]["size"] == [64, 64]
    assert meta["data_fingerprint"] == manifest(cls_run)["data"]["fingerprint"]


REPORT_ROW_KEYS = {"file", "format", "threads", "status", "error", "size_bytes", "load_ms", "first_ms", "warmup",
                   "runs", "latency_ms", "fps", "rss_delta_mb", "metrics", "delta_vs_keras", "xnnpack", "xnnpack_error"}


def test_bench_writes_report_with_schema(cls_run, tmp_path):
    cls_run = shutil.copytree(cls_run, tmp_path / "run")  # the report is written into the run
    r = cli("bench", cls_run, "--threads", "1,2", "--warmup", 2, "--runs", 5)
    assert r.exit_code == 0, r.output
    rep = json.loads((cls_run / "report.json").read_text())
    assert rep["schema"] == "edgebus.bench/1"
    assert {"cpu", "cores", "arch", "interpreter"} <= set(rep["machine"])
    keras_rows = [row for row in rep["rows"] if row["format"] == "keras"]
    assert len(keras_rows) == 1 and keras_rows[0]["status"] == "ok"  # TensorFlow is installed here
    tfl = [row for row in rep["rows"] if row["format"] != "keras"]
    assert {(row["format"], row["threads"]) for row in tfl} >= {("float32", 1), ("float32", 2), ("int8", 1), ("int8", 2)}
    for row in tfl:
        assert REPORT_ROW_KEYS <= set(row), REPORT_ROW_KEYS - set(row)
        assert row["status"] == "ok"
        assert set(row["latency_ms"]) == {"min", "median", "mean", "std", "p90", "p99"}
        assert 0 < row["latency_ms"]["min"] <= row["latency_ms"]["median"] <= row["latency_ms"]["p99"]
    # the report's metric is recomputed from the evaluation pack: it must match export's own validation
    int8 = [row for row in rep["rows"] if row["format"] == "int8"][0]
    assert int8["metrics"]["accuracy"] == manifest(cls_run)["exports"]["int8"]["metrics"]["accuracy"]
    assert "| int8 | 1 | on | ok |" in (cls_run / "report.md").read_text()


def test_corrupt_tflite_gives_failed_row_and_others_go_on(cls_run, tmp_path):
    from edgebus.benchmarks.bench import time_model

    bad = tmp_path / "truncated.tflite"
    bad.write_bytes((cls_run / "model_int8.tflite").read_bytes()[:500])
    row, model = time_model(bad)
    assert model is None and row["status"] == "load_failed"
    assert "truncated.tflite" in row["error"] and "\n" not in row["error"]
    row, model = time_model(cls_run / "model_int8.tflite", warmup=1, runs=3)
    assert row["status"] == "ok"


def test_device_path_runs_without_tensorflow(cls_run, seg_run, without_tf):
    without_tf(f"""
        from edgebus.benchmarks import bench_run
        from edgebus.runtime.metadata import read_metadata
        from typer.testing import CliRunner
        from edgebus.cli import app
        assert CliRunner().invoke(app, ['--help']).exit_code == 0
        for run in ({str(cls_run)!r}, {str(seg_run)!r}):
            res = bench_run(run, warmup=1, runs=2, log=lambda *a: None)
            assert all(r['status'] == 'ok' for r in res['rows']), res['rows']
            assert read_metadata(run + '/model_int8.tflite')['format'] == 'int8'
    """)


def test_existing_run_is_never_overwritten_silently(cls_run, chain_data):
    before = (cls_run / "manifest.json").read_bytes()
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--out", cls_run, "--quiet")
    assert r.exit_code == 2
    assert "already exists" in r.output and "--overwrite" in r.output
    r = cli("export", cls_run, "--int8")
    assert r.exit_code == 2 and "already exported" in r.output
    assert (cls_run / "manifest.json").read_bytes() == before


def test_bad_input_cli_errors(tmp_path, chain_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(cli("train", "classify", "--data", empty, "--model", "test-cnn", "--out", tmp_path / "r0"), str(empty))
    # a corrupt PNG inside a data set: the error names the file, and no run is left half-made
    data = tmp_path / "data"
    shutil.copytree(chain_data, data)
    victim = sorted((data / "BrEaST-Lesions_USG-images_and_masks").glob("case0*[0-9].png"))[3]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = cli("train", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--out", tmp_path / "r1", "--quiet")
    _one_line_error(r, victim.name)
    _one_line_error(cli("train", "classify", "--data", chain_data, "--model", "nope", "--out", tmp_path / "r2"), "nope")
    _one_line_error(cli("train", "classify", "--data", chain_data, "--model", "mobilenetv2", "--weights",
                        tmp_path / "missing.h5", "--out", tmp_path / "r3"), "missing.h5")
    _one_line_error(cli("bench", tmp_path / "nothing-here"), "nothing-here")


def test_training_logs_one_line_per_epoch_when_not_on_a_terminal(chain_data, tmp_path):
    """A CPU grid or CV runs for hours into a log file: each epoch says so there (a rich bar draws only at its end)."""
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 2,
            "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"] and all("val_loss=" in line for line in lines), r.output
