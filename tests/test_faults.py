"""Fault injection (issue 13): processes killed with SIGKILL at set points of a grid, an export and
a folder prediction, and two stages at once on one run. After each kill: no finished result is
lost, no half-written file carries a final name, the manifest is valid JSON with every completed
entry, and a re-run finishes the job.

Issue 32: every fault is checked to have happened (the process ended by the SIGKILL, return code
-9, or by the EDGEBUS_EXIT_AFTER_* hook, 75, and left less than a finished job), each kill point is
a state of the job (a file written, a result line appended) or a timer started in that very
process's life, and the two writers are made to overlap by holding the run's lock until both wait
on it."""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from edgebus.core.io import locked, read_jsonl, sha256_file
from tests.conftest import TINY_RECIPE, cli, copy_run, manifest

EDGEBUS = [sys.executable, "-m", "edgebus"]

EXIT_HOOK = 75  # the exit status of the EDGEBUS_EXIT_AFTER_UNITS / _EPOCHS hooks (os._exit(75))


def _tail(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


def kill_when(cmd, ready, timeout=300) -> bool:
    """Start `cmd` and SIGKILL it as soon as ready() is true; the test fails unless that SIGKILL is
    what ended it (return code -9): a process that ends on its own first was never killed, and
    what it left proves nothing about a kill. Returns True."""
    what = " ".join(str(c) for c in cmd[2:4])  # "edgebus grid"
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT)
        end = time.time() + timeout
        try:
            while not ready():
                if p.poll() is not None:
                    pytest.fail(f"{what} ended by itself (exit {p.returncode}) before its kill point: nothing was "
                                f"killed\n{_tail(log)}")
                if time.time() > end:
                    pytest.fail(f"{what}: its kill point was not reached in {timeout} s\n{_tail(log)}")
                time.sleep(0.01)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == -signal.SIGKILL, f"exit {p.returncode}: it ended before the SIGKILL\n{_tail(log)}"
    return True


def exit_at_hook(cmd, hook: str, n: int, timeout=300) -> None:
    """Run `cmd` with EDGEBUS_EXIT_AFTER_<hook>=n: it must end by that hook (os._exit(75))."""
    p = subprocess.run([str(c) for c in cmd], env={**os.environ, f"EDGEBUS_EXIT_AFTER_{hook}": str(n)},
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == EXIT_HOOK, f"exit {p.returncode}, not the hook's {EXIT_HOOK}\n{p.stderr[-3000:]}"


def _signature(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def written(path: Path):
    """ready(): `path` was written (again) since this call (an atomic write gives it a new inode)."""
    before = _signature(path)
    return lambda: _signature(path) not in (None, before)


def test_kill_when_fails_unless_its_sigkill_ended_the_process():
    """The helper itself: a process that ends before its kill point fails the test; one killed at
    its point passes, and so does one killed by the hook only when it exits 75."""
    with pytest.raises(pytest.fail.Exception, match="ended by itself"):
        kill_when([sys.executable, "-c", "pass", "x"], lambda: False)
    assert kill_when([sys.executable, "-c", "import time; time.sleep(60)", "x"], lambda: True)
    with pytest.raises(AssertionError, match="not the hook's 75"):
        exit_at_hook([sys.executable, "-c", "pass"], "UNITS", 1)
    exit_at_hook([sys.executable, "-c", "import os; os._exit(75)"], "UNITS", 1)


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


def test_grid_killed_at_three_points_loses_no_finished_cell(synthetic_breast_dir, tmp_path):
    """A 2 x 2 grid (4 cells) stopped three times, each stop checked to have happened: SIGKILL as
    soon as its folder is set up (manifest written), SIGKILL mid learning rate (right after its first
    cell line, in epoch 2's checkpoint or training), and EDGEBUS_EXIT_AFTER_UNITS=1 (exactly one
    more cell line, then os._exit(75)). After each: fewer than 4 cells, every earlier one unchanged,
    no torn file under a final name; a last run finishes the grid keeping them all."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "g"
    cmd = [*EDGEBUS, "grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet"]
    results = out / "cells.jsonl"
    kept = []

    def after_stop() -> list:
        assert_no_torn_final_files(out)
        now = read_jsonl(results) if results.exists() else []
        assert len(now) < 4 and now[:len(kept)] == kept  # a stopped grid; nothing finished was lost or changed
        return now

    assert kill_when(cmd, lambda: (out / "manifest.json").exists())  # its set-up
    kept = after_stop()
    assert len(kept) == 0
    assert kill_when(cmd, lambda: lines(results) >= 1)  # mid learning rate 3e-3: after its 1-epoch cell
    kept = after_stop()
    assert len(kept) == 1
    exit_at_hook(cmd, "UNITS", 1)  # one more cell, then the hook
    kept = after_stop()
    assert len(kept) == 2
    r = cli("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    cells = read_jsonl(results)
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
    """An int8 export SIGKILLed at three points of its work, each checked to be what ended it: as
    soon as it wrote its first TFLite file, a seeded moment (timed in that process) after its first
    manifest save, and as soon as it wrote the PTQ comparison file. After each the manifest is whole
    (every listed file's sha256 matches), still holds the training artifacts and records no export."""
    before = assert_manifest_complete(run)
    cmd = [*EDGEBUS, "export", run, "--int8", "--qat-epochs", 1]
    rng = random.Random(5)

    def seeded_after_first_save():
        saved, delay, t0 = written(run / "manifest.json"), rng.uniform(0.2, 2.0), []

        def ready():
            if not t0 and saved():
                t0.append(time.time())  # this process's own clock, started at its own first save
            return bool(t0) and time.time() - t0[0] > delay
        return ready

    points = (lambda: written(run / "model_float32.tflite"), seeded_after_first_save,
              lambda: written(run / "model_int8_ptq.tflite"))
    for point in points:
        assert kill_when(cmd, point())  # the kill point is made afresh for each process
        m = assert_manifest_complete(run)
        assert set(before["artifacts"]) <= set(m["artifacts"])  # the training artifacts survive
        assert not m.get("exports")  # killed before it finished: no export recorded
        assert_no_torn_final_files(run)
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


def waiting_on_lock(folder: Path) -> set:
    """The pids blocked in flock() on `folder`'s .edgebus.lock (the '->' lines of /proc/locks)."""
    if not Path("/proc/locks").is_file():
        pytest.skip("needs Linux /proc/locks to see who waits on the lock")
    ino = (folder / ".edgebus.lock").stat().st_ino
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 6 and f[1] == "->" and f[2] == "FLOCK" and int(f[6].rsplit(":", 1)[1]) == ino:
            pids.add(int(f[5]))
    return pids


def overlapping(run: Path, cmds: list, rounds: int = 1, timeout=300) -> None:
    """Run `cmds` at once, made to overlap: this process holds the run's lock (core.io.locked, what
    Run.save and the bench report take) until every one of them is blocked on it, so each has read
    the manifest / report it merges with, and done its work, before any of them writes. With
    rounds=2 it takes the lock again once they have all passed it, for their next write (an
    export saves the manifest before its work and again after). Each must end with exit 0."""
    logs = [tempfile.TemporaryFile() for _ in cmds]
    procs = []

    def wait_until(done, what):
        end = time.time() + timeout
        while not done():
            for p, log in zip(procs, logs):
                assert p.poll() is None, f"ended (exit {p.returncode}) before {what}\n{_tail(log)}"
            assert time.time() < end, f"not {what} in {timeout} s"
            time.sleep(0.02)

    try:
        for n in range(rounds):
            with locked(run):
                if not procs:
                    procs = [subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT)
                             for cmd, log in zip(cmds, logs)]
                pids = {p.pid for p in procs}
                wait_until(lambda: pids <= waiting_on_lock(run), f"all waiting on the run's lock (round {n + 1})")
            if n + 1 < rounds:
                wait_until(lambda: not pids & waiting_on_lock(run), f"all past the lock (round {n + 1})")
        for p, log in zip(procs, logs):
            assert p.wait(timeout=timeout) == 0, _tail(log)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def test_waiting_on_lock_sees_a_blocked_writer(tmp_path):
    """The helper the overlap relies on: a thread blocked in locked() shows up, and goes when it has the lock."""
    got = threading.Event()

    def take():
        with locked(tmp_path):
            got.set()

    with locked(tmp_path):
        t = threading.Thread(target=take)
        t.start()
        end = time.time() + 10
        while os.getpid() not in waiting_on_lock(tmp_path):  # a thread's flock is listed under the process
            assert time.time() < end and t.is_alive()
            time.sleep(0.01)
        assert not got.is_set()
    t.join(10)
    assert got.is_set() and waiting_on_lock(tmp_path) == set()


def test_two_exports_and_two_benches_at_once_keep_every_entry(run):
    """Two exports of one run, both started while the test holds the run's lock and let go only once
    both wait on it, at their first manifest save and again at their last (the one with their
    entries): both read the manifest before either saved, and both hold their entries before either
    writes them, so the second save must merge what the first wrote (core.io.merge3, read under the
    lock) or lose it. The same for two benches and report.json."""
    overlapping(run, [[*EDGEBUS, "export", run, "--formats", fmt] for fmt in ("float16", "dynamic")], rounds=2)
    m = assert_manifest_complete(run)
    assert {"float16", "dynamic"} <= set(m["exports"]), m["exports"].keys()
    assert {"model_float16.tflite", "model_dynamic.tflite"} <= set(m["artifacts"])
    overlapping(run, [[*EDGEBUS, "bench", run, "--threads", t, "--runs", 3, "--warmup", 0, "--no-keras"]
                      for t in ("1", "2")])
    rows = json.loads((run / "report.json").read_text())["rows"]
    got = {(Path(r["file"]).name, r["threads"]) for r in rows}
    assert {(f"model_{fmt}.tflite", t) for fmt in ("float16", "dynamic") for t in (1, 2)} <= got, got
    assert len(got) == len(rows)  # each (file, threads) once
    assert_manifest_complete(run)
