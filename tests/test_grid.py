"""Grid search, its resume after a kill, shards, figures and report; k-fold CV, bootstrap and the
content-hash leak check. Tiny models (test-cnn, test-unet) at 32 px on the 40-case synthetic set."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import TINY_RECIPE, cli, manifest, one_line_error as _one_line_error

from edgebus.core.errors import EdgebusError




def assert_png(path: Path):
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        im.verify()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    p = tmp_path_factory.mktemp("recipes") / "tiny.toml"
    p.write_text(TINY_RECIPE)
    return p


@pytest.fixture(scope="module")
def killed_and_resumed(synthetic_breast_dir, recipe, tmp_path_factory):
    """A 2 x 2 grid killed (os._exit) right after its first cell, then run again to the end."""
    out = tmp_path_factory.mktemp("grid") / "g"
    cmd = [sys.executable, "-m", "edgebus", "grid", "--recipe", str(recipe), "--data", str(synthetic_breast_dir),
           "--out", str(out), "--quiet"]
    env = {**os.environ, "EDGEBUS_EXIT_AFTER_UNITS": "1"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 75, killed.stderr[-2000:]
    first = lines(out / "cells.jsonl")
    assert len(first) == 1
    r = cli("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out, first[0], r.output


def test_grid_resumes_without_redoing_a_cell(killed_and_resumed):
    out, first, log = killed_and_resumed
    cells = lines(out / "cells.jsonl")
    assert len(cells) == 4
    assert cells[0] == first and cells.count(first) == 1  # the finished cell was kept byte for byte, never redone
    keys = [(json.loads(c)["lr"], json.loads(c)["epochs"]) for c in cells]
    assert sorted(keys) == [(0.003, 1), (0.003, 2), (0.01, 1), (0.01, 2)]
    assert "1 done" in log and "evaluating at 2\n" in log  # lr 3e-3 re-trained only for its missing cell

    # a finished grid run again trains nothing and appends nothing
    before = (out / "cells.jsonl").read_bytes()
    m = manifest(out)
    recipe_path = m["grid"]["recipe"]["path"]
    r = cli("grid", "classify", "--recipe", recipe_path, "--data", m["data"]["root"], "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "all 2 cells done, skipped" in r.output
    assert (out / "cells.jsonl").read_bytes() == before


def test_a_learning_rate_killed_mid_run_goes_on_from_its_last_epoch(synthetic_breast_dir, recipe, tmp_path):
    """Killed right after epoch 1's checkpoint (cell (3e-3, 1) written), the grid trains lr 3e-3 on
    from epoch 1, not from 0: its 2-epoch cell says so, its history has both epochs, and the
    checkpoint is gone once the learning rate's cells are all written."""
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "edgebus", "grid", "--recipe", str(recipe), "--data", str(synthetic_breast_dir),
           "--out", str(out), "--quiet"]
    killed = subprocess.run(cmd, env={**os.environ, "EDGEBUS_EXIT_AFTER_EPOCHS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 75, killed.stderr[-2000:]
    state = json.loads((out / "checkpoints" / "lr=0.003" / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 1
    r = cli("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "going on from the checkpoint after epoch 1" in r.output
    cells = {(c["lr"], c["epochs"]): c for c in map(json.loads, lines(out / "cells.jsonl"))}
    assert sorted(cells) == [(0.003, 1), (0.003, 2), (0.01, 1), (0.01, 2)]
    assert cells[(0.003, 2)]["resumed_from"] == 1
    assert "resumed_from" not in cells[(0.003, 1)] and "resumed_from" not in cells[(0.01, 2)]
    history = (out / "histories" / "lr=0.003.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2"]
    assert history[1].split(",")[1:] == [f"{v:.6g}" for k, v in ((k, state["history"][k][0])
                                                                 for k in history[0].split(",")[1:])]
    assert not any((out / "checkpoints").iterdir())
    assert "Trained on from an epoch checkpoint" in (out / "report.md").read_text()
    assert "lr 0.003 from epoch 1." in (out / "report.md").read_text()


def test_grid_report_figures_and_best_run(killed_and_resumed):
    out, _, _ = killed_and_resumed
    assert_png(out / "grid_accuracy.png")
    assert_png(out / "confusion_matrix.png")
    report = json.loads((out / "report.json").read_text())
    cells = [json.loads(c) for c in lines(out / "cells.jsonl")]
    # chosen by validation accuracy only; its test numbers are the cell's own
    best_val = max(c["val"]["accuracy"] for c in cells)
    assert report["chosen"]["val"]["accuracy"] == best_val
    chosen = [c for c in cells if (c["lr"], c["epochs"]) == (report["chosen"]["lr"], report["chosen"]["epochs"])][0]
    assert report["chosen"]["test"] == chosen["test"]
    assert report["metrics_match_cell"] and report["best_source"] == "candidate" and report["size"] == 32
    ci = report["test_bootstrap"]["accuracy"]
    assert ci["lo"] <= ci["value"] <= ci["hi"]
    md = (out / "report.md").read_text()
    for needle in ("Validation accuracy", "Test accuracy", "| benign |", "| macro avg |", "| weighted avg |",
                   "ROC AUC", "confusion_matrix.png", "Reduced recipe"):
        assert needle in md, needle
    assert "epoch checkpoint" not in md  # this grid was stopped between cells, never resumed mid-run
    # best/ is a standard run directory with the chosen cell's weights
    best = out / "best"
    m = manifest(best)
    assert m["stages"]["train"]["grid_cell"] == {"lr": report["chosen"]["lr"], "epochs": report["chosen"]["epochs"]}
    assert set(m["artifacts"]) >= {"config.toml", "split.json", "model.keras", "metrics.json", "history.csv"}
    assert json.loads((best / "split.json").read_text())["test"] == json.loads((out / "split.json").read_text())["test"]
    assert json.loads((best / "metrics.json").read_text())["test"]["accuracy"] == chosen["test"]["accuracy"]


def test_grid_cell_equals_a_shorter_run(killed_and_resumed, synthetic_breast_dir, tmp_path):
    """The premise of one run per learning rate: the 2-epoch run seen at epoch 1 is the 1-epoch run."""
    from edgebus.training import TrainConfig, train
    from edgebus.data.arrays import load_split_data
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    out, _, _ = killed_and_resumed
    cell = [json.loads(c) for c in lines(out / "cells.jsonl") if json.loads(c)["epochs"] == 1][0]
    run = train(TrainConfig(data=str(synthetic_breast_dir), model="test-cnn", out=str(tmp_path / "r"), size=32,
                            epochs=1, lr=cell["lr"], keep="last"), progress=False)
    m = manifest(run.path)
    from edgebus.data.breast import read_breast

    by_id = {c.case_id: c for c in read_breast(synthetic_breast_dir).lesions()}
    split = json.loads((run.path / "split.json").read_text())
    data = load_split_data(by_id, {k: split[k] for k in ("train", "val", "test")}, m["preprocess"], "classify")
    prob = predict(load_run_model(run), data["test"][0]).ravel()
    np.testing.assert_allclose(prob, cell["test_prob"], atol=1e-5)


def test_segment_grid_in_two_shards(synthetic_breast_dir, tmp_path):
    out = tmp_path / "seg"
    args = ("grid", "segment", "--data", synthetic_breast_dir, "--model", "test-unet", "--size", 32,
            "--lrs", "3e-3,1e-2", "--epochs", "1,2", "--out", out, "--quiet")
    r = cli(*args, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert "left for other shards" in r.output and not (out / "report.md").exists()
    assert len(lines(out / "cells-shard1of2.jsonl")) == 2
    r = cli("grid", "report", out)
    assert r.exit_code == 2 and "2 of 4 cells not done" in r.output
    r = cli(*args, "--shard", "2/2")
    assert r.exit_code == 0, r.output
    assert {json.loads(c)["lr"] for c in lines(out / "cells-shard2of2.jsonl")} == {0.01}
    assert_png(out / "grid_iou.png")
    assert_png(out / "overlay.png")
    md = (out / "report.md").read_text()
    assert "| train |" in md and "| val |" in md and "| test |" in md and "Dice" in md
    assert manifest(out / "best")["task"] == "segment"


def test_shards_partition_the_learning_rates():
    from edgebus.training.cells import parse_shard, shard_lrs

    lrs = [1e-6, 1e-5, 1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
    for n in (1, 2, 3, 7):
        parts = [shard_lrs(lrs, (i, n)) for i in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(lrs)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(EdgebusError, match="shard"):
            parse_shard(bad)


def test_kfold_partitions_and_cv_summary(synthetic_breast_dir, recipe, tmp_path):
    from edgebus.data.breast import read_breast
    from edgebus.core.splits import content_groups, grouped_kfold, leaks
    from edgebus.data.content import content_hashes

    cases = read_breast(synthetic_breast_dir).lesions()
    hashes = content_hashes(cases)
    folds = grouped_kfold(cases, content_groups(hashes), k=5, seed=0)
    ids = sorted(c.case_id for c in cases)
    assert sorted(i for f in folds for i in f["test"]) == ids  # every image in exactly one test fold
    for f in folds:
        assert sorted(f["train"] + f["val"] + f["test"]) == ids
        assert leaks(f, hashes) == []

    out = tmp_path / "cv"
    r = cli("cv", "classify", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert len(lines(out / "folds.jsonl")) == 3
    s = json.loads((out / "summary.json").read_text())
    assert s["k"] == 3 and s["pooled"]["n"] == len(cases)
    for key in ("accuracy", "malignant_recall", "auc"):
        assert len(s["mean_std"][key]["folds"]) == 3
        b = s["bootstrap"][key]  # defined for every resample of 40 cases with both classes in each
        assert b["lo"] is not None and b["lo"] <= b["value"] <= b["hi"], (key, b)
    acc = s["bootstrap"]["accuracy"]
    assert 0 < acc["value"] < 1 and acc["lo"] < acc["hi"], acc  # an interval with a width, around the pooled value
    assert_png(out / "confusion_matrix.png")
    assert "mean +- std" in (out / "report.md").read_text()


def test_a_cv_fold_killed_mid_run_goes_on_from_its_last_epoch(synthetic_breast_dir, recipe, tmp_path):
    """Killed after fold 1's second epoch checkpoint (of 3), the CV trains that fold on from epoch 2
    with its best epoch so far, writes every fold once and leaves no checkpoint behind."""
    out = tmp_path / "cv"
    args = ["cv", "classify", "--recipe", str(recipe), "--data", str(synthetic_breast_dir), "--out", str(out),
            "--epochs", "3", "--quiet"]
    killed = subprocess.run([sys.executable, "-m", "edgebus", *args], env={**os.environ, "EDGEBUS_EXIT_AFTER_EPOCHS": "2"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 75, killed.stderr[-2000:]
    assert not (out / "folds.jsonl").exists() or not lines(out / "folds.jsonl")
    state = json.loads((out / "checkpoints" / "fold0" / "state.json").read_text())
    assert state["epoch"] == 2 and state["keep"]["epoch"] in (1, 2) and state["meta"]["fold"] == 0
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "going on from the checkpoint after epoch 2" in r.output
    folds = [json.loads(c) for c in lines(out / "folds.jsonl")]
    assert sorted(f["fold"] for f in folds) == [0, 1, 2]
    assert [f.get("resumed_from") for f in sorted(folds, key=lambda f: f["fold"])] == [2, None, None]
    first = next(f for f in folds if f["fold"] == 0)
    assert first["kept_epoch"] in (state["keep"]["epoch"], 3)  # the best of epochs 1-2 survived the kill, or epoch 3 beat it
    assert "(from epoch 2, after a stop)" in (out / "report.md").read_text()
    assert not any((out / "checkpoints").iterdir())


def test_a_full_disk_at_an_epoch_checkpoint_stops_with_one_line_and_keeps_the_cells(synthetic_breast_dir, recipe,
                                                                                  tmp_path, monkeypatch):
    """The checkpoint of lr 3e-3's epoch 2 meets a full disk: one line naming the folder and the fix,
    no half-written checkpoint left, the cells written before it kept; the same command then ends
    the grid and clears the checkpoint it no longer needs."""
    import errno

    from edgebus.engine import resume

    real, calls = resume._trackables, []

    def full_disk_at_second(model):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model)

    monkeypatch.setattr(resume, "_trackables", full_disk_at_second)
    out = tmp_path / "g"
    args = ("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", out, "--quiet")
    _one_line_error(cli(*args), "lr=0.003", "No space left on device", "run the same command again")
    cells = [(c["lr"], c["epochs"]) for c in map(json.loads, lines(out / "cells.jsonl"))]
    assert cells == [(0.003, 1), (0.003, 2)]  # epoch 2's cell is measured before its checkpoint
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["lr=0.003"]  # epoch 1's, nothing half-written
    assert json.loads((out / "checkpoints" / "lr=0.003" / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(resume, "_trackables", real)
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "lr 0.003: all 2 cells done, skipped" in r.output
    assert len(lines(out / "cells.jsonl")) == 4
    assert not any((out / "checkpoints").iterdir())  # lr 3e-3's leftover went with its skip


def test_a_full_disk_at_a_cell_line_gets_one_line(synthetic_breast_dir, recipe, tmp_path, monkeypatch):
    import errno

    from edgebus.training import grid

    def full(path, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(grid, "append_jsonl", full)
    _one_line_error(cli("grid", "--recipe", recipe, "--data", synthetic_breast_dir, "--out", tmp_path / "g", "--quiet"),
                    "cells.jsonl: No space left on device; free some space, then run the same command again")


def test_a_ray_task_checkpoints_only_where_it_sees_the_drivers_mark(tmp_path):
    """A task on a node without the run folder (no mark there) trains without checkpoints instead
    of writing them where no retry would look; the mark lives only while the driver's tasks run."""
    from edgebus.training.backends import checkpoint_root, task_checkpoints

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".driver-stale").touch()  # left by a killed driver
    with checkpoint_root(tmp_path / "checkpoints") as root:
        assert task_checkpoints(root) == tmp_path.resolve() / "checkpoints"
        assert task_checkpoints({**root, "token": "another-run"}) is None
        assert task_checkpoints({**root, "path": str(tmp_path / "not-mounted")}) is None
        assert len(list((tmp_path / "checkpoints").iterdir())) == 1  # this run's mark only
    assert task_checkpoints(root) is None and not any((tmp_path / "checkpoints").iterdir())


def test_identical_images_stay_in_one_part(synthetic_breast_dir, tmp_path):
    from edgebus.data.breast import read_breast
    from edgebus.core.splits import content_groups, duplicates, grouped_kfold, grouped_split, leaks
    from edgebus.data.content import content_hashes

    data = tmp_path / "dup"
    shutil.copytree(synthetic_breast_dir, data)
    cases = read_breast(data).lesions()
    a, b = cases[0], cases[-1]
    shutil.copyfile(a.image, b.image)  # the same picture under two case ids
    hashes = content_hashes(cases)
    groups = content_groups(hashes)
    dups = duplicates(groups, {c.case_id: c.label for c in cases})
    assert [d["case_ids"] for d in dups] == [sorted([a.case_id, b.case_id])]
    assert dups[0]["conflict"] == (a.label != b.label)
    split = grouped_split(cases, groups, (0.8, 0.1, 0.1), 0)
    assert leaks(split, hashes) == []
    for f in grouped_kfold(cases, groups, k=5, seed=0):
        assert leaks(f, hashes) == []
    naive = {"train": [a.case_id], "test": [b.case_id]}
    assert len(leaks(naive, hashes)) == 2  # file and pixel hash both catch it


def test_bootstrap_interval_on_27_images_is_about_18_points():
    from edgebus.core.stats import bootstrap_classification

    y = np.array([0] * 16 + [1] * 11)
    prob = np.array([0.2] * 12 + [0.8] * 4 + [0.8] * 5 + [0.2] * 6)  # 17/27 correct, like the study's 62.96%
    ci = bootstrap_classification(y, prob, n_boot=2000, seed=0)
    assert abs(ci["accuracy"]["value"] - 17 / 27) < 1e-9
    half = (ci["accuracy"]["hi"] - ci["accuracy"]["lo"]) / 2
    assert 0.14 < half < 0.22, half
    again = bootstrap_classification(y, prob, n_boot=2000, seed=0)
    assert again["accuracy"] == ci["accuracy"]  # seeded


def test_torn_results_line_is_ignored_and_cut(tmp_path):
    from edgebus.core.io import append_jsonl, read_jsonl, repair_jsonl

    p = tmp_path / "cells.jsonl"
    append_jsonl(p, {"lr": 0.001, "epochs": 10})
    with open(p, "ab") as f:
        f.write(b'{"lr": 0.01, "epo')  # killed mid-write
    assert read_jsonl(p) == [{"lr": 0.001, "epochs": 10}]
    assert repair_jsonl(p) > 0
    append_jsonl(p, {"lr": 0.01, "epochs": 10})
    assert [c["lr"] for c in read_jsonl(p)] == [0.001, 0.01]


def test_study_table_puts_the_numbers_side_by_side(killed_and_resumed, monkeypatch):
    from edgebus.reports import study

    out, _, _ = killed_and_resumed
    monkeypatch.setitem(study.STUDY, "test-cnn", study.STUDY["mobilenetv2"])
    md = study.study_table([out])
    assert "## test-cnn" in md and "| accuracy (%) | 62.96 |" in md and "32 px, reduced grid" in md
    assert "| resnet50 | 224 px | **open: not run at full size** |" in md
    r = cli("grid", "table", out, "--out", out / "study.md")
    assert r.exit_code == 0, r.output
    assert "| accuracy (%) | 62.96 |" in (out / "study.md").read_text()


def test_full_size_rows_are_done_only_for_all_35_cells_at_the_study_size():
    from edgebus.reports import study

    cells = [{"lr": lr, "epochs": e} for lr in study.STUDY_LRS for e in study.STUDY_EPOCHS]
    ci = {"accuracy": {"value": 0.68, "lo": 0.48, "hi": 0.84}}
    full = {"model": "mobilenetv2", "task": "classify", "size": 224, "cells": cells,
            "chosen": {"lr": 5e-3, "epochs": 50}, "test_bootstrap": ci}
    small = full | {"size": 128}
    short = full | {"cells": cells[:-1]}
    rows = "\n".join(study.full_size_status([("g224", full), ("g128", small), ("gshort", short)]))
    assert "| mobilenetv2 | 224 px | done | `g224` | lr 0.005, 50 epochs | accuracy 68.0 [48.0, 84.0] |" in rows
    assert "| resnet50 | 224 px | **open: not run at full size** | — |" in rows
    assert "| unet-efficientnetb2 | 256 px | **open" in rows
    rows = "\n".join(study.full_size_status([("g128", small), ("gshort", short)]))
    assert "| mobilenetv2 | 224 px | **open: not run at full size** | reduced only: `g128` (35 cells, 128 px), " \
           "`gshort` (34 cells, 224 px) |" in rows


def test_grid_bad_input_errors(synthetic_breast_dir, killed_and_resumed, tmp_path):
    out, _, _ = killed_and_resumed
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "test-cnn"\nlearning_rates = [1e-3]\n')
    _one_line_error(cli("grid", "--recipe", bad, "--data", synthetic_breast_dir), "bad.toml", "learning_rates")
    _one_line_error(cli("grid", "--recipe", tmp_path / "nope", "--data", synthetic_breast_dir), "nope")
    _one_line_error(cli("grid", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 64,
                        "--lrs", "3e-3,1e-2", "--epochs", "1,2", "--out", out), "size")
    _one_line_error(cli("grid", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--lrs", "x"), "--lrs")
    _one_line_error(cli("grid", "segment", "--data", synthetic_breast_dir, "--model", "test-cnn"), "classify")
    _one_line_error(cli("grid", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--shard", "3/2"), "shard")
    _one_line_error(cli("grid", "report", tmp_path), "manifest")


def _val_bce_and_accuracy(run_dir: Path) -> tuple[float, float]:
    """The saved model.keras re-scored on the run's own validation part: (binary cross-entropy as
    Keras' val_loss computes it, accuracy at 0.5)."""
    from edgebus.core.manifest import Run
    from edgebus.data.arrays import load_run_arrays
    from edgebus.engine.fit import predict
    from edgebus.engine.models import load_run_model

    run = Run.load(run_dir)
    x, y = load_run_arrays(run, ("val",))["val"][:2]
    p = np.clip(predict(load_run_model(run), x).ravel().astype(np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64).ravel()
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))), float(np.mean((p > 0.5) == (y == 1)))


def test_keep_best_keeps_the_best_validation_epoch_and_keep_last_the_last(chain_data, tmp_path):
    """Issue 32: 4 epochs at a learning rate that swings (lr 3e-2, 12 validation images): --keep best
    records the epoch of the best validation accuracy (ties: the lower val_loss) in history.csv, and
    the saved weights are that epoch's: re-scored on the validation part they give that epoch's
    val_loss and accuracy, not the last epoch's. --keep last keeps epoch 4 the same way."""
    hists, kept = {}, {}
    for keep in ("best", "last"):
        out = tmp_path / keep
        r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 32, "--epochs", 4,
                "--lr", 3e-2, "--keep", keep, "--out", out, "--quiet")
        assert r.exit_code == 0, r.output
        with open(out / "history.csv", newline="") as f:
            hists[keep] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        stage = manifest(out)["stages"]["train"]
        assert stage["keep"] == keep and len(hists[keep]) == 4
        kept[keep] = stage["kept_epoch"]
        row = hists[keep][kept[keep] - 1]
        assert row["epoch"] == kept[keep]
        loss, acc = _val_bce_and_accuracy(out)
        # the saved weights are the kept epoch's: its val_loss, and no other epoch's
        assert loss == pytest.approx(row["val_loss"], rel=2e-3, abs=1e-4), (keep, loss, hists[keep])
        assert min(hists[keep], key=lambda h: abs(h["val_loss"] - loss))["epoch"] == kept[keep]
        assert acc == pytest.approx(row["val_accuracy"], abs=1e-6)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["val"]["accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6)
    assert kept["last"] == 4
    best = max(hists["best"], key=lambda h: (h["val_accuracy"], -h["val_loss"]))  # first of equals: the earlier epoch
    assert kept["best"] == best["epoch"], hists["best"]
    # the check has teeth only where the best epoch is not the last (on this seed: epoch 3, 0.83 against 0.42)
    assert kept["best"] != 4 and best["val_accuracy"] > hists["best"][3]["val_accuracy"], hists["best"]


def test_keep_best_ranks_by_validation_accuracy_then_loss():
    """engine.fit.KeepBest on hand-made epoch logs: the best validation accuracy wins even at a higher
    val_loss; equal accuracies go to the lower val_loss, then to the earlier epoch."""
    from edgebus.engine.fit import KeepBest

    class Model:
        n = 0

        def get_weights(self):
            return [self.n]

    for logs, want in (([(0.5, 0.3), (0.8, 0.9), (0.8, 0.6), (0.7, 0.1)], 3),
                       ([(0.6, 0.5), (0.6, 0.5), (0.5, 0.1)], 1),
                       ([(0.5, 0.7), (0.5, 0.2), (0.5, 0.4)], 2)):
        cb, model = KeepBest("classify"), Model()
        cb.set_model(model)
        for epoch, (acc, loss) in enumerate(logs):
            model.n = epoch + 1
            cb.on_epoch_end(epoch, {"val_accuracy": acc, "val_loss": loss, "accuracy": 1.0, "loss": 0.0})
        assert (cb.epoch, cb.weights) == (want, [want]), logs
