"""Issue 33: the Python API (`edgebus.load`, `Prediction`), outputs that cannot mislead (a synthetic-data
model says so everywhere; the mask is the lesion, not every speck; a pixel size in the wrong unit is
refused), and `edgebus predict` on several paths and patterns."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgebus
from tests.conftest import cli, one_line_error
from edgebus.core.units import pixel_size_problem
from edgebus.data.preprocess import lesion_and_regions, region_areas
from edgebus.runtime.bundle import make_bundle
from edgebus.runtime.cautions import SYNTHETIC
from edgebus.runtime.overlay import caption
from edgebus.runtime.pipeline import _mask_fields


def _frames(src: Path, dst: Path, n: int = 3) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    got = [p for p in sorted(Path(src).rglob("case*.png")) if "_tumor" not in p.name and "_other" not in p.name][:n]
    return [Path(shutil.copy(p, dst / p.name)) for p in got]


def _round_trip(p) -> dict:
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-safe: no numpy, no NaN, no array
    assert "mask" not in d and d["file"] == p.file and d["label"] == p.label
    return d


@pytest.fixture(scope="module")
def cart(cart_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "cart"
    make_bundle(out, classifier=cart_models["cls"], segmenter=cart_models["seg"])
    return out


def test_load_a_bundle_and_predict_a_path_an_array_and_a_pil_image(cart, synthetic_breast_dir, tmp_path):
    c = edgebus.load(cart)
    assert set(c.describe()) == {"classifier", "segmenter"} and "Cart(" in repr(c)
    f = _frames(synthetic_breast_dir, tmp_path / "in", 1)[0]
    p = c(f, pixel_size_mm=0.078)
    gray = np.asarray(Image.open(f).convert("L"))
    for q in (c(gray, pixel_size_mm=0.078), c(Image.open(f), pixel_size_mm=0.078)):  # the same frame, in memory
        assert q.label == p.label and q.prob == pytest.approx(p.prob) and q.bbox == p.bbox and q.file is None
    assert p.label in ("benign", "malignant") and 0 <= p.prob <= 1 and p.threshold is not None
    assert p.mask.shape == gray.shape and p.area_px == int(p.mask.sum())
    assert p.area_mm2 == pytest.approx(p.area_px * 0.078 ** 2, rel=1e-3) if p.area_px else p.area_mm2 in (0, None)
    if p.area_px:  # the calipers' size: the box's extents in mm
        assert p.size_mm == (round((p.bbox[2] - p.bbox[0]) * 0.078, 2), round((p.bbox[3] - p.bbox[1]) * 0.078, 2))
    # a cart trained on the synthetic set says so: in the cart, in every prediction, on the overlay
    assert c.warnings == [SYNTHETIC] and SYNTHETIC in p.warnings
    assert "SYNTHETIC-DATA MODEL: NOT CLINICAL" in caption(p.result)
    img = p.plot()
    assert img.size == (gray.shape[1], gray.shape[0]) and img.mode == "RGB"
    d = _round_trip(p)
    saved = p.save(tmp_path / "out")
    assert set(saved) == {"overlay", "mask", "json"} and json.loads(Path(saved["json"]).read_text()) == d
    assert np.array_equal(np.asarray(Image.open(saved["mask"])) > 0, p.mask > 0)
    assert not list((tmp_path / "out").glob("*.tmp*"))  # each file written whole
    before = Path(saved["json"]).read_bytes()
    with pytest.raises(edgebus.EdgebusError, match="exists"):  # a second frame of that name keeps the first's files
        p.save(tmp_path / "out")
    assert Path(saved["json"]).read_bytes() == before
    assert p.save(tmp_path / "out", overwrite=True) == saved


def test_to_dict_round_trips_for_every_output_kind(cart_models, tiny_cv, synthetic_breast_dir, tmp_path):
    """Classifier alone (a .tflite), segmenter alone (a run folder), a fold ensemble, and a DICOM frame;
    both models: the test above; fused: tests/test_fusion.py."""
    f = _frames(synthetic_breast_dir, tmp_path / "in", 1)[0]
    cls = edgebus.load(cart_models["cls_file"])(f)
    assert cls.mask is None and cls.label in ("benign", "malignant") and _round_trip(cls)["mask_area_px"] is None
    seg = edgebus.load(cart_models["seg"])(f)
    assert seg.label is None and seg.prob is None and seg.mask is not None and _round_trip(seg)["regions"] is not None
    make_bundle(tmp_path / "ens", classifier=tiny_cv)
    ens = edgebus.load(tmp_path / "ens")(f)
    assert ens.label in ("benign", "malignant") and _round_trip(ens)["prob_raw"] is not None
    pytest.importorskip("pydicom", reason="the dicom extra is not installed: pip install 'edgebus[dicom]'")
    pytest.importorskip("data_store", reason="pydicom-data (the dev extra) is not installed")
    from pydicom.data import get_testdata_file

    make_bundle(tmp_path / "cart", classifier=cart_models["cls"], segmenter=cart_models["seg"])
    dcm = edgebus.load(tmp_path / "cart")(get_testdata_file("US1_UNCR.dcm"))  # a real ultrasound file
    d = _round_trip(dcm)
    assert d["sop_instance_uid"] and d["frame"] == 1 and d["source_file"].endswith("US1_UNCR.dcm")


def test_errors_are_edgebus_errors_with_one_line(cart, cart_models, synthetic_breast_dir, tmp_path):
    for bad, needle in ((tmp_path / "nope", "not found"), (tmp_path, "neither a cart bundle")):
        with pytest.raises(edgebus.EdgebusError, match=needle) as e:
            edgebus.load(bad)
        assert "\n" not in str(e.value)
    png = _frames(synthetic_breast_dir, tmp_path / "in", 1)[0]
    with pytest.raises(edgebus.EdgebusError, match="not a TFLite flatbuffer"):
        edgebus.load(png)  # a frame given as the model
    c = edgebus.load(cart)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(edgebus.EdgebusError, match="broken.png") as e:
        c(broken)
    assert "\n" not in str(e.value)
    with pytest.raises(edgebus.EdgebusError, match="cart.predict"):
        c(tmp_path / "in")  # a folder is many frames
    with pytest.raises(edgebus.EdgebusError, match="centimetres per pixel"):
        c(png, pixel_size_mm=0.0078)  # BrEaST's sheet value in cm, given as mm


def test_predict_streams_folders_patterns_and_lists(cart, synthetic_breast_dir, tmp_path):
    files = _frames(synthetic_breast_dir, tmp_path / "in", 3)
    c = edgebus.load(cart)
    stream = c.predict(tmp_path / "in")
    assert not isinstance(stream, list)  # a generator: one frame at a time
    by_folder = [p.file for p in stream]
    assert by_folder == [str(f) for f in files]
    assert [p.file for p in c.predict(str(tmp_path / "in" / "*.png"))] == by_folder
    assert len(list(c.predict([files[0], np.zeros((64, 64), np.uint8)]))) == 2
    (tmp_path / "in" / "zz_bad.png").write_bytes(b"not a png")
    with pytest.raises(edgebus.EdgebusError, match="zz_bad.png"):
        list(c.predict(tmp_path / "in"))
    kept = list(c.predict(tmp_path / "in", skip_errors=True))
    assert len(kept) == 4 and kept[-1].error and "zz_bad.png" in kept[-1].error and "error=" in repr(kept[-1])


def test_region_areas_match_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy comes with the train extra")
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = rng.random((rng.integers(5, 40), rng.integers(5, 40))) < rng.uniform(0.1, 0.6)
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))  # 8-connected
        want = np.sort(np.bincount(labels.ravel())[1:])[::-1]
        assert region_areas(m).tolist() == want.tolist()
    assert region_areas(np.zeros((4, 4))).size == 0


def test_the_mask_box_and_area_describe_the_largest_region_and_name_other_candidates():
    prob = np.zeros((32, 32), np.float32)
    prob[4:14, 4:14] = 0.9  # the lesion: 100 cells
    prob[20:26, 20:26] = 0.9  # a second candidate: 36 cells, 36% of it
    prob[30, 2] = 0.9  # a speck: dropped without a word
    res = {"warnings": []}
    found = lesion_and_regions(prob, (128, 128), 0.5, np.kron(prob, np.ones((4, 4), np.float32)))
    _mask_fields(res, found, 0.5, (128, 128), (0, 0, 128, 128), 0.1)
    assert res["regions"] == 2 and "2 candidate lesion regions" in res["warnings"][0]
    assert res["bbox"] == [16, 16, 56, 56] and res["mask_area_px"] == 1600  # the largest only: no speck, no 2nd box
    assert res["mask_area_mm2"] == pytest.approx(16.0)
    assert (res["lesion_width_mm"], res["lesion_height_mm"]) == (4.0, 4.0) and "lesion 16.0 mm2, 4.0 x 4.0 mm" in caption(res)
    assert "2 candidate regions: largest shown" in caption(res)
    prob[20:26, 20:26] = 0.0
    prob[20:23, 20:23] = 0.9  # 9 cells: under 20% of the lesion, a speck
    res = {"warnings": []}
    found = lesion_and_regions(prob, (128, 128), 0.5, np.kron(prob, np.ones((4, 4), np.float32)))
    _mask_fields(res, found, 0.5, (128, 128), (0, 0, 128, 128), None)
    assert res["regions"] == 1 and res["warnings"] == [] and res["mask_area_px"] == 1600


def test_a_pixel_size_in_the_wrong_unit_is_refused_with_the_likely_unit(cart, synthetic_breast_dir, tmp_path):
    assert pixel_size_problem(0.078) is None and pixel_size_problem(0.01) is None and pixel_size_problem(1.0) is None
    assert "give 0.1" in pixel_size_problem(10) and "pixels per mm" in pixel_size_problem(10)
    assert "give 0.078" in pixel_size_problem(0.0078) and "micrometres" in pixel_size_problem(78)
    assert "positive" in pixel_size_problem(0) and "positive" in pixel_size_problem(float("nan"))
    _frames(synthetic_breast_dir, tmp_path / "in", 1)
    one_line_error(cli("predict", "--bundle", cart, tmp_path / "in", "--pixel-size", 10, "--out", tmp_path / "p"),
                   "--pixel-size 10", "pixels per mm: give 0.1")
    assert not (tmp_path / "p").exists()  # refused before any folder is made


def test_predict_takes_several_paths_and_patterns(cart, synthetic_breast_dir, tmp_path):
    a = _frames(synthetic_breast_dir, tmp_path / "a", 2)
    b = _frames(synthetic_breast_dir, tmp_path / "b", 3)[2:]
    r = cli("predict", "--bundle", cart, *a, str(tmp_path / "b" / "*.png"), a[0], "--out", tmp_path / "p", "--no-overlays")
    assert r.exit_code == 0, r.output
    assert "WARNING: model trained on SYNTHETIC data" in r.output  # on the console too
    rows = [json.loads(x) for x in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    want = [str(p) for p in a] + sorted(str(p) for p in (tmp_path / "b").glob("*.png") if str(p) not in map(str, a))
    assert [x["file"] for x in rows] == want  # in the order given, each frame once
    assert all(SYNTHETIC in x["warnings"] for x in rows)
    one_line_error(cli("predict", "--bundle", cart, str(tmp_path / "none*.png"), "--out", tmp_path / "q"),
                   "no PNG/JPEG/DICOM frames match")
    assert b


def test_a_lone_model_given_a_frame_says_how_to_predict_one(cart_models):
    """Issue 33: ExportedModel(...).predict('x.png') was a numpy traceback."""
    from edgebus.runtime.model import ExportedModel

    m = ExportedModel(cart_models["cls_file"])
    for bad in ("x.png", np.zeros((300, 400), np.float32)):
        with pytest.raises(edgebus.EdgebusError, match=r"edgebus.load\(model\)\(frame\)") as e:
            m.predict(bad)
        assert "\n" not in str(e.value)
    h, w = m.size
    assert m.predict(np.zeros((2, h, w, m.contract["channels"]), np.float32)).shape[0] == 2
