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
        assert r2.exit_code == 2 and 'does not miss its target here (too few malignant' in r2.output, r2.output
        assert not any(m in sys.modules for m in ('tensorflow', 'tf_keras', 'pandas'))
        print(r.output)
    """)
    res = json.loads((tmp_path / "p" / "site-check" / "site_check.json").read_text())
    assert res["n"] == 24 and res["malignant"] == 12 and res["verdict"].startswith("too few malignant cases")
    assert res["verdict"] in out.stdout


def _brighter_site(folder, n_cases, seed):
    """A labelled site whose scanner writes brighter frames (gain 1.6) than the chain set's."""
    from PIL import Image

    from edgebus.data.stress import apply_change
    from edgebus.data.synthetic import make_synthetic

    site = make_synthetic(folder, n_cases=n_cases, seed=seed)
    for p in (site / "BrEaST-Lesions_USG-images_and_masks").glob("case*.png"):
        if "_" not in p.stem:  # frames, not masks
            Image.fromarray(apply_change(np.asarray(Image.open(p).convert("L")), None, "gain", 1.6)[0]).save(p)
    return site


def _sensitivity(pred, data):
    label = {c.image.name: c.label for c in read_breast(data).lesions()}
    return np.mean([x["label"] == "malignant" for x in _rows(pred) if label.get(x["file"].split("/")[-1]) == 1])


def test_site_threshold_restores_sensitivity_at_a_brighter_scanner(cls_run, chain_data, tmp_path):
    """At a scanner with brighter frames the shipped threshold catches few cancers; the threshold and calibration
    chosen on 150 of that site's labelled cases, put on a copy of the cart, catch most cancers among another 150
    of its cases. The shipped cart is unchanged; a site where the shipped threshold holds, one with too few
    cancers, a site check of another cart, a tampered site.json and the shipped cart as --out are refused in
    one line each."""
    from edgebus.core.io import sha256_file

    cart = tmp_path / "cart"
    assert cli("bundle", "--classifier", cls_run, "--out", cart).exit_code == 0
    shipped = {p.name: sha256_file(p) for p in cart.iterdir()}
    labelled, later = _brighter_site(tmp_path / "site-a", 150, 5), _brighter_site(tmp_path / "site-b", 150, 6)
    pred = tmp_path / "pred-a"
    assert cli("predict", "--bundle", cart, labelled, "--out", pred, "--no-overlays", "--no-masks").exit_code == 0
    r = cli("site-check", pred, "--data", labelled)
    assert r.exit_code == 0, r.output
    check = json.loads((pred / "site-check" / "site_check.json").read_text())
    assert check["verdict_kind"] == "misses" and check["malignant"] >= 50, check["verdict"]

    site_cart = tmp_path / "site-cart"
    r = cli("site-threshold", cart, pred / "site-check", "--out", site_cart)
    assert r.exit_code == 0, r.output
    assert {p.name: sha256_file(p) for p in cart.iterdir()} == shipped  # the shipped cart stays as it was
    site = json.loads((site_cart / "site.json").read_text())
    assert site["threshold"] == check["local"]["threshold"] < check["threshold"] and site["chosen_on"]["n"] == check["n"]
    cal = site["calibration"]
    assert cal == check["local"]["calibration"] and cal["a"] == 1.0 and cal["b"] > 0  # the site's logits run low
    assert (site_cart / "site_check.md").is_file()

    shipped_pred, site_pred = tmp_path / "pred-b-shipped", tmp_path / "pred-b-site"
    for c, out in ((cart, shipped_pred), (site_cart, site_pred)):
        assert cli("predict", "--bundle", c, later, "--out", out, "--no-overlays", "--no-masks").exit_code == 0
    before = {x["file"]: x for x in _rows(shipped_pred)}
    for x in _rows(site_pred):
        assert x["threshold"] == site["threshold"] and x["prob_raw"] == before[x["file"]]["prob_raw"]  # same models
        assert (x["label"] == "malignant") == (x["prob_raw"] >= site["threshold"])
        q = before[x["file"]]["prob_malignant"]  # the shipped cart's shown probability, its logit moved by b
        assert abs(x["prob_malignant"] - 1 / (1 + np.exp(-(np.log(q / (1 - q)) + cal["b"])))) < 1e-4
    assert _sensitivity(site_pred, later) >= 0.75 and _sensitivity(shipped_pred, later) < 0.5
    assert json.loads((site_pred / "summary.json").read_text())["models"]["site"]["threshold"] == site["threshold"]

    # bad input: one line each
    one_line_error(cli("site-threshold", cart, pred / "site-check", "--out", cart), "shipped cart")
    one_line_error(cli("site-threshold", cart, pred / "site-check", "--out", site_cart), "--overwrite")
    holds = tmp_path / "pred-chain"
    assert cli("predict", "--bundle", cart, chain_data, "--out", holds, "--no-overlays", "--no-masks").exit_code == 0
    assert cli("site-check", holds, "--data", chain_data).exit_code == 0
    one_line_error(cli("site-threshold", cart, holds / "site-check", "--out", tmp_path / "w"), "does not miss",
                   "keep the shipped cart")
    small = _brighter_site(tmp_path / "site-small", 70, 7)
    assert cli("predict", "--bundle", cart, small, "--out", tmp_path / "pred-s", "--no-overlays", "--no-masks").exit_code == 0
    assert cli("site-check", tmp_path / "pred-s", "--data", small).exit_code == 0
    one_line_error(cli("site-threshold", cart, tmp_path / "pred-s" / "site-check", "--out", tmp_path / "v"),
                   "fewer than 50")
    other = tmp_path / "other-cart"
    assert cli("bundle", "--classifier", cls_run, "--format", "float32", "--out", other).exit_code == 0
    one_line_error(cli("site-threshold", other, pred / "site-check", "--out", tmp_path / "x"), "other models",
                   "edgebus predict --bundle")
    old = tmp_path / "old-check"
    old.mkdir()
    (old / "site_check.json").write_text(json.dumps({**check, "models": None}))
    one_line_error(cli("site-threshold", cart, old, "--out", tmp_path / "y"), "older site check", "--overwrite")
    (site_cart / "site.json").write_text(json.dumps({**site, "threshold": 0.0}))
    one_line_error(cli("predict", "--bundle", site_cart, later, "--out", tmp_path / "z"), "site.json", "sha256")
