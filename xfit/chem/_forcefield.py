"""Force fields for structures and pools: GFN2-xTB through tblite (default), RDKit MMFF94 (fast fallback).

Both are ASE calculators (energies in eV, forces in eV/A). MMFF needs the molecule's bond orders, which xfit keeps
in ``atoms.info["mapped_smiles"]`` (an atom-mapped SMILES in the atoms' own order, see ``xfit.chem._molecules``).
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import kcal, mol

__all__ = ["FORCEFIELDS", "MMFFCalculator", "calculator", "hessian"]

FORCEFIELDS = ("gfn2", "mmff")


def calculator(
    atoms: Atoms, forcefield: str = "gfn2", *, charge: int = 0, multiplicity: int | None = None
) -> Calculator:
    """An ASE calculator for ``atoms``: "gfn2" (GFN2-xTB, tblite) or "mmff" (MMFF94, RDKit).

    ``charge`` (elementary charges) and ``multiplicity`` (2S + 1; default: the lowest the electron count allows)
    choose another potential-energy surface than the neutral ground state, e.g. the triplet or the cation as
    surrogates of a photoexcited state (GFN2-xTB only).
    tblite's OpenMP threads are limited to one unless OMP_NUM_THREADS is already set: on small molecules more
    threads make each call 2-3x slower on this kind of hardware.

    Raises:
        ValueError: an unknown force field; a multiplicity the electron count cannot have; a charged or open-shell
        surface asked of MMFF94.
    """
    electrons = int(np.sum(atoms.numbers)) - int(charge)
    if multiplicity is not None and (multiplicity < 1 or (multiplicity - 1) % 2 != electrons % 2):
        raise ValueError(
            f"multiplicity {multiplicity} is impossible for {atoms.get_chemical_formula()} with charge {charge} "
            f"({electrons} electrons: {'even' if electrons % 2 == 0 else 'odd'} multiplicities only)"
        )
    if forcefield == "gfn2":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from tblite.ase import TBLite

        if charge == 0 and multiplicity in (None, 1):
            return TBLite(method="GFN2-xTB", verbosity=0)
        return TBLite(
            method="GFN2-xTB", verbosity=0, charge=int(charge), multiplicity=multiplicity or 1 + electrons % 2
        )
    if forcefield == "mmff":
        if charge != 0 or multiplicity not in (None, 1):
            raise ValueError("MMFF94 has only the neutral closed-shell surface; use forcefield='gfn2'")
        return MMFFCalculator(atoms)
    raise ValueError(f"unknown force field {forcefield!r}; choose one of {FORCEFIELDS}")


class MMFFCalculator(Calculator):
    """MMFF94 energies and forces from RDKit for one molecule (fixed atom order and bond orders)."""

    implemented_properties = ("energy", "forces")

    def __init__(self, atoms: Atoms, **kwargs):
        super().__init__(**kwargs)
        from rdkit.Chem import AllChem

        from xfit.chem._rdkit import rdkit_molecule

        self._mol = rdkit_molecule(atoms)
        props = AllChem.MMFFGetMoleculeProperties(self._mol)
        if props is None:
            raise ValueError(f"MMFF94 has no parameters for {atoms.get_chemical_formula()}; use forcefield='gfn2'")
        self._field = AllChem.MMFFGetMoleculeForceField(self._mol, props)
        self._numbers = atoms.numbers.copy()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if not np.array_equal(self.atoms.numbers, self._numbers):
            raise ValueError("MMFFCalculator was built for a different molecule")
        x = self.atoms.positions.ravel().tolist()
        to_ev = kcal / mol
        self.results["energy"] = self._field.CalcEnergy(x) * to_ev
        self.results["forces"] = -np.asarray(self._field.CalcGrad(x)).reshape(-1, 3) * to_ev


def hessian(atoms: Atoms, calc: Calculator, *, delta: float = 0.005) -> np.ndarray:
    """Cartesian Hessian (3n, 3n) in eV/A^2 by central differences of the forces (step ``delta`` A), symmetrised."""
    work = atoms.copy()
    work.calc = calc
    x0 = atoms.positions.copy()
    n = len(atoms)
    h = np.zeros((3 * n, 3 * n))
    for k in range(3 * n):
        for sign in (1, -1):
            x = x0.copy()
            x.flat[k] += sign * delta
            work.positions = x
            h[k] -= sign * work.get_forces().ravel() / (2 * delta)
    return 0.5 * (h + h.T)
