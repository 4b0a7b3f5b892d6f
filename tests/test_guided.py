"""Segmentation-guided (lesion-crop) classification: boxes, crops, the honest val/test protocol
(boxes from a segmenter that never saw those images), cross-validation and the cart pipeline."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import cli, manifest, one_line_error

from edgebus.data.preprocess import crop_square_px, crop_to_box, image_area, lesion_box, preprocess_contract, to_model_input


def test_lesion_box_is_the_largest_region_not_the_specks():
    m = np.zeros((300, 400), np.uint8)
    m[60:180, 100:160] = 1  # the lesion: x 100..160, y 60..180
    m[250:254, 10:14] = 1  # a speck far away
    m[5, 390] = 1
    assert lesion_box(m) == [100 / 400, 60 / 300, 160 / 400, 180 / 300]  # exact, though found on a reduced copy
    assert lesion_box(np.zeros((50, 50))) is None
    # diagonal neighbours belong to one region (8-connectivity)
    d = np.eye(20, dtype=bool)
    assert lesion_box(d) == [0.0, 0.0, 1.0, 1.0]


def test_crop_is_a_square_around_the_lesion_black_outside():
    gray = np.full((200, 300), 100, np.uint8)
    gray[80:120, 40:60] = 255  # lesion 20 wide, 40 tall
    box = lesion_box(gray == 255)
    x0, y0, x1, y1 = crop_square_px(gray.shape, box, 0.5)
    assert x1 - x0 == y1 - y0 == 80  # (1 + 2 * 0.5) * the longer side
    assert (x0 + x1) / 2 == pytest.approx(50, abs=2) and (y0 + y1) / 2 == pytest.approx(100, abs=2)
    c = crop_to_box(gray, box, 0.5)
    assert c.shape == (80, 80)
    assert (c == 255).sum() == 20 * 40  # the whole lesion is inside, unresized
    near = crop_to_box(gray, [0.0, 0.0, 0.1, 0.1], 0.5)  # a lesion in the corner: the square reaches outside
    assert (near == 0).any() and (near == 100).any()
    whole = crop_to_box(gray, None, 0.5)  # no lesion found: the whole frame, centred in a square
    assert whole.shape == (300, 300) and (whole == 255).sum() == 20 * 40

    contract = preprocess_contract(32, 3, crop_margin=0.5)
    assert contract["version"] == 2 and contract["crop"]["margin"] == 0.5
    x = to_model_input(gray, contract, box)
    assert x.shape == (32, 32, 3) and x.max() == 1.0
    assert preprocess_contract(32, 3)["version"] == 1 and "crop" not in preprocess_contract(32, 3)


@pytest.fixture(scope="module")
def crop_run(chain_data, seg_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("guided") / "crop"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 64, "--epochs", 25,
            "--lr", 3e-3, "--out", out, "--quiet", "--crop-margin", 0.5, "--segmenter", seg_run)
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--int8", "--ptq")
    assert r.exit_code == 0, r.output
    return out


def test_crop_classifier_learns_on_predicted_crops(crop_run, seg_run):
    m = manifest(crop_run)
    assert m["preprocess"]["crop"]["margin"] == 0.5
    boxes = json.loads((crop_run / "boxes.json").read_text())
    assert boxes["source"]["segmenter_run"] == str(Path(seg_run).resolve())
    split = json.loads((crop_run / "split.json").read_text())
    assert sorted(map(int, boxes["boxes"])) == sorted(split["val"] + split["test"])  # train crops use true masks
    test = m["metrics"]["keras"]["test"]
    # majority class is 60%; the test crops were cut around the segmenter's masks, not the truth
    assert test["accuracy"] >= 0.75 and test["auc"] >= 0.8, test


def test_cart_pipeline_cuts_the_crop_from_the_segmenters_mask(crop_run, seg_run, chain_data):
    from edgebus.core.errors import EdgebusError
    from edgebus.runtime import LesionPipeline, TFLiteModel
    from edgebus.runtime.frames import load_frame

    cart = LesionPipeline(classifier=crop_run, segmenter=seg_run)
    frame = sorted((chain_data / "BrEaST-Lesions_USG-images_and_masks").glob("case0*[0-9].png"))[3]
    res = cart.predict(frame)
    full = load_frame(frame)
    x0, y0, x1, y1 = res["image_area"]
    assert [x0, y0, x1, y1] == list(image_area(full))
    gray = full[y0:y1, x0:x1]  # the models see the image area (synthetic frames have black corners or strips)
    # the same numbers by hand: segmenter map -> largest region's box -> square crop -> classifier
    seg = TFLiteModel(Path(seg_run) / "model_int8.tflite")
    seg_contract = cart.segmenter.contract
    prob_map = seg.predict(to_model_input(gray, seg_contract)[None])[0, ..., 0]
    box = lesion_box(prob_map >= cart.segmenter.threshold)
    contract = cart.classifier.contract
    p = TFLiteModel(Path(crop_run) / "model_int8.tflite").predict(to_model_input(gray, contract, box)[None]).ravel()[0]
    assert res["prob_malignant"] == pytest.approx(float(p), abs=1e-6)
    cx0, cy0, cx1, cy1 = crop_square_px(gray.shape, box, 0.5)
    assert res["crop"] == [cx0 + x0, cy0 + y0, cx1 + x0, cy1 + y0]  # in the frame's pixels
    from edgebus.runtime.overlay import CROP_RGB, render_overlay

    img = np.asarray(render_overlay(full, res))
    assert (img == CROP_RGB).all(axis=-1).any()  # the classified square is drawn for the clinician
    with pytest.raises(EdgebusError, match="give a segmenter too"):
        LesionPipeline(classifier=crop_run)
    r = cli("predict", frame, "--classifier", crop_run, "--out", crop_run / "pred")
    one_line_error(r, "crop around the lesion", "--segmenter")


def test_crop_pipeline_runs_without_tensorflow(crop_run, seg_run, chain_data, without_tf):
    frame = sorted((chain_data / "BrEaST-Lesions_USG-images_and_masks").glob("case0*[0-9].png"))[0]
    without_tf(f"""
        from edgebus.runtime import LesionPipeline
        r = LesionPipeline(classifier={str(crop_run)!r}, segmenter={str(seg_run)!r}).predict({str(frame)!r})
        assert r['error'] is None and r['crop'] is not None, r
    """)


def test_segmenter_that_saw_the_test_images_is_refused(chain_data, seg_run, tmp_path):
    other = tmp_path / "seg-seed1"
    r = cli("train", "segment", "--data", chain_data, "--model", "test-unet", "--size", 32, "--epochs", 1,
            "--seed", 1, "--out", other, "--quiet")
    assert r.exit_code == 0, r.output
    out = tmp_path / "crop"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--crop-margin", 0.5, "--segmenter", other, "--out", out, "--quiet")
    one_line_error(r, str(other), "trained on", "same --seed")
    assert not out.exists()  # refused before the run was created
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--segmenter", seg_run, "--out", out, "--quiet")
    one_line_error(r, "--crop-margin")


def test_crop_cross_validation_uses_each_folds_own_segmenter(synthetic_breast_dir, tmp_path):
    seg = tmp_path / "cv-seg"
    r = cli("cv", "segment", "--data", synthetic_breast_dir, "--model", "test-unet", "--size", 32, "--epochs", 2,
            "--folds", 3, "--int8", "--out", seg, "--quiet")
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in (seg / "folds.jsonl").read_text().splitlines()]
    folds = json.loads((seg / "folds.json").read_text())["folds"]
    for rec, fold in zip(recs, folds):
        assert rec["val_ids"] == fold["val"]
        assert len(rec["boxes"]["val"]) == len(fold["val"]) and len(rec["boxes"]["test"]) == len(fold["test"])
        assert len(rec["boxes_int8"]["test"]) == len(fold["test"])
        assert len(rec["test_mask_iou_float_int8"]) == len(fold["test"])
    # float-vs-int8 mask IoU, image by image, pooled over every out-of-fold case (issue 14)
    fid = json.loads((seg / "summary.json").read_text())["int8_fidelity"]
    every = np.concatenate([r["test_mask_iou_float_int8"] for r in recs])
    assert fid["n"] == len(every) == sum(len(f["test"]) for f in folds)
    assert fid["mask_iou_mean"] == pytest.approx(every.mean()) and fid["mask_iou_min"] == pytest.approx(every.min())
    from edgebus.core.manifest import Run
    from edgebus.core.metrics import mask_agreement_iou
    from edgebus.data.breast import load_arrays, read_breast
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_model
    from edgebus.runtime.model import ExportedModel

    run = Run.load(seg)  # fold 1 again, from its kept files: the recorded IoUs are those two models' masks
    by_id = {c.case_id: c for c in read_breast(synthetic_breast_dir).lesions()}
    x = load_arrays([by_id[i] for i in folds[0]["test"]], run.manifest.preprocess)[0]
    p_float = predict(load_model(seg / "fold0" / "model.keras", run.manifest.model), x)
    p_int8 = ExportedModel(seg / "fold0" / "model_int8.tflite", "segment").predict(x)
    assert mask_agreement_iou(p_float, p_int8, run.manifest.threshold) == pytest.approx(
        recs[0]["test_mask_iou_float_int8"], abs=1e-4)

    out = tmp_path / "cv-crop"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 2,
            "--folds", 3, "--int8", "--crop-margin", 0.5, "--boxes-from", seg, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert {"bootstrap", "bootstrap_int8", "bootstrap_oracle", "crop_fallbacks"} <= set(s)
    assert s["pooled"]["n"] == sum(len(f["test"]) for f in folds)
    report = (out / "report.md").read_text()
    assert "lesion-crop classifier (margin 0.5)" in report and "TRUE masks" in report

    # other folds than the segmenter's: its boxes would come from a model that saw the test images
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--folds", 4, "--crop-margin", 0.5, "--boxes-from", seg, "--out", tmp_path / "x", "--quiet")
    one_line_error(r, str(seg), "folds differ")
    # a segment CV from before boxes were recorded
    old = tmp_path / "old-seg"
    shutil.copytree(seg, old)
    lines = [json.loads(line) for line in (old / "folds.jsonl").read_text().splitlines()]
    (old / "folds.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "boxes"}) + "\n" for x in lines))
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--folds", 3, "--crop-margin", 0.5, "--boxes-from", old, "--out", tmp_path / "y", "--quiet")
    one_line_error(r, "did not record lesion boxes")


def test_external_validation_of_a_crop_classifier_needs_a_segmenter(crop_run, seg_run, tmp_path):
    from edgebus.data.busi import make_synthetic_busi

    busi = make_synthetic_busi(tmp_path / "busi", per_class=4)
    r = cli("evaluate", crop_run, "--data", busi, "--format", "busi")
    one_line_error(r, "lesion-crop classifier", "--segmenter")
    r = cli("evaluate", crop_run, "--data", busi, "--format", "busi", "--model-file", "model_int8.tflite",
            "--segmenter", Path(seg_run) / "model_int8.tflite")
    assert r.exit_code == 0, r.output
    res = json.loads(next(Path(crop_run).glob("external-busi-*-model_int8.json")).read_text())
    assert res["boxes_from"].endswith("model_int8.tflite") and res["metrics"]["n"] == 8


def test_crop_run_benchmarks_on_its_predicted_crops(crop_run):
    from edgebus.benchmarks import bench_run

    m = manifest(crop_run)
    res = bench_run(crop_run, warmup=1, runs=2, keras=False, log=lambda *a: None)
    rows = {r["file"]: r for r in res["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    # the pack holds the same crops the export validated on: the same int8 accuracy
    assert rows["model_int8.tflite"]["metrics"]["accuracy"] == m["exports"]["int8"]["metrics"]["accuracy"]


def test_auxiliary_mask_classifier_trains_on_masks_and_exports_both_outputs(synthetic_breast_dir, tmp_path):
    from edgebus.export.convert import float_tensors
    from edgebus.models.registry import build_model, classifier_only
    from edgebus.runtime import TFLiteModel
    from edgebus.core.manifest import Run
    from edgebus.engine.models import load_run_model, save_model

    m = build_model("efficientnet-lite0-segaux", 64)
    assert [tuple(o.shape) for o in m.outputs] == [(None, 1), (None, 64, 64, 1)]
    out = tmp_path / "aux"
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "efficientnet-lite0-segaux", "--size", 64,
            "--epochs", 2, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    head = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"aux_mask_loss", "val_malignant_prob_accuracy"} <= set(head)  # both outputs were trained
    saved = load_run_model(Run.load(out))
    assert [tuple(o.shape) for o in saved.outputs] == [(None, 1), (None, 64, 64, 1)]  # the mask is kept: deployed too
    r = cli("export", out, "--int8", "--ptq")
    assert r.exit_code == 0, r.output
    t = TFLiteModel(out / "model_int8.tflite")
    assert float_tensors(t) == [] and sorted(int(np.prod(o["shape"])) for o in t.outputs) == [1, 64 * 64]
    # a run saved by an edgebus that dropped the decoder after training still loads, as a plain classifier
    run = Run.load(out)
    save_model(classifier_only(saved), out / "model.keras")
    run.add_artifact("model.keras", "keras-model")
    run.save()
    old = load_run_model(Run.load(out))
    assert len(old.outputs) == 1 and not any(layer.name.startswith("aux_") for layer in old.layers)
