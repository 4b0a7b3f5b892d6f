"""Edge TPU readiness (issue 4, part 5): the offline op check flags what the Edge TPU cannot map and
passes a clean model; compilation is optional and explained when edgetpu_compiler is missing.

Tiny untrained models converted in-process (seconds); the CLI checks reuse the session's cls_run."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

from tests.conftest import cli, manifest

FAKE_COMPILER = """#!/bin/sh
# stand-in for Coral's edgetpu_compiler: -s -o OUTDIR MODEL
out=.
while [ $# -gt 1 ]; do
  case "$1" in -o) out="$2"; shift 2;; -s) shift;; *) shift;; esac
done
model="$1"; stem=$(basename "$model" .tflite)
cp "$model" "$out/${stem}_edgetpu.tflite"
echo "Edge TPU Compiler version 16.0.384591198" > "$out/${stem}_edgetpu.log"
echo "Edge TPU Compiler version 16.0.384591198"
echo "Number of operations that will run on Edge TPU: 7"
echo "Number of operations that will run on CPU: 1"
"""


def _calib(shape, n=8):
    return np.random.default_rng(0).random((n, *shape), dtype=np.float32)


def _se_unet(keras, size=16):
    """Conv + squeeze-and-excite Multiply + pool/upsample/concat: the op mix of test-unet."""
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = keras.layers.Conv2D(4, 1, activation="relu")(s)
    s = keras.layers.Conv2D(8, 1, activation="sigmoid")(s)
    x = keras.layers.Multiply()([x, s])
    y = keras.layers.MaxPooling2D()(x)
    y = keras.layers.UpSampling2D()(y)
    x = keras.layers.Concatenate()([x, y])
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """int8 files: a clean one, one with ABS (not on the Edge TPU list), a float32 one, a
    dynamic-batch one and a batch-2 one."""
    from edgebus.compat import keras, tf
    from edgebus.export.convert import convert

    d = tmp_path_factory.mktemp("etpu")
    clean = _se_unet(keras)
    paths = {"clean": d / "clean.tflite", "float": d / "float.tflite"}
    paths["clean"].write_bytes(convert(clean, "int8", _calib((16, 16, 3))))
    paths["float"].write_bytes(convert(clean, "float32"))

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.Lambda(tf.abs, name="abs")(x)  # TFLite ABS: int8 kernel, not an Edge TPU op
    x = keras.layers.GlobalAveragePooling2D()(x)
    with_abs = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
    paths["abs"] = d / "abs.tflite"
    paths["abs"].write_bytes(convert(with_abs, "int8", _calib((16, 16, 3))))

    def int8_converter(conv):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([c[None]] for c in _calib((16, 16, 3)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.uint8
        return conv.convert()

    small = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, padding="same", activation="relu")])
    paths["dynamic"] = d / "dynamic.tflite"  # batch dimension left dynamic (from_keras_model)
    paths["dynamic"].write_bytes(int8_converter(tf.lite.TFLiteConverter.from_keras_model(small)))
    fn = tf.function(lambda t: small(t)).get_concrete_function(tf.TensorSpec([2, 16, 16, 3], tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], small)
    conv.representative_dataset = lambda: ([np.stack([c, c])] for c in _calib((16, 16, 3)))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    paths["batch2"] = d / "batch2.tflite"
    paths["batch2"].write_bytes(conv.convert())
    return paths


def test_clean_int8_model_is_fully_mappable(models):
    from edgebus.export.edgetpu import check_model

    r = check_model(models["clean"])
    assert r["fully_mappable"], r["first_unmappable"]
    assert r["ops_on_edgetpu"] == r["n_ops"] > 5 and r["ops_on_cpu"] == 0
    assert r["split"] is None and r["unmappable_ops"] == []
    assert {"CONV_2D", "MUL", "MEAN", "MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "CONCATENATION"} <= set(r["op_counts"])
    assert r["io"]["inputs"][0]["dtype"] == "uint8"
    assert any("RESIZE_NEAREST_NEIGHBOR" in w for w in r["warnings"])  # the table's size caveat is passed on


def test_op_outside_the_list_is_flagged_with_the_split_point(models):
    from edgebus.export.edgetpu import check_model

    r = check_model(models["abs"])
    assert not r["fully_mappable"]
    first = r["first_unmappable"]
    assert first["op"] == "ABS" and "not in the Edge TPU's supported operations" in first["problems"][0]
    assert r["unmappable_ops"] == ["ABS"]
    assert r["ops_on_edgetpu"] == first["index"] >= 1  # QUANTIZE and CONV_2D before it stay on the TPU
    assert r["ops_on_cpu"] == r["n_ops"] - first["index"]
    assert f"op {first['index']} (ABS)" in r["split"]
    ops = [o["op"] for o in r["ops"]]
    assert all(o["mappable"] for o in r["ops"][: first["index"]]) and ops[first["index"]] == "ABS"


def test_requirements_float_dynamic_and_rank(models):
    from edgebus.export.edgetpu import check_model

    f = check_model(models["float"])
    assert not f["fully_mappable"] and "float32" in " ".join(f["first_unmappable"]["problems"])
    assert f["ops_on_edgetpu"] == 0
    d = check_model(models["dynamic"])
    assert not d["fully_mappable"] and "dynamic shape" in " ".join(d["first_unmappable"]["problems"])
    b = check_model(models["batch2"])
    assert not b["fully_mappable"] and "3 innermost" in " ".join(b["first_unmappable"]["problems"])


def test_report_files_and_markdown(models, tmp_path):
    from edgebus.export.edgetpu import DOC_URL, check_model, write_reports

    reports = {p.name: check_model(p) for p in (models["clean"], models["abs"])}
    js, md = write_reports(tmp_path, reports)
    data = json.loads(js.read_text())
    assert data["source"] == DOC_URL and set(data["files"]) == {"clean.tflite", "abs.tflite"}
    text = md.read_text()
    assert "| clean.tflite | fully mappable |" in text and "| abs.tflite | splits |" in text and "#" in text


def test_compile_without_compiler_says_how_to_install(models, monkeypatch, tmp_path):
    from edgebus.export.edgetpu import compile_model

    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler anywhere
    r = compile_model(models["clean"])
    assert r["compiled"] is False and "not on PATH" in r["reason"]
    for needle in ("coral-edgetpu-stable", "apt-get install edgetpu-compiler", "x86"):
        assert needle in r["install"]


def _fake_compiler(tmp_path):
    b = tmp_path / "bin"
    b.mkdir()
    exe = b / "edgetpu_compiler"
    exe.write_text(FAKE_COMPILER)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return b


def test_compile_with_a_compiler_keeps_model_and_log(models, monkeypatch, tmp_path):
    from edgebus.export.edgetpu import compile_model

    monkeypatch.setenv("PATH", f"{_fake_compiler(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    src = tmp_path / "m.tflite"
    shutil.copy(models["clean"], src)
    r = compile_model(src)
    assert r["compiled"] and r["file"] == "m_edgetpu.tflite" and (tmp_path / "m_edgetpu.tflite").is_file()
    assert r["log"] == "m_edgetpu.log" and (tmp_path / r["console"]).read_text().startswith("$ ")
    assert r["ops_on_edgetpu"] == 7 and r["ops_on_cpu"] == 1 and r["compiler_version"].startswith("16.")


def test_export_records_edgetpu_report_for_registry_models(cls_run, seg_run):
    for run in (cls_run, seg_run):
        m = manifest(run)
        assert {"edgetpu_report.json", "edgetpu_report.md"} <= set(m["artifacts"])
        for key in ("int8", "int8_ptq"):
            e = m["exports"][key]["edgetpu"]
            assert e["fully_mappable"] and e["ops_on_cpu"] == 0, (run, key, e)
        rep = json.loads((run / "edgetpu_report.json").read_text())
        assert set(rep["files"]) == {"model_int8.tflite", "model_int8_ptq.tflite"}


def test_export_edgetpu_flag_compiles_or_explains(cls_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler (the interpreter check runs sys.executable)
    r = cli("export", run, "--formats", "int8", "--ptq", "--edgetpu", "--overwrite")
    assert r.exit_code == 0, r.output  # no compiler: explained, export goes on
    assert "edgetpu_compiler is not on PATH" in r.output and "coral-edgetpu-stable" in r.output
    assert not (run / "model_int8_edgetpu.tflite").exists()
    monkeypatch.setenv("PATH", f"{_fake_compiler(tmp_path)}{os.pathsep}{path}")
    r = cli("export", run, "--formats", "int8", "--ptq", "--edgetpu", "--overwrite")
    assert r.exit_code == 0, r.output
    m = manifest(run)
    comp = m["exports"]["int8"]["edgetpu"]["compile"]
    assert comp["compiled"] and comp["file"] == "model_int8_edgetpu.tflite"
    assert {"model_int8_edgetpu.tflite", "model_int8_edgetpu.log"} <= set(m["artifacts"])
    assert "model_int8_edgetpu.tflite" in (run / "edgetpu_report.md").read_text()
