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
    """The file at its own threshold against the float model at its own: a cancer the float model
    caught and the file calls benign fails --max-missed 0; a shifted scale with a matching threshold
    does not."""
    y = [1, 1, 1, 0, 0]
    ref = [0.9, 0.6, 0.3, 0.2, 0.1]  # the float model at 0.5 misses one cancer (0.3)
    f = label_flips(ref, [0.9, 0.4, 0.3, 0.2, 0.1], 0.5, 0.5, truth=y)
    assert (f["malignant"], f["missed_float"], f["missed"]) == (3, 1, 2)
    g = gate_check("classify", {}, {}, {"max_missed": 0, "max_flips": 5}, f)
    assert g["failures"] == ["calls 2 of 3 test cancers benign where the float model called 1 benign (> --max-missed 0)"]
    assert gate_check("classify", {}, {}, {"max_missed": 1, "max_flips": 5}, f)["passed"]
    shifted = label_flips(ref, [0.45, 0.2, 0.05, 0.04, 0.02], 0.5, 0.1, truth=y)  # the same ranking at a lower threshold
    assert shifted["flips"] == 0 and shifted["missed"] == 1


def test_export_records_flips_and_gates_on_them(cls_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    r = cli("export", run, "--formats", "int8", "--ptq", "--overwrite", "--max-flips", 0)
    f = manifest(run)["exports"]["int8"]["fidelity"]
    assert f["n"] == 12 and f["flips"] == f["benign_to_malignant"] + f["malignant_to_benign"]
    assert f["flips"] == round((1 - manifest(run)["exports"]["int8"]["agreement"]["label_agreement"]) * 12)
    if f["flips"]:
        one_line_error(r, "--max-flips 0")
    else:
        assert r.exit_code == 0, r.output
    assert "flips b→m / m→b" in (run / "export_report.md").read_text()
    r = cli("export", run, "--formats", "int8", "--ptq", "--overwrite", "--max-flips", f["flips"])
    assert r.exit_code == 0, r.output
    one_line_error(cli("export", run, "--int8", "--overwrite", "--max-flips", -1), "--max-flips -1")


def test_litert_quantizer_makes_a_full_integer_file_that_follows_its_parent(cls_run, tmp_path):
    """Issue 14: --quantizer litert writes model_int8_litert.tflite beside QAT / PTQ: full integer,
    loaded by the cart's loader, agreeing with the float model on most test images, with the
    per-layer errors that show where int8 loses; --sensitive-int16 keeps the worst at 16 bits."""
    pytest.importorskip("ai_edge_quantizer", reason="the quantizer extra is not installed: pip install 'edgebus[quantizer]'")
    from edgebus.export.convert import float_tensors
    from edgebus.runtime.model import ExportedModel

    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    r = cli("export", run, "--formats", "int8", "--ptq", "--overwrite", "--quantizer", "litert", "--sensitive-int16", 2)
    assert r.exit_code == 0, r.output
    e = manifest(run)["exports"]["int8_litert"]
    assert e["source"] == "litert" and e["role"] == "comparison" and e["status"] == "ok"
    em = ExportedModel(run / "model_int8_litert.tflite", "classify")
    assert float_tensors(em.model) == [] and e["io"]["input"]["dtype"] == "int8"
    assert e["agreement"]["label_agreement"] >= 0.75, e["agreement"]
    lit = e["litert"]
    assert len(lit["int16_tensors"]) == 2 and lit["int16_tensors"] == [t["tensor"] for t in lit["layer_errors_int8"][:2]]
    assert lit["layer_errors_int8"][0]["mse"] >= lit["layer_errors_int8"][-1]["mse"]
    assert "Where int8 loses" in (run / "export_report.md").read_text()
    r = cli("bench", run, "--runs", 3, "--warmup", 0, "--no-keras")
    assert r.exit_code == 0 and "model_int8_litert.tflite" in r.output, r.output
    one_line_error(cli("export", run, "--formats", "float32", "--quantizer", "litert", "--overwrite"), "--int8")
    one_line_error(cli("export", run, "--int8", "--sensitive-int16", 2, "--overwrite"), "--quantizer litert")


def test_litert_file_over_256_kb_of_weights_keeps_its_external_buffers(tmp_path):
    """The AI Edge quantizer writes the weights of a model with over 256 KB of them after the
    flatbuffer (external buffers); embedding edgebus metadata must keep them (it once cut a real
    3.8 MB Lite0 file to 0.56 MB that no interpreter could load)."""
    pytest.importorskip("ai_edge_quantizer", reason="the quantizer extra is not installed: pip install 'edgebus[quantizer]'")
    from ai_edge_litert.interpreter import Interpreter

    from edgebus.compat import keras
    from edgebus.export.convert import convert, embed_metadata
    from edgebus.export.litert_quant import litert_int8
    from edgebus.runtime.metadata import read_metadata

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(512, activation="relu")(keras.layers.Flatten()(inp)))
    model = keras.Model(inp, x)  # 768 x 512 int8 weights: 384 KB
    calib = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    raw, _ = litert_int8(convert(model, "float32"), calib)

    def run(buf):
        it = Interpreter(model_content=bytes(buf))
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.full(d["shape"], 7, d["dtype"]))
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    out = embed_metadata(raw, {"task": "classify"})
    assert len(out) > 384 * 1024  # the weights are still there
    assert np.array_equal(run(out), run(raw))
    (tmp_path / "m.tflite").write_bytes(out)
    assert read_metadata(tmp_path / "m.tflite") == {"task": "classify"}


def test_litert_int8_keeps_the_whole_range_of_a_one_value_output():
    """A classifier's logit is one value per image: the quantizer's moving-average calibration once
    shrank its range to the last images' (the real Lite0 file then put every case between 0.33 and
    0.5). Calibrated on min / max over all images, the int8 file follows its float parent on each."""
    pytest.importorskip("ai_edge_quantizer", reason="the quantizer extra is not installed: pip install 'edgebus[quantizer]'")
    from ai_edge_litert.interpreter import Interpreter

    from edgebus.compat import keras
    from edgebus.export.convert import convert
    from edgebus.export.litert_quant import litert_int8

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    logit = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(10 / 3),  # 10 x mean brightness - 5
                               bias_initializer=keras.initializers.Constant(-5.0))(keras.layers.GlobalAveragePooling2D()(inp))
    model = keras.Model(inp, keras.layers.Activation("sigmoid")(logit))
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 3), dtype=np.float32) ** rng.uniform(0.2, 5, (40, 1, 1, 1)).astype(np.float32)
    want = model.predict(x, verbose=0).ravel()
    assert want.min() < 0.3 and want.max() > 0.7  # the logit spans both signs
    raw, _ = litert_int8(convert(model, "float32"), x)
    it = Interpreter(model_content=raw)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = d["quantization"], o["quantization"]
    got = []
    for img in x:
        it.set_tensor(d["index"], np.clip(np.round(img[None] / si + zi), -128, 127).astype(d["dtype"]))
        it.invoke()
        got.append((it.get_tensor(o["index"]).astype(np.float32).ravel()[0] - zo) * so)
    assert np.abs(np.array(got) - want).max() < 0.05, np.abs(np.array(got) - want).max()
