"""Benchmarks must keep running: a tiny smoke run of each script (no timing is asserted)."""

import json
import subprocess
import sys

from .conftest import ROOT


def test_forward_benchmark_smoke(tmp_path):
    out = tmp_path / "forward.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "forward.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert [row["batch"] for row in data["rows"]] == [1, 8]
    assert all(row["xfit_forward"] > 0 and row["numpy_forward"] > 0 for row in data["rows"])
    assert data["gradient_memory"]["NMM"]["grad_auto_MB"] > 0


def test_pools_benchmark_smoke(tmp_path):
    out = tmp_path / "pools.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pools.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert [row["method"] for row in data["build"]] == ["wigner", "md", "mc", "sweep"]
    assert all(row["rows"] == row["n"] for row in data["streaming"])


def test_retrieval_benchmark_smoke(tmp_path):
    if not (ROOT.parent / "shared" / "reference" / "chd_trajectories").exists():
        import pytest

        pytest.skip("shared CHD trajectories not present")
    out = tmp_path / "retrieval.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "retrieval.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["configs"][0]["closed"]["n"] >= 1


def test_images_benchmark_smoke(tmp_path):
    out = tmp_path / "images.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "images.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["images"]["photoselected"]["images_per_second"] > 0
    assert [row["batch"] for row in data["anisotropic"]] == [1, 8]
