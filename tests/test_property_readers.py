"""Property tests over every reader of untrusted bytes (issue 32): results files, manifest.json,
bundle.json, site.json, fusion.json, operating_point.json, the .tflite metadata, the clinical sheet
and PNG/JPEG frames. Each example is a real file with random damage (a key dropped, a value of
another type, bytes flipped or cut); the property: the reader returns something valid or raises
EdgebusError (one line at the CLI), never another exception; a cart run writes an error row and
goes on; nothing is written outside --out. Seeded (derandomize) and bounded, so CI stays in budget."""

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebus.core.errors import EdgebusError
from edgebus.core.io import read_jsonl, sha256_file
from tests.conftest import cli, copy_run

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                    | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def damaged(draw, doc):
    """`doc` with one to three random changes: a key or item dropped, a value replaced by any JSON."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return draw(JSON)
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return doc


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, allow_nan=True))


def _ok_or_edgebus_error(fn):
    try:
        return fn()
    except EdgebusError as e:
        assert "\n" not in str(e), str(e)
        return None


# ---- results files ---------------------------------------------------------------------------------

@SETTINGS
@given(lines=st.lists(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=20)), max_size=6),
       torn=st.booleans())
def test_results_files(tmp_path_factory, lines, torn):
    from edgebus.runtime.batch import read_rows

    p = tmp_path_factory.mktemp("jsonl") / "predictions.jsonl"
    p.write_bytes(b"\n".join(lines) + (b"" if torn else b"\n"))
    for read in (lambda: read_jsonl(p, key="fold"), lambda: read_rows(p), lambda: read_jsonl(p, key=("lr", "epochs"))):
        rows = _ok_or_edgebus_error(read)
        assert rows is None or all(isinstance(r, dict) for r in rows)


# ---- manifest.json, operating_point.json (a real CV), bundle.json / site.json (a real cart) ---------

@pytest.fixture(scope="module")
def cv(tiny_cv):
    return tiny_cv


@pytest.fixture(scope="module")
def cart(cv, tmp_path_factory):
    out = tmp_path_factory.mktemp("prop-cart") / "cart"
    r = cli("bundle", "--classifier", cv, "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def frame(synthetic_breast_dir):
    return sorted((synthetic_breast_dir / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[0]


@SETTINGS
@given(data=st.data())
def test_manifest(cv, tmp_path_factory, data):
    from edgebus.core.manifest import Run

    run = copy_run(cv, tmp_path_factory.mktemp("m") / "cv")
    _write(run / "manifest.json", data.draw(damaged(json.loads((run / "manifest.json").read_text()))))

    def use():
        r = Run.load(run)
        r.task, r.manifest.to_dict()
        for name in list(r.manifest.artifacts):
            r.verify_artifact(name)
    _ok_or_edgebus_error(use)
    res = cli("operating-point", run, "--overwrite")  # reads the manifest, folds.jsonl and writes into the run only
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output


@SETTINGS
@given(data=st.data())
def test_operating_point_json(cv, tmp_path_factory, data):
    """Even with the manifest's sha256 made to match (an editor who edits both), a damaged point is
    refused or is a valid one: threshold from 0 to 1, finite calibration."""
    from edgebus.core.manifest import Run
    from edgebus.runtime.ensemble import cv_point

    run = copy_run(cv, tmp_path_factory.mktemp("op") / "cv")
    _write(run / "operating_point.json", data.draw(damaged(json.loads((run / "operating_point.json").read_text()))))
    m = json.loads((run / "manifest.json").read_text())
    m["artifacts"]["operating_point.json"]["sha256"] = sha256_file(run / "operating_point.json")
    _write(run / "manifest.json", m)
    op = _ok_or_edgebus_error(lambda: cv_point(Run.load(run)))
    if op is not None:
        assert 0 <= op["threshold"] <= 1 and math.isfinite(op["threshold"])


def _rehash(cart: Path, name: str, role: str) -> None:
    b = json.loads((cart / "bundle.json").read_text())
    b[role]["sha256"] = sha256_file(cart / name)
    _write(cart / "bundle.json", b)


@SETTINGS
@given(data=st.data())
def test_bundle_json(cart, frame, tmp_path_factory, data):
    from edgebus.runtime import LesionPipeline

    c = tmp_path_factory.mktemp("b") / "cart"
    shutil.copytree(cart, c)
    _write(c / "bundle.json", data.draw(damaged(json.loads((c / "bundle.json").read_text()))))
    pipe = _ok_or_edgebus_error(lambda: LesionPipeline.from_bundle(c))
    if pipe is not None:
        res = pipe.predict(frame)
        assert res["error"] is None or isinstance(res["error"], str)


@pytest.fixture(scope="module")
def fusion_json(tmp_path_factory):
    from edgebus.core import fusion

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, len(fusion.INPUTS)))
    y = (x[:, 0] + rng.normal(size=60) > 0).astype(int)
    m = rng.normal(size=(60, len(fusion.MEASURES)))
    doc = {"model": fusion.fit(x, y, "fused"), "operating_point": {"fused": {"threshold": 0.4}},
           "descriptors": [{"name": "orientation", "shipped": True, "labels": ["parallel", "not parallel"],
                            "model": fusion.fit_logistic(m, y, fusion.MEASURES, "descriptor")}]}
    p = tmp_path_factory.mktemp("fusion") / "fusion.json"
    _write(p, doc)
    return p


@SETTINGS
@given(data=st.data())
def test_fusion_json(fusion_json, tmp_path_factory, data):
    from edgebus.runtime.fusion import ShapeFusion

    p = tmp_path_factory.mktemp("f") / "fusion.json"
    _write(p, data.draw(damaged(json.loads(fusion_json.read_text()))))
    f = _ok_or_edgebus_error(lambda: ShapeFusion(p))
    if f is not None:  # what it accepted must score a frame
        yy, xx = np.mgrid[:64, :64]
        seg = ((yy - 32) ** 2 / 200 + (xx - 30) ** 2 / 90 < 1).astype(np.float32)
        prob, _, desc = f.score(0.7, seg, (seg * 120 + 20).astype(np.uint8), 0.5)
        assert 0 <= prob <= 1 and all(0 <= d <= 1 for d in desc or [])
        assert 0 <= f.threshold <= 1


@SETTINGS
@given(data=st.data())
def test_site_json(cart, frame, tmp_path_factory, data):
    from edgebus.runtime import LesionPipeline

    c = tmp_path_factory.mktemp("s") / "cart"
    shutil.copytree(cart, c)
    site = {"schema": "edgebus.site/1", "threshold": 0.3, "calibration": {"method": "platt", "a": 1.0, "b": -0.2}}
    _write(c / "site.json", data.draw(damaged(site)))
    b = json.loads((c / "bundle.json").read_text())
    b["site"] = {"file": "site.json", "sha256": sha256_file(c / "site.json"), "threshold": 0.3}
    _write(c / "bundle.json", b)
    pipe = _ok_or_edgebus_error(lambda: LesionPipeline.from_bundle(c))
    if pipe is not None:
        res = pipe.predict(frame)
        assert res["error"] is None and 0 <= res["threshold"] <= 1 and 0 <= res["prob_malignant"] <= 1


# ---- the .tflite metadata; frames ------------------------------------------------------------------

@SETTINGS
@given(data=st.data())
def test_tflite_bytes(cart, tmp_path_factory, data):
    from edgebus.runtime import ExportedModel
    from edgebus.runtime.metadata import read_metadata

    src = (cart / "classifier_fold0.tflite").read_bytes()
    buf = bytearray(src)
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf)))]
    for _ in range(data.draw(st.integers(0, 8))):
        if buf:
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    p = tmp_path_factory.mktemp("t") / "m.tflite"
    p.write_bytes(bytes(buf))
    meta = _ok_or_edgebus_error(lambda: read_metadata(p))
    assert meta is None or isinstance(meta, (dict, list, str, int, float, bool))
    _ok_or_edgebus_error(lambda: ExportedModel(p, "classify"))


@SETTINGS
@given(data=st.data())
def test_frames_are_an_error_row_never_the_end_of_the_run(cart, frame, tmp_path_factory, data):
    from edgebus.runtime import LesionPipeline, predict_files

    root = tmp_path_factory.mktemp("fr")
    src = bytearray(frame.read_bytes())
    cut = data.draw(st.integers(0, len(src)))
    bad = src[:cut]
    for _ in range(data.draw(st.integers(0, 6))):
        if bad:
            bad[data.draw(st.integers(0, len(bad) - 1))] = data.draw(st.integers(0, 255))
    name = data.draw(st.sampled_from(["a.png", "a.jpg", "a.dcm"]))
    (root / "in").mkdir()
    (root / "in" / name).write_bytes(bytes(bad))
    shutil.copy(frame, root / "in" / "z_good.png")
    pipe = LesionPipeline.from_bundle(cart)
    summary = predict_files(pipe, sorted((root / "in").iterdir()), root / "out", overlays=False, masks=False,
                            log=lambda *_: None)
    assert summary["frames"] >= 2 and str(root / "in" / "z_good.png") not in summary["failed_files"]
    assert sorted(p.name for p in root.iterdir()) == ["in", "out"]  # nothing written beside --out


# ---- the clinical sheet ------------------------------------------------------------------------------

CELL = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=10))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from edgebus.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("sheet") / "set", n_cases=6, image_size=(48, 48), seed=2)


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_clinical_sheet(small_set, tmp_path_factory, data):
    import openpyxl

    from edgebus.data.breast import breast_pixel_sizes, read_breast

    d = tmp_path_factory.mktemp("sh") / "set"
    shutil.copytree(small_set, d)
    sheet = next(d.glob("*.xlsx"))
    wb = openpyxl.load_workbook(sheet)
    ws = wb.active
    for _ in range(data.draw(st.integers(1, 4))):
        r = data.draw(st.integers(1, ws.max_row))
        c = data.draw(st.integers(1, ws.max_column))
        v = data.draw(CELL)
        ws.cell(r, c).value = None if isinstance(v, float) and not math.isfinite(v) and data.draw(st.booleans()) else v
    wb.save(sheet)
    ds = _ok_or_edgebus_error(lambda: read_breast(d))
    if ds is not None:
        assert all(c.label in (0, 1, None) for c in ds.cases)
    sizes = _ok_or_edgebus_error(lambda: breast_pixel_sizes(d, warn=lambda *_: None))
    assert sizes is None or all(v is None or (math.isfinite(v) and v > 0) for v in sizes.values())


# ---- ultrasound DICOM headers ---------------------------------------------------------------------

DICOM_TAGS = ["NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
              "BitsStored", "PixelRepresentation", "Modality", "SOPInstanceUID", "SequenceOfUltrasoundRegions",
              "PixelSpacing", "PlanarConfiguration"]
REGION_TAGS = ["RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1",
               "PhysicalUnitsXDirection", "PhysicalUnitsYDirection", "PhysicalDeltaX", "PhysicalDeltaY",
               "RegionDataType", "RegionSpatialFormat"]
VALUE = st.one_of(st.none(), st.integers(-3, 70000), st.floats(allow_nan=True), st.text(max_size=4))


@SETTINGS
@given(data=st.data())
def test_ultrasound_dicom_headers(cart, frame, tmp_path_factory, data):
    """Real ultrasound files (pydicom-data) with tags removed or given values of the wrong type: the
    file is an error row (or is predicted), the good frame after it is predicted, no traceback."""
    import pydicom
    from pydicom.data import get_testdata_file

    from edgebus.runtime import LesionPipeline, predict_files

    ds = pydicom.dcmread(get_testdata_file(data.draw(st.sampled_from(["OBXXXX1A.dcm", "US1_UNCR.dcm"]))))
    for _ in range(data.draw(st.integers(1, 4))):
        regions = ds.get("SequenceOfUltrasoundRegions")
        if regions and data.draw(st.booleans()):
            target, tag = regions[data.draw(st.integers(0, len(regions) - 1))], data.draw(st.sampled_from(REGION_TAGS))
        else:
            target, tag = ds, data.draw(st.sampled_from(DICOM_TAGS))
        if data.draw(st.booleans()):
            if tag in target:
                delattr(target, tag)
        else:
            value = data.draw(VALUE)
            try:
                setattr(target, tag, value)
            except Exception:  # pydicom refuses some values outright: nothing to test with them
                pass
    root = tmp_path_factory.mktemp("dcm")
    (root / "in").mkdir()
    try:
        ds.save_as(root / "in" / "a.dcm", enforce_file_format=False)
    except Exception:  # pydicom cannot write the damaged dataset at all: not a file a cart can meet
        return
    shutil.copy(frame, root / "in" / "z_good.png")
    summary = predict_files(LesionPipeline.from_bundle(cart), sorted((root / "in").iterdir()), root / "out",
                            overlays=False, masks=False, log=lambda *_: None)
    assert str(root / "in" / "z_good.png") not in summary["failed_files"]
    rows = read_jsonl(root / "out" / "predictions.jsonl")
    assert all(r["error"] is None or ("\n" not in r["error"] and "a.dcm" in r["error"]) for r in rows)
    assert sorted(p.name for p in root.iterdir()) == ["in", "out"]
