"""The conformer prior: symmetry, score = -grad E, a learned score against a density known in closed form, exact
resume, files and the command line."""

import h5py
import jax
import numpy as np
import pytest
from ase import Atoms

import xfit
import xfit.cli
from xfit.learn._conformer import ConformerConfig, init_params, save_conformer_prior
from xfit.learn._conformer_train import ConformerTrainConfig

MU, S = 1.3, 0.05  # the diatomic's bond length distribution, A


def write_pool(path, positions, numbers, name="test"):
    with h5py.File(path, "w") as f:
        f["positions"] = np.asarray(positions, np.float32)
        f["numbers"] = np.asarray(numbers)
        f["reference_positions"] = np.asarray(positions[0], np.float64)
        f.attrs["molecule"] = name
        f.attrs["sampler"] = "test"


@pytest.fixture(scope="module")
def diatomic_pool(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = MU + S * rng.standard_normal(4096)
    axis = rng.standard_normal((4096, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    x = np.stack([-0.5 * d[:, None] * axis, 0.5 * d[:, None] * axis], axis=1)
    path = tmp_path_factory.mktemp("pool") / "co.h5"
    write_pool(path, x, [6, 8], "CO")
    return path


@pytest.fixture(scope="module")
def trained(diatomic_pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "co_prior"
    config = ConformerConfig(width=16, components=2, max_atoms=4, sigma_min=0.01, sigma_max=0.5)
    return xfit.train_conformer_prior(
        [diatomic_pool], out, config=config, train_config=ConformerTrainConfig(steps=1500, batch_size=256)
    )


def untrained(atoms, tmp_path):
    """A prior with random weights that knows ``atoms`` (for the symmetry tests)."""
    config = ConformerConfig(width=16, components=3, max_atoms=24)
    params = init_params(config, jax.random.key(3))
    graph = xfit.MoleculeGraph.from_atoms(atoms)
    save_conformer_prior(tmp_path / "p", config, params, {graph.key: "test"}, {})
    return xfit.load_conformer_prior(tmp_path / "p")


def test_energy_is_invariant_to_rotation_reflection_translation_and_automorphisms(nmm, tmp_path, key):
    prior = untrained(nmm, tmp_path)
    x = nmm.positions + 0.05 * np.asarray(jax.random.normal(key, nmm.positions.shape))
    e = prior.energy(x, nmm, 0.05)
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(1), (3, 3))))
    mirror = np.diag([1.0, 1.0, -1.0])
    assert prior.energy(x @ q.T + 3.0, nmm, 0.05) == pytest.approx(e, rel=1e-5)
    assert prior.energy(x @ mirror, nmm, 0.05) == pytest.approx(e, rel=1e-5)
    for perm in xfit.MoleculeGraph.from_atoms(nmm).automorphisms()[1:6]:
        assert prior.energy(x[np.argsort(perm)], nmm, 0.05) == pytest.approx(e, rel=1e-5)


def test_score_is_minus_the_gradient_of_the_energy(chd, tmp_path):
    prior = untrained(chd, tmp_path)
    energy = prior.energy_fn(chd)
    x = np.asarray(chd.positions, np.float64)
    score = prior.score(x, chd, 0.1)
    step = 1e-5
    for atom, axis in [(0, 0), (5, 2), (9, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numeric = -(float(energy(plus, 0.1)) - float(energy(minus, 0.1))) / (2 * step)
        assert score[atom, axis] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


def test_learned_score_matches_the_analytic_score_of_a_known_density(trained):
    # Bond lengths N(MU, S^2) in 3D: p(x) ~ N(d; MU, S^2) / d^2; smoothed by sigma per coordinate, the density of
    # d is close to N(MU, S^2 + 2 sigma^2), so the score along the bond is -(d - MU)/(S^2 + 2 sigma^2) - 2/d.
    # At sigma = 0.01 A the learned mode sits ~0.02 A low (measured; the 1/d^2 shell factor is not modelled
    # apart), so the check is made at noise levels where the model is exact to training noise.
    atoms = Atoms("CO", positions=[[0, 0, 0], [0, 0, MU]])
    for sigma in (0.05, 0.1):
        for d in (MU - 1.5 * S, MU - 0.5 * S, MU + 0.5 * S, MU + 1.5 * S):
            x = np.array([[0.0, 0.0, -d / 2], [0.0, 0.0, d / 2]])
            learned = trained.score(x, atoms, sigma)[1, 2] - trained.score(x, atoms, sigma)[0, 2]  # d/dd log p
            analytic = 2 * (-(d - MU) / (S**2 + 2 * sigma**2) - 2 / d)  # both atoms move: twice the radial score
            assert learned == pytest.approx(analytic, rel=0.2, abs=3.0)  # scores span +-60 1/A here


def test_samples_follow_the_training_distribution(trained):
    atoms = Atoms("CO", positions=[[0, 0, 0], [0, 0, MU]])
    x = trained.sample(jax.random.key(0), atoms, 512)
    d = np.linalg.norm(x[:, 0] - x[:, 1], axis=-1)
    q25, q50, q75 = np.percentile(d, [25, 50, 75])
    assert q50 == pytest.approx(MU, abs=0.03)
    assert (q75 - q25) / 1.349 == pytest.approx(S, rel=0.3)  # robust: a spurious far component keeps ~2 %


def test_training_resumes_exactly_where_it_stopped(diatomic_pool, tmp_path):
    config = ConformerConfig(width=8, components=2, max_atoms=4)
    train = ConformerTrainConfig(steps=30, batch_size=16, checkpoint_every=10)
    straight = xfit.train_conformer_prior([diatomic_pool], tmp_path / "a", config=config, train_config=train)

    class Stop(Exception):
        pass

    def stop_at_25(step, loss):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        xfit.train_conformer_prior(
            [diatomic_pool], tmp_path / "b", config=config, train_config=train, progress=stop_at_25
        )
    assert (tmp_path / "b" / "checkpoint.msgpack").is_file() and not (tmp_path / "b" / "conformer.json").exists()
    resumed = xfit.train_conformer_prior([diatomic_pool], tmp_path / "b", config=config, train_config=train)
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_files_round_trip_and_bad_files_name_the_problem(trained, tmp_path, chd):
    again = xfit.load_conformer_prior(trained.path)
    assert again.molecules == trained.molecules and again.config == trained.config
    assert not trained.fits(chd)
    with pytest.raises(ValueError, match="not C6H8"):
        trained.energy_fn(chd)
    with pytest.raises(FileNotFoundError, match=r"conformer\.json is missing"):
        xfit.load_conformer_prior(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "conformer.json").write_text("{not json")
    (broken / "params.msgpack").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="corrupt conformer prior"):
        xfit.load_conformer_prior(broken)
    with pytest.raises(ValueError, match=r"trained on"):
        xfit.retrieve(xfit.Pattern(np.linspace(0.5, 4, 20), np.ones(20)), chd, prior=trained)


def test_command_line_trains_a_loadable_prior(diatomic_pool, tmp_path, capsys):
    out = tmp_path / "cli_prior"
    code = xfit.cli.main(["train-prior", str(diatomic_pool), "-o", str(out), "--steps", "20", "--width", "8"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    assert xfit.load_conformer_prior(out).fits(Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.3]]))


def test_shipped_prior_knows_chd_nmm_dt_puts_mass_on_open_rings_and_is_small(chd, nmm):
    import os

    prior = xfit.load_conformer_prior()
    assert prior.fits(chd) and prior.fits(nmm)
    size = sum(os.path.getsize(os.path.join(prior.path, f)) for f in os.listdir(prior.path))
    assert size < 20e6
    x = prior.sample(jax.random.key(0), chd, 256)
    opened = np.mean(np.linalg.norm(x[:, 0] - x[:, 5], axis=-1) > 2.5)
    assert opened > 0.05  # the ring-opening sweep is a quarter of its CHD pools
