"""Gradient refinement of structures against scattering patterns: pure JAX objective, optax optimisation.

The objective for one pattern y (n_q,) with standard errors sigma and a candidate structure x (n_atoms, 3) is

    chi2(x) = sum_k ((y_k - m_k(x; theta*(x))) / sigma_k)^2  +  sum_r ((d_r(x) - d0_r) / s_r)^2

where the model m depends on the pattern's kind, and its nuisance parameters theta are solved in closed form
(weighted linear least squares) at every x, so the optimiser only sees the structure (variable projection):

- intensity kinds (total, elastic, ...): m = a I(x) [+ b], overall scale a (and flat background b when asked);
- "percent_difference": m = 100 f (I(x) - I_ref)/I_ref with the excitation fraction f fixed or solved (and then
  held in [0, 1]);
- "difference": m = c (I(x) - I_ref), c = fraction x scale, fixed or solved.

The restraint term holds chosen interatomic distances d_r (covalent bonds and 1-3 distances of the reference) near
their reference values d0_r with widths s_r in A; in chi^2 units the data and restraints weigh against each other
through the data's sigma. A time series can be coupled by a smoothness term
lambda sum_t sum_{i<j} (d_ij(x_t) - d_ij(x_{t+1}))^2 (distances, so rigid motions cost nothing).

Everything here is a pure function of arrays; ``xfit.infer._retrieve`` builds the arrays and the user-facing objects.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xfit.physics import _iam

__all__ = ["Data", "Restraints", "covalent_restraints", "refine"]

INTENSITY_KINDS = ("total", "elastic", "atomic", "molecular", "inelastic")


class Restraints(NamedTuple):
    """Distance restraints: pairs (R, 2) int, targets (R,) in A, sigmas (R,) in A."""

    pairs: np.ndarray
    targets: np.ndarray
    sigmas: np.ndarray

    @staticmethod
    def none() -> Restraints:
        return Restraints(np.zeros((0, 2), int), np.zeros(0), np.zeros(0))


def covalent_restraints(
    atoms,
    *,
    free_pairs=(),
    bond_sigma: float = 0.03,
    angle_sigma: float = 0.1,
    bond_scale: float = 1.15,
) -> Restraints:
    """Covalent-geometry restraints from a reference structure: bonds and 1-3 (angle) distances.

    Bonds are atom pairs closer than ``bond_scale`` x the sum of covalent radii (ASE's natural cutoffs). Pairs in
    ``free_pairs`` are not bonds, and no 1-3 distance is restrained through them, so such a bond may break (e.g.
    CHD's C1-C6, atoms 0 and 5, in ring opening).

    Args:
        atoms: reference ``ase.Atoms``; its distances are the restraint targets.
        free_pairs: iterable of (i, j) atom-index pairs to leave free.
        bond_sigma: width of bond-length restraints (A).
        angle_sigma: width of 1-3 distance restraints (A), which hold bond angles.
        bond_scale: multiple of the covalent-radius sum that counts as a bond.
    """
    from xfit.chem._structures import covalent_bonds

    n = len(atoms)
    free = {tuple(sorted((int(i), int(j)))) for i, j in free_pairs}
    for i, j in free:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"free pair ({i}, {j}) is not a pair of distinct atoms of this {n}-atom molecule")
    bonds = {(int(i), int(j)) for i, j in covalent_bonds(atoms, scale=bond_scale)} - free
    neighbours = [set() for _ in range(n)]
    for i, j in bonds:
        neighbours[i].add(j)
        neighbours[j].add(i)
    angles = set()
    for centre in range(n):
        for i in neighbours[centre]:
            for j in neighbours[centre]:
                if i < j and (i, j) not in bonds:
                    angles.add((i, j))
    angles -= free
    pairs = sorted(bonds) + sorted(angles)
    if not pairs:
        return Restraints.none()
    pairs = np.array(pairs, dtype=int)
    d = np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)
    sigmas = np.array([bond_sigma] * len(bonds) + [angle_sigma] * len(angles))
    return Restraints(pairs, d, sigmas)


@dataclasses.dataclass(frozen=True)
class Data:
    """Everything static about the fit of a batch of patterns on one q grid.

    Attributes:
        numbers: atomic numbers (n_atoms,).
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, (n_q,).
        kind: the patterns' kind (one of Pattern's kinds).
        model_kind: the intensity the model computes ("total", "elastic", ...).
        fraction: fixed excitation fraction (difference kinds), or None to solve it.
        background: fit a flat background (intensity kinds).
    """

    numbers: tuple[int, ...]
    q: tuple[float, ...]
    kind: str
    model_kind: str
    fraction: float | None
    background: bool


def _weighted_lstsq(columns, y, w):
    """Closed-form weighted least squares: coefficients c (..., k) minimising sum w (y - sum_k c_k col_k)^2.

    columns (..., k, n_q); y, w (..., n_q). Solved through the k x k normal equations (k <= 2).
    """
    a = jnp.einsum("...kq,...lq,...q->...kl", columns, columns, w)
    b = jnp.einsum("...kq,...q,...q->...k", columns, y, w)
    a = a + 1e-30 * jnp.eye(a.shape[-1])
    return jnp.linalg.solve(a, b[..., None])[..., 0]


def model_and_parameters(data: Data, x, y, w, i_ref):
    """Model pattern and nuisance parameters for structures x (..., n_atoms, 3) against y, w = 1/sigma^2 (n_q,).

    Returns:
        (model (..., n_q), parameters dict of (...,) arrays).
    """
    q = np.asarray(data.q)
    intensity = _iam.intensity(np.asarray(data.numbers), x, q, kind=data.model_kind)
    if data.kind in INTENSITY_KINDS:
        columns = [intensity] + ([jnp.ones_like(intensity)] if data.background else [])
        coef = _weighted_lstsq(jnp.stack(columns, axis=-2), y, w)
        model = jnp.einsum("...k,...kq->...q", coef, jnp.stack(columns, axis=-2))
        params = {"scale": coef[..., 0]}
        if data.background:
            params["background"] = coef[..., 1]
        return model, params
    shape = 100.0 * (intensity - i_ref) / i_ref if data.kind == "percent_difference" else intensity - i_ref
    if data.fraction is None:
        f = jnp.sum(w * y * shape, axis=-1) / (jnp.sum(w * shape * shape, axis=-1) + 1e-30)
        if data.kind == "percent_difference":
            # A fraction of molecules lies in [0, 1]. Unbounded, it trades off against the size of the structural
            # change (a smaller change with f > 1 fits as well): measured on CHD, f = 2.6 and 0.14 A carbon RMSD
            # unbounded, against 0.05 A with f known.
            f = jnp.clip(f, 1e-6, 1.0)
    else:
        f = jnp.full(shape.shape[:-1], data.fraction, shape.dtype)
    name = "fraction" if data.kind == "percent_difference" else "fraction_x_scale"
    return f[..., None] * shape, {name: f}


def restraint_chi2(x, restraints: Restraints):
    """sum_r ((d_r - d0_r)/s_r)^2 for structures x (..., n_atoms, 3)."""
    if len(restraints.targets) == 0:
        return jnp.zeros(x.shape[:-2], x.dtype)
    i, j = restraints.pairs[:, 0], restraints.pairs[:, 1]
    d = jnp.sqrt(jnp.sum((x[..., i, :] - x[..., j, :]) ** 2, axis=-1) + 1e-12)
    return jnp.sum(((d - restraints.targets) / restraints.sigmas) ** 2, axis=-1)


def objective(data: Data, restraints: Restraints, x, y, w, i_ref):
    """Per-structure (chi2_data, chi2_restraints), each (...,), for x (..., n_atoms, 3)."""
    model, _ = model_and_parameters(data, x, y, w, i_ref)
    return jnp.sum(w * (y - model) ** 2, axis=-1), restraint_chi2(x, restraints)


def _pair_distances(x):
    n = x.shape[-2]
    i, j = np.triu_indices(n, k=1)
    return jnp.sqrt(jnp.sum((x[..., i, :] - x[..., j, :]) ** 2, axis=-1) + 1e-12)


def restraint_weight(step, steps: int, final: float):
    """Restraint weight at ``step``: 1 for the first half of the run (the restraints guide the search into the right
    basin), then a cosine decay to ``final`` (the data set the final geometry: restraints to a ground-state
    geometry bias structures far from it)."""
    progress = jnp.clip((step - steps / 2) / (steps / 2), 0.0, 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


@functools.partial(jax.jit, static_argnames=("data", "steps", "learning_rate"))
def refine(
    data: Data,
    restraints: Restraints,
    x0,
    y,
    w,
    i_ref,
    smoothness,
    final_restraint_weight,
    *,
    steps: int,
    learning_rate: float,
):
    """Refine many starts against many patterns at once with Adam and a cosine-decaying step.

    Args:
        data: static description of the fit (see :class:`Data`).
        restraints: distance restraints (arrays).
        x0: starts (T, S, n_atoms, 3) in A: S starts for each of T patterns.
        y: patterns (T, n_q); w: weights 1/sigma^2 (T, n_q); i_ref: reference intensity (T, n_q) (difference kinds).
        smoothness: weight (1/A^2, chi^2 units) of the coupling between neighbouring patterns; 0 decouples them.
        final_restraint_weight: restraint weight at the end of the run (see :func:`restraint_weight`).
        steps: optimisation steps. learning_rate: initial step in A (Adam normalises the gradient).

    Returns:
        (x (T, S, n_atoms, 3), chi2_data (T, S), chi2_restraints (T, S)); chi2_restraints at unit weight.
    """

    def loss(x, weight):
        chi2_data, chi2_restraints = objective(data, restraints, x, y[:, None], w[:, None], i_ref[:, None])
        total = jnp.sum(chi2_data + weight * chi2_restraints)
        if x.shape[0] > 1:
            d = _pair_distances(x)
            total = total + smoothness * jnp.sum((d[1:] - d[:-1]) ** 2)
        return total

    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3)
    optimizer = optax.adam(schedule)

    def step(carry, index):
        x, state = carry
        grad = jax.grad(loss)(x, restraint_weight(index, steps, final_restraint_weight))
        updates, state = optimizer.update(grad, state, x)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.lax.scan(step, (x0, optimizer.init(x0)), jnp.arange(steps))
    chi2_data, chi2_restraints = objective(data, restraints, x, y[:, None], w[:, None], i_ref[:, None])
    return x, chi2_data, chi2_restraints
