"""Strict test set-up: float64 on, NaN checks on, warnings are errors (pyproject), explicit keys."""

import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)
# The CLI's persistent compilation cache goes to a per-session folder, never the user's ~/.cache (subprocesses too).
os.environ["XFIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="xfit-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
SHARED = ROOT.parent / "shared" / "reference"

# Relative tolerances per dtype for comparisons against float64 references.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def nmm():
    from ase.io import read

    return read(DATA / "nmm.xyz")


@pytest.fixture(scope="session")
def chd():
    from ase.io import read

    return read(DATA / "chd.xyz")


@pytest.fixture(scope="session")
def skeleton():
    """CHD's carbon ring, the reference and a distorted copy (the 'excited' truth), 0.06 A per atom."""
    from ase.io import read

    ref = read(DATA / "chd.xyz")[:6]
    truth = ref.copy()
    truth.positions += 0.06 * np.random.default_rng(1).standard_normal((6, 3))
    return ref, truth
