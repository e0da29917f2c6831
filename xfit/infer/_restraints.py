"""Covalent-geometry restraints: the prior of the refinement fallback, for molecules without a learned prior.

The restraint term holds chosen interatomic distances d_r (covalent bonds and 1-3 distances of a reference
geometry) near their reference values d0_r with widths s_r in A, in chi^2 units,

    chi2_restraints(x) = sum_r ((d_r(x) - d0_r) / s_r)^2,

so that data and restraints weigh against each other through the data's sigma.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem._graph import MoleculeGraph
from xfit.chem._structures import BOND_SCALE

__all__ = ["Restraints", "covalent_restraints", "restraint_chi2"]


class Restraints(NamedTuple):
    """Distance restraints: pairs (R, 2) int, targets (R,) in A, sigmas (R,) in A."""

    pairs: np.ndarray
    targets: np.ndarray
    sigmas: np.ndarray

    @staticmethod
    def none() -> Restraints:
        return Restraints(np.zeros((0, 2), int), np.zeros(0), np.zeros(0))


def covalent_restraints(
    atoms: Atoms | MoleculeGraph,
    *,
    free_pairs=(),
    bond_sigma: float = 0.03,
    angle_sigma: float = 0.1,
    bond_scale: float = BOND_SCALE,
) -> Restraints:
    """Covalent-geometry restraints from a reference structure: bonds and 1-3 (angle) distances.

    Bonds are atom pairs closer than ``bond_scale`` x the sum of covalent radii (ASE's natural cutoffs). Pairs in
    ``free_pairs`` are not bonds, and no 1-3 distance is restrained through them, so such a bond may break (e.g.
    CHD's C1-C6, atoms 0 and 5, in ring opening).

    Args:
        atoms: reference ``ase.Atoms`` (its distances are the restraint targets), or its ``MoleculeGraph`` (whose
            reference geometry and bonds are used; ``bond_scale`` then does not apply).
        free_pairs: iterable of (i, j) atom-index pairs to leave free.
        bond_sigma: width of bond-length restraints (A).
        angle_sigma: width of 1-3 distance restraints (A), which hold bond angles.
        bond_scale: multiple of the covalent-radius sum that counts as a bond.
    """
    graph = atoms if isinstance(atoms, MoleculeGraph) else MoleculeGraph.from_atoms(atoms, bond_scale=bond_scale)
    free = {tuple(sorted((int(i), int(j)))) for i, j in free_pairs}
    for i, j in free:
        if not (0 <= i < len(graph) and 0 <= j < len(graph)) or i == j:
            raise ValueError(f"free pair ({i}, {j}) is not a pair of distinct atoms of this {len(graph)}-atom molecule")
    graph = graph.without(free)
    bonds = [tuple(b) for b in graph.bonds.tolist()]
    angles = [tuple(a) for a in graph.angles.tolist() if tuple(a) not in free]
    pairs = bonds + angles
    if not pairs:
        return Restraints.none()
    pairs = np.array(pairs, dtype=int)
    x = graph.positions
    d = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1)
    sigmas = np.array([bond_sigma] * len(bonds) + [angle_sigma] * len(angles))
    return Restraints(pairs, d, sigmas)


def restraint_chi2(x, restraints: Restraints):
    """sum_r ((d_r - d0_r)/s_r)^2 for structures x (..., n_atoms, 3)."""
    if len(restraints.targets) == 0:
        return jnp.zeros(x.shape[:-2], x.dtype)
    i, j = restraints.pairs[:, 0], restraints.pairs[:, 1]
    d = jnp.sqrt(jnp.sum((x[..., i, :] - x[..., j, :]) ** 2, axis=-1) + 1e-12)
    return jnp.sum(((d - restraints.targets) / restraints.sigmas) ** 2, axis=-1)
