"""GPU machine: sample prepared pools (Wigner, from the stored Hessian) and compute their patterns.

python benchmarks/offline_gpu/finish_pools.py bundle/pools/main/*_wigner*.h5
"""

import sys
import time
from pathlib import Path

import h5py
import tables  # noqa: F401  (patches xfit: see tables.py)

from xfit.chem import _pool

for path in sys.argv[1:]:
    with h5py.File(path) as f:
        if f.attrs["status"] == "complete":
            continue
        spec = _pool.PoolSpec.from_json(f.attrs["config"])
    t0 = time.perf_counter()
    _pool.build_pool(path, spec)
    print(f"{Path(path).name}: {spec.n} structures in {time.perf_counter() - t0:.1f} s", flush=True)
