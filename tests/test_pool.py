"""Molecules, force fields, samplers and HDF5 pools: physics checks, crash safety, reproducibility."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import jax
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

import xfit
from xfit.chem import _pool, _sampling
from xfit.chem._forcefield import calculator, hessian
from xfit.chem._molecules import bonds, molecule
from xfit.chem._structures import covalent_bonds

from .conftest import ROOT


@pytest.fixture(scope="module")
def dt_mmff():
    return molecule("DT", forcefield="mmff")


# ------------------------------------------------------------------------------------------------------ molecules


@pytest.mark.parametrize(("name", "formula"), [("NMM", "C5H11NO"), ("CHD", "C6H8"), ("DT", "C4H8S2")])
def test_builtin_molecules_at_a_gfn2_minimum(name, formula):
    atoms = molecule(name)
    assert atoms.get_chemical_formula() == formula
    atoms.calc = calculator(atoms, "gfn2")
    assert np.abs(atoms.get_forces()).max() < 0.01
    assert len(bonds(atoms)) == len(atoms)  # one ring: as many bonds as atoms


def test_named_atoms_have_fixed_indices():
    chd, dt = molecule("CHD", forcefield="mmff"), molecule("DT", forcefield="mmff")
    assert chd.get_distance(0, 5) == pytest.approx(1.53, abs=0.03)  # the sp3-sp3 bond that breaks
    assert set(chd.get_chemical_symbols()[:6]) == {"C"}
    assert dt.get_chemical_symbols()[3:5] == ["S", "S"] and dt.get_distance(3, 4) == pytest.approx(2.05, abs=0.08)


def test_smiles_and_files_and_a_stable_order(tmp_path):
    from ase.io import read, write

    thf = molecule("C1CCOC1", forcefield="mmff")
    again = molecule("C1CCOC1", forcefield="mmff")
    np.testing.assert_array_equal(thf.numbers, again.numbers)
    np.testing.assert_allclose(thf.positions, again.positions)
    write(tmp_path / "thf.xyz", thf, format="extxyz")
    back = read(tmp_path / "thf.xyz")
    assert back.info["mapped_smiles"] == thf.info["mapped_smiles"]
    np.testing.assert_array_equal(bonds(back), bonds(thf))
    write(tmp_path / "plain.xyz", thf, format="xyz")
    from_file = molecule(tmp_path / "plain.xyz", forcefield="mmff")
    np.testing.assert_array_equal(from_file.numbers, thf.numbers)
    assert from_file.info["smiles"] == thf.info["smiles"]
    with pytest.raises(ValueError, match="not a built-in molecule"):
        molecule("this is not a molecule")


# ------------------------------------------------------------------------------------------------------- samplers


def test_wigner_covariance_matches_the_harmonic_prediction(dt_mmff):
    modes = _sampling.normal_modes(dt_mmff, hessian(dt_mmff, calculator(dt_mmff, "mmff")))
    assert len(modes.omega) == 3 * len(dt_mmff) - 6
    x = _sampling.wigner(jax.random.key(0), modes, 200_000, temperature=300.0)
    sample = np.cov((x.reshape(len(x), -1) - dt_mmff.positions.ravel()).T)
    predicted = modes.displacement_covariance(300.0)
    assert np.abs(sample - predicted).max() < 0.02 * np.abs(predicted).max()
    # Zero-point limit: at T -> 0 the width tends to hbar/(2 omega), and it grows with temperature.
    assert np.trace(modes.displacement_covariance(1e-3)) < np.trace(predicted)
    np.testing.assert_allclose(modes.displacement_covariance(1e-3), modes.displacement_covariance(0.0), rtol=1e-6)
    # Rectilinear normal modes move atoms on straight lines: hot enough, some samples stretch a bond past breaking.
    numbers, bonds = dt_mmff.numbers, covalent_bonds(dt_mmff)
    key = jax.random.key(3)
    plain = _sampling.wigner(key, modes, 2000, temperature=4000.0)
    broken = _sampling.broken_bonds(numbers, bonds, plain).any(axis=-1)
    assert 0 < broken.sum() < len(plain) // 2  # the artefact is there to filter
    with pytest.warns(UserWarning, match="samples broke a bond") as record:
        x = _sampling.wigner(key, modes, 2000, temperature=4000.0, numbers=numbers, bonds=bonds)
    # Counted over every draw: the first draw's broken ones and those of the redraws.
    assert int(str(record[0].message).split(": ")[1].split()[0]) >= broken.sum()
    assert x.shape == plain.shape
    assert not _sampling.broken_bonds(numbers, bonds, x).any()
    # The first draw's intact samples are kept as they were, in order; the rest are fresh draws.
    np.testing.assert_array_equal(x[: (~broken).sum()], plain[~broken])
    assert len(record) == 1
    with pytest.raises(RuntimeError, match="intact"):
        _sampling.wigner(key, modes, 200, temperature=1e7, numbers=numbers, bonds=bonds, attempts=2)


def test_langevin_keeps_the_target_temperature(dt_mmff):
    target = 500.0
    _, temperatures = _sampling.langevin(
        dt_mmff, calculator(dt_mmff, "mmff"), 400, temperature=target, seed=1, stride=10, return_temperatures=True
    )
    dof = 3 * len(dt_mmff)
    standard_error = target * np.sqrt(2.0 / dof) / np.sqrt(len(temperatures) / 2)  # frames ~2x correlated
    assert abs(temperatures.mean() - target) < 3 * standard_error


class _Harmonic(Calculator):
    """E = 1/2 dx^T H dx about a minimum: the surface on which the thermal Wigner distribution is stationary."""

    implemented_properties = ("energy", "forces")

    def __init__(self, x0, h):
        super().__init__()
        self.x0, self.h = x0.ravel(), h

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        dx = self.atoms.positions.ravel() - self.x0
        self.results["energy"] = 0.5 * dx @ self.h @ dx
        self.results["forces"] = -(self.h @ dx).reshape(-1, 3)


def test_wigner_phase_space_has_the_thermal_kinetic_energy_and_no_rigid_motion(dt_mmff):
    modes = _sampling.normal_modes(dt_mmff, hessian(dt_mmff, calculator(dt_mmff, "mmff")))
    x, v = _sampling.wigner_phase_space(np.random.default_rng(0), modes, 20_000, temperature=500.0)
    m = modes.masses[None, :, None]
    kinetic = 0.5 * np.sum(m * v * v, axis=(1, 2))
    # <P_k^2>/2 = hbar omega/4 coth(hbar omega / 2kT) per mode: kT/2 classically, more for stiff (C-H) modes.
    theta = _sampling.HBAR * modes.omega / (2 * units.kB * 500.0)
    predicted = np.sum(0.25 * _sampling.HBAR * modes.omega / np.tanh(theta))
    assert kinetic.mean() == pytest.approx(predicted, rel=0.01)
    assert predicted > 0.5 * len(modes.omega) * units.kB * 500.0  # zero-point motion on top of equipartition
    np.testing.assert_allclose(np.sum(m * v, axis=1), 0.0, atol=1e-9)  # no centre-of-mass motion
    angular = np.sum(m * np.cross(modes.positions, v), axis=1)
    assert np.abs(angular).max() < 1e-9 + 1e-6 * np.abs(m * v).sum(axis=1).max()
    sample = np.cov((x.reshape(len(x), -1) - modes.positions.ravel()).T)
    predicted_cov = modes.displacement_covariance(500.0)
    assert np.abs(sample - predicted_cov).max() < 0.04 * np.abs(predicted_cov).max()


def test_excited_dynamics_on_the_ground_state_harmonic_surface_keep_the_wigner_distribution(dt_mmff):
    # Classical harmonic dynamics leave the thermal Wigner distribution of the same oscillator unchanged: frames
    # taken along the trajectories must have the Wigner covariance (a check of the initial velocities and of the
    # integrator together: a factor 2 in either, or positions and velocities mixed up, changes it).
    h = hessian(dt_mmff, calculator(dt_mmff, "mmff"))
    modes = _sampling.normal_modes(dt_mmff, h)
    surface = _Harmonic(dt_mmff.positions, h)
    x = _sampling.excited_dynamics(modes, dt_mmff.numbers, surface, 3000, temperature=800.0, seed=4, duration_fs=150)
    assert x.shape == (3000, len(dt_mmff), 3)
    sample = np.cov((x.reshape(len(x), -1) - dt_mmff.positions.ravel()).T)
    predicted = modes.displacement_covariance(800.0)
    diagonal = np.diag(predicted)
    assert np.abs(np.diag(sample) / diagonal - 1).mean() < 0.1
    assert np.abs(sample - predicted).max() < 0.15 * diagonal.max()
    again = _sampling.excited_dynamics(modes, dt_mmff.numbers, surface, 40, temperature=800.0, seed=4, duration_fs=150)
    np.testing.assert_array_equal(again, x[:40])  # each trajectory a function of (seed, trajectory)


def test_excited_pool_runs_on_the_triplet_and_says_so(tmp_path):
    spec = _pool.PoolSpec("CHD", "excited", 12, (0.5, 8.0, 16), duration=60, seed=1)
    assert spec.multiplicity == 0 and spec.duration == 60
    path = _pool.build_pool(tmp_path / "t1.h5", spec)
    with h5py.File(path) as f:
        x, reference = f["positions"][()], f["reference_positions"][()]
        parameters = json.loads(f.attrs["sampler_parameters"])
        assert f.attrs["sampler"] == "excited" and "hessian" in f
    assert parameters["charge"] == 0 and parameters["multiplicity"] == "lowest open-shell"
    assert _pool.PoolSpec.from_json(spec.to_json()) == spec
    # On the triplet CHD's C2=C3 and C4=C5 double bonds lengthen (GFN2-xTB minimum: 1.43 A against 1.33 A on the
    # ground state): the ringing molecule's double bonds are longer on average than the reference's.
    double = np.linalg.norm(x[:, [1, 3]] - x[:, [2, 4]], axis=-1)
    assert double.mean() > np.linalg.norm(reference[[1, 3]] - reference[[2, 4]], axis=-1).mean() + 0.03
    pairs = bonds(molecule("CHD"))
    d = np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)
    assert np.all((d > 0.8) & (d < 2.0))  # ringing, not falling apart


def test_excited_pool_options_are_checked(tmp_path):
    q = (0.5, 8.0, 16)
    with pytest.raises(ValueError, match="method='excited' only"):
        _pool.PoolSpec("CHD", "md", 10, q, charge=1)
    with pytest.raises(ValueError, match="ground state"):
        _pool.PoolSpec("CHD", "excited", 10, q, multiplicity=1)
    with pytest.raises(ValueError, match="forcefield='gfn2'"):
        _pool.PoolSpec("CHD", "excited", 10, q, forcefield="mmff")
    chd = molecule("CHD", forcefield="mmff")
    with pytest.raises(ValueError, match="multiplicity 2 is impossible"):
        calculator(chd, "gfn2", multiplicity=2)  # C6H8 has an even number of electrons
    with pytest.raises(ValueError, match="multiplicity 2 is impossible"):  # before the Hessian and any dynamics
        _pool.build_pool(tmp_path / "odd.h5", _pool.PoolSpec("CHD", "excited", 10, q, multiplicity=2))
    with pytest.raises(ValueError, match="MMFF94 has only"):
        calculator(chd, "mmff", charge=1, multiplicity=2)
    # Pools made before the excited-state fields existed keep their identity (and so resume).
    assert "charge" not in json.loads(_pool.PoolSpec("CHD", "md", 10, q).to_json())


@pytest.mark.parametrize("method", ["wigner", "md", "mc"])
def test_thermal_pools_keep_bonds_chemical(tmp_path, method):
    spec = _pool.PoolSpec("DT", method, 64, (0.5, 8.0, 32), forcefield="mmff", chunk=32)
    path = _pool.build_pool(tmp_path / "p.h5", spec)
    with h5py.File(path) as f:
        x, reference = f["positions"][()], f["reference_positions"][()]
    pairs = bonds(molecule("DT", forcefield="mmff"))
    d = np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)
    d0 = np.linalg.norm(reference[pairs[:, 0]] - reference[pairs[:, 1]], axis=-1)
    # No broken (or fused) bonds. Measured extremes: MD and MC 0.93-1.09 x d0; Wigner 0.70-1.26 x d0, the
    # rectilinear normal-coordinate artefact (large-amplitude low-frequency modes move hydrogens on straight lines).
    assert np.all((d > 0.65 * d0) & (d < 1.35 * d0))
    assert np.std(x - reference, axis=0).mean() > 0.01  # and they do move


def test_sweep_pool_covers_the_requested_range(tmp_path):
    spec = _pool.PoolSpec("DT", "sweep", 24, (0.5, 8.0, 32), forcefield="mmff", chunk=24, coordinate_range=(2.0, 3.5))
    path = _pool.build_pool(tmp_path / "sweep.h5", spec)
    with h5py.File(path) as f:
        s_s = np.linalg.norm(f["positions"][:, 3] - f["positions"][:, 4], axis=-1)
    assert s_s.min() < 2.15 and s_s.max() > 3.3
    assert np.all(np.diff(np.sort(s_s)) < 0.4)  # no gaps along the path


def test_dihedral_sweep_turns_the_torsion_without_rearranging_the_molecule(tmp_path):
    """NMM's ring-methyl torsion C-N-C-C swept over 60-180 deg on GFN2-xTB at 600 K: the start structure sits at
    -160 deg, so the sweep starts from its mirror image, and every bond stays bonded. The sweep before 2026-12-06
    pulled the torsion from -160 to +60 deg in its first window; the molecule rearranged (O4 onto C2, a hydrogen
    onto C3) and every frame of the shipped prior's NMM sweep pool held that other molecule (measured: 4 of 4
    frames of this pool, 768 of 768 of that one)."""
    spec = _pool.PoolSpec("NMM", "sweep", 4, (0.5, 8.0, 16), forcefield="gfn2", chunk=4, temperature=600.0)
    path = _pool.build_pool(tmp_path / "nmm_sweep.h5", spec)
    with h5py.File(path) as f:
        x, reference, numbers = f["positions"][()], f["reference_positions"][()], f["numbers"][()]
    assert _sampling.Coordinate.parse("dihedral:0,1,2,3").value(reference) < -90  # the start's sign
    pairs = bonds(Atoms(numbers=numbers, positions=reference))
    assert not _sampling.broken_bonds(numbers, pairs, x).any()
    torsion = np.abs(_sampling.Coordinate.parse("dihedral:0,1,2,3").value(x))
    assert torsion.min() < 70 and torsion.max() > 170


def test_sweep_drops_frames_that_break_a_bond_and_refuses_a_path_that_cannot_keep_them(dt_mmff, monkeypatch):
    """Thermal frames with a bond broken (a hydrogen 2.5 A from its carbon) are dropped and the window rerun from
    its relaxed structure; a window whose every run breaks bonds is an error, never a pool of another molecule."""
    calc = calculator(dt_mmff, "mmff")
    real = _sampling.langevin
    calls = []

    def flaky(atoms, calc, n, **kwargs):
        frames = real(atoms, calc, n, **{**kwargs, "equilibration": 5, "stride": 2})
        calls.append(kwargs["seed"])
        if len(calls) % 2 == 1:  # every first run of a window: half its frames with H6 pulled off C0
            frames[::2, 6] = frames[::2, 0] + 2.5 * (frames[::2, 6] - frames[::2, 0]) / np.linalg.norm(
                frames[::2, 6] - frames[::2, 0], axis=-1, keepdims=True
            )
        return frames

    monkeypatch.setattr(_sampling, "langevin", flaky)
    coordinate = _sampling.Coordinate.parse("distance:3,4")
    with pytest.warns(UserWarning, match="4 thermal frames broke a bond"):
        x = _sampling.sweep(dt_mmff, calc, 6, coordinate, 2.1, 2.6, temperature=300, windows=2)
    assert x.shape == (6, 14, 3) and len(calls) == 4  # each window's first run had broken frames: rerun
    pairs = [b for b in bonds(dt_mmff).tolist() if b != [3, 4]]
    assert not _sampling.broken_bonds(dt_mmff.numbers, np.array(pairs), x).any()
    assert len(set(calls)) == 4  # every rerun with its own seed

    def torn(atoms, calc, n, **kwargs):  # every run: the atoms on a line 50 A apart, every bond broken
        return np.zeros((n, len(atoms), 3)) + 50.0 * np.arange(len(atoms))[None, :, None]

    monkeypatch.setattr(_sampling, "langevin", torn)
    with pytest.raises(RuntimeError, match="frames with every bond intact"):
        _sampling.sweep(dt_mmff, calc, 4, coordinate, 2.1, 2.6, temperature=300, windows=2, attempts=2)


def test_sweep_refuses_a_path_that_only_broken_bonds_reach():
    """CHD's para carbons C1...C4 (2.9 A) pulled to 9 A: both ring paths between them would need bonds of twice their
    length. The relaxed window breaks them, and the sweep says so instead of writing a pool of fragments."""
    chd = molecule("CHD", forcefield="mmff")
    coordinate = _sampling.Coordinate.parse("distance:0,3")
    with pytest.raises(ValueError, match=r"to 9: the restraint breaks bond\(s\) 0-1, 0-5, 1-2, 2-3"):
        _sampling.sweep(chd, calculator(chd, "mmff"), 2, coordinate, 2.9, 9.0, windows=2)


# ---------------------------------------------------------------------------------------------------------- pools


def test_pool_file_is_self_describing_and_patterns_match_the_model(tmp_path):
    spec = _pool.PoolSpec("DT", "wigner", 1000, (0.5, 8.0, 64), forcefield="mmff", chunk=300, seed=3)
    path = _pool.build_pool(tmp_path / "p.h5", spec)
    with h5py.File(path) as f:
        assert f["positions"].shape == (1000, 14, 3) and f["positions"].dtype == np.float32
        assert f["patterns"].shape == (1000, 64) and f["patterns"].compression == "gzip"
        for name in (
            "molecule",
            "smiles",
            "sampler",
            "forcefield",
            "temperature_K",
            "seed",
            "probe",
            "kind",
            "xfit_version",
            "created",
        ):
            assert name in f.attrs, name
        x, patterns, q, numbers = f["positions"][()], f["patterns"][()], f["q"][()], f["numbers"][()]
    recomputed = np.asarray(xfit.intensity(numbers, x[::97].astype(np.float64), q))
    np.testing.assert_allclose(patterns[::97], recomputed, rtol=1e-4)


def test_same_seed_same_file_and_other_commands_refused(tmp_path):
    spec = _pool.PoolSpec("DT", "wigner", 500, (0.5, 8.0, 16), forcefield="mmff", chunk=200, seed=5)
    a, b = _pool.build_pool(tmp_path / "a.h5", spec), _pool.build_pool(tmp_path / "b.h5", spec)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        np.testing.assert_array_equal(fa["positions"][()], fb["positions"][()])
        np.testing.assert_array_equal(fa["patterns"][()], fb["patterns"][()])
    (tmp_path / "a.h5.chunks").mkdir()  # as a kill between the final rename and the cleanup would leave it
    _pool.build_pool(a, spec)
    assert not (tmp_path / "a.h5.chunks").exists()
    other = _pool.PoolSpec("DT", "wigner", 500, (0.5, 8.0, 16), forcefield="mmff", chunk=200, seed=6)
    with pytest.raises(ValueError, match="different pool"):
        _pool.build_pool(a, other)
    _pool.build_pool(a, other, overwrite=True)
    with h5py.File(a) as f:
        assert f.attrs["seed"] == 6


def test_spec_round_trips_through_the_pool_config():
    sweep = _pool.PoolSpec("CHD", "sweep", 10, (0.5, 8.0, 16), forcefield="mmff")
    for spec in (sweep, _pool.PoolSpec("CCO", "wigner", 10, (0.2, 8.0, 128), seed=3)):
        assert _pool.PoolSpec.from_json(spec.to_json()) == spec


def test_prepared_wigner_pool_finishes_without_rdkit_or_force_field(tmp_path, monkeypatch):
    spec = _pool.PoolSpec("DT", "wigner", 300, (0.5, 8.0, 16), forcefield="mmff", chunk=128, seed=2)
    straight = _pool.build_pool(tmp_path / "straight.h5", spec)
    prepared = _pool.build_pool(tmp_path / "prepared.h5", spec, prepare_only=True)
    with h5py.File(prepared) as f:
        assert f.attrs["status"] == "building" and f.attrs["n_complete"] == 0
        assert f["positions"].shape == (0, 14, 3) and "hessian" in f  # C4H8S2
    # The machine that finishes it has neither RDKit nor a force field.
    monkeypatch.setitem(sys.modules, "rdkit", None)
    monkeypatch.setitem(sys.modules, "xfit.chem._forcefield", None)
    monkeypatch.setitem(sys.modules, "xfit.chem._molecules", None)
    _pool.build_pool(prepared, spec)
    with h5py.File(straight) as fa, h5py.File(prepared) as fb:
        assert fb.attrs["status"] == "complete" and fb.attrs["molecule"] == fa.attrs["molecule"]
        assert fb.attrs["smiles"] == fa.attrs["smiles"]
        np.testing.assert_array_equal(fa["positions"][()], fb["positions"][()])
        np.testing.assert_array_equal(fa["patterns"][()], fb["patterns"][()])


def test_killed_pool_is_readable_and_resumes_to_exactly_n_unique_structures(tmp_path):
    n, chunk = 6000, 100
    path = tmp_path / "killed.h5"
    spec = f"PoolSpec('DT', 'wigner', {n}, (0.5, 8.0, 64), forcefield='mmff', chunk={chunk}, seed=2)"
    code = f"from xfit.chem._pool import PoolSpec, build_pool\nbuild_pool({str(path)!r}, {spec})\n"
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    seen = []
    for attempt in range(3):  # kill it three times, at different stages
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
        deadline = time.time() + 120
        target = (attempt + 1) * 600
        while time.time() < deadline and proc.poll() is None:
            try:
                with h5py.File(path, "r") as f:  # readable at any moment, while it is being written
                    done = int(f.attrs["n_complete"])
                    if done:
                        assert np.all(np.isfinite(f["positions"][:done]))
                if done >= target:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with h5py.File(path, "r") as f:
            seen.append(int(f.attrs["n_complete"]))
            assert f["positions"].shape[0] == seen[-1] and np.all(np.isfinite(f["patterns"][()]))
    assert 0 < seen[0] < n
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True)
    with h5py.File(path, "r") as f:
        assert f.attrs["status"] == "complete"
        x = f["positions"][()]
    assert len(x) == n
    assert len(np.unique(x.reshape(n, -1), axis=0)) == n
    assert not (tmp_path / "killed.h5.chunks").exists()
    fresh = _pool.build_pool(
        tmp_path / "fresh.h5", _pool.PoolSpec("DT", "wigner", n, (0.5, 8.0, 64), forcefield="mmff", chunk=chunk, seed=2)
    )
    with h5py.File(fresh) as f:
        np.testing.assert_array_equal(f["positions"][()], x)  # resumed == uninterrupted


def test_streaming_reader_visits_every_row_once_per_epoch(tmp_path):
    spec = _pool.PoolSpec("DT", "wigner", 5000, (0.5, 8.0, 8), forcefield="mmff", chunk=2000)
    path = _pool.build_pool(tmp_path / "p.h5", spec)
    with h5py.File(path) as f:
        reference = f["positions"][:, 0, 0]
    batches = list(_pool.iterate_pool(path, 512, seed=1, buffer_blocks=2))
    seen = np.concatenate([b["positions"][:, 0, 0] for b in batches])
    assert len(seen) == 5000 and not np.array_equal(seen, reference)  # all rows, shuffled
    np.testing.assert_array_equal(np.sort(seen), np.sort(reference))
    again = np.concatenate([b["positions"][:, 0, 0] for b in _pool.iterate_pool(path, 512, seed=1, buffer_blocks=2)])
    np.testing.assert_array_equal(seen, again)


def test_pool_cli_and_info(tmp_path, capsys):
    from xfit.cli import main

    out = tmp_path / "cli.h5"
    assert (
        main(
            [
                "pool",
                "CCO",
                "--method",
                "wigner",
                "-n",
                "300",
                "--q",
                "0.5:8:16",
                "--forcefield",
                "mmff",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert main(["pool", "info", str(out), "--pair", "0,1", "--plot", str(tmp_path / "h.png")]) == 0
    printed = capsys.readouterr().out
    assert "complete pool of 300 structures" in printed and "distance 0-1" in printed
    assert main(["pool", "CCO", "--method", "md", "-n", "10", "-o", str(out)]) == 2
