"""Strict test set-up: float64 on, NaN checks on, warnings are errors (pyproject), explicit keys."""

import os
import tempfile
from pathlib import Path

# One persistent compilation cache for the whole run, never the user's ~/.cache: this process, the CLI run in it,
# every subprocess (benchmark smoke runs, notebook kernels) and every pytest-xdist worker of the run share compiled
# programs. Most of the suite's time is XLA compiling the same posterior for fresh processes; set before jax loads.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
CACHE = Path(tempfile.gettempdir(), f"xfit-test-cache-{_RUN}") if _RUN else Path(tempfile.mkdtemp(prefix="xfit-test-"))
CACHE.mkdir(exist_ok=True)
os.environ["XFIT_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"] = str(CACHE)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
SHARED = ROOT.parent / "shared" / "reference"

# Relative tolerances per dtype for comparisons against float64 references.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Each test module's compiled programs are dropped when it ends. XLA's CPU backend keeps three memory maps per
    compiled kernel while JAX caches the program; an xdist worker that ran half the suite held 65,000 of them, Linux's
    vm.max_map_count, and died in XLA with a segmentation fault (xfit.infer._compiled). Programs that later modules
    share load again from the persistent cache above."""
    yield
    jax.clear_caches()


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


LONG_FIRST = ("test_examples.py", "test_benchmarks.py", "test_cli.py")
"""Files of minute-long tests (notebooks, benchmark smoke runs, the command line), started first: pytest-xdist's
workers then end on short tests instead of one of them running a notebook alone at the end."""


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)  # stable: file order kept within each group
