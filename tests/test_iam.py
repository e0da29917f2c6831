"""The IAM forward model: independent NumPy reference, analytic limits, invariances, gradients, jit behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

import xfit
from xfit.physics import _iam

from .conftest import RTOL

Q = np.linspace(0.0, 8.0, 512)  # uniform, includes q = 0: the fast angle-addition path
Q_IRREGULAR = np.sort(np.random.default_rng(3).uniform(0.05, 8.0, 97))  # the direct path


def numpy_reference(numbers, positions, q):
    """Independent float64 implementation: xraydb form factors, xraylib Compton, explicit double loop over i != j."""
    import xraydb
    import xraylib

    s = q / (4 * np.pi)
    f = np.array([xraydb.f0(int(z), s) for z in numbers])
    atomic = np.sum(f**2, axis=0)
    molecular = np.zeros_like(q)
    for i in range(len(numbers)):
        for j in range(len(numbers)):
            if i != j:
                qr = q * np.linalg.norm(positions[i] - positions[j])
                molecular += f[i] * f[j] * np.where(qr > 0, np.sin(qr) / np.where(qr > 0, qr, 1.0), 1.0)
    compton = np.array([[xraylib.SF_Compt(int(z), float(x)) if x >= 1.1e-3 else np.nan for x in s] for z in numbers])
    inelastic = np.sum(compton, axis=0)
    return {
        "atomic": atomic,
        "molecular": molecular,
        "elastic": atomic + molecular,
        "inelastic": inelastic,
        "total": atomic + molecular + inelastic,
    }


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("q", [Q, Q_IRREGULAR], ids=["uniform", "irregular"])
def test_matches_numpy_reference_for_nmm(nmm, dtype, q):
    ref = numpy_reference(nmm.numbers, nmm.positions, q)
    for kind in ("atomic", "molecular", "elastic"):
        got = np.asarray(xfit.intensity(nmm.numbers, nmm.positions.astype(dtype), q, kind=kind))
        assert got.dtype == dtype
        scale = np.abs(ref["elastic"])  # relative to the elastic intensity: the molecular term crosses zero
        np.testing.assert_array_less(np.abs(got - ref[kind]) / scale, RTOL[dtype], err_msg=kind)


def test_compton_and_total_match_reference_within_spline_tolerance(nmm):
    q = Q[Q > 0.02]  # the reference's xraylib has no Compton data below s = 0.001 1/A
    ref = numpy_reference(nmm.numbers, nmm.positions, q)
    inelastic = np.asarray(xfit.intensity(nmm.numbers, nmm.positions, q, kind="inelastic"))
    total = np.asarray(xfit.intensity(nmm.numbers, nmm.positions, q, kind="total"))
    np.testing.assert_allclose(inelastic, ref["inelastic"], rtol=1e-3, atol=2e-4 * nmm.numbers.sum())
    np.testing.assert_allclose(total, ref["total"], rtol=1e-5)


def test_fast_and_direct_paths_agree(chd):
    positions = chd.positions + np.random.default_rng(0).normal(0, 0.1, (7, len(chd), 3))
    fast = xfit.intensity(chd.numbers, positions, Q, kind="elastic")
    direct = xfit.intensity(chd.numbers, positions, Q, kind="elastic", method="direct")
    np.testing.assert_allclose(fast, direct, rtol=1e-12)


def test_padded_intensity_with_factors_as_data_matches_intensity(chd, nmm):
    """One function for every molecule (the prior's physics loss): padding atoms add nothing, gradients finite."""
    q = np.linspace(0.2, 8.0, 40)
    rng = np.random.default_rng(3)
    for atoms in (chd, nmm):
        n = len(atoms)
        factors, incoherent = _iam.padded_factors(atoms.numbers, q, 24)
        x = np.zeros((3, 24, 3))
        x[:, :n] = atoms.positions + rng.normal(0.0, 0.1, (3, n, 3))
        got = _iam.padded_intensity(x, q, factors, incoherent)
        np.testing.assert_allclose(got, _iam.intensity(atoms.numbers, x[:, :n], q), rtol=RTOL[np.float64])
        grad = jax.grad(lambda x, f=factors, c=incoherent: _iam.padded_intensity(x, q, f, c).sum())(x)
        assert np.all(np.isfinite(grad)) and not np.any(grad[:, n:])


def test_forward_limit_is_squared_electron_count(nmm):
    # q -> 0: every wave scatters in phase, I_elastic(0) = (sum_i f_i(0))^2; Compton vanishes there.
    f0 = np.asarray(xfit.form_factor(nmm.numbers, np.array([0.0])))[:, 0]
    elastic = xfit.intensity(nmm.numbers, nmm.positions, np.array([0.0, 1e-4]), kind="elastic")
    np.testing.assert_allclose(elastic, f0.sum() ** 2, rtol=1e-7)
    inelastic = xfit.intensity(nmm.numbers, nmm.positions, np.array([0.0]), kind="inelastic")
    np.testing.assert_allclose(inelastic, 0.0, atol=1e-12)


@pytest.mark.parametrize("r", [0.74, 1.128, 2.5])
def test_diatomic_closed_form(r):
    # I(q) = f_C^2 + f_O^2 + 2 f_C f_O sin(q r)/(q r)
    q = Q[1:]
    f = np.asarray(xfit.form_factor(np.array([6, 8]), q))
    expected = f[0] ** 2 + f[1] ** 2 + 2 * f[0] * f[1] * np.sin(q * r) / (q * r)
    positions = np.array([[0.1, -0.2, 0.3], [0.1, -0.2, 0.3 + r]])
    np.testing.assert_allclose(xfit.intensity([6, 8], positions, q, kind="elastic"), expected, rtol=1e-12)


def test_invariances(nmm):
    x = nmm.positions
    reference = xfit.intensity(nmm.numbers, x, Q)
    rotation = Rotation.random(random_state=5).as_matrix()
    perm = np.random.default_rng(5).permutation(len(nmm))
    cases = {
        "rotation": (nmm.numbers, x @ rotation.T),
        "translation": (nmm.numbers, x + np.array([3.0, -7.0, 11.0])),
        "reflection": (nmm.numbers, x * np.array([1.0, -1.0, 1.0])),
        "inversion": (nmm.numbers, -x),
        "permutation": (nmm.numbers[perm], x[perm]),
    }
    for name, (numbers, positions) in cases.items():
        np.testing.assert_allclose(xfit.intensity(numbers, positions, Q), reference, rtol=1e-12, err_msg=name)


def test_batch_dimensions_and_vmap(chd):
    rng = np.random.default_rng(1)
    positions = chd.positions + rng.normal(0, 0.05, (2, 3, len(chd), 3))
    batched = xfit.intensity(chd.numbers, positions, Q)
    assert batched.shape == (2, 3, len(Q))
    one = xfit.intensity(chd.numbers, positions[1, 2], Q)
    np.testing.assert_allclose(batched[1, 2], one, rtol=1e-12)
    vmapped = jax.vmap(lambda p: xfit.intensity(chd.numbers, p, Q))(positions.reshape(6, len(chd), 3))
    np.testing.assert_allclose(vmapped, batched.reshape(6, -1), rtol=1e-12)


def test_batches_larger_than_a_chunk_are_exact(chd):
    positions = chd.positions + np.random.default_rng(2).normal(0, 0.05, (77, len(chd), 3))
    batched = np.asarray(xfit.intensity(chd.numbers, positions, Q))
    singles = np.stack([xfit.intensity(chd.numbers, p, Q) for p in positions[[0, 40, 76]]])
    np.testing.assert_allclose(batched[[0, 40, 76]], singles, rtol=1e-12)


def test_accelerator_chunks_bound_memory_and_stay_exact(chd, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _iam._chunk_size(5050) == 256 and _iam._chunk_size(153) == 8192 and _iam._chunk_size(10**8) == 1
    monkeypatch.setattr(_iam, "ACCELERATOR_PAIR_BUDGET", 91 * 64)  # CHD: 91 pairs -> chunks of 64 structures
    positions = chd.positions + np.random.default_rng(5).normal(0, 0.1, (301, len(chd), 3))
    chunked = xfit.intensity(chd.numbers, positions, Q)
    one_by_one = np.stack([xfit.intensity(chd.numbers, x, Q) for x in positions[:5]])
    np.testing.assert_allclose(chunked[:5], one_by_one, rtol=1e-12)


def test_traced_uniform_q_takes_the_fast_path_exactly(chd):
    # q as an argument of the user's jitted function: traced values, static length. Uniform grids (float64 and the
    # float32 linspace, which is uniform only to its rounding) need no warning (warnings are errors in this suite).
    x = jnp.asarray(chd.positions + np.random.default_rng(3).normal(0, 0.1, (4, len(chd), 3)))
    f = jax.jit(lambda x, q: xfit.intensity(chd.numbers, x, q))
    reference = xfit.intensity(chd.numbers, x, Q, method="direct")
    np.testing.assert_allclose(f(x, jnp.asarray(Q)), reference, rtol=1e-10)
    np.testing.assert_allclose(
        jax.jit(lambda x: xfit.intensity(chd.numbers, x, jnp.asarray(Q)))(x), reference, rtol=1e-10
    )
    shifted = Q + 0.25  # same shape, other values: same program, new answer
    before = f._cache_size()
    np.testing.assert_allclose(
        f(x, jnp.asarray(shifted)), xfit.intensity(chd.numbers, x, shifted, method="direct"), rtol=1e-10
    )
    assert f._cache_size() == before
    q32 = np.linspace(0.5, 8.0, 512).astype(np.float32)
    with jax.enable_x64(True):
        reference32 = xfit.intensity(chd.numbers, x[:1], q32.astype(np.float64), method="direct")
    got32 = f(x[:1].astype(jnp.float32), jnp.asarray(q32))
    np.testing.assert_allclose(got32, reference32, rtol=RTOL[np.float32])


def test_traced_irregular_q_is_exact_and_warns_once(chd):
    f = jax.jit(lambda q: xfit.intensity(chd.numbers, chd.positions, q))
    with pytest.warns(xfit.PerformanceWarning, match="not uniformly spaced") as caught:
        traced = [jax.block_until_ready(f(Q_IRREGULAR + shift)) for shift in (0.0, 0.01, 0.02)]
        jax.effects_barrier()
    assert sum(issubclass(w.category, xfit.PerformanceWarning) for w in caught) == 1
    np.testing.assert_allclose(traced[0], xfit.intensity(chd.numbers, chd.positions, Q_IRREGULAR), rtol=1e-12)
    # Asking for the direct path is a choice, not an accident: no warning.
    g = jax.jit(lambda q: xfit.intensity(chd.numbers, chd.positions, q, method="direct"))
    np.testing.assert_allclose(g(Q), xfit.intensity(chd.numbers, chd.positions, Q), rtol=1e-12)


@pytest.mark.parametrize("irregular", [False, True])
def test_traced_q_gradient_memory_grows_as_batch_x_pairs(chd, irregular):
    # Differentiating the run-time choice of path must not keep the direct sum's batch x pairs x q residuals
    # (a cond saves those of both branches): the scratch of value-and-grad barely grows with the batch.
    q = np.sort(np.random.default_rng(0).uniform(0.5, 8.0, 512)) if irregular else np.linspace(0.5, 8.0, 512)
    q = jnp.asarray(q, jnp.float32)

    def scratch(batch):
        x = jnp.broadcast_to(jnp.asarray(chd.positions, jnp.float32), (batch, len(chd), 3))
        f = jax.jit(jax.value_and_grad(lambda x, q: jnp.sum(xfit.intensity(chd.numbers, x, q))))
        return f.lower(x, q).compile().memory_analysis().temp_size_in_bytes

    small, large = scratch(256), scratch(1024)
    batch_pairs_q = 1024 * len(chd) * (len(chd) - 1) / 2 * 512 * 4
    assert large < 1.5 * small and large < 0.3 * batch_pairs_q


@pytest.mark.parametrize("style", ["concrete", "qgrid", "traced"])
def test_fast_path_equals_direct_under_every_transform(chd, style):
    grid = xfit.QGrid(0.0, 8.0, 512)
    x = jnp.asarray(chd.positions + np.random.default_rng(6).normal(0, 0.1, (2, len(chd), 3)))
    weights = jnp.asarray(np.cos(Q))

    def call(x, q, method="auto"):
        q = {"concrete": Q, "qgrid": grid, "traced": q}[style] if method == "auto" else Q
        return xfit.intensity(chd.numbers, x, q, method=method)

    def direct(x, q=None):
        return call(x, q, "direct")

    q = jnp.asarray(Q)
    np.testing.assert_allclose(jax.jit(call)(x, q), direct(x), rtol=1e-10)
    np.testing.assert_allclose(jax.vmap(call, (0, None))(x, q), direct(x), rtol=1e-10)
    loss = lambda x, f: jnp.sum(f(x, q) * weights)  # noqa: E731
    np.testing.assert_allclose(jax.grad(loss)(x, call), jax.grad(loss)(x, direct), rtol=1e-9, atol=1e-9)
    forward = jax.jacfwd(lambda x: call(x, q)[:, ::64])(x[:1])
    np.testing.assert_allclose(forward, jax.jacfwd(lambda x: direct(x)[:, ::64])(x[:1]), rtol=1e-9, atol=1e-8)


def _uses_fast_path(numbers, x, q) -> bool:
    """Whether intensity's compiled program has the angle-addition shape: A x M blocks, no (P, n_q) sine table."""
    text = jax.jit(lambda x: xfit.intensity(numbers, x, q)).lower(x).as_text()
    n_q = q.num if isinstance(q, xfit.QGrid) else len(q)
    plan = _iam._pair_plan(tuple(int(z) for z in numbers))
    # The direct formula's (P, n_q) sinc table, or per-type (2 P_t, A = n_q) anchor tables of a one-point block.
    tables = [f"{len(plan.i)}x{n_q}x"] + [f"{2 * (hi - lo)}x{n_q}x" for lo, hi in plan.slices]
    return not any(table in text for table in tables)


def test_qgrid_keeps_the_fast_path_through_jit_arguments(chd):
    grid = xfit.QGrid(0.0, 8.0, 512)
    np.testing.assert_array_equal(np.asarray(grid), Q)
    assert jax.tree_util.tree_leaves(grid) == []  # static: nothing of it is traced
    f = jax.jit(lambda x, q: xfit.intensity(chd.numbers, x, q))
    x = jnp.asarray(chd.positions + np.random.default_rng(1).normal(0, 0.1, (3, len(chd), 3)))
    got = f(x, grid)  # no PerformanceWarning: the suite turns warnings into errors
    np.testing.assert_allclose(got, xfit.intensity(chd.numbers, x, Q, method="direct"), rtol=1e-12)
    assert _uses_fast_path(chd.numbers, x, grid)
    assert not _uses_fast_path(chd.numbers, x, Q_IRREGULAR)  # the probe can fail
    np.testing.assert_allclose(xfit.scattering(chd, grid), xfit.scattering(chd, Q), rtol=1e-12)


@pytest.mark.parametrize("kind", ["total", "molecular"])
def test_padded_grid_arrays_give_the_grids_own_pattern_under_jit(chd, kind):
    # The likelihood's grid (_qgrid.padded_grid): extended to a multiple of 16 points, carried as traced arrays with
    # its blocks read on the host. On its first n points it is the given grid's pattern, uniform or not; a uniform
    # grid goes on with its own step; one that would pass Q_MAX, and a non-uniform one, repeat their last point.
    from xfit.physics._elements import Q_MAX
    from xfit.physics._qgrid import padded_grid

    x = jnp.asarray(chd.positions + np.random.default_rng(2).normal(0, 0.1, (3, len(chd), 3)))
    f = jax.jit(lambda x, grid: xfit.intensity(chd.numbers, x, grid, kind=kind))
    cases = [(np.linspace(0.5, 8.0, 76), 80), (Q_IRREGULAR, 112), (np.linspace(70.0, Q_MAX, 40), 48)]
    for q, n_pad in cases:
        grid, n = padded_grid(q)
        assert (len(grid), n) == (n_pad, len(q))
        padded = np.asarray(grid.q)
        np.testing.assert_array_equal(padded[:n], q)
        uniform = q is cases[0][0]
        np.testing.assert_allclose(padded[n:], q[0] + (q[1] - q[0]) * np.arange(n, n_pad) if uniform else q[-1])
        np.testing.assert_allclose(
            f(x, grid)[:, :n], xfit.intensity(chd.numbers, x, q, kind=kind, method="direct"), rtol=1e-12
        )
    # another uniform grid of the same padded length runs the same compiled program
    compiled = f._cache_size()
    f(x, padded_grid(np.linspace(1.0, 12.0, 70))[0])
    assert f._cache_size() == compiled


def test_float32_grid_counts_as_uniform(chd):
    q32 = np.linspace(0.5, 8.0, 512).astype(np.float32)
    assert np.max(np.abs(np.diff(q32, 2))) > 0  # not exactly uniform in float32: rounding
    x = chd.positions.astype(np.float32)
    assert _uses_fast_path(chd.numbers, x, q32)
    assert xfit.QGrid.from_values(q32) == xfit.QGrid(0.5, 8.0, 512)
    got = xfit.intensity(chd.numbers, x, q32, kind="elastic")
    with jax.enable_x64(True):
        ref = xfit.intensity(chd.numbers, chd.positions, q32.astype(np.float64), kind="elastic", method="direct")
    np.testing.assert_allclose(got, ref, rtol=RTOL[np.float32])
    # A grid off by more than rounding is not uniform, in either precision.
    bumped = q32.copy()
    bumped[100] += 1e-4
    assert not _uses_fast_path(chd.numbers, x, bumped)
    with pytest.raises(ValueError, match="not a uniform grid"):
        xfit.QGrid.from_values(bumped)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.5, 8.0, 0), "positive integer"),
        ((-1.0, 8.0, 10), "non-negative"),
        ((2.0, 1.0, 10), "start < stop"),
        ((0.5, 100.0, 10), "form-factor tables"),
        ((0.5, np.nan, 10), "finite"),
    ],
)
def test_qgrid_rejects_bad_grids(args, message):
    with pytest.raises(ValueError, match=message):
        xfit.QGrid(*args)


def test_gradients_against_finite_differences(chd):
    def loss(x):
        return jnp.sum(xfit.intensity(chd.numbers, x, Q, kind="total") * jnp.cos(jnp.asarray(Q)))

    x = jnp.asarray(chd.positions + np.random.default_rng(0).normal(0, 0.05, chd.positions.shape))
    check_grads(loss, (x,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    check_grads(lambda x: xfit.intensity(chd.numbers, x, Q_IRREGULAR), (x,), order=1, modes=["rev"])


def test_custom_vjp_matches_plain_autodiff(nmm):
    x = jnp.asarray(nmm.positions + np.random.default_rng(4).normal(0, 0.05, (3, len(nmm), 3)))
    weights = jnp.asarray(np.random.default_rng(5).normal(size=(3, len(Q))))

    def loss(x, method):
        return jnp.sum(weights * xfit.intensity(nmm.numbers, x, Q, method=method))

    np.testing.assert_allclose(jax.grad(loss)(x, "auto"), jax.grad(loss)(x, "direct"), rtol=1e-9, atol=1e-9)


def test_second_derivatives_reverse_over_reverse(chd):
    x = jnp.asarray(chd.positions[:4])
    numbers = chd.numbers[:4]

    def loss(x, method):
        return jnp.sum(xfit.intensity(numbers, x, Q[:64], method=method) ** 2)

    hessian = jax.jacrev(jax.jacrev(lambda x: loss(x, "auto")))(x).reshape(12, 12)
    reference = jax.hessian(lambda x: loss(x, "direct"))(x).reshape(12, 12)
    np.testing.assert_allclose(hessian, reference, rtol=1e-7, atol=1e-6 * np.abs(reference).max())


def test_coincident_atoms_give_finite_values_and_gradients():
    positions = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])
    for method in ("auto", "direct"):
        value, grad = jax.value_and_grad(lambda x, m=method: xfit.intensity([6, 6, 8], x, Q, method=m).sum())(positions)
        assert np.isfinite(value)
        assert np.all(np.isfinite(grad))
    # Two coincident carbons scatter like one atom with twice the form factor.
    merged = xfit.intensity([6, 6, 8], positions, Q[1:], kind="elastic")
    f = np.asarray(xfit.form_factor(np.array([6, 8]), Q[1:]))
    expected = (2 * f[0]) ** 2 + f[1] ** 2 + 2 * (2 * f[0]) * f[1] * np.sin(Q[1:] * 1.2) / (Q[1:] * 1.2)
    np.testing.assert_allclose(merged, expected, rtol=1e-9)


def test_gradient_keeps_no_pairs_times_q_residuals(nmm):
    # Reverse mode must not store batch x pairs x q intermediates: inspect what the VJP closure holds.
    batch, n_pairs = 64, len(nmm) * (len(nmm) - 1) // 2
    x = jnp.asarray(np.broadcast_to(nmm.positions, (batch, len(nmm), 3)).copy())
    _, vjp = jax.vjp(lambda x: xfit.intensity(nmm.numbers, x, Q), x)
    largest = max(leaf.size for leaf in jax.tree_util.tree_leaves(vjp) if hasattr(leaf, "size"))
    assert largest <= batch * n_pairs * 4  # O(B P); B P n_q would be 128x larger
    _, vjp_direct = jax.vjp(lambda x: xfit.intensity(nmm.numbers, x, Q, method="direct"), x)
    largest_direct = max(leaf.size for leaf in jax.tree_util.tree_leaves(vjp_direct) if hasattr(leaf, "size"))
    assert largest_direct >= batch * n_pairs * len(Q)  # the reference path does keep them: the test can fail


def test_no_recompilation_on_repeated_calls(chd):
    rng = np.random.default_rng(0)
    xfit.intensity(chd.numbers, chd.positions, Q)
    before = _iam._intensity_flat._cache_size()
    for _ in range(3):
        xfit.intensity(chd.numbers, chd.positions + rng.normal(0, 0.1, chd.positions.shape), Q)
    assert _iam._intensity_flat._cache_size() == before
    step = jax.jit(jax.grad(lambda x: xfit.intensity(chd.numbers, x, Q).sum()))
    step(jnp.asarray(chd.positions))
    for _ in range(3):
        step(jnp.asarray(chd.positions + rng.normal(0, 0.1, chd.positions.shape)))
    assert step._cache_size() == 1


def test_dtype_follows_positions(chd):
    assert xfit.intensity(chd.numbers, chd.positions.astype(np.float32), Q).dtype == jnp.float32
    assert xfit.intensity(chd.numbers, chd.positions, Q).dtype == jnp.float64


def test_single_atom_has_no_molecular_term():
    single = xfit.intensity(["S"], np.zeros((1, 3)), Q, kind="molecular")
    np.testing.assert_array_equal(single, 0.0)


def test_scattering_takes_atoms_and_lists(chd):
    one = xfit.scattering(chd, Q)
    assert one.shape == (len(Q),) and one.dtype == np.float64
    frames = [chd, chd.copy()]
    frames[1].positions += 0.1
    many = xfit.scattering(frames, Q, kind="elastic")
    assert many.shape == (2, len(Q))
    np.testing.assert_allclose(many[0], many[1], rtol=1e-12)  # a translation


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x: xfit.intensity(["C", "Q"], x[:2], Q), ValueError, "unknown element symbol 'Q'"),
        (lambda x: xfit.intensity([], x[:0], Q), ValueError, "empty molecule"),
        (lambda x: xfit.intensity([6, 6], np.array([[0, 0, 0], [np.nan, 0, 0]]), Q), ValueError, "NaN"),
        (lambda x: xfit.intensity([6, 6], x[:2], np.array([0.5, 80.0])), ValueError, "beyond the form-factor"),
        (lambda x: xfit.intensity([6, 6], x[:2], np.array([-0.1, 1.0])), ValueError, "non-negative"),
        (lambda x: xfit.intensity([6, 6], x[:2], np.array([np.nan, 1.0])), ValueError, "NaN"),
        (lambda x: xfit.intensity([6, 6, 1], x[:2], Q), ValueError, r"\(\.\.\., 3, 3\)"),
        (lambda x: xfit.intensity([6, 6], x[:2], Q, kind="bogus"), ValueError, "unknown kind"),
        (lambda x: xfit.intensity([6, 6], x[:2], Q, probe="neutron"), ValueError, "unknown probe"),
        (lambda x: jax.jit(lambda z: xfit.intensity(z, x[:2], Q))(jnp.array([6, 6])), TypeError, "concrete"),
    ],
)
def test_bad_input_raises_clear_errors(chd, call, error, message):
    with pytest.raises(error, match=message):
        call(chd.positions)
