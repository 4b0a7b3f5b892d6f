"""Readable reports: report.html's tables are HTML tables (report.md and report.json unchanged), its bar
labels are whole and inside the figure, and the stress figure shows the drops on an axis scaled to them."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from edgebus.benchmarks.report import _figures, html_page, markdown, write_report

MACHINE = {"cpu": "AMD EPYC", "arch": "x86_64", "cores": 2, "os": "Debian GNU/Linux 12", "interpreter": "ai-edge-litert 2.3.0",
           "python": "3.11.7", "numpy": "2.4.6", "edgebus": "0.1.0"}


def _row(fmt, threads, median, status="ok", **kw):
    lat = {"median": median, "p90": median * 1.1, "mean": median, "std": 0.1} if status == "ok" else None
    return {"file": f"model_{fmt}.tflite", "format": fmt, "threads": threads, "xnnpack": True, "status": status,
            "size_bytes": {"float32": 13.4e6, "int8": 3.9e6}.get(fmt, 41e6), "load_ms": 5.0, "first_ms": 2.0,
            "latency_ms": lat, "fps": 1000 / median if lat else None, "rss_delta_mb": 4.0,
            "metrics": {"accuracy": 0.64, "auc": 0.82} if lat else None, "delta_vs_keras": {"accuracy": 0.0, "auc": -0.013}, **kw}


def _result(model="efficientnet-lite0-with-a-long-name <b>x</b>", machine=MACHINE):
    return {"schema": "edgebus.bench/1", "machine": machine, "model": model, "task": "classify", "input_size": [160, 160],
            "run": "/runs/lite0", "created": "2026-11-29T22:07:44+00:00", "keras_reference": {"accuracy": 0.64, "auc": 0.82},
            "eval_split": {"name": "test", "n": 25},
            "rows": [_row("keras", None, 47.8), _row("float32", 1, 3.22), _row("float32", 2, 1.46), _row("int8", 1, 1.20),
                     _row("int8", 2, 0.65), _row("int8", 4, None, status="load_failed", error="broken.tflite: not a model")]}


def _md_tables(md: str) -> list[list[str]]:
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_html_tables_are_tables_and_md_json_unchanged(tmp_path):
    pi = {**MACHINE, "cpu": "Cortex-A72", "arch": "aarch64", "cores": 4}
    results = [_result(), _result(machine=pi)]
    md = markdown(results)
    page = html_page(results, md)
    assert "<pre>" not in page and "|---" not in page
    tables = _md_tables(md)
    assert page.count("<table>") == len(tables) == 3  # two results and the ratios
    for block, html_table in zip(tables, re.findall(r"<table>.*?</table>", page, re.S)):
        assert html_table.count("<tr") == len(block) - 1  # the separator line is no row
        assert html_table.count("<th>") == len(block[0].strip("|").split("|"))
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # escaped
    assert "<tr class=bad>" in page and "<td class=num>3.22</td>" in page
    assert "<code>/runs/lite0</code>" in page
    # report.md and report.json are what they were: markdown() verbatim and the result
    write_report(results, tmp_path)
    assert (tmp_path / "report.md").read_text() == md
    assert json.loads((tmp_path / "report.json").read_text())["results"] == results
    html = (tmp_path / "report.html").read_text()
    for png in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert Image.open(io.BytesIO(base64.b64decode(png))).format == "PNG"


def test_bar_labels_are_whole_and_inside_the_figure():
    pytest.importorskip("matplotlib")
    pi = {**MACHINE, "cpu": "Cortex-A72 on a cart with a long name", "arch": "aarch64", "cores": 4}
    figs = dict(_figures([_result(), _result(machine=pi)]))
    assert {"Latency", "Accuracy against latency", "File size"} <= set(figs)
    for name in ("Latency", "File size"):
        fig = figs[name]
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert all("efficientnet-lite0-with-a-long-name <b>x</b>" in t for t in labels)  # whole, not cut
        assert all("\n" not in t for t in labels) and not any(t.get_text() for t in ax.get_xticklabels() if t.get_rotation())
        fig.canvas.draw()
        box = fig.bbox
        for t in ax.get_yticklabels():  # laid out inside the figure, not beyond its left edge
            e = t.get_window_extent()
            assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1
    lat = [t.get_text() for t in figs["Latency"].axes[0].get_yticklabels()]
    assert len(lat) == 10 and any("Cortex-A72" in t for t in lat)  # 5 timed rows per machine; the failed one not drawn
    import matplotlib.pyplot as plt

    plt.close("all")


def _stress(drops: dict) -> dict:
    rows = [{"change": None, "strength": None, "float": {"auc": 0.768}, "int8": {"auc": 0.766}}]
    for (change, strength), (df, di) in drops.items():
        rows.append({"change": change, "strength": strength, "float": {"auc": 0.768 - df, "drop": df},
                     "int8": {"auc": 0.766 - di, "drop": di}})
    return {"task": "classify", "n": 252, "kinds": ["float", "int8"], "rows": rows,
            "summary": {"float": {"metric": "auc"}, "int8": {"metric": "auc"}}}


def test_stress_plot_shows_the_drops_on_a_scaled_axis(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import edgebus.reports.stress as stress

    drops = {("gain", 0.7): (0.007, 0.009), ("gamma", 0.6): (-0.010, -0.010), ("jpeg", 10): (0.026, 0.027),
             ("blur", 2): (0.0, -0.0004)}
    res = _stress(drops)
    path = stress.stress_plot(res, tmp_path / "stress.png")
    assert Image.open(path).format == "PNG" and path.stat().st_size > 1000
    seen = {}
    monkeypatch.setattr(stress, "_save", lambda fig, p: seen.setdefault("fig", fig) and p)
    stress.stress_plot(res, tmp_path / "again.png")
    ax = seen["fig"].axes[0]
    lo, hi = ax.get_xlim()
    assert lo < -0.010 and hi > 0.027 and hi - lo < 0.1  # every drop shown, the axis a few hundredths wide
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gain 0.7", "gamma 0.6", "jpeg 10", "blur 2"]  # no clean bar
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == sorted(round(d, 6) for pair in drops.values() for d in pair)
    texts = [t.get_text() for t in ax.texts]
    assert "+0.027" in texts and "-0.010" in texts and "-0.000" not in texts
    assert "clean float 0.768, int8 0.766" in ax.get_title()
    import matplotlib.pyplot as plt

    plt.close("all")
