"""Shared fixtures: the real BrEaST-Lesions_USG folder (or a skip), small synthetic sets, one trained
and exported classifier and segmenter, the CLI runner, and a Python without TensorFlow.

Session fixtures are read-only: after every test, each one that exists is compared with what it was
(every file's name, size, mtime and inode), and a test that wrote into one fails by name. A test
that needs to change a run copies it to its tmp_path first."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

# The repo sits at /work/main with shared/ beside it; EDGEBUS_BREAST_DIR overrides.
REAL_BREAST_DIR = Path(__file__).resolve().parents[2] / "shared/data/BrEaST-Lesions_USG"

SYNTHETIC = {"n_cases": 40, "malignant_fraction": 0.4, "n_normal": 2, "seed": 0}

# a 2 x 2 grid of a tiny classifier (and a 3-fold CV), for the grid, resume and fault tests
TINY_RECIPE = """
name = "tiny"
description = "test-cnn, 2 x 2"
reduced = true
task = "classify"
model = "test-cnn"
size = 32
batch = 16
seed = 0
lrs = [3e-3, 1e-2]
epochs = [1, 2]

[cv]
folds = 3
lr = 3e-3
epochs = 1
"""


_READ_ONLY: dict = {}  # path -> state when the fixture was made


def _state(root: Path) -> tuple:
    out = []
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def read_only(path: Path) -> Path:
    """Register a shared fixture folder as read-only for the rest of the session."""
    _READ_ONLY[Path(path)] = _state(path)
    return path


@pytest.fixture(autouse=True)
def _shared_fixtures_stay_unchanged(request):
    yield
    for path, before in list(_READ_ONLY.items()):
        after = _state(path)
        if after != before:
            _READ_ONLY[path] = after  # blame this test only
            changed = sorted({f[0] for f in set(after) ^ set(before)})[:5]
            pytest.fail(f"{request.node.nodeid} wrote into the shared fixture {path} ({', '.join(changed)}); "
                        "copy it to tmp_path first", pytrace=False)


def manifest(run) -> dict:
    """A run directory's manifest.json as a dict."""
    return json.loads((Path(run) / "manifest.json").read_text())


@pytest.fixture(scope="session")
def real_breast_dir() -> Path:
    path = Path(os.environ.get("EDGEBUS_BREAST_DIR") or REAL_BREAST_DIR)
    if not path.is_dir():
        pytest.skip(f"real BrEaST-Lesions_USG not found at {path}; set EDGEBUS_BREAST_DIR to its folder")
    return read_only(path)


@pytest.fixture(scope="session")
def synthetic_breast_dir(tmp_path_factory) -> Path:
    """A 40-case synthetic set in the BrEaST layout (made once per session; read-only)."""
    from edgebus.data.synthetic import make_synthetic

    return read_only(make_synthetic(tmp_path_factory.mktemp("breast-synthetic"), **SYNTHETIC))


def cli(*args):
    """Run the edgebus CLI in-process (typer's CliRunner)."""
    from edgebus.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def square_lesion(side: int = 64):
    """A bright square lesion on black (H, W, 3) and its mask (H, W, 1), float32: for augmentation tests."""
    import numpy as np

    img = np.zeros((side, side, 3), np.float32)
    img[20:40, 10:30] = 0.9
    mask = np.zeros((side, side, 1), np.float32)
    mask[20:40, 10:30] = 1
    return img, mask


def one_line_error(r, *needles):
    """The CLI ended with exit 2 and exactly one 'error:' line holding each needle, no traceback."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    for n in needles:
        assert str(n) in lines[0], lines[0]


# Prepended to a subprocess's code: importing TensorFlow (or pandas) there fails, as on a cart.
_BLOCK_TF = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'pandas', 'tensorflow_model_optimization'):
                raise ImportError(f'{name} is blocked: the device path must not import it')
    sys.meta_path.insert(0, Block())
""")


@pytest.fixture(scope="session")
def tiny_cls(synthetic_breast_dir, tmp_path_factory):
    """A test-cnn classifier trained 1 epoch at 32 px, not exported (read-only: copy_run it to change it)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    r = cli("train", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--epochs", 1,
            "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return read_only(out)


@pytest.fixture(scope="session")
def tiny_cv(synthetic_breast_dir, tmp_path_factory):
    """A 3-fold test-cnn classifier CV at 32 px, 1 epoch, with int8 fold models and its out-of-fold
    operating point (read-only: copy_run it to change it). For plumbing, not for quality."""
    out = tmp_path_factory.mktemp("tiny-cv") / "cv"
    r = cli("cv", "classify", "--data", synthetic_breast_dir, "--model", "test-cnn", "--size", 32, "--folds", 3,
            "--epochs", 1, "--int8", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("operating-point", out)
    assert r.exit_code == 0, r.output
    return read_only(out)


def _int8_file(run: Path) -> Path:
    exports = manifest(run)["exports"]
    e = exports["int8"]
    assert e["status"] == "ok", e
    return run / e["file"]


@pytest.fixture(scope="session")
def cart_models(synthetic_breast_dir, tmp_path_factory):
    """Tiny int8 classifier + segmenter at 64 px (quality is irrelevant here, only the plumbing): the
    cart tests of predict, bad frames and hardening share them."""
    runs = tmp_path_factory.mktemp("predict-runs")
    out = {}
    for task, model, key in (("classify", "test-cnn", "cls"), ("segment", "test-unet", "seg")):
        run = runs / key
        r = cli("train", task, "--data", synthetic_breast_dir, "--model", model, "--size", 64, "--epochs", 3,
                "--lr", 3e-3, "--batch", 16, "--out", run, "--quiet")
        assert r.exit_code == 0, r.output
        r = cli("export", run, "--formats", "int8", "--calibration-images", 16)
        assert r.exit_code == 0, r.output
        out[key] = run
        out[f"{key}_file"] = _int8_file(run)
    return out


def copy_run(run: Path, dst: Path) -> Path:
    """A writable copy of a shared run."""
    import shutil

    shutil.copytree(run, dst)
    return dst


@pytest.fixture(scope="session")
def without_tf():
    """run(code, **subprocess options): run Python code in a fresh interpreter where TensorFlow,
    Keras, tfmot and pandas cannot be imported (a cart, a Raspberry Pi); fails the test on a
    non-zero exit, with the process's output."""

    def run(code: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-c", _BLOCK_TF + textwrap.dedent(code)], capture_output=True,
                             text=True, timeout=timeout, **kw)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out

    return run


@pytest.fixture(scope="session")
def chain_data(tmp_path_factory):
    """120 cases: enough for a 12-image test split."""
    from edgebus.data.synthetic import make_synthetic

    return read_only(make_synthetic(tmp_path_factory.mktemp("chain-data"), n_cases=120, seed=1))


@pytest.fixture(scope="session")
def cls_run(chain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cls"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 64, "--epochs", 25,
            "--lr", 3e-3, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--int8")
    assert r.exit_code == 0, r.output
    return read_only(out)


@pytest.fixture(scope="session")
def seg_run(chain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "seg"
    r = cli("train", "segment", "--data", chain_data, "--model", "test-unet", "--size", 64, "--epochs", 20,
            "--lr", 3e-3, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--int8")
    assert r.exit_code == 0, r.output
    return read_only(out)
