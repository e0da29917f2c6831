"""Electron scattering and photoselection anisotropy: limits, independent references, brute-force averages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

import xfit
from xfit.physics import _elements

Q = np.linspace(0.0, 12.0, 241)


# ------------------------------------------------------------------------------------------------------ electrons


@pytest.mark.parametrize(("energy_kev", "wavelength"), [(100.0, 0.03701), (200.0, 0.02508), (300.0, 0.01969)])
def test_relativistic_wavelength_matches_tem_tables(energy_kev, wavelength):
    assert xfit.electron_wavelength(energy_kev) == pytest.approx(wavelength, abs=2e-5)


def test_mott_bethe_small_q_limit_is_finite_and_exact():
    # Hydrogen 1s: <r^2> = 3 a0^2, so f_e(0) = <r^2>/(3 a0) = a0 (times gamma). WK's fit gives it to 0.5 %.
    from ase.units import Bohr

    gamma = _elements.relativistic_factor(90.0)
    f = np.asarray(xfit.electron_form_factor(np.array([1, 6]), np.array([0.0, 1e-6, 1e-3]), energy_kev=90.0))
    assert np.all(np.isfinite(f))
    np.testing.assert_allclose(f[:, 0], f[:, 1], rtol=1e-9)  # continuous at 0
    assert f[0, 0] == pytest.approx(gamma * Bohr, rel=5e-3)
    grad = jax.grad(lambda q: xfit.electron_form_factor(np.array([6]), q, energy_kev=90.0).sum())(jnp.zeros(1))
    assert np.all(np.isfinite(grad))


def test_mott_bethe_agrees_with_kirkland_within_documented_accuracy():
    # Measured over q <= 25 1/A: <= 5 % of f_e(0) for Z <= 18 (<= 8.6 % up to Z = 98, largest as q -> 0).
    q = np.linspace(0.0, 25.0, 126)
    for z in range(1, 19):
        mb = np.asarray(xfit.electron_form_factor(np.array([z]), q, energy_kev=100.0))[0]
        kk = np.asarray(xfit.electron_form_factor(np.array([z]), q, energy_kev=100.0, electron_model="kirkland"))[0]
        assert np.max(np.abs(mb - kk)) <= 0.05 * kk[0], z


def test_electron_intensity_shares_the_kernel(chd):
    fast = xfit.intensity(chd.numbers, chd.positions, Q, probe="electron", energy_kev=90.0, kind="elastic")
    direct = xfit.intensity(
        chd.numbers, chd.positions, Q, probe="electron", energy_kev=90.0, kind="elastic", method="direct"
    )
    np.testing.assert_allclose(fast, direct, rtol=1e-10)
    f = np.asarray(xfit.electron_form_factor(chd.numbers, np.array([0.0]), energy_kev=90.0))[:, 0]
    assert float(fast[0]) == pytest.approx(f.sum() ** 2, rel=1e-9)  # all waves in phase at q = 0
    x = jnp.asarray(chd.positions)
    check_grads(
        lambda x: xfit.intensity(chd.numbers, x, Q[1:40], probe="electron", energy_kev=90.0), (x,), 1, modes=["rev"]
    )


def test_diatomic_pair_distribution_peaks_at_the_bond_length():
    q, r = np.linspace(0.01, 12.0, 600), np.linspace(0.5, 4.0, 701)
    for bond in (1.13, 2.05):
        x = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, bond]])
        x[1] = x[0] + bond * (x[1] - x[0]) / np.linalg.norm(x[1] - x[0])
        sm = xfit.modified_scattering(["C", "S"], x, q, energy_kev=90.0)
        pdf = np.asarray(xfit.pair_distribution(q, sm, r))
        assert r[np.argmax(pdf)] == pytest.approx(bond, abs=0.01)


def test_electron_bad_input(chd):
    with pytest.raises(ValueError, match="needs energy_kev"):
        xfit.intensity(chd.numbers, chd.positions, Q, probe="electron")
    with pytest.raises(ValueError, match="must be positive"):
        xfit.intensity(chd.numbers, chd.positions, Q, probe="electron", energy_kev=0.0)
    with pytest.raises(ValueError, match="not modelled"):
        xfit.intensity(chd.numbers, chd.positions, Q, probe="electron", energy_kev=90.0, kind="inelastic")
    with pytest.raises(ValueError, match="unknown electron_model"):
        xfit.intensity(chd.numbers, chd.positions, Q, probe="electron", energy_kev=90.0, electron_model="x")


# ----------------------------------------------------------------------------------------------------- anisotropy


def random_lab_frames(x, n, seed):
    rotations = Rotation.random(n, random_state=seed).as_matrix()
    return rotations, np.einsum("rij,nj->rni", rotations, x - x.mean(axis=0))


def test_orientation_average_of_oriented_pattern_is_debye(chd):
    q = np.array([0.7, 2.0, 4.5])
    _, frames = random_lab_frames(chd.positions, 20000, seed=1)
    direction = np.array([0.0, 0.6, 0.8])
    average = np.asarray(xfit.oriented_intensity(chd.numbers, frames, q[:, None] * direction)).mean(axis=0)
    np.testing.assert_allclose(average, xfit.scattering(chd, q, kind="elastic"), rtol=0.01)


def test_cos2_weighted_brute_force_average_gives_i0_and_i2(chd):
    q, mu, eps = np.array([0.8, 2.0, 3.5]), np.array([0.3, 1.0, -0.2]), np.array([0.0, 0.0, 1.0])
    i0, i2 = xfit.anisotropic_scattering(chd, q, mu)
    rotations, frames = random_lab_frames(chd.positions, 40000, seed=0)
    weights = 3 * ((rotations @ (mu / np.linalg.norm(mu))) @ eps) ** 2
    for angle in (0.0, 54.7356, 90.0):
        direction = np.array([np.sin(np.radians(angle)), 0.0, np.cos(np.radians(angle))])
        brute = weights[:, None] * np.asarray(xfit.oriented_intensity(chd.numbers, frames, q[:, None] * direction))
        p2 = 0.5 * (3 * np.cos(np.radians(angle)) ** 2 - 1)
        np.testing.assert_allclose(brute.mean(axis=0), i0 + i2 * p2, rtol=0.02, err_msg=f"theta_q = {angle}")
    assert np.max(np.abs(i2)) > 0.05 * np.max(i0[1:])  # a real anisotropy, not a vanishing one


def test_i2_vanishes_for_a_cubic_arrangement():
    # An octahedral SF6: its l = 2 moments vanish, so no dipole direction gives anisotropy.
    d = 1.56
    positions = np.array([[0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0], [0, 0, d], [0, 0, -d]], float)
    sf6 = Atoms("SF6", positions=positions)
    for mu in ([1.0, 0.0, 0.0], [0.3, -0.5, 0.8]):
        i0, i2 = xfit.anisotropic_scattering(sf6, Q, mu)
        assert np.max(np.abs(i2)) < 1e-10 * np.max(i0)


def test_anisotropy_gradients_and_kinds(chd):
    x, mu = jnp.asarray(chd.positions), jnp.array([0.2, 0.9, -0.4])
    q = Q[1:30]
    check_grads(lambda x, mu: xfit.anisotropic_intensity(chd.numbers, x, q, mu)[1], (x, mu), 1, modes=["rev"])
    i0_total, i2_total = xfit.anisotropic_scattering(chd, q, mu, kind="total")
    i0, i2 = xfit.anisotropic_scattering(chd, q, mu)
    np.testing.assert_allclose(i2_total, i2)
    np.testing.assert_allclose(i0_total - i0, xfit.scattering(chd, q, kind="inelastic"), rtol=1e-10)
    with pytest.raises(ValueError, match="zero length"):
        xfit.anisotropic_scattering(chd, q, [0.0, 0.0, 0.0])
