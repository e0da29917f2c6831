"""Structures at the user-facing edge: ``ase.Atoms`` in and out, validated into (numbers, positions) arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from xfit.physics import _elements

__all__ = ["as_arrays", "covalent_bonds", "graph_hops", "read_structures"]


def as_arrays(atoms: Atoms | Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Atomic numbers and positions of one structure or of a list of structures of the same molecule.

    Returns:
        numbers (n_atoms,), positions (n_structures, n_atoms, 3) in A (float64), and whether a single
        ``ase.Atoms`` was given.

    Raises:
        TypeError: not an ase.Atoms or a sequence of them. ValueError: empty, unknown element, NaN positions,
        structures whose element lists differ.
    """
    single = isinstance(atoms, Atoms)
    frames = [atoms] if single else list(atoms)
    if not frames:
        raise ValueError("no structures given")
    for k, frame in enumerate(frames):
        if not isinstance(frame, Atoms):
            raise TypeError(f"structure {k} is a {type(frame).__name__}, not an ase.Atoms")
    numbers = _elements.as_numbers(frames[0].numbers)
    for k, frame in enumerate(frames[1:], start=1):
        if not np.array_equal(frame.numbers, numbers):
            raise ValueError(
                f"structure {k} ({frame.get_chemical_formula()}, {len(frame)} atoms) does not have the same atoms "
                f"in the same order as structure 0 ({frames[0].get_chemical_formula()}, {len(numbers)} atoms)"
            )
    positions = np.stack([np.asarray(frame.positions, dtype=np.float64) for frame in frames])
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or infinite values")
    return numbers, positions, single


def read_structures(path: str | os.PathLike) -> list[Atoms]:
    """All frames of a structure file that ase.io reads (xyz, extxyz, pdb, cif, ...)."""
    from ase.io import read

    if not os.path.exists(path):
        raise FileNotFoundError(f"structure file not found: {path}")
    frames = read(path, index=":")
    frames = frames if isinstance(frames, list) else [frames]
    if not frames or len(frames[0]) == 0:
        raise ValueError(f"{path}: no atoms found")
    return frames


BOND_SCALE = 1.15
"""Two atoms are bonded when closer than this multiple of the sum of their covalent radii."""


def covalent_bonds(atoms: Atoms, *, scale: float = BOND_SCALE, heavy_only: bool = False) -> np.ndarray:
    """Bonded atom pairs (n_bonds, 2), i < j, sorted: pairs closer than ``scale`` x the sum of their covalent radii
    (ASE's natural cutoffs); with ``heavy_only`` just the bonds between non-hydrogen atoms."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=scale))
    keep = i < j
    if heavy_only:
        keep &= (atoms.numbers[i] > 1) & (atoms.numbers[j] > 1)
    pairs = np.stack([i[keep], j[keep]], axis=1).astype(int)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 2)


def rigid_body_modes(positions: np.ndarray, masses: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal infinitesimal translations and rotations of a structure, as rows (k <= 6, 3n).

    Args:
        positions: (n, 3) in A.
        masses: (n,) in amu for mass-weighted coordinates (normal modes); None for plain Cartesians.
    """
    masses = np.ones(len(positions)) if masses is None else np.asarray(masses, float)
    sqrt_m = np.sqrt(masses)
    centred = positions - (masses[:, None] * positions).sum(0) / masses.sum()
    vectors = []
    for axis in np.eye(3):
        vectors.append((sqrt_m[:, None] * axis).ravel())
        vectors.append((sqrt_m[:, None] * np.cross(axis, centred)).ravel())
    q, r = np.linalg.qr(np.array(vectors).T)
    keep = np.abs(np.diag(r)) > 1e-6 * np.abs(np.diag(r)).max()  # a linear molecule has 5 modes
    return q[:, keep].T


def graph_hops(n_atoms: int, bonds, cap: int = 4) -> np.ndarray:
    """Bond-graph distances (n_atoms, n_atoms) for bonds (n_bonds, 2), capped at ``cap`` (= cap or farther)."""
    bonds = np.asarray(bonds, int).reshape(-1, 2)
    adjacency = np.zeros((n_atoms, n_atoms), bool)
    adjacency[bonds[:, 0], bonds[:, 1]] = adjacency[bonds[:, 1], bonds[:, 0]] = True
    hops = np.full((n_atoms, n_atoms), cap)
    reach = np.eye(n_atoms, dtype=bool)
    np.fill_diagonal(hops, 0)
    for step in range(1, cap):
        reach = reach | (reach.astype(int) @ adjacency.astype(int) > 0)
        hops[(hops == cap) & reach] = step
    return hops
