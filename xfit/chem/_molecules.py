"""Molecules by name, SMILES or file, at a force-field minimum, with a stable atom order and their bonds.

Each returned ``ase.Atoms`` carries in ``info``: ``name``, ``smiles`` (canonical), ``mapped_smiles`` (explicit
hydrogens, atom-map number k + 1 on atom k: the bond orders and the atom order in one string, which survives an
extended-xyz round trip), ``forcefield`` and ``energy`` (eV). ``bonds(atoms)`` gives the bond list.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms

from xfit.chem._rdkit import mapped_smiles, rdkit_molecule

__all__ = ["BUILTIN", "bonds", "molecule"]

BUILTIN = {
    # SMILES written so that the named atoms have fixed indices: CHD's sp3 carbons (the bond that breaks on ring
    # opening, "C1-C6" of the shared trajectories) are atoms 0 and 5; DT's sulfurs are 3 and 4; NMM's methyl carbon
    # is 0 and its nitrogen 1.
    "NMM": ("CN1CCOCC1", "N-methylmorpholine"),
    "CHD": ("C1C=CC=CC1", "1,3-cyclohexadiene"),
    "DT": ("C1CCSSC1", "1,2-dithiane"),
}


def bonds(atoms: Atoms) -> np.ndarray:
    """Bonded atom pairs (n_bonds, 2), i < j: from the molecule's SMILES when known, else from covalent radii."""
    if not atoms.info.get("mapped_smiles"):
        from xfit.chem._structures import covalent_bonds

        return covalent_bonds(atoms)
    pairs = [sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in rdkit_molecule(atoms).GetBonds()]
    return np.array(sorted(map(tuple, pairs)), dtype=int).reshape(-1, 2)


def _embed(smiles: str, seed: int) -> Atoms:
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem

    with rdBase.BlockLogs():  # our error below names the problem; RDKit's parser would add five lines to stderr
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(
            f"{smiles!r} is not a built-in molecule ({', '.join(BUILTIN)}), an existing file, or valid SMILES"
        )
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r} in 3D")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    atoms = Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions())
    atoms.info["smiles"] = Chem.MolToSmiles(Chem.RemoveHs(mol))
    atoms.info["mapped_smiles"] = mapped_smiles(mol)
    return atoms


def optimize(atoms: Atoms, forcefield: str = "gfn2", *, fmax: float = 0.005, steps: int = 2000) -> Atoms:
    """A copy of ``atoms`` relaxed to a force-field minimum (ASE BFGS, max force ``fmax`` eV/A)."""
    from ase.optimize import BFGS

    from xfit.chem._forcefield import calculator

    work = atoms.copy()
    work.calc = calculator(work, forcefield)
    with open(os.devnull, "w") as log:
        converged = BFGS(work, logfile=log).run(fmax=fmax, steps=steps)
    if not converged:
        raise RuntimeError(f"{forcefield} optimisation of {atoms.get_chemical_formula()} did not converge")
    out = atoms.copy()
    out.positions = work.positions
    out.info.update(forcefield=forcefield, energy=float(work.get_potential_energy()))
    return out


def molecule(spec: str | os.PathLike, *, forcefield: str = "gfn2", optimized: bool = True, seed: int = 0) -> Atoms:
    """A molecule at a force-field minimum, from a built-in name, a SMILES string or a structure file.

    Args:
        spec: "NMM", "CHD" or "DT" (case-insensitive); any SMILES (RDKit ETKDG embedding, MMFF pre-optimisation);
            or a file that ase.io reads (its first frame; bonds perceived from the geometry).
        forcefield: "gfn2" (GFN2-xTB, default) or "mmff" for the final optimisation.
        optimized: relax to the force-field minimum (default); False keeps the embedded or read geometry.
        seed: seed of the 3D embedding (the same seed gives the same structure).

    Returns:
        ``ase.Atoms`` with ``info`` as described in the module docstring. Atom order: SMILES order, hydrogens after
        the heavy atoms; a file's own order.
    """
    text = str(spec)
    if text.upper() in BUILTIN:
        smiles, name = BUILTIN[text.upper()]
        atoms = _embed(smiles, seed)
        atoms.info["name"] = name
    elif Path(text).is_file():
        from xfit.chem._structures import read_structures

        atoms = read_structures(text)[0]
        atoms.info = {"name": Path(text).stem}
        mol = rdkit_molecule(atoms)
        from rdkit import Chem

        atoms.info["smiles"] = Chem.MolToSmiles(Chem.RemoveHs(mol))
        atoms.info["mapped_smiles"] = mapped_smiles(mol)
    else:
        atoms = _embed(text, seed)
        atoms.info["name"] = text
    return optimize(atoms, forcefield) if optimized else atoms
