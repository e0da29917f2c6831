"""The molecular graph: what a structure is, apart from where its atoms are, built once per molecule.

Restraints, priors, starting structures, RMSD and plots all need the same few facts about a molecule: its
elements, its covalent bonds, how many bonds apart any two atoms are, which atoms a scattering pattern cannot tell
apart, and under which name (graph key) a learned prior knows it. :class:`MoleculeGraph` holds them as one
immutable value made from an ``ase.Atoms``; nothing downstream perceives bonds again.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import numpy as np
from ase import Atoms

from xfit.chem._structures import BOND_SCALE, as_arrays, covalent_bonds, graph_hops

__all__ = ["MAX_HOPS", "MoleculeGraph"]

MAX_HOPS = 4
"""Bond-graph distances are capped here: 0, 1, 2, 3 and "4 or more"."""


@dataclasses.dataclass(frozen=True, eq=False)
class MoleculeGraph:
    """Elements and covalent bonds of one molecule, with the facts derived from them.

    Attributes:
        numbers: atomic numbers (n_atoms,).
        bonds: bonded pairs (n_bonds, 2), i < j, sorted (covalent radii of the reference geometry, or given).
        hops: bond-graph distances (n_atoms, n_atoms), capped at ``MAX_HOPS``.
        positions: the reference geometry (n_atoms, 3) in A the bonds were perceived from.

    Derived on first use and cached: ``key`` (canonical SMILES of the bond graph, the identity under which a prior
    knows a molecule), ``automorphisms`` (atom permutations that map the graph onto itself), ``equivalent_groups``
    (terminal atoms a pattern cannot tell apart), ``angles`` (1-3 pairs).
    """

    numbers: np.ndarray
    bonds: np.ndarray
    hops: np.ndarray
    positions: np.ndarray

    @classmethod
    def from_atoms(cls, atoms: Atoms, *, bond_scale: float = BOND_SCALE) -> MoleculeGraph:
        """The graph of ``atoms``: bonds between atoms closer than ``bond_scale`` x the sum of covalent radii.

        Raises:
            TypeError: not an ``ase.Atoms``. ValueError: unknown element, NaN positions.
        """
        if not isinstance(atoms, Atoms):
            raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
        numbers, positions, _ = as_arrays(atoms)
        bonds = covalent_bonds(atoms, scale=bond_scale)
        return cls.from_bonds(numbers, bonds, positions[0])

    @classmethod
    def from_bonds(cls, numbers, bonds, positions) -> MoleculeGraph:
        """A graph from explicit bonds (n_bonds, 2) and a reference geometry (n_atoms, 3) in A."""
        numbers = np.asarray(numbers, np.int64)
        pairs = np.sort(np.asarray(bonds, np.int64).reshape(-1, 2), axis=1)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(numbers) or np.any(pairs[:, 0] == pairs[:, 1])):
            raise ValueError(f"bonds must pair distinct atoms of this {len(numbers)}-atom molecule")
        pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
        hops = graph_hops(len(numbers), pairs, MAX_HOPS)
        for a in (numbers, pairs, hops):
            a.setflags(write=False)
        positions = np.array(positions, np.float64)
        positions.setflags(write=False)
        return cls(numbers, pairs, hops, positions)

    def __len__(self) -> int:
        return len(self.numbers)

    def __repr__(self) -> str:
        return f"MoleculeGraph({self.formula}, {len(self)} atoms, {len(self.bonds)} bonds)"

    @property
    def formula(self) -> str:
        return Atoms(numbers=self.numbers).get_chemical_formula()

    @property
    def heavy(self) -> np.ndarray:
        """Mask (n_atoms,) of non-hydrogen atoms (all atoms for a molecule of hydrogen alone)."""
        heavy = self.numbers > 1
        return heavy if heavy.any() else np.ones(len(self), bool)

    @property
    def heavy_bonds(self) -> np.ndarray:
        """Bonds between non-hydrogen atoms (n, 2)."""
        keep = (self.numbers[self.bonds[:, 0]] > 1) & (self.numbers[self.bonds[:, 1]] > 1)
        return self.bonds[keep]

    def atoms(self, positions: np.ndarray | None = None) -> Atoms:
        """An ``ase.Atoms`` of this molecule at ``positions`` (default: the reference geometry)."""
        return Atoms(numbers=self.numbers, positions=self.positions if positions is None else positions)

    def neighbours(self) -> list[set[int]]:
        out: list[set[int]] = [set() for _ in range(len(self))]
        for a, b in self.bonds:
            out[a].add(int(b))
            out[b].add(int(a))
        return out

    def without(self, pairs: Iterable[tuple[int, int]]) -> MoleculeGraph:
        """The graph with these pairs not bonded (bonds allowed to break), e.g. CHD's C1-C6 = (0, 5)."""
        drop = {tuple(sorted((int(i), int(j)))) for i, j in pairs}
        for i, j in drop:
            if not (0 <= i < len(self) and 0 <= j < len(self)) or i == j:
                raise ValueError(f"pair ({i}, {j}) is not a pair of distinct atoms of this {len(self)}-atom molecule")
        kept = [b for b in map(tuple, self.bonds.tolist()) if b not in drop]
        return MoleculeGraph.from_bonds(self.numbers, np.array(kept, np.int64).reshape(-1, 2), self.positions)

    @functools.cached_property
    def angles(self) -> np.ndarray:
        """1-3 pairs (n, 2), i < j: atoms bonded to a common atom and not to each other."""
        bonded = set(map(tuple, self.bonds.tolist()))
        pairs = set()
        for nb in self.neighbours():
            for i in nb:
                for j in nb:
                    if i < j and (i, j) not in bonded:
                        pairs.add((i, j))
        return np.array(sorted(pairs), np.int64).reshape(-1, 2)

    @functools.cached_property
    def equivalent_groups(self) -> list[list[int]]:
        """Groups of terminal atoms of one element bonded to the same neighbour (the three hydrogens of a methyl
        group, say): a pattern cannot tell them apart by label."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, nb in enumerate(self.neighbours()):
            if len(nb) == 1:
                groups.setdefault((next(iter(nb)), int(self.numbers[k])), []).append(k)
        return [sorted(g) for g in groups.values() if len(g) > 1]

    @functools.cached_property
    def skeleton_automorphisms(self) -> np.ndarray:
        """The automorphisms up to relabelling within ``equivalent_groups``: permutations (n_perm, n_atoms), the
        identity first, one for each distinct map of the other atoms (the skeleton) onto itself, each carrying the
        terminal atoms of a group along with their neighbour (in index order). CHD, NMM and DT have two each: the
        ring read the other way round. Unlike ``automorphisms`` this stays small for molecules of many methyl
        groups, so that :func:`xfit.rmsd` can try every one and settle each group's labels by assignment."""
        return _skeleton_automorphisms(self)

    def _rdkit(self):
        """An RDKit molecule of elements and single bonds only: the bond graph, whatever the bond orders."""
        from rdkit import Chem

        mol = Chem.RWMol()
        for z in self.numbers:
            atom = Chem.Atom(int(z))
            atom.SetNoImplicit(True)
            mol.AddAtom(atom)
        for a, b in self.bonds:
            mol.AddBond(int(a), int(b), Chem.BondType.SINGLE)
        mol = mol.GetMol()
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
        return mol

    @functools.cached_property
    def key(self) -> str:
        """Canonical SMILES of the bond graph (elements and connectivity, no bond orders): the same for any atom
        order or geometry of the molecule."""
        from rdkit import Chem

        return Chem.MolToSmiles(self._rdkit())

    def automorphisms(self, limit: int = 256) -> np.ndarray:
        """Permutations (n_perm, n_atoms) that map the bond graph onto itself, the identity first; at most
        ``limit`` (RDKit's enumeration order), which is exact for NMM (192), CHD (8) and DT (32)."""
        return _automorphisms(self, limit)


@functools.lru_cache(maxsize=64)
def _automorphisms(graph: MoleculeGraph, limit: int) -> np.ndarray:
    mol = graph._rdkit()
    matches = mol.GetSubstructMatches(mol, uniquify=False, useChirality=False, maxMatches=limit)
    identity = tuple(range(len(graph)))
    perms = [identity] + [m for m in matches if m != identity]
    out = np.asarray(perms[:limit], np.int32)
    out.setflags(write=False)
    return out


SKELETON_LIMIT = 1024
"""At most this many skeleton automorphisms are enumerated (RDKit's order)."""


def _skeleton_automorphisms(graph: MoleculeGraph) -> np.ndarray:
    from rdkit import Chem

    grouped = {k for group in graph.equivalent_groups for k in group}
    neighbours = graph.neighbours()
    core = [k for k in range(len(graph)) if k not in grouped]
    # Each skeleton atom labelled by the groups it carries (elements and sizes), through the isotope field, which
    # RDKit's substructure match compares: a CH2 may then map only onto a CH2, never onto a CH.
    carried: dict[int, list[list[int]]] = {k: [] for k in core}
    for group in graph.equivalent_groups:
        carried[next(iter(neighbours[group[0]]))].append(group)
    signature = {k: tuple(sorted((int(graph.numbers[g[0]]), len(g)) for g in carried[k])) for k in core}
    label = {sig: i + 1 for i, sig in enumerate(sorted(set(signature.values())))}
    index = {k: i for i, k in enumerate(core)}
    mol = Chem.RWMol()
    for k in core:
        atom = Chem.Atom(int(graph.numbers[k]))
        atom.SetNoImplicit(True)
        atom.SetIsotope(label[signature[k]])
        mol.AddAtom(atom)
    for a, b in graph.bonds:
        if int(a) in index and int(b) in index:
            mol.AddBond(index[int(a)], index[int(b)], Chem.BondType.SINGLE)
    mol = mol.GetMol()
    mol.UpdatePropertyCache(strict=False)
    matches = mol.GetSubstructMatches(mol, uniquify=False, useChirality=False, maxMatches=SKELETON_LIMIT)
    identity = tuple(range(len(core)))
    perms = []
    for match in [identity] + [m for m in matches if m != identity]:
        perm = np.arange(len(graph))
        for i, k in enumerate(core):
            image = core[match[i]]
            perm[k] = image
            by_element = {int(graph.numbers[g[0]]): g for g in carried[image]}
            for group in carried[k]:  # onto the image's group of the same element (and so the same size)
                perm[group] = by_element[int(graph.numbers[group[0]])]
        perms.append(perm)
    out = np.asarray(perms, np.int32)
    out.setflags(write=False)
    return out
