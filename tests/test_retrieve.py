"""Retrieval: superposition RMSD, the refinement objective, xfit.retrieve end to end, sharding, bad input."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

import xfit

from .conftest import DATA, ROOT

Q = np.linspace(0.5, 8.0, 76)
FAST = {"n_starts": 4, "steps": 150, "seed": 0, "prior": None}  # the refinement path: its mechanics


def perturbed(atoms, scale, seed):
    out = atoms.copy()
    out.positions += np.random.default_rng(seed).normal(0, scale, out.positions.shape)
    return out


# ---------------------------------------------------------------------------------------------------------- rmsd


def test_rmsd_is_zero_under_rigid_motion_and_reflection(nmm):
    moved = nmm.copy()
    moved.positions = nmm.positions @ Rotation.random(random_state=1).as_matrix().T + [1.0, -2.0, 3.0]
    assert xfit.rmsd(nmm, moved) == pytest.approx(0.0, abs=1e-10)
    mirror = nmm.copy()
    mirror.positions = nmm.positions * [1, 1, -1]
    assert xfit.rmsd(nmm, mirror) == pytest.approx(0.0, abs=1e-10)
    # NMM is not planar, so its mirror image differs as labelled; it is mirror-symmetric, so the mirror image is NMM
    # with its ring read the other way round, which the graph symmetry allows.
    assert xfit.rmsd(nmm, mirror, allow_reflection=False, permute_equivalent=False) > 0.1
    assert xfit.rmsd(nmm, mirror, allow_reflection=False) == pytest.approx(0.0, abs=1e-6)


def test_rmsd_permutes_equivalent_hydrogens(nmm):
    from xfit.chem._metrics import equivalent_groups

    methyl = next(g for g in equivalent_groups(nmm) if len(g) == 3)
    swapped = nmm.copy()
    order = np.arange(len(nmm))
    order[methyl] = np.roll(methyl, 1)
    swapped.positions = nmm.positions[order]
    assert xfit.rmsd(nmm, swapped) == pytest.approx(0.0, abs=1e-8)
    assert xfit.rmsd(nmm, swapped, permute_equivalent=False) > 0.5


def test_rmsd_allows_the_ring_read_the_other_way_round(chd):
    """A distorted CHD relabelled by its ring reversal (C1 <-> C6, C2 <-> C5, C3 <-> C4, the hydrogens with their
    carbons) scatters alike and is the same structure; as labelled it is not. ``relabelled`` finds the labels back."""
    from xfit.chem._graph import MoleculeGraph

    skeleton = MoleculeGraph.from_atoms(chd).skeleton_automorphisms
    assert skeleton.shape == (2, 14)
    np.testing.assert_array_equal(skeleton[1, :6], [5, 4, 3, 2, 1, 0])
    distorted = chd.copy()
    distorted.positions += 0.08 * np.random.default_rng(3).standard_normal(chd.positions.shape)
    reversed_ = distorted[skeleton[1].tolist()]
    q = np.linspace(0.5, 8.0, 40)
    np.testing.assert_allclose(xfit.scattering(reversed_, q), xfit.scattering(distorted, q), rtol=1e-12)
    assert xfit.rmsd(distorted, reversed_, heavy_only=True, permute_equivalent=False) > 0.05
    assert xfit.rmsd(distorted, reversed_, heavy_only=True) == pytest.approx(0.0, abs=1e-10)
    assert xfit.rmsd(distorted, reversed_) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(xfit.relabelled(reversed_, distorted).positions, distorted.positions)


def test_skeleton_automorphisms_stay_few_where_methyl_groups_multiply_the_automorphisms():
    """Neopentane, C(CH3)4: 24 x 6^4 = 31,104 automorphisms, far past ``automorphisms``' limit of 256; its 24
    skeleton automorphisms (the methyl groups permuted) are each a graph automorphism, and two methyl groups swapped,
    with a methyl's hydrogens turned, are found again."""
    from xfit.chem._graph import MoleculeGraph
    from xfit.chem._molecules import molecule

    atoms = molecule("CC(C)(C)C", forcefield="mmff")
    graph = MoleculeGraph.from_atoms(atoms)
    skeleton = graph.skeleton_automorphisms
    assert len(skeleton) == 24 and len(np.unique(skeleton, axis=0)) == 24
    bonded = {tuple(sorted(b)) for b in graph.bonds.tolist()}
    for perm in skeleton:
        assert np.array_equal(graph.numbers[perm], graph.numbers)
        assert {tuple(sorted((int(perm[i]), int(perm[j])))) for i, j in bonded} == bonded
    distorted = atoms.copy()
    distorted.positions += 0.05 * np.random.default_rng(0).standard_normal(atoms.positions.shape)
    methyls = [g for g in graph.equivalent_groups if len(g) == 3]
    carbons = [next(iter(graph.neighbours()[g[0]])) for g in methyls[:2]]
    order = np.arange(len(atoms))
    order[carbons] = carbons[::-1]
    order[methyls[0]], order[methyls[1]] = np.roll(methyls[1], 1), methyls[0]
    swapped = distorted[order.tolist()]
    assert xfit.rmsd(distorted, swapped, permute_equivalent=False) > 0.5
    assert xfit.rmsd(distorted, swapped) == pytest.approx(0.0, abs=1e-8)


def test_rmsd_heavy_only_and_known_value(chd):
    moved = chd.copy()
    moved.positions[chd.numbers == 1] += [0.3, 0, 0]  # hydrogens only, and not all the same way as a rigid motion
    moved.positions[0] += [0, 0, 0.2]
    heavy = xfit.rmsd(chd, moved, heavy_only=True, permute_equivalent=False)
    assert 0 < heavy < 0.2 / np.sqrt(6) + 1e-9
    with pytest.raises(ValueError, match="structures differ"):
        xfit.rmsd(chd, chd[:-1])


# ---------------------------------------------------------------------------------------------------- restraints


def test_covalent_restraints_leave_a_free_bond_free(chd):
    restrained = xfit.covalent_restraints(chd)
    freed = xfit.covalent_restraints(chd, free_pairs=[(5, 0)])
    pairs = {tuple(p) for p in freed.pairs}
    assert (0, 5) in {tuple(p) for p in restrained.pairs}
    assert (0, 5) not in pairs
    assert (1, 5) not in pairs and (0, 4) not in pairs  # 1-3 distances through C1-C6 are freed too
    assert (0, 2) in pairs  # ... but not others
    np.testing.assert_allclose(
        freed.targets, np.linalg.norm(chd.positions[freed.pairs[:, 0]] - chd.positions[freed.pairs[:, 1]], axis=1)
    )
    with pytest.raises(ValueError, match="free pair"):
        xfit.covalent_restraints(chd, free_pairs=[(0, 99)])


# ------------------------------------------------------------------------------------------------------ retrieve


def test_retrieves_a_distorted_structure_from_its_pattern(chd):
    # Five different elements: every pair has its own form-factor product, and 10 distances fix 9 internal
    # coordinates, so a noiseless pattern identifies the structure locally. (A C6 ring is only fixed up to
    # relabelling its distances, and CHD with its hydrogens has other structures that reproduce the pattern to
    # 1e-4: see benchmarks/retrieval.py.)
    from ase import Atoms

    skeleton = Atoms("CNOSCl", positions=[[0, 0, 0], [1.4, 0.3, 0], [2.2, -0.8, 0.4], [3.9, -0.5, 0.1], [4.6, 1.4, 0]])
    truth = perturbed(skeleton, 0.08, seed=1)
    pattern = xfit.Pattern(Q, 3.7 * xfit.scattering(truth, Q))  # unknown overall scale
    start_error = xfit.rmsd(skeleton, truth)
    # 16 starts: with 8, whether one lands in the true basin depends on the seed's draws (seeds 0-5 reach it in 3 of
    # 6 with the batch-wide stream of starts, 5 of 6 with per-pattern keys; 16 reach it for seeds 0-3).
    result = xfit.retrieve(pattern, skeleton, restraints=None, prior=None, n_starts=16, steps=600)
    assert xfit.rmsd(result.atoms, truth) < 0.1 * start_error
    assert result.parameters["scale"] == pytest.approx(3.7, rel=1e-3)
    assert result.chi2_reduced < 1e-3  # noiseless data, relative weights
    assert result.candidates[0] is result.atoms
    assert np.all(np.diff(result.chi2) >= 0)
    np.testing.assert_allclose(result.model.values, pattern.values, rtol=2e-3)


def test_percent_difference_fits_the_excitation_fraction(chd):
    excited = perturbed(chd, 0.1, seed=2)
    i_ref, i_exc = xfit.scattering(chd, Q), xfit.scattering(excited, Q)
    signal = np.asarray(xfit.percent_difference(i_exc, i_ref, 0.08))
    pattern = xfit.Pattern(Q, signal, np.full(len(Q), 1e-4), kind="percent_difference")
    fitted = xfit.retrieve(pattern, excited, reference=chd, prior=None, n_starts=1, steps=50, learning_rate=1e-4)
    assert fitted.parameters["fraction"] == pytest.approx(0.08, rel=0.02)
    fixed = xfit.retrieve(
        pattern, excited, reference=chd, fraction=0.08, prior=None, n_starts=1, steps=50, learning_rate=1e-4
    )
    assert fixed.parameters["fraction"] == 0.08
    assert fixed.reference is chd


def test_fraction_prior_is_solved_in_closed_form_and_joins_chi2(chd):
    # fraction=(mean, sd): the solved fraction minimises chi2_data(f) + ((f - mean)/sd)^2 over [0, 1] (a fine grid
    # is the reference), Likelihood.chi2 is that minimum, and a flat fraction is the data's own optimum.
    import jax.numpy as jnp

    from xfit.infer._likelihood import build_likelihood

    excited = perturbed(chd, 0.05, seed=3)
    i_ref, i_exc = xfit.scattering(chd, Q), xfit.scattering(excited, Q)
    signal = np.asarray(xfit.percent_difference(i_exc, i_ref, 0.12))
    sigma = np.full(len(Q), 0.3 * np.std(signal))  # weak data: the prior matters
    pattern = xfit.Pattern(
        Q, signal + sigma * np.random.default_rng(0).normal(size=len(Q)), sigma, kind="percent_difference"
    )
    x = jnp.asarray(excited.positions[None], jnp.float64)
    options = {"model_kind": "total", "background": False, "relative_sigma": 1e-3}
    flat = build_likelihood([pattern], chd.numbers, chd.positions, fraction=None, **options)
    model, parameters = flat.model_and_parameters(x)
    model_at_1 = np.asarray(model)[0, : len(Q)] / float(parameters["fraction"][0])  # the grid's own points
    grid = np.linspace(1e-6, 1.0, 200_001)
    chi2_data = np.sum((pattern.values - grid[:, None] * model_at_1) ** 2 / sigma**2, axis=1)
    for prior in ((0.3, 0.05), (0.05, 0.02), (0.9, 0.01)):
        like = build_likelihood([pattern], chd.numbers, chd.positions, fraction=prior, **options)
        total = chi2_data + ((grid - prior[0]) / prior[1]) ** 2
        f = float(like.model_and_parameters(x)[1]["fraction"][0])
        assert f == pytest.approx(grid[np.argmin(total)], abs=1e-4), prior
        assert float(like.chi2(x)[0]) == pytest.approx(total.min(), rel=1e-6), prior
        assert like.dof == flat.dof  # still one solved parameter
    flat_f = float(flat.model_and_parameters(x)[1]["fraction"][0])
    assert flat_f == pytest.approx(grid[np.argmin(chi2_data)], abs=1e-4)
    # bad priors: clear errors
    for bad in ((0.0, 0.1), (0.2, 0.0), (0.2, 0.1, 0.3)):
        with pytest.raises(ValueError, match="fraction as a prior"):
            xfit.retrieve(pattern, chd, fraction=bad, **FAST)
    difference = xfit.Pattern(Q, i_exc - i_ref, kind="difference")
    with pytest.raises(ValueError, match=r"a prior \(mean, sd\) on the fraction is for"):
        xfit.retrieve(difference, chd, fraction=(0.1, 0.05), **FAST)


def test_background_is_solved_in_closed_form(chd):
    pattern = xfit.Pattern(Q, 2.0 * xfit.scattering(chd, Q) + 15.0)
    result = xfit.retrieve(pattern, chd, background=True, prior=None, n_starts=1, steps=5, learning_rate=1e-5)
    assert result.parameters["scale"] == pytest.approx(2.0, rel=1e-4)
    assert result.parameters["background"] == pytest.approx(15.0, rel=1e-2)


def test_batch_of_patterns_gives_one_result_each_and_is_reproducible(chd):
    patterns = [
        xfit.Pattern(Q, xfit.scattering(perturbed(chd, 0.05, seed=k), Q), delay=0.1 * k).with_noise(
            jax.random.key(k), relative=1e-3
        )
        for k in range(3)
    ]
    results = xfit.retrieve(patterns, chd, **FAST)
    assert [r.pattern.delay for r in results] == [0.0, 0.1, 0.2]
    again = xfit.retrieve(patterns, chd, **FAST)
    np.testing.assert_array_equal(results[2].atoms.positions, again[2].atoms.positions)
    single = xfit.retrieve(patterns[2], chd, **FAST)
    np.testing.assert_allclose(single.atoms.positions, results[2].atoms.positions, atol=1e-4)


def test_uncertainty_is_positive_and_scales_with_the_noise(chd):
    truth = perturbed(chd, 0.03, seed=3)
    values = xfit.scattering(truth, Q)
    errors = []
    for sigma in (1e-3, 2e-3):
        pattern = xfit.Pattern(Q, values, sigma * values)
        result = xfit.retrieve(pattern, truth, restraints=None, prior=None, n_starts=1, steps=20, learning_rate=1e-4)
        u = result.uncertainty
        assert u.distances.shape == (len(chd), len(chd)) and u.positions.shape == (len(chd), 3)
        errors.append(u.distance(0, 1))
    assert errors[0] > 0 and np.isfinite(errors[0])
    assert errors[1] == pytest.approx(2 * errors[0], rel=0.05)  # Gauss-Newton errors are linear in sigma


def test_smoothness_couples_neighbouring_delays(chd):
    patterns = [
        xfit.Pattern(Q, xfit.scattering(perturbed(chd, 0.06, seed=10 + k), Q)).with_noise(
            jax.random.key(k), relative=1e-2
        )
        for k in range(4)
    ]

    def roughness(results):
        d = np.stack([r.atoms.get_all_distances() for r in results])
        return float(np.sum((d[1:] - d[:-1]) ** 2))

    free = xfit.retrieve(patterns, chd, restraints=None, **FAST)
    coupled = xfit.retrieve(patterns, chd, restraints=None, smoothness=1e6, **FAST)
    assert roughness(coupled) < 0.5 * roughness(free)


def test_extra_starts_join_the_search(chd):
    # A ring-opened structure that perturbations of the closed ring do not reach; given as an extra start (as a
    # learned prior would propose it), it is found.
    opened = chd.copy()
    opened.positions[5] += 1.2 * (chd.positions[5] - chd.positions[0]) / chd.get_distance(0, 5)
    pattern = xfit.Pattern(Q, xfit.scattering(opened, Q)).with_noise(jax.random.key(3), relative=1e-3)
    result = xfit.retrieve(
        pattern, chd, restraints=None, n_starts=2, steps=200, starts=[opened], learning_rate=5e-3, prior=None
    )
    assert result.atoms.get_distance(0, 5) == pytest.approx(opened.get_distance(0, 5), abs=0.05)
    assert result.info["n_starts"] == 3
    with pytest.raises(ValueError, match="shape"):
        xfit.retrieve(pattern, chd, starts=np.zeros((2, 3, 3)), **FAST)


def test_plot_writes_an_image(chd, tmp_path):
    pattern = xfit.Pattern(Q, xfit.scattering(chd, Q)).with_noise(jax.random.key(0), relative=1e-3)
    result = xfit.retrieve(pattern, chd, prior=None, n_starts=2, steps=10)
    assert result.plot(tmp_path / "fit.png").stat().st_size > 10_000


def test_plot_key_distances_include_a_bond_broken_in_the_result(chd):
    from xfit._plot import _key_pairs

    pattern = xfit.Pattern(Q, xfit.scattering(chd, Q)).with_noise(jax.random.key(0), relative=1e-3)
    result = xfit.retrieve(pattern, chd, prior=None, n_starts=1, steps=5)
    assert [0, 5] in result.info["bonds"]
    opened = result.atoms.copy()
    opened.positions[5] += 1.5 * (opened.positions[5] - opened.positions[0]) / opened.get_distance(0, 5)
    broken = dataclasses.replace(result, atoms=opened)  # C1-C6 now 2.9 A: no longer a bond of the result's graph
    assert (0, 5) in _key_pairs(broken)
    assert all(opened.numbers[list(p)].min() > 1 for p in _key_pairs(broken))  # heavy atoms only


def test_sharded_across_two_cpu_devices_matches_one_device(tmp_path):
    script = f"""
import numpy as np, jax, xfit
from ase.io import read
assert len(jax.devices()) == 2, jax.devices()
chd = read({str(DATA / "chd.xyz")!r})
q = np.linspace(0.5, 8.0, 76)
truths = [chd.copy() for k in range(3)]
for k, t in enumerate(truths):
    t.positions += np.random.default_rng(k).normal(0, 0.05, t.positions.shape)
patterns = [xfit.Pattern(q, xfit.scattering(t, q)) for t in truths]
results = xfit.retrieve(patterns, chd, prior=None, n_starts=1, steps=20, dtype=jax.numpy.float64)
np.save({str(tmp_path / "x.npy")!r}, np.stack([r.atoms.positions for r in results]))
"""
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    sharded = np.load(tmp_path / "x.npy")
    from ase.io import read

    chd = read(DATA / "chd.xyz")
    # Patterns away from the start, so that Adam follows real gradients (at an exact optimum it would amplify
    # rounding noise, which differs with the reduction order of a sharded sum).
    truths = [chd.copy() for k in range(3)]
    for k, t in enumerate(truths):
        t.positions += np.random.default_rng(k).normal(0, 0.05, t.positions.shape)
    patterns = [xfit.Pattern(Q, xfit.scattering(t, Q)) for t in truths]
    local = xfit.retrieve(patterns, chd, prior=None, n_starts=1, steps=20, dtype=jax.numpy.float64)  # no ranking ties
    np.testing.assert_allclose(sharded, np.stack([r.atoms.positions for r in local]), atol=1e-8)


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors(chd, nmm):
    good = xfit.Pattern(Q, xfit.scattering(chd, Q))
    with pytest.raises(ValueError, match="NaN"):
        xfit.Pattern(Q, np.where(Q > 4, np.nan, 1.0))
    with pytest.raises(ValueError, match="sigma must be positive"):
        xfit.Pattern(Q, good.values, np.zeros(len(Q)))
    far = xfit.Pattern(np.linspace(1, 90, 50), np.ones(50))
    with pytest.raises(ValueError, match="beyond the form-factor tables"):
        xfit.retrieve(far, chd, **FAST)
    with pytest.raises(ValueError, match=r"reference .* does not have the same atoms"):
        xfit.retrieve(good, chd, reference=nmm, **FAST)
    with pytest.raises(ValueError, match="fraction is for difference patterns"):
        xfit.retrieve(good, chd, fraction=0.1, **FAST)
    other_grid = xfit.Pattern(Q[:-1], good.values[:-1])
    with pytest.raises(ValueError, match="different q grid"):
        xfit.retrieve([good, other_grid], chd, **FAST)
    with pytest.raises(TypeError, match=r"ase\.Atoms"):
        xfit.retrieve(good, chd.positions, **FAST)
    with pytest.raises(ValueError, match="restraints must be"):
        xfit.retrieve(good, chd, restraints="tight", **FAST)


def test_default_call_samples_the_posterior_where_the_shipped_prior_fits(chd):
    pattern = xfit.Pattern(Q, xfit.scattering(chd, Q)).with_noise(jax.random.key(5), relative=1e-3)
    result = xfit.retrieve(pattern, chd)
    assert result.info["method"] == "posterior" and result.info["prior"] is not None
    assert result.samples.shape[1:] == (len(chd), 3) and np.isclose(result.modes.sum(), 1.0)
    assert xfit.rmsd(result.atoms, chd, heavy_only=True) < 0.1
    assert 0 < result.uncertainty.distance(0, 5) < 0.15


def test_posterior_result_carries_the_labels_of_the_starting_structure():
    """The pattern and the prior cannot tell CHD's ring read one way from the other, so the result's labels are the
    retrieval's choice: of the two, the one closer to the starting structure, whichever way round that is given,
    with the chosen mode's samples under the same labels."""
    from xfit.chem import _sampling
    from xfit.chem._forcefield import calculator, hessian
    from xfit.chem._graph import MoleculeGraph
    from xfit.chem._molecules import molecule

    chd = molecule("CHD", forcefield="mmff")
    graph = MoleculeGraph.from_atoms(chd)
    reverse = graph.skeleton_automorphisms[1].tolist()
    # A hot (1000 K Wigner) CHD, bonded as CHD, whose two labellings lie > 0.15 A apart: its ends differ.
    modes = _sampling.normal_modes(chd, hessian(chd, calculator(chd, "mmff")))
    draws = np.asarray(_sampling.wigner(jax.random.key(1), modes, 64, temperature=1000.0))
    truth = next(
        a
        for a in (Atoms(chd.numbers, x) for x in draws)
        if np.array_equal(MoleculeGraph.from_atoms(a).bonds, graph.bonds)
        and xfit.rmsd(a, a[reverse], heavy_only=True, permute_equivalent=False) > 0.15
    )
    pattern = xfit.Pattern(Q, xfit.scattering(truth, Q)).with_noise(jax.random.key(6), relative=1e-3)
    # No particle grows from the start (n_local=0): every one is a prior draw, of either labelling.
    strategy = xfit.Posterior(xfit.load_conformer_prior(), n_local=0)
    for start in (truth, truth[reverse]):
        result = xfit.retrieve(pattern, start, strategy=strategy)
        assert result.info["method"] == "posterior"
        assert xfit.rmsd(result.atoms, truth, heavy_only=True) < 0.15
        as_given = xfit.rmsd(result.atoms, start, heavy_only=True, permute_equivalent=False)
        assert as_given <= xfit.rmsd(result.atoms[reverse], start, heavy_only=True, permute_equivalent=False)
        chosen = result.sample_modes == 0
        w = result.sample_weights[chosen] / result.sample_weights[chosen].sum()
        mean = Atoms(chd.numbers, np.einsum("s,sij->ij", w, result.samples[chosen]))
        assert xfit.rmsd(mean, result.atoms, heavy_only=True, permute_equivalent=False) < 0.05


def test_default_call_falls_back_to_refinement_with_a_warning_elsewhere():
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    pattern = xfit.Pattern(Q, xfit.scattering(water, Q))
    with pytest.warns(xfit.PriorFallbackWarning, match="no learned conformer prior covers"):
        result = xfit.retrieve(pattern, water, n_starts=1, steps=5)
    assert result.info["method"] == "refinement"


def test_another_q_grid_of_the_same_padded_length_reuses_the_compiled_retrieval(chd):
    # The likelihood carries plain patterns' q grid as run-time arrays, extended to a multiple of 16 points at
    # weight 0: a new q range, or a few points fewer, runs the program compiled for the last grid (on a 2-core CPU
    # the posterior's take ~30 s to compile), and the result is that of the grid as given.
    from xfit.infer._refinement import refine

    def pattern(q, seed):
        return xfit.Pattern(q, xfit.scattering(chd, q)).with_noise(jax.random.key(seed), relative=1e-3)

    xfit.retrieve(pattern(Q, 0), chd, **FAST)
    compiled = refine._cache_size()
    for seed, q in enumerate([np.linspace(0.8, 9.5, 76), np.linspace(0.5, 8.0, 66)], start=1):  # 80 points padded
        result = xfit.retrieve(pattern(q, seed), chd, **FAST)
        assert refine._cache_size() == compiled
        np.testing.assert_array_equal(result.model.q, q)
        assert len(result.model.values) == len(q) and np.all(np.isfinite(result.model.values))
        assert 0.5 < result.chi2_reduced < 1.5  # dof counts the given points, not the padding
        assert xfit.rmsd(result.atoms, chd, heavy_only=True) < 0.05


def test_compiled_programs_are_dropped_before_the_process_reaches_its_memory_map_limit(tmp_path, monkeypatch):
    # XLA keeps three memory maps per compiled CPU kernel; past Linux's vm.max_map_count it segfaults. Before each
    # retrieval, a process holding more than half its limit drops JAX's compiled programs (they unmap) and says so.
    from xfit.infer import _compiled

    if _compiled.memory_maps() is None:
        pytest.skip("no /proc/self/maps: not Linux")
    f = jax.jit(lambda x: jax.numpy.sin(x) * 2 + jax.numpy.cumsum(x))
    for n in range(1, 21):  # 20 programs, a few maps each
        f(np.ones(n)).block_until_ready()
    held, limit = _compiled.memory_maps()
    assert limit > 0
    fake = tmp_path / "max_map_count"
    monkeypatch.setattr(_compiled, "LIMIT", fake)
    fake.write_text(str(3 * held))
    assert not _compiled.release_if_near_map_limit()  # a third of the limit: left alone
    fake.write_text(str(held))
    with pytest.warns(RuntimeWarning, match="compilation caches were cleared"):
        assert _compiled.release_if_near_map_limit()
    assert _compiled.memory_maps()[0] < held - 40  # the kernels of those 20 programs unmapped
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    pattern = xfit.Pattern(Q, xfit.scattering(water, Q))
    fake.write_text("10")
    with pytest.warns(RuntimeWarning, match=r"vm\.max_map_count"):
        result = xfit.retrieve(pattern, water, n_starts=1, steps=5, prior=None)
    assert result.info["method"] == "refinement"


def test_starts_with_the_wrong_atom_count_are_a_clear_error(chd):
    q = np.linspace(0.5, 8.0, 40)
    pattern = xfit.Pattern(q, np.asarray(xfit.scattering(chd, q)), np.ones(40))
    with pytest.raises(ValueError, match=r"starts must have shape \(n, 14, 3\), got \(1, 3, 3\)"):
        xfit.retrieve(pattern, chd, starts=np.zeros((1, 3, 3)), prior=None)


def test_fitted_fraction_sigma_is_the_joint_gauss_newton_marginal():
    # info["fraction_sigma"] of a refinement: its two parts (f at a fixed structure, and f*(x) over the structure's
    # covariance) add up to the fraction's marginal variance [H^-1]_ff of the Gauss-Newton Hessian over structure
    # and fraction jointly (Schur complement), computed here independently from xfit.intensity.
    import jax.numpy as jnp

    from xfit.chem._structures import rigid_body_modes

    ref = Atoms("SCO", positions=[[0.0, 0.0, 0.0], [1.56, 0.0, 0.0], [2.2, 0.9, 0.0]])
    truth = ref.copy()
    truth.positions[2] += [0.15, 0.1, 0.05]
    i_ref = np.asarray(xfit.scattering(ref, Q))
    signal = np.asarray(xfit.percent_difference(xfit.scattering(truth, Q), i_ref, 0.3))
    sigma = np.full(len(Q), 0.02)
    pattern = xfit.Pattern(Q, signal, sigma, kind="percent_difference")
    options = {"reference": ref, "prior": None, "restraints": None, "n_starts": 1, "steps": 20, "learning_rate": 1e-6}
    result = xfit.retrieve(pattern, truth, **options)
    x, f = result.atoms.positions, result.parameters["fraction"]
    assert f == pytest.approx(0.3, rel=1e-3)

    def residuals(v):
        shape = 100.0 * (xfit.intensity(ref.numbers, v[:-1].reshape(3, 3), Q) - i_ref) / i_ref
        return (signal - v[-1] * shape) / sigma

    jac = np.asarray(jax.jacfwd(residuals)(jnp.asarray(np.append(x.ravel(), f))))
    projector = np.eye(10)
    rigid = rigid_body_modes(x).T  # (9, 6), orthonormal columns
    projector[:9, :9] -= rigid @ rigid.T
    marginal = np.linalg.pinv(projector @ jac.T @ jac @ projector, rcond=1e-10, hermitian=True)[-1, -1]
    assert result.info["fraction_sigma"] == pytest.approx(np.sqrt(marginal), rel=1e-3)
    # conditional on the structure alone it would be smaller: the structure's freedom widens the fraction
    assert result.info["fraction_sigma"] > 1.05 / np.sqrt(np.sum(jac[:, -1] ** 2))
    assert "fraction_sigma" not in xfit.retrieve(pattern, truth, fraction=0.3, **options).info


def test_shared_fraction_is_the_inverse_variance_mean_with_the_birge_ratio():
    from types import SimpleNamespace

    def fit(f, sigma, fitted=True):
        info = {"fraction_fitted": fitted, "fraction_sigma": sigma}
        return SimpleNamespace(parameters={"fraction": f}, info=info, pattern=SimpleNamespace(kind="delta_sm"))

    # consistent fractions: the weighted mean and its standard error; a fraction at a bound is left out
    mean, sd = xfit.shared_fraction([fit(0.10, 0.01), fit(0.12, 0.02), fit(1.0, 0.001)])
    w = np.array([1e4, 2.5e3])
    assert mean == pytest.approx((0.10 * w[0] + 0.12 * w[1]) / w.sum())
    assert sd == pytest.approx(1 / np.sqrt(w.sum()))
    # a fit in a wrong basin (0.8 +- 0.05, 14 sigma off) barely moves the mean, and widens the error by the Birge ratio
    fits = [fit(0.10, 0.005), fit(0.101, 0.005), fit(0.8, 0.05)]
    mean, sd = xfit.shared_fraction(fits)
    f, w = np.array([0.10, 0.101, 0.8]), 1 / np.array([0.005, 0.005, 0.05]) ** 2
    expected = np.sum(w * f) / w.sum()
    assert mean == pytest.approx(expected) and mean < 0.11
    assert sd == pytest.approx(np.sqrt(np.sum(w * (f - expected) ** 2) / 2) / np.sqrt(w.sum()))
    with pytest.raises(ValueError, match="no fitted excitation fraction"):
        xfit.shared_fraction([fit(0.1, 0.01), fit(0.1, 0.01, fitted=False)])
    with pytest.raises(ValueError, match="at a bound"):
        xfit.shared_fraction([fit(1.0, 0.01), fit(1e-6, 0.01)])
    with pytest.raises(ValueError, match="at least one retrieval"):
        xfit.shared_fraction([])
