"""The example notebooks (jupytext percent scripts) run end to end at small size, as a reader would run them."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, SHARED

NOTEBOOKS = ["chd_retrieval.py", "nmm_time_series.py", "detector_and_ued.py", "prior_training.py"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name):
    if name.startswith("chd") and not (SHARED / "chd_trajectories").exists():
        pytest.skip("shared CHD trajectories not present")
    env = os.environ | {"XFIT_QUICK": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
