"""Results files (save_results/load_results), signal and fit-quality checks, corrupt-file errors."""

import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import xfit
from xfit.data import _results

Q = np.linspace(0.5, 8.0, 60)
FAST = {"n_starts": 2, "steps": 20, "seed": 0, "prior": None}


@pytest.fixture(scope="module")
def fitted(chd, tmp_path_factory):
    """Two refinement results for CHD patterns read from files (so info["source"] is set), and a difference one."""
    folder = tmp_path_factory.mktemp("patterns")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        x = chd.positions + rng.normal(0, 0.02, chd.positions.shape)
        # the third: q mislabelled (the intensity at q/2 written against q), a fit no CHD structure can match
        values = np.asarray(xfit.intensity(chd.numbers, x, Q if k < 2 else Q / 2))
        pattern = xfit.Pattern(Q, values, 0.003 * values, delay=0.5 * k)
        paths.append(pattern.save(folder / f"p{k}.txt"))
    patterns = [xfit.load_pattern(p) for p in paths]
    results = xfit.retrieve(patterns, chd, **FAST)
    return results[:2], paths[:2], results[2]


def _assert_same(a, b):
    assert np.array_equal(a.atoms.numbers, b.atoms.numbers)
    np.testing.assert_array_equal(a.atoms.positions, b.atoms.positions)
    assert len(a.candidates) == len(b.candidates)
    for ca, cb in zip(a.candidates, b.candidates, strict=True):
        np.testing.assert_array_equal(ca.positions, cb.positions)
    np.testing.assert_array_equal(a.chi2, b.chi2)
    assert a.chi2_reduced == b.chi2_reduced
    assert a.parameters == b.parameters
    for pa, pb in ((a.model, b.model), (a.pattern, b.pattern)):
        np.testing.assert_array_equal(pa.q, pb.q)
        np.testing.assert_array_equal(pa.values, pb.values)
        assert (pa.sigma is None) == (pb.sigma is None)
        assert (pa.kind, pa.probe, pa.delay) == (pb.kind, pb.probe, pb.delay)
    for name in ("distances", "positions", "candidate_spread", "covariance", "reference_positions"):
        np.testing.assert_array_equal(getattr(a.uncertainty, name), getattr(b.uncertainty, name))
    assert a.uncertainty.n_comparable == b.uncertainty.n_comparable
    assert a.info == b.info


def test_results_round_trip_and_append(fitted, tmp_path):
    results, paths, _ = fitted
    path = tmp_path / "r.h5"
    xfit.save_results(results[:1], path)
    xfit.save_results(results[1], path, append=True)
    loaded = xfit.load_results(path)
    assert len(loaded) == 2
    for a, b in zip(results, loaded, strict=True):
        _assert_same(a, b)
    assert [r.info["source"] for r in loaded] == [str(p) for p in paths]
    assert len(xfit.load_results(path, since=1)) == 1
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "xfit-results" and f.attrs["schema_version"] == _results.SCHEMA_VERSION
    # not appending replaces the file
    xfit.save_results(results[:1], path)
    assert len(xfit.load_results(path)) == 1


def _as_posterior(r):
    """Refinement result ``r`` dressed as a posterior one: five samples, two basins (random covariances)."""
    import dataclasses

    rng = np.random.default_rng(1)
    samples = r.atoms.positions + rng.normal(0, 0.01, (5, *r.atoms.positions.shape))
    weights = np.full(5, 0.2)
    n = 3 * len(r.atoms)
    factor = rng.normal(0, 0.01, (2, n, n))
    basins = (samples[:2], factor @ np.swapaxes(factor, 1, 2), np.array([0.7, 0.3]))
    return dataclasses.replace(
        r,
        samples=samples,
        sample_weights=weights,
        sample_modes=np.zeros(5, int),
        modes=np.ones(len(r.candidates)) / len(r.candidates),
        uncertainty=dataclasses.replace(r.uncertainty, samples=(samples, weights), basins=basins),
    )


def test_posterior_fields_round_trip(fitted, tmp_path):
    """Samples, modes and sample weights (posterior results) survive, with the uncertainty's samples and basins."""
    posterior = _as_posterior(fitted[0][0])
    samples, basins = posterior.samples, posterior.uncertainty.basins
    xfit.save_results([posterior], tmp_path / "p.h5")
    (back,) = xfit.load_results(tmp_path / "p.h5")
    _assert_same(posterior, back)
    for name in ("samples", "sample_weights", "sample_modes", "modes"):
        np.testing.assert_allclose(getattr(back, name), getattr(posterior, name), rtol=0, atol=0)
    np.testing.assert_array_equal(back.uncertainty.samples[0], samples)
    for a, b in zip(back.uncertainty.basins, basins, strict=True):  # covariances stored as float32
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    assert back.uncertainty.of(lambda x: x[0, 0] - x[1, 1]) == pytest.approx(
        posterior.uncertainty.of(lambda x: x[0, 0] - x[1, 1]), rel=1e-5
    )


def test_samples_file_holds_samples_modes_and_the_error_mixture(fitted, tmp_path):
    """``xfit retrieve --samples``: one group per pattern, samples float32, the basins the error bars come from."""
    from xfit.data._samples import save_samples

    posterior, refinement = _as_posterior(fitted[0][0]), fitted[0][1]
    save_samples([posterior, refinement], tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["n_patterns"] == 2 and sorted(f) == ["pattern_0000", "pattern_0001"]
        g = f["pattern_0000"]
        np.testing.assert_allclose(g["samples"][()], posterior.samples, rtol=1e-6)
        np.testing.assert_array_equal(g["structure"][()], posterior.atoms.positions)
        np.testing.assert_array_equal(g["modes"][()], posterior.modes)
        names = ("basin_optima", "basin_covariances", "basin_weights")
        for name, value in zip(names, posterior.uncertainty.basins, strict=True):
            np.testing.assert_allclose(g[name][()], value, rtol=1e-6, atol=1e-12)
        assert "samples" not in f["pattern_0001"] and "basin_optima" not in f["pattern_0001"]
        assert f["pattern_0001"].attrs["delay_ps"] == pytest.approx(0.5)


def test_torn_record_is_skipped_and_replaced(fitted, tmp_path):
    results, _, _ = fitted
    path = tmp_path / "r.h5"
    xfit.save_results(results[:1], path)
    with h5py.File(path, "a") as f:  # a writer killed mid-record: no 'complete' attribute
        g = f["records"].create_group("000001")
        g["numbers"] = [1, 2]
    assert len(xfit.load_results(path)) == 1
    _results.append_failure(path, "bad.txt", "ValueError: broken")
    index = _results.read_index(path)
    assert [(i["name"], i["status"]) for i in index] == [("000000", "ok"), ("000001", "failed")]
    assert index[1]["source"] == "bad.txt" and "broken" in index[1]["error"]
    assert len(xfit.load_results(path)) == 1


_READER = """
import sys, time
from xfit.data._results import read_index
counts = [len(read_index(sys.argv[1]))]
print("ready", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    n = len(read_index(sys.argv[1]))
    counts.append(n)
    if n >= int(sys.argv[2]):
        break
print(min(counts), max(counts), len(counts))
"""


def test_reader_in_another_process_sees_records_while_appending(fitted, tmp_path):
    """HDF5 file locking must not make a concurrent reader fail; it sees a growing number of complete records."""
    results, _, _ = fitted
    path = tmp_path / "r.h5"
    xfit.save_results(results[:1], path)
    n_more = 30
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path), str(1 + n_more)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert reader.stdout.readline().strip() == b"ready"
    for k in range(n_more):
        xfit.save_results(results[k % 2], path, append=True)
        time.sleep(0.01)
    out, err = reader.communicate(timeout=90)
    assert reader.returncode == 0, err.decode()
    lo, hi, reads = map(int, out.split())
    assert lo >= 1 and hi == 1 + n_more and reads >= 2
    assert len(xfit.load_results(path)) == 1 + n_more


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "not an HDF5 file"), (b"garbage" * 100, "not an HDF5 file")],
)
def test_corrupt_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "x.h5"
    path.write_bytes(content)
    for call, what in (
        (xfit.load_results, "results file"),
        (xfit.load_patterns, "pattern"),
        (xfit.pool_summary, "pool"),
    ):
        with pytest.raises(ValueError, match=match) as info:
            call(path)
        assert str(path) in str(info.value) and what in str(info.value)


def test_foreign_hdf5_is_not_a_results_file(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1.0]
    with pytest.raises(ValueError, match="not an xfit results file"):
        xfit.load_results(path)


@pytest.mark.parametrize(
    ("values", "sigma", "match"),
    [
        (np.zeros(60), None, "every value is zero"),
        (np.full(60, 3.0), None, "constant"),
        (np.linspace(1e-3, 2e-3, 60), np.full(60, 0.01), "no value is above its sigma"),
    ],
)
def test_pattern_without_signal_is_refused_before_fitting(chd, values, sigma, match):
    with pytest.raises(ValueError, match=match):
        xfit.retrieve(xfit.Pattern(Q, values, sigma), chd, **FAST)


def test_poor_fit_warns_with_likely_causes(fitted):
    """CHD patterns fitted with CHD give no warning; one with q mislabelled gets one naming the likely causes."""
    results, _, wrong = fitted
    assert all("warning" not in r.info and r.chi2_reduced < 25 for r in results)
    assert wrong.chi2_reduced > 25
    assert "wrong molecule" in wrong.info["warning"] and "q not in 1/A" in wrong.info["warning"]
    # the rule itself: the same result with a reduced chi2 just below/above the threshold
    import dataclasses

    from xfit.infer._retrieve import CHI2_WARNING_THRESHOLD, chi2_warning

    assert chi2_warning(dataclasses.replace(wrong, chi2_reduced=0.99 * CHI2_WARNING_THRESHOLD)) is None
    assert "sigma too small" in chi2_warning(dataclasses.replace(wrong, chi2_reduced=1.01 * CHI2_WARNING_THRESHOLD))


def test_fitted_fraction_at_its_bound_warns(fitted):
    """A fitted excitation fraction at 1 (or 0) says the structure is not determined; a fixed one, or one inside
    the interval, says nothing; a poor fit and a fraction at its bound give both warnings."""
    import dataclasses

    from xfit.infer._retrieve import _annotate

    r = fitted[0][0]

    def annotated(fraction, fitted_fraction, chi2_reduced=1.0):
        info = {**r.info, "fraction_fitted": fitted_fraction}
        changed = dataclasses.replace(r, parameters={"fraction": fraction}, info=info, chi2_reduced=chi2_reduced)
        return _annotate(changed, r.pattern).info.get("warning", "")

    assert "fraction times the structural change" in annotated(1.0, True)
    assert "bound (1e-06)" in annotated(1e-6, True)
    assert annotated(1.0, False) == "" and annotated(0.3, True) == ""
    both = annotated(1.0, True, chi2_reduced=40.0)
    assert 0 == both.index("poor fit") < both.index("fitted excitation fraction")


def test_retrieve_cli_writes_a_results_file_for_h5_output(fitted, tmp_path, capsys):
    """``xfit retrieve ... -o results.h5`` writes the results file; ``-o x.xyz`` still writes xyz frames."""
    import argparse

    from ase.io import read

    from xfit.cli._retrieve import _write_outputs

    results, _, _ = fitted
    for name in ("r.h5", "r.xyz"):
        args = argparse.Namespace(samples=None, output=tmp_path / name, plot=None, track=[], scheduler=None)
        _write_outputs(args, results, results[0].atoms)
    assert "xfit.load_results" in capsys.readouterr().out
    for a, b in zip(results, xfit.load_results(tmp_path / "r.h5"), strict=True):
        _assert_same(a, b)
    frames = read(tmp_path / "r.xyz", index=":")
    assert len(frames) == 2 and frames[1].info["delay_ps"] == pytest.approx(0.5)
