"""The BUSI reader on a synthetic folder in that layout, double masks included."""

import numpy as np
import pytest
from PIL import Image

from edgebus.data.breast import load_arrays
from edgebus.data.busi import read_busi, make_synthetic_busi
from edgebus.data.preprocess import load_mask, preprocess_contract
from edgebus.core.errors import EdgebusError
from tests.conftest import manifest


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    return make_synthetic_busi(tmp_path_factory.mktemp("busi"), per_class=4)


def test_reads_busi_layout_and_merges_double_masks(busi):
    ds = read_busi(busi)
    assert [c.classification for c in ds.cases].count("normal") == 4
    assert sorted({c.label for c in ds.lesions()}) == [0, 1] and len(ds.lesions()) == 8
    doubles = [c for c in ds.cases if c.extra_masks]
    assert len(doubles) == 2  # one benign, one malignant
    c = doubles[0]
    full = load_mask(c.mask) | load_mask(c.extra_masks[0])
    assert load_mask(c.mask).sum() < full.sum()
    contract = preprocess_contract(64)
    _, y, m = load_arrays([c], contract, with_masks=True)
    from edgebus.data.preprocess import cut_area, load_gray, resize_mask

    assert np.array_equal(m[0, ..., 0], resize_mask(cut_area(load_gray(c.image), full)[1], (64, 64)))  # cut as its frame
    assert y[0] == c.label


def test_missing_mask_is_one_line_error(busi, tmp_path):
    d = tmp_path / "Dataset_BUSI_with_GT" / "benign"
    d.mkdir(parents=True)
    Image.new("L", (8, 8)).save(d / "benign (1).png")
    with pytest.raises(EdgebusError) as e:
        read_busi(tmp_path)
    assert "benign (1).png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EdgebusError):
        read_busi(tmp_path / "nowhere")


def test_evaluate_a_run_on_busi(cls_run, busi, tmp_path):
    """External validation scores the Keras model and an exported int8 file alike, without TF for the latter."""
    import json
    import shutil

    from tests.conftest import cli

    cls_run = shutil.copytree(cls_run, tmp_path / "run")
    r = cli("evaluate", cls_run, "--data", busi, "--format", "busi")
    assert r.exit_code == 0, r.output
    r = cli("evaluate", cls_run, "--data", busi, "--format", "busi", "--model-file", "model_int8.tflite")
    assert r.exit_code == 0, r.output
    files = sorted(cls_run.glob("external-busi-*.json"))
    assert len(files) == 2
    res = [json.loads(f.read_text()) for f in files]
    assert all(x["metrics"]["n"] == 8 for x in res)
    m = manifest(cls_run)
    assert {f.name for f in files} <= set(m["artifacts"])
