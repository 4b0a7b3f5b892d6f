"""A run folder from another machine is untrusted (issue 13): nothing in it is executed, no write
goes through a link planted in it, and every stage that uses a run artifact checks its sha256.

Each test copies a tiny exported run (test-cnn, 32 px) and tampers with the copy."""

import json
import shutil
import subprocess
import sys

import pytest

from edgebus.core.io import sha256_file
from tests.conftest import cli, copy_run, manifest, one_line_error


@pytest.fixture(scope="module")
def tiny_run(tiny_cls, tmp_path_factory):
    out = copy_run(tiny_cls, tmp_path_factory.mktemp("sec") / "run")
    r = cli("export", out, "--int8", "--ptq")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture()
def run(tiny_run, tmp_path):
    return copy_run(tiny_run, tmp_path / "run")


def _record(run, name):
    """Update the manifest's sha256 and size of `name`, as an attacker who edits both would."""
    m = manifest(run)
    p = run / name
    m["artifacts"][name].update(sha256=sha256_file(p), bytes=p.stat().st_size)
    (run / "manifest.json").write_text(json.dumps(m))


def _outside(tmp_path):
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    return victim


HDF5_WITH_LAMBDA = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tf_keras as keras
marker, path = sys.argv[1], sys.argv[2]
inp = keras.Input((32, 32, 3))
x = keras.layers.Lambda(eval(f"lambda t: (open({marker!r}, 'w').write('ran'), t)[1]"))(inp)
out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
keras.Model(inp, out).save(path)
os.remove(marker)  # saving traced the lambda once; start clean
if sys.argv[3:] == ["load"]:
    keras.models.load_model(path, safe_mode=True)  # tf_keras's HDF5 path ignores safe_mode
"""


def test_an_hdf5_model_with_a_lambda_is_refused_unexecuted(run, synthetic_breast_dir, tmp_path):
    marker = tmp_path / "code-ran"
    h5 = tmp_path / "evil.h5"
    # the threat is real: plain tf_keras runs the Lambda's code on load, safe mode or not
    proof = subprocess.run([sys.executable, "-c", HDF5_WITH_LAMBDA, str(marker), str(h5), "load"],
                           capture_output=True, text=True, timeout=300)
    assert proof.returncode == 0, proof.stderr[-2000:]
    assert marker.read_text() == "ran"
    marker.unlink()
    shutil.copyfile(h5, run / "model.keras")
    _record(run, "model.keras")
    one_line_error(cli("export", run, "--formats", "float32", "--overwrite"), "not a Keras zip archive")
    r = cli("bench", run, "--runs", 2, "--warmup", 0, "--out", tmp_path / "b")
    keras_row = next(row for row in json.loads((tmp_path / "b" / "report.json").read_text())["rows"]
                     if row["file"].endswith("model.keras"))
    assert keras_row["status"] != "ok" and "not a Keras zip archive" in keras_row["error"], r.output
    one_line_error(cli("evaluate", run, "--data", synthetic_breast_dir, "--format", "breast"), "not a Keras zip archive")
    assert not marker.exists()


def test_a_replaced_model_file_is_refused_by_every_stage(run, tmp_path):
    (run / "model_int8.tflite").write_bytes((run / "model_float32.tflite").read_bytes())
    frame = tmp_path / "frame.png"
    from PIL import Image

    Image.new("L", (64, 48), 90).save(frame)
    one_line_error(cli("predict", frame, "--classifier", run, "--out", tmp_path / "p"), "sha256 differs")
    one_line_error(cli("bundle", "--classifier", run, "--out", tmp_path / "b"), "sha256 differs")
    r = cli("bench", run, "--runs", 2, "--warmup", 0, "--no-keras")
    rows = {row["file"]: row for row in json.loads((run / "report.json").read_text())["rows"]}
    int8 = next(v for k, v in rows.items() if k.endswith("model_int8.tflite"))
    assert int8["status"] == "load_failed" and "sha256 differs" in int8["error"], r.output
    (run / "model.keras").write_bytes((run / "model.keras").read_bytes()[:-10] + b"0123456789")
    one_line_error(cli("export", run, "--formats", "float32", "--overwrite"), "sha256 differs")


def test_train_overwrite_never_writes_through_planted_links(run, synthetic_breast_dir, tmp_path):
    victim = _outside(tmp_path)
    (run / "model.keras").unlink()
    (run / "model.keras").symlink_to(victim)
    (run / ".tmp-model.keras").symlink_to(victim)  # the fixed temp name of edgebus <= 0.1.0
    (run / "manifest.json.tmp").symlink_to(victim)
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--out", run, "--overwrite", "--quiet")
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me"
    assert not (run / "model.keras").is_symlink() and (run / "model.keras").read_bytes()[:4] == b"PK\x03\x04"
    assert manifest(run)["artifacts"]["model.keras"]["sha256"] == sha256_file(run / "model.keras")


def test_output_folders_that_are_links_are_refused(run, tmp_path):
    victim = _outside(tmp_path)
    frame = tmp_path / "frame.png"
    from PIL import Image

    Image.new("L", (64, 48), 90).save(frame)
    for sub in ("overlays", "masks"):
        out = tmp_path / f"pred-{sub}"
        out.mkdir()
        (out / sub).symlink_to(victim.parent, target_is_directory=True)
        one_line_error(cli("predict", frame, "--classifier", run / "model_int8.tflite", "--out", out),
                       "symbolic link")
    pack = tmp_path / "pack-link"
    pack.symlink_to(victim.parent, target_is_directory=True)
    one_line_error(cli("bench", run, "--pack", pack), "pack")
    planted = tmp_path / "pack-planted"
    planted.mkdir()
    (planted / "model_int8.tflite").symlink_to(victim)
    one_line_error(cli("bench", run, "--pack", planted), "not an empty folder")
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.json").symlink_to(victim)  # a final name that is a link is replaced, not followed
    r = cli("bench", run, "--out", rep, "--runs", 2, "--warmup", 0, "--no-keras")
    assert r.exit_code == 0, r.output
    assert not (rep / "report.json").is_symlink()
    lock = run / ".edgebus.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    one_line_error(cli("export", run, "--formats", "float32", "--overwrite"), "lock")
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "keep me"
