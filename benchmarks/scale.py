"""Scale-out on Dask: retrieval patterns/s and pool structures/s against the number of workers, overhead per chunk.

Question: what does a Dask cluster buy for a beamtime's batch retrieval and for a structure pool, and what does
each chunk cost beyond its computation, so that the cost of a 1e7-pattern beamtime and of a 1e6-structure pool on
N workers can be estimated from measured figures?

For each worker count a LocalCluster (processes, one thread each) is started; one warm-up run compiles the chunk's
functions on every worker (a real cluster compiles once per worker process, then reuses), then the timed run:

- retrieval: ``xfit.retrieve(patterns, CHD, client=..., chunk=...)`` (refinement, no prior) of noisy CHD patterns;
- pool: ``xfit.build_pool(..., client=...)`` of a Wigner (or --method) pool of DT, written by the client process.

Per chunk, from the scheduler's task stream: the compute time on the worker; the overhead is the worker time not
spent computing, per chunk: (workers x wall - sum of compute) / chunks (scheduling, (de)serialisation, transfers,
the client's HDF5 writes it waits on, and the idle tail at the end). The serial figure is the same call without a
client in this process. The estimate for N workers is chunks x (compute + overhead) / N, assuming the per-chunk
figures stay as measured (no scheduler bottleneck: a Dask scheduler handles thousands of tasks/s, far more than
these chunks ask for). Usage:

    python benchmarks/scale.py                           # 1 and 2 workers, 32 patterns, a 20,000-structure pool
    python benchmarks/scale.py --workers 1,2,4,8 --patterns 256 --pool-n 200000
    python benchmarks/scale.py --smoke                   # seconds
    python benchmarks/scale.py --json results/scale_cpu.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header
from _common import write_json

ROOT = Path(__file__).resolve().parents[1]
BEAMTIME, POOL = 10_000_000, 1_000_000
"""The sizes the paper estimate is for: patterns of a beamtime, structures of a pool."""
ESTIMATE_WORKERS = (1, 16, 64, 256)


def chd_patterns(n: int, q: np.ndarray):
    import jax
    from ase.io import read

    import xfit

    chd = read(ROOT / "examples" / "data" / "chd.xyz")
    out = []
    for k in range(n):
        atoms = chd.copy()
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        out.append(xfit.Pattern(q, xfit.scattering(atoms, q)).with_noise(jax.random.key(k), relative=1e-3))
    return chd, out


def chunk_figures(stream: list[dict], prefix: str, workers: int, wall: float) -> dict:
    """Compute seconds per chunk (mean) and overhead per chunk from the task stream of one timed run."""
    compute = [
        sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
        for t in stream
        if str(t["key"]).startswith(prefix)
    ]
    chunks = len(compute)
    return {
        "chunks": chunks,
        "compute_per_chunk_s": float(np.mean(compute)),
        "overhead_per_chunk_s": max(0.0, (workers * wall - float(np.sum(compute))) / chunks),
        "workers_used": len({t["worker"] for t in stream if str(t["key"]).startswith(prefix)}),
    }


def run_retrieval(client, workers: int, args, chd, patterns) -> dict:
    from distributed import get_task_stream

    import xfit

    options = {"n_starts": args.starts, "steps": args.steps, "seed": 0, "prior": None, "chunk": args.chunk}
    xfit.retrieve(patterns[: args.chunk * workers], chd, client=client, **options)  # compile on every worker
    with get_task_stream(client) as stream:
        t0 = time.perf_counter()
        xfit.retrieve(patterns, chd, client=client, **options)
        wall = time.perf_counter() - t0
    row = {"workers": workers, "patterns": len(patterns), "seconds": wall, "patterns_per_s": len(patterns) / wall}
    return row | chunk_figures(stream.data, "xfit-retrieve", workers, wall)


def run_pool(client, workers: int, args, directory: Path) -> dict:
    from distributed import get_task_stream

    import xfit

    def spec(n):
        return xfit.PoolSpec(
            "DT", args.method, n, (0.5, 8.0, 256), forcefield=args.forcefield, chunk=args.pool_chunk, seed=0
        )

    xfit.build_pool(directory / f"warm_{workers}.h5", spec(args.pool_chunk * workers), client=client)
    with get_task_stream(client) as stream:
        t0 = time.perf_counter()
        xfit.build_pool(directory / f"pool_{workers}.h5", spec(args.pool_n), client=client, overwrite=True)
        wall = time.perf_counter() - t0
    row = {"workers": workers, "structures": args.pool_n, "seconds": wall, "structures_per_s": args.pool_n / wall}
    return row | chunk_figures(stream.data, "xfit-pool", workers, wall)


def serial(args, chd, patterns, directory: Path) -> dict:
    import xfit

    options = {"n_starts": args.starts, "steps": args.steps, "seed": 0, "prior": None, "chunk": args.chunk}
    xfit.retrieve(patterns[: args.chunk], chd, **options)  # compile
    t0 = time.perf_counter()
    xfit.retrieve(patterns, chd, **options)
    retrieval = time.perf_counter() - t0
    spec = xfit.PoolSpec(
        "DT", args.method, args.pool_n, (0.5, 8.0, 256), forcefield=args.forcefield, chunk=args.pool_chunk, seed=0
    )
    xfit.build_pool(directory / "serial_warm.h5", spec, overwrite=True)  # reference geometry, Hessian, compile
    t0 = time.perf_counter()
    xfit.build_pool(directory / "serial.h5", spec, overwrite=True)
    pool = time.perf_counter() - t0
    return {"patterns_per_s": len(patterns) / retrieval, "structures_per_s": args.pool_n / pool}


def task_latency(client, n: int = 200) -> float:
    """Round trip of a no-op task (s): the floor of the per-chunk overhead."""
    t0 = time.perf_counter()
    client.gather(client.map(int, range(n), pure=False))
    return (time.perf_counter() - t0) / n


def estimate(row: dict, total: int, per_chunk_items: int) -> dict:
    """Hours for ``total`` items on N workers from one measured row's per-chunk figures."""
    chunks = -(-total // per_chunk_items)
    per_chunk = row["compute_per_chunk_s"] + row["overhead_per_chunk_s"]
    return {str(n): chunks * per_chunk / n / 3600 for n in ESTIMATE_WORKERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2,4")
    parser.add_argument("--patterns", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8, help="patterns per retrieval task")
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pool-n", type=int, default=20_000)
    parser.add_argument("--pool-chunk", type=int, default=2048, help="structures per pool task")
    parser.add_argument("--method", default="wigner", choices=("wigner", "md", "mc", "sweep"))
    parser.add_argument("--forcefield", default="mmff", choices=("gfn2", "mmff"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.patterns, args.chunk, args.starts, args.steps = "1,2", 4, 1, 2, 10
        args.pool_n, args.pool_chunk = 400, 100
    from distributed import Client, LocalCluster

    chd, patterns = chd_patterns(args.patterns, np.linspace(0.5, 8.0, 76))
    results = {"header": run_header(), "settings": vars(args) | {"json": str(args.json)}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        results["serial"] = serial(args, chd, patterns, directory)
        print(
            f"serial (this process): {results['serial']['patterns_per_s']:.3g} patterns/s, "
            f"{results['serial']['structures_per_s']:.4g} structures/s"
        )
        for workers in (int(w) for w in args.workers.split(",")):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port, whatever else runs a cluster
                silence_logs=logging.ERROR,
            )
            with cluster, Client(cluster) as client:
                row = {
                    "retrieval": run_retrieval(client, workers, args, chd, patterns),
                    "pool": run_pool(client, workers, args, directory),
                    "noop_task_s": task_latency(client),
                }
            results["rows"].append(row)
            r, p = row["retrieval"], row["pool"]
            print(
                f"{workers} worker(s): retrieval {r['patterns_per_s']:.3g} patterns/s ({r['chunks']} chunks of "
                f"{args.chunk}: compute {r['compute_per_chunk_s']:.3g} s, overhead {r['overhead_per_chunk_s']:.3g} "
                f"s per chunk, {r['workers_used']} workers used); pool {p['structures_per_s']:.4g} structures/s "
                f"({p['chunks']} chunks of {args.pool_chunk}: compute {p['compute_per_chunk_s']:.3g} s, overhead "
                f"{p['overhead_per_chunk_s']:.3g} s); no-op task {row['noop_task_s'] * 1e3:.2g} ms"
            )

    # The cheapest measured chunk: on a cluster every worker has its own cores, which the smallest worker count
    # on a small machine comes closest to (more workers than free cores only share them out).
    def cost(row):
        return row["compute_per_chunk_s"] + row["overhead_per_chunk_s"]

    retrieval = min((row["retrieval"] for row in results["rows"]), key=cost)
    pool = min((row["pool"] for row in results["rows"]), key=cost)
    results["estimate_hours"] = {
        "beamtime_1e7_patterns": estimate(retrieval, BEAMTIME, args.chunk),
        "pool_1e6_structures": estimate(pool, POOL, args.pool_chunk),
    }
    print(
        f"paper estimate from the per-chunk figures of {retrieval['workers']} worker(s) (retrieval, {args.starts} "
        f"starts x {args.steps} steps per pattern) and {pool['workers']} worker(s) ({args.method}/{args.forcefield} "
        "pool), each worker on its own cores:"
    )
    for name, hours in results["estimate_hours"].items():
        print(f"  {name}: " + ", ".join(f"{n} workers {h:.3g} h" for n, h in hours.items()))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
