"""Benchmark results -> report.md, report.html and report.json; several results (this CPU, a Pi,
a Coral) merge into one report. Plots need matplotlib (a dev machine); without it the HTML has
the tables only."""

from __future__ import annotations

import base64
import html
import json
import io
import re
from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, check_writable, json_default, locked, make_dir, read_json, write_json


def _f(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def _machine(m: dict) -> str:
    return f"{m['cpu']} ({m['arch']}, {m['cores']} cores)"


def _flat_rows(results: list[dict]) -> list[dict]:
    """One row per (result, row) with the result's context attached."""
    out = []
    for res in results:
        for r in res["rows"]:
            out.append({**r, "machine": _machine(res["machine"]), "interpreter": res["machine"]["interpreter"],
                        "model": res["model"], "task": res["task"],
                        "input": "x".join(map(str, res["input_size"])) if res.get("input_size") else "-"})
    return out


def ratios(results: list[dict]) -> list[dict]:
    """int8 / float32 and int8 / Keras median-latency ratios per machine, model and thread count."""
    rows = _flat_rows(results)
    out = []
    for r in rows:
        if not r["format"].startswith("int8") or r["status"] != "ok" or not r.get("latency_ms"):
            continue
        same = [q for q in rows if q["machine"] == r["machine"] and q["model"] == r["model"] and q["status"] == "ok"
                and q.get("latency_ms")]
        f32 = [q for q in same if q["format"] == "float32" and q["threads"] == r["threads"]]
        ker = [q for q in same if q["format"] == "keras"]
        med = r["latency_ms"]["median"]
        out.append({
            "machine": r["machine"], "model": r["model"], "format": r["format"], "threads": r["threads"],
            "int8_over_float32": med / f32[0]["latency_ms"]["median"] if f32 else None,
            "int8_over_keras": med / ker[0]["latency_ms"]["median"] if ker else None,
        })
    return out


def markdown(result_or_results) -> str:
    results = result_or_results if isinstance(result_or_results, list) else [result_or_results]
    lines = []
    for res in results:
        m = res["machine"]
        size = "x".join(map(str, res["input_size"])) if res.get("input_size") else "-"
        lines += [
            f"# edgebus benchmark: {res['model']} ({res['task']}, {size})",
            "",
            f"- machine: {_machine(m)}, {m['os']}",
            f"- interpreter: {m['interpreter']}; python {m['python']}, numpy {m['numpy']}, edgebus {m['edgebus']}",
        ]
        if res.get("eval_split"):
            ref = ", ".join(f"{k} {_f(v, 3)}" for k, v in res["keras_reference"].items())
            lines.append(f"- evaluated on the run's {res['eval_split']['name']} split, n={res['eval_split']['n']}"
                         + (f"; Keras float reference: {ref}" if ref else ""))
        lines += [f"- run: `{res['run']}`; created {res['created']}", ""]
        keys = list(res["keras_reference"]) or sorted({k for r in res["rows"] for k in (r.get("metrics") or {})})
        head = ["format", "threads", "XNNPACK", "status", "size MB", "load ms", "first ms", "median ms", "p90 ms",
                "mean ± std ms", "FPS", "RSS +MB"] + keys + [f"Δ{k}" for k in keys]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in res["rows"]:
            lat = r.get("latency_ms") or {}
            met = r.get("metrics") or {}
            delta = r.get("delta_vs_keras") or {}
            cells = [r.get("format", r["file"]), "-" if r.get("threads") is None else str(r["threads"]),
                     {True: "on", False: "off"}.get(r.get("xnnpack"), "-"), r["status"],
                     _f((r.get("size_bytes") or 0) / 1e6), _f(r.get("load_ms"), 1), _f(r.get("first_ms"), 1),
                     _f(lat.get("median")), _f(lat.get("p90")),
                     f"{_f(lat.get('mean'))} ± {_f(lat.get('std'))}" if lat else "-", _f(r.get("fps"), 1),
                     _f(r.get("rss_delta_mb"), 1)]
            cells += [_f(met.get(k), 3) for k in keys] + [_f(delta.get(k), 3) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- {r['file']} ({r.get('threads')} threads): {r['error']}" for r in res["rows"] if r.get("error")]
        notes += [f"- {r['file']} ({r['threads']} threads): XNNPACK refused the graph, built-in kernels timed ({r['xnnpack_error']})"
                  for r in res["rows"] if r.get("xnnpack_error")]
        if notes:
            lines += ["", "Notes:"] + notes
        lines.append("")
    rat = ratios(results)
    if rat:
        lines += ["## int8 latency ratios (median; < 1 means int8 is faster)", "",
                  "| machine | model | format | threads | int8 / float32 | int8 / Keras predict |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['machine']} | {r['model']} | {r['format']} | {r['threads']} | {_f(r['int8_over_float32'], 3)} | "
                  f"{_f(r['int8_over_keras'], 4)} |" for r in rat]
        lines.append("")
    return "\n".join(lines)


def _plots(results: list[dict]) -> list[tuple[str, bytes]]:
    """(title, PNG) of each chart of _figures; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    for name, fig in _figures(results):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
        plt.close(fig)
        out.append((name, buf.getvalue()))
    return out


def _laid_out(fig):
    """A figure laid out tight, ready for _plots to render to PNG."""
    fig.tight_layout()
    return fig


def _barh(ax, labels, values, colors, fmt):
    """Bars top-down in row order, each with its value at its end."""
    ys = list(range(len(values)))[::-1]
    ax.barh(ys, values, color=colors, height=0.7)
    ax.set_yticks(ys, labels, fontsize=8)
    for y, v in zip(ys, values):
        ax.annotate(fmt(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.margins(x=0.15, y=0.01)
    ax.grid(axis="x", alpha=0.3)


def _log_x(ax):
    """A log latency axis labelled 1, 2, 5, 10... in plain numbers (no overlapping 4x10^0 minor labels)."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _metric_figures(rows: list[dict], many: bool) -> list:
    """(title, figure) per task with test metrics: accuracy or IoU against one-thread latency."""
    import matplotlib.pyplot as plt

    figs = []
    markers = {"keras": "s", "float32": "o", "float16": "v", "dynamic": "D", "int8_ptq": "^", "int8": "*"}
    for task, key in (("classify", "accuracy"), ("segment", "iou")):
        pts = [r for r in rows if r["task"] == task and r["threads"] in (1, None)
               and (r.get("metrics") or {}).get(key) is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        models = sorted({r["model"] for r in pts})
        colors = {m: f"C{i}" for i, m in enumerate(models)}
        for r in pts:
            ax.scatter(r["latency_ms"]["median"], r["metrics"][key], color=colors[r["model"]],
                       marker=markers.get(r["format"].split("+")[0], "x"), s=60,
                       label=f"{r['model']} {r['format']}" + (f" ({r['machine'][:14]})" if many else ""))
        _log_x(ax)
        ax.set_xlabel("median latency, 1 thread (ms, log scale)")
        ax.set_ylabel(f"test {key}")
        ax.set_title(f"{key} vs latency (marker = format, colour = model)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        figs.append((f"{key.capitalize()} against latency", _laid_out(fig)))
    return figs


def _size_figures(rows: list[dict], fcolor: dict) -> list:
    """(title, figure) of each model file's size, one bar per model and format; none without sizes."""
    import matplotlib.pyplot as plt

    seen, sizes = set(), []
    for r in rows:
        k = (r["model"], r["format"])
        if k not in seen and r.get("size_bytes"):
            seen.add(k)
            sizes.append((f"{r['model']} · {r['format']}", r["size_bytes"] / 1e6, fcolor[r["format"]]))
    if not sizes:
        return []
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(sizes) + 1.3))
    _barh(ax, [s[0] for s in sizes], [s[1] for s in sizes], [s[2] for s in sizes], lambda v: f"{v:.2f} MB")
    ax.set_xlabel("file size (MB)")
    ax.set_title("Model file size per format", fontsize=10)
    return [("File size", _laid_out(fig))]


def _figures(results: list[dict]) -> list:
    """(title, matplotlib figure) of the latency, accuracy-vs-latency and size charts. Bars are
    horizontal, one per row, their labels on the left inside the figure: long names are never cut or
    rotated out of view."""
    import matplotlib.pyplot as plt

    rows = [r for r in _flat_rows(results) if r["status"] == "ok" and r.get("latency_ms")]
    if not rows:
        return []
    many = len({r["machine"] for r in rows}) > 1
    formats = sorted({r["format"] for r in rows})
    fcolor = {f: f"C{i % 10}" for i, f in enumerate(formats)}
    labels = [f"{r['model']} · {r['format']}" + (f" · {r['threads']} thr" if r.get("threads") else "")
              + (f" · {r['machine'][:24]}" if many else "")
              for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(rows) + 1.3))
    _barh(ax, labels, [r["latency_ms"]["median"] for r in rows], [fcolor[r["format"]] for r in rows],
          lambda v: f"{v:.2f}")
    _log_x(ax)
    ax.set_xlabel("median latency per frame (ms, log scale)")
    ax.set_title("Latency per model, format and thread count" + (" and machine" if many else ""), fontsize=10)
    return [("Latency", _laid_out(fig))] + _metric_figures(rows, many) + _size_figures(rows, fcolor)


_NUMBER = re.compile(r"^[-+]?(\d[\d.,]*|-)( ± [-+]?[\d.]+)?$")


def _inline(text: str) -> str:
    """A markdown line's text, escaped, its `code` spans as <code>."""
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(text.split("`")))


def _table(block: list[str]) -> str:
    """A markdown table (header, separator, rows) as an HTML table: numbers right-aligned, a row whose
    status is not ok marked."""
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
    sep = len(split) > 1 and all(c and set(c) <= set("-:") for c in split[1])  # the |---|---| line
    head, body = split[0], split[2:] if sep else split[1:]
    status = head.index("status") if "status" in head else None
    out = ["<div class='scroll'><table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"]
    for r in body:
        bad = status is not None and status < len(r) and r[status] != "ok"
        out.append(f"<tr{' class=bad' if bad else ''}>" + "".join(
            f"<td{' class=num' if _NUMBER.match(c) else ''}>{_inline(c)}</td>" for c in r) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


def md_html(md: str) -> str:
    """The report's markdown (headings, bullet lists, tables, paragraphs: what markdown() writes) as HTML."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        for lead, render in (("|", _table), ("- ", lambda b: "<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in b) + "</ul>")):
            if line.startswith(lead):
                j = i
                while j < len(lines) and lines[j].startswith(lead):
                    j += 1
                out.append(render(lines[i:j]))
                i = j
                break
        else:
            level = len(line) - len(line.lstrip("#"))
            if level and line[level:].startswith(" "):
                h = 2 if level <= 2 else level  # a model's section and the ratios alike, under the page's <h1>
                out.append(f"<h{h}>{_inline(line[level + 1:])}</h{h}>")
            elif line.strip():
                out.append(f"<p>{_inline(line)}</p>")
            i += 1
    return "\n".join(out)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:0 16px;color:#1d2330}"
          "h2{margin-top:1.6em;border-bottom:1px solid #ccd;padding-bottom:4px}code{font-size:90%;background:#f0f1f4;padding:0 3px}"
          ".scroll{overflow-x:auto;margin:8px 0 16px}table{border-collapse:collapse;font-size:13px}"
          "th,td{border:1px solid #d5d8de;padding:3px 7px}th{background:#eef0f4;white-space:nowrap;position:sticky;top:0}"
          "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}tbody tr:nth-child(even){background:#f8f9fb}"
          "tr.bad td{background:#fdecea}figure{margin:12px 0}figure img{max-width:100%;height:auto}"
          "figcaption{font-weight:600;margin-bottom:4px}")


def html_page(results: list[dict], md: str) -> str:
    """report.html: the tables of report.md as HTML tables, then the charts (inline PNGs: one file, offline)."""
    body = [f"<h1>edgebus benchmark report</h1><p>{len(results)} result file(s), "
            f"{len({_machine(r['machine']) for r in results})} machine(s).</p>", md_html(md)]
    plots = _plots(results)
    if plots:
        body.append("<h2>Charts</h2>")
    for name, data in plots:
        body.append(f'<figure><figcaption>{html.escape(name)}</figcaption><img alt="{html.escape(name)}" '
                    f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>')
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>edgebus benchmark</title>"
            f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")


_SAME_BENCH = ("run", "task", "model", "input_size", "data_fingerprint", "eval_split", "machine")


def _row_key(row: dict) -> tuple:
    return row.get("file"), row.get("threads"), row.get("xnnpack"), row.get("delegate")


def report_folder(targets) -> Path:
    """Where bench writes by default: the run (or pack) benchmarked, or the lone files' folder; lone
    files that live in a run folder report to its bench-files/ (the run's own report stays whole)."""
    first = Path(targets[0])
    if len(targets) == 1 and first.is_dir():
        return first
    return first.parent / "bench-files" if (first.parent / "manifest.json").is_file() else first.parent


def check_out(out_dir: str | Path, ident: dict) -> None:
    """Before any timing: `out_dir` can be written, and its report.json (if any) is of the same
    benchmark (`ident`: run), so merging keeps its rows instead of replacing them."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise EdgebusError(f"{out_dir}: is a link or a file; pick another {flag('out')}")
    check_writable(out_dir, f"pass {flag('out')} FOLDER for the report")
    old = out_dir / "report.json"
    if old.is_file():
        try:
            prev = read_json(old)
        except EdgebusError:
            return  # a torn or foreign file is replaced
        if isinstance(prev, dict) and prev.get("schema") == "edgebus.bench/1" and \
                any(prev.get(k) != v for k, v in ident.items()):
            raise EdgebusError(f"{old}: holds the benchmark of {prev.get('run') or prev.get('model')}; its rows would be "
                               f"lost: pass {flag('out')} FOLDER for this one")


def merge_bench(old, new: dict) -> dict:
    """One bench result from `new` and the rows of an earlier (or concurrent) bench of the same
    model on the same machine that `new` did not measure again: two benches of one run keep
    both sets of rows; a row measured again takes the new numbers."""
    if not isinstance(old, dict) or old.get("schema") != new.get("schema"):
        return new
    if any(old.get(k) != new.get(k) for k in ("run", "model")):  # another benchmark's rows are never dropped
        raise EdgebusError(f"report.json: holds the benchmark of {old.get('run') or old.get('model')}; pass "
                           f"{flag('out')} FOLDER")
    if any(old.get(k) != new.get(k) for k in _SAME_BENCH):  # the same files measured again elsewhere: replaced
        return new
    keys = {_row_key(r) for r in new["rows"]}
    return {**new, "rows": [r for r in old.get("rows", []) if _row_key(r) not in keys] + new["rows"]}


def write_report(result_or_results, out_dir: str | Path) -> tuple[Path, Path]:
    """report.md + report.json (+ report.html) into out_dir; a list of results is merged. One
    result is merged, under the folder's lock, with the rows a bench of the same model on this
    machine already wrote there (merge_bench)."""
    out_dir = make_dir(out_dir, flag("out"))
    with locked(out_dir):
        if isinstance(result_or_results, list):
            results = result_or_results
            obj = {"schema": "edgebus.report/1", "results": results, "ratios": ratios(results)}
        else:
            old = None
            if (out_dir / "report.json").is_file():
                try:
                    old = read_json(out_dir / "report.json")
                except EdgebusError:
                    old = None  # a torn or foreign file is replaced, not merged
            obj = merge_bench(old, json.loads(json.dumps(result_or_results, default=json_default)))
            results = [obj]
        md_text = markdown(results)
        md = atomic_write(out_dir / "report.md", md_text)
        js = write_json(out_dir / "report.json", obj)
        atomic_write(out_dir / "report.html", html_page(results, md_text))
    return md, js


def load_results(paths) -> list[dict]:
    """Bench result JSON files (or merged reports) -> a flat list of results."""
    results = []
    for p in map(Path, paths):
        obj = read_json(p)
        if obj.get("schema") == "edgebus.bench/1":
            results.append(obj)
        elif obj.get("schema") == "edgebus.report/1":
            results.extend(obj["results"])
        else:
            raise EdgebusError(f"{p}: not an edgebus benchmark result (no schema edgebus.bench/1); pass a report.json from 'edgebus bench'")
    return results
