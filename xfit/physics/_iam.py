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
  Y_t[b] = U_t[b]^T V_t[b] (A x 2P_t times 2P_t x M). A non-uniform grid uses A = n_q, M = 1 (direct); so does a traced
  one (its values unknown at trace time), with a ``PerformanceWarning``; ``xfit.QGrid`` keeps the structure static.
- Reverse mode: ``_sinc_sums`` has a custom VJP that keeps only the distances (batch x pairs) and recomputes the
  trigonometric factors in the backward pass, so gradient memory grows as batch x pairs, not batch x pairs x q.
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


def _offset_table(r, dm):
    """cos and sin of dm_m r, each (..., P, M), for offsets dm = step * arange(M) with M a power of two.

    Built by complex doubling from one sincos of (step r): e^{i m step r} for m < 2^(L+1) is the table for
    m < 2^L followed by that table times e^{i 2^L step r}. Rounding error grows with the log2(M) levels (at most
    ~M ulp in amplitude), against M sines and M cosines saved per pair.
    """
    m_total = dm.shape[0]
    shape = (*r.shape, 1)
    if m_total == 1:
        return jnp.ones(shape, r.dtype), jnp.zeros(shape, r.dtype)
    phase = r[..., None] * dm[1]
    c_step, s_step = jnp.cos(phase), jnp.sin(phase)
    c, s = jnp.ones(shape, r.dtype), jnp.zeros(shape, r.dtype)
    while c.shape[-1] < m_total:
        c, s = (
            jnp.concatenate([c, c * c_step - s * s_step], axis=-1),
            jnp.concatenate([s, s * c_step + c * s_step], axis=-1),
        )
        c_step, s_step = c_step * c_step - s_step * s_step, 2.0 * s_step * c_step
    return c, s


def _trig(r, qa, dm):
    """sin and cos of the anchors qa_a r (..., P, A), and of the offsets dm_m r (..., P, M)."""
    ra = r[..., None] * qa
    cm, sm = _offset_table(r, dm)
    return jnp.sin(ra), jnp.cos(ra), sm, cm


def _sinc_sums_forward(r, qa, dm, slices):
    sa, ca, sm, cm = _trig(r, qa, dm)
    inv_r = (1.0 / r)[..., None]
    sa, ca = sa * inv_r, ca * inv_r
    # sin((qa + dm) r)/r summed over the pairs of each type: one broadcast multiply-reduce per type, which XLA
    # fuses into a single loop nest (on CPU ~10x faster than the equivalent batched dot of these small matrices,
    # and nothing of size B x P x n_q is materialised).
    return jnp.stack(
        [
            jnp.sum(
                sa[:, lo:hi, :, None] * cm[:, lo:hi, None, :] + ca[:, lo:hi, :, None] * sm[:, lo:hi, None, :],
                axis=1,
            )
            for lo, hi in slices
        ],
        axis=1,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sinc_sums(r, qa, dm, slices):
    """Y[b, t, a, m] = sum_{p in type t} sin((qa_a + dm_m) r_bp) / r_bp.

    Args:
        r: distances (B, P) in A, pairs sorted by type, all >= R_MIN.
        qa: anchors (A,) and dm: offsets (M,) = step * arange(M) (M a power of two, or M = 1 with dm = [0]),
            both 1/A, so that q = qa_a + dm_m.
        slices: static pair-index ranges of the types (T of them).

    Returns:
        (B, T, A, M), dtype of r.
    """
    return _sinc_sums_forward(r, qa, dm, slices)


def _sinc_sums_fwd(r, qa, dm, slices):
    return _sinc_sums_forward(r, qa, dm, slices), (r, qa, dm)


def _sinc_sums_bwd(slices, residuals, g):
    # d/dr [sin(q r)/r] = q cos(q r)/r - sin(q r)/r^2, with cos and sin of q r = (qa + dm) r again by angle
    # addition. The trigonometric factors are recomputed here rather than stored: memory stays O(B P).
    r, qa, dm = residuals
    sa, ca, sm, cm = _trig(r, qa, dm)
    q = qa[:, None] + dm[None, :]
    cos_part, sin_part = [], []
    for t, (lo, hi) in enumerate(slices):
        # Contract over the offsets m first (a batched matrix product, (B, P_t, A) out), then over the anchors a:
        # nothing of size B x P x n_q is formed.
        g_t = jnp.stack([g[:, t] * q, g[:, t]], axis=1)  # (B, 2, A, M): weights of the cos and of the sin part
        x_c = jnp.einsum("bkam,bpm->bkpa", g_t, cm[:, lo:hi], precision=_HIGHEST)
        x_s = jnp.einsum("bkam,bpm->bkpa", g_t, sm[:, lo:hi], precision=_HIGHEST)
        s_a, c_a = sa[:, lo:hi], ca[:, lo:hi]
        cos_part.append(jnp.sum(c_a * x_c[:, 0] - s_a * x_s[:, 0], axis=-1))
        sin_part.append(jnp.sum(s_a * x_c[:, 1] + c_a * x_s[:, 1], axis=-1))
    cos_part, sin_part = jnp.concatenate(cos_part, axis=1), jnp.concatenate(sin_part, axis=1)
    return cos_part / r - sin_part / r**2, jnp.zeros_like(qa), jnp.zeros_like(dm)


_sinc_sums.defvjp(_sinc_sums_fwd, _sinc_sums_bwd)


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

    On CPU small chunks keep the (chunk, P, A + M) trigonometric tables in cache (2x faster at batch 1024, measured
    in benchmarks/forward.py). On accelerators a chunk holds up to ACCELERATOR_PAIR_BUDGET structure-pairs (a power
    of two structures): when the whole batch went at once, a 101-atom molecule (5,050 pairs) on an H100 fell from
    8e4 patterns/s at batch 16-256 to 1.5e4 at 4,096, and its gradient ran out of memory (53 GB) at 16,384
    (benchmarks/results/forward_gpu.txt). NMM (153 pairs) keeps whole batches up to 8,192.
    """
    if jax.default_backend() == "cpu":
        return 32
    return 1 << max(0, int(np.log2(max(1, ACCELERATOR_PAIR_BUDGET // max(n_pairs, 1)))))


def _molecular_fast(plan: _PairPlan, positions, q, qa, dm, probe: tuple):
    """I_molecular (B, n_q) through the blocked kernel; q (n_q,) is the grid qa + dm flattened and trimmed."""
    n_q = q.shape[0]
    r = _distances(positions, plan.i, plan.j)
    chunk = _chunk_size(r.shape[1])
    if r.shape[0] <= chunk:
        y = _sinc_sums(r, qa, dm, plan.slices)
    else:
        batch = r.shape[0]
        padded = jnp.pad(r, ((0, -batch % chunk), (0, 0)), constant_values=1.0)
        y = jax.lax.map(lambda rc: _sinc_sums(rc, qa, dm, plan.slices), padded.reshape(-1, chunk, r.shape[1]))
        y = y.reshape(-1, *y.shape[2:])[:batch]
    y = y.reshape(*y.shape[:2], -1)[..., :n_q]  # (B, T, n_q)
    weights = _type_form_factors(plan, q, probe)
    inv_q = jnp.where(q > 0, 1.0 / jnp.where(q > 0, q, 1.0), 0.0)
    counts = jnp.asarray([hi - lo for lo, hi in plan.slices], q.dtype)
    at_zero = jnp.where(q == 0, counts @ weights, 0.0)  # sin(q r)/(q r) -> 1 at q = 0
    return 2.0 * (jnp.einsum("btq,tq->bq", y, weights * inv_q, precision=_HIGHEST) + at_zero)


def _molecular_direct(plan: _PairPlan, positions, q, probe: tuple):
    """Reference: the textbook double sum over pairs i < j, (B, n_q), plain autodiff."""
    f = _form_factors(plan.numbers, q, probe)
    r = _distances(positions, plan.i, plan.j)
    sinc = jnp.sinc(r[..., None] * q / jnp.pi)  # jnp.sinc(x) = sin(pi x)/(pi x)
    return 2.0 * jnp.einsum("bpq,pq->bq", sinc, f[plan.i] * f[plan.j], precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("plan", "kind", "method", "probe"))
def _intensity_flat(positions, q, qa, dm, *, plan: _PairPlan, kind: str, method: str, probe: tuple):
    batch = positions.shape[0]
    terms = jnp.zeros((batch, q.shape[0]), positions.dtype)
    if kind in ("atomic", "elastic", "total"):
        f = _form_factors(plan.numbers, q, probe)
        terms = terms + jnp.sum(f * f, axis=0)
    if kind in ("molecular", "elastic", "total") and plan.slices:
        if method == "direct":
            terms = terms + _molecular_direct(plan, positions, q, probe)
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
            the caller's jitted function) takes the direct path with a ``PerformanceWarning``.
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

    if isinstance(q, QGrid):
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
            _qgrid.warn_traced_q()
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
