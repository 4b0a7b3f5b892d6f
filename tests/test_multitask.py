"""One int8 network per frame (issue #31): a multi-task classifier keeps its lesion-mask output
through export (validated and gated like a segmenter's), the cart takes both answers from one
invoke, frames go in by table lookup (exactly the float path's quantization), an ensemble quantizes
once, and a student is distilled fold by fold from its fold's own teachers."""

import json
import tomllib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli, copy_run, manifest, one_line_error, read_only


@pytest.fixture(scope="module")
def mt_run(chain_data, tmp_path_factory):
    """test-segaux (malignancy + lesion mask) at 64 px on 120 cases, exported to int8 (QAT), read-only. (At
    32 px on 40 cases the mask is not learned yet: its map hovers at the threshold and the mask gate fails.)"""
    out = tmp_path_factory.mktemp("mt") / "run"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-segaux", "--size", 64, "--epochs", 3,
            "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--formats", "int8", "--calibration-images", 16)
    assert r.exit_code == 0, r.output
    return read_only(out)


def test_multitask_file_keeps_and_validates_its_mask(mt_run):
    from edgebus.runtime.model import ExportedModel

    e = manifest(mt_run)["exports"]["int8"]
    assert e["status"] == "ok"
    assert 0 <= e["mask"]["iou"] <= 1 and e["mask"]["fidelity"]["n"] == e["metrics"]["n"]
    gate = {c["metric"]: c for c in e["gate"]["checks"]}
    assert gate["mask_iou"]["option"] == "--min-mask-iou" and gate["mask_iou"]["value"] == round(
        e["mask"]["fidelity"]["mask_iou_mean"], 4)
    m = ExportedModel(mt_run / e["file"])
    assert m.has_mask and m.mask_threshold == 0.5
    assert tuple(m.model.outputs[m.mask_index]["shape"]) == (1, 64, 64, 1)
    assert "Lesion mask" in (mt_run / "export_report.md").read_text()


def test_mask_gate_fails_a_multitask_file(mt_run, tmp_path):
    run = copy_run(mt_run, tmp_path / "run")
    r = cli("export", run, "--formats", "int8", "--ptq", "--calibration-images", 16, "--overwrite", "--min-mask-iou", 0.9999)
    iou = manifest(run)["exports"]["int8"]["mask"]["fidelity"]["mask_iou_mean"]
    if iou >= 0.9999:  # pragma: no cover - the int8 mask equal to the float one on every image
        pytest.skip(f"int8 masks equal the float model's (IoU {iou}); nothing for the gate to catch")
    one_line_error(r, "mean mask IoU against the float model", "--min-mask-iou")
    e = manifest(run)["exports"]["int8"]
    assert e["status"] == "gate_failed" and any("mask IoU" in f for f in e["gate"]["failures"])


def test_cart_gets_mask_and_malignancy_from_one_invoke(mt_run, synthetic_breast_dir):
    from edgebus.data.preprocess import image_area, lesion_in_frame, load_gray, to_model_input
    from edgebus.runtime import LesionPipeline

    pipe = LesionPipeline(classifier=mt_run)
    calls = []
    real = pipe.classifier.model.invoke
    pipe.classifier.model.invoke = lambda: (calls.append(1), real())[1]
    frame = sorted(Path(synthetic_breast_dir).rglob("case0*.png"))[0]
    res = pipe.predict(frame, pixel_size_mm=0.1)
    assert len(calls) == 1 and res["error"] is None
    gray = load_gray(frame)
    x0, y0, x1, y1 = image_area(gray)
    ref = pipe.classifier.predict_all(to_model_input(gray[y0:y1, x0:x1], pipe.classifier.contract)[None])
    assert res["prob_raw"] == pytest.approx(float(ref["prob"].ravel()[0]), abs=1e-6)
    prob = np.asarray(Image.fromarray(ref["mask"][0, ..., 0]).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    # the lesion: the largest region of the map thresholded in the frame (edgebus.data.preprocess.lesion_in_frame)
    lesion = lesion_in_frame(ref["mask"][0, ..., 0], (y1 - y0, x1 - x0), 0.5, prob)
    lesion = np.zeros((y1 - y0, x1 - x0), np.uint8) if lesion is None else lesion
    assert res["mask"].shape == gray.shape and np.array_equal(res["mask"][y0:y1, x0:x1], lesion)
    assert not (res["mask"][y0:y1, x0:x1].astype(bool) & (prob < 0.5)).any()  # never beyond the thresholded map
    assert res["mask_threshold"] == 0.5 and res["mask_area_px"] == int(lesion.sum())


def test_pixel_table_is_the_float_quantization(cart_models):
    from edgebus.runtime.model import ExportedModel

    m = ExportedModel(cart_models["cls_file"])
    px = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    want = m.model.quantize_input(px[None].astype(np.float32) / 255.0)
    got = m.tensor_for(px)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert m.outputs_for(got)["prob"] == pytest.approx(float(m.predict(px[None].astype(np.float32) / 255.0).ravel()[0]))


def test_ensemble_quantizes_each_frame_once(tiny_cv):
    from edgebus.runtime.ensemble import EnsembleModel, cv_fold_files

    files, threshold, calibration, _ = cv_fold_files(tiny_cv)
    ens = EnsembleModel(files, threshold, calibration)
    px = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tensors = ens.tensor_for(px)
    assert len(tensors) == 1  # one recipe: one input quantization for all members
    x = px[None].astype(np.float32) / 255.0
    want = np.mean([m.predict(x).ravel()[0] for m in ens.members])
    assert ens.outputs_for(tensors)["prob"] == pytest.approx(float(want), abs=1e-6)


def test_soften_mixes_the_fold_teachers_answers(tiny_cv, synthetic_breast_dir):
    from edgebus.data.breast import read_breast
    from edgebus.data.preprocess import cut_area, load_gray, to_model_input
    from edgebus.runtime.ensemble import member_files
    from edgebus.runtime.model import ExportedModel
    from edgebus.training.teacher import load_teachers, soften

    fp = manifest(tiny_cv)["data"]["fingerprint"]
    folds = json.loads((tiny_cv / "folds.json").read_text())["folds"]
    teachers = load_teachers(tiny_cv, None, fp, folds)
    by_id = {c.case_id: c for c in read_breast(synthetic_breast_dir).lesions()}
    cases = [by_id[i] for i in folds[1]["train"][:6]]
    y = np.asarray([c.label for c in cases])
    part = (np.zeros((len(cases), 32, 32, 3), np.float32), y)
    assert np.array_equal(soften(part, cases, teachers, 1, 0.0)[1], y)
    rec = [json.loads(line) for line in (tiny_cv / "folds.jsonl").read_text().splitlines()]
    fold1 = ExportedModel(member_files(next(r for r in rec if r["fold"] == 1), tiny_cv)[0]["model_int8.tflite"])
    teacher = [float(fold1.predict(to_model_input(cut_area(load_gray(c.image))[0], fold1.contract)[None]).ravel()[0])
               for c in cases]
    np.testing.assert_allclose(soften(part, cases, teachers, 1, 1.0)[1], teacher, atol=1e-6)
    np.testing.assert_allclose(soften(part, cases, teachers, 1, 0.25)[1], 0.75 * y + 0.25 * np.asarray(teacher), atol=1e-6)


def test_teacher_on_other_folds_is_refused(tiny_cv, synthetic_breast_dir, tmp_path):
    out = tmp_path / "student"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-segaux", "--size", 32, "--folds", 2,
            "--epochs", 1, "--teacher", tiny_cv, "--out", out, "--quiet")
    one_line_error(r, "its folds differ", "--fold-seed")
    assert not out.exists()


def test_distilled_student_runs_the_cart_alone(tiny_cv, synthetic_breast_dir, tmp_path):
    """A student CV on the teachers' folds, scored out of fold with its own masks; its fusion is fitted on
    those masks, and a bundle of it alone (no segmenter) gives the lesion's shape and findings."""
    seg = tmp_path / "seg-cv"
    r = cli("cv", "segment", "--data", synthetic_breast_dir, "--model", "test-unet", "--size", 32, "--folds", 3,
            "--epochs", 1, "--int8", "--out", seg, "--quiet")
    assert r.exit_code == 0, r.output
    stu = tmp_path / "student"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-segaux", "--size", 32, "--folds", 3,
            "--epochs", 2, "--lr", 3e-3, "--int8", "--teacher", tiny_cv, "--teacher-masks", seg, "--out", stu, "--quiet")
    assert r.exit_code == 0, r.output
    ident = manifest(stu)["cv"]["identity"]
    assert ident["teacher"] == str(tiny_cv) and ident["teacher_masks"] == str(seg) and ident["teacher_weight"] == 0.5
    s = json.loads((stu / "summary.json").read_text())
    assert 0 <= s["mask"]["iou_int8"] <= 1 and s["mask"]["n"] == s["pooled"]["n"]
    r = cli("fuse", stu, stu)
    assert r.exit_code == 0, r.output
    r = cli("bundle", "--classifier", tiny_cv, "--fusion", stu / "fusion", "--out", tmp_path / "no-mask")
    assert r.exit_code == 2  # a classifier without a mask output cannot feed the shape
    r = cli("bundle", "--classifier", stu, "--fusion", stu / "fusion", "--out", tmp_path / "cart")
    assert r.exit_code == 0, r.output
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted(Path(synthetic_breast_dir).rglob("case00*.png"))[:3]:
        if "_tumor" not in p.name:
            shutil.copy(p, frames / p.name)
    r = cli("predict", "--bundle", tmp_path / "cart", frames, "--out", tmp_path / "pred", "--no-overlays")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["error"] is None and r["mask_threshold"] == 0.5 and r["prob_classifier"] is not None
                        for r in rows)
    assert any(r["shape"] is not None for r in rows) or all(r["mask_area_px"] == 0 for r in rows)


def test_multitask_file_with_descriptor_heads_gives_all_three_from_one_invoke(chain_data, tmp_path):
    """Malignancy, the BI-RADS descriptor heads and the lesion mask: three outputs of one int8 file."""
    from edgebus.runtime import LesionPipeline

    run = tmp_path / "run"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-segaux", "--size", 64, "--epochs", 2,
            "--descriptors", "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", run, "--formats", "int8", "--ptq", "--calibration-images", 16, "--min-mask-iou", 0)
    assert r.exit_code == 0, r.output
    pipe = LesionPipeline(classifier=run)
    c = pipe.classifier
    assert len({c.out_index, c.desc_index, c.mask_index}) == 3 and len(c.descriptors) > 0
    calls = []
    real = c.model.invoke
    c.model.invoke = lambda: (calls.append(1), real())[1]
    res = pipe.predict(sorted(Path(chain_data).rglob("case0*.png"))[0])
    assert len(calls) == 1 and res["error"] is None
    assert set(res["descriptors"]) == {d["name"] for d in c.descriptors} and res["findings"]
    assert res["mask"] is not None and res["mask_threshold"] == 0.5


def test_decoder_learns_at_its_own_rate():
    """decoder_lr_scale=10: the first Adam step moves each decoder weight 10x as far as the same model
    trained at one rate, and every other weight exactly as far (Adam's first step is lr x sign of the
    gradient, so a loss weight could not do this)."""
    from edgebus.compat import keras, set_seed
    from edgebus.engine.fit import compile_model
    from edgebus.engine.losses import decoder_weights
    from edgebus.models.registry import build_model

    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 3), dtype=np.float32) * 255
    y = (rng.random(8) > 0.5).astype("float32")
    m = (rng.random((8, 32, 32, 1)) > 0.7).astype("float32")
    steps = {}
    for scale in (1.0, 10.0):
        keras.backend.clear_session()
        set_seed(0)
        model = build_model("test-segaux", 32, None, decoder_lr_scale=scale)
        compile_model(model, "classify", 1e-3)
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.train_on_batch(x, (y, m))
        decoder = {id(w) for w in decoder_weights(model)}
        assert decoder and len(decoder) < len(model.trainable_weights)
        steps[scale] = [(id(w) in decoder, np.abs(w.numpy() - b)) for w, b in zip(model.trainable_weights, before)]
    ratios = {True: [], False: []}
    for (dec, one), (_, ten) in zip(steps[1.0], steps[10.0]):
        moved = one > 1e-5  # weights whose gradient was not ~0
        if moved.any():
            ratios[dec].append(np.median(ten[moved] / one[moved]))
    assert ratios[True] and ratios[False]
    np.testing.assert_allclose(ratios[True], 10.0, rtol=0.02)
    np.testing.assert_allclose(ratios[False], 1.0, rtol=0.02)


def test_decoder_options_are_checked():
    from edgebus.core.errors import EdgebusError
    from edgebus.models.registry import build_model

    with pytest.raises(EdgebusError, match="mask_stride 3"):
        build_model("efficientnet-lite0-segaux", 64, None, mask_stride=3)
    with pytest.raises(EdgebusError, match="decoder_lr_scale 0"):
        build_model("efficientnet-lite0-segaux", 64, None, decoder_lr_scale=0)
    with pytest.raises(EdgebusError, match="mask_loss_weight -1"):
        build_model("efficientnet-lite0-segaux", 64, None, mask_loss_weight=-1)
    model = build_model("efficientnet-lite0-segaux", 64, None, mask_stride=2)
    assert model.get_layer("aux_mask_stride2").output.shape[1:3] == (32, 32)
    assert tuple(model.get_layer("aux_mask").output.shape[1:3]) == (64, 64)


def test_training_accuracy_reads_soft_targets():
    """A distilled student's targets are soft: its logged accuracy reads them at 0.5 (Keras' own showed
    ~0.02 while the model learned); on hard labels it is the usual accuracy (sklearn as reference)."""
    from sklearn.metrics import accuracy_score

    from edgebus.compat import keras, tf
    from edgebus.engine.losses import accuracy

    rng = np.random.default_rng(1)
    y = (rng.random(64) > 0.5).astype("float32")
    p = rng.random((64, 1)).astype("float32")
    ref = accuracy_score(y, p[:, 0] > 0.5)
    for target in (y, 0.6 * y + 0.2 + 0.1 * (rng.random(64) - 0.5)):  # hard, then soft on the same side of 0.5
        m = accuracy(keras, tf)
        m.update_state(target.astype("float32"), p)
        assert float(m.result()) == pytest.approx(ref, abs=1e-6)
    plain = keras.metrics.BinaryAccuracy()
    plain.update_state(0.6 * y + 0.2, p)
    assert float(plain.result()) < ref  # the fault this mends: Keras' own accuracy on soft targets


def test_mask_loss_weight_weighs_the_mask_in_the_training_loss():
    from edgebus.compat import keras, set_seed
    from edgebus.engine.fit import compile_model
    from edgebus.models.registry import build_model

    rng = np.random.default_rng(2)
    x = rng.random((8, 32, 32, 3), dtype=np.float32) * 255
    y, m = (rng.random(8) > 0.5).astype("float32"), (rng.random((8, 32, 32, 1)) > 0.7).astype("float32")
    for w in (1.0, 3.0):
        keras.backend.clear_session()
        set_seed(0)
        model = compile_model(build_model("test-segaux", 32, None, mask_loss_weight=w), "classify", 1e-3)
        r = model.evaluate(x, (y, m), batch_size=8, verbose=0, return_dict=True)
        assert r["loss"] == pytest.approx(r["malignant_prob_loss"] + w * r["aux_mask_loss"], rel=1e-4)


def test_train_takes_a_recipes_model_settings_and_the_command_line_wins(synthetic_breast_dir, tmp_path):
    """The fast cart's final student is trained from its CV recipe: model kwargs (the decoder's rate, the
    mask loss weight) and the [cv] learning rate come from the file, what is typed wins."""
    recipe = tmp_path / "student.toml"
    recipe.write_text('name = "s"\ntask = "classify"\nmodel = "test-segaux"\nsize = 32\nbatch = 8\n'
                      'lrs = [0.003]\nepochs = [4]\n[model_kwargs]\ndecoder_lr_scale = 10.0\nmask_loss_weight = 5.0\n'
                      '[cv]\nfolds = 3\nlr = 0.002\nepochs = 3\n')
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--recipe", recipe, "--epochs", 1, "--out",
            tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    config = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert config["model"] == "test-segaux" and config["size"] == 32 and config["batch"] == 8
    assert config["model_kwargs"] == {"decoder_lr_scale": 10.0, "mask_loss_weight": 5.0}
    assert config["lr"] == 0.002 and config["epochs"] == 1  # the recipe's [cv] rate; the typed epochs win
    assert manifest(tmp_path / "run")["model"]["kwargs"]["mask_loss_weight"] == 5.0
    one_line_error(cli("train", "segment", "--data", synthetic_breast_dir, "--recipe", recipe, "--out", tmp_path / "x"),
                   "a classify recipe", "edgebus train classify")
