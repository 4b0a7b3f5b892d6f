"""One tester for every model in the registry (as timm tests its registry): it builds, gives the
output its task promises, is one flat graph, takes quantization-aware annotation, converts to a
full-int8 TFLite file with no float tensor that the cart's loader accepts, and rebuilds from a run
manifest with the same outputs. A model added to the registry is tested here without a new test."""

import os

import numpy as np
import pytest

from edgebus.models.registry import MODELS

SIZE = 64  # every registry model builds at 64 px (the Lite encoders need a multiple of 32)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.random((4, SIZE, SIZE, 3), dtype=np.float32)


# the recommended cart's Lite0 models and the tiny test models run in every suite. The demo's MobileNetV2 and
# U-Net are built, QAT-annotated, exported full-int8 (a float tensor left fails the export), loaded by the cart
# and rebuilt from their manifest by tests/test_demo.py in every suite; here, like the real-size models beyond
# the shipped ones, with EDGEBUS_SLOW=1
SHIPPED = {"efficientnet-lite0-segaux", "unet-efficientnet-lite0", "test-cnn", "test-unet"}
SLOW = pytest.mark.skipif(os.environ.get("EDGEBUS_SLOW") != "1", reason="set EDGEBUS_SLOW=1 (a real-size model "
                          "the demo test covers, or beyond the shipped ones: minutes)")


@pytest.mark.parametrize("name", [n if n in SHIPPED else pytest.param(n, marks=[pytest.mark.slow, SLOW])
                                  for n in sorted(MODELS)])
def test_registry_model(name, images, tmp_path):
    from edgebus.compat import keras, set_seed
    from edgebus.core.manifest import ModelInfo
    from edgebus.core.tasks import get_task
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_model, save_model
    from edgebus.export import qat
    from edgebus.export.convert import convert, float_tensors, model_metadata, write_tflite
    from edgebus.models.registry import AUX_MASK, build_from_manifest, build_model, has_aux_mask, model_defaults
    from edgebus.runtime.model import ExportedModel

    task = get_task(MODELS[name]["task"])
    defaults = model_defaults(name)
    assert defaults["size"] >= 32 and defaults["batch"] >= 1
    keras.backend.clear_session()
    set_seed(0)
    model = build_model(name, SIZE)  # what is saved, exported and deployed (a multi-task model with its mask)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "nested model: QAT needs a flat graph"
    out = predict(model, images)
    assert task.check_output((1, *out.shape[1:]), (SIZE, SIZE)) is None, out.shape
    assert np.all((out >= 0) & (out <= 1)) and np.isfinite(out).all()

    qmodel = qat.quantize(model)
    assert any(type(layer).__name__.startswith("QuantizeWrapper") for layer in qmodel.layers)
    qat.calibrate_ranges(qmodel, images, 4)
    path = tmp_path / "model_int8.tflite"
    meta = model_metadata(task, "int8", "qat", _contract(), 0.5)
    if has_aux_mask(model):
        meta["mask"] = {"output": AUX_MASK, "threshold": 0.5}
    write_tflite(path, convert(qmodel, "int8", images), meta)
    em = ExportedModel(path, task)  # the cart's loader: metadata, contract, input and output shapes
    assert float_tensors(em.model) == [], f"{name}: int8 file keeps float tensors"
    assert em.predict(images).shape == out.shape
    if has_aux_mask(model):  # the mask output travels in the same int8 file
        assert em.has_mask and em.predict_all(images)["mask"].shape == (len(images), SIZE, SIZE, 1)

    save_model(model, tmp_path / "model.keras")
    info = ModelInfo(name=name, task=task.name, input_size=[SIZE, SIZE])
    assert len(build_from_manifest(info).layers) == len(model.layers)
    again = load_model(tmp_path / "model.keras", info)
    np.testing.assert_allclose(predict(again, images), out, atol=1e-6)


def _contract():
    from edgebus.data.preprocess import preprocess_contract

    return preprocess_contract(SIZE, 3)


def test_a_weights_file_that_does_not_fit_the_manifest_is_refused(tmp_path):
    from edgebus.core.errors import EdgebusError
    from edgebus.core.manifest import ModelInfo
    from edgebus.engine.models import load_model, save_model
    from edgebus.models.registry import build_model

    save_model(build_model("test-cnn", SIZE), tmp_path / "model.keras")
    with pytest.raises(EdgebusError, match="do not fit model 'test-unet'"):
        load_model(tmp_path / "model.keras", ModelInfo(name="test-unet", task="segment", input_size=[SIZE, SIZE]))
    (tmp_path / "fake.keras").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(EdgebusError, match="not a Keras zip archive"):
        load_model(tmp_path / "fake.keras", ModelInfo(name="test-cnn", task="classify", input_size=[SIZE, SIZE]))


def test_an_epoch_checkpoint_restores_weights_and_optimizer_exactly(tmp_path):
    """engine.resume: what a resumed run starts from is the killed run's model AND Adam state (a
    model-only restore would restart Adam's moments); a checkpoint of other settings, or a damaged
    one, is set aside and the run starts from epoch 0."""
    from edgebus.compat import keras
    from edgebus.engine import resume
    from edgebus.engine.fit import build_compiled

    rng = np.random.default_rng(0)
    x, y = rng.random((32, 32, 32, 3), dtype=np.float32), rng.integers(0, 2, 32).astype("float32")
    folder, meta = tmp_path / "checkpoints" / "lr=1e-3", {"lr": 1e-3, "split_fractions": (0.8, 0.1, 0.1)}

    def fresh():
        keras.utils.set_random_seed(1)
        return build_compiled("test-cnn", 32, "none", {}, "classify", lr=1e-3)

    a, history = fresh(), {}
    a.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[resume.checkpoint_callback(folder, meta, history)])
    b = fresh()
    start, hist = resume.restore(folder, b, meta, before=3, log=lambda m: None)
    assert start == 2 and hist == history and len(hist["loss"]) == 2
    assert int(b.optimizer.iterations.numpy()) == int(a.optimizer.iterations.numpy()) == 4
    for u, v in zip(a.get_weights() + [w.numpy() for w in a.optimizer.variables],
                    b.get_weights() + [w.numpy() for w in b.optimizer.variables]):
        np.testing.assert_array_equal(u, v)

    # with a KeepBest, the best epoch so far (score, epoch, weights) travels with the checkpoint
    from edgebus.engine.fit import KeepBest

    keep, c = KeepBest("classify"), fresh()
    c.fit(x, y, validation_data=(x, y), batch_size=16, epochs=2, verbose=0,
          callbacks=[keep, resume.checkpoint_callback(folder, meta, {}, keep)])
    back = KeepBest("classify")
    assert resume.restore(folder, fresh(), meta, before=3, log=lambda m: None, keep=back)[0] == 2
    assert (back.best, back.epoch) == (keep.best, keep.epoch) and keep.epoch in (1, 2)
    for u, v in zip(keep.weights, back.weights):
        np.testing.assert_array_equal(u, v)

    said = []
    assert resume.restore(folder, fresh(), meta, before=2, log=said.append) == (0, {})  # epoch 2 still to measure
    assert "not before epoch 2" in said[-1] and not folder.exists()
    a.fit(x, y, epochs=1, verbose=0, callbacks=[resume.checkpoint_callback(folder, meta, {})])
    assert resume.restore(folder, fresh(), {**meta, "lr": 1e-2}, before=3, log=said.append) == (0, {})
    assert "other settings" in said[-1]
    a.fit(x, y, epochs=1, verbose=0, callbacks=[resume.checkpoint_callback(folder, meta, {})])
    data = next(folder.glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[:-8] + b"\0" * 8)
    assert resume.restore(folder, fresh(), meta, before=3, log=said.append) == (0, {})
    assert "damaged" in said[-1] and not folder.exists()
