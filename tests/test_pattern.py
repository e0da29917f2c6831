"""Pattern validation, readers and writers, difference signals and noise models."""

import os

import jax
import numpy as np
import pytest

import xfit

from .conftest import SHARED

Q = np.linspace(0.5, 8.0, 64)


def make(**changes):
    fields = {"q": Q, "values": 1000.0 / (1 + Q**2), "sigma": np.full(len(Q), 0.5)} | changes
    return xfit.Pattern(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"values": np.where(Q > 3, np.nan, 1.0)}, "NaN or infinite entries"),
        ({"values": np.ones(10)}, "values has 10 points but q has 64"),
        ({"sigma": np.ones(3)}, "sigma has 3 points"),
        ({"sigma": np.zeros(64)}, "sigma must be positive"),
        ({"q": Q[::-1].copy()}, "strictly increasing"),
        ({"q": Q - 1.0}, "non-negative"),
        ({"q": np.array([]), "values": np.array([]), "sigma": None}, "empty"),
        ({"kind": "intensity"}, "unknown pattern kind"),
        ({"probe": "neutron"}, "unknown probe"),
    ],
)
def test_validation_names_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        make(**changes)


def test_pattern_is_immutable():
    p = make()
    with pytest.raises(ValueError):
        p.values[0] = 1.0


@pytest.mark.parametrize("suffix", [".txt", ".dat", ".npz", ".h5"])
def test_round_trip(tmp_path, suffix):
    p = make(kind="percent_difference", delay=1.25)
    path = p.save(tmp_path / f"pattern{suffix}")
    back = xfit.load_pattern(path)
    np.testing.assert_allclose(back.q, p.q, rtol=1e-10)
    np.testing.assert_allclose(back.values, p.values, rtol=1e-10)
    np.testing.assert_allclose(back.sigma, p.sigma, rtol=1e-10)
    assert (back.kind, back.probe, back.delay) == ("percent_difference", "xray", 1.25)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would have made it


def test_two_column_text_without_header(tmp_path):
    path = tmp_path / "plain.txt"
    np.savetxt(path, np.column_stack([Q, np.ones_like(Q)]))
    p = xfit.load_pattern(path)
    assert p.sigma is None and p.kind == "total" and len(p) == len(Q)
    assert xfit.load_pattern(path, kind="elastic").kind == "elastic"


def test_several_patterns_round_trip(tmp_path):
    patterns = [make(delay=t, values=make().values * (1 + 0.01 * t)) for t in (0.0, 0.5, 1.0)]
    for suffix in (".npz", ".h5"):
        path = xfit.save_patterns(tmp_path / f"series{suffix}", patterns)
        back = xfit.load_patterns(path)
        assert [b.delay for b in back] == [0.0, 0.5, 1.0]
        np.testing.assert_allclose(back[2].values, patterns[2].values)
        with pytest.raises(ValueError, match="holds 3 patterns"):
            xfit.load_pattern(path)
        assert xfit.load_pattern(path, index=1).delay == 0.5
    with pytest.raises(ValueError, match=r"need a \.npz or \.h5"):
        xfit.save_patterns(tmp_path / "series.txt", patterns)


def test_matlab_layout_with_delay_axis(tmp_path):
    from scipy.io import savemat

    iso = np.random.default_rng(0).normal(size=(len(Q), 5))
    savemat(tmp_path / "d.mat", {"q": Q[None], "t": np.arange(5.0)[:, None], "iso": iso, "iso_stdx": 0.1 + 0 * iso})
    patterns = xfit.load_patterns(tmp_path / "d.mat")
    assert len(patterns) == 5 and patterns[3].delay == 3.0 and patterns[0].kind == "percent_difference"
    np.testing.assert_allclose(patterns[4].values, iso[:, 4])


def test_measured_nmm_data_loads():
    path = SHARED / "nmm_experiment" / "NMM_exp_dataset.mat"
    if not path.exists():
        pytest.skip("shared reference data not present")
    patterns = xfit.load_patterns(path)
    assert len(patterns) == 99
    assert all(p.kind == "percent_difference" and len(p) == 39 and p.sigma is not None for p in patterns)
    assert patterns[0].delay == pytest.approx(-1.0) and patterns[-1].delay == pytest.approx(4.0)
    assert patterns[0].q[0] == pytest.approx(0.3323, abs=1e-4)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        xfit.load_pattern(tmp_path / "missing.txt")
    np.savetxt(tmp_path / "four.txt", np.ones((5, 4)))
    with pytest.raises(ValueError, match="2 or 3 columns"):
        xfit.load_pattern(tmp_path / "four.txt")
    np.savez(tmp_path / "nameless.npz", x=Q, y=Q)
    with pytest.raises(ValueError, match="no q array"):
        xfit.load_pattern(tmp_path / "nameless.npz")
    np.savetxt(tmp_path / "nan.txt", np.column_stack([Q, np.where(Q > 2, np.nan, 1.0)]))
    with pytest.raises(ValueError, match=r"nan\.txt.*NaN"):
        xfit.load_pattern(tmp_path / "nan.txt")


def test_percent_difference_is_the_pump_probe_signal():
    # With a fraction f excited, I_on = f I_exc + (1 - f) I_ref, and 100 (I_on - I_off)/I_off is the formula.
    i_ref, i_exc, f = np.array([100.0, 50.0]), np.array([110.0, 45.0]), 0.057
    on = f * i_exc + (1 - f) * i_ref
    np.testing.assert_allclose(xfit.percent_difference(i_exc, i_ref, f), 100 * (on - i_ref) / i_ref)
    np.testing.assert_allclose(xfit.difference(i_exc, i_ref, f), on - i_ref)


def test_noise_is_reproducible_and_has_the_right_size(key):
    intensity = np.full((2000, 16), 1000.0)
    a, sigma = xfit.gaussian_noise(key, intensity, 1e-3)
    b, _ = xfit.gaussian_noise(key, intensity, 1e-3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sigma, 1.0)
    assert np.std(np.asarray(a) - intensity) == pytest.approx(1.0, rel=0.03)
    counts, sigma = xfit.poisson_noise(jax.random.key(1), intensity, photons=16 * 1e4)
    relative = np.asarray(counts) / intensity - 1
    assert np.std(relative) == pytest.approx(1e-2, rel=0.05)  # 1e4 photons per point
    np.testing.assert_allclose(np.mean(counts), 1000.0, rtol=1e-3)


def test_pattern_with_noise(key):
    p = make(sigma=None)
    noisy = p.with_noise(key, relative=0.01)
    np.testing.assert_allclose(noisy.sigma, 0.01 * p.values)
    assert noisy.metadata["noise"] == {"relative": 0.01}
    np.testing.assert_array_equal(noisy.values, p.with_noise(key, relative=0.01).values)
    with pytest.raises(ValueError, match="exactly one"):
        p.with_noise(key)


def test_estimate_noise_recovers_the_true_scatter_before_time_zero(key):
    # Stated sigma 1, true scatter 3: the factor is 3 within sampling error (40 signal-free patterns x 50 points).
    q = np.linspace(0.5, 4.0, 50)
    noise = 3.0 * np.asarray(jax.random.normal(key, (60, 50)))
    signal = np.where(np.arange(60)[:, None] >= 40, 0.5, 0.0)
    series = [
        xfit.Pattern(q, signal[k] + noise[k], np.ones(50), kind="percent_difference", delay=-2.0 + 0.1 * k)
        for k in range(60)
    ]
    rescaled, factor = xfit.estimate_noise(series, before=0.0)
    assert factor == pytest.approx(3.0, rel=0.1)
    assert rescaled[-1].sigma == pytest.approx(np.full(50, factor))
    assert [p.delay for p in rescaled] == [p.delay for p in series]
    unstated, one = xfit.estimate_noise([p.replace(sigma=None) for p in series], before=0.0)
    assert one == 1.0 and np.median(unstated[0].sigma) == pytest.approx(3.0, rel=0.15)
    with pytest.raises(ValueError, match="difference signals only"):
        xfit.estimate_noise([xfit.Pattern(q, np.ones(50), delay=-1.0)] * 2)
    with pytest.raises(ValueError, match="at least two signal-free"):
        xfit.estimate_noise(series, before=-1.95)
