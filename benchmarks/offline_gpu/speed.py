"""GPU machine: prior inference latency and throughput, batches of 1, 256 and 4096 CHD patterns (median of 5).

python benchmarks/offline_gpu/speed.py xfit/weights/nmm_chd_dt xfit/weights/broad
"""

import json
import sys
import time

import jax
import numpy as np
import tables  # noqa: F401  (patches xfit: see tables.py)
from ase.io import read

import xfit

for path in sys.argv[1:]:
    prior = xfit.load_prior(path)
    reference = read("examples/data/chd.xyz")
    q = np.linspace(0.5, 8.0, 76)
    rng = np.random.default_rng(0)
    y0 = np.asarray(xfit.scattering(reference, q))
    out = {"device": str(jax.devices()[0].device_kind), "prior": path}
    for batch in (1, 256, 4096):
        y = y0 * (1 + 1e-3 * rng.standard_normal((batch, len(q))))
        prior.propose(q, y, "total", reference)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            prior.propose(q, y, "total", reference)
            times.append(time.perf_counter() - t0)
        out[f"batch{batch}_s"] = float(np.median(times))
        out[f"batch{batch}_patterns_per_s"] = batch / float(np.median(times))
    print(json.dumps(out))
