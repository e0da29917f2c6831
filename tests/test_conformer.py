"""The conformer prior: symmetry, score = -grad E, a learned score against a density known in closed form, exact
resume, files and the command line."""

import os
import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

import xfit
import xfit.cli
from xfit.learn._conformer import ConformerConfig, init_params, save_conformer_prior
from xfit.learn._conformer_train import ConformerTrainConfig

# The diatomic's bond-length density: a two-component Gaussian mixture (weights, centres and spreads in A).
WEIGHTS, CENTRES, SPREADS = np.array([0.6, 0.4]), np.array([1.2, 2.0]), np.array([0.04, 0.1])
CO = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.2]])


def write_pool(path, positions, numbers, reference, name):
    """A pool with the datasets and attributes of ``xfit.build_pool`` that training reads."""
    with h5py.File(path, "w") as f:
        f["positions"] = np.asarray(positions, np.float32)
        f["numbers"] = np.asarray(numbers)
        f["reference_positions"] = np.asarray(reference, np.float64)
        f.attrs.update({"molecule": name, "sampler": "test", "n_complete": len(positions), "status": "complete"})


def random_orientations(rng, n):
    axis = rng.standard_normal((n, 3))
    return axis / np.linalg.norm(axis, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """A diatomic with the mixture above, and a bent triatomic (a second molecule for padding and mixing)."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("pools")
    n = 8192
    component = rng.choice(2, n, p=WEIGHTS)
    d = CENTRES[component] + SPREADS[component] * rng.standard_normal(n)
    axis = random_orientations(rng, n)
    write_pool(folder / "co.h5", np.stack([0 * axis, d[:, None] * axis], 1), [6, 8], CO.positions, "CO")
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    x = water + 0.03 * rng.standard_normal((512, 3, 3))
    write_pool(folder / "h2o.h5", x, [8, 1, 1], water, "water")
    return folder / "co.h5", folder / "h2o.h5"


@pytest.fixture(scope="module")
def trained(pools, tmp_path_factory):
    config = ConformerConfig(width=16, embed=16, rounds=1, max_atoms=4, sigma_min=0.01, sigma_max=1.0)
    out = tmp_path_factory.mktemp("prior") / "co_prior"
    train = ConformerTrainConfig(steps=2400, batch_size=256)
    return xfit.train_conformer_prior([pools[0]], out, config=config, train_config=train)


def exact_radial_score(d, sigma):
    """d/dd log p_sigma at separation d (A) of the diatomic: its relative position r has the density
    g(|r|)/(4 pi |r|^2) (g the mixture), smoothed by N(0, 2 sigma^2) per axis (each atom gets sigma). The radial
    kernel of an isotropic smoothing is exact: p(d | d') = d/(d' t sqrt(2 pi)) [exp(-(d-d')^2/2t^2) -
    exp(-(d+d')^2/2t^2)], t^2 = 2 sigma^2; then p_sigma(r) = p(d)/(4 pi d^2)."""
    t = np.sqrt(2.0) * sigma
    grid = np.linspace(0.5, 3.0, 20001)[:, None]
    g = np.sum(WEIGHTS / (SPREADS * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((grid - CENTRES) / SPREADS) ** 2), -1)

    def radial(z):
        kernel = np.exp(-((z - grid) ** 2) / (2 * t * t)) - np.exp(-((z + grid) ** 2) / (2 * t * t))
        return np.trapezoid(g[:, None] * z / (grid * t * np.sqrt(2 * np.pi)) * kernel, grid[:, 0], axis=0)

    h = 1e-5
    return (np.log(radial(d + h)) - np.log(radial(d - h))) / (2 * h) - 2.0 / d


def untrained(atoms, tmp_path, components=1):
    """A prior with random weights that knows ``atoms`` (for the symmetry tests); with several components, their
    weights unequal (the graph readout starts at zero)."""
    config = ConformerConfig(width=16, embed=16, components=components)
    params = init_params(config, jax.random.key(3))
    if components > 1:
        readout = [k for k, v in params.items() if k.startswith("Dense") and v["kernel"].shape == (16, components)]
        assert len(readout) == 1
        params[readout[0]]["bias"] = jnp.linspace(-1.0, 1.0, components)
    graph = xfit.MoleculeGraph.from_atoms(atoms)
    save_conformer_prior(tmp_path / "p", config, params, {graph.key: "test"}, {})
    return xfit.load_conformer_prior(tmp_path / "p")


def test_energy_is_invariant_to_rotation_reflection_translation_and_automorphisms(nmm, tmp_path, key):
    prior = untrained(nmm, tmp_path)
    energy = jax.jit(prior.energy_fn(nmm))
    x = nmm.positions + 0.1 * np.asarray(jax.random.normal(key, (2, *nmm.positions.shape)))
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(1), (3, 3))))
    perms = xfit.MoleculeGraph.from_atoms(nmm).automorphisms()
    assert len(perms) == 192
    for sigma in (0.02, 0.5):
        e = energy(x, sigma)
        np.testing.assert_allclose(energy(x @ q.T + np.array([3.0, -1.0, 2.0]), sigma), e, rtol=1e-12)
        np.testing.assert_allclose(energy(x * np.array([1.0, 1.0, -1.0]), sigma), e, rtol=1e-12)
        for perm in perms[1::7]:
            np.testing.assert_allclose(energy(x[:, perm], sigma), e, rtol=1e-12)
        scrambled = x[:, [1, 0, *range(2, len(nmm))]]  # C and N exchanged: not an automorphism
        assert not np.allclose(energy(scrambled, sigma), e, rtol=1e-6)
    np.testing.assert_allclose(prior.energy(x, nmm, 0.5), e, rtol=1e-12)


def test_score_is_minus_the_gradient_and_energy_fn_is_pure_jax(chd, tmp_path):
    prior = untrained(chd, tmp_path)
    energy = jax.jit(prior.energy_fn(chd))
    x = np.asarray(chd.positions, np.float64)
    score = prior.score(x, chd, 0.1)
    step = 1e-6
    for atom, axis in [(0, 0), (5, 2), (9, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numeric = -(float(energy(plus, 0.1)) - float(energy(minus, 0.1))) / (2 * step)
        assert score[atom, axis] == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    np.testing.assert_allclose(score.sum(axis=0), 0.0, atol=1e-10)  # no net force: translation invariance
    batch = x + 0.05 * np.asarray(jax.random.normal(jax.random.key(2), (4, *x.shape)))
    sigmas = jnp.array([0.01, 0.1, 0.5, 2.0])
    mapped = jax.jit(jax.vmap(jax.grad(energy), in_axes=(0, 0)))(jnp.asarray(batch), sigmas)
    np.testing.assert_allclose(-np.asarray(mapped[2]), prior.score(batch[2], chd, 0.5), rtol=1e-10)
    assert energy(jnp.asarray(batch, jnp.float32), 0.1).dtype == jnp.float32
    assert energy(jnp.asarray(batch), sigmas).dtype == jnp.float64
    np.testing.assert_allclose(energy(jnp.asarray(batch, jnp.float32), sigmas), energy(batch, sigmas), rtol=1e-4)


def test_learned_score_matches_the_analytic_score_of_a_known_density(trained):
    # Inside both modes (+-1.5 smoothed spreads): errors in units of 1/spread (|score| x spread ~ 1-2 there).
    # Measured at 2400 steps: at most 0.15 at every level; the sharp mode (0.04 A) within 0.05.
    for sigma in (0.01, 0.03, 0.1, 0.3):
        spread = np.sqrt(SPREADS**2 + 2 * sigma**2)
        d = (CENTRES[:, None] + spread[:, None] * np.array([-1.5, -0.5, 0.5, 1.5])).ravel()
        x = np.zeros((len(d), 2, 3))
        x[:, 1, 2] = d
        learned = trained.score(x, CO, sigma)[:, 1, 2]  # the score on the O atom, along the bond: d/dd log p
        error = (learned - exact_radial_score(d, sigma)) * np.repeat(spread, 4)
        assert np.max(np.abs(error)) < 0.3, (sigma, error)


def test_samples_follow_the_training_distribution(trained):
    x = trained.sample(jax.random.key(0), CO, 1024)
    d = np.linalg.norm(x[:, 0] - x[:, 1], axis=-1)
    short = d < 1.6
    assert np.mean(short) == pytest.approx(WEIGHTS[0], abs=0.06)
    for mode, centre, spread in ((short, CENTRES[0], SPREADS[0]), (~short, CENTRES[1], SPREADS[1])):
        assert np.median(d[mode]) == pytest.approx(centre, abs=0.02)
        assert np.std(d[mode]) == pytest.approx(spread, rel=0.25)


def test_training_resumes_exactly_where_it_stopped(pools, tmp_path):
    config = ConformerConfig(width=8, embed=8, rounds=1, max_atoms=4)
    train = ConformerTrainConfig(steps=30, batch_size=16, checkpoint_every=10)
    straight = xfit.train_conformer_prior(pools, tmp_path / "a", config=config, train_config=train)
    assert set(straight.molecules.values()) == {"CO", "water"}

    class Stop(Exception):
        pass

    def stop_at_25(step, loss):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        xfit.train_conformer_prior(pools, tmp_path / "b", config=config, train_config=train, progress=stop_at_25)
    assert (tmp_path / "b" / "checkpoint.msgpack").is_file() and not (tmp_path / "b" / "conformer.json").exists()
    resumed = xfit.train_conformer_prior(pools, tmp_path / "b", config=config, train_config=train)
    assert resumed.metadata["resumed_at"] == 20 and not (tmp_path / "b" / "checkpoint.msgpack").exists()
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    with pytest.raises(Stop):
        xfit.train_conformer_prior(pools, tmp_path / "c", config=config, train_config=train, progress=stop_at_25)
    (tmp_path / "c" / "checkpoint.msgpack").write_bytes(b"\x93garbage")
    with pytest.raises(ValueError, match=r"corrupt checkpoint .*checkpoint\.msgpack"):
        xfit.train_conformer_prior(pools, tmp_path / "c", config=config, train_config=train)
    other = ConformerTrainConfig(steps=40, batch_size=16, checkpoint_every=10)
    (tmp_path / "c" / "checkpoint.msgpack").unlink()
    with pytest.raises(Stop):
        xfit.train_conformer_prior(pools, tmp_path / "c", config=config, train_config=train, progress=stop_at_25)
    with pytest.raises(ValueError, match="different training run"):
        xfit.train_conformer_prior(pools, tmp_path / "c", config=config, train_config=other)


def test_files_round_trip_and_bad_files_name_the_problem(trained, tmp_path, chd):
    again = xfit.load_conformer_prior(trained.path)
    assert again.molecules == trained.molecules and again.config == trained.config
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(trained.params), strict=True):
        np.testing.assert_array_equal(a, b)
    meta = again.metadata
    assert meta["steps"] == 2400 and meta["pools"][0]["n"] == 8192 and meta["final_loss"] > 0
    assert meta["xfit_version"] == xfit.__version__ and meta["seed"] == 0 and meta["examples_per_second"] > 0
    assert trained.fits(CO) and not trained.fits(chd)
    with pytest.raises(ValueError, match=r"not trained on C6H8 .*knows CO"):
        trained.energy_fn(chd)
    with pytest.raises(FileNotFoundError, match=r"conformer\.json is missing"):
        xfit.load_conformer_prior(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("conformer.json", "params.msgpack"):
        shutil.copy(os.path.join(trained.path, name), broken / name)
    (broken / "params.msgpack").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match=r"corrupt conformer prior file .*params\.msgpack"):
        xfit.load_conformer_prior(broken)
    (broken / "conformer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt conformer prior file .*conformer\.json"):
        xfit.load_conformer_prior(broken)


def test_command_line_trains_a_loadable_prior(pools, tmp_path, capsys):
    out = tmp_path / "cli_prior"
    argv = ["train-prior", *map(str, pools), "-o", str(out), "--steps", "20", "--width", "8", "--batch-size", "8"]
    assert xfit.cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    prior = xfit.load_conformer_prior(out)
    assert prior.fits(CO) and prior.config.width == 8 and prior.metadata["steps"] == 20
    mixture = ["train-prior", *map(str, pools), "-o", str(tmp_path / "mixture"), "--steps", "20", "--width", "8"]
    mixture += ["--batch-size", "8", "--components", "2", "--branch-loss-weight", "0.1"]
    assert xfit.cli.main(mixture) == 0  # the options reach the model and the training record
    prior = xfit.load_conformer_prior(tmp_path / "mixture")
    assert prior.config.components == 2 and prior.metadata["train"]["branch_loss_weight"] == 0.1
    assert prior.energy_fn(CO).head["log_components"].shape == (2,)
    assert xfit.cli.main(["train-prior", str(tmp_path / "missing.h5"), "-o", str(out)]) == 2
    assert "pool not found" in capsys.readouterr().err
    # Fine-tuning (--init): at a vanishing learning rate the weights stay those it started from (random ones would
    # differ by O(1)); its molecules stay known though the new pool holds only water; its model is its own.
    still = ConformerTrainConfig(steps=3, batch_size=8, learning_rate=1e-12)
    start = xfit.load_conformer_prior(out)
    tuned = xfit.train_conformer_prior([pools[1]], tmp_path / "tuned", train_config=still, init=out)
    assert tuned.config == start.config and set(tuned.molecules.values()) == {"CO", "water"}
    assert tuned.metadata["init"]["path"] == start.path
    for a, b in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(start.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    with pytest.raises(ValueError, match="leave config out to fine-tune"):
        xfit.train_conformer_prior([pools[1]], tmp_path / "x", config=ConformerConfig(), train_config=still, init=out)
    tune = ["train-prior", str(pools[1]), "-o", str(tmp_path / "cli_tuned"), "--steps", "3", "--batch-size", "8"]
    assert xfit.cli.main([*tune, "--init", str(out)]) == 0 and "fine-tuning" in capsys.readouterr().out
    assert xfit.load_conformer_prior(tmp_path / "cli_tuned").fits(CO)
    assert xfit.cli.main([*tune, "--init", str(out), "--width", "16"]) == 2
    assert "drop --width" in capsys.readouterr().err
    assert xfit.cli.main([*tune, "--init", str(tmp_path / "missing")]) == 2
    assert "conformer.json is missing" in capsys.readouterr().err
    for bad, message in ((["--components", "0"], "components >= 1"), (["--branch-loss-weight", "-1"], "must be >= 0")):
        assert xfit.cli.main(["train-prior", str(pools[0]), "-o", str(tmp_path / "bad"), *bad]) == 2
        assert message in capsys.readouterr().err


def test_shipped_prior_knows_chd_nmm_dt_puts_mass_on_open_rings_and_is_small(chd, nmm):
    prior = xfit.load_conformer_prior()
    assert prior.fits(chd) and prior.fits(nmm) and prior.fits(xfit.molecule("DT"))
    size = sum(os.path.getsize(os.path.join(prior.path, f)) for f in os.listdir(prior.path))
    assert size < 5e6
    x = prior.sample(jax.random.key(0), xfit.molecule("CHD"), 256)
    opened = np.mean(np.linalg.norm(x[:, 0] - x[:, 5], axis=-1) > 2.5)
    assert opened > 0.05  # the ring-opening sweep is a quarter of the CHD pools, 75 % of it above 2.5 A


def test_energy_table_matches_the_network_and_continues_linearly(chd):
    """The per-pair tables the posterior's annealing reads: values and gradients of the shipped prior at its own
    samples agree with the network within float32 rounding; beyond the grid a pair term goes on along its slope."""
    prior = xfit.load_conformer_prior("conformer")
    energy = prior.energy_fn(chd)
    sigmas = np.geomspace(0.3, prior.sigma_min, 5)
    table = prior.energy_table(chd, sigmas)
    assert prior.energy_table(chd, sigmas) is table  # cached
    x = jnp.asarray(prior.sample(jax.random.key(1), chd, 64, steps=60), jnp.float32)
    for level, sigma in enumerate(sigmas):
        exact, tabulated = energy(x, sigma), table(x, level)
        np.testing.assert_allclose(tabulated, exact, rtol=1e-5, atol=1e-3)
        g_exact = jax.grad(lambda v, s=sigma: jnp.sum(energy(v, s)))(x)
        g_table = jax.grad(lambda v, k=level: jnp.sum(table(v, k)))(x)
        np.testing.assert_allclose(g_table, g_exact, atol=2e-3 * float(jnp.max(jnp.abs(g_exact))))
    # C1 and C6 pulled 15 A apart, beyond the 12 A grid: the C1-C6 term continues linearly from the grid's end.
    far = np.array(chd.positions, np.float64)
    far[5] += 15.0 * (far[5] - far[0]) / np.linalg.norm(far[5] - far[0])
    further = far.copy()
    further[5] += 1.0 * (far[5] - far[0]) / np.linalg.norm(far[5] - far[0])
    step = float(table(jnp.asarray(further), 4) - table(jnp.asarray(far), 4))
    assert np.isfinite(step)
    grad = jax.grad(lambda v: table(v, 4))(jnp.asarray(far))
    assert np.all(np.isfinite(grad))


def test_table_sampling_draws_the_networks_density_and_the_bank_is_cached(chd):
    """Samples read from the per-pair tables (what the posterior seeds with) against the network's own sampler on
    CHD: every bonded distance's mean and spread, and the open-ring fraction, within Monte Carlo error; the bank is
    those samples, computed once and kept read-only."""
    prior = xfit.load_conformer_prior("conformer")
    n = 768
    net = prior.sample(jax.random.key(5), chd, n, steps=60)
    tab = prior.sample(jax.random.key(6), chd, n, steps=60, tables=True)
    graph = xfit.MoleculeGraph.from_atoms(chd)
    i, j = np.asarray(graph.bonds).T
    d_net, d_tab = (np.linalg.norm(x[:, i] - x[:, j], axis=-1) for x in (net, tab))  # (n, n_bonds)
    spread = np.sqrt((d_net.var(0) + d_tab.var(0)) / n)
    assert np.all(np.abs(d_net.mean(0) - d_tab.mean(0)) < 5 * spread + 2e-3)
    np.testing.assert_allclose(d_tab.std(0), d_net.std(0), rtol=0.25)
    opened = [np.mean(np.linalg.norm(x[:, 0] - x[:, 5], axis=-1) > 2.5) for x in (net, tab)]
    assert abs(opened[0] - opened[1]) < 5 * np.sqrt(0.25 * 2 / n)
    bank = prior.bank(jax.random.key(6), chd, n, steps=60)
    assert prior.bank(jax.random.key(6), chd, n, steps=60) is bank and not bank.flags.writeable
    np.testing.assert_allclose(bank, tab, atol=1e-5)


def test_pair_energy_hessian_matches_autodiff(chd):
    prior = xfit.load_conformer_prior("conformer")
    energy = prior.energy_fn(chd)
    x = jnp.asarray(chd.positions) + 0.05 * jax.random.normal(jax.random.key(4), (len(chd), 3), jnp.float64)
    for sigma in (prior.sigma_min, 0.3):
        exact = jax.hessian(lambda f, s=sigma: energy(f.reshape(-1, 3), s))(x.ravel())
        np.testing.assert_allclose(
            energy.hessian(x, sigma), exact, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(exact)))
        )


def test_energy_fn_is_a_pytree_compiled_once_per_molecule_size(chd, tmp_path):
    prior = untrained(chd, tmp_path)
    traces = []

    @jax.jit
    def total(energy, x):
        traces.append(1)
        return jnp.sum(energy(x, 0.1))

    x = jnp.asarray(chd.positions)
    first = total(prior.energy_fn(chd), x)
    second = total(prior.energy_fn(chd), x)  # a new object with the same structure: no retrace
    assert len(traces) == 1 and float(first) == float(second)


def test_mixture_components_hessian_tables_and_symmetry(chd, tmp_path):
    """A three-component prior (random weights, unequal component weights): the assembled Hessian, with the
    components' covariance term, equals autodiff's; the per-pair tables equal the network; relabelling equivalent
    atoms, rotating or reflecting leaves the energy unchanged."""
    prior = untrained(chd, tmp_path, components=3)
    energy = prior.energy_fn(chd)
    assert energy.head["log_components"].shape == (3,) and np.ptp(energy.head["log_components"]) > 0.5
    x = jnp.asarray(chd.positions) + 0.1 * jax.random.normal(jax.random.key(4), (len(chd), 3), jnp.float64)
    exact = jax.hessian(lambda f: energy(f.reshape(-1, 3), 0.05))(x.ravel())
    np.testing.assert_allclose(energy.hessian(x, 0.05), exact, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(exact))))
    batch = x + 0.1 * jax.random.normal(jax.random.key(5), (16, len(chd), 3), jnp.float64)
    sigmas = np.geomspace(0.3, 0.03, 3)  # random weights: some branches sharper than the 0.02 A grid resolves below
    table = prior.energy_table(chd, sigmas)
    for level, sigma in enumerate(sigmas):
        np.testing.assert_allclose(table(batch, level), energy(batch, sigma), rtol=1e-5, atol=1e-3)
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(1), (3, 3))))
    e = energy(batch, 0.05)
    np.testing.assert_allclose(energy(batch @ q.T * np.array([1.0, 1.0, -1.0]), 0.05), e, rtol=1e-12)
    for perm in xfit.MoleculeGraph.from_atoms(chd).automorphisms()[1:]:
        np.testing.assert_allclose(energy(batch[:, perm], 0.05), e, rtol=1e-12)


def test_components_hold_a_correlation_no_pairwise_density_can(tmp_path):
    """A bent triatomic whose two bonds are both short (0.95 A) or both long (1.4 A), never one of each, at any
    angle from 95 to 175 deg. A pairwise density draws mixed pairs (measured: 43 % of samples); a two-component
    prior learns that the bonds move together."""
    rng = np.random.default_rng(0)
    n = 8192
    state = rng.integers(0, 2, n)
    d = np.where(state, 1.4, 0.95)[:, None] + 0.03 * rng.standard_normal((n, 2))
    angle = np.deg2rad(rng.uniform(95.0, 175.0, n))
    x = np.zeros((n, 3, 3))
    x[:, 1, 0] = d[:, 0]
    x[:, 2, 0], x[:, 2, 1] = d[:, 1] * np.cos(angle), d[:, 1] * np.sin(angle)
    write_pool(tmp_path / "pool.h5", x, [8, 1, 1], x[0], "correlated")
    config = ConformerConfig(width=16, embed=16, rounds=1, max_atoms=4, sigma_min=0.01, sigma_max=1.0, components=2)
    train = ConformerTrainConfig(steps=1000, batch_size=256)
    prior = xfit.train_conformer_prior([tmp_path / "pool.h5"], tmp_path / "prior", config=config, train_config=train)
    assert prior.config.components == 2  # kept in the file
    samples = prior.sample(jax.random.key(0), Atoms("OHH", positions=x[0]), 1024)
    short = np.linalg.norm(samples[:, 1:] - samples[:, :1], axis=-1) < 1.175
    assert np.mean(short) == pytest.approx(0.5, abs=0.08)
    assert np.mean(short[:, 0] != short[:, 1]) < 0.05


def test_component_clusters_split_a_ring_opening_sweep(tmp_path):
    """The clusters that the components of a mixture prior learn from: a CHD-like sweep whose C1-C6 distance is
    either bonded (1.5 A) or open (4.5 A) splits into those two groups, whichever pool the structures come from."""
    from xfit.learn._conformer_train import _labels, _open_sources, component_clusters

    chd = xfit.molecule("CHD")
    rng = np.random.default_rng(3)
    x = chd.positions + 0.02 * rng.standard_normal((400, len(chd), 3))
    opened = rng.random(400) < 0.3
    x[opened, 5] += 3.0 * (chd.positions[5] - chd.positions[0]) / np.linalg.norm(chd.positions[5] - chd.positions[0])
    write_pool(tmp_path / "a.h5", x[:200], chd.numbers, chd.positions, "CHD")
    write_pool(tmp_path / "b.h5", x[200:], chd.numbers, chd.positions, "CHD")
    sources = _open_sources([tmp_path / "a.h5", tmp_path / "b.h5"], ConformerConfig(components=2))
    centroids = component_clusters(sources, 2, seed=0)
    assert list(centroids) == [xfit.MoleculeGraph.from_atoms(chd).key]
    labels = _labels(sources[0], x, next(iter(centroids.values())))
    assert len(set(labels[opened])) == 1 and len(set(labels[~opened])) == 1 and labels[opened][0] != labels[~opened][0]


def test_branch_likelihood_puts_the_branches_where_the_distances_are(pools, tmp_path):
    """Score matching alone cannot weigh separated modes, so branches that no data reach keep their initial weight
    (the shipped CHD prior: 20 % of a never-breaking ring bond's branch weight beyond 2.5 A, median). With the branches'
    maximum-likelihood term, the diatomic's branch weights follow its bond-length mixture (0.6 at 1.2 A, 0.4 at
    2.0 A) and none is left far from both."""
    config = ConformerConfig(width=16, embed=16, rounds=1, max_atoms=4, sigma_min=0.01, sigma_max=1.0)
    train = ConformerTrainConfig(steps=1200, batch_size=256, branch_loss_weight=0.1)
    prior = xfit.train_conformer_prior([pools[0]], tmp_path / "p", config=config, train_config=train)
    head = prior.energy_fn(CO).head
    weights, centres = np.exp(np.asarray(head["log_weights"]))[0, 0], np.asarray(head["centres"])[0, 0]
    near = [weights[np.abs(centres - c) < 0.25].sum() for c in CENTRES]
    np.testing.assert_allclose(near, WEIGHTS, atol=0.08)
    assert weights[(np.abs(centres[:, None] - CENTRES) > 0.5).all(axis=1)].sum() < 0.03
