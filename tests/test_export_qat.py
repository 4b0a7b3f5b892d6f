"""Quantization-aware export (issue 4): `edgebus export RUN --int8` fine-tunes with tfmot and writes
full-integer int8 files (QAT and, for comparison, PTQ), validated, gated, self-describing and
loaded in every installed interpreter.

The runs are the session's cls_run (test-cnn) and seg_run (test-unet, squeeze-and-excite Multiply
layers like EfficientNet's), exported by conftest with plain `--int8`: QAT for 3 epochs.

Stated tolerance of int8 against the float Keras model on the 12-image test split: classifier
label agreement >= 0.75 and accuracy within 17 points (2 images); segmenter pixel agreement
>= 0.97 and IoU within 0.05.
"""

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import TINY_RECIPE, cli, manifest


@pytest.mark.parametrize("run_name", ["cls_run", "seg_run"])
def test_qat_export_writes_full_integer_qat_and_ptq_files(run_name, request):
    from edgebus.export.convert import float_tensors
    from edgebus.runtime import TFLiteModel

    run = request.getfixturevalue(run_name)
    m = manifest(run)
    ex = m["exports"]
    assert list(ex) == ["float32", "int8_ptq", "int8"]
    assert (ex["int8"]["file"], ex["int8"]["source"], ex["int8"]["role"]) == ("model_int8.tflite", "qat", "deliverable")
    assert (ex["int8_ptq"]["file"], ex["int8_ptq"]["source"], ex["int8_ptq"]["role"]) == ("model_int8_ptq.tflite", "ptq", "comparison")
    legacy_keys = {"file", "metadata", "bytes", "io", "ops", "metrics", "agreement", "interpreter", "xnnpack",
                   "xnnpack_error", "status", "float_tensors"}
    for key in ("int8", "int8_ptq"):
        e = ex[key]
        assert legacy_keys <= set(e), legacy_keys - set(e)
        assert e["status"] == "ok" and e["float_tensors"] == []
        assert float_tensors(TFLiteModel(run / e["file"])) == []
        assert not {"DEQUANTIZE", "FAKE_QUANT"} & set(e["ops"]), e["ops"]
        assert e["io"]["input"]["dtype"] == e["io"]["output"]["dtype"] == "uint8"
        assert abs(e["io"]["input"]["scale"] - 1 / 255) < 1e-6 and e["io"]["input"]["zero_point"] == 0
    qat = m["stages"]["export"]["qat"]
    assert qat["epochs"] == 3 and qat["lr"] == pytest.approx(0.1 * m["stages"]["train"]["lr"])
    assert qat["reload_max_abs_diff"] < 1e-4
    assert m["artifacts"]["model_qat.weights.h5"]["kind"] == "keras-qat-weights"
    if m["task"] == "segment":  # every squeeze-and-excite gate got the output-only config
        assert qat["custom_configs"] == {f"enc{i}_se_excite": "OutputOnlyQuantizeConfig" for i in range(3)}


def test_int8_agrees_with_float_within_tolerance(cls_run, seg_run):
    for run, key, min_agree in ((cls_run, "label_agreement", 0.75), (seg_run, "pixel_agreement", 0.97)):
        m = manifest(run)
        ref = m["metrics"]["keras"]["test"]
        for name in ("int8", "int8_ptq"):
            e = m["exports"][name]
            assert e["agreement"][key] >= min_agree, (run, name, e["agreement"])
            if m["task"] == "classify":
                assert ref["accuracy"] - e["metrics"]["accuracy"] <= 2 / 12 + 1e-9, (name, e["metrics"])
            else:
                assert ref["iou"] - e["metrics"]["iou"] <= 0.05, (name, e["metrics"]["iou"], ref["iou"])
        # the QAT file follows its own Keras parent closely
        assert m["exports"]["int8"]["agreement_vs_qat_keras"][key] >= max(min_agree, 0.98)


def test_qat_weights_reload_onto_the_rebuilt_model(seg_run, tmp_path):
    """The QAT file holds weights only (no layer config that could carry code): reloaded onto the
    run's model rebuilt from its manifest it scores exactly as at export; a file that is not HDF5
    weights gets one line."""
    from edgebus.core.errors import EdgebusError
    from edgebus.export.qat import load_qat_model
    from edgebus.data.arrays import load_run_arrays
    from edgebus.core.tasks import get_task
    from edgebus.core.manifest import Run
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    run = Run.load(seg_run)
    path = run.verify_artifact("model_qat.weights.h5")
    qmodel = load_qat_model(path, load_run_model(run))
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in qmodel.layers)
    xte, yte = load_run_arrays(run)["test"]
    got = get_task("segment").metrics(yte, predict(qmodel, xte), run.manifest.threshold)
    assert got["iou"] == pytest.approx(run.manifest.metrics["keras_qat_test"]["iou"], abs=1e-9)
    bad = tmp_path / "x.weights.h5"
    bad.write_bytes(b"PK\x03\x04 not weights")
    with pytest.raises(EdgebusError, match="not an HDF5 weights file"):
        load_qat_model(bad, load_run_model(run))


def test_se_multiply_and_fixed_dropout_get_quantize_configs(tmp_path):
    """tfmot alone rejects the SE Multiply and FixedDropout; with edgebus's configs the whole model
    is quantization-aware, converts to full int8 and the saved QAT model reloads."""
    from edgebus.compat import keras, tfmot
    from edgebus.export import qat
    from edgebus.export.convert import convert, float_tensors
    from edgebus.runtime import TFLiteModel
    from edgebus.engine.models import keras_custom_objects

    FixedDropout = keras_custom_objects()["FixedDropout"]
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="swish", name="stem")(inp)
    x = FixedDropout(0.2, noise_shape=(None, 1, 1, 1), name="drop")(x)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    s = keras.layers.Conv2D(2, 1, activation="swish", name="se_reduce")(s)
    s = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = keras.layers.Multiply(name="se_excite")([x, s])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="prob")(x))

    with pytest.raises(RuntimeError, match="not supported"):
        with qat.qat_scope():
            tfmot().quantization.keras.quantize_model(model)
    assert qat.annotate_plan(model) == {"drop": "NoOpQuantizeConfig", "se_excite": "OutputOnlyQuantizeConfig"}
    qmodel = qat.quantize(model)
    wrapped = {layer.layer.name: type(layer.quantize_config).__name__ for layer in qmodel.layers if hasattr(layer, "quantize_config")}
    assert wrapped["se_excite"] == "OutputOnlyQuantizeConfig" and wrapped["drop"] == "NoOpQuantizeConfig"
    assert {"stem", "se_reduce", "se_expand", "pool", "prob"} <= set(wrapped)  # the rest is quantized by tfmot
    x = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    qat.calibrate_ranges(qmodel, x, batch=4)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(qmodel, "int8", x))
    m = TFLiteModel(path)
    assert float_tensors(m) == [] and "MUL" in m.op_names()
    qat.save_qat_model(qmodel, tmp_path / "q.weights.h5")
    again = qat.load_qat_model(tmp_path / "q.weights.h5", model)
    np.testing.assert_allclose(again.predict(x, verbose=0), qmodel.predict(x, verbose=0), atol=1e-6)


def test_metadata_round_trips_from_a_lone_tflite(cls_run, tmp_path):
    from edgebus.runtime.metadata import read_metadata

    for name, source in (("model_int8", "qat"), ("model_int8_ptq", "ptq"), ("model_float32", "float")):
        lone = tmp_path / f"{name}-cart.tflite"
        shutil.copy(cls_run / f"{name}.tflite", lone)
        meta = read_metadata(lone)
        assert meta == json.loads((cls_run / f"{name}.json").read_text())
        assert meta["source"] == source and meta["labels"] == ["benign", "malignant"]
        assert meta["io"]["input"]["dtype"] == ("float32" if source == "float" else "uint8")
    qat_meta = read_metadata(cls_run / "model_int8.tflite")
    assert qat_meta["qat"]["epochs"] == 3 and qat_meta["qat"]["keras_weights"] == "model_qat.weights.h5"


def test_every_file_is_loaded_in_each_installed_interpreter(cls_run):
    from importlib.metadata import version

    import importlib.util
    import subprocess
    import sys

    # what tflite_runtime does here, found independently of the export's probe
    if importlib.util.find_spec("tflite_runtime") is None:
        expect = {"status": "not installed"}
    else:
        p = subprocess.run([sys.executable, "-c", "import tflite_runtime.interpreter"], capture_output=True, text=True)
        expect = None if p.returncode == 0 else {"status": "import_failed"}
    m = manifest(cls_run)
    for key, e in m["exports"].items():
        rt = e["runtimes"]
        assert rt[f"ai-edge-litert {version('ai-edge-litert')}"] == {"status": "ok"}, (key, rt)
        tfl = [v for k, v in rt.items() if k.startswith("tflite-runtime")]
        assert len(tfl) == 1, rt
        if expect == {"status": "not installed"}:
            assert tfl[0] == expect, (key, tfl)
        elif expect is not None:  # installed but not importable (numpy 2): the import's own error is kept
            assert tfl[0]["status"] == "import_failed" and tfl[0]["error"], (key, tfl)
        else:  # importable: each file loads, or its exact load error is kept
            assert tfl[0]["status"] == "ok" or (tfl[0]["status"] == "error" and tfl[0]["error"]), (key, tfl)


def test_interpreter_errors_are_recorded_exactly(cls_run, tmp_path, monkeypatch):
    """An interpreter that refuses a file, and one that cannot even be imported (tflite_runtime 2.14
    next to numpy 2), are recorded with their own error text; the export's own interpreter loads."""
    from edgebus.export import runtimes

    for pkg, body in (("refuser", "class Interpreter:\n    def __init__(self, model_path, **kw):\n"
                                  "        raise ValueError(\"Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'\")\n"),
                      ("broken", "raise AttributeError('_ARRAY_API not found')\n")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / "interpreter.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(runtimes, "INTERPRETERS", {"ai-edge-litert": "ai_edge_litert.interpreter",
                                                   "refuser": "refuser.interpreter", "broken": "broken.interpreter",
                                                   "absent-pkg": "absent_pkg_xyz.interpreter"})
    res = runtimes.check_files([cls_run / "model_int8.tflite"])["model_int8.tflite"]
    assert [v["status"] for k, v in res.items() if k.startswith("ai-edge-litert")] == ["ok"]
    assert res["refuser"] == {"status": "error", "error": "ValueError: Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"}
    assert res["broken"] == {"status": "import_failed", "error": "AttributeError: _ARRAY_API not found"}
    assert res["absent-pkg"] == {"status": "not installed"}


def test_validation_table_compares_ptq_and_qat(cls_run, seg_run):
    for run in (cls_run, seg_run):
        text = (run / "export_report.md").read_text()
        rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| model")}
        assert {"model.keras (float)", "model_qat.weights.h5 (QAT Keras)", "model_float32.tflite", "model_int8_ptq.tflite",
                "model_int8.tflite"} <= set(rows)
        assert "| ptq |" in rows["model_int8_ptq.tflite"] and "| qat |" in rows["model_int8.tflite"]
        assert manifest(run)["artifacts"]["export_report.md"]["kind"] == "export-report"
    assert "malignant recall" in (cls_run / "export_report.md").read_text()
    assert "IoU" in (seg_run / "export_report.md").read_text()


def test_int8_io_and_qat_options(cls_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    r = cli("export", run, "--formats", "int8", "--io-type", "int8", "--qat-epochs", 1, "--qat-lr", 1e-4,
            "--qat-batch", 32, "--overwrite")
    assert r.exit_code == 0, r.output
    m = manifest(run)
    qat = m["stages"]["export"]["qat"]
    assert (qat["epochs"], qat["lr"], qat["batch"]) == (1, 1e-4, 32) and len(qat["history"]["loss"]) == 1
    for key in ("int8", "int8_ptq"):
        e = m["exports"][key]
        assert e["status"] == "ok" and e["float_tensors"] == []
        assert e["io"]["input"]["dtype"] == e["io"]["output"]["dtype"] == "int8"
        assert abs(e["io"]["input"]["scale"] - 1 / 255) < 1e-6 and e["io"]["input"]["zero_point"] == -128
        assert e["edgetpu"]["fully_mappable"]
    assert m["exports"]["float32"] == manifest(cls_run)["exports"]["float32"]  # untouched by an int8-only export


def test_export_option_errors_are_one_line(cls_run):
    for args, needle in ((["--ptq"], "--ptq"), (["--edgetpu"], "--edgetpu"), (["--int8", "--qat-epochs", -1], "--qat-epochs"),
                         (["--int8", "--io-type", "float"], "--io-type")):
        r = cli("export", cls_run, *args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        lines = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], r.output


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGEBUS_SLOW") != "1", reason="set EDGEBUS_SLOW=1 (minutes: real-size models)")
@pytest.mark.parametrize("model,configs", [
    ("mobilenetv2", {"not annotated": 1}),  # the Rescaling input layer
    ("unet-efficientnetb2", {"OutputOnlyQuantizeConfig": 23, "NoOpQuantizeConfig": 16}),  # SE gates, FixedDropout
])
def test_real_models_qat_export_is_full_integer(model, configs, tmp_path):
    """MobileNetV2 and the EfficientNetB2 U-Net at 64x64, 1 epoch + 1 QAT epoch (measured here:
    about 3 and 7 minutes): the QAT int8 file has no float tensor and maps fully onto the Edge TPU."""
    from collections import Counter

    from edgebus.data.synthetic import make_synthetic
    from edgebus.config.stages import ExportConfig
    from edgebus.export.exporter import export_run
    from edgebus.training import TrainConfig, train

    data = make_synthetic(tmp_path / "data", n_cases=40, seed=0)
    run = tmp_path / model
    train(TrainConfig(data=str(data), model=model, out=str(run), size=64, epochs=1, batch=8), progress=False)
    res = export_run(run, ExportConfig(formats=["float32", "int8"], qat_epochs=1), log=lambda *a: None)
    assert res["int8"]["status"] == "ok" and res["int8"]["float_tensors"] == []
    assert dict(Counter(manifest(run)["stages"]["export"]["qat"]["custom_configs"].values())) == configs
    assert res["int8"]["edgetpu"]["fully_mappable"], res["int8"]["edgetpu"]


def test_export_profile_fills_options_and_command_line_wins(cls_run, tmp_path):
    """export/coral.toml: int8 only, Edge TPU report; --qat-epochs on the command line beats the profile's 3."""
    import shutil
    from pathlib import Path

    from tests.conftest import cli

    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    profile = Path(__file__).resolve().parents[1] / "export" / "coral.toml"
    r = cli("export", run, "--profile", profile, "--qat-epochs", 1, "--overwrite")
    assert r.exit_code == 0, r.output
    m = manifest(run)
    assert m["stages"]["export"]["qat"]["epochs"] == 1
    assert "float16" not in m["exports"] and m["exports"]["int8"]["source"] == "qat"
    assert (run / "edgetpu_report.md").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('formats = ["int4"]\n')
    r = cli("export", run, "--profile", bad, "--overwrite")
    assert r.exit_code == 2 and "bad.toml" in r.output and "int4" in r.output


def test_cv_int8_source_qat_records_and_keeps_each_folds_qat_file(synthetic_breast_dir, tmp_path):
    """Issue 32: the README's recipe, `edgebus cv --int8 --int8-source qat`, on a tiny 3-fold CV (1
    epoch; QAT its default 3 epochs, which neither the CLI nor a recipe sets for a CV): each fold records int8 source "qat", its int8 test probabilities beside the
    float ones (and PTQ's, the comparison), and keeps model_int8.tflite with the sha256 it records; the
    QAT file decides most test frames as its float parent does."""
    from edgebus.core.io import read_jsonl, sha256_file
    from edgebus.data.breast import load_arrays, read_breast
    from edgebus.runtime.metadata import read_metadata
    from edgebus.runtime.model import ExportedModel

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)  # its [cv]: 3 folds, lr 3e-3, 1 epoch
    out = tmp_path / "cv"
    r = cli("cv", "classify", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--int8",
            "--int8-source", "qat", "--quiet")
    assert r.exit_code == 0, r.output
    folds = sorted(read_jsonl(out / "folds.jsonl"), key=lambda f: f["fold"])
    assert [f["fold"] for f in folds] == [0, 1, 2]
    by_id = {c.case_id: c for c in read_breast(synthetic_breast_dir).lesions()}
    contract = manifest(out)["preprocess"]
    float_p, int8_p = [], []
    for f in folds:
        assert f["int8_source"] == "qat", f.get("int8_source")
        n = len(f["test_ids"])
        assert len(f["test_prob"]) == len(f["test_prob_int8"]) == len(f["test_prob_int8_ptq"]) == n > 0
        assert all(0 <= p <= 1 for p in f["test_prob_int8"])
        assert f["test_prob_int8"] != f["test_prob_int8_ptq"]  # the QAT file's scores, not PTQ's under its name
        rec = f["models"]["model_int8.tflite"]
        path = out / rec["file"]
        assert rec["file"] == f"fold{f['fold']}/model_int8.tflite" and path.is_file()
        assert sha256_file(path) == rec["sha256"]
        meta = read_metadata(path)
        assert meta["source"] == "qat" and meta["format"] == "int8" and meta["io"]["input"]["dtype"] == "uint8"
        # the kept file is the one that was scored: run again on the fold's test frames it gives the recorded scores
        x = load_arrays([by_id[i] for i in f["test_ids"]], contract)[0]
        np.testing.assert_allclose(ExportedModel(path, "classify").predict(x).ravel(), f["test_prob_int8"], atol=1e-5)
        float_p += f["test_prob"]
        int8_p += f["test_prob_int8"]
    float_p, int8_p = np.array(float_p), np.array(int8_p)
    agree = ((float_p >= 0.5) == (int8_p >= 0.5)).mean()
    assert agree >= 0.8, (agree, float_p.round(3), int8_p.round(3))
    close = (np.abs(float_p - int8_p) <= 0.02).mean()  # measured here: every frame within 0.003
    assert close >= 0.9, (close, float_p.round(3), int8_p.round(3))
    s = json.loads((out / "summary.json").read_text())
    assert s["int8_source"] == "qat" and s["int8_label_agreement"] == pytest.approx(agree)
    assert manifest(out)["cv"]["identity"]["int8_source"] == "qat"
