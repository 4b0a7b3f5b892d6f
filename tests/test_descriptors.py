"""BI-RADS descriptors: parsed from the clinical sheet (multi-value cells, unknown for the normal
cases), trained as heads beside malignancy, exported into the full-int8 file with their labels,
returned by the cart in the lexicon's words, and scored per descriptor (accuracy, Cohen's kappa)."""

import json
import shutil

import numpy as np
import pytest

from edgebus.core.descriptors import DESCRIPTORS, encode_row, encode_value
from edgebus.core.errors import EdgebusError
from edgebus.core.metrics import cohen_kappa
from edgebus.data.breast import read_breast
from tests.conftest import cli, manifest

MARGIN = DESCRIPTORS[1]


def test_cells_with_several_values_and_unknowns():
    assert encode_value(MARGIN, "not circumscribed - spiculated&indistinct") == 1
    assert encode_value(MARGIN, "circumscribed") == 0
    assert encode_value(MARGIN, "not applicable") == -1 and encode_value(MARGIN, None) == -1
    assert encode_value(DESCRIPTORS[3], "combined") == 1 and encode_value(DESCRIPTORS[3], "enhancement") == 0
    with pytest.raises(EdgebusError, match="sheet.xlsx: CaseID 7: Margin 'wavy'"):
        encode_value(MARGIN, "wavy", "sheet.xlsx: CaseID 7")
    assert encode_row({}, "x") == (-1,) * len(DESCRIPTORS)


def test_real_sheet_descriptors(real_breast_dir):
    import pandas as pd

    ds = read_breast(real_breast_dir)
    assert ds.has_descriptors
    df = pd.read_excel(ds.sheet, engine="openpyxl").set_index("CaseID")
    for c in ds.cases:
        if c.classification == "normal":
            assert c.descriptors == (-1,) * len(DESCRIPTORS)
    lesions = ds.lesions()
    d = np.array([c.descriptors for c in lesions])
    ids = [c.case_id for c in lesions]
    assert (d[:, 0] == 1).sum() == (df.loc[ids, "Shape"] == "irregular").sum()
    assert (d[:, 1] == 1).sum() == df.loc[ids, "Margin"].str.startswith("not circumscribed").sum()
    assert (d >= 0).all()  # every lesion is described


def test_synthetic_descriptors_follow_the_drawn_lesion(synthetic_breast_dir):
    for c in read_breast(synthetic_breast_dir).lesions():
        shape, margin, *_ = c.descriptors
        assert shape == margin == c.label  # spiculated, irregular cancers; oval, circumscribed benign lesions


def test_kappa():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == 0.0


def test_a_sheet_without_descriptor_columns_trains_malignancy_only(synthetic_breast_dir, tmp_path):
    import pandas as pd

    data = tmp_path / "data"
    shutil.copytree(synthetic_breast_dir, data)
    sheet = next(data.glob("*.xlsx"))
    pd.read_excel(sheet, engine="openpyxl").drop(columns=["Shape", "Margin"]).to_excel(sheet, index=False)
    r = cli("train", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--epochs", 1, "--descriptors",
            "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "no BI-RADS descriptor columns" in line]
    assert len(notes) == 1 and sheet.name in notes[0]
    assert "descriptors" not in manifest(tmp_path / "run")["model"]["kwargs"]


@pytest.fixture(scope="module")
def desc_run(chain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("desc") / "run"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 64, "--epochs", 25,
            "--lr", 3e-3, "--descriptors", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--int8")  # QAT fine-tunes both heads
    assert r.exit_code == 0, r.output
    return out


def test_descriptor_heads_train_export_to_full_int8_and_the_cart_explains(desc_run, chain_data):
    from edgebus.export.convert import float_tensors
    from edgebus.runtime import ExportedModel, LesionPipeline
    from edgebus.runtime.metadata import read_metadata

    m = manifest(desc_run)
    assert m["model"]["kwargs"]["descriptors"] == len(DESCRIPTORS)
    test = m["metrics"]["descriptors"]["test"]
    assert set(test) == {d.name for d in DESCRIPTORS}
    # the drawn lesion shows its shape and margin: the heads learned them, not the base rate
    assert test["shape"]["accuracy"] >= 0.75 and test["margin"]["accuracy"] >= 0.75, test
    meta = read_metadata(desc_run / "model_int8.tflite")
    assert [d["name"] for d in meta["descriptors"]] == [d.name for d in DESCRIPTORS]
    em = ExportedModel(desc_run / "model_int8.tflite", "classify")
    assert float_tensors(em.model) == [] and len(em.model.outputs) == 2 and em.desc_index is not None
    e = m["exports"]["int8"]
    assert e["source"] == "qat" and e["descriptors"]["shape"]["accuracy"] >= 0.75, e["descriptors"]
    frame = sorted((chain_data / "BrEaST-Lesions_USG-images_and_masks").glob("case*[0-9].png"))[0]
    res = LesionPipeline(classifier=desc_run / "model_int8.tflite").predict(frame)
    assert set(res["descriptors"]) == {d.name for d in DESCRIPTORS}
    words = res["findings"].split(", ")
    assert len(words) == len(DESCRIPTORS) and all(w in d.labels for w, d in zip(words, DESCRIPTORS))


def test_cv_reports_each_descriptors_accuracy_and_kappa(synthetic_breast_dir, tmp_path):
    out = tmp_path / "cv"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--folds", 3,
            "--epochs", 4, "--lr", 3e-3, "--descriptors", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert set(s["descriptors"]) == {d.name for d in DESCRIPTORS}
    shape = s["descriptors"]["shape"]
    assert shape["n"] == s["pooled"]["n"] and shape["kappa"] is not None and 0 <= shape["accuracy"] <= 1
    assert "Cohen's kappa" in (out / "report.md").read_text()
