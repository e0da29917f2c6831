"""The example notebooks (examples/*.ipynb) run end to end at small size (XFIT_QUICK=1), as a reader runs them,
and are committed without outputs."""

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT, SHARED

EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
NEEDS_SHARED = {"chd_trajectory.ipynb"}


def test_the_documented_notebooks_exist():
    expected = {
        "quick_start.ipynb",
        "nmm_time_series.ipynb",
        "ued_retrieval.ipynb",
        "anisotropic_image.ipynb",
        "prior_training.ipynb",
    }
    assert expected <= set(NOTEBOOKS)
    readme = (ROOT / "README.md").read_text()
    assert all(f"(examples/{name})" in readme for name in NOTEBOOKS)  # each linked from the README
    assert not list(EXAMPLES.glob("*.py")), "the notebooks replace the percent scripts: no duplicates"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    path = EXAMPLES / name
    assert path.stat().st_size < 20_000, "kept small: no embedded images"
    nb = json.loads(path.read_text())
    assert nb["cells"][0]["cell_type"] == "markdown"  # each opens with what it shows
    for cell in nb["cells"]:
        assert "attachments" not in cell, name
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    if name in NEEDS_SHARED and not (SHARED / "chd_trajectories").exists():
        pytest.skip("shared CHD trajectories not present")
    # The kernel inherits this environment: small sizes, no display.
    monkeypatch.setenv("XFIT_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(EXAMPLES / name, as_version=4)  # executed in memory: the file is never written
    # First, that the kernel is this interpreter's environment (a user's own "python3" kernelspec could point
    # elsewhere): jupyter_client runs a spec whose argv starts with "python" as sys.executable.
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable"))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
