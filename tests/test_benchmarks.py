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
