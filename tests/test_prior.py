"""The learned prior: symmetry of the network and of its loss, inputs, training (resume), and its use in retrieve."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

import xfit
from xfit.chem import _pool
from xfit.learn import _proposal, _train

TINY = _proposal.PriorConfig(n_hypotheses=3, max_atoms=16, width=16, heads=2, blocks=1)


def _random_rotation(seed, reflect=False):
    r = Rotation.random(random_state=seed).as_matrix()
    return r @ np.diag([1.0, 1.0, -1.0]) if reflect else r


@pytest.mark.parametrize("name, count", [("NMM", 192), ("CHD", 8), ("DT", 32)])
def test_automorphisms_preserve_the_bond_graph(name, count):
    atoms = xfit.molecule(name, forcefield="mmff")
    perms = _proposal.automorphisms(atoms)
    assert len(perms) == count and np.array_equal(perms[0], np.arange(len(atoms)))
    bonds = {tuple(sorted(b)) for b in xfit.bonds(atoms)}
    for p in perms:
        assert {tuple(sorted((int(p[a]), int(p[b])))) for a, b in bonds} == bonds
        assert np.array_equal(atoms.numbers[p], atoms.numbers)


def test_graph_key_ignores_atom_order_and_geometry(chd, nmm):
    shuffled = chd[np.random.default_rng(0).permutation(len(chd))]
    shuffled.positions += np.random.default_rng(1).normal(0, 0.02, shuffled.positions.shape)
    assert _proposal.graph_key(shuffled) == _proposal.graph_key(chd) != _proposal.graph_key(nmm)


def test_loss_is_invariant_to_rotation_reflection_and_equivalent_labels(nmm):
    rng = np.random.default_rng(0)
    n = len(nmm)
    perms = jnp.asarray(_proposal.automorphisms(nmm))
    weights = jnp.asarray(_train._pair_weights(nmm.numbers, n))
    target = nmm.positions + rng.normal(0, 0.1, (n, 3))
    predicted = nmm.positions + rng.normal(0, 0.1, (2, n, 3))
    base = _train.invariant_costs(predicted[None], target[None], perms, weights)
    moved = predicted @ _random_rotation(1, reflect=True).T + np.array([1.0, -2.0, 0.5])
    relabelled = target[np.asarray(perms[37])]  # a methyl rotation and a ring flip
    for p, t in [(moved, target), (predicted, relabelled), (moved, relabelled)]:
        np.testing.assert_allclose(_train.invariant_costs(p[None], t[None], perms, weights), base, rtol=1e-9)
    exact = _train.invariant_costs(target[None, None], relabelled[None], perms, weights)
    assert float(exact[0, 0]) < 1e-20
    # Without the automorphisms the relabelled target looks wrong: the minimisation is what makes it invariant.
    identity = perms[:1]
    assert float(_train.invariant_costs(target[None, None], relabelled[None], identity, weights)[0, 0]) > 0.1


def test_network_is_equivariant_to_rotation_and_atom_order(chd):
    params = _proposal.init_params(TINY, jax.random.key(0))
    # Non-zero head weights, so that the candidates differ from the reference.
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
    features = np.random.default_rng(0).normal(size=(1, TINY.n_q, 4)).astype(np.float32)

    def run(atoms):
        inputs = _proposal.molecule_inputs(atoms, TINY.max_atoms)
        x, logits = _proposal._apply(TINY, params, features, {k: v[None] for k, v in inputs.items()})
        return np.asarray(x[0, :, : len(atoms)], np.float64), np.asarray(logits[0])

    x, logits = run(chd)
    assert np.ptp(x - (chd.positions - chd.positions.mean(0)), axis=None) > 1e-3  # not the identity map
    rotation = _random_rotation(2)
    rotated = chd.copy()
    rotated.positions = chd.positions @ rotation.T
    x_rot, logits_rot = run(rotated)
    np.testing.assert_allclose(x_rot, x @ rotation.T, atol=2e-5)
    np.testing.assert_allclose(logits_rot, logits, atol=2e-5)
    order = np.random.default_rng(3).permutation(len(chd))
    x_perm, logits_perm = run(chd[order])
    np.testing.assert_allclose(x_perm, x[:, order], atol=2e-5)
    np.testing.assert_allclose(logits_perm, logits, atol=2e-5)


def test_relative_signal_is_the_same_change_whatever_was_measured(chd):
    q = np.linspace(0.3, 6.0, 90)
    excited = chd.copy()
    excited.positions[5] += 0.4 * (chd.positions[5] - chd.positions[0])
    i_ref, i_exc = xfit.scattering(chd, q), xfit.scattering(excited, q)
    expected = (i_exc - i_ref) / i_ref
    total = _proposal.relative_signal(q, 3.7 * i_exc, "total", i_ref, i_ref)
    fraction = 0.12
    percent = np.asarray(xfit.percent_difference(i_exc, i_ref, fraction))
    diff = _proposal.relative_signal(q, percent, "percent_difference", i_ref, i_ref, fraction=fraction)
    np.testing.assert_allclose(diff, expected, atol=1e-12)
    # The fitted scale absorbs the unknown 3.7 and a little of the change; the shape is unchanged.
    assert np.corrcoef(total, expected)[0, 1] > 0.999
    elastic = xfit.scattering(excited, q, kind="elastic")
    from_elastic = _proposal.relative_signal(q, elastic, "elastic", xfit.scattering(chd, q, kind="elastic"), i_ref)
    assert np.corrcoef(from_elastic, expected)[0, 1] > 0.999
    with pytest.raises(ValueError, match="fraction"):
        _proposal.relative_signal(q, percent, "percent_difference", i_ref, i_ref)


def test_features_mask_the_q_range_without_data():
    q = np.linspace(0.33, 4.37, 39)
    features = _proposal.pattern_features(TINY, q, np.full(39, 0.01))
    inside = (TINY.q >= 0.33) & (TINY.q <= 4.37)
    np.testing.assert_array_equal(features[:, 2], inside)
    np.testing.assert_allclose(features[inside, 0], 1.0, rtol=1e-6)
    assert np.all(features[~inside, :2] == 0)


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    spec = _pool.PoolSpec("CCO", "wigner", 300, (0.2, 8.0, TINY.n_q), forcefield="mmff", chunk=150, seed=1)
    return _pool.build_pool(tmp_path_factory.mktemp("pool") / "ethanol.h5", spec)


def test_training_resumes_exactly_where_it_stopped(tiny_pool, tmp_path):
    train = _train.TrainConfig(steps=6, batch_size=8, checkpoint_every=3, warmup=1)
    whole = xfit.train([tiny_pool], tmp_path / "whole", config=TINY, train_config=train)

    class Stop(Exception):
        pass

    def stop_at_4(step, metrics):
        assert np.isfinite(metrics["loss"])
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        xfit.train([tiny_pool], tmp_path / "cut", config=TINY, train_config=train, progress=stop_at_4)
    assert (tmp_path / "cut" / _train.CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "cut" / _proposal.CONFIG_FILE).exists()  # no half-finished prior
    resumed = xfit.train([tiny_pool], tmp_path / "cut", config=TINY, train_config=train)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "cut" / _train.CHECKPOINT_FILE).exists()
    info = json.loads((tmp_path / "cut" / _proposal.CONFIG_FILE).read_text())
    assert info["metadata"]["pools"][0]["molecule"] == "CCO" and info["config"]["width"] == TINY.width
    other = _train.TrainConfig(steps=6, batch_size=8, checkpoint_every=3, warmup=1, seed=9)
    _train._save_checkpoint(tmp_path / "cut", "someone else's run", 3, whole.params, None, [])
    with pytest.raises(ValueError, match="different training run"):
        xfit.train([tiny_pool], tmp_path / "cut", config=TINY, train_config=other)


def test_a_trained_prior_proposes_and_retrieve_uses_it(tiny_pool, tmp_path):
    seen = []
    train = _train.TrainConfig(steps=10, batch_size=16, warmup=2)
    prior = xfit.train(
        [tiny_pool], tmp_path / "p", config=TINY, train_config=train, progress=lambda s, m: seen.append(m)
    )
    assert len(seen) == 10 and all(np.isfinite(m["loss"]) and m["physics"] > 0 for m in seen)
    ethanol = xfit.molecule("CCO", forcefield="mmff")
    assert prior.fits(ethanol) and not prior.fits(xfit.molecule("CHD", forcefield="mmff"))
    q = np.linspace(0.5, 7.5, 60)
    pattern = xfit.Pattern(q, xfit.scattering(ethanol, q))
    proposals, scores = prior.propose(q, pattern.values, "total", ethanol)
    assert proposals.shape == (1, TINY.n_hypotheses, len(ethanol), 3)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, rtol=1e-6)
    common = dict(n_starts=2, steps=5)
    used = xfit.retrieve(pattern, ethanol, prior=tmp_path / "p", **common)
    assert used.info["prior"] == str(tmp_path / "p") and used.info["n_starts"] == 2 + TINY.n_hypotheses
    off = xfit.retrieve(pattern, ethanol, prior=None, **common)
    assert off.info["prior"] is None and off.info["n_starts"] == 2
    # "auto" uses the shipped prior only for molecules it was trained on; the broad one by name.
    assert xfit.retrieve(pattern, ethanol, **common).info["prior"] is None
    assert xfit.retrieve(pattern, ethanol, prior="broad", **common).info["prior"].endswith("broad")
    # A prior trained with any_molecule=True serves any molecule of its elements (here H, C, O).
    broad = xfit.train([tiny_pool], tmp_path / "b", config=TINY, train_config=train, any_molecule=True)
    assert broad.any_molecule_of == (1, 6, 8) and xfit.load_prior(tmp_path / "b").any_molecule_of == (1, 6, 8)
    acetone = xfit.molecule("CC(C)=O", forcefield="mmff")
    assert broad.fits(acetone) and not prior.fits(acetone) and not broad.fits(xfit.molecule("DT", forcefield="mmff"))
    percent = xfit.Pattern(q, 0.01 * np.sin(q), kind="percent_difference")
    unknown = xfit.retrieve(percent, ethanol, prior=prior, **common)
    assert unknown.info["n_starts"] == 2 + TINY.n_hypotheses * len(xfit.infer._starts.PROPOSAL_FRACTIONS)


def test_shipped_prior_loads_fits_its_molecules_and_is_small(chd, nmm):
    from pathlib import Path

    prior = xfit.load_prior()
    folder = Path(prior.path)
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 20e6
    assert prior.fits(chd) and prior.fits(nmm) and prior.fits(xfit.molecule("DT", forcefield="mmff"))
    assert not prior.fits(Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    assert (folder / "README.md").is_file() and "make_pools.sh" in (folder / "README.md").read_text()
    broad = xfit.load_prior("broad")
    folder = Path(broad.path)
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 20e6
    assert broad.any_molecule_of == (1, 6, 7, 8, 16) and len(broad.molecules) == 32
    assert (
        broad.fits(nmm) and broad.fits(chd) and not any(_proposal.graph_key(m) in broad.molecules for m in (nmm, chd))
    )
    assert "make_broad_pools.sh" in (folder / "README.md").read_text()


def test_bad_inputs_name_the_problem(tmp_path, tiny_pool):
    with pytest.raises(FileNotFoundError, match="not a prior"):
        xfit.load_prior(tmp_path)
    with pytest.raises(FileNotFoundError, match="pool not found"):
        xfit.train([tmp_path / "missing.h5"], tmp_path / "out", config=TINY)
    small = _proposal.PriorConfig(q_min=0.1, max_atoms=16, width=16, heads=2, blocks=1)
    with pytest.raises(ValueError, match="does not cover"):
        xfit.train([tiny_pool], tmp_path / "out", config=small)
    with pytest.raises(ValueError, match="takes at most 4"):
        _proposal.molecule_inputs(xfit.molecule("CCO", forcefield="mmff"), 4)
    with pytest.raises(ValueError, match="encoder"):
        _proposal.PriorConfig(encoder="lstm")
