"""Benchmark results -> report.md + report.json."""

from __future__ import annotations

from pathlib import Path

from edgebus.rundir import write_json, atomic_write


def _f(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# edgebus benchmark: {result['model']} ({result['task']}, {result['input_size'][0]}x{result['input_size'][1]})",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, {m['os']}",
        f"- interpreter: {m['interpreter']}; python {m['python']}, numpy {m['numpy']}, edgebus {m['edgebus']}",
        f"- evaluated on the run's {result['eval_split']['name']} split, n={result['eval_split']['n']}; "
        f"Keras float reference: " + ", ".join(f"{k} {_f(v, 3)}" for k, v in result["keras_reference"].items()),
        f"- run: `{result['run']}`; created {result['created']}",
        "",
    ]
    keys = list(result["keras_reference"])
    head = ["format", "threads", "XNNPACK", "status", "size MB", "load ms", "first ms", "median ms", "p90 ms", "mean ± std ms", "FPS"]
    head += keys + [f"Δ{k}" for k in keys]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        lat = r.get("latency_ms") or {}
        met = r.get("metrics") or {}
        delta = r.get("delta_vs_keras") or {}
        cells = [r.get("format", r["file"]), str(r["threads"]), {True: "on", False: "off"}.get(r.get("xnnpack"), "-"), r["status"],
                 _f((r["size_bytes"] or 0) / 1e6), _f(r.get("load_ms"), 1), _f(r.get("first_ms"), 1),
                 _f(lat.get("median")), _f(lat.get("p90")),
                 f"{_f(lat.get('mean'))} ± {_f(lat.get('std'))}" if lat else "-", _f(r.get("fps"), 1)]
        cells += [_f(met.get(k), 3) for k in keys] + [_f(delta.get(k), 3) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['file']} ({r['threads']} threads): {r['error']}" for r in result["rows"] if r["error"]]
    notes += [f"- {r['file']} ({r['threads']} threads): XNNPACK refused the graph, built-in kernels timed ({r['xnnpack_error']})"
              for r in result["rows"] if r.get("xnnpack_error")]
    if notes:
        lines += ["", "Notes:"] + notes
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    md = atomic_write(out_dir / "report.md", markdown(result))
    js = write_json(out_dir / "report.json", result)
    return md, js
