"""A site's own threshold on a copy of the cart (`edgebus site-threshold CART SITE_CHECK --out DIR`).

A threshold chosen out of fold on BrEaST can miss at another hospital's scanner (issue #12: a promised
0.90 caught about 40% of cancers). When `edgebus site-check` says so, the cure it names is a threshold
chosen on the site's own labelled cases. This writes a copy of the cart carrying that threshold
(site.json, its sha256 in bundle.json, the site check's report beside it). The shipped cart is never
changed, so the choice is undone by using it again, and every prediction of the copy records the
threshold that made its call. The shown probability is recalibrated on the same cases in the large
(its logit moved by one number, the slope kept: the usual update of a prediction model at a new centre
on few cases), since calibration moves with the scanner (on BrEaST's unseen scanner settings a Platt
step fitted on the others made it worse, training/results/robustness.md). Only a site where the shipped
threshold misses its target (`edgebus site-check`'s verdict) with at least MIN_CHOOSE labelled cancers
gets one: elsewhere a locally chosen threshold does worse than the shipped one. Both are in-sample
(chosen and scored on the same cases): confirm them with a site check of further cases. No TensorFlow:
this runs on the cart."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import atomic_write, read_json, sha256_file, write_json
from edgebus.runtime.batch import model_identity
from edgebus.core.io import staging
from edgebus.runtime.bundle import BUNDLE_JSON, SITE_FILE, read_bundle, replaceable
from edgebus.runtime.pipeline import LesionPipeline

# malignant cases a site must label before a threshold is chosen on them: with 20 or 30 the chosen threshold
# caught under 75% of later cancers in 1 split in 20 (benchmarks/results/site-threshold.md); with 50, 77%
MIN_CHOOSE = 50


def _site_check(path: str | Path) -> tuple[Path, dict]:
    p = Path(path)
    p = p / "site_check.json" if p.is_dir() else p
    if not p.is_file():
        raise EdgebusError(f"{p}: not found; pass the folder 'edgebus site-check' wrote (PREDICTIONS/site-check unless "
                           f"{flag('out')} named another)")
    r = read_json(p)
    if not isinstance(r, dict) or r.get("schema") != "edgebus.site_check/1" or "local" not in r:
        raise EdgebusError(f"{p}: not a site check of this edgebus; make one with 'edgebus site-check PREDICTIONS "
                           f"{flag('data')} DIR'")
    if not r.get("models"):
        raise EdgebusError(f"{p}: does not record which cart made its predictions (an older site check); re-run "
                           f"'edgebus site-check ... {flag('overwrite')}'")
    return p, r


def adopt_site_threshold(cart: str | Path, site_check: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Copy `cart` to `out` with the threshold the site check's cases chose; returns the site record."""
    cart, out = Path(cart), Path(out)
    check_path, r = _site_check(site_check)
    if r.get("verdict_kind") != "misses":
        raise EdgebusError(f"{check_path}: the shipped threshold does not miss its target here ({r['verdict'].split(':')[0]}); "
                           "keep the shipped cart: a threshold chosen on a site's few cases does worse where the shipped "
                           "one holds (benchmarks/results/site-threshold.md)")
    if r["malignant"] < MIN_CHOOSE:
        raise EdgebusError(f"{check_path}: {r['malignant']} malignant cases, fewer than {MIN_CHOOSE}: too few to "
                           "choose a threshold on; label more cases and run the site check again")
    if not (cart / BUNDLE_JSON).is_file():
        raise EdgebusError(f"{cart}: not a cart bundle (no {BUNDLE_JSON}); make one with 'edgebus bundle'")
    if out.resolve() == cart.resolve():
        raise EdgebusError(f"{out}: is the shipped cart; write the site's copy to another {flag('out')} (the shipped "
                           "one stays)")
    replaceable(out, overwrite)
    pipeline = LesionPipeline.from_bundle(cart)
    if pipeline.classifier is None:
        raise EdgebusError(f"{cart}: has no classifier; a site threshold applies to the malignancy call")
    if model_identity(pipeline) != r["models"]:
        raise EdgebusError(f"{check_path}: scores predictions made with other models than {cart}'s; predict the site's "
                           f"cases with this cart (edgebus predict {flag('bundle')} {cart} ...) and check them again")
    local = r["local"]
    site = {"schema": "edgebus.site/1", "threshold": float(local["threshold"]), "threshold_ci": local["threshold_ci"],
            "target_sensitivity": r["target_sensitivity"], "shipped_threshold": r["threshold"],
            "calibration": local.get("calibration"),  # on the site's cases: applied to what the cart shows
            "in_sample": {"sensitivity": local["sensitivity"], "specificity": local["specificity"],
                          "ece": local.get("ece")},
            "chosen_on": {"site_check": str(check_path.resolve()), "sha256": sha256_file(check_path), "data": r["data"],
                          "n": r["n"], "malignant": r["malignant"], "benign": r["benign"], "verdict": r["verdict"]},
            "note": "chosen and scored on the same cases (in-sample): confirm it with a site check of further cases"}
    record = read_bundle(cart)
    with staging(out) as tmp:  # the copy is built aside and renamed into place complete
        for p in sorted(cart.iterdir()):  # the cart's files as they are (their sha256 stay in bundle.json)
            if p.is_file() and not p.is_symlink() and p.name not in (BUNDLE_JSON, SITE_FILE, "site_check.md"):
                atomic_write(tmp / p.name, p.read_bytes())
        if (check_path.parent / "site_check.md").is_file():  # the evidence travels with the threshold
            atomic_write(tmp / "site_check.md", (check_path.parent / "site_check.md").read_bytes())
        write_json(tmp / SITE_FILE, site)
        record["site"] = {"file": SITE_FILE, "sha256": sha256_file(tmp / SITE_FILE), "threshold": site["threshold"],
                          "copied_from_cart": str(cart.resolve())}
        write_json(tmp / BUNDLE_JSON, record)  # last
    return site
