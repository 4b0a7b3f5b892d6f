"""The predictions viewer (edgebus.runtime.viewer, index.html of `edgebus predict --out`): one row per
frame with names escaped, in a real headless Chromium opened via file:// (every frame shown, filters,
sorting, no script from a file name, no console error), and predict_files writing it.

Set EDGEBUS_VIEWER_SCREENSHOT=docs/viewer.png to also save the browser test's page as that PNG."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IMAGES = "BrEaST-Lesions_USG-images_and_masks"
EVIL = "<img src=x onerror=\"window.pwned=1\"> 'q' <script>window.pwned=2 é超声"  # no '/': a file name
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODELS = {"classifier": {"file": "/cart/classifier.tflite", "model": "efficientnet-lite0", "format": "int8",
                         "threshold": 0.2161, "gates": "passed"},
          "segmenter": {"file": "/cart/segmenter.tflite", "model": "unet-lite0", "format": "int8", "gates": "passed"},
          "presence": {"threshold": 0.4, "rule": "lesion map evidence"}}


def _frames(data: Path, n: int) -> list[Path]:
    return sorted(p for p in (data / IMAGES).glob("case*.png") if "_" not in p.stem)[:n]


def _overlay(gray: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """A frame with a red lesion outline (the look of runtime.overlay, without depending on it)."""
    img = np.repeat(gray[..., None], 3, axis=2)
    if mask is not None and mask.any():
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        img[edge] = (255, 40, 40)
    return Image.fromarray(img)


def _rows(data: Path, out: Path, n: int = 12) -> tuple[list[dict], dict]:
    """`n` rows as predict_files writes them, overlays under out/overlays: a failed frame, a lesion-free
    one, a hostile non-ASCII name, a name with '#', rows with warnings."""
    (out / "overlays").mkdir(parents=True)
    rows = []
    for i, f in enumerate(_frames(data, n)):
        stem = {0: EVIL, 1: "case #2 (left)"}.get(i, f.stem)
        gray = np.asarray(Image.open(f).convert("L"))
        tumor = f.with_name(f"{f.stem}_tumor.png")
        mask = np.asarray(Image.open(tumor).convert("L")) > 0 if tumor.exists() else None
        p = round(0.05 + 0.9 * ((i * 7) % 12) / 11, 4)  # distinct, not in file order
        row = {"file": str(Path("/media/usb/scan") / f"{stem}.png"), "width": gray.shape[1], "height": gray.shape[0],
               "lesion": {"present": True, "score": 0.9, "threshold": 0.4}, "prob_malignant": p, "prob_raw": p,
               "label": "malignant" if p >= 0.2161 else "benign", "threshold": 0.2161,
               "findings": "irregular shape, not circumscribed margin" if p >= 0.5 else "oval shape, circumscribed margin",
               "mask_area_px": int(mask.sum()) if mask is not None else 0, "mask_area_mm2": None,
               "gates": "classifier passed, segmenter passed", "error": None, "mask_file": None}
        if i == 3:  # the presence rule: no lesion (the probability stays, for audit)
            row.update(label="no lesion found", lesion={"present": False, "score": 0.12, "threshold": 0.4},
                       findings=None, mask_area_px=None)
            mask = None
        if i in (2, 5):
            row["warnings"] = ["the model was trained on synthetic frames: not for clinical use",
                               "pixel size not given: lesion area in pixels only"]
        if i == 4:  # a failed frame: no probability, no overlay
            row = {"file": str(Path("/media/usb/scan") / "corrupt.png"), "prob_malignant": None, "label": None,
                   "threshold": None, "error": "corrupt.png: not a readable image (truncated PNG); replace or remove it",
                   "gates": "classifier passed, segmenter passed", "overlay": None}
        else:
            ov = out / "overlays" / f"{stem}.png"
            _overlay(gray, mask).save(ov)
            row["overlay"] = str(ov)
        rows.append(row)
    ok = sum(r["error"] is None for r in rows)
    summary = {"frames": len(rows), "ok": ok, "failed": len(rows) - ok, "resumed": 0,
               "fps": {"wall": 7.41, "inference": 21.3, "pipeline": 11.9}, "models": MODELS}
    return rows, summary


def _name(row: dict) -> str:
    return Path(row["file"]).name


def _label(row: dict) -> str:
    return "error" if row["error"] else row["label"]


def test_one_row_per_frame_and_names_escaped(synthetic_breast_dir, tmp_path):
    from edgebus.runtime.viewer import write_viewer

    rows, summary = _rows(synthetic_breast_dir, tmp_path)
    rows.append({"file": "caf\udce9 #1?.png", "error": None, "label": "benign", "prob_malignant": 0.1,
                 "overlay": str(tmp_path / "overlays" / "caf\udce9 #1?.png")})  # a name that is not UTF-8 on disk
    rows.append({"file": "calibrated.png", "error": None, "label": "malignant", "prob_malignant": 0.12, "prob_raw": 0.3,
                 "threshold": 0.2, "overlay": None})  # the threshold applies to the model output, not the calibrated number
    rows.append({"file": "sized.png", "error": None, "label": "benign", "prob_malignant": 0.1, "mask_area_px": 900,
                 "mask_area_mm2": 9.0, "lesion_width_mm": 4.0, "lesion_height_mm": 2.5, "overlay": None})
    page = write_viewer(tmp_path, rows, summary)
    assert page == tmp_path / "index.html"
    text = page.read_text(encoding="utf-8")  # valid UTF-8 whatever the names
    assert text.count("<article ") == len(rows)
    assert "<img src=x" not in text and "<script>window" not in text
    assert "&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt; &#x27;q&#x27; &lt;script&gt;" in text
    assert "overlays/case%20%232%20%28left%29.png" in text  # '#' would cut the link
    assert "caf\\xe9 #1?.png" in text and "overlays/caf%E9%20%231%3F.png" in text
    assert "corrupt.png: not a readable image" in text and "pixel size not given" in text
    calibrated = text[text.index("data-name='calibrated.png'"):].split("</article>")[0]
    assert "width:30.0%" in calibrated and "left:20.0%" in calibrated and "<dd>0.300</dd>" in calibrated
    assert "probability (calibrated)" in calibrated and "threshold (on model output)" in calibrated
    sized = text[text.index("data-name='sized.png'"):].split("</article>")[0]
    assert "9.0 mm²" in sized and "4.0 × 2.5 mm (width × anteroposterior height)" in sized
    assert "http://" not in text and "https://" not in text  # nothing to fetch: works offline
    assert not list(tmp_path.glob(".index.html.*"))  # written atomically, no temp file left


def test_predict_files_writes_the_viewer(synthetic_breast_dir, tmp_path):
    """predict_files (with a stand-in pipeline: no model needed) writes index.html and names it in summary.json."""
    from edgebus.runtime.batch import predict_files

    class Pipe:
        segmenter = None

        def describe(self):
            return {"classifier": {"file": "c.tflite", "model": "stand-in", "threshold": 0.5}}

        def predict_with_frame(self, f, px=None, name=None):
            res = {"file": name, "label": "benign", "prob_malignant": 0.25, "prob_raw": 0.25, "threshold": 0.5,
                   "lesion": None, "findings": None, "mask": None, "mask_area_px": None, "mask_area_mm2": None,
                   "bbox": None, "error": None, "latency_ms": {"invoke": 1.0, "total": 2.0}, "warnings": ["stand-in"]}
            try:
                return res, np.asarray(Image.open(f).convert("L"))
            except OSError:
                return {**res, "prob_malignant": None, "label": None, "error": f"{Path(f).name}: not a readable image"}, None

    frames = _frames(synthetic_breast_dir, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "pred"
    summary = predict_files(Pipe(), frames + [bad], out, log=lambda line: None)
    page = out / "index.html"
    assert summary["viewer"] == str(page)
    assert json.loads((out / "summary.json").read_text())["viewer"] == str(page)
    text = page.read_text()
    assert text.count("<article ") == 3 and "bad.png: not a readable image" in text
    for f in frames:
        assert f"overlays/{f.stem}.png" in text and (out / "overlays" / f"{f.stem}.png").is_file()


def _chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.skip("no system Chromium (apt-get install chromium): the viewer's browser test needs one")
    return exe


def test_viewer_in_headless_chromium(synthetic_breast_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    exe = _chromium()
    from edgebus.runtime.viewer import write_viewer

    rows, summary = _rows(synthetic_breast_dir, tmp_path)
    page_file = write_viewer(tmp_path, rows, summary)
    problems = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
            page.goto(page_file.as_uri(), wait_until="load")
            cards = page.locator("article.card")
            assert cards.count() == len(rows)
            assert page.locator("article.card h3").all_text_contents() == [_name(r) for r in rows]
            assert page.evaluate("window.pwned") is None  # the name's markup never ran
            assert page.locator("article.card h3").first.text_content() == EVIL + ".png"
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator("img").count() == sum(r.get("overlay") is not None for r in rows)
            head = page.locator("header").inner_text()
            assert "7.41" in head and "efficientnet-lite0" in head and "unet-lite0" in head
            failed = page.locator("article.card[data-label='error']")
            assert "not a readable image" in failed.inner_text()

            labels = sorted({_label(r) for r in rows})
            assert {"benign", "malignant", "no lesion found", "error"} <= set(labels)
            for label in labels:
                n = sum(_label(r) == label for r in rows)
                button = page.locator("button.filter", has_text=label)
                assert button.inner_text() == f"{label} ({n})"
                button.click()
                shown = page.locator("article.card:not([hidden])")
                assert shown.count() == n
                assert set(shown.evaluate_all("cs => cs.map(c => c.dataset.label)")) == {label}
                assert page.locator("#count").inner_text().startswith(f"{n} of {len(rows)} frames")
            page.locator("button.filter", has_text="all").click()
            assert page.locator("article.card:not([hidden])").count() == len(rows)

            page.select_option("#sort", "prob-desc")
            probs = page.locator("article.card").evaluate_all("cs => cs.map(c => c.dataset.prob)")
            want = sorted((r["prob_malignant"] for r in rows if r["prob_malignant"] is not None), reverse=True)
            assert [float(p) for p in probs if p] == want and probs[-1] == ""  # the failed frame last
            page.select_option("#sort", "prob")
            probs = page.locator("article.card").evaluate_all("cs => cs.map(c => c.dataset.prob)")
            assert [float(p) for p in probs if p] == want[::-1]
            page.select_option("#sort", "name")
            assert page.locator("article.card").evaluate_all(
                "cs => cs.every((c, i) => i == 0 || cs[i - 1].dataset.name.localeCompare(c.dataset.name) <= 0)")
            if os.environ.get("EDGEBUS_VIEWER_SCREENSHOT"):
                _screenshot(page, rows, summary, tmp_path, Path(os.environ["EDGEBUS_VIEWER_SCREENSHOT"]))
        finally:
            browser.close()
    assert problems == []


def _screenshot(page, rows: list[dict], summary: dict, out: Path, path: Path) -> None:
    """The page (the hostile names replaced by plain ones) as a small PNG for the docs (128 colours: about 160 KB)."""
    from edgebus.runtime.viewer import write_viewer

    plain = [{**r, "file": f"/media/usb/scan/case{i + 1:03d}.png"} if i < 2 else r for i, r in enumerate(rows)]
    page.set_viewport_size({"width": 1200, "height": 1240})
    page.goto(write_viewer(out, plain, summary).as_uri(), wait_until="load")
    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    Image.open(raw).convert("RGB").quantize(128, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    raw.unlink()
