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
        r2 = CliRunner().invoke(app, ['site-threshold', {str(tmp_path / 'cart')!r}, {str(tmp_path / 'p' / 'site-check')!r},
                                      '--out', {str(tmp_path / 'c2')!r}])
        assert r2.exit_code == 2 and 'too few to choose a threshold' in r2.output, r2.output
        assert not any(m in sys.modules for m in ('tensorflow', 'tf_keras', 'pandas'))
        print(r.output)
    """)
    res = json.loads((tmp_path / "p" / "site-check" / "site_check.json").read_text())
    assert res["n"] == 24 and res["malignant"] == 12 and res["verdict"].startswith("too few malignant cases")
    assert res["verdict"] in out.stdout


def test_site_threshold_puts_the_sites_threshold_on_a_copy_of_the_cart(cls_run, seg_run, chain_data, tmp_path):
    """The threshold a site check chose is what the copy's calls are made at (its sensitivity on those cases
    reaches the target); the shipped cart is unchanged; a site check of another cart, a tampered site.json or
    the shipped cart as --out are refused in one line."""
    from edgebus.core.io import sha256_file

    cart = tmp_path / "cart"
    assert cli("bundle", "--classifier", cls_run, "--out", cart).exit_code == 0
    shipped = {p.name: sha256_file(p) for p in cart.iterdir()}
    pred = tmp_path / "pred"
    assert cli("predict", "--bundle", cart, chain_data, "--out", pred, "--no-overlays", "--no-masks").exit_code == 0
    r = cli("site-check", pred, "--data", chain_data, "--target-sensitivity", 0.97)
    assert r.exit_code == 0, r.output
    check = json.loads((pred / "site-check" / "site_check.json").read_text())
    assert check["local"]["threshold"] != check["threshold"]  # these cases choose another threshold for 0.97

    site_cart = tmp_path / "site-cart"
    r = cli("site-threshold", cart, pred / "site-check", "--out", site_cart)
    assert r.exit_code == 0, r.output
    assert {p.name: sha256_file(p) for p in cart.iterdir()} == shipped  # the shipped cart stays as it was
    site = json.loads((site_cart / "site.json").read_text())
    assert site["threshold"] == check["local"]["threshold"] and site["chosen_on"]["n"] == check["n"]
    assert (site_cart / "site_check.md").is_file()
    again = tmp_path / "pred-site"
    r = cli("predict", "--bundle", site_cart, chain_data, "--out", again, "--no-overlays", "--no-masks")
    assert r.exit_code == 0, r.output
    before = {x["file"]: x for x in _rows(pred)}
    label = {c.image.name: c.label for c in read_breast(chain_data).lesions()}
    hits = []
    for x in _rows(again):
        assert x["threshold"] == site["threshold"] and x["prob_raw"] == before[x["file"]]["prob_raw"]  # same models
        assert (x["label"] == "malignant") == (x["prob_raw"] >= site["threshold"])
        if label.get(x["file"].split("/")[-1]) == 1:
            hits.append(x["label"] == "malignant")
    assert np.mean(hits) >= 0.97  # the target, on the cases it was chosen on (in-sample, as site.json says)
    assert json.loads((again / "summary.json").read_text())["models"]["site"]["threshold"] == site["threshold"]
    # the shown probability is recalibrated on the site's cases (Platt), so on them its log loss is no worse
    cal = site["calibration"]
    assert cal == check["local"]["calibration"] and cal["a"] > 0
    for x in _rows(again):
        expect = 1 / (1 + np.exp(-(cal["a"] * np.log(x["prob_raw"] / (1 - x["prob_raw"])) + cal["b"])))
        assert abs(x["prob_malignant"] - expect) < 1e-4

    def log_loss(rows):
        y = np.array([label[x["file"].split("/")[-1]] for x in rows if x["file"].split("/")[-1] in label])
        q = np.clip([x["prob_malignant"] for x in rows if x["file"].split("/")[-1] in label], 1e-6, 1 - 1e-6)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))

    assert log_loss(_rows(again)) <= log_loss(_rows(pred)) + 1e-4
    r = cli("site-check", again, "--data", chain_data, "--target-sensitivity", 0.97)
    assert r.exit_code == 0, r.output
    recheck = json.loads((again / "site-check" / "site_check.json").read_text())
    assert recheck["threshold"] == site["threshold"] and recheck["sensitivity"]["value"] >= 0.97
    assert recheck["calibration"]["slope"] > 0 and "site-threshold" in (again / "site-check" / "site_check.md").read_text()

    # bad input: one line each
    one_line_error(cli("site-threshold", cart, pred / "site-check", "--out", cart), "shipped cart")
    one_line_error(cli("site-threshold", cart, pred / "site-check", "--out", site_cart), "--overwrite")
    other = tmp_path / "other-cart"
    assert cli("bundle", "--classifier", cls_run, "--segmenter", seg_run, "--out", other).exit_code == 0
    one_line_error(cli("site-threshold", other, pred / "site-check", "--out", tmp_path / "x"), "other models",
                   "edgebus predict --bundle")
    old = tmp_path / "old-check"
    old.mkdir()
    (old / "site_check.json").write_text(json.dumps({**check, "models": None}))
    one_line_error(cli("site-threshold", cart, old, "--out", tmp_path / "y"), "older site check", "--overwrite")
    (site_cart / "site.json").write_text(json.dumps({**site, "threshold": 0.0}))
    one_line_error(cli("predict", "--bundle", site_cart, chain_data, "--out", tmp_path / "z"), "site.json", "sha256")
