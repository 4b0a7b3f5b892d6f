"""`edgebus site-check`: a cart's predictions of locally labelled cases, scored at the shipped threshold,
with intervals and a verdict; the numbers are the ones recomputed here from the files, and a threshold
that misses at a site is called out."""

import json

import numpy as np

from edgebus.data.breast import read_breast
from tests.conftest import cli, one_line_error


def _rows(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_site_check_scores_the_carts_predictions_at_its_threshold(cls_run, chain_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # predictions made from one working folder, checked from another
    r = cli("predict", "--classifier", cls_run, chain_data, "--out", "pred", "--no-overlays", "--no-masks")
    assert r.exit_code == 0, r.output
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    pred = tmp_path / "pred"
    r = cli("site-check", pred, "--data", chain_data)
    assert r.exit_code == 0, r.output
    res = json.loads((pred / "site-check" / "site_check.json").read_text())
    label = {c.image.name: c.label for c in read_breast(chain_data).lesions()}
    rows = [x for x in _rows(pred) if x["file"].split("/")[-1] in label]
    y = np.array([label[x["file"].split("/")[-1]] for x in rows])
    hit = np.array([x["prob_raw"] >= x["threshold"] for x in rows])
    assert res["n"] == len(rows) == len(label) and res["malignant"] == int(y.sum())
    assert res["sensitivity"]["value"] == hit[y == 1].mean() and res["specificity"]["value"] == (~hit[y == 0]).mean()
    lo, hi = res["sensitivity"]["ci"]
    assert lo <= res["sensitivity"]["value"] <= hi and res["auc"]["value"] > 0.8  # the chain classifier learned the set
    assert res["local"]["sensitivity"] >= 0.9 and "in-sample" in res["local"]["note"]
    assert (pred / "site-check" / "reliability.png").stat().st_size > 1000
    assert res["verdict"].split(" ")[0] in ("consistent", "uncertain", "MISSES") and res["verdict"] in r.output
    assert cli("site-check", pred, "--data", chain_data).exit_code == 0  # the same inputs: the same report again
    one_line_error(cli("site-check", pred, "--data", chain_data, "--target-sensitivity", 0.8), "site_check.json",
                   "--overwrite")
    r = cli("site-check", pred, "--data", chain_data, "--target-sensitivity", 0.8, "--overwrite")
    assert r.exit_code == 0 and json.loads((pred / "site-check" / "site_check.json").read_text())["target_sensitivity"] == 0.8

    # a site where the shipped threshold misses most cancers: said so, with the threshold these cases would choose
    miss = tmp_path / "miss"
    miss.mkdir()
    lines = []
    for i, x in enumerate(_rows(pred)):
        if label.get(x["file"].split("/")[-1]) == 1:  # three cancers in four now score low
            x["prob_raw"] = x["prob_malignant"] = 0.01 if i % 4 else 0.99
        lines.append(json.dumps(x))
    (miss / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    r = cli("site-check", miss, "--data", chain_data)
    assert r.exit_code == 0, r.output
    res = json.loads((miss / "site-check" / "site_check.json").read_text())
    assert res["verdict"].startswith("MISSES") and res["sensitivity"]["ci"][1] < 0.9
    assert res["local"]["threshold"] <= 0.01 and "MISSES the target" in (miss / "site-check" / "site_check.md").read_text()

    # bad input: one line each, naming the file and the fix
    one_line_error(cli("site-check", tmp_path / "nothing", "--data", chain_data), "edgebus predict")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "predictions.jsonl").write_text(json.dumps({**_rows(pred)[0], "file": "x/unknown.png"}) + "\n")
    one_line_error(cli("site-check", odd, "--data", chain_data), "none of its 1 predicted frames")
    resized = tmp_path / "resized"
    resized.mkdir()
    (resized / "predictions.jsonl").write_text(json.dumps({**_rows(pred)[0], "width": 7}) + "\n")
    one_line_error(cli("site-check", resized, "--data", chain_data), "another set's frames")


def test_site_check_runs_on_the_cart_without_tensorflow(cls_run, tmp_path, without_tf):
    """A BUSI-layout site set (labels from its folders): predict and site-check with TensorFlow and pandas blocked."""
    from edgebus.data.busi import make_synthetic_busi

    site = make_synthetic_busi(tmp_path / "site", per_class=12, seed=3)
    out = without_tf(f"""
        from typer.testing import CliRunner
        from edgebus.cli import app
        from edgebus.runtime.model import resolve_model_path
        clf = str(resolve_model_path({str(cls_run)!r}, 'int8'))
        r = CliRunner().invoke(app, ['predict', '--classifier', clf, {str(site)!r}, '--out', {str(tmp_path / 'p')!r},
                                     '--no-overlays', '--no-masks'])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ['site-check', {str(tmp_path / 'p')!r}, '--data', {str(site)!r}, '--format', 'busi'])
        assert r.exit_code == 0, r.output
        assert not any(m in sys.modules for m in ('tensorflow', 'tf_keras', 'pandas'))
        print(r.output)
    """)
    res = json.loads((tmp_path / "p" / "site-check" / "site_check.json").read_text())
    assert res["n"] == 24 and res["malignant"] == 12 and res["verdict"].startswith("too few malignant cases")
    assert res["verdict"] in out.stdout
