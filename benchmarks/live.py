"""``xfit live`` end to end: files per second and latency (file written -> result on disk), per batch size, and the
start-up time of a first run (empty compilation cache) against a second (cache filled).

Each batch size gets a fresh folder of CHD patterns (the shipped structure plus 0.03 A perturbations, 0.3 % sigma)
and one ``xfit live --once`` subprocess; throughput is taken from the results file's write times after the first
batch (steady state: compiled); batch_latency_s = batch / steady rate is the time from a batch's files being taken to
their records on disk. All files exist at the start (--once), so "queue_median_s" (file mtime -> record written)
includes the wait behind earlier batches and start-up: an upper bound on live latency.

    python benchmarks/live.py --batches 1,8,64 --json benchmarks/results/live.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, write_json

ROOT = Path(__file__).resolve().parents[1]
Q = np.linspace(0.5, 8.0, 60)


def write_patterns(folder: Path, n: int) -> None:
    from ase.io import read

    import xfit

    chd = read(ROOT / "examples" / "data" / "chd.xyz")
    folder.mkdir(parents=True)
    for k in range(n):
        x = chd.positions + np.random.default_rng(k).normal(0, 0.03, chd.positions.shape)
        values = np.asarray(xfit.intensity(chd.numbers, x, Q))
        xfit.Pattern(Q, values, 0.003 * values).save(folder / f"p{k:04d}.txt")


def run_live(folder: Path, batch: int, args, cache: Path) -> dict:
    from xfit.data._results import read_index

    out = folder.parent / f"{folder.name}.h5"
    cmd = [sys.executable, "-m", "xfit.cli", "live", str(folder), "--atoms", str(ROOT / "examples/data/chd.xyz")]
    cmd += ["-o", str(out), "--once", "--batch", str(batch), "--starts", str(args.starts), "--steps", str(args.steps)]
    cmd += ["--no-prior", "--settle", "0.05"]
    env = {**os.environ, "XFIT_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    index = read_index(out)
    written = np.array([datetime.datetime.fromisoformat(i["written"]).timestamp() for i in index])
    mtimes = np.array([Path(i["source"]).stat().st_mtime for i in index])
    written.sort()
    # after the first batch (compiled by then): files over the time from the first batch's last record to the end
    rate = (len(written) - batch) / (written[-1] - written[batch - 1]) if len(written) > batch else float("nan")
    return {
        "batch": batch,
        "files": len(index),
        "wall_s": wall,
        "files_per_s_end_to_end": len(index) / wall,
        "files_per_s_steady": rate,
        "batch_latency_s": batch / rate if rate > 0 else float("nan"),
        "queue_median_s": float(np.median(written - mtimes)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256", help="comma-separated batch sizes")
    parser.add_argument("--files", type=int, default=0, help="files per batch size (default 3 x batch, >= 16)")
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="batch sizes 1 and 4, 2 starts, 20 steps")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.starts, args.steps = "1,4", 2, 20
    batches = [int(b) for b in args.batches.split(",")]
    results = {**header(), "starts": args.starts, "steps": args.steps, "rows": []}
    with tempfile.TemporaryDirectory(prefix="xfit-live-bench-") as work:
        work = Path(work)
        cache = work / "cache"
        for attempt in ("first (empty cache)", "second (cache filled)"):
            folder = work / f"startup{len(results.get('startup', []))}"
            write_patterns(folder, batches[0])
            row = run_live(folder, batches[0], args, cache)
            results.setdefault("startup", []).append({"run": attempt, **row})
            print(f"{attempt}: {row['wall_s']:.1f} s for {row['files']} file(s)", flush=True)
        for b in batches:
            folder = work / f"batch{b}"
            write_patterns(folder, args.files or max(3 * b, 16))
            row = run_live(folder, b, args, cache)
            results["rows"].append(row)
            print(
                f"batch {b:>4}: {row['files']} files in {row['wall_s']:.1f} s ({row['files_per_s_end_to_end']:.2f} "
                f"files/s end to end, {row['files_per_s_steady']:.2f} steady), batch latency "
                f"{row['batch_latency_s']:.2f} s",
                flush=True,
            )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
