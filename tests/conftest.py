"""Shared fixtures: the real BrEaST-Lesions_USG folder (or a skip) and one small synthetic set."""

import os
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

# The repo sits at /work/main with shared/ beside it; EDGEBUS_BREAST_DIR overrides.
REAL_BREAST_DIR = Path(__file__).resolve().parents[2] / "shared/data/BrEaST-Lesions_USG"

SYNTHETIC = {"n_cases": 40, "malignant_fraction": 0.4, "n_normal": 2, "seed": 0}


@pytest.fixture(scope="session")
def real_breast_dir() -> Path:
    path = Path(os.environ.get("EDGEBUS_BREAST_DIR") or REAL_BREAST_DIR)
    if not path.is_dir():
        pytest.skip(f"real BrEaST-Lesions_USG not found at {path}; set EDGEBUS_BREAST_DIR to its folder")
    return path


@pytest.fixture(scope="session")
def synthetic_breast_dir(tmp_path_factory) -> Path:
    """A 40-case synthetic set in the BrEaST layout (made once per session; treat as read-only)."""
    from edgebus.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("breast-synthetic"), **SYNTHETIC)


def cli(*args):
    """Run the edgebus CLI in-process (typer's CliRunner)."""
    from edgebus.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r, *needles):
    """The CLI ended with exit 2 and exactly one 'error:' line holding each needle, no traceback."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    for n in needles:
        assert str(n) in lines[0], lines[0]


# Prepended to a subprocess's code: importing TensorFlow (or pandas) there fails, as on a cart.
BLOCK_TF = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'pandas', 'tensorflow_model_optimization'):
                raise ImportError(f'{name} is blocked: the device path must not import it')
    sys.meta_path.insert(0, Block())
""")


@pytest.fixture(scope="session")
def chain_data(tmp_path_factory):
    """120 cases: enough for a 12-image test split."""
    from edgebus.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("chain-data"), n_cases=120, seed=1)


@pytest.fixture(scope="session")
def cls_run(chain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cls"
    r = cli("train", "classify", "--data", chain_data, "--model", "test-cnn", "--size", 64, "--epochs", 25,
            "--lr", 3e-3, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--int8")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def seg_run(chain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "seg"
    r = cli("train", "segment", "--data", chain_data, "--model", "test-unet", "--size", 64, "--epochs", 20,
            "--lr", 3e-3, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", out, "--int8")
    assert r.exit_code == 0, r.output
    return out
