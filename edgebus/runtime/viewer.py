"""index.html of a predictions folder: every frame with its overlay, call and warnings on one static page.

The page is self-contained (inline CSS and JS, no network, no server), so it works opened with
file:// from the folder itself, on a cart or from a USB stick. Overlays are linked, not inlined,
relative to the page (overlays/<name>.png), so the page stays small and the folder can be moved.
Every string from the rows is HTML-escaped: a file name is data, never markup."""

from __future__ import annotations

import html
import math
from pathlib import Path, PurePath
from urllib.parse import quote

from edgebus.core.errors import EdgebusError
from edgebus.core.io import atomic_write
from edgebus.runtime.frames import printable

VIEWER_FILE = "index.html"
ERROR_LABEL = "error"


def _text(value) -> str:
    """`value` as valid UTF-8 text, odd bytes of a file name as backslash escapes (as in the log and the CSV)."""
    return printable(str(value))


def _e(value) -> str:
    """Escaped for HTML text and quoted attributes alike."""
    return html.escape(_text(value), quote=True)


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(v, nd: int = 3) -> str:
    v = _num(v)
    return "-" if v is None else f"{v:.{nd}f}"


def _label(row: dict) -> str:
    """The filter's label: the frame's call, or "error" for a failed frame."""
    if row.get("error") is not None:
        return ERROR_LABEL
    return _text(row.get("label") or "no label")


def _overlay_href(row: dict) -> str | None:
    """The overlay's link relative to index.html, its name percent-encoded as the bytes on disk (a
    name with '#', '?' or non-UTF-8 bytes still opens the right file)."""
    ov = row.get("overlay")
    if not ov:
        return None
    return "overlays/" + quote(PurePath(ov).name, errors="surrogateescape")


def _presence(lesion) -> str | None:
    """The presence rule's decision in words, where the cart has such a rule."""
    if not isinstance(lesion, dict):
        return None
    word = "lesion present" if lesion.get("present") else "no lesion"
    score, thr = _num(lesion.get("score")), _num(lesion.get("threshold"))
    if score is None:
        return word
    return f"{word} (score {score:.3f} {'>=' if lesion.get('present') else '<'} {_fmt(thr)})"


def _card(i: int, row: dict) -> str:
    """One frame: overlay, name, call, probability against threshold, and everything that qualifies it."""
    file = row.get("file") or "?"
    name = PurePath(file).name or file
    if (row.get("frames") or 1) > 1 and row.get("frame") is not None:
        name = f"{name} (frame {row['frame']})"
    label, prob = _label(row), _num(row.get("prob_malignant"))
    href = _overlay_href(row)
    img = (f'<a href="{href}" target="_blank"><img loading="lazy" src="{href}" alt="overlay of {_e(name)}"></a>'
           if href else '<div class="noimg">no overlay</div>')
    lesion_free = isinstance(row.get("lesion"), dict) and not row["lesion"].get("present")
    raw = _num(row.get("prob_raw"))
    calibrated = raw is not None and raw != prob  # the threshold applies to the model output, not the calibrated number
    facts = [("probability" + (" (audit only)" if lesion_free else " (calibrated)" if calibrated else ""), _fmt(prob))]
    if calibrated:
        facts.append(("model output", _fmt(raw)))
    facts.append(("threshold" + (" (on model output)" if calibrated else ""), _fmt(row.get("threshold"))))
    if _presence(row.get("lesion")):
        facts.append(("presence", _presence(row.get("lesion"))))
    if row.get("mask_area_px") is not None:
        mm2 = _num(row.get("mask_area_mm2"))
        facts.append(("lesion area", "none segmented" if not row["mask_area_px"] else
                      f"{mm2:.1f} mm²" if mm2 is not None else f"{row['mask_area_px']} px"))
        width, height = _num(row.get("lesion_width_mm")), _num(row.get("lesion_height_mm"))
        if row["mask_area_px"] and width is not None and height is not None:
            facts.append(("lesion size", f"{width:.1f} × {height:.1f} mm (width × anteroposterior height)"))
    if row.get("findings"):
        facts.append(("findings", row["findings"]))
    if row.get("gates"):
        facts.append(("gates", row["gates"]))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    warnings = row.get("warnings") or []
    if isinstance(warnings, str):
        warnings = [warnings]
    warn = ("<ul class='warn'>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>") if warnings else ""
    err = f"<p class='err'>{_e(row['error'])}</p>" if row.get("error") is not None else ""
    thr, shown = _num(row.get("threshold")), raw if calibrated else prob
    tick = f"<i style='left:{min(max(thr, 0), 1) * 100:.1f}%' title='threshold'></i>" if thr is not None else ""
    bar = (f"<div class='bar {_css(label)}'><span style='width:{min(max(shown, 0), 1) * 100:.1f}%'></span>{tick}</div>"
           if shown is not None else "")  # what the threshold (the tick) applies to, coloured by the call
    return (f"<article class='card' data-i='{i}' data-name='{_e(name)}' data-prob='{'' if prob is None else prob}' "
            f"data-label='{_e(label)}'>{img}<h3 class='name' title='{_e(file)}'>{_e(name)}</h3>"
            f"<span class='label {_css(label)}'>{_e(label)}</span>{bar}<dl>{dl}</dl>{warn}{err}</article>")


def _css(label: str) -> str:
    return {"malignant": "mal", "benign": "ben", ERROR_LABEL: "bad"}.get(label, "other")


def _models(models) -> str:
    """One line per model of the cart: role, name, file and what decides its call."""
    items = []
    for role, d in (models or {}).items():
        d = d if isinstance(d, dict) else {"": d}
        parts = [d.get("model"), PurePath(d["file"]).name if d.get("file") else None, d.get("format"),
                 f"threshold {_fmt(d['threshold'])}" if _num(d.get("threshold")) is not None else None,
                 f"gates {d['gates']}" if d.get("gates") else None]
        items.append(f"<li><b>{_e(role)}</b>: {_e(', '.join(str(p) for p in parts if p) or '-')}</li>")
    return "<ul class='models'>" + "".join(items) + "</ul>" if items else ""


def _header(rows: list[dict], summary: dict) -> str:
    fps = (summary.get("fps") or {}).get("wall")
    facts = [("frames", summary.get("frames", len(rows))), ("ok", summary.get("ok")), ("failed", summary.get("failed")),
             ("frames/s (wall clock)", "-" if _num(fps) is None else f"{_num(fps):.2f}")]
    if summary.get("resumed"):
        facts.append(("resumed", summary["resumed"]))
    stats = "".join(f"<div><span>{_e(k)}</span><b>{_e('-' if v is None else v)}</b></div>" for k, v in facts)
    return f"<header><h1>edgebus predictions</h1><div class='stats'>{stats}</div>{_models(summary.get('models'))}</header>"


def _controls(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[_label(r)] = counts.get(_label(r), 0) + 1
    buttons = [f"<button class='filter' data-label='' aria-pressed='true'>all ({len(rows)})</button>"]
    buttons += [f"<button class='filter' data-label='{_e(k)}' aria-pressed='false'>{_e(k)} ({n})</button>"
                for k, n in sorted(counts.items())]
    return ("<nav><label>sort <select id='sort'><option value='order'>as predicted</option>"
            "<option value='name'>name A-Z</option><option value='name-desc'>name Z-A</option>"
            "<option value='prob-desc'>probability high-low</option><option value='prob'>probability low-high</option>"
            f"</select></label> <span class='filters'>{''.join(buttons)}</span> "
            f"<span id='count'>{len(rows)} of {len(rows)} frames</span></nav>")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px}h1{margin:0 0 8px;font-size:20px}
.stats{display:flex;gap:24px;flex-wrap:wrap}.stats span{display:block;font-size:12px;opacity:.7}.stats b{font-size:20px}
.models{margin:8px 0 0;padding-left:18px;font-size:13px;opacity:.9}
nav{position:sticky;top:0;background:#fff;padding:8px 20px;border-bottom:1px solid #ccd;z-index:1;
display:flex;gap:12px;align-items:center;flex-wrap:wrap}
button.filter{border:1px solid #99a;background:#fff;border-radius:14px;padding:3px 10px;cursor:pointer}
button.filter[aria-pressed=true]{background:#1d2330;color:#fff}#count{font-size:13px;color:#556}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;padding:14px 20px}
.card{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 3px #0002;overflow-wrap:anywhere}
.card img,.noimg{width:100%;aspect-ratio:4/3;object-fit:contain;background:#000;display:block;border-radius:4px}
.noimg{background:#e3e5ea;color:#556;display:flex;align-items:center;justify-content:center;font-size:13px}
h3{font-size:14px;margin:8px 0 4px}.label{display:inline-block;border-radius:4px;padding:1px 8px;font-size:13px;color:#fff}
.label.mal{background:#c0392b}.label.ben{background:#2e7d32}.label.bad{background:#6d214f}.label.other{background:#607080}
.bar{position:relative;height:6px;background:#e3e5ea;border-radius:3px;margin:6px 0}.bar span{display:block;height:100%;border-radius:3px}.bar i{position:absolute;top:-3px;width:2px;height:12px;background:#1d2330}
.bar.mal span{background:#c0392b}.bar.ben span{background:#2e7d32}.bar.other span{background:#8a96a8}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;font-size:13px;margin:6px 0}dt{color:#667}dd{margin:0}
.warn{background:#fff4d6;border-left:3px solid #e0a800;margin:6px 0;padding:4px 8px 4px 24px;font-size:13px}
.err{background:#fde8e8;border-left:3px solid #c0392b;margin:6px 0;padding:4px 8px;font-size:13px}
"""

_SCRIPT = """
(function(){
const main=document.querySelector('main'),cards=Array.from(main.children),count=document.getElementById('count');
let label='';
function num(c){const p=c.dataset.prob;return p===''?null:parseFloat(p);}
function sort(){
  const how=document.getElementById('sort').value,byName=(a,b)=>a.dataset.name.localeCompare(b.dataset.name);
  const byProb=(a,b,s)=>{const x=num(a),y=num(b);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;return s*(x-y);};
  const cmp={order:()=>0,name:byName,'name-desc':(a,b)=>-byName(a,b),prob:(a,b)=>byProb(a,b,1),'prob-desc':(a,b)=>byProb(a,b,-1)}[how];
  cards.slice().sort((a,b)=>cmp(a,b)||a.dataset.i-b.dataset.i).forEach(c=>main.appendChild(c));
}
function filter(){
  let n=0;cards.forEach(c=>{const show=!label||c.dataset.label===label;c.hidden=!show;n+=show;});
  count.textContent=n+' of '+cards.length+' frames'+(label?' ('+label+')':'');
}
document.getElementById('sort').addEventListener('change',sort);
document.querySelectorAll('button.filter').forEach(b=>b.addEventListener('click',()=>{
  label=b.dataset.label;document.querySelectorAll('button.filter').forEach(x=>x.setAttribute('aria-pressed',String(x===b)));filter();
}));
})();
"""


def viewer_html(rows: list[dict], summary: dict) -> str:
    """The page for `rows` (as in predictions.jsonl) and a predict summary."""
    cards = "\n".join(_card(i, r) for i, r in enumerate(rows))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'><title>edgebus predictions</title>"
            f"<style>{_STYLE}</style></head><body>{_header(rows, summary)}{_controls(rows)}"
            f"<main>\n{cards}\n</main><script>{_SCRIPT}</script></body></html>\n")


def write_viewer(out_dir: str | Path, rows: list[dict], summary: dict) -> Path:
    """Write out_dir/index.html (atomically: a killed run never leaves half a page); returns its path."""
    path = Path(out_dir) / VIEWER_FILE
    try:
        return atomic_write(path, viewer_html(rows, summary))
    except OSError as e:
        raise EdgebusError(f"{path}: cannot write the viewer ({e.strerror or e}); check the output folder") from None
