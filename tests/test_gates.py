"""Issue 30: int8 that decides what its float parent decides. QAT distilled from the parent, an
operating point per exported file, and clinical gates on by default that bundle and predict honour."""

import json
import shutil

import numpy as np
import pytest

from edgebus.runtime.metadata import read_metadata
from tests.conftest import cli, manifest, one_line_error


def _drift(monkeypatch, shift: float):
    """A planted fault: the QAT fine-tune ends with the malignancy logit moved down by `shift`, as a
    QAT that re-fits the labels can move the probability scale."""
    from edgebus.export import qat

    orig = qat.fine_tune

    def fine_tune(qmodel, *a, **k):
        info = orig(qmodel, *a, **k)
        for layer in qmodel.layers:
            inner = getattr(layer, "layer", layer)
            if inner.name == "malignant_prob":
                inner.bias.assign(inner.bias - shift)
        return info

    monkeypatch.setattr(qat, "fine_tune", fine_tune)


def test_distilled_qat_flips_fewer_labels_than_plain_qat(chain_data, tmp_path):
    """A barely trained test-cnn (scores near 0.5, where a moved scale flips labels): plain QAT re-fits
    the labels and flips many of 120 cases against its float parent; distilled QAT, same seed, lr and
    epochs, flips (almost) none."""
    from edgebus.core.manifest import Run
    from edgebus.core.metrics import label_flips
    from edgebus.data.arrays import load_run_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model
    from edgebus.export.int8 import calibration_set, int8_probs, qat_model

    run_dir = tmp_path / "run"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 3, "--lr", 3e-3,
            "--out", run_dir, "--quiet")
    assert r.exit_code == 0, r.output
    run = Run.load(run_dir)
    model, d = load_run_model(run), load_run_arrays(run, ("train", "val", "test"))
    x = np.concatenate([d[k][0] for k in ("train", "val", "test")])
    calib = calibration_set(d["train"][0], 100)
    parent = predict(model, x)
    flips = {}
    for w in (0.0, 1.0):
        q, info = qat_model(model, run.task, d["train"], calib, 3, 3e-4, 16, seed=0, distill=w)
        assert info["distill"] == w
        p = int8_probs({"qat": q}, run.task, calib, run.manifest.preprocess, 0.5, x)["qat"]
        flips[w] = label_flips(parent, p, 0.5)
    assert flips[0.0]["flips"] >= 10, flips  # the fault the distillation is for did happen
    assert flips[1.0]["flips"] <= 2 and flips[1.0]["flips"] < flips[0.0]["flips"], flips
    assert flips[1.0]["mean_abs_diff"] < flips[0.0]["mean_abs_diff"] / 3, flips


def test_planted_drift_fails_the_gates_and_bundle_and_predict_refuse_it(cls_run, chain_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    _drift(monkeypatch, 8.0)
    r = cli("export", run, "--formats", "int8", "--overwrite")
    one_line_error(r, "model_int8.tflite: failed its export gates", "--max-missed 0", "--accept-failed-gates")
    e = manifest(run)["exports"]["int8"]
    f = e["fidelity"]
    assert f["missed"] > f["missed_float"] and f["missed_new"] > 0 and f["malignant_to_benign"] > 0  # the fault happened
    assert e["status"] == "gate_failed" and (run / e["file"]).is_file()
    for meta in (read_metadata(run / e["file"]), json.loads((run / e["metadata"]).read_text())):
        assert meta["gates"]["status"] == "FAILED" and any("--max-missed" in x for x in meta["gates"]["failures"])
    assert "FAILED: " in (run / "export_report.md").read_text()
    assert "**FAILED**" in (run / "model_card.md").read_text()
    assert json.loads((run / "model_card.json").read_text())["gates"]["status"] == "FAILED"

    one_line_error(cli("bundle", "--classifier", run, "--out", tmp_path / "cart"), "failed its export gates",
                   "--accept-failed-gates")
    assert not (tmp_path / "cart" / "bundle.json").exists()
    r = cli("bundle", "--classifier", run, "--out", tmp_path / "cart", "--accept-failed-gates")
    assert r.exit_code == 0 and "warning: model_int8.tflite: FAILED" in r.output, r.output
    rec = json.loads((tmp_path / "cart" / "bundle.json").read_text())["classifier"]
    assert rec["gates"] == "FAILED" and "accepted with --accept-failed-gates" in rec["accepted_failed_gates"]
    assert "## Accepted with failed gates" in (tmp_path / "cart" / "classifier_model_card.md").read_text()
    assert json.loads((tmp_path / "cart" / "classifier_model_card.json").read_text())["accepted_failed_gates"]

    frame = sorted((chain_data / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[0]
    one_line_error(cli("predict", "--classifier", run / e["file"], frame, "--out", tmp_path / "p0"),
                   "failed its export gates")
    for args, out in ((["--bundle", tmp_path / "cart"], "p1"), (["--classifier", run / e["file"], "--accept-failed-gates"], "p2")):
        r = cli("predict", *args, frame, "--out", tmp_path / out)
        assert r.exit_code == 0, r.output
        rows = [json.loads(x) for x in (tmp_path / out / "predictions.jsonl").read_text().splitlines()]
        assert rows and all("FAILED its export gates" in row["gates"] and "accepted" in row["gates"] for row in rows)


def test_each_file_gets_its_own_threshold_by_the_runs_rule(chain_data, tmp_path, monkeypatch):
    """A run whose threshold was chosen on validation for sensitivity 0.9, and a QAT that moves the
    scale: the int8 file's threshold is chosen again on its own validation scores and restores the
    sensitivity there, where the parent's threshold would not."""
    from edgebus.core.manifest import Run
    from edgebus.core.metrics import classification_metrics
    from edgebus.data.arrays import load_run_arrays
    from edgebus.runtime.model import ExportedModel

    run = tmp_path / "run"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 8, "--lr", 3e-3,
            "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    assert cli("operating-point", run, "--target-sensitivity", 0.9).exit_code == 0
    parent_thr = manifest(run)["threshold"]
    _drift(monkeypatch, 2.0)
    r = cli("export", run, "--formats", "int8", "--max-flips", 1000, "--max-missed", 1000)
    assert r.exit_code == 0, r.output
    e = manifest(run)["exports"]["int8"]
    point = e["operating_point"]
    assert point["rule"] == "val" and e["threshold"] == point["threshold"] < parent_thr
    m = ExportedModel(run / e["file"], "classify")
    assert m.threshold == point["threshold"] and read_metadata(run / e["file"])["operating_point"]["rule"] == "val"
    yva = load_run_arrays(Run.load(run), ("val",))["val"]
    p = m.predict(yva[0])
    at_own = classification_metrics(yva[1], p, m.threshold)["malignant_recall"]
    at_parent = classification_metrics(yva[1], p, parent_thr)["malignant_recall"]
    assert at_own >= 0.9 and at_own == pytest.approx(point["sensitivity"]) and at_parent < 0.9  # the drift was real
    assert "differs from the float model's" in (run / "export_report.md").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--max-missed", -1], "--max-missed -1"), (["--max-flips", -2], "--max-flips -2"),
    (["--min-mask-iou", 1.5], "--min-mask-iou 1.5"), (["--qat-distill", 2], "--qat-distill 2"),
    (["--max-drop", -1], "--max-drop -1"),
])
def test_bad_gate_values_are_one_line_before_any_work(cls_run, args, needle):
    one_line_error(cli("export", cls_run, "--int8", "--overwrite", *args), needle)  # cls_run is read-only: nothing written


def test_segmenter_gate_is_the_mask_iou_against_the_float_model():
    from edgebus.core.metrics import mask_fidelity
    from edgebus.export.validate import gate_check

    a = np.zeros((2, 8, 8, 1))
    a[:, 2:6, 2:6] = 0.9
    b = a.copy()
    b[0, 2:6, 2:4] = 0.1  # image 1 loses half its mask: IoU 0.5; image 2 unchanged
    fid = mask_fidelity(a, b)
    assert fid["mask_iou_mean"] == pytest.approx(0.75) and fid["mask_iou_median"] == pytest.approx(0.75)
    g = gate_check("segment", {"iou": 1}, {"iou": 1}, {"min_mask_iou": 0.9}, fid)
    assert not g["passed"] and g["failures"] == ["mean mask IoU against the float model 0.750 over 2 test images "
                                                 "(< --min-mask-iou 0.9)"]
    assert gate_check("segment", {"iou": 1}, {"iou": 1}, {"min_mask_iou": 0.75}, fid)["passed"]
