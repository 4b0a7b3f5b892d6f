"""Shared fixtures: the real BrEaST-Lesions_USG folder (or a skip) and one small synthetic set."""

import os
from pathlib import Path

import pytest

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
