"""GPU machine: sample prepared pools (Wigner, from the stored Hessian) and compute their patterns.

python benchmarks/offline_gpu/finish_pools.py bundle/pools/main/*_wigner*.h5
"""

import json
import sys
import time
from pathlib import Path

import h5py
import tables  # noqa: F401  (patches xfit: see tables.py)

from xfit import _pool

for path in sys.argv[1:]:
    with h5py.File(path) as f:
        if f.attrs["status"] == "complete":
            continue
        d = json.loads(f.attrs["config"])
    d["q"] = tuple(d["q"])
    if d.get("coordinate_range") is not None:
        d["coordinate_range"] = tuple(d["coordinate_range"])
    t0 = time.perf_counter()
    _pool.build_pool(path, _pool.PoolSpec(**d))
    print(f"{Path(path).name}: {d['n']} structures in {time.perf_counter() - t0:.1f} s", flush=True)
