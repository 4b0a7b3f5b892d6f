"""The README's main job, as a new user runs it (`edgebus demo`, the synthetic default, export's own
gates): every int8 file it bundles passed its gates against its float parent, and the cart's rows say
so. Minutes: it trains MobileNetV2 and the EfficientNetB2 U-Net."""

import json

from tests.conftest import cli, manifest


def test_demo_chain_passes_its_gates_with_the_defaults(tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--out", out)
    assert r.exit_code == 0, r.output[-3000:]
    report = (out / "report.md").read_text()
    for name in ("mobilenetv2-96", "unet-efficientnetb2-96"):
        m = manifest(out / "runs" / name)
        e = m["exports"]["int8"]
        assert e["source"] == "qat" and m["stages"]["export"]["qat"]["distill"] == 1.0
        assert e["status"] == "ok" and e["gates"]["status"] == "passed", e["gates"]
        assert m["stages"]["export"]["gates"] == {"max_drop": None, "max_recall_drop": None, "max_flips": None,
                                                  "max_missed": 0, "min_mask_iou": 0.9}  # no looser gate for the demo
        assert f"# {m['model']['name']}: int8 QAT file against its float parent\n\n- gates passed" in report
        if m["task"] == "classify":
            f = e["fidelity"]
            assert f["missed_new"] == 0 and f["flips"] <= max(1, f["n"] // 10)
        else:
            assert e["fidelity"]["mask_iou_mean"] >= 0.9
    bundle = json.loads((out / "cart" / "bundle.json").read_text())
    assert bundle["classifier"]["gates"] == bundle["segmenter"]["gates"] == "passed"
    rows = [json.loads(x) for x in (out / "predictions" / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(row["gates"] == "classifier passed, segmenter passed" for row in rows)
    # a model trained on the synthetic set says so on the console, in the report and in every row
    assert "WARNING: " in r.output and "synthetic" in r.output.split("WARNING: ", 1)[1].splitlines()[0].lower()
    assert "**WARNING**" in report
    assert all(any("synthetic" in w.lower() for w in row["warnings"]) for row in rows)
