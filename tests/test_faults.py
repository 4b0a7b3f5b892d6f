"""Fault injection (issue 13): processes killed with SIGKILL at seeded points of a grid, an export and
a folder prediction, and two stages at once on one run. After each kill: no finished result is
lost, no half-written file carries a final name, the manifest is valid JSON with every completed
entry, and a re-run finishes the job."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edgebus.core.io import read_jsonl, sha256_file
from tests.conftest import TINY_RECIPE, cli, copy_run, manifest

EDGEBUS = [sys.executable, "-m", "edgebus"]



def kill_when(cmd, ready, timeout=300) -> bool:
    """Start `cmd`, SIGKILL it as soon as ready() is true; True if it was killed before it ended."""
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + timeout
    while p.poll() is None and time.time() < end:
        if ready():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.01)
    assert p.poll() is not None, f"{cmd} did not end in {timeout} s"
    return False


def lines(path: Path) -> int:
    return len(read_jsonl(path)) if path.exists() else 0


def assert_no_torn_final_files(folder: Path):
    """Every file under a final (non-temp) name is complete: JSON parses, a .keras is a whole zip,
    a .tflite has its flatbuffer identifier, no temp file is left under a final name."""
    for p in folder.rglob("*"):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue  # a temp file, or a file inside a temp folder (atomic_save, epoch checkpoints)
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".keras":
            with zipfile.ZipFile(p) as z:
                assert z.testzip() is None, p
        elif p.suffix == ".tflite":
            assert p.read_bytes()[4:8] == b"TFL3", p
        elif p.suffix == ".jsonl":
            read_jsonl(p)  # complete lines parse; a torn last line is not a finished result


def assert_manifest_complete(run: Path):
    m = manifest(run)
    for name, entry in m["artifacts"].items():
        assert (run / name).is_file(), name
        assert sha256_file(run / name) == entry["sha256"], name
    return m


def test_grid_killed_at_seeded_points_loses_no_finished_cell(synthetic_breast_dir, tmp_path):
    rng = random.Random(13)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "g"
    cmd = [*EDGEBUS, "grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet"]
    kept = []
    kill_when(cmd, lambda: (out / "manifest.json").exists())  # first: as soon as the folder appears (its set-up)
    for _ in range(3):
        before = lines(out / "cells.jsonl")
        # kill somewhere inside the next cell: after a seeded share of its training, or at once on start
        delay = rng.uniform(0.0, 6.0)
        t0 = time.time()
        kill_when(cmd, lambda: (out / "manifest.json").exists() and time.time() - t0 > 4 + delay)
        assert_no_torn_final_files(out)
        now = read_jsonl(out / "cells.jsonl")
        assert len(now) >= before and now[:len(kept)] == kept  # nothing finished was lost or changed
        kept = now
    r = cli("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    cells = read_jsonl(out / "cells.jsonl")
    assert cells[:len(kept)] == kept
    assert sorted((c["lr"], c["epochs"]) for c in cells) == [(3e-3, 1), (3e-3, 2), (1e-2, 1), (1e-2, 2)]
    assert_no_torn_final_files(out)


def test_results_folder_killed_while_being_set_up_is_started_again(tmp_path):
    """What a kill leaves before a grid/CV folder records anything (the lock file, a stray temp
    file, a bare first manifest) is set up again; a folder that holds another run is still refused."""
    from edgebus.core.errors import EdgebusError
    from edgebus.core.manifest import Run, open_results_dir

    lock_only = tmp_path / "a"
    lock_only.mkdir()
    (lock_only / ".edgebus.lock").touch()
    (lock_only / ".manifest.json.x1.tmp").write_text("{")
    bare = tmp_path / "b"
    Run.create(bare, "classify")
    for out in (lock_only, bare):
        run, fresh = open_results_dir(out, "segment", "grid", {"lr": [1e-3]}, "grid")
        assert fresh and run.manifest.task == "segment" and manifest(out)["task"] == "segment"

    other = Run.create(tmp_path / "c", "classify")
    other.file("split.json").write_text("{}")
    other.add_artifact("split.json", "split")
    other.save()
    with pytest.raises(EdgebusError, match="not a grid"):
        open_results_dir(other.path, "classify", "grid", {"lr": [1e-3]}, "grid")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(EdgebusError, match="not an edgebus run"):
        open_results_dir(tmp_path / "d", "classify", "grid", {"lr": [1e-3]}, "grid")


@pytest.fixture()
def run(tiny_cls, tmp_path):
    return copy_run(tiny_cls, tmp_path / "run")


def test_export_killed_mid_way_keeps_a_valid_manifest(run):
    before = assert_manifest_complete(run)
    cmd = [*EDGEBUS, "export", run, "--int8", "--qat-epochs", 1]
    # killed once its first file is written (mid-way through the rest), then at a seeded moment
    assert kill_when(cmd, lambda: (run / "model_float32.tflite").exists())
    t0, delay = time.time(), random.Random(5).uniform(1.0, 8.0)
    for _ in range(2):
        m = assert_manifest_complete(run)
        assert set(before["artifacts"]) <= set(m["artifacts"])  # the training artifacts survive
        assert_no_torn_final_files(run)
        kill_when(cmd, lambda: time.time() - t0 > delay)
    r = cli("export", run, "--int8", "--qat-epochs", 1, "--overwrite")
    assert r.exit_code == 0, r.output
    m = assert_manifest_complete(run)
    assert {"float32", "int8"} <= set(m["exports"])


def test_predict_killed_resumes_without_redoing_or_mixing(run, chain_data, tmp_path):
    frames = chain_data / "BrEaST-Lesions_USG-images_and_masks"
    r = cli("export", run, "--formats", "float32,float16")
    assert r.exit_code == 0, r.output
    model = run / "model_float32.tflite"
    out = tmp_path / "pred"
    n = 120
    stop = random.Random(7).randint(5, n - 20)
    cmd = [*EDGEBUS, "predict", frames, "--classifier", model, "--out", out]
    assert kill_when(cmd, lambda: lines(out / "predictions.jsonl") >= stop)
    done = read_jsonl(out / "predictions.jsonl")
    assert stop <= len(done) < n and all(row["error"] is None for row in done)
    assert_no_torn_final_files(out)
    assert all(Path(row["overlay"]).is_file() for row in done)  # every finished row has its overlay
    assert not (out / "summary.json").exists()
    r = cli("predict", frames, "--classifier", model, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"{len(done)} frames were already done there" in r.output
    rows = read_jsonl(out / "predictions.jsonl")
    assert rows[:len(done)] == done and len(rows) == n and len({row["file"] for row in rows}) == n
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == n and summary["resumed"] == len(done)
    assert len((out / "predictions.csv").read_text().splitlines()) == n + 1
    # another model into the same folder would mix two models' rows: refused, the rows stay
    r = cli("predict", frames, "--classifier", run / "model_float16.tflite", "--out", out)
    assert r.exit_code == 2 and "other models or settings" in r.output, r.output
    assert read_jsonl(out / "predictions.jsonl") == rows


def test_two_exports_and_two_benches_at_once_keep_every_entry(run):
    procs = [subprocess.Popen([str(c) for c in [*EDGEBUS, "export", run, "--formats", fmt]],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for fmt in ("float16", "dynamic")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read().decode()[-2000:]
    m = assert_manifest_complete(run)
    assert {"float16", "dynamic"} <= set(m["exports"]), m["exports"].keys()
    procs = [subprocess.Popen([str(c) for c in [*EDGEBUS, "bench", run, "--threads", t, "--runs", 3, "--warmup", 0,
                                                 "--no-keras"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for t in ("1", "2")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read().decode()[-2000:]
    rows = json.loads((run / "report.json").read_text())["rows"]
    got = {(Path(r["file"]).name, r["threads"]) for r in rows}
    assert {(f"model_{fmt}.tflite", t) for fmt in ("float16", "dynamic") for t in (1, 2)} <= got, got
    assert len(got) == len(rows)  # each (file, threads) once
    assert_manifest_complete(run)
