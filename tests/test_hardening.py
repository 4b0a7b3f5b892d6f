"""Issue 32: no write through a link on a results file, one writer per output folder, readers that
refuse duplicate rows, and nothing trusted that a folder hands in (operating points, bundles,
predictions). Each test plants the fault and asserts it was refused, and that nothing outside was
touched."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgebus.core.errors import EdgebusError
from edgebus.core.io import append_jsonl, one_writer, read_jsonl, repair_jsonl, sha256_file
from tests.conftest import TINY_RECIPE, cli, copy_run, manifest, one_line_error

IMAGES = "BrEaST-Lesions_USG-images_and_masks"


def _frames(data: Path, n: int) -> list[Path]:
    return sorted(p for p in (data / IMAGES).glob("case*.png") if "_" not in p.stem)[:n]


@pytest.fixture(scope="module")
def cls_file(cart_models):
    """A tiny exported int8 classifier (conftest.cart_models: not written into here)."""
    return cart_models["cls_file"]


@pytest.fixture(scope="module")
def cv(tiny_cv):
    return tiny_cv


# ---- 1. results files are never written through a link -------------------------------------------

def test_core_io_refuses_links_on_append_repair_and_lock(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b'{"a":1}\n{"a":2')  # a file without a final newline: a repair would cut it
    link = tmp_path / "r.jsonl"
    link.symlink_to(outside)
    with pytest.raises(EdgebusError, match="symbolic link"):
        append_jsonl(link, {"a": 3})
    with pytest.raises(EdgebusError, match="symbolic link"):
        repair_jsonl(link)
    assert outside.read_bytes() == b'{"a":1}\n{"a":2'
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".edgebus.writer").symlink_to(tmp_path / "planted")
    with pytest.raises(EdgebusError, match="symbolic link"):
        with one_writer(tmp_path / "o"):
            pass
    assert not (tmp_path / "planted").exists()


def test_predict_refuses_a_linked_predictions_file(cls_file, synthetic_breast_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "predictions.jsonl").symlink_to(tmp_path / "x.jsonl")
    one_line_error(cli("predict", "--classifier", cls_file, _frames(synthetic_breast_dir, 1)[0], "--out", out),
                   "predictions.jsonl", "symbolic link")
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("kind", ["grid", "cv"])
def test_grid_and_cv_refuse_a_linked_results_file(kind, synthetic_breast_dir, tmp_path):
    """A grid / CV folder stopped after its first unit, whose results file is then swapped for a link
    to a file outside (without a final newline: a torn-line repair would cut it): resuming refuses."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / kind
    args = ["grid", "--recipe", recipe] if kind == "grid" else ["cv", "classify", "--recipe", recipe]
    args += ["--data", synthetic_breast_dir, "--out", out, "--quiet"]
    p = subprocess.run([sys.executable, "-m", "edgebus", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "EDGEBUS_EXIT_AFTER_UNITS": "1"}, timeout=600)
    assert p.returncode == 75, p.stderr[-2000:]  # stopped by the hook after its first unit, as planned
    name = "cells.jsonl" if kind == "grid" else "folds.jsonl"
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes((out / name).read_bytes() + b'{"torn"')
    (out / name).unlink()
    (out / name).symlink_to(outside)
    before = outside.read_bytes()
    one_line_error(cli(*args), name, "symbolic link")
    assert outside.read_bytes() == before


# ---- 2. one writer per output folder; duplicates are refused by every reader --------------------

def _hold(folder: Path):
    """Another process holding `folder` as its output folder, until it is killed."""
    p = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom edgebus.core.io import one_writer\n"
                          f"with one_writer({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_gets_one_line_naming_the_first(cls_file, synthetic_breast_dir, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    for name, args in (("predict", ("predict", "--classifier", cls_file, _frames(synthetic_breast_dir, 2)[0])),
                       ("grid", ("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--quiet")),
                       ("cv", ("cv", "classify", "--recipe", recipe, "--data", synthetic_breast_dir, "--quiet")),
                       ("train", ("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn",
                                  "--size", 32, "--epochs", 1, "--quiet"))):
        out = tmp_path / name
        out.mkdir()
        holder = _hold(out)
        try:
            one_line_error(cli(*args, "--out", out), "another edgebus is writing there", f"pid {holder.pid}")
        finally:
            holder.kill()
            holder.wait()
        assert {p.name for p in out.iterdir()} <= {".edgebus.writer", ".edgebus.lock"}  # nothing written
    # the holder is gone (killed): the lock went with it, the folder is usable
    r = cli("predict", "--classifier", cls_file, _frames(synthetic_breast_dir, 1)[0], "--out", tmp_path / "predict")
    assert r.exit_code == 0, r.output


def test_two_predicts_at_once_write_each_frame_once(cls_file, synthetic_breast_dir, tmp_path):
    frames = synthetic_breast_dir / IMAGES
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "edgebus", "predict", "--classifier", str(cls_file), str(frames), "--out", str(out),
           "--no-overlays", "--no-masks"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    rows = read_jsonl(out / "predictions.jsonl", key="file")  # refuses a frame written twice
    assert len(rows) == len(_frames(synthetic_breast_dir, 1000))
    if codes == [0, 2]:  # they overlapped: the second was turned away in one line
        assert any("another edgebus is writing there" in e for e in errs), errs
    else:  # one ran after the other ended: the second resumed and predicted nothing again
        assert codes == [0, 0], errs


def test_readers_refuse_duplicate_rows(cv, synthetic_breast_dir, cls_file, tmp_path):
    dup = copy_run(cv, tmp_path / "cv")
    lines = (dup / "folds.jsonl").read_bytes().splitlines(keepends=True)
    (dup / "folds.jsonl").write_bytes(b"".join(lines + lines[:1]))  # what two CVs on one --out wrote
    one_line_error(cli("operating-point", dup, "--overwrite"), "folds.jsonl", "repeat a fold")
    # predictions: two processes' copies of every row; site-check must not count a case twice
    pred = tmp_path / "pred"
    r = cli("predict", "--classifier", cls_file, synthetic_breast_dir, "--out", pred, "--no-overlays", "--no-masks")
    assert r.exit_code == 0, r.output
    rows = (pred / "predictions.jsonl").read_bytes()
    (pred / "predictions.jsonl").write_bytes(rows + rows)
    one_line_error(cli("site-check", pred, "--data", synthetic_breast_dir), "predictions.jsonl", "repeat a file")
    # and predict resuming there says so instead of keeping one of each
    one_line_error(cli("predict", "--classifier", cls_file, synthetic_breast_dir, "--out", pred, "--no-overlays",
                       "--no-masks"), "repeat a file")


def test_grid_cells_written_twice_are_refused(tmp_path):
    from edgebus.training.cells import read_cells

    row = {"lr": 0.001, "epochs": 1, "val": {}, "test": {}}
    (tmp_path / "cells.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(EdgebusError, match="repeat a lr/epochs"):
        read_cells(tmp_path)


# ---- 3. inputs taken on trust ---------------------------------------------------------------------

def _train(data, out, *extra):
    r = cli("train", "classify", "--data", data, "--model", "test-cnn", "--size", 32, "--epochs", 1, "--out", out,
            "--quiet", *extra)
    assert r.exit_code == 0, r.output
    return out


def test_from_cv_checks_the_operating_point_file_data_and_contract(cv, synthetic_breast_dir, tmp_path):
    from edgebus.data.synthetic import make_synthetic

    run = _train(synthetic_breast_dir, tmp_path / "run")
    # a hand-edited threshold: the CV's manifest still records the file's real sha256
    bad = copy_run(cv, tmp_path / "cv-edited")
    op = json.loads((bad / "operating_point.json").read_text())
    (bad / "operating_point.json").write_text(json.dumps({**op, "threshold": -3.5}))
    one_line_error(cli("operating-point", run, "--from-cv", bad), "operating_point.json", "sha256")
    # ... and with the manifest's sha256 edited to match: the range check still holds
    m = manifest(bad)
    m["artifacts"]["operating_point.json"]["sha256"] = sha256_file(bad / "operating_point.json")
    (bad / "manifest.json").write_text(json.dumps(m))
    one_line_error(cli("operating-point", run, "--from-cv", bad), "out of range", "from 0 to 1")
    # a CV whose folds.jsonl changed after its operating point was chosen
    moved = copy_run(cv, tmp_path / "cv-moved")
    with open(moved / "folds.jsonl", "ab") as f:
        f.write(b"\n")
    one_line_error(cli("operating-point", run, "--from-cv", moved), "folds.jsonl", "changed")
    # another data set; other preprocessing
    other = _train(make_synthetic(tmp_path / "other-data", n_cases=40, seed=7), tmp_path / "run-other")
    one_line_error(cli("operating-point", other, "--from-cv", cv), "data fingerprint")
    norm = _train(synthetic_breast_dir, tmp_path / "run-norm", "--normalize", "percentile")
    one_line_error(cli("operating-point", norm, "--from-cv", cv), "preprocessing contract", "normalize")
    assert manifest(run)["threshold"] == 0.5 and manifest(norm)["threshold"] == 0.5  # nothing was taken
    # the real one is taken
    r = cli("operating-point", run, "--from-cv", cv)
    assert r.exit_code == 0, r.output
    assert manifest(run)["threshold"] == pytest.approx(json.loads((cv / "operating_point.json").read_text())["threshold"])


def test_a_cv_ensemble_bundle_refuses_an_edited_operating_point(cv, tmp_path):
    bad = copy_run(cv, tmp_path / "cv")
    op = json.loads((bad / "operating_point.json").read_text())
    (bad / "operating_point.json").write_text(json.dumps({**op, "threshold": 1e-9}))
    one_line_error(cli("bundle", "--classifier", bad, "--out", tmp_path / "cart"), "operating_point.json", "sha256")
    assert not (tmp_path / "cart").exists()


def test_a_folder_without_a_valid_bundle_json_is_not_a_cart(cls_file, synthetic_breast_dir, tmp_path):
    frame = _frames(synthetic_breast_dir, 1)[0]
    cart = tmp_path / "cart"
    assert cli("bundle", "--classifier", cls_file, "--out", cart).exit_code == 0
    assert cli("predict", "--bundle", cart, frame, "--out", tmp_path / "ok").exit_code == 0
    for damage, needle in ((lambda: (cart / "bundle.json").unlink(), "no bundle.json"),
                           (lambda: (cart / "bundle.json").write_text("{"), "not valid JSON"),
                           (lambda: (cart / "bundle.json").write_text("[]"), "not an edgebus bundle"),
                           (lambda: (cart / "bundle.json").write_text(json.dumps(
                               {"schema": "edgebus.bundle/1", "classifier": {"file": "../x.tflite", "sha256": "0"}})),
                            "outside the bundle")):
        saved = (cart / "bundle.json").read_bytes()
        damage()
        one_line_error(cli("predict", "--bundle", cart, frame, "--out", tmp_path / "x"), needle)
        assert not (tmp_path / "x").exists()
        (cart / "bundle.json").write_bytes(saved)
    # a swapped model with bundle.json in place: sha256
    (cart / "classifier.tflite").write_bytes(cls_file.read_bytes() + b"\0")
    one_line_error(cli("predict", "--bundle", cart, frame, "--out", tmp_path / "x"), "sha256")


def test_bundle_is_built_aside_and_a_failed_one_leaves_nothing(cls_file, tmp_path, monkeypatch):
    """A full disk while bundle.json is written: no half cart under --out, no temp folder left, the
    error names the file, and the same command then works."""
    import edgebus.core.io as io
    import edgebus.runtime.bundle as b

    real = b.write_json

    def full(path, obj):  # what the writer raises when the disk fills inside it
        with io.named(path):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(b, "write_json", full)
    r = cli("bundle", "--classifier", cls_file, "--out", tmp_path / "cart")
    one_line_error(r, "No space left on device", "bundle.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(b, "write_json", real)
    assert cli("bundle", "--classifier", cls_file, "--out", tmp_path / "cart").exit_code == 0
    assert (tmp_path / "cart" / "bundle.json").is_file()


def test_bundle_overwrite_keeps_a_users_other_files(cls_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(cli("bundle", "--classifier", cls_file, "--out", out, "--overwrite"), "more than a cart bundle")
    assert (out / "notes.txt").read_text() == "mine"


def test_export_overwrite_killed_after_a_file_is_replaced_leaves_a_true_manifest(tiny_cls, tmp_path, monkeypatch):
    """Killed right after the first file is rewritten: the manifest lists only files whose sha256
    it records (the rewritten one is unlisted), bench fails on nothing 'changed', and the same
    command finishes the export."""
    import edgebus.export.exporter as ex

    run = copy_run(tiny_cls, tmp_path / "run")
    assert cli("export", run, "--formats", "float32,int8", "--qat-epochs", 1).exit_code == 0
    real, calls = ex.write_tflite, []

    def killed_after_write(path, *a, **k):
        real(path, *a, **k)
        calls.append(path)
        raise KeyboardInterrupt  # the process dies here
    monkeypatch.setattr(ex, "write_tflite", killed_after_write)
    with pytest.raises(KeyboardInterrupt):
        ex.export_run(run, ex.ExportConfig(formats=["float32", "int8"], qat_epochs=1, overwrite=True), log=lambda *_: None)
    assert calls, "the fault was not injected"
    m = manifest(run)
    for name, entry in m["artifacts"].items():
        assert sha256_file(run / name) == entry["sha256"], name
    assert Path(calls[0]).name not in m["artifacts"]
    monkeypatch.setattr(ex, "write_tflite", real)
    assert cli("export", run, "--formats", "float32,int8", "--qat-epochs", 1, "--overwrite").exit_code == 0
    # a listed file changed by hand: bench fails (exit 2, one line), its report is kept
    (run / "model_float32.tflite").write_bytes((run / "model_float32.tflite").read_bytes() + b"\0")
    r = cli("bench", run, "--runs", 2, "--warmup", 0, "--no-keras")
    one_line_error(r, "model_float32.tflite", "sha256")
    assert (run / "report.json").is_file()


def test_bench_of_one_file_in_a_run_keeps_the_runs_report(cls_file, tmp_path, monkeypatch):
    run = copy_run(cls_file.parent, tmp_path / "run")
    cls_file = run / cls_file.name
    assert cli("bench", run, "--runs", 2, "--warmup", 0, "--no-keras").exit_code == 0
    before = json.loads((run / "report.json").read_text())
    r = cli("bench", cls_file, "--runs", 2, "--warmup", 0)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "report.json").read_text()) == before
    assert json.loads((run / "bench-files" / "report.json").read_text())["rows"][0]["file"].endswith("model_int8.tflite")
    # another benchmark's report in --out is never replaced
    one_line_error(cli("bench", cls_file, "--runs", 2, "--warmup", 0, "--out", run), "report.json", "--out")
    assert json.loads((run / "report.json").read_text()) == before
    # a folder it cannot write: said before any timing
    import edgebus.core.io as io

    real_access = os.access
    monkeypatch.setattr(io.os, "access", lambda p, mode, **k: False if mode & os.W_OK and Path(p) == run
                        else real_access(p, mode, **k))
    r = cli("bench", run, "--runs", 2, "--warmup", 0, "--no-keras")
    one_line_error(r, "cannot write there")
    assert "benchmarking" not in r.output


def test_bad_values_in_predictions_and_fusion_settings_are_one_line(cls_file, synthetic_breast_dir, tmp_path):
    one_line_error(cli("fuse", tmp_path, tmp_path, "--target-sensitivity", 2), "--target-sensitivity 2")
    one_line_error(cli("fuse", tmp_path, tmp_path, "--target-sensitivity", 0), "(0, 1]")
    one_line_error(cli("fuse", tmp_path, tmp_path, "--target-sensitivity", -1), "(0, 1]")
    pred = tmp_path / "pred"
    frames = _frames(synthetic_breast_dir, 3)
    for f in frames:
        assert cli("predict", "--classifier", cls_file, f, "--out", pred, "--no-overlays", "--no-masks").exit_code == 0
    rows = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    good = (pred / "predictions.jsonl").read_bytes()
    (pred / "predictions.jsonl").write_text("".join(json.dumps({**r, "prob_raw": "abc"} if i == 0 else r) + "\n"
                                                    for i, r in enumerate(rows)))
    one_line_error(cli("site-check", pred, "--data", synthetic_breast_dir), "prob_raw='abc'")
    for bad in (b'[1, 2]\n', b'{"width": 3}\n'):  # a JSON list; a row that names no frame
        (pred / "predictions.jsonl").write_bytes(good + bad)
        r = cli("predict", "--classifier", cls_file, frames[0], "--out", pred, "--no-overlays", "--no-masks")
        one_line_error(r, "predictions.jsonl")


def test_synth_and_train_retry_after_a_full_disk(synthetic_breast_dir, tmp_path, monkeypatch):
    import edgebus.core.io as io
    import edgebus.data.synthetic as syn

    real_xlsx = syn._write_xlsx

    def full(path, rows):
        with io.named(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(syn, "_write_xlsx", full)
    one_line_error(cli("synth", tmp_path / "s", "--cases", 12), "No space left on device", ".xlsx")
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())  # no half set blocks the retry
    monkeypatch.setattr(syn, "_write_xlsx", real_xlsx)
    assert cli("synth", tmp_path / "s", "--cases", 12).exit_code == 0

    real_write = io.atomic_write

    def full_at_history(path, data):
        if Path(path).name == "history.csv":
            with io.named(path):  # as the writer raises it when the disk fills inside it
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)
    import edgebus.training.train  # noqa: F401  (the module, not the function edgebus.training exports)

    tr = sys.modules["edgebus.training.train"]

    monkeypatch.setattr(tr, "atomic_write", full_at_history)
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--out", tmp_path / "run", "--quiet")
    one_line_error(r, "history.csv", "No space left on device")
    monkeypatch.setattr(tr, "atomic_write", real_write)
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    assert "did not finish" in r.output and "train" in manifest(tmp_path / "run")["stages"]
