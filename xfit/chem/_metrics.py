"""Structure comparison: RMSD after optimal superposition, with reflection and equivalent-atom permutations.

An isotropic scattering pattern is the same for a structure and its mirror image and cannot tell chemically
equivalent atoms apart (the hydrogens of one methyl group, say), so accuracy is judged after the best rotation,
translation, optional reflection and the best relabelling of equivalent atoms.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms

__all__ = ["dihedral", "equivalent_groups", "kabsch", "puckering_amplitude", "rmsd"]


def kabsch(a: np.ndarray, b: np.ndarray, *, allow_reflection: bool) -> tuple[np.ndarray, float]:
    """Best orthogonal map of centred ``b`` onto centred ``a`` (Kabsch, Acta Cryst. A32, 922 (1976)).

    Args:
        a, b: (n, 3) centred coordinates in A.
        allow_reflection: allow improper rotations (det = -1).

    Returns:
        (R (3, 3) such that b @ R approximates a, RMSD in A).
    """
    h = b.T @ a
    u, _, vt = np.linalg.svd(h)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    rotation = u @ vt
    diff = b @ rotation - a
    return rotation, float(np.sqrt(np.mean(np.sum(diff * diff, axis=1))))


def equivalent_groups(atoms: Atoms) -> list[list[int]]:
    """Groups of atoms that a pattern cannot tell apart by label: terminal atoms (H, halogens) of one element bonded
    to the same neighbour, e.g. the three hydrogens of a methyl group (``MoleculeGraph.equivalent_groups``)."""
    from xfit.chem._graph import MoleculeGraph

    return MoleculeGraph.from_atoms(atoms).equivalent_groups


def _best_permutation(a, b, groups) -> np.ndarray:
    """Relabel b within each group to best match a (brute force: groups are small)."""
    order = np.arange(len(a))
    for group in groups:
        best, best_cost = None, np.inf
        for perm in itertools.permutations(group):
            cost = np.sum((b[list(perm)] - a[group]) ** 2)
            if cost < best_cost:
                best, best_cost = perm, cost
        order[group] = best
    return order


def rmsd(
    a: Atoms,
    b: Atoms,
    *,
    heavy_only: bool = False,
    allow_reflection: bool = True,
    permute_equivalent: bool = True,
) -> float:
    """Root-mean-square deviation (A) between two structures of one molecule after optimal superposition.

    Args:
        a, b: structures with the same atoms in the same order.
        heavy_only: compare only non-hydrogen atoms (the superposition is fitted on them too).
        allow_reflection: allow mirror images (the default: isotropic patterns cannot tell them apart).
        permute_equivalent: allow relabelling equivalent terminal atoms (see :func:`equivalent_groups`), found by
            alternating superposition and assignment until it no longer improves.

    Raises:
        ValueError: different atoms, or nothing to compare.
    """
    if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
        raise ValueError(
            f"structures differ: {a.get_chemical_formula()} ({len(a)} atoms) vs "
            f"{b.get_chemical_formula()} ({len(b)} atoms), or their atoms are in a different order"
        )
    mask = a.numbers > 1 if heavy_only else np.ones(len(a), bool)
    if not mask.any():
        raise ValueError("no atoms to compare (heavy_only=True on a molecule with only hydrogen)")
    pa = a.positions - a.positions[mask].mean(axis=0)
    pb = b.positions - b.positions[mask].mean(axis=0)
    groups = equivalent_groups(a) if permute_equivalent else []
    groups = [g for g in groups if mask[g].all()]
    best = np.inf
    for mirror in (False, True) if allow_reflection else (False,):
        qb = pb * np.array([1.0, 1.0, -1.0]) if mirror else pb
        order = np.arange(len(a))
        previous = np.inf
        for _ in range(10):
            rotation, value = kabsch(pa[mask], qb[order][mask], allow_reflection=False)
            if not groups or value >= previous - 1e-12:
                break
            previous = value
            order = _best_permutation(pa, qb @ rotation, groups)
        best = min(best, value, previous)
    return best


def dihedral(positions: np.ndarray, i: int, j: int, k: int, m: int) -> float | np.ndarray:
    """Dihedral angle i-j-k-m in degrees, in (-180, 180] (IUPAC sign convention).

    Args:
        positions: (n, 3), or (..., n, 3) for a batch of structures.

    Returns:
        A float for one structure, an array (...) for a batch.
    """
    x = np.asarray(positions)
    b0, b1, b2 = x[..., i, :] - x[..., j, :], x[..., k, :] - x[..., j, :], x[..., m, :] - x[..., k, :]
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1, -1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, -1, keepdims=True) * b1
    angle = np.degrees(np.arctan2(np.sum(np.cross(b1, v) * w, -1), np.sum(v * w, -1)))
    return float(angle) if x.ndim == 2 else angle


def puckering_amplitude(positions: np.ndarray, ring: list[int]) -> float:
    """Cremer-Pople total puckering amplitude Q (A) of a ring (J. Am. Chem. Soc. 97, 1354 (1975), eqs. 2-4, 12).

    Args:
        positions: (n_atoms, 3) in A. ring: atom indices in ring order.
    """
    r = positions[ring] - positions[ring].mean(axis=0)
    n = len(ring)
    phase = 2 * np.pi * np.arange(n) / n
    r1 = np.sum(r * np.sin(phase)[:, None], axis=0)
    r2 = np.sum(r * np.cos(phase)[:, None], axis=0)
    normal = np.cross(r1, r2)
    z = r @ (normal / np.linalg.norm(normal))
    return float(np.sqrt(np.sum(z * z)))
