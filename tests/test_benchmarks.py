"""Benchmarks must keep running: a tiny smoke run of each script (no timing is asserted)."""

import json
import subprocess
import sys

import pytest

from .conftest import ROOT


def run_smoke(name: str, tmp_path, *, workdir: bool = False) -> dict:
    """Run benchmarks/NAME.py --smoke (with --workdir tmp_path if asked) and return the JSON it writes."""
    out = tmp_path / f"{name}.json"
    extra = ["--workdir", str(tmp_path)] if workdir else []
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke", *extra, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_forward_benchmark_smoke(tmp_path):
    data = run_smoke("forward", tmp_path)
    assert [row["batch"] for row in data["rows"]] == [1, 8]
    assert all(row["xfit_forward"] > 0 and row["numpy_forward"] > 0 for row in data["rows"])
    assert data["gradient_memory"]["NMM"]["grad_auto_MB"] > 0


def test_pools_benchmark_smoke(tmp_path):
    data = run_smoke("pools", tmp_path)
    assert [row["method"] for row in data["build"]] == ["wigner", "md", "mc", "sweep"]
    assert all(row["rows"] == row["n"] for row in data["streaming"])


def test_retrieval_benchmark_smoke(tmp_path):
    if not (ROOT.parent / "shared" / "reference" / "chd_trajectories").exists():
        pytest.skip("shared CHD trajectories not present")
    data = run_smoke("retrieval", tmp_path)
    assert data["configs"][0]["closed"]["n"] >= 1


def test_images_benchmark_smoke(tmp_path):
    data = run_smoke("images", tmp_path)
    assert data["images"]["photoselected"]["images_per_second"] > 0
    assert [row["batch"] for row in data["anisotropic"]] == [1, 8]
    assert [row["image"] for row in data["likelihood"]] == ["isotropic", "photoselected"]
    assert all(row["seconds"] > 0 for row in data["likelihood"])


def test_prior_benchmark_smoke(tmp_path):
    data = run_smoke("prior", tmp_path, workdir=True)
    assert set(data["held_out"]) == {"CHD"}  # --smoke: one molecule per section
    assert "(d) prior + refinement" in data["held_out"]["CHD"] and data["speed"]["inference_latency_s"] > 0
    unseen = data["unseen"]
    assert {"CHD", "1,4-thioxane"} <= set(unseen) and unseen["broad_prior"].endswith("broad")
    assert "specific prior + refinement" in unseen["CHD"] and "broad prior + refinement" in unseen["1,4-thioxane"]


def test_prior_encoders_benchmark_smoke(tmp_path):
    rows = run_smoke("prior_encoders", tmp_path, workdir=True)["encoders"]
    assert set(rows) == {"cnn", "gru"} and all(r["refined_median"] >= 0 for r in rows.values())


def test_prior_ranking_benchmark_smoke(tmp_path):
    sets = run_smoke("prior_ranking", tmp_path, workdir=True)["sets"]
    assert {"CHD held-out sweep", "DT held-out sweep"} <= set(sets)
    for row in sets.values():  # the oracle picks among the same candidates, so it can only be as good or better
        assert row["oracle"]["median"] <= row["chi2"]["median"] + 1e-12


def test_ued_benchmark_smoke(tmp_path):
    if not (ROOT.parent / "shared" / "reference" / "chd_trajectories").exists():
        pytest.skip("shared CHD trajectories not present")
    data = run_smoke("ued", tmp_path)
    assert data["sm"]["n"] == 2 and data["sm"]["method"] == "posterior" and data["sm"]["carbon_median"] >= 0


def test_anisotropic_benchmark_smoke(tmp_path):
    if not (ROOT.parent / "shared" / "reference" / "chd_trajectories").exists():
        pytest.skip("shared CHD trajectories not present")
    data = run_smoke("anisotropic", tmp_path)
    assert {"isotropic", "isotropic+p2"} <= set(data) and data["isotropic+p2"]["n"] == 2


def test_posterior_benchmark_smoke(tmp_path):
    data = run_smoke("posterior", tmp_path)
    assert data["nmm"]["noise_factor"] > 1 and 0 <= data["nmm"]["fraction_chi2_le_1.5"] <= 1
    if "chd" in data:
        for row in data["chd"].values():
            assert row["n"] >= 1 and len(row["coverage_1_2_3_sigma"]) == 3


def test_cold_start_benchmark_smoke(tmp_path):
    data = run_smoke("cold_start", tmp_path)
    row = data["runs"]["no persistent cache"]
    assert row["load_conformer_prior_s"] > 0 and row["load_proposal_s"] > 0 and row["xfit"].startswith(str(ROOT))


def test_diagnostics_alternation_index_reads_chd_bond_orders():
    # The index the near-closed diagnostics report: ground-state CHD's single ring bonds are ~0.15 A longer than its
    # double bonds (C2=C3, C4=C5); a ring whose bond lengths are swapped reads the opposite sign.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from diagnostics import RING_DOUBLE, RING_SINGLE, alternation_index
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import numpy as np

    import xfit

    x = xfit.molecule("CHD").positions
    a = alternation_index(x)
    assert 0.08 < a < 0.25
    # A ring path with the long and short bonds swapped: its index is minus the difference, exactly.
    lengths = {**{b: 1.34 for b in RING_SINGLE}, **{b: 1.50 for b in RING_DOUBLE}}
    angles = np.cumsum([0.0, *[2 * np.pi / 6] * 5])
    ring = np.zeros((6, 3))
    for k in range(1, 6):  # a polygon path is enough: the index reads consecutive bonds only
        ring[k] = ring[k - 1] + lengths[(k - 1, k)] * np.array([np.cos(angles[k - 1]), np.sin(angles[k - 1]), 0])
    assert alternation_index(ring) == pytest.approx(1.34 - 1.50)
    np.testing.assert_allclose(alternation_index(np.stack([x, x + 1.0])), [a, a])  # batched, translation-free
