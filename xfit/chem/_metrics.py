"""Structure comparison: RMSD after optimal superposition, with reflection and the molecule's graph symmetry.

An isotropic scattering pattern is the same for a structure and its mirror image, and the same for any relabelling
of its atoms that maps the bond graph onto itself: the hydrogens of one methyl group, and CHD's ring read the other
way round (C1 <-> C6, C2 <-> C5, C3 <-> C4). So accuracy is judged after the best rotation, translation, optional
reflection and the best such relabelling: the symmetry-corrected RMSD of docking and conformer benchmarks (as
RDKit's ``GetBestRMS`` and spyrmsd compute it), with reflection allowed as well.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms

__all__ = ["dihedral", "equivalent_groups", "kabsch", "puckering_amplitude", "relabelled", "rmsd"]


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
        permute_equivalent: allow relabelling ``b``'s atoms by the molecule's graph automorphisms: each of its
            skeleton automorphisms (``MoleculeGraph.skeleton_automorphisms``: CHD's ring reversal, say) is tried,
            and within it equivalent terminal atoms (see :func:`equivalent_groups`) by alternating superposition
            and assignment until it no longer improves. ``False`` compares the atoms as labelled.

    Raises:
        ValueError: different atoms, or nothing to compare.
    """
    return _best_superposition(a, b, heavy_only, allow_reflection, permute_equivalent)[0]


def relabelled(b: Atoms, like: Atoms, *, heavy_only: bool = False, allow_reflection: bool = True) -> Atoms:
    """``b`` under the relabelling by the molecule's graph automorphisms that brings it closest to ``like`` (the one
    :func:`rmsd` finds), positions unchanged, so that per-atom quantities of the two (a distance i-j, a torsion)
    refer to the same atoms: e.g. a true structure relabelled like a retrieved one, whose labels the pattern did not
    fix (CHD's ring read either way scatters alike). Raises as :func:`rmsd`."""
    order = _best_superposition(like, b, heavy_only, allow_reflection, True)[1]
    return b[order.tolist()]


def _best_superposition(a: Atoms, b: Atoms, heavy_only: bool, allow_reflection: bool, permute_equivalent: bool):
    """(RMSD in A, relabelling order (n,) of b) of :func:`rmsd`."""
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
    if permute_equivalent:
        from xfit.chem._graph import MoleculeGraph

        graph = MoleculeGraph.from_atoms(a)
        groups = [g for g in graph.equivalent_groups if mask[g].all()]
        skeleton = graph.skeleton_automorphisms
    else:
        groups, skeleton = [], np.arange(len(a))[None]
    best, best_order = np.inf, np.arange(len(a))
    for relabel in skeleton:
        for mirror in (False, True) if allow_reflection else (False,):
            qb = pb[relabel] * np.array([1.0, 1.0, -1.0]) if mirror else pb[relabel]
            order = np.arange(len(a))
            for _ in range(10):  # alternate superposition and assignment within the groups while it improves
                rotation, value = kabsch(pa[mask], qb[order][mask], allow_reflection=False)
                if value < best - 1e-12:
                    best, best_order = value, relabel[order]
                if not groups:
                    break
                new = _best_permutation(pa, qb @ rotation, groups)
                if np.array_equal(new, order):
                    break
                order = new
    return best, best_order


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
