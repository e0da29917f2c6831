"""Pool building and streaming: structures + patterns per second for each sampler, memory while streaming.

Question: how fast does xfit make training pools (structures and their X-ray patterns, written to HDF5), per
sampler, and does reading a pool back in shuffled batches keep memory flat whatever the pool's size?

For each sampler a pool of NMM (GFN2-xTB unless --forcefield) is built through ``xfit.build_pool`` (256 q
points): the wall time includes sampling, patterns and compressed HDF5 writes ("excited": 300 fs trajectories on
the GFN2-xTB triplet from ground-state Wigner initial conditions, a frame every 10 fs). Streaming: pools of
--stream-sizes structures (Wigner) are read back with ``xfit.iterate_pool`` (batch 1024) in a fresh process
each, whose peak resident memory (ru_maxrss) is reported. Usage:

    python benchmarks/pools.py                                  # rates + streaming of 1e5 and 1e6 structures
    python benchmarks/pools.py --smoke                          # seconds, as in the test suite
    python benchmarks/pools.py --json results.json
    python benchmarks/pools.py --matrix                         # every sampler x NMM, CHD, DT and a SMILES (THF)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header
from _common import write_json

STREAM = """
import resource, sys, time, xfit
t = time.perf_counter(); rows = 0
for batch in xfit.iterate_pool(sys.argv[1], 1024, seed=0):
    rows += len(batch["patterns"])
print(rows, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def build(directory: Path, method: str, n: int, forcefield: str, molecule: str) -> dict:
    import xfit

    spec = xfit.PoolSpec(molecule, method, n, (0.5, 8.0, 256), forcefield=forcefield, seed=0)
    path = directory / f"{molecule}_{method}_{n}.h5"
    t0 = time.perf_counter()
    xfit.build_pool(path, spec, overwrite=True)
    seconds = time.perf_counter() - t0
    return {
        "method": method,
        "n": n,
        "seconds": seconds,
        "per_second": n / seconds,
        "file_MB": path.stat().st_size / 1e6,
        "path": str(path),
    }


def stream(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STREAM, path], capture_output=True, text=True, check=True)
    rows, seconds, peak_mb = out.stdout.split()
    return {"rows": int(rows), "seconds": float(seconds), "peak_rss_MB": float(peak_mb)}


def matrix(args) -> int:
    """Build a small pool with every sampler for NMM, CHD, DT and THF (SMILES C1CCOC1) and report what finished."""
    import h5py

    import xfit

    rows = []
    print(f"{'molecule':>10} {'sampler':>8} {'status':>9} {'n':>3} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for molecule in ("NMM", "CHD", "DT", "C1CCOC1"):
            for method in ("wigner", "md", "mc", "sweep") + (("excited",) if args.forcefield == "gfn2" else ()):
                extra = {"duration": 30.0} if method == "excited" else {}
                if molecule == "C1CCOC1" and method == "sweep":  # no built-in coordinate: pull the C-O ring bond
                    extra = {"coordinate": "distance:0,4", "coordinate_range": (1.4, 2.4)}
                spec = xfit.PoolSpec(molecule, method, 6, (0.5, 8.0, 32), forcefield=args.forcefield, chunk=3, **extra)
                path = Path(tmp) / f"{molecule}_{method}.h5"
                t0 = time.perf_counter()
                xfit.build_pool(path, spec)
                seconds = time.perf_counter() - t0
                with h5py.File(path) as f:
                    row = {
                        "molecule": molecule,
                        "method": method,
                        "status": str(f.attrs["status"]),
                        "n": int(f["positions"].shape[0]),
                        "seconds": seconds,
                    }
                rows.append(row)
                print(f"{molecule:>10} {method:>8} {row['status']:>9} {row['n']:>3} {seconds:>8.1f}", flush=True)
    write_json(args.json, run_header() | {"forcefield": args.forcefield, "matrix": rows})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--molecule", default="NMM")
    parser.add_argument("--forcefield", default="gfn2", choices=("gfn2", "mmff"))
    parser.add_argument(
        "--sizes", default="wigner=100000,md=256,mc=256,sweep=256,excited=256", help="method=n,... (excited: GFN2 only)"
    )
    parser.add_argument("--stream-sizes", default="100000,1000000", help="Wigner pools to stream ('' for none)")
    parser.add_argument("--dir", type=Path, help="where to write the pools (default: a temporary folder)")
    parser.add_argument("--matrix", action="store_true", help="only: every sampler for every built-in and a SMILES")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.matrix:
        return matrix(args)
    if args.smoke:
        args.sizes, args.stream_sizes, args.forcefield = "wigner=2000,md=8,mc=8,sweep=8", "2000,4000", "mmff"

    header = run_header() | {"molecule": args.molecule, "forcefield": args.forcefield, "n_q": 256}
    print(f"# {header['date']}  {header['device']} ({header['cpu_count']} CPUs)  {args.molecule}, {args.forcefield}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        rates = []
        print(f"{'sampler':>8} {'n':>9} {'seconds':>9} {'structures/s':>13} {'file MB':>8}")
        for item in args.sizes.split(","):
            method, n = item.split("=")
            row = build(directory, method, int(n), args.forcefield, args.molecule)
            rates.append(row)
            print(
                f"{method:>8} {row['n']:>9} {row['seconds']:>9.2f} {row['per_second']:>13.4g} {row['file_MB']:>8.1f}",
                flush=True,
            )
        streaming = []
        print(f"\n{'pool size':>10} {'read s':>8} {'rows/s':>10} {'peak RSS MB':>12}")
        for n in (int(v) for v in args.stream_sizes.split(",") if v):
            path = build(directory, "wigner", n, args.forcefield, args.molecule)["path"]
            row = {"n": n, **stream(path)}
            streaming.append(row)
            print(
                f"{n:>10} {row['seconds']:>8.2f} {row['rows'] / row['seconds']:>10.4g} {row['peak_rss_MB']:>12.1f}",
                flush=True,
            )
    results = header | {"build": rates, "streaming": streaming}
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
