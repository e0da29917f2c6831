"""The isotropic Independent Atom Model (IAM): one pure-JAX pair-sum kernel behind every pattern in xfit.

For a molecule of atoms i with positions x_i and form factors f_i(q), the orientation-averaged X-ray intensity is
the Debye formula (Debye, Ann. Phys. 351, 809 (1915); e.g. Als-Nielsen & McMorrow, Elements of Modern X-ray
Physics, 2nd ed., eq. 4.17)

    I_atomic(q)    = sum_i f_i(q)^2
    I_molecular(q) = sum_{i != j} f_i f_j sin(q r_ij)/(q r_ij) = 2 sum_{i < j} f_i f_j sin(q r_ij)/(q r_ij)
    I_elastic      = I_atomic + I_molecular
    I_inelastic(q) = sum_i S_i(q)                       (incoherent/Compton, Hubbell's S)
    I_total        = I_elastic + I_inelastic

with q = 4 pi sin(theta)/lambda in 1/A and r_ij in A. Intensities are in electron units (per molecule).

How the kernel is built, and why:

- Pairs are summed over i < j only (no r = 0 diagonal), sorted by element-pair type, so that pairs of the same
  two elements share one form-factor product F_t(q) = f_a(q) f_b(q): I_mol = 2 sum_t F_t(q)/q Y_t(q) with
  Y_t(q) = sum_{p in t} sin(q r_p)/r_p.
- The sines are the cost. On a uniform grid q_k = q_0 + k dq the grid is cut into A blocks of M points,
  q = qa_a + dm_m, and the angle-addition identity sin(qa r + dm r) = sin(qa r) cos(dm r) + cos(qa r) sin(dm r)
  re-anchors at every block, so that only 2 (A + M) transcendentals are evaluated per pair instead of n_q, with no
  recurrence error carried from block to block. The remaining sum over pairs is a batched matrix product
  Y_t[b] = U_t[b]^T V_t[b] (A x 2P_t times 2P_t x M). Sines and cosines come from one polynomial pass
  (``_sin_shifted``: sin(x + k pi/2) with the quadrant shift exact), 7x XLA's own sin on CPU. A non-uniform grid
  uses A = n_q, M = 1 (direct). A traced q (an argument of the caller's jitted function) keeps the fast path: its
  length is static, and start, step and uniformity are read from the values at run time (``_qgrid.traced_blocks``),
  so new q values on the same grid shape neither recompile nor slow down; a traced grid that turns out not to be
  uniform falls back to the direct sum with a one-time ``PerformanceWarning``. ``xfit.QGrid`` is the static form.
- Derivatives: ``_sinc_sums`` has a custom JVP (so jacfwd, grad and Hessians all work) whose tangent map is under
  ``jax.checkpoint``: reverse mode keeps only the distances (batch x pairs) and recomputes the trigonometric
  factors when it transposes, so gradient memory grows as batch x pairs, not batch x pairs x q.
- Coincident atoms: distances are floored at ``R_MIN`` with a gradient-safe square root, so values and gradients
  stay finite (sin(q r)/(q r) -> 1 there, as it should).

``method="direct"`` evaluates the textbook formula with plain autodiff; it is the reference the fast path is
tested against.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from xfit.physics import _elements, _qgrid
from xfit.physics._qgrid import QGrid

__all__ = ["KINDS", "intensity"]

KINDS = ("atomic", "molecular", "elastic", "inelastic", "total")
PROBES = ("xray", "electron")
R_MIN = 1e-6
"""Floor on interatomic distances (A): keeps 1/r and gradients finite for coincident atoms."""
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes for the pair-sum matrix products on GPUs

Kind = Literal["atomic", "molecular", "elastic", "inelastic", "total"]


# ----------------------------------------------------------------------------------------------------------------
# Static structure: pairs sorted by element-pair type (the q grid's anchors x offsets: ``_qgrid``).


@dataclasses.dataclass(frozen=True, eq=False)
class _PairPlan:
    """Pairs i < j of one molecule, sorted by element-pair type. Hashed by identity (one per element list)."""

    numbers: np.ndarray  # (n_atoms,)
    i: np.ndarray  # (n_pairs,)
    j: np.ndarray  # (n_pairs,)
    type_elements: np.ndarray  # (n_types, 2) atomic numbers (a <= b) of each pair type
    slices: tuple[tuple[int, int], ...]  # pair-index range of each type


@functools.lru_cache(maxsize=256)
def _pair_plan(numbers: tuple[int, ...]) -> _PairPlan:
    z = np.asarray(numbers, dtype=np.int64)
    i, j = np.triu_indices(len(z), k=1)
    lo, hi = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
    keys = lo * 1000 + hi
    order = np.argsort(keys, kind="stable")
    i, j, keys = i[order], j[order], keys[order]
    unique, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    slices = tuple((int(s), int(s + c)) for s, c in zip(starts, counts, strict=True))
    type_elements = np.stack([unique // 1000, unique % 1000], axis=-1) if len(unique) else np.zeros((0, 2), int)
    return _PairPlan(z, i.astype(np.int32), j.astype(np.int32), type_elements, slices)


# ----------------------------------------------------------------------------------------------------------------
# The kernel.


# Cody-Waite reduction by pi/2 in three parts (each exact in the working precision times the quadrant count) and
# Cephes' minimax polynomials for sin and cos on [-pi/4, pi/4] (S. L. Moshier, Cephes Math Library: sinf.c, sin.c).
_SINCOS = {
    np.dtype(np.float32): (
        (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8),
        (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1),
        (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2),
    ),
    np.dtype(np.float64): (
        (1.57079625129699707031, 7.54978941586159635336e-8, 5.39030285815811905290e-15),
        (
            1.58962301576546568060e-10,
            -2.50507477628578072866e-8,
            2.75573136213857245213e-6,
            -1.98412698295895385996e-4,
            8.33333333332211858878e-3,
            -1.66666666666666307295e-1,
        ),
        (
            -1.13585365213876817300e-11,
            2.08757008419747316778e-9,
            -2.75573141792967388112e-7,
            2.48015872888517045348e-5,
            -1.38888888888730564116e-3,
            4.16666666666665929218e-2,
        ),
    ),
}


@jax.custom_jvp
def _sin_shifted(x, shift):
    """sin(x + shift pi/2) for an integer ``shift`` (broadcast against x): sin (0), cos (1), -sin (2), -cos (3).

    The shift enters the quadrant count of the range reduction, so it is exact (no pi/2 added in floating point).
    One fused elementwise pass: a Cody-Waite reduction by pi/2 and Cephes' polynomials on [-pi/4, pi/4]. XLA's
    CPU sin and cos ran at 0.22e9 evaluations/s on the 2-core benchmark machine, this at 1.6e9 (both outputs);
    measured error against float64 libm: <= 8e-8 absolute for float32 |x| <= 1e5 (the argument's own rounding,
    ulp(x)/2, is larger beyond |x| ~ 1), <= 2.2e-16 in float64. Other dtypes go through jnp.sin.
    """
    constants = _SINCOS.get(np.dtype(x.dtype))
    if constants is None:
        return jnp.sin(x + (jnp.asarray(shift) % 4).astype(x.dtype) * np.asarray(np.pi / 2, x.dtype))
    (p1, p2, p3), sin_poly, cos_poly = constants
    dtype = x.dtype
    k = jnp.round(x * np.asarray(2 / np.pi, dtype))
    r = ((x - k * np.asarray(p1, dtype)) - k * np.asarray(p2, dtype)) - k * np.asarray(p3, dtype)
    z = r * r
    s = jnp.zeros_like(z)
    for coefficient in sin_poly:
        s = s * z + np.asarray(coefficient, dtype)
    s = r + r * z * s
    c = jnp.zeros_like(z)
    for coefficient in cos_poly:
        c = c * z + np.asarray(coefficient, dtype)
    c = np.asarray(1, dtype) - np.asarray(0.5, dtype) * z + z * z * c
    quadrant = (k.astype(jnp.int32) + shift) & 3  # x + shift pi/2 = quadrant pi/2 + r (mod 2 pi)
    value = jnp.where((quadrant & 1) == 0, s, c)
    return jnp.where(quadrant >= 2, -value, value)


@_sin_shifted.defjvp
def _sin_shifted_jvp(primals, tangents):
    (x, shift), (dx, _) = primals, tangents
    return _sin_shifted(x, shift), _sin_shifted(x, shift + 1) * dx


def _type_operands(r, qa, dm):
    """The two factors of one pair type's angle-addition product, for distances r (B, P) of that type:
    U (B, 2P, A) = [sin(qa r); cos(qa r)] / r and V (B, 2P, M) = [cos(dm r); sin(dm r)], so that
    sum_p sin((qa_a + dm_m) r_p)/r_p = (U^T V)[a, m]. Also returns the angles qa r (B, 2P, A) and the shifts.

    Each factor is one elementwise pass over the duplicated distances with a per-row phase shift, rather than
    sines and cosines concatenated afterwards: inside the chunk loop the concatenation cost 3x (16e3 against
    49e3 NMM structures/s at 512 q on the 2-core CPU).
    """
    n = r.shape[-1]
    shift = np.repeat(np.arange(2, dtype=np.int32), n)[:, None]  # (2P, 1): 0 = sin, 1 = cos
    rr = jnp.concatenate([r, r], axis=-1)[..., None]  # (B, 2P, 1)
    angles = rr * qa
    u = _sin_shifted(angles, shift) / rr
    v = _sin_shifted(rr * dm, 1 - shift)
    return u, v, angles, shift, rr


def _sinc_sums_forward(r, qa, dm, slices):
    # One batched matrix product (A x 2P_t times 2P_t x M) per type; nothing of size B x P x n_q is materialised.
    out = []
    for lo, hi in slices:
        u, v, *_ = _type_operands(r[:, lo:hi], qa, dm)
        out.append(jnp.einsum("bpa,bpm->bam", u, v, precision=_HIGHEST))
    return jnp.stack(out, axis=1)


@functools.partial(jax.checkpoint, static_argnums=(4,))
def _sinc_sums_tangent(r, dr, qa, dm, slices):
    """d/dt of Y along dr: sum_p [q cos(q r_p)/r_p - sin(q r_p)/r_p^2] dr_p with q = qa_a + dm_m, by the same
    angle addition (cos((qa + dm) r) = [cos(qa r); -sin(qa r)] . [cos(dm r); sin(dm r)]).

    Under ``jax.checkpoint`` reverse mode keeps only (r, dr) and recomputes the trigonometric factors when it
    transposes this linear map, so gradient memory grows as batch x pairs, not batch x pairs x q.
    """
    q = qa[:, None] + dm[None, :]
    out = []
    for lo, hi in slices:
        u, v, angles, shift, rr = _type_operands(r[:, lo:hi], qa, dm)
        w = jnp.concatenate([dr[:, lo:hi], dr[:, lo:hi]], axis=-1)[..., None] / rr  # (B, 2P, 1): dr / r
        cos_part = jnp.einsum("bpa,bpm->bam", _sin_shifted(angles, shift + 1) * w, v, precision=_HIGHEST)
        sin_part = jnp.einsum("bpa,bpm->bam", u * w, v, precision=_HIGHEST)
        out.append(q * cos_part - sin_part)
    return jnp.stack(out, axis=1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _sinc_sums(r, qa, dm, slices):
    """Y[b, t, a, m] = sum_{p in type t} sin((qa_a + dm_m) r_bp) / r_bp.

    Differentiable in r to any order, forward and reverse (a custom JVP whose tangent map is checkpointed, see
    ``_sinc_sums_tangent``); the grid (qa, dm) is treated as constant.

    Args:
        r: distances (B, P) in A, pairs sorted by type, all >= R_MIN.
        qa: anchors (A,) and dm: offsets (M,) = step * arange(M) (or M = 1 with dm = [0]), both 1/A, so that
            q = qa_a + dm_m.
        slices: static pair-index ranges of the types (T of them).

    Returns:
        (B, T, A, M), dtype of r.
    """
    return _sinc_sums_forward(r, qa, dm, slices)


@_sinc_sums.defjvp
def _sinc_sums_jvp(slices, primals, tangents):
    (r, qa, dm), (dr, _, _) = primals, tangents
    return _sinc_sums_forward(r, qa, dm, slices), _sinc_sums_tangent(r, dr, qa, dm, slices)


def _distances(positions, i, j):
    """Pair distances (..., P) in A, floored at R_MIN with a gradient-safe square root."""
    d = positions[..., i, :] - positions[..., j, :]
    d2 = jnp.sum(d * d, axis=-1)
    far = d2 > R_MIN**2
    return jnp.where(far, jnp.sqrt(jnp.where(far, d2, 1.0)), R_MIN)


def _form_factors(numbers: np.ndarray, q, probe: tuple):
    """Per-atom scattering factors (n, n_q): X-ray f0 (electrons) or electron f_e (A), by ``probe`` =
    ("xray",) or ("electron", energy_kev, model)."""
    if probe[0] == "xray":
        return _elements.form_factor(numbers, q)
    return _elements.electron_form_factor(numbers, q, energy_kev=probe[1], electron_model=probe[2])


def _type_form_factors(plan: _PairPlan, q, probe: tuple):
    """F_t(q) = f_a(q) f_b(q) for each pair type, (T, n_q)."""
    unique = np.unique(plan.numbers)
    f = _form_factors(unique, q, probe)
    index = np.searchsorted(unique, plan.type_elements)
    return f[index[:, 0]] * f[index[:, 1]]


ACCELERATOR_PAIR_BUDGET = 1 << 21
"""On accelerators, structures x pairs per chunk of the pair sum (see ``_chunk_size``)."""


def _chunk_size(n_pairs: int) -> int:
    """Structures per chunk of the pair sum.

    On CPU small chunks keep the (chunk, 2P, A + M) trigonometric tables in cache: 32 to 128 structures ran within
    5 % of each other for NMM (153 pairs) and C33H68 (5,050 pairs) at 512 q, 16 was 20 % slower for NMM, and the
    whole batch at once 2x slower at batch 1024. On accelerators a chunk holds up to ACCELERATOR_PAIR_BUDGET
    structure-pairs (a power of two structures): when the whole batch went at once, a 101-atom molecule (5,050
    pairs) on an H100 fell from 8e4 patterns/s at batch 16-256 to 1.5e4 at 4,096, and its gradient ran out of
    memory (53 GB) at 16,384 (benchmarks/results/forward_gpu.txt). NMM (153 pairs) keeps whole batches up to 8,192.
    """
    if jax.default_backend() == "cpu":
        return 32
    return 1 << max(0, int(np.log2(max(1, ACCELERATOR_PAIR_BUDGET // max(n_pairs, 1)))))


def _molecular_fast(plan: _PairPlan, positions, q, qa, dm, probe: tuple):
    """I_molecular (B, n_q) through the blocked kernel; q (n_q,) is the grid qa + dm flattened and trimmed."""
    n_q = q.shape[0]
    weights = _type_form_factors(plan, q, probe)
    inv_q = jnp.where(q > 0, 1.0 / jnp.where(q > 0, q, 1.0), 0.0)
    counts = jnp.asarray([hi - lo for lo, hi in plan.slices], q.dtype)
    at_zero = jnp.where(q == 0, counts @ weights, 0.0)  # sin(q r)/(q r) -> 1 at q = 0
    weights = weights * inv_q

    def molecular(r):  # (c, P) -> (c, n_q): the pair sums and their form-factor weights, chunk by chunk
        y = _sinc_sums(r, qa, dm, plan.slices)
        y = y.reshape(*y.shape[:2], -1)[..., :n_q]  # (c, T, n_q)
        return 2.0 * (jnp.einsum("btq,tq->bq", y, weights, precision=_HIGHEST) + at_zero)

    return _by_chunks(molecular, _distances(positions, plan.i, plan.j), n_q)


def _by_chunks(molecular, r, n_q: int):
    """``molecular`` (c, P) -> (c, n_q) applied to distances r (B, P) in chunks of ``_chunk_size`` structures."""
    chunk = _chunk_size(r.shape[1])
    if r.shape[0] <= chunk:
        return molecular(r)
    batch = r.shape[0]
    padded = jnp.pad(r, ((0, -batch % chunk), (0, 0)), constant_values=1.0)
    out = jax.lax.map(molecular, padded.reshape(-1, chunk, r.shape[1]))
    return out.reshape(-1, n_q)[:batch]


def _direct_sum(plan: _PairPlan, r, q, probe: tuple):
    """2 sum_{i<j} f_i f_j sin(q r_ij)/(q r_ij) for distances r (B, P): the textbook formula, (B, n_q)."""
    f = _form_factors(plan.numbers, q, probe)
    sinc = jnp.sinc(r[..., None] * q / jnp.pi)  # jnp.sinc(x) = sin(pi x)/(pi x)
    return 2.0 * jnp.einsum("bpq,pq->bq", sinc, f[plan.i] * f[plan.j], precision=_HIGHEST)


def _molecular_direct(plan: _PairPlan, positions, q, probe: tuple):
    """Reference: the textbook double sum over pairs i < j, (B, n_q), plain autodiff, all of the batch at once."""
    return _direct_sum(plan, _distances(positions, plan.i, plan.j), q, probe)


def _molecular_traced(plan: _PairPlan, positions, q, probe: tuple):
    """I_molecular for a traced q: the blocked kernel on the grid read from the values where they are uniform
    (``_qgrid.traced_blocks``), the direct sum where they are not (with a one-time ``PerformanceWarning``)."""
    qa, dm, uniform = _qgrid.traced_blocks(q)
    warn = _qgrid.traced_irregular_warning(q.shape[0])

    # Both branches under jax.checkpoint: differentiating a cond saves the residuals of both branches, and the
    # direct sum's (batch x pairs x q) made value-and-grad 10x slower than with q closed over (and ran out of memory
    # at batch 16,384) even when the fast branch ran; checkpointed, each branch keeps only its inputs.
    @jax.checkpoint
    def direct(positions, q, qa, dm, uniform):
        jax.debug.callback(warn, uniform)
        # In checkpointed chunks, like the fast path (XLA reserves scratch for both branches whichever runs): the
        # backward pass then holds one chunk's batch x pairs x q at a time.
        chunked = jax.checkpoint(lambda r: _direct_sum(plan, r, q, probe))
        return _by_chunks(chunked, _distances(positions, plan.i, plan.j), q.shape[0])

    @jax.checkpoint
    def fast(positions, q, qa, dm, uniform):
        return _molecular_fast(plan, positions, q, qa, dm, probe)

    return jax.lax.cond(uniform, fast, direct, positions, q, qa, dm, uniform)


@functools.partial(jax.jit, static_argnames=("plan", "kind", "method", "probe"))
def _intensity_flat(positions, q, qa, dm, *, plan: _PairPlan, kind: str, method: str, probe: tuple):
    """method: "auto" (blocked kernel on the given qa, dm), "traced" (blocks read from q's values at run time)
    or "direct"."""
    batch = positions.shape[0]
    terms = jnp.zeros((batch, q.shape[0]), positions.dtype)
    if kind in ("atomic", "elastic", "total"):
        f = _form_factors(plan.numbers, q, probe)
        terms = terms + jnp.sum(f * f, axis=0)
    if kind in ("molecular", "elastic", "total") and plan.slices:
        if method == "direct":
            terms = terms + _molecular_direct(plan, positions, q, probe)
        elif method == "traced":
            terms = terms + _molecular_traced(plan, positions, q, probe)
        else:
            terms = terms + _molecular_fast(plan, positions, q, qa, dm, probe)
    if kind in ("inelastic", "total") and probe[0] == "xray":
        terms = terms + jnp.sum(_elements.compton_function(plan.numbers, q), axis=0)
    return terms


def padded_factors(numbers, q: np.ndarray, max_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Scattering factors as data, for :func:`padded_intensity` (total X-ray intensities).

    Args:
        numbers: atomic numbers (n_atoms,), n_atoms <= max_atoms.
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, (n_q,).
        max_atoms: padded length.

    Returns:
        factors (max_atoms, n_q): f0 of each atom in electrons, zero rows for padding atoms; incoherent (n_q,):
        the structure-independent part sum_i (f_i^2 + S_i), Compton included, in electron units.
    """
    numbers = _elements.as_numbers(numbers)
    if len(numbers) > max_atoms:
        raise ValueError(f"{len(numbers)} atoms do not fit max_atoms={max_atoms}")
    q = check_q(np.asarray(q, np.float64))
    f = np.asarray(_elements.form_factor(numbers, jnp.asarray(q)), np.float64)
    factors = np.zeros((max_atoms, len(q)))
    factors[: len(numbers)] = f
    compton = np.asarray(_elements.compton_function(numbers, jnp.asarray(q)), np.float64)
    return factors, np.sum(f * f, axis=0) + np.sum(compton, axis=0)


def padded_intensity(positions, q, factors, incoherent):
    """Total X-ray intensity with the atoms' scattering factors passed as arrays: one compiled function serves
    every molecule up to N atoms (the learned prior's physics loss trains on many molecules at once this way).

    Args:
        positions: (..., N, 3) in A; padding atoms anywhere (their factors are zero).
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, (n_q,).
        factors, incoherent: (N, n_q) and (n_q,) from :func:`padded_factors` (or with leading batch axes).

    Returns:
        (..., n_q) in electron units: incoherent + 2 sum_{i<j} f_i f_j sin(q r_ij)/(q r_ij), the same as
        ``intensity(numbers, positions, q, kind="total")``. Textbook pair sum: O(N^2 n_q) memory per structure.
    """
    n = positions.shape[-2]
    i, j = np.triu_indices(n, k=1)
    r = _distances(positions, i, j)  # (..., P)
    sinc = jnp.sinc(r[..., None] * q / jnp.pi)  # (..., P, n_q)
    weights = factors[..., i, :] * factors[..., j, :]
    return incoherent + 2.0 * jnp.sum(sinc * weights, axis=-2)


# ----------------------------------------------------------------------------------------------------------------
# Public entry point.


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_q(q: np.ndarray, *, name: str = "q") -> np.ndarray:
    """Validate a concrete q grid (1/A): 1-D, finite, non-negative, within the form-factor tables."""
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of momentum transfers, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(q < 0):
        raise ValueError(f"{name} must be non-negative (q = 4 pi sin(theta)/lambda), min is {q.min():g} 1/A")
    if np.any(q > _elements.Q_MAX):
        raise ValueError(
            f"{name} reaches {q.max():g} 1/A, beyond the form-factor tables' range q <= {_elements.Q_MAX:.2f} 1/A "
            f"(s = q/(4 pi) <= {_elements.S_MAX:g} 1/A); check that q is 4 pi sin(theta)/lambda in 1/A, not s or 1/nm"
        )
    return q


def intensity(
    numbers,
    positions,
    q,
    *,
    kind: Kind = "total",
    probe: Literal["xray", "electron"] = "xray",
    method: Literal["auto", "direct"] = "auto",
    energy_kev: float | None = None,
    electron_model: str = "mott-bethe",
) -> jax.Array:
    """Orientation-averaged IAM scattering intensity of one molecule or a batch of conformations.

    Pure JAX: usable under ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (reverse mode, including reverse-over-reverse
    for Hessians) with respect to ``positions``.

    Args:
        numbers: atomic numbers or element symbols, shape (n_atoms,). Must be concrete (not traced).
        positions: Cartesian coordinates in A, shape (..., n_atoms, 3) with any leading batch dimensions. The
            computation runs in this array's floating dtype (float32, or float64 with ``jax_enable_x64``).
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, shape (n_q,), 0 <= q <= ~75.4 1/A. A concrete,
            uniformly spaced grid (to its dtype's rounding) takes the fast angle-addition path; so does an
            ``xfit.QGrid``, which also stays static when passed through ``jax.jit``. A traced q array (an argument of
            the caller's jitted function) takes the fast path too when its values are uniform, checked at run time
            without recompiling; a traced non-uniform grid takes the direct path, with a ``PerformanceWarning`` once
            per compiled function (traced grids of fewer than 16 points always take the direct path). Or a
            ``GridArrays`` (``xfit.physics._qgrid.padded_grid``): values traced, blocks fixed on the host.
        kind: "atomic" (sum_i f_i^2), "molecular" (sum_{i != j} f_i f_j sinc), "elastic" (atomic + molecular),
            "inelastic" (sum_i S_i, Compton) or "total" (elastic + inelastic).
        probe: "xray" (form factors f0, electron units) or "electron" (scattering factors f_e in A, first Born
            approximation, so intensities in A^2; see ``xfit.electron_form_factor``). Electron inelastic scattering
            is not modelled: for electrons "total" equals "elastic" and "inelastic" is an error.
        method: "auto" (blocked angle-addition kernel with low-memory gradients) or "direct" (the textbook formula
            with plain autodiff, the reference path).
        energy_kev: electron kinetic energy in keV (probe="electron" only; required there).
        electron_model: "mott-bethe" (from the X-ray form factors, default) or "kirkland" (Kirkland's fit).

    Returns:
        Intensity, shape (..., n_q), dtype of ``positions``: electron units (X-rays) or A^2 (electrons).

    Raises:
        ValueError: unknown element, empty molecule, positions of the wrong shape or not finite, q outside
            [0, Q_MAX] or not finite, unknown kind, probe or method.

    Example:
        >>> import numpy as np, xfit
        >>> q = np.linspace(0.5, 8.0, 512)
        >>> i_total = xfit.intensity([8, 1, 1], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]), q)
        >>> i_total.shape
        (512,)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {PROBES}")
    if method not in ("auto", "direct"):
        raise ValueError(f"unknown method {method!r}; choose 'auto' or 'direct'")
    if probe == "electron":
        if energy_kev is None:
            raise ValueError("probe='electron' needs energy_kev (the electrons' kinetic energy, keV)")
        _elements.relativistic_factor(energy_kev)  # validates energy > 0
        if electron_model not in _elements.ELECTRON_MODELS:
            raise ValueError(f"unknown electron_model {electron_model!r}; choose one of {_elements.ELECTRON_MODELS}")
        if kind == "inelastic":
            raise ValueError("electron inelastic scattering is not modelled; use kind='elastic' (or 'total')")
        probe_spec = ("electron", float(energy_kev), electron_model)
    else:
        if energy_kev is not None:
            raise ValueError("energy_kev is for probe='electron'; X-ray patterns do not depend on the photon energy")
        probe_spec = ("xray",)
    z = _elements.as_numbers(numbers)
    plan = _pair_plan(tuple(int(v) for v in z))

    if not isinstance(positions, jax.Array):  # NumPy or lists: checked before JAX sees them (with jax_debug_nans
        positions = np.asarray(positions)  # on, converting a NaN array would raise JAX's own error first)
        if np.issubdtype(positions.dtype, np.floating) and not np.all(np.isfinite(positions)):
            raise ValueError("positions contain NaN or infinite values")
    positions = jnp.asarray(positions)
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    if positions.ndim < 2 or positions.shape[-2:] != (len(z), 3):
        raise ValueError(
            f"positions must have shape (..., n_atoms, 3) = (..., {len(z)}, 3) to match numbers, "
            f"got {tuple(positions.shape)}"
        )
    if _is_concrete(positions) and not bool(jnp.all(jnp.isfinite(positions))):
        raise ValueError("positions contain NaN or infinite values")
    dtype = positions.dtype

    if isinstance(q, _qgrid.GridArrays):  # values traced, blocks read on the host (xfit.infer's likelihood)
        q_arr, qa, dm = (jnp.asarray(x, dtype) for x in (q.q, q.qa, q.dm))
        if method == "direct":
            qa, dm = q_arr, jnp.zeros(1, dtype)
    elif isinstance(q, QGrid):
        q_np = q.values
        qa_np, dm_np = q.blocks() if method == "auto" else (q_np, np.zeros(1))
        q_arr, qa, dm = (jnp.asarray(x, dtype) for x in (q_np, qa_np, dm_np))
    elif _is_concrete(q):
        given = np.asarray(q)
        q_np = check_q(given)
        qa_np, dm_np = _qgrid.blocks_of(given) if method == "auto" else (q_np, np.zeros(1))
        q_arr, qa, dm = (jnp.asarray(x, dtype) for x in (q_np, qa_np, dm_np))
    else:
        q_arr = jnp.asarray(q, dtype)
        if q_arr.ndim != 1:
            raise ValueError(f"q must be a 1-D array, got shape {q_arr.shape}")
        if method == "auto" and q_arr.shape[0] >= 16:
            method = "traced"  # the grid's structure is static (n_q); start, step and uniformity are read at run time
        qa, dm = q_arr, jnp.zeros(1, dtype)

    batch_shape = positions.shape[:-2]
    flat = positions.reshape(-1, len(z), 3)
    out = _intensity_flat(flat, q_arr, qa, dm, plan=plan, kind=kind, method=method, probe=probe_spec)
    return out.reshape(*batch_shape, q_arr.shape[0])


def scattering(
    atoms,
    q,
    *,
    kind: Kind = "total",
    probe: Literal["xray", "electron"] = "xray",
    energy_kev: float | None = None,
    electron_model: str = "mott-bethe",
) -> np.ndarray:
    """IAM scattering of an ``ase.Atoms`` (or a list of conformations of one molecule), in float64, as NumPy.

    Args:
        atoms: an ``ase.Atoms``, or a sequence of them with the same atoms in the same order.
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, shape (n_q,).
        kind, probe, energy_kev, electron_model: as in :func:`intensity`.

    Returns:
        float64 array (n_q,) for one structure, (n_structures, n_q) for a sequence; electron units (X-rays) or A^2
        (electrons).
    """
    from xfit.chem._structures import as_arrays

    numbers, positions, single = as_arrays(atoms)
    q = check_q(q)
    with jax.enable_x64(True):
        out = np.asarray(
            intensity(
                numbers,
                jnp.asarray(positions, jnp.float64),
                q,
                kind=kind,
                probe=probe,
                energy_kev=energy_kev,
                electron_model=electron_model,
            )
        )
    return out[0] if single else out
