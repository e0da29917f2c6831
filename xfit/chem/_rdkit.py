"""RDKit views of a molecule: an ``ase.Atoms`` as an RDKit molecule in its own atom order, and back to SMILES.

Both the force fields (``xfit.chem._forcefield``, MMFF needs bond orders) and the molecule builder
(``xfit.chem._molecules``) use these; keeping them here is what keeps those two modules free of an import cycle.
"""

from __future__ import annotations

from ase import Atoms

__all__ = ["mapped_smiles", "rdkit_molecule"]


def mapped_smiles(mol) -> str:
    """SMILES with explicit hydrogens and atom-map number k + 1 on atom k: bond orders and atom order in one string."""
    from rdkit import Chem

    mol = Chem.Mol(mol)
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(atom.GetIdx() + 1)
    return Chem.MolToSmiles(mol, allHsExplicit=True)


def rdkit_molecule(atoms: Atoms):
    """An RDKit molecule (explicit H) with the atoms' order, bond orders and coordinates.

    From ``atoms.info["mapped_smiles"]`` when present, else bonds and bond orders perceived from the geometry
    (RDKit's DetermineBonds, neutral molecule).
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    smiles = atoms.info.get("mapped_smiles")
    if smiles:
        params = Chem.SmilesParserParams()
        params.removeHs = False
        parsed = Chem.MolFromSmiles(smiles, params)
        order = [0] * parsed.GetNumAtoms()
        for atom in parsed.GetAtoms():
            order[atom.GetAtomMapNum() - 1] = atom.GetIdx()
        mol = Chem.RenumberAtoms(parsed, order)
        for atom in mol.GetAtoms():
            atom.SetAtomMapNum(0)
    else:
        from rdkit.Chem import rdDetermineBonds

        block = f"{len(atoms)}\n\n" + "\n".join(
            f"{s} {x:.8f} {y:.8f} {z:.8f}"
            for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
        )
        mol = Chem.MolFromXYZBlock(block)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=0)
        except ValueError as err:
            raise ValueError(f"could not perceive the bonds of {atoms.get_chemical_formula()}: {err}") from None
    if mol.GetNumAtoms() != len(atoms) or [a.GetAtomicNum() for a in mol.GetAtoms()] != list(atoms.numbers):
        raise ValueError("the molecule's SMILES does not match its atoms")
    conformer = Chem.Conformer(len(atoms))
    for k, (x, y, z) in enumerate(atoms.positions):
        conformer.SetAtomPosition(k, Point3D(float(x), float(y), float(z)))
    mol.RemoveAllConformers()
    mol.AddConformer(conformer, assignId=True)
    return mol
