"""CPU machine: pack pools and the tables a bare GPU machine lacks into one folder (a "bundle").

The GPU machines this project borrows have JAX, flax, optax and h5py but no package index: no RDKit (bond-graph
keys and automorphisms of the prior), no xraydb/xraylib (form-factor and Compton tables), no tblite. This script
computes what those would give for the pools' molecules, once, into BUNDLE/tables.pkl, and copies the pools:
MD and sweep pools as they are, Wigner pools as prepared files (reference geometry + Hessian, a few kB; the GPU
machine samples them again with ``finish_pools.py``, the same ``build_pool`` code).

    python benchmarks/offline_gpu/prepare.py BUNDLE main:/path/to/pools broad:/path/to/broad_pools
"""

import pickle
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms

from xfit.chem import _pool
from xfit.chem._structures import covalent_bonds
from xfit.learn import _proposal
from xfit.physics import _elements


def spec_of(path) -> _pool.PoolSpec:
    with h5py.File(path) as f:
        return _pool.PoolSpec.from_json(f.attrs["config"])


def graph_signature(atoms) -> tuple:
    return (tuple(int(z) for z in atoms.numbers), tuple(map(tuple, np.asarray(covalent_bonds(atoms)).tolist())))


def main(bundle: Path, groups: list[str]) -> None:
    for group in groups:
        name, folder = group.split(":", 1)
        for src in sorted(Path(folder).glob("*.h5")):
            dst = bundle / "pools" / name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            spec = spec_of(src)
            if spec.method == "wigner":
                _pool._write_index(dst, spec, _pool._Context(spec, src), 0)  # from the stored reference + Hessian
            else:
                shutil.copy(src, dst)
    graph = {}
    for path in sorted(bundle.rglob("*.h5")):
        with h5py.File(path) as f:
            atoms = Atoms(numbers=f["numbers"][()], positions=f["reference_positions"][()])
        key = graph_signature(atoms)
        if key not in graph:
            graph[key] = (_proposal.graph_key(atoms), _proposal.automorphisms(atoms, 256))
    elements = sorted({z for k in graph for z in k[0]})
    tables = {
        "wk": _elements._waasmaier_kirfel_table(),
        "compton": {z: _elements._compton_spline(z) for z in elements},
        "graph": graph,
    }
    (bundle / "tables.pkl").write_bytes(pickle.dumps(tables))
    print(f"{bundle}: {len(graph)} molecules, elements {elements}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
