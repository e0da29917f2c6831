"""Structure pools on HDF5: sampled geometries with their scattering patterns, crash-safe, resumable, streamable.

A finished pool is one self-describing HDF5 file with datasets

    positions  (N, n_atoms, 3) float32, A          patterns  (N, n_q) float32 (electron units)
    numbers    (n_atoms,) int                       q         (n_q,) float64, 1/A (q = 4 pi sin(theta)/lambda)
    reference_positions (n_atoms, 3)                hessian   (3 n_atoms, 3 n_atoms) eV/A^2 (Wigner pools)

and attributes (molecule, SMILES, mapped SMILES, sampler and its parameters, force field, temperature, seed, probe,
kind, xfit version, creation time, and the JSON ``config`` that identifies the command), chunked and compressed.

Crash safety. The pool is built in chunks. Each finished chunk is written to its own file in ``FILE.h5.chunks/``
through a temporary name and a rename, and then ``FILE.h5`` itself is replaced (again through a rename) by a small
file whose virtual datasets (HDF5 VDS) span exactly the finished chunks. So at any moment, a SIGKILL included,
``FILE.h5`` is a complete, readable pool of every chunk finished so far. Re-running the same command finds the
finished chunks and computes only the rest; each chunk's samples depend only on (seed, chunk index), so the result
is identical to an uninterrupted run. When all chunks are done they are copied into one self-contained file,
which replaces ``FILE.h5``, and the chunk folder is removed. A different command against an existing file is
refused unless ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import jax
import numpy as np
from ase import Atoms

from xfit._h5 import open_h5
from xfit.chem._structures import covalent_bonds
from xfit.physics import _iam

__all__ = ["METHODS", "PoolSpec", "build_pool", "iterate_pool", "pool_summary"]

METHODS = ("wigner", "md", "mc", "sweep", "excited")
DEFAULT_SWEEPS = {
    # Built-in reaction coordinates (atom indices of xfit.molecule's built-ins).
    "CHD": ("distance:0,5", 1.5, 5.5),  # ring opening to hexatriene
    "DT": ("distance:3,4", 2.0, 4.5),  # S-S bond breaking
    "NMM": ("dihedral:0,1,2,3", 60.0, 180.0),  # ring-methyl torsion: axial to equatorial methyl
}
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """What a pool is: everything that determines its contents (the identity checked on resume).

    q is stored as (q_min, q_max, n_q): q = 4 pi sin(theta)/lambda in 1/A on an even grid. Methods: "wigner"
    (harmonic quantum, ``temperature``; samples that break a bond of the reference geometry are redrawn), "md"
    (Langevin), "mc" (Metropolis), "sweep" (restrained along ``coordinate`` over ``coordinate_range``), "excited"
    (ground-state Wigner positions and velocities at ``temperature`` run for ``duration`` fs on the GFN2-xTB surface
    of ``charge`` and ``multiplicity``: ``xfit.chem._sampling.excited_dynamics``).
    """

    molecule: str
    method: str
    n: int
    q: tuple[float, float, int]
    seed: int = 0
    temperature: float = 300.0
    forcefield: str = "gfn2"
    kind: str = "total"
    probe: str = "xray"
    chunk: int = 0  # structures per chunk; 0 picks a default for the method
    coordinate: str | None = None  # sweeps: "distance:i,j" or "dihedral:i,j,k,l"
    coordinate_range: tuple[float, float] | None = None
    charge: int = 0  # "excited": charge of the surface the dynamics run on
    multiplicity: int = 0  # "excited": its 2S + 1; 0: a triplet (even electron count) or a doublet (odd)
    duration: float = 0.0  # "excited": fs per trajectory (0: 300), a frame every 10 fs

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown sampling method {self.method!r}; choose one of {METHODS}")
        if self.n < 1:
            raise ValueError(f"a pool needs n >= 1 structures, got {self.n}")
        if self.kind not in _iam.KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {_iam.KINDS}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 K")
        _iam.check_q(np.linspace(*self.q[:2], int(self.q[2])))
        if not self.chunk:
            object.__setattr__(self, "chunk", 16384 if self.method == "wigner" else 256)
        if self.method == "sweep" and self.coordinate is None:
            key = self.molecule.upper()
            if key not in DEFAULT_SWEEPS:
                raise ValueError(f"a sweep of {self.molecule!r} needs coordinate= and coordinate_range=")
            coordinate, lo, hi = DEFAULT_SWEEPS[key]
            object.__setattr__(self, "coordinate", coordinate)
            object.__setattr__(self, "coordinate_range", self.coordinate_range or (lo, hi))
        if self.method == "sweep" and self.coordinate_range is None:
            raise ValueError("a sweep needs coordinate_range=(start, stop)")
        if self.method != "excited":
            if self.charge or self.multiplicity or self.duration:
                raise ValueError("charge, multiplicity and duration set the dynamics of method='excited' only")
        else:
            if self.forcefield != "gfn2":
                raise ValueError("excited-state dynamics need forcefield='gfn2' (MMFF94 has one surface)")
            if self.multiplicity < 0 or self.duration < 0:
                raise ValueError("multiplicity and duration must be >= 0 (0: the default)")
            if self.charge == 0 and self.multiplicity == 1:
                raise ValueError("charge 0, multiplicity 1 is the ground state: excited dynamics need another surface")
            if not self.duration:
                object.__setattr__(self, "duration", 300.0)

    @property
    def q_grid(self) -> np.ndarray:
        return np.linspace(self.q[0], self.q[1], int(self.q[2]))

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk)

    def chunk_rows(self, index: int) -> int:
        return min(self.chunk, self.n - index * self.chunk)

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        if self.method != "excited":  # pools made before these fields existed keep their identity (resume)
            for name in ("charge", "multiplicity", "duration"):
                fields.pop(name)
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PoolSpec:
        """The spec a pool file's ``config`` attribute records (the inverse of ``to_json``)."""
        fields = json.loads(text)
        fields["q"] = tuple(fields["q"])
        if fields.get("coordinate_range") is not None:
            fields["coordinate_range"] = tuple(fields["coordinate_range"])
        return cls(**fields)


# ------------------------------------------------------------------------------------------------------------
# Building.


def _atomic_h5(path: Path, write: Callable[[h5py.File], None]) -> None:
    from xfit._io import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            write(f)


def _chunk_dir(path: Path) -> Path:
    return path.with_name(path.name + ".chunks")


def _chunk_file(path: Path, index: int) -> Path:
    return _chunk_dir(path) / f"chunk_{index:06d}.h5"


class _Context:
    """Molecule, force field and (for Wigner) normal modes: computed once, stored in the pool, reused on resume.

    A pool file that already holds its reference geometry (and Hessian) is resumed from those alone: no SMILES
    embedding and no force field, so a Wigner pool prepared on one machine (``prepare_only``) can be sampled on
    another, e.g. a GPU machine without RDKit or tblite. The force field is built only when a sampler needs it.
    """

    def __init__(self, spec: PoolSpec, path: Path):
        self.spec = spec
        stored = _read_reference(path, spec)
        if stored is not None:  # resume: the exact geometry (and Hessian) of the first run
            self.atoms = Atoms(numbers=stored["numbers"], positions=stored["reference_positions"])
            self.atoms.info.update(stored["info"])
            self.hessian = stored.get("hessian")
        else:
            from xfit.chem._molecules import molecule

            self.atoms = molecule(spec.molecule, forcefield=spec.forcefield, seed=spec.seed)
            self.hessian = None
        self._calc = self._surface = None
        # (n_bonds, 2): what a Wigner sample must keep (no other method reads them)
        self.bonds = covalent_bonds(self.atoms) if spec.method == "wigner" else None
        if spec.method == "excited":
            self.surface()  # a multiplicity the electron count cannot have fails here, before the Hessian
        if spec.method in ("wigner", "excited") and self.hessian is None:
            from xfit.chem._forcefield import hessian

            self.hessian = hessian(self.atoms, self.calc)
        self.modes = None
        if spec.method in ("wigner", "excited"):
            from xfit.chem._sampling import normal_modes

            self.modes = normal_modes(self.atoms, self.hessian)

    def __getstate__(self):  # shipped to Dask workers without the force-field calculators (rebuilt there if needed)
        return {**self.__dict__, "_calc": None, "_surface": None}

    @property
    def calc(self):
        if self._calc is None:
            from xfit.chem._forcefield import calculator

            self._calc = calculator(self.atoms, self.spec.forcefield)
        return self._calc

    def surface(self):
        """The excited-state surrogate surface of an "excited" pool (charge and multiplicity of the spec; the lowest
        open-shell multiplicity by default)."""
        if self._surface is None:
            from xfit.chem._forcefield import calculator

            spec = self.spec
            electrons = int(self.atoms.numbers.sum()) - spec.charge
            multiplicity = spec.multiplicity or (3 if electrons % 2 == 0 else 2)
            self._surface = calculator(self.atoms, spec.forcefield, charge=spec.charge, multiplicity=multiplicity)
        return self._surface

    def sample(self, index: int, rows: int) -> np.ndarray:
        from xfit.chem import _sampling

        spec, seed = self.spec, self.spec.seed * 1_000_003 + index
        if spec.method == "wigner":
            key = jax.random.fold_in(jax.random.key(spec.seed), index)
            # Rectilinear modes at high temperature stretch a few bonds past breaking: those samples are redrawn.
            return _sampling.wigner(
                key, self.modes, rows, spec.temperature, numbers=self.atoms.numbers, bonds=self.bonds
            )
        if spec.method == "md":
            return _sampling.langevin(self.atoms, self.calc, rows, temperature=spec.temperature, seed=seed)
        if spec.method == "mc":
            return _sampling.metropolis(self.atoms, self.calc, rows, temperature=spec.temperature, seed=seed)
        if spec.method == "excited":
            return _sampling.excited_dynamics(
                self.modes,
                self.atoms.numbers,
                self.surface(),
                rows,
                temperature=spec.temperature,
                seed=seed,
                duration_fs=spec.duration,
            )
        coordinate = _sampling.Coordinate.parse(spec.coordinate)
        lo, hi = spec.coordinate_range
        return _sampling.sweep(
            self.atoms,
            self.calc,
            rows,
            coordinate,
            lo,
            hi,
            temperature=spec.temperature,
            seed=seed,
            windows=max(2, min(20, rows)),
        )


def _read_reference(path: Path, spec: PoolSpec) -> dict | None:
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if f.attrs.get("config") != spec.to_json():
            return None
        out = {
            "numbers": f["numbers"][()],
            "reference_positions": f["reference_positions"][()],
            "info": {
                "name": str(f.attrs.get("molecule", spec.molecule)),
                "smiles": str(f.attrs.get("smiles", "")),
                "mapped_smiles": str(f.attrs.get("mapped_smiles", "")),
            },
        }
        if "hessian" in f:
            out["hessian"] = f["hessian"][()]
        return out


def _patterns(numbers, positions: np.ndarray, spec: PoolSpec, batch: int = 8192) -> np.ndarray:
    q = spec.q_grid
    out = np.empty((len(positions), len(q)), np.float32)
    for lo in range(0, len(positions), batch):
        x = jax.numpy.asarray(positions[lo : lo + batch], jax.numpy.float32)
        out[lo : lo + batch] = np.asarray(_iam.intensity(numbers, x, q, kind=spec.kind, probe=spec.probe))
    return out


def _compute_chunk(context: _Context, index: int, rows: int, x64: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``index``: its ``rows`` structures (rows, n_atoms, 3) float32 A and their patterns (rows, n_q) float32;
    a function of (spec, seed, chunk index) only, so a Dask worker computes what the serial loop would. ``x64``:
    the client's jax_enable_x64 (None: this process's own)."""
    with jax.enable_x64(bool(jax.config.jax_enable_x64) if x64 is None else x64):
        positions = context.sample(index, rows).astype(np.float32)
        return positions, _patterns(context.atoms.numbers, positions, context.spec)


def _chunks(context: _Context, indices: range, client) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The chunks ``indices`` in order: computed here, or on the Dask cluster behind ``client`` (the context sent
    once to every worker; at most 4 chunks per worker in flight, so the client holds a bounded number)."""
    spec = context.spec
    if client is None:
        for index in indices:
            yield _compute_chunk(context, index, spec.chunk_rows(index))
        return
    from xfit._dask import check_client, ordered_results

    n_workers = check_client(client)
    shared = client.scatter(context, broadcast=True, hash=False)
    x64 = bool(jax.config.jax_enable_x64)
    calls = ((shared, index, spec.chunk_rows(index), x64) for index in indices)
    try:
        yield from ordered_results(client, _compute_chunk, calls, window=4 * n_workers, name="xfit-pool")
    finally:
        shared.release()


def _attributes(spec: PoolSpec, context: _Context, status: str, n_done: int) -> dict:
    import xfit

    attrs = {
        "config": spec.to_json(),
        "status": status,
        "n_complete": n_done,
        "molecule": context.atoms.info.get("name", spec.molecule),
        "smiles": context.atoms.info.get("smiles", ""),
        "mapped_smiles": context.atoms.info.get("mapped_smiles", ""),
        "sampler": spec.method,
        "sampler_parameters": json.dumps(
            {
                "temperature_K": spec.temperature,
                "chunk": spec.chunk,
                "coordinate": spec.coordinate,
                "coordinate_range": spec.coordinate_range,
                **(
                    {
                        "charge": spec.charge,
                        "multiplicity": spec.multiplicity or "lowest open-shell",
                        "duration_fs": spec.duration,
                        "frame_fs": 10.0,
                    }
                    if spec.method == "excited"
                    else {}
                ),
            }
        ),
        "forcefield": spec.forcefield,
        "temperature_K": spec.temperature,
        "seed": spec.seed,
        "probe": spec.probe,
        "kind": spec.kind,
        "q_convention": "q = 4 pi sin(theta)/lambda, 1/A",
        "units": "positions A, patterns electron units",
        "xfit_version": xfit.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return {k: ("" if v is None else v) for k, v in attrs.items()}


def _write_common(f: h5py.File, spec: PoolSpec, context: _Context, status: str, n_done: int) -> None:
    f["numbers"] = context.atoms.numbers
    f["q"] = spec.q_grid
    f["reference_positions"] = context.atoms.positions
    if context.hessian is not None:
        f["hessian"] = context.hessian
    f.attrs.update(_attributes(spec, context, status, n_done))


def _write_index(path: Path, spec: PoolSpec, context: _Context, done: int) -> None:
    """Replace FILE.h5 by a file whose virtual datasets span the first ``done`` chunks."""
    rows = sum(spec.chunk_rows(k) for k in range(done))
    n_atoms, n_q = len(context.atoms), int(spec.q[2])

    def write(f):
        _write_common(f, spec, context, "building", rows)
        for name, shape in (("positions", (n_atoms, 3)), ("patterns", (n_q,))):
            layout = h5py.VirtualLayout(shape=(rows, *shape), dtype=np.float32)
            start = 0
            for k in range(done):
                count = spec.chunk_rows(k)
                relative = os.path.relpath(_chunk_file(path, k), path.parent)
                layout[start : start + count] = h5py.VirtualSource(relative, name, shape=(count, *shape))
                start += count
            f.create_virtual_dataset(name, layout, fillvalue=np.nan)

    _atomic_h5(path, write)


def _consolidate(path: Path, spec: PoolSpec, context: _Context) -> None:
    """Copy all chunks into one self-contained compressed file that replaces FILE.h5."""
    n_atoms, n_q = len(context.atoms), int(spec.q[2])
    rows_per_h5_chunk = min(1024, spec.n)

    def write(f):
        _write_common(f, spec, context, "complete", spec.n)
        pos = f.create_dataset(
            "positions", (spec.n, n_atoms, 3), np.float32, chunks=(rows_per_h5_chunk, n_atoms, 3), **_COMPRESSION
        )
        pat = f.create_dataset("patterns", (spec.n, n_q), np.float32, chunks=(rows_per_h5_chunk, n_q), **_COMPRESSION)
        start = 0
        for k in range(spec.n_chunks):
            with h5py.File(_chunk_file(path, k), "r") as c:
                count = c["positions"].shape[0]
                pos[start : start + count] = c["positions"][()]
                pat[start : start + count] = c["patterns"][()]
            start += count

    _atomic_h5(path, write)
    shutil.rmtree(_chunk_dir(path), ignore_errors=True)


def _check_existing(path: Path, spec: PoolSpec, overwrite: bool) -> str:
    """'new', 'resume' or 'complete' for the file at path; raises if it belongs to another command."""
    if not path.exists():
        if _chunk_dir(path).exists():
            shutil.rmtree(_chunk_dir(path))  # chunks without an index: nothing was ever published
        return "new"
    try:
        with h5py.File(path, "r") as f:
            config, status = f.attrs.get("config"), f.attrs.get("status")
    except OSError as err:
        if not overwrite:
            raise ValueError(f"{path} exists and is not a readable xfit pool ({err}); pass overwrite=True") from None
        config, status = None, None
    if config == spec.to_json():
        return "complete" if status == "complete" else "resume"
    if not overwrite:
        raise ValueError(
            f"{path} already holds a different pool (made by another command: {config}); refusing to touch it. "
            "Use another file name or overwrite=True (CLI: --overwrite)"
        )
    path.unlink()
    shutil.rmtree(_chunk_dir(path), ignore_errors=True)
    return "new"


def build_pool(
    path: str | os.PathLike,
    spec: PoolSpec,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    prepare_only: bool = False,
    client=None,
) -> Path:
    """Build (or finish) the pool described by ``spec`` at ``path``; see the module notes on crash safety.

    Args:
        path: the HDF5 file to write.
        spec: what to build.
        overwrite: replace a file that holds a different pool.
        progress: called as progress(structures_done, n) after each chunk (the CLI draws a bar with it).
        prepare_only: stop after the force-field work (the optimised reference geometry and, for Wigner pools, the
            Hessian): ``path`` is then a valid, empty pool (``status`` 'building', 0 structures). Running the same
            spec again samples the structures and their patterns from what is stored, without RDKit or the force
            field for Wigner pools: prepare on a CPU machine, carry the small file to a GPU machine, finish there.
        client: a ``dask.distributed.Client`` (``pip install 'xfit[dask]'``): the chunks (sampling and patterns, the
            expensive part) are computed on the cluster's workers, and written here, in order, by this process
            alone, with the same crash safety and resume; the pool is the serial one (each chunk depends only on
            the spec, seed and its index), whatever the number of workers. The reference geometry and Hessian are
            computed here first.

    Returns:
        The path of the finished pool.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _check_existing(path, spec, overwrite)
    if state == "complete":
        shutil.rmtree(_chunk_dir(path), ignore_errors=True)  # left by a kill between consolidation and cleanup
        if progress:
            progress(spec.n, spec.n)
        return path
    context = _Context(spec, path)
    _chunk_dir(path).mkdir(exist_ok=True)
    done = 0
    while done < spec.n_chunks and _chunk_file(path, done).exists():
        done += 1  # finished chunks of an interrupted run: a chunk file exists only once it is complete
    for stale in _chunk_dir(path).glob("chunk_*.h5"):
        if int(stale.stem.split("_")[1]) >= done:
            stale.unlink()  # beyond a gap: recomputed, so the pool stays one contiguous run of chunks
    if state == "new" or done == 0:
        _write_index(path, spec, context, done)
    if prepare_only:
        if not any(_chunk_dir(path).iterdir()):
            _chunk_dir(path).rmdir()
        return path
    if progress:
        progress(sum(spec.chunk_rows(k) for k in range(done)), spec.n)
    chunks = _chunks(context, range(done, spec.n_chunks), client)
    for index, (positions, patterns) in zip(range(done, spec.n_chunks), chunks, strict=True):

        def write(f, positions=positions, patterns=patterns):
            f.create_dataset("positions", data=positions, **_COMPRESSION)
            f.create_dataset("patterns", data=patterns, **_COMPRESSION)

        _atomic_h5(_chunk_file(path, index), write)
        _write_index(path, spec, context, index + 1)
        if progress:
            progress(sum(spec.chunk_rows(k) for k in range(index + 1)), spec.n)
    _consolidate(path, spec, context)
    return path


# ------------------------------------------------------------------------------------------------------------
# Reading.


def iterate_pool(
    path: str | os.PathLike,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    fields: tuple[str, ...] = ("positions", "patterns"),
    buffer_blocks: int = 8,
    epochs: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches {field: array} from a pool without loading it: memory stays flat whatever its size.

    Shuffling is two-level: the order of storage blocks (1024 rows) is shuffled, and rows are shuffled within a
    buffer of ``buffer_blocks`` blocks. The same seed gives the same batches. The last batch may be smaller.
    """
    rng = np.random.default_rng(seed)
    with open_h5(path, what="a structure pool (xfit pool)") as f:
        n = int(f.attrs.get("n_complete", f["positions"].shape[0]))
        block = 1024
        starts = np.arange(0, n, block)
        for _ in range(epochs):
            order = rng.permutation(starts) if shuffle else starts
            for group in range(0, len(order), buffer_blocks):
                pieces = {name: [] for name in fields}
                for start in np.sort(order[group : group + buffer_blocks]):
                    for name in fields:
                        pieces[name].append(f[name][start : min(start + block, n)])
                buffer = {name: np.concatenate(parts) for name, parts in pieces.items()}
                rows = rng.permutation(len(buffer[fields[0]])) if shuffle else np.arange(len(buffer[fields[0]]))
                for lo in range(0, len(rows), batch_size):
                    take = rows[lo : lo + batch_size]
                    yield {name: buffer[name][take] for name in fields}


def pool_summary(path: str | os.PathLike, pairs: list[tuple[int, int]] | None = None, bins: int = 60) -> dict:
    """Counts, attributes, coordinate ranges and streamed histograms of chosen interatomic distances."""
    with open_h5(path, what="a structure pool (xfit pool)") as f:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        numbers = f["numbers"][()]
        q = f["q"][()]
        n = int(attrs.get("n_complete", f["positions"].shape[0]))
    if pairs is None:
        config = json.loads(attrs["config"])
        coordinate = config.get("coordinate")
        if coordinate and coordinate.startswith("distance:"):
            pairs = [tuple(int(v) for v in coordinate.split(":")[1].split(","))]
        else:
            heavy = np.flatnonzero(numbers > 1)
            pairs = [(int(heavy[0]), int(heavy[-1]))] if len(heavy) > 1 else [(0, 1)]
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    distances = {pair: [] for pair in pairs}
    for batch in iterate_pool(path, 65536, shuffle=False, fields=("positions",)):
        x = batch["positions"]
        lo, hi = np.minimum(lo, x.min(axis=(0, 1))), np.maximum(hi, x.max(axis=(0, 1)))
        for i, j in pairs:
            distances[(i, j)].append(np.linalg.norm(x[:, i] - x[:, j], axis=-1))
    stats = {}
    for pair, parts in distances.items():
        d = np.concatenate(parts) if parts else np.zeros(0)
        counts, edges = np.histogram(d, bins=bins) if len(d) else (np.zeros(bins), np.linspace(0, 1, bins + 1))
        stats[pair] = {
            "min": float(d.min()) if len(d) else np.nan,
            "max": float(d.max()) if len(d) else np.nan,
            "mean": float(d.mean()) if len(d) else np.nan,
            "counts": counts,
            "edges": edges,
        }
    return {
        "attrs": attrs,
        "n": n,
        "numbers": numbers,
        "q": q,
        "coordinate_min": lo,
        "coordinate_max": hi,
        "distances": stats,
    }
