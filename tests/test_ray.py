"""Grids and CVs on a Ray cluster (issue 15), on a local cluster this test starts itself: the ray
backend gives cell for cell the results of the local one, a task whose worker dies is retried (and
goes on from its last epoch checkpoint), and a driver killed mid-grid resumes from cells.jsonl and
the epoch checkpoints like a local run."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import cli, one_line_error

ray = pytest.importorskip("ray", reason="the cluster extra is not installed: pip install 'edgebus[cluster]'")

GRID = ["grid", "classify", "--model", "test-cnn", "--size", 32, "--lrs", "1e-3,3e-3", "--epochs", "2,4", "--quiet"]
CV = ["cv", "classify", "--model", "test-cnn", "--size", 32, "--folds", 3, "--epochs", 3, "--int8", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cells(grid):
    return {(c["lr"], c["epochs"]): c for c in _lines(grid / "cells.jsonl")}


def _same_cells(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k]["val"] == b[k]["val"] and a[k]["test"] == b[k]["test"] and a[k]["test_prob"] == b[k]["test_prob"], k


@pytest.fixture(scope="module")
def local_grid(synthetic_breast_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "local"
    r = cli(*GRID, "--data", synthetic_breast_dir, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_ray_grid_and_cv_give_the_local_results_cell_for_cell(cluster, local_grid, synthetic_breast_dir, tmp_path):
    r = cli(*GRID, "--data", synthetic_breast_dir, "--backend", "ray", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    assert "ray: 2 task(s) submitted" in r.output
    _same_cells(_cells(local_grid), _cells(tmp_path / "g"))
    best = {d: json.loads((d / "best" / "metrics.json").read_text()) for d in (local_grid, tmp_path / "g")}
    assert best[local_grid] == best[tmp_path / "g"]  # the same chosen cell, from the task's saved model
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["stages"]["grid-all"]["backend"] == "ray"

    for backend in ("local", "ray"):
        r = cli(*CV, "--data", synthetic_breast_dir, "--backend", backend, "--out", tmp_path / f"cv-{backend}")
        assert r.exit_code == 0, r.output
    a, b = (sorted(_lines(tmp_path / f"cv-{k}" / "folds.jsonl"), key=lambda x: x["fold"]) for k in ("local", "ray"))
    for x, y in zip(a, b):
        assert x["test_prob"] == y["test_prob"] and x["test_prob_int8"] == y["test_prob_int8"]
        assert (tmp_path / "cv-ray" / y["models"]["model_int8.tflite"]["file"]).is_file()
    assert len(b) == 3


def test_a_task_whose_worker_dies_is_retried(cluster, local_grid, synthetic_breast_dir, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    marker.mkdir()
    monkeypatch.setenv("EDGEBUS_KILL_TASK_ONCE", str(marker))  # travels to the workers with the task
    r = cli(*GRID, "--data", synthetic_breast_dir, "--backend", "ray", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    assert (marker / "killed").exists()  # one worker did die
    _same_cells(_cells(local_grid), _cells(tmp_path / "g"))
    assert len(_lines(tmp_path / "g" / "cells.jsonl")) == 4  # nothing written twice


def test_a_task_killed_mid_run_goes_on_from_its_last_epoch(cluster, synthetic_breast_dir, tmp_path, monkeypatch):
    """Both learning rates' workers die right after epoch 1's checkpoint (as a lost node would); Ray
    retries each task and, seeing the run folder (same machine), it trains on from epoch 1."""
    monkeypatch.setenv("EDGEBUS_EXIT_AFTER_EPOCHS", "1")  # travels to the workers with the task
    out = tmp_path / "g"
    r = cli(*GRID, "--data", synthetic_breast_dir, "--backend", "ray", "--out", out)
    assert r.exit_code == 0, r.output
    cells = _cells(out)
    assert sorted(cells) == [(0.001, 2), (0.001, 4), (0.003, 2), (0.003, 4)]
    assert len(_lines(out / "cells.jsonl")) == 4  # nothing written twice
    assert [c.get("resumed_from") for c in cells.values()] == [1, 1, 1, 1]
    histories = sorted((out / "histories").iterdir())
    assert [len(h.read_text().splitlines()) for h in histories] == [5, 5]  # a header and all 4 epochs
    assert not any((out / "checkpoints").iterdir())  # each checkpoint and the driver's mark are gone


def test_a_killed_driver_resumes(cluster, local_grid, synthetic_breast_dir, tmp_path):
    out = tmp_path / "g"
    env = {**os.environ, "EDGEBUS_EXIT_AFTER_UNITS": "1"}
    code = "import sys; from edgebus.cli import app; sys.argv[0] = 'edgebus'; app()"
    args = [str(a) for a in (*GRID, "--data", synthetic_breast_dir, "--backend", "ray", "--address", cluster, "--out", out)]
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 75, p.stdout[-2000:] + p.stderr[-2000:]
    assert len(_lines(out / "cells.jsonl")) == 1
    r = cli(*GRID, "--data", synthetic_breast_dir, "--backend", "ray", "--out", out)
    assert r.exit_code == 0, r.output
    assert "1 done" in r.output and "3 cell(s) in 2 training run(s)" in r.output, r.output
    assert len(_lines(out / "cells.jsonl")) == 4
    # a learning rate the killed driver's task had checkpointed goes on from that epoch (a valid run,
    # not a bit-for-bit copy, and it says so); every other cell is the local grid's
    cells = _cells(out)
    fresh = {k for k, c in cells.items() if "resumed_from" not in c}
    assert all(1 <= cells[k]["resumed_from"] < k[1] for k in set(cells) - fresh)
    _same_cells({k: v for k, v in _cells(local_grid).items() if k in fresh}, {k: cells[k] for k in fresh})
    assert not any((out / "checkpoints").iterdir())  # the killed driver's mark went with the re-run


def test_bad_backend_settings_get_one_line(synthetic_breast_dir, tmp_path):
    one_line_error(cli(*GRID, "--data", synthetic_breast_dir, "--backend", "slurm", "--out", tmp_path / "a"), "slurm")
    one_line_error(cli(*GRID, "--data", synthetic_breast_dir, "--address", "auto", "--out", tmp_path / "b"), "--backend ray")
    one_line_error(cli(*CV, "--data", synthetic_breast_dir, "--backend", "ray", "--cpus-per-task", 0,
                       "--out", tmp_path / "c"), "--cpus-per-task")
