"""Structure samplers: Wigner (harmonic quantum), Langevin molecular dynamics, Metropolis Monte Carlo, restrained
sweeps along an internal coordinate, and dynamics after a vertical excitation (Wigner initial conditions run on
another potential-energy surface). Each is reproducible from its seed.

Units are ASE's: A, eV, amu, and ASE's time unit (A sqrt(amu/eV)); temperatures in K.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

from xfit.chem._metrics import dihedral
from xfit.chem._structures import covalent_bonds, rigid_body_modes

__all__ = [
    "Coordinate",
    "NormalModes",
    "excited_dynamics",
    "langevin",
    "metropolis",
    "normal_modes",
    "sweep",
    "wigner",
    "wigner_phase_space",
]

HBAR = units._hbar * units.J * units.s  # eV x (ASE time)


@dataclasses.dataclass(frozen=True)
class NormalModes:
    """Vibrational normal modes of a molecule at a minimum, rigid-body modes removed.

    Attributes:
        positions: equilibrium geometry (n, 3), A. masses: (n,), amu.
        omega: angular frequencies (3n - 6,) in 1/(ASE time), ascending.
        modes: mass-weighted orthonormal eigenvectors (3n - 6, 3n).
    """

    positions: np.ndarray
    masses: np.ndarray
    omega: np.ndarray
    modes: np.ndarray

    @property
    def wavenumbers(self) -> np.ndarray:
        """Harmonic wavenumbers in 1/cm."""
        return self.omega / (2 * np.pi * units._c * 100 / units.s)

    def displacement_covariance(self, temperature: float) -> np.ndarray:
        """Cartesian covariance (3n, 3n) in A^2 of the harmonic Wigner distribution at ``temperature`` K."""
        sigma2 = _mode_variance(self.omega, temperature)
        cart = self.modes / np.sqrt(np.repeat(self.masses, 3))[None, :]
        return cart.T @ (sigma2[:, None] * cart)


def normal_modes(atoms: Atoms, hessian: np.ndarray) -> NormalModes:
    """Normal modes from a Cartesian Hessian (eV/A^2), with the rigid-body modes projected out exactly.

    Raises:
        ValueError: imaginary frequencies (not a minimum).
    """
    masses = atoms.get_masses()
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(masses, 3))
    h = hessian * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    rigid = rigid_body_modes(atoms.positions, masses)
    projector = np.eye(len(h)) - rigid.T @ rigid
    values, vectors = np.linalg.eigh(projector @ h @ projector)
    internal = np.argsort(np.abs(vectors.T @ rigid.T).sum(axis=1))[: len(h) - len(rigid)]  # least rigid-body overlap
    values, vectors = values[internal], vectors[:, internal]
    order = np.argsort(values)
    values, vectors = values[order], vectors[:, order]
    if values[0] < -1e-4 * abs(values).max():
        cm = np.sqrt(-values[0]) / (2 * np.pi * units._c * 100 / units.s)
        raise ValueError(f"the structure is not at a minimum: imaginary frequency of {cm:.0f}i cm^-1")
    return NormalModes(atoms.positions.copy(), masses, np.sqrt(np.clip(values, 1e-12, None)), vectors.T)


def _mode_variance(omega: np.ndarray, temperature: float) -> np.ndarray:
    """Variance of each mass-weighted normal coordinate (amu A^2) in the harmonic Wigner distribution:
    hbar / (2 omega) coth(hbar omega / 2 k T) (ground state at T = 0)."""
    if temperature <= 0:
        return HBAR / (2 * omega)
    x = HBAR * omega / (2 * units.kB * temperature)
    return HBAR / (2 * omega) / np.tanh(x)


def wigner(
    key: jax.Array,
    modes: NormalModes,
    n: int,
    temperature: float = 300.0,
    *,
    numbers: np.ndarray | None = None,
    bonds: np.ndarray | None = None,
    attempts: int = 16,
) -> np.ndarray:
    """Positions (n, n_atoms, 3) in A from the harmonic quantum Wigner distribution at ``temperature`` K.

    Each normal coordinate is Gaussian with variance hbar/(2 omega) coth(hbar omega / 2kT) (the Wigner function of
    a thermal harmonic oscillator; e.g. Hillery et al., Phys. Rep. 106, 121 (1984)). Millions per second.

    The normal coordinates are rectilinear (Cartesian), so large-amplitude low-frequency modes move atoms on
    straight lines: in rare samples at room temperature a C-H bond is 30 % shorter or 25 % longer than at the
    minimum (measured on 1,2-dithiane, MMFF94, 300 K), and at 1000 K some go past any bond (NMM, GFN2-xTB: 1,078 of
    65,536 samples with a C-H beyond 1.5 x its covalent radii sum). Langevin MD has no such artefact.

    With ``bonds`` (n_bonds, 2) and the atoms' ``numbers``, samples that break one of those bonds
    (:func:`broken_bonds`) are dropped and replaced by further draws (keys ``fold_in(key, attempt)``; the first
    draw is the unfiltered one), with a warning counting them; a RuntimeError after ``attempts`` draws that leave
    too few intact samples. The result is the harmonic distribution restricted to the bonded molecule.
    """
    sigma = jnp.asarray(np.sqrt(_mode_variance(modes.omega, temperature)), jnp.float32)
    cart = jnp.asarray(modes.modes / np.sqrt(np.repeat(modes.masses, 3))[None, :], jnp.float32)

    def draw(k):
        z = jax.random.normal(k, (n, len(sigma)), jnp.float32)
        return np.asarray((z * sigma) @ cart).reshape(n, -1, 3) + modes.positions[None].astype(np.float32)

    if bonds is None:
        return draw(key)
    if numbers is None:
        raise ValueError("wigner: bonds given without the atoms' numbers")
    kept, n_kept = [], 0
    for attempt in range(attempts):
        x = draw(jax.random.fold_in(key, attempt) if attempt else key)
        x = x[~broken_bonds(numbers, bonds, x).any(axis=-1)]
        kept.append(x)
        n_kept += len(x)
        if n_kept >= n:
            break
    else:
        raise RuntimeError(
            f"wigner at {temperature:g} K: {attempts} draws of {n} gave {n_kept} samples with every bond intact (try "
            "a lower temperature)"
        )
    dropped = len(kept) * n - n_kept
    if dropped:
        warnings.warn(
            f"wigner at {temperature:g} K: {dropped} samples broke a bond (rectilinear normal modes) and were "
            "replaced by further draws",
            stacklevel=2,
        )
    return np.concatenate(kept)[:n]


def wigner_phase_space(
    rng: np.random.Generator, modes: NormalModes, n: int, temperature: float = 300.0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, n_atoms, 3) in A and velocities (n, n_atoms, 3) in A per ASE time unit from the harmonic
    Wigner distribution at ``temperature`` K: the thermal Wigner function of an oscillator is a product of two
    Gaussians, variance hbar/(2 omega) coth(hbar omega/2kT) for each mass-weighted normal coordinate and omega^2
    times that for its momentum (Hillery et al., Phys. Rep. 106, 121 (1984)). The internal modes carry neither
    translation nor, to first order, rotation. The initial conditions of surface-hopping and other trajectory
    simulations of photochemistry are drawn this way."""
    variance = _mode_variance(modes.omega, temperature)
    cart = modes.modes / np.sqrt(np.repeat(modes.masses, 3))[None, :]
    q = rng.standard_normal((n, len(variance))) * np.sqrt(variance)
    p = rng.standard_normal((n, len(variance))) * np.sqrt(variance) * modes.omega
    shape = (n, *modes.positions.shape)
    return modes.positions[None] + (q @ cart).reshape(shape), (p @ cart).reshape(shape)


def excited_dynamics(
    modes: NormalModes,
    numbers: np.ndarray,
    calc: Calculator,
    n: int,
    *,
    temperature: float = 300.0,
    seed: int = 0,
    duration_fs: float = 300.0,
    frame_fs: float = 10.0,
    timestep_fs: float = 0.5,
) -> np.ndarray:
    """Positions (n, n_atoms, 3) in A of molecules after a vertical (Franck-Condon) excitation: positions and
    velocities from the ground state's harmonic Wigner distribution at ``temperature`` K (``wigner_phase_space``),
    each propagated by velocity Verlet without a thermostat on the surface of ``calc``, one frame every
    ``frame_fs`` fs from ``frame_fs`` to ``duration_fs``.

    Why: a pump pulse puts the molecule on another potential-energy surface at the ground-state geometry, and it
    rings about that surface's minimum with an amplitude set by the distance between the two (bond lengths
    alternating by +-0.15 A within 100 fs in CHD's pi-pi* state), with correlations that no ground-state
    ensemble, however hot, holds. With GFN2-xTB's triplet (or cation, for Rydberg excitation) as the surface,
    this is a cheap surrogate of the excited-state dynamics that time-resolved experiments record. Each
    trajectory's initial condition comes from ``(seed, trajectory)``; a trajectory whose electronic structure
    fails to converge is replaced by the next one (at most as many failures as trajectories needed).

    Raises:
        RuntimeError: too many trajectories failed.
    """
    from ase.md.verlet import VelocityVerlet

    per_trajectory = max(1, round(duration_fs / frame_fs))
    stride = max(1, round(frame_fs / timestep_fs))
    needed = -(-n // per_trajectory)
    frames, failures, trajectory = [], 0, 0
    work = Atoms(numbers=numbers, positions=modes.positions)
    work.calc = calc
    while len(frames) < needed:
        rng = np.random.default_rng([seed, trajectory])
        trajectory += 1
        x0, v0 = wigner_phase_space(rng, modes, 1, temperature)
        work.positions = x0[0]
        work.set_velocities(v0[0])
        dyn = VelocityVerlet(work, timestep=timestep_fs * units.fs, logfile=None)
        out = np.empty((per_trajectory, len(numbers), 3))
        try:
            for k in range(per_trajectory):
                dyn.run(stride)
                out[k] = work.positions
        except Exception as err:  # tblite raises its own runtime error when the SCF does not converge
            failures += 1
            calc.reset()  # no wavefunction of the failed geometry as the next guess
            if failures > needed:
                raise RuntimeError(f"{failures} excited-state trajectories failed; the last: {err}") from err
            continue
        frames.append(out)
    return np.concatenate(frames)[:n]


# ------------------------------------------------------------------------------------------------------------
# Internal coordinates and restraints.


@dataclasses.dataclass(frozen=True)
class Coordinate:
    """An internal coordinate: ("distance", i, j) in A or ("dihedral", i, j, k, l) in degrees."""

    kind: str
    atoms: tuple[int, ...]

    def __post_init__(self):
        expected = {"distance": 2, "dihedral": 4}
        if self.kind not in expected or len(self.atoms) != expected[self.kind]:
            raise ValueError(f"a coordinate is ('distance', i, j) or ('dihedral', i, j, k, l), got {self}")

    @staticmethod
    def parse(text: str) -> Coordinate:
        """'distance:0,5' or 'dihedral:0,1,2,3'."""
        kind, _, indices = text.partition(":")
        try:
            return Coordinate(kind.strip(), tuple(int(v) for v in indices.split(",")))
        except ValueError:
            raise ValueError(f"coordinate must look like distance:I,J or dihedral:I,J,K,L, got {text!r}") from None

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(map(str, self.atoms))}"

    def value(self, positions: np.ndarray) -> np.ndarray:
        """Value(s) for positions (..., n, 3): A or degrees."""
        x = np.asarray(positions)
        if self.kind == "distance":
            i, j = self.atoms
            return np.linalg.norm(x[..., i, :] - x[..., j, :], axis=-1)
        return dihedral(x, *self.atoms)

    def gradient(self, positions: np.ndarray, step: float = 1e-5) -> np.ndarray:
        """d value / d positions (n, 3) by central differences."""
        g = np.zeros_like(positions)
        for k in range(positions.size):
            plus, minus = positions.copy(), positions.copy()
            plus.flat[k] += step
            minus.flat[k] -= step
            diff = self.value(plus) - self.value(minus)
            if self.kind == "dihedral":
                diff = (diff + 180.0) % 360.0 - 180.0
            g.flat[k] = diff / (2 * step)
        return g


class Restrained(Calculator):
    """A calculator plus a harmonic restraint 0.5 k (xi - target)^2 on one internal coordinate xi
    (k in eV/A^2 for distances, eV/deg^2 for dihedrals)."""

    implemented_properties = ("energy", "forces")

    def __init__(self, base: Calculator, coordinate: Coordinate, target: float, k: float):
        super().__init__()
        self.base, self.coordinate, self.target, self.k = base, coordinate, target, k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.base
        deviation = float(self.coordinate.value(self.atoms.positions)) - self.target
        if self.coordinate.kind == "dihedral":
            deviation = (deviation + 180.0) % 360.0 - 180.0
        self.results["energy"] = work.get_potential_energy() + 0.5 * self.k * deviation**2
        force = -self.k * deviation * self.coordinate.gradient(self.atoms.positions)
        self.results["forces"] = work.get_forces() + force


# ------------------------------------------------------------------------------------------------------------
# Molecular dynamics and Monte Carlo.


def langevin(
    atoms: Atoms,
    calc: Calculator,
    n: int,
    *,
    temperature: float = 300.0,
    seed: int = 0,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.02,
    stride: int = 20,
    equilibration: int = 400,
    return_temperatures: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Positions (n, n_atoms, 3) from Langevin dynamics at ``temperature`` K, one frame every ``stride`` steps
    after ``equilibration`` steps (velocities drawn from Maxwell-Boltzmann with the seed); with
    ``return_temperatures`` also the instantaneous kinetic temperature (K) of each frame."""
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as velocities
    from ase.md.langevin import Langevin

    work = atoms.copy()
    work.calc = calc
    work.set_constraint(FixCom())  # the exact way to hold the centre of mass (ASE >= 3.28; fixcm=True is not)
    rng = np.random.default_rng(seed)
    # ASE >= 3.29 names it thermalize_momenta and deprecates the older name.
    thermalize = getattr(velocities, "thermalize_momenta", None) or velocities.MaxwellBoltzmannDistribution
    thermalize(work, temperature_K=temperature, rng=rng)
    velocities.Stationary(work)
    velocities.ZeroRotation(work)
    dyn = Langevin(
        work,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
        logfile=os.devnull,
    )
    dyn.run(equilibration)
    frames = np.empty((n, len(atoms), 3))
    temperatures = np.empty(n)
    for k in range(n):
        dyn.run(stride)
        frames[k] = work.positions
        temperatures[k] = work.get_temperature()
    return (frames, temperatures) if return_temperatures else frames


def metropolis(
    atoms: Atoms,
    calc: Calculator,
    n: int,
    *,
    temperature: float = 300.0,
    seed: int = 0,
    step: float = 0.02,
    stride: int = 50,
    equilibration: int = 500,
) -> np.ndarray:
    """Positions (n, n_atoms, 3) from Metropolis Monte Carlo on the force-field energy at ``temperature`` K:
    Gaussian moves of one random atom (``step`` A per axis), one frame every ``stride`` moves."""
    rng = np.random.default_rng(seed)
    work = atoms.copy()
    work.calc = calc
    energy = work.get_potential_energy()
    beta = 1.0 / (units.kB * temperature)
    frames = np.empty((n, len(atoms), 3))
    total = equilibration + n * stride
    for move in range(total):
        trial = work.positions.copy()
        trial[rng.integers(len(atoms))] += rng.normal(0.0, step, 3)
        old = work.positions.copy()
        work.positions = trial
        new = work.get_potential_energy()
        if new <= energy or rng.random() < math.exp(-beta * (new - energy)):
            energy = new
        else:
            work.positions = old
        if move >= equilibration and (move - equilibration + 1) % stride == 0:
            frames[(move - equilibration) // stride] = work.positions
    return frames


BROKEN_SCALE = 1.5
"""A bond counts as broken beyond this multiple of its atoms' covalent radii sum (C-H 1.60 A, C-C 1.143 x 2)."""


def broken_bonds(numbers: np.ndarray, bonds: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(..., n_bonds) bool: which of ``bonds`` (n_bonds, 2) are longer than ``BROKEN_SCALE`` x their covalent radii
    sum in positions (..., n, 3), A."""
    from ase.data import covalent_radii

    bonds = np.asarray(bonds, int).reshape(-1, 2)
    limit = BROKEN_SCALE * (covalent_radii[numbers[bonds[:, 0]]] + covalent_radii[numbers[bonds[:, 1]]])
    x = np.asarray(positions)
    return np.linalg.norm(x[..., bonds[:, 0], :] - x[..., bonds[:, 1], :], axis=-1) > limit


def sweep(
    atoms: Atoms,
    calc: Calculator,
    n: int,
    coordinate: Coordinate,
    start: float,
    stop: float,
    *,
    temperature: float = 300.0,
    seed: int = 0,
    windows: int = 20,
    k: float | None = None,
    timestep_fs: float = 0.5,
    stride: int = 10,
    equilibration: int = 100,
    attempts: int = 8,
) -> np.ndarray:
    """Positions (n, n_atoms, 3) along ``coordinate`` from ``start`` to ``stop`` (A or degrees): umbrella windows
    with a harmonic restraint, each relaxed from the previous window's relaxed structure and then sampled by Langevin
    dynamics at ``temperature`` K, so the pool covers the reaction path with thermal noise on top. The restraint
    constant ``k`` (eV/A^2 or eV/deg^2) is multiplied by 4 in a window until its relaxed structure lies within
    0.05 A (3 deg) of the target.

    The sweep changes only its coordinate, never the molecule: every bond of ``atoms`` (covalent radii) except a
    swept distance stays bonded (within ``BROKEN_SCALE`` x its covalent radii sum).
    - Windows are visited from the end nearest the start structure's value. A dihedral range on the other side of
      zero from that value is swept from the start's mirror image (which scatters alike): pulling a ring torsion
      through 140 deg in one window rearranges the molecule instead (NMM's ring-methyl torsion from -160 to +60 deg
      moved its oxygen and a hydrogen to other atoms, in every frame of the pool built before 2026-12-06).
    - A window whose relaxed structure breaks a bond raises ValueError naming the bonds.
    - Thermal frames that break a bond (e.g. a hydrogen moving to a sulfur radical once DT's S-S is pulled apart)
      are dropped, and the window's dynamics rerun from its relaxed structure with the next seed, up to
      ``attempts`` runs, with a warning counting them; a window that cannot give its frames intact raises
      RuntimeError."""
    from ase.optimize import FIRE

    # Stiff enough to dominate the force field along the path (thermal spread sqrt(kT/k) ~ 0.04 A or 2 deg).
    k = k if k is not None else (20.0 if coordinate.kind == "distance" else 0.01)
    work = atoms.copy()
    value = float(coordinate.value(work.positions))
    if coordinate.kind == "dihedral" and (min(start, stop) > 0 > value or max(start, stop) < 0 < value):
        work.positions = -work.positions  # the mirror image: every dihedral changes sign
        value = -value
    targets = np.linspace(start, stop, windows)
    per_window = np.full(windows, n // windows)
    per_window[: n % windows] += 1
    order = np.arange(windows)
    if abs(value - stop) < abs(value - start):
        order = order[::-1]
    bonds = covalent_bonds(atoms)
    bonds = bonds[np.any(bonds != sorted(coordinate.atoms), axis=1)] if coordinate.kind == "distance" else bonds
    numbers = atoms.numbers
    frames: list[np.ndarray | None] = [None] * windows
    dropped = 0
    tolerance = 0.05 if coordinate.kind == "distance" else 3.0
    for w in order:
        target, count = float(targets[w]), int(per_window[w])
        # Relax under the restraint; stiffen it until the coordinate sits at its target (a ring resists being
        # pulled open with more than the bond's own stiffness, and a force field such as MMFF never lets go).
        window_k = k
        for _ in range(8):
            restrained = Restrained(calc, coordinate, target, window_k)
            work.calc = restrained
            with open(os.devnull, "w") as log:
                FIRE(work, logfile=log).run(fmax=0.05, steps=300)
            deviation = float(coordinate.value(work.positions)) - target
            if coordinate.kind == "dihedral":
                deviation = (deviation + 180.0) % 360.0 - 180.0
            if abs(deviation) <= tolerance:
                break
            window_k *= 4.0
        broken = broken_bonds(numbers, bonds, work.positions)
        if broken.any():
            raise ValueError(
                f"sweep of {coordinate} to {target:g}: the restraint breaks bond(s) "
                f"{', '.join(f'{i}-{j}' for i, j in bonds[broken])} of the start structure; this path is not reachable "
                "from it (try another range or coordinate)"
            )
        kept: list[np.ndarray] = []
        for attempt in range(attempts):
            if not count:
                break
            run = langevin(
                work,
                restrained,
                count,
                temperature=temperature,
                seed=seed * 1000 + int(w) + 1_000_000 * attempt,
                timestep_fs=timestep_fs,
                stride=stride,
                equilibration=equilibration,
            )
            intact = ~broken_bonds(numbers, bonds, run).any(axis=-1)
            dropped += int(np.sum(~intact))
            kept += list(run[intact])
            if len(kept) >= count:
                break
        if len(kept) < count:
            raise RuntimeError(
                f"sweep of {coordinate} at {target:g}: {attempts} runs at {temperature:g} K gave {len(kept)} of "
                f"{count} frames with every bond intact (try a lower temperature)"
            )
        frames[w] = np.array(kept[:count]).reshape(count, len(atoms), 3)  # work stays at the relaxed structure
    if dropped:
        warnings.warn(
            f"sweep of {coordinate}: {dropped} thermal frames broke a bond at {temperature:g} K and were replaced by "
            "frames of rerun dynamics",
            stacklevel=2,
        )
    return np.concatenate(frames)[:n]
