"""The posterior strategy against answers known exactly: a diatomic whose posterior over its bond length is
computed on a grid (Gaussian and two-mode priors), the orbit-volume factor, dropped particles, and the
summary into modes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

import xfit
from xfit.infer._posterior import Posterior


def improper_rotation(rng) -> np.ndarray:
    """A random rotation followed by a reflection (3, 3), determinant -1: what a superposition that allows mirror
    images must undo."""
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return rotation * np.sign(np.linalg.det(rotation)) * np.array([1.0, 1.0, -1.0])


@dataclasses.dataclass(frozen=True)
class BondPrior:
    """An analytic prior over the bond length d of a diatomic: a mixture of Gaussians in d, E(x) = -log p(d),
    the same at every noise level (exact where sigma is far below the widths)."""

    centres: tuple[float, ...]
    widths: tuple[float, ...]
    masses: tuple[float, ...]
    sigma_min: float = 0.01

    def log_density(self, d):
        c, s, m = (jnp.asarray(v) for v in (self.centres, self.widths, self.masses))
        terms = jnp.log(m) - 0.5 * ((d[..., None] - c) / s) ** 2 - jnp.log(s)
        return jax.scipy.special.logsumexp(terms, axis=-1)

    def energy_fn(self, graph):
        def energy(x, sigma):
            d = jnp.sqrt(jnp.sum((x[..., 0, :] - x[..., 1, :]) ** 2, axis=-1))
            return -self.log_density(d)

        return energy

    def sample(self, key, graph, n, *, steps=None):  # exact draws: no levels to take
        k1, k2, k3 = jax.random.split(key, 3)
        component = jax.random.choice(k1, len(self.centres), (n,), p=jnp.asarray(self.masses) / sum(self.masses))
        d = jnp.asarray(self.centres)[component] + jnp.asarray(self.widths)[component] * jax.random.normal(k2, (n,))
        axis = jax.random.normal(k3, (n, 3))
        axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
        return np.asarray(jnp.stack([-0.5 * d[:, None] * axis, 0.5 * d[:, None] * axis], axis=1))


Q = np.linspace(0.5, 8.0, 60)
ATOMS = Atoms("SO", positions=[[0, 0, 0], [0, 0, 1.5]])


def grid_posterior(prior: BondPrior, pattern: xfit.Pattern, lo=0.8, hi=2.6, n=20001):
    """p(d | pattern) on a fine grid: d^2 (the rotation orbit of a diatomic) x prior x likelihood."""
    d = np.linspace(lo, hi, n)
    x = np.zeros((n, 2, 3))
    x[:, 1, 2] = d
    model = xfit.intensity(ATOMS.numbers, x, pattern.q)
    w = 1.0 / pattern.sigma**2
    scale = np.sum(w * model * pattern.values, axis=1) / np.sum(w * model * model, axis=1)
    chi2 = np.sum(w * (pattern.values - scale[:, None] * model) ** 2, axis=1)
    log_p = 2 * np.log(d) + np.asarray(prior.log_density(jnp.asarray(d))) - 0.5 * chi2
    p = np.exp(log_p - log_p.max())
    return d, p / np.trapezoid(p, d)


def simulated(d_true: float, relative_noise: float, key) -> xfit.Pattern:
    atoms = ATOMS.copy()
    atoms.positions[1, 2] = d_true
    return xfit.Pattern(Q, xfit.scattering(atoms, Q)).with_noise(key, relative=relative_noise)


def sample_bond_lengths(result):
    d = np.linalg.norm(result.samples[:, 0] - result.samples[:, 1], axis=-1)
    return d, result.sample_weights


def test_gaussian_prior_posterior_matches_the_grid(key):
    prior = BondPrior((1.52,), (0.04,), (1.0,))
    pattern = simulated(1.49, 3e-4, key)
    d_grid, p = grid_posterior(prior, pattern)
    mean = np.trapezoid(d_grid * p, d_grid)
    std = np.sqrt(np.trapezoid((d_grid - mean) ** 2 * p, d_grid))
    strategy = Posterior(prior, n_prior=32, n_local=8, draws=16, dtype=jnp.float64)
    result = xfit.retrieve(pattern, ATOMS, strategy=strategy, dtype=jnp.float64)
    d, w = sample_bond_lengths(result)
    m = np.sum(w * d)
    s = np.sqrt(np.sum(w * (d - m) ** 2))
    ess = 1.0 / np.sum(w**2)
    assert ess > 50
    assert abs(m - mean) < 4 * std / np.sqrt(ess)  # Monte Carlo error of a weighted mean
    assert s == pytest.approx(std, rel=0.15)
    assert result.info["method"] == "posterior"
    assert result.uncertainty.distance(0, 1) == pytest.approx(std, rel=0.15)
    assert abs(result.atoms.get_distance(0, 1) - mean) < 4 * std / np.sqrt(ess)


def test_two_mode_prior_gives_each_mode_its_posterior_mass(key):
    # Weak data (15 % noise) and a prior with two well-separated bond lengths: the posterior mass of each mode is
    # the grid integral over its half, d^2 orbit factor included.
    prior = BondPrior((1.45, 2.05), (0.03, 0.03), (0.5, 0.5))
    pattern = simulated(1.75, 0.15, key)
    d_grid, p = grid_posterior(prior, pattern)
    short = np.trapezoid(p * (d_grid < 1.75), d_grid)
    strategy = Posterior(prior, n_prior=48, n_local=4, draws=16, mode_radius=0.1, dtype=jnp.float64)
    result = xfit.retrieve(pattern, ATOMS, strategy=strategy, dtype=jnp.float64)
    assert len(result.modes) >= 2 and np.isclose(result.modes.sum(), 1.0)
    d, w = sample_bond_lengths(result)
    assert 0.6 < short < 0.97  # both modes matter
    assert np.sum(w * (d < 1.75)) == pytest.approx(short, abs=0.03)
    assert result.modes[0] == pytest.approx(max(short, 1 - short), abs=0.03)
    lengths = [c.get_distance(0, 1) for c in result.candidates[:2]]
    assert sorted(np.round(lengths, 1)) == [1.5, 2.0]


def test_error_bars_span_every_basin_with_tempered_weights(key):
    # The two-mode posterior of the test above, and every error bar of the result from one mixture. With
    # basin_tempering=1 the distance error is the standard deviation of the whole posterior (both modes, grid); with
    # beta < 1 the modes weigh mass^beta, so the error is that of the grid's two halves mixed with those weights. The
    # structure and mode masses do not depend on beta.
    prior = BondPrior((1.45, 2.05), (0.03, 0.03), (0.5, 0.5))
    pattern = simulated(1.75, 0.15, key)
    d_grid, p = grid_posterior(prior, pattern)
    halves = [d_grid < 1.75, d_grid >= 1.75]
    mass = np.array([np.trapezoid(p * h, d_grid) for h in halves])
    means = np.array([np.trapezoid(d_grid * p * h, d_grid) for h in halves]) / mass
    variances = (
        np.array([np.trapezoid((d_grid - m) ** 2 * p * h, d_grid) for h, m in zip(halves, means, strict=True)]) / mass
    )

    def mixture_std(w):
        w = w / w.sum()
        return np.sqrt(np.sum(w * (variances + (means - np.sum(w * means)) ** 2)))

    results = {}
    for beta in (1.0, 0.35):
        strategy = Posterior(
            prior, n_prior=48, n_local=4, draws=16, mode_radius=0.1, basin_tempering=beta, dtype=jnp.float64
        )
        results[beta] = xfit.retrieve(pattern, ATOMS, strategy=strategy, dtype=jnp.float64)
        assert results[beta].uncertainty.distance(0, 1) == pytest.approx(mixture_std(mass**beta), rel=0.1)
    assert mixture_std(mass**0.35) > 1.1 * mixture_std(mass)  # the check can tell the two apart
    np.testing.assert_allclose(results[0.35].modes, results[1.0].modes, rtol=1e-9)
    np.testing.assert_allclose(results[0.35].atoms.positions, results[1.0].atoms.positions, rtol=1e-9)
    with pytest.raises(ValueError, match="basin_tempering"):
        Posterior(prior, basin_tempering=0.0)

    # Every other error bar comes from the same mixture: ``of`` of the bond length is ``distance`` (both linearise
    # within each basin), and draws from ``Uncertainty.draw`` spread the bond length as the grid's two halves mixed
    # at mass^0.35 do, in the frame of the structure.
    u = results[0.35].uncertainty
    bond = lambda x: float(np.linalg.norm(x[1] - x[0]))  # noqa: E731
    assert u.of(bond) == pytest.approx(u.distance(0, 1), rel=1e-6)
    draws = u.draw(20_000, seed=1)
    d = np.linalg.norm(draws[:, 1] - draws[:, 0], axis=-1)
    assert np.std(d) == pytest.approx(u.distance(0, 1), rel=0.05)
    w = mass**0.35 / np.sum(mass**0.35)
    assert np.mean(d) == pytest.approx(np.sum(w * means), abs=0.02)
    np.testing.assert_array_equal(draws, u.draw(20_000, seed=1))  # the seed fixes the draws
    axis = u.reference_positions[1] - u.reference_positions[0]
    for x in u.basins[0]:  # every basin superposed on the structure
        assert abs(np.dot(x[1] - x[0], axis)) == pytest.approx(np.linalg.norm(x[1] - x[0]) * np.linalg.norm(axis))
    # positions: the mixture's covariance, so its diagonal is the square of ``positions``
    np.testing.assert_allclose(u.positions.ravel() ** 2, np.diag(u.covariance), rtol=1e-12)


def test_structure_is_the_mode_mean_relaxed_to_a_posterior_optimum(key):
    # One mode spanning both prior bond lengths (mode_radius 1 A): its mean lies between them, where the posterior
    # density is low; the reported structure is that mean relaxed to the nearest local minimum of
    # U(d) = chi2/2 - log prior, while the samples and error bars stay those of the mode.
    prior = BondPrior((1.45, 2.05), (0.03, 0.03), (0.1, 0.9))
    pattern = simulated(1.75, 0.15, key)
    base = {"n_prior": 48, "n_local": 4, "draws": 16, "mode_radius": 1.0, "dtype": jnp.float64}
    relaxed = xfit.retrieve(pattern, ATOMS, strategy=Posterior(prior, **base), dtype=jnp.float64)
    mean = xfit.retrieve(pattern, ATOMS, strategy=Posterior(prior, relax_steps=0, **base), dtype=jnp.float64)
    assert len(mean.modes) == 1
    d_grid, p = grid_posterior(prior, pattern)
    short = np.trapezoid(p * (d_grid < 1.75), d_grid)
    assert 0.2 < short < 0.8, short  # the mean falls well between the two bond lengths
    u = -np.log(p) + 2 * np.log(d_grid)  # without the orbit factor: the optimum relax descends to
    minima = d_grid[1:-1][(u[1:-1] < u[:-2]) & (u[1:-1] < u[2:])]
    d_relaxed, d_mean = relaxed.atoms.get_distance(0, 1), mean.atoms.get_distance(0, 1)
    assert np.min(np.abs(minima - d_relaxed)) < 2e-3
    assert np.min(np.abs(minima - d_mean)) > 0.05
    assert relaxed.info["relax_shift"] > 0.02 and mean.info["relax_shift"] == 0.0
    assert relaxed.uncertainty.distance(0, 1) == pytest.approx(mean.uncertainty.distance(0, 1), rel=1e-9)


def test_tempered_likelihood_is_a_debye_waller_factor_on_the_weights():
    # Likelihood.tempered(b): weights x exp(-(q b)^2) point by point (q twice over for an I0 + P2 pair); b = 0 is
    # the likelihood itself.
    from xfit.infer._likelihood import build_likelihood

    atoms = Atoms("SOC", positions=[[0, 0, 0], [0, 0, 1.5], [1.2, 0, 0]])
    with jax.enable_x64(True):
        x = jnp.asarray(atoms.positions)[None, None]
        for dipole in (None, ("bond", 0, 1)):
            patterns = [xfit.Pattern(Q, xfit.scattering(atoms, Q), sigma=1e-3 * xfit.scattering(atoms, Q))]
            p2 = None
            if dipole is not None:
                p2 = [xfit.Pattern(Q, 0.1 * np.cos(Q), sigma=np.full(len(Q), 0.01), legendre=2)]
            like = build_likelihood(
                patterns,
                atoms.numbers,
                atoms.positions,
                fraction=None,
                model_kind="total",
                background=False,
                relative_sigma=1e-3,
                dtype=jnp.float64,
                p2_patterns=p2,
                dipole=dipole,
            )
            # The grid runs on to 64 points at weight 0 (each half of an I0 + P2 pair), still uniform: the fast kernel.
            q = np.asarray(like.point_q())[0]
            w = np.asarray(like.w)[0]
            for half in range(1 if dipole is None else 2):
                np.testing.assert_allclose(q[64 * half : 64 * half + len(Q)], Q)
                np.testing.assert_allclose(np.diff(q[64 * half : 64 * (half + 1)]), Q[1] - Q[0], rtol=1e-9)
                assert np.all(w[64 * half + len(Q) : 64 * (half + 1)] == 0)
            assert len(q) == (64 if dipole is None else 128)
            np.testing.assert_allclose(np.asarray(like.tempered(0.0).chi2(x)), np.asarray(like.chi2(x)), rtol=1e-14)
            w = np.asarray(like.tempered(0.3).w)[0]
            np.testing.assert_allclose(w, np.asarray(like.w)[0] * np.exp(-((q * 0.3) ** 2)), rtol=1e-12)


def test_model_sensitivity_matches_finite_differences_and_inflates_the_noise():
    # Likelihood.model_sensitivity: S = sum over coordinates of (d model / d x)^2, the model in the data's units with
    # its nuisance parameters (scale, fraction) refitted; checked by central differences for an X-ray total pattern
    # (scale), an electron sM curve (scale on q I_mol / I_at) and a percent difference (fraction solved).
    # tempered(b, S): 1/w -> 1/w + b^2 S on top of the Debye-Waller factor; b = 0 is the likelihood itself.
    from xfit.infer._likelihood import build_likelihood, model_and_parameters

    atoms = Atoms("SOCH", positions=[[0, 0, 0], [0, 0, 1.5], [1.2, 0, 0], [1.6, 0.9, 0.1]])
    moved = atoms.copy()
    moved.positions[0] += [0.05, -0.1, 0.2]
    electron = {"probe": "electron", "energy_kev": 100.0}
    cases = [
        (xfit.Pattern(Q, 2.0 * xfit.scattering(moved, Q), sigma=1e-3 * xfit.scattering(moved, Q)), "total"),
        (xfit.Pattern(Q, 0.1 * np.sin(Q), sigma=1e-3 * Q, kind="sm", **electron), "molecular"),
        (xfit.Pattern(Q, 0.3 * np.cos(2 * Q), sigma=np.full(len(Q), 0.01), kind="percent_difference"), "total"),
    ]
    with jax.enable_x64(True):
        x = jnp.asarray(moved.positions)
        for pattern, model_kind in cases:
            like = build_likelihood(
                [pattern],
                atoms.numbers,
                atoms.positions,
                fraction=None,
                model_kind=model_kind,
                background=False,
                relative_sigma=1e-3,
                dtype=jnp.float64,
            )
            s = np.asarray(like.model_sensitivity(x[None]))[0]
            q = np.asarray(like.point_q())[0]  # Q and the grid's extension to 64 points (weight 0)
            h, fd = 1e-5, np.zeros(len(q))
            for k in np.ndindex(x.shape):
                step = np.zeros(x.shape)
                step[k] = h
                up, down = (
                    model_and_parameters(like.spec, x + d, *like.row(0)[:3], None, like.grid)[0] for d in (step, -step)
                )
                fd += (np.asarray(up - down) / (2 * h)) ** 2
            np.testing.assert_allclose(s, fd, rtol=1e-6, atol=1e-12 * fd.max())
            assert np.all(s > 0), pattern.kind
            b = 0.2
            w0 = np.asarray(like.w)[0]
            expected = w0 * np.exp(-((q * b) ** 2)) / (1 + w0 * b**2 * s)
            np.testing.assert_allclose(np.asarray(like.tempered(b, s[None]).w)[0], expected, rtol=1e-12)
            plain = np.asarray(like.chi2(x[None, None]))
            np.testing.assert_allclose(np.asarray(like.tempered(0.0, s[None]).chi2(x[None, None])), plain, rtol=1e-14)
        # However precise the data, the inflated weight of a point stays below exp(-(q b)^2) / (b^2 S).
        sharp = dataclasses.replace(like, w=like.w * 1e8)
        bound = np.exp(-((q * b) ** 2)) / (b**2 * s)
        assert np.all(np.asarray(sharp.tempered(b, s[None]).w)[0] <= bound * (1 + 1e-9))
        # At its own reference a difference pattern has no signal and its fitted fraction is 0/0 (NaN in float32
        # when run op by op): a pattern whose S is not finite is annealed with the Debye-Waller factor alone (S = 0),
        # the others with S as it is.
        from xfit.infer._posterior import inflation_sensitivity

        np.testing.assert_allclose(np.asarray(inflation_sensitivity(like, x[None]))[0], s, rtol=1e-12)
        undefined = dataclasses.replace(like, w=like.w * jnp.nan)
        np.testing.assert_array_equal(np.asarray(inflation_sensitivity(undefined, x[None])), 0.0)
        at_reference = np.asarray(inflation_sensitivity(like, jnp.asarray(atoms.positions)[None]))
        assert np.all(np.isfinite(at_reference)) and at_reference.max() < 1e-6 * s.max()


def test_orbit_volume_factor_is_d_squared_for_a_diatomic():
    from xfit.infer._posterior import _log_orbit_volume

    for d in (1.0, 2.0, 3.0):
        x = jnp.array([[0.0, 0.0, 0.0], [0.3, 0.4, 0.0]]) * d / 0.5
        assert float(_log_orbit_volume(x) - _log_orbit_volume(x / d)) == pytest.approx(2 * np.log(d), rel=1e-6)


def test_particles_with_non_finite_energy_are_dropped_and_counted(key):
    base = BondPrior((1.52,), (0.04,), (1.0,))

    class Poisoned(BondPrior):
        def energy_fn(self, graph):
            energy = base.energy_fn(graph)

            def poisoned(x, sigma):
                d = jnp.sqrt(jnp.sum((x[..., 0, :] - x[..., 1, :]) ** 2, axis=-1))
                bad = d > 1.9  # NaN value and gradient there, and only there
                return jnp.where(bad, jnp.sqrt(jnp.where(bad, 1.9 - d, 1.0)), energy(x, sigma))

            return poisoned

    prior = Poisoned((1.52,), (0.04,), (1.0,))
    pattern = simulated(1.5, 1e-3, key)
    far = ATOMS.copy()
    far.positions[1, 2] = 2.4  # this seed starts (and stays) where the energy is NaN
    strategy = Posterior(prior, n_prior=8, n_local=2, draws=4, extra_starts=far.positions[None])
    with jax.debug_nans(False):
        result = xfit.retrieve(pattern, ATOMS, strategy=strategy)
    assert result.info["dropped"] >= 1
    assert np.all(np.isfinite(result.samples)) and np.isfinite(result.atoms.positions).all()
    # every candidate is a structure, a mode of no mass (the dropped particle's) too: not a mean of zero weights
    assert all(c.get_distance(0, 1) > 0.5 for c in result.candidates), [c.positions for c in result.candidates]


def test_laplace_mixture_distance_std_matches_monte_carlo():
    """The distance standard deviations of a two-basin Gaussian mixture (linearised within each basin, plus the
    spread between basins) agree with those of 4e5 samples drawn from it."""
    from xfit.infer._result import _laplace_distance_std, _weighted_distance_std

    rng = np.random.default_rng(0)
    centres = 1.5 * rng.normal(size=(2, 5, 3))
    a = 0.01 * rng.normal(size=(2, 15, 15))
    covariances = a @ a.transpose(0, 2, 1)
    w = np.array([0.3, 0.7])
    draws = [
        c + (np.linalg.cholesky(cov) @ rng.normal(size=(15, 200_000))).T.reshape(-1, 5, 3)
        for c, cov in zip(centres, covariances, strict=True)
    ]
    weights = np.r_[np.full(200_000, 0.3 / 200_000), np.full(200_000, 0.7 / 200_000)]
    expected = _weighted_distance_std(np.concatenate(draws), weights)
    found = _laplace_distance_std(centres, covariances, w)
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_allclose(found[off], expected[off], rtol=0.01)
    assert np.all(found[off] > 0.04)


def test_orbit_volume_of_a_bent_molecule_is_half_log_det_inertia():
    from xfit.infer._posterior import _log_orbit_volume

    x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 3)))
    c = x - x.mean(axis=0)
    inertia = jnp.sum(c * c) * jnp.eye(3) - c.T @ c
    expected = 0.5 * float(jnp.sum(jnp.log(jnp.linalg.eigvalsh(inertia))))
    assert float(_log_orbit_volume(x)) == pytest.approx(expected, rel=1e-12)


def test_equivalent_atoms_under_other_labels_are_matched_before_averaging(nmm):
    """Two optima of one mode whose methyl hydrogens carry other labels (an automorphism of the graph): after
    matching, the copy maps back onto the original atom by atom, so a mode's mean keeps three distinct hydrogens."""
    from xfit.infer._result import batch_kabsch, match_labels

    graph = xfit.MoleculeGraph.from_atoms(nmm)
    perms = graph.automorphisms()
    x = np.asarray(nmm.positions, np.float64)
    heavy = np.flatnonzero(graph.heavy)
    hydrogen_only = perms[np.all(perms[:, heavy] == heavy, axis=1)][1:]  # heavy atoms keep their labels
    relabelled = x[hydrogen_only[-1]]  # the same structure, equivalent hydrogens exchanged
    assert np.abs(relabelled - x).max() > 0.5
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    batch = np.stack([x, relabelled @ rotation.T + 1.0])
    aligned, _ = batch_kabsch(batch, x, graph.heavy)
    target = x - x[graph.heavy].mean(axis=0)
    index = match_labels(aligned, target, perms)
    matched = np.take_along_axis(aligned, index[..., None], axis=1)
    np.testing.assert_allclose(matched, np.broadcast_to(target, matched.shape), atol=1e-8)
    mean = matched.mean(axis=0)
    hydrogens = mean[~graph.heavy]
    gaps = np.linalg.norm(hydrogens[:, None] - hydrogens[None], axis=-1)[np.triu_indices(len(hydrogens), 1)]
    assert gaps.min() > 1.0  # no two hydrogens averaged onto each other


@dataclasses.dataclass(frozen=True)
class FixedBank:
    """The shipped conformer prior with a given bank: its energy and tables, ``bank`` always ``structures``."""

    prior: object
    structures: np.ndarray

    sigma_min = property(lambda self: self.prior.sigma_min)

    def energy_fn(self, graph):
        return self.prior.energy_fn(graph)

    def energy_table(self, graph, sigmas):
        return self.prior.energy_table(graph, sigmas)

    def bank(self, key, graph, n, *, steps):
        return self.structures[:n]


def test_bank_seeds_are_the_prior_draws_that_fit_best(chd, key):
    """A pool fit on the prior's own draws: of 256 CHD prior draws one is the truth, a ring opened to 4.5 A; the
    pattern is its X-ray curve at 0.1 % noise. The bank's chi2 is the likelihood's own, chunk by chunk, and the
    posterior's bank seeds are the draws of lowest chi2 at the first level's blur, the truth first."""
    from xfit.infer._likelihood import build_likelihood
    from xfit.infer._posterior import bank_chi2, inflation_sensitivity
    from xfit.infer._problem import Problem

    prior = xfit.load_conformer_prior()
    draws = prior.sample(jax.random.key(11), chd, 512, steps=60, tables=True)
    gap = np.linalg.norm(draws[:, 0] - draws[:, 5], axis=-1)
    truth = draws[np.argmin(np.abs(gap - 4.5))]
    closed = draws[gap < 2.0][:255]
    bank = np.concatenate([closed[:100], truth[None], closed[100:]])
    atoms = chd.copy()
    atoms.positions = truth
    q = np.linspace(0.5, 8.0, 76)
    pattern = xfit.Pattern(q, xfit.scattering(atoms, q)).with_noise(key, relative=1e-3)
    like = build_likelihood(
        [pattern], chd.numbers, chd.positions, fraction=None, model_kind="total", background=False, relative_sigma=1e-3
    )
    whole = bank_chi2(like, jnp.asarray(bank), 0.0)
    chunked = bank_chi2(like, jnp.asarray(bank), 0.0, budget=76 * 91 * 10)  # 26 chunks of 10, the last one padded
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    np.testing.assert_allclose(whole[0], like.chi2(jnp.asarray(bank)[None])[0], rtol=1e-6)
    assert np.argmin(whole[0]) == 100 and whole[0, 100] < 2 * len(q)

    problem = Problem((pattern,), like, xfit.MoleculeGraph.from_atoms(chd), chd, chd, difference=False)
    strategy = Posterior(FixedBank(prior, bank), n_prior=0, n_bank=len(bank), bank_seeds=3, n_local=1)
    seeds = strategy.particles(problem, key)[0]  # (3 bank seeds + the start, n_atoms, 3), centred on the start's
    assert seeds.shape == (4, len(chd), 3)
    centred = lambda x: x - x.mean(axis=0)  # noqa: E731
    np.testing.assert_allclose(centred(seeds[0]), centred(truth), atol=1e-5)
    like32 = like.astype(jnp.float32)
    start = jnp.asarray(chd.positions, jnp.float32)[None]
    blur = np.sqrt(strategy.sigma_start**2 - prior.sigma_min**2)
    order = np.argsort(bank_chi2(like32, jnp.asarray(bank, jnp.float32), blur, inflation_sensitivity(like32, start))[0])
    assert order[0] == 100
    for k in (1, 2):
        np.testing.assert_allclose(centred(seeds[k]), centred(bank[order[k]]), atol=1e-5)


def test_twist_moves_turn_terminal_groups_rigidly_to_their_other_orientation(chd, nmm):
    """A closed CHD ring has no terminal groups; opened (C6 and its hydrogens pulled 1.2 A away from C1) it has two
    CH2 groups at the chain's ends, and NMM has its N-methyl. A twist turns a group's hydrogens about the bond to
    its heavy neighbour by half the group's symmetry period, 90 degrees for CH2 and 60 for CH3: every distance
    within the group and to its neighbour is kept, and on a symmetric CH2 two twists swap its hydrogens."""
    from xfit.infer._posterior import _terminal_groups, _twist_moves, _twist_survivors, _twisted

    graph = xfit.MoleculeGraph.from_atoms(chd)
    assert _terminal_groups(chd.positions, graph) == []
    opened = chd.positions.copy()
    moved = [5, *[j for i, j in graph.bonds if i == 5 and chd.numbers[j] == 1]]
    opened[moved] += 0.8 * (opened[5] - opened[0])
    groups = _terminal_groups(opened, graph)
    assert [(a, b, sorted(h.tolist())) for a, b, h in groups] == [(0, 1, [6, 7]), (5, 4, [12, 13])]
    methyl = _terminal_groups(nmm.positions, xfit.MoleculeGraph.from_atoms(nmm))
    assert len(methyl) == 1 and len(methyl[0][2]) == 3 and nmm.numbers[methyl[0][0]] == 6

    # The end CH2 made planar (sp2, as on an opened chain), so that its two hydrogens are symmetric about the bond.
    a, b, hydrogens = groups[1]
    axis = (opened[a] - opened[b]) / np.linalg.norm(opened[a] - opened[b])
    side = np.cross(axis, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    opened[hydrogens] = opened[a] + 1.09 * (0.5 * axis + np.sqrt(0.75) * np.outer([1, -1], side))
    for x, (a, b, hydrogens), period in [(opened, groups[1], np.pi), (nmm.positions, methyl[0], 2 * np.pi / 3)]:
        group = [a, b, *hydrogens]
        once = _twisted(x, [(a, b, hydrogens)], [0])
        for y in (x, once):
            np.testing.assert_allclose(
                np.linalg.norm(y[group][:, None] - y[group][None], axis=-1),
                np.linalg.norm(x[group][:, None] - x[group][None], axis=-1),
                atol=1e-9,
            )
        axis = (x[a] - x[b]) / np.linalg.norm(x[a] - x[b])
        before, after = (v - np.outer(v @ axis, axis) for v in (x[hydrogens] - x[a], once[hydrogens] - x[a]))
        cosine = np.sum(before * after, axis=1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
        np.testing.assert_allclose(np.arccos(cosine), period / 2, atol=1e-9)
        others = np.setdiff1d(np.arange(len(x)), hydrogens)
        np.testing.assert_allclose(once[others], x[others], atol=1e-12)
    twice = _twisted(_twisted(opened, groups, [1]), groups, [1])  # the symmetric CH2: its hydrogens swapped
    hydrogens = groups[1][2]
    nearest = np.linalg.norm(twice[hydrogens][:, None] - opened[hydrogens][None], axis=-1).min(axis=1)
    np.testing.assert_allclose(nearest, 0.0, atol=1e-9)
    assert np.linalg.norm(twice[hydrogens] - opened[hydrogens], axis=1).min() > 1.5

    # Moves for particles best first: the closed ring gives none, the opened one every non-empty subset of its two
    # groups, within the budget.
    copies, sources = _twist_moves(np.stack([chd.positions, opened, opened]), graph, 4)
    assert copies.shape == (4, len(chd), 3) and sources.tolist() == [1, 1, 1, 2]
    assert len({np.round(c, 6).tobytes() for c in copies[:3]}) == 3
    # At the prune step: of 8 survivors the last 2 (a quarter) become copies of the best opened one, their slots
    # holding its index (Adam's moments follow it).
    particles = np.stack([chd.positions] * 5 + [opened] + [chd.positions] * 4)[None]
    kept = np.array([[0, 5, 1, 2, 3, 4, 6, 7]])
    survivors, moved, is_moved = _twist_survivors(particles, kept, graph, 12)
    assert survivors.tolist() == [[0, 5, 1, 2, 3, 4, 5, 5]] and is_moved.tolist() == [[False] * 6 + [True] * 2]
    np.testing.assert_allclose(moved[0, 6:], _twist_moves(opened[None], graph, 2)[0])
    assert not _twist_survivors(particles, kept, graph, 0)[2].any()


def test_relaxation_starts_from_the_mode_mean_with_one_basins_hydrogens():
    """Two basins of one mode (a C-H bond pointing either way) and a second mode: the relaxation starts from the
    heaviest mode's weighted mean carbon and the hydrogen of that mode's heaviest basin alone, never from the
    mean of the hydrogens (which sits on the carbon here)."""
    from xfit.infer._result import _Modes, _relax_start

    heavy = np.array([True, False])
    basin = lambda c, h: np.array([[c, 0.0, 0.0], [c, h, 0.0]])  # noqa: E731
    aligned = np.stack([basin(0.00, 1.1), basin(0.02, 1.1), basin(0.10, -1.1), basin(3.0, 1.1)])
    particle = np.array([0, 0, 1, 2])  # each sample's basin
    weights = np.array([0.2, 0.2, 0.5, 0.1])
    mass = np.bincount(particle, weights=weights)  # basin 1 (0.5) outweighs basin 0 (0.4)
    labels = np.array([0, 0, 1])  # basins 0 and 1 form mode 0, basin 2 mode 1
    mean = np.einsum("s,sij->ij", weights[:3] / 0.9, aligned[:3])
    modes = _Modes(weights, mass, labels, np.array([0.9, 0.1]), labels[particle], aligned, [mean, aligned[3]], [])
    start = _relax_start(modes, particle, heavy)
    np.testing.assert_allclose(start[0], mean[0])
    np.testing.assert_allclose(start[1], basin(0.10, -1.1)[1])
    assert abs(mean[1, 1]) < 0.2  # what the mean alone would have given the hydrogen


def test_basins_are_superposed_with_their_covariances():
    # A structure and a covariance turned by a random improper rotation and shifted come back exactly onto the
    # original frame: positions onto the structure, each 3x3 block as R^T C R.
    from xfit.infer._result import _superposed_basins

    rng = np.random.default_rng(0)
    best = rng.normal(size=(5, 3))
    a = rng.normal(size=(15, 15))
    covariance = a @ a.T
    rotation = improper_rotation(rng)  # a reflection
    turned = (best - best.mean(axis=0)) @ rotation.T + 3.0
    big = np.kron(np.eye(5), rotation)  # x -> R x for each atom's coordinates
    heavy = np.ones(5, bool)
    optima, covariances = _superposed_basins(
        turned[None], (big @ covariance @ big.T)[None], best, heavy, np.arange(5)[None]
    )
    np.testing.assert_allclose(optima[0], best, atol=1e-12)
    np.testing.assert_allclose(covariances[0], covariance, atol=1e-10)


def test_refinement_draws_follow_its_covariance(key):
    result = xfit.retrieve(simulated(1.5, 1e-3, key), ATOMS, prior=None, seed=0)
    u = result.uncertainty
    assert u.basins is None and u.samples is None
    draws = u.draw(40_000, seed=2)
    np.testing.assert_allclose(draws.mean(axis=0), u.reference_positions, atol=5 * u.positions.max() / 200 + 1e-12)
    flat = draws.reshape(len(draws), -1)
    np.testing.assert_allclose(np.cov(flat.T), u.covariance, atol=0.05 * np.abs(u.covariance).max())
    bond = lambda x: float(np.linalg.norm(x[1] - x[0]))  # noqa: E731
    d = np.linalg.norm(draws[:, 1] - draws[:, 0], axis=-1)
    assert np.std(d) == pytest.approx(u.of(bond), rel=0.05)
    assert u.draw(0).shape == (0, 2, 3)


def test_error_of_an_angle_wraps_with_its_period():
    # Two basins of a four-atom chain whose torsions are +179 and -179 degrees: 2 degrees apart, not 358.
    from xfit.infer._result import Uncertainty

    def chain(angle):
        a = np.radians(angle)
        return np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.5], [np.cos(a), np.sin(a), 1.5]])

    optima = np.stack([chain(179.0), chain(-179.0)])
    covariances = np.zeros((2, 12, 12))
    u = Uncertainty(
        distances=np.zeros((4, 4)),
        positions=np.zeros((4, 3)),
        candidate_spread=np.zeros((4, 4)),
        n_comparable=2,
        covariance=np.zeros((12, 12)),
        reference_positions=optima[0],
        basins=(optima, covariances, np.array([0.5, 0.5])),
    )
    torsion = lambda x: xfit.dihedral(x, 0, 1, 2, 3)  # noqa: E731
    assert torsion(optima[0]) == pytest.approx(179.0) and torsion(optima[1]) == pytest.approx(-179.0)
    assert u.of(torsion) == pytest.approx(179.0)
    assert u.of(torsion, period=360.0) == pytest.approx(1.0)
    assert u.of(lambda x: abs(xfit.dihedral(x, 0, 1, 2, 3))) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="period must be positive"):
        u.of(torsion, period=0.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        u.draw(-1)


def test_one_structure_under_both_labellings_is_one_basin_one_mode_and_comes_back_onto_the_structure(chd):
    # A hot CHD and the same structure with its ring read the other way round (C1 <-> C6, ..., hydrogens with their
    # carbons), turned by an improper rotation: one mode, not two of equal mass; its basin, covariance included,
    # comes back exactly onto the structure under the structure's labels.
    from xfit.chem._graph import MoleculeGraph
    from xfit.infer._posterior import _basin_counts, _select_basins
    from xfit.infer._result import _superposed_basins, cluster_modes

    graph = MoleculeGraph.from_atoms(chd)
    skeleton, perms = graph.skeleton_automorphisms, graph.automorphisms()
    heavy = chd.numbers > 1
    rng = np.random.default_rng(4)
    x = chd.positions + 0.12 * rng.standard_normal(chd.positions.shape)
    reverse = skeleton[1]
    rotation = improper_rotation(rng)
    turned = x[reverse] @ rotation.T + 2.0
    other = chd.positions + 0.6 * rng.standard_normal(chd.positions.shape)  # another basin, far from both
    optima, mass = np.stack([x, turned, other]), np.array([0.4, 0.35, 0.25])
    radius = 0.15
    assert (
        xfit.rmsd(Atoms(chd.numbers, x), Atoms(chd.numbers, turned), heavy_only=True, permute_equivalent=False) > radius
    )

    labels, mode_mass, seeds = cluster_modes(optima, mass, heavy, radius, skeleton)
    np.testing.assert_array_equal(labels, [0, 0, 1])
    np.testing.assert_allclose(mode_mass, [0.75, 0.25])
    np.testing.assert_array_equal(seeds, [0, 2])
    assert len(cluster_modes(optima, mass, heavy, radius)[1]) == 3  # as labelled: the two labellings split
    # One optimum found under both labellings shares one basin's mass between its two particles, not twice it.
    np.testing.assert_array_equal(_basin_counts(optima[None], heavy, 0.02, skeleton), [[2, 2, 1]])
    np.testing.assert_array_equal(_basin_counts(optima[None], heavy, 0.02), [[1, 1, 1]])
    np.testing.assert_array_equal(_select_basins(-np.log(mass)[None], optima[None], heavy, 0.02, 2, skeleton), [[0, 2]])

    a = rng.normal(size=(42, 42))
    covariance = a @ a.T
    flat = (3 * reverse[:, None] + np.arange(3)).ravel()
    big = np.kron(np.eye(14), rotation)
    moved = big @ covariance[np.ix_(flat, flat)] @ big.T  # the covariance of the relabelled, turned basin
    back, covariances = _superposed_basins(turned[None], moved[None], x, heavy, perms, skeleton)
    np.testing.assert_allclose(back[0], x, atol=1e-10)
    np.testing.assert_allclose(covariances[0], covariance, atol=1e-8)


def test_closest_labelling_takes_a_structure_back_to_the_reference_labels(chd):
    # A hot CHD with its ring read the other way round, the two hydrogens of one CH2 swapped on top, turned by an
    # improper rotation and moved: the relabelling found brings every atom back onto the reference's, which needs both
    # steps, the skeleton's (the ring) and then the equivalent atoms' (the CH2's hydrogens).
    from xfit.chem._graph import MoleculeGraph
    from xfit.infer._result import closest_labelling

    graph = MoleculeGraph.from_atoms(chd)
    skeleton, perms = graph.skeleton_automorphisms, graph.automorphisms()
    heavy = chd.numbers > 1
    rng = np.random.default_rng(7)
    x = chd.positions + 0.1 * rng.standard_normal(chd.positions.shape)
    pair = next(g for g in graph.equivalent_groups if len(g) == 2)
    order = np.asarray(skeleton[1]).copy()
    where = [int(np.flatnonzero(order == h)[0]) for h in pair]
    order[where] = order[where[::-1]]  # the CH2's hydrogens swapped as well
    rotation = improper_rotation(rng)
    y = x[order] @ rotation.T + 1.5
    found = closest_labelling(y, x, heavy, skeleton, perms)
    assert xfit.rmsd(Atoms(chd.numbers, y[found]), Atoms(chd.numbers, x), permute_equivalent=False) < 1e-10
    # the ring alone leaves the hydrogens swapped
    ring_only = closest_labelling(y, x, heavy, skeleton, perms[:1])
    assert xfit.rmsd(Atoms(chd.numbers, y[ring_only]), Atoms(chd.numbers, x), permute_equivalent=False) > 0.1


def test_an_optimum_stands_for_as_many_basins_as_its_distinct_copies_under_relabelling_and_reflection(chd):
    # The posterior over labelled coordinates holds every copy of a structure under CHD's ring reversal and under
    # reflection, each of the same mass: 4 for a structure with no symmetry, 2 for CHD's C2 minimum (its reversal
    # is a rotation), 1 for a planar C2v ring (its reversal is a rotation, its mirror image itself).
    from xfit.chem._graph import MoleculeGraph
    from xfit.infer._posterior import _symmetry_copies

    skeleton = MoleculeGraph.from_atoms(chd).skeleton_automorphisms
    heavy = chd.numbers > 1
    x = chd.positions - chd.positions[heavy].mean(axis=0)
    normal = np.linalg.svd(x[heavy])[2][2]
    planar = x - np.outer(x @ normal, normal)  # onto the ring's mean plane, which holds its C2 axis
    distorted = x + 0.1 * np.random.default_rng(0).standard_normal(x.shape)
    copies = _symmetry_copies(np.stack([distorted, x, planar]), heavy, skeleton, 0.02)
    np.testing.assert_array_equal(copies, [4, 2, 1])
