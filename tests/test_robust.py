"""The robust training recipe's parts: ultrasound augmentation in the input pipeline (deterministic
under the seed, masks moved with the image) and percentile intensity normalisation in the
preprocessing contract, which a gain change of the scanner cannot get past."""

import numpy as np
import pytest

from edgebus.data.preprocess import preprocess_contract, to_uint8_input
from tests.conftest import cli, manifest, one_line_error, square_lesion


def test_percentile_normalisation_cancels_a_gain_change():
    rng = np.random.default_rng(0)
    g = (30 + 120 * rng.random((96, 128))).astype(np.uint8)
    c = preprocess_contract(64, 3, normalize="percentile")
    assert c["version"] == 3 and c["normalize"]["kind"] == "percentile"
    a = to_uint8_input(g, c).astype(int)
    b = to_uint8_input(np.clip(g * 1.4, 0, 255).astype(np.uint8), c).astype(int)
    plain = preprocess_contract(64, 3)
    raw_a = to_uint8_input(g, plain).astype(int)
    raw_b = to_uint8_input(np.clip(g * 1.4, 0, 255).astype(np.uint8), plain).astype(int)
    assert np.abs(a - b).mean() < 2 < np.abs(raw_a - raw_b).mean()  # gain cancels (up to rounding)
    assert a.min() == 0 and a.max() == 255


def test_ultrasound_augmentation_is_deterministic_and_moves_masks():
    from edgebus.compat import set_seed, tf
    from edgebus.engine import augment

    img, mask = square_lesion()

    def draw(seed):
        set_seed(seed)
        out = []
        for _ in range(8):
            a, (m,) = augment.ultrasound(tf, tf.constant(img), [tf.constant(mask)])
            out.append((a.numpy(), m.numpy()))
        return out

    first, again = draw(3), draw(3)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(first, again))
    assert not all(np.array_equal(first[0][0], a) for a, _ in first[1:])  # the changes vary from sample to sample
    for a, m in first:
        assert a.shape == img.shape and m.shape == mask.shape and 0 <= a.min() and a.max() <= 1
        assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0
        assert a[..., 0][m[..., 0] == 1].mean() > a[..., 0][m[..., 0] == 0].mean() + 0.2  # the mask is on the lesion


def test_a_robust_run_trains_exports_and_the_cart_normalises(synthetic_breast_dir, tmp_path):
    from edgebus.runtime import LesionPipeline
    from edgebus.runtime.metadata import read_metadata

    run = tmp_path / "robust"
    r = cli("train", "segment", "--data", synthetic_breast_dir, "--model", "test-unet", "--size", 32, "--epochs", 3,
            "--augment", "ultrasound", "--normalize", "percentile", "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    m = manifest(run)
    assert m["preprocess"]["normalize"]["kind"] == "percentile"
    assert m["stages"]["train"]["epochs"] == 3 and m["stages"]["train"]["augment"] == "ultrasound"
    r = cli("export", run, "--int8", "--qat-epochs", 1)
    assert r.exit_code == 0, r.output
    assert manifest(run)["stages"]["export"]["qat"]["augment"] == "ultrasound"  # QAT sees what training saw
    assert read_metadata(run / "model_int8.tflite")["preprocess"]["version"] == 3
    frame = sorted((synthetic_breast_dir / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[0]
    res = LesionPipeline(segmenter=run / "model_int8.tflite").predict(frame)
    assert res["error"] is None and res["mask"] is not None
    one_line_error(cli("train", "segment", "--data", synthetic_breast_dir, "--model", "test-unet", "--augment", "mixup",
                       "--out", tmp_path / "x"), "--augment")
    one_line_error(cli("train", "segment", "--data", synthetic_breast_dir, "--model", "test-unet", "--normalize", "z",
                       "--out", tmp_path / "y"), "--normalize")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cosine_schedule_warms_up_then_decays_to_one_percent():
    from edgebus.engine.fit import lr_at

    lrs = [lr_at(e, 1e-3, 40, "cosine") for e in range(40)]
    warm = lrs[:4]  # 40 epochs: 4 of warm-up
    assert all(a < b for a, b in zip(warm, warm[1:])) and warm[-1] < 1e-3
    assert lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(1e-5)
    assert [lr_at(e, 1e-3, 40, "constant") for e in (0, 39)] == [1e-3, 1e-3]


def test_train_with_cosine_schedule_follows_it_and_records_it(synthetic_breast_dir, tmp_path):
    from edgebus.engine.fit import lr_at

    out = tmp_path / "run"
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 4,
            "--lr", 2e-3, "--schedule", "cosine", "--keep", "last", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    rows = (out / "history.csv").read_text().splitlines()
    col = next(c for c in ("learning_rate", "lr") if c in rows[0].split(","))
    used = [float(line.split(",")[rows[0].split(",").index(col)]) for line in rows[1:]]
    assert used == pytest.approx([lr_at(e, 2e-3, 4, "cosine") for e in range(4)], rel=1e-4)
    assert manifest(out)["stages"]["train"]["schedule"] == "cosine"

    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32,
            "--schedule", "step", "--out", tmp_path / "bad")
    one_line_error(r, "schedule 'step'", "cosine")
    assert not (tmp_path / "bad").exists()
