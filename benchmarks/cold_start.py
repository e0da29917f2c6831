"""Cold start: what a fresh Python process pays before its first structure (import, loading the priors, compiling
the posterior), with JAX's persistent compilation cache empty and then filled.

Question: how long does a user wait for the first result of a new script, a notebook kernel or an ``xfit retrieve``
call (the command line keeps the cache in ~/.cache/xfit/jax), and how much of it is compiling rather than
computing?

Each figure is measured in its own fresh subprocess, one after another (never two at once):

- ``import xfit``; loading the shipped conformer prior and the proposal network;
- the first default call ``xfit.retrieve(pattern, atoms)`` on the shipped CHD example pattern (compiles), then a
  second call on a different pattern of the same shape in the same process (runs only): their difference is what
  compiling costs;
- a third call in that process on another q grid: the same structure's pattern on q 0.6..7.5 1/A, 5 points
  fewer (a user's own data after the example): it compiles again where the programs depend on the grid's values;
- the same process again with the persistent cache (``JAX_COMPILATION_CACHE_DIR``) empty, then filled by that run;
  once keeping every compiled program, once only those that took >= 0.2 s to compile (fewer, larger files); and
  once with the cache filled but the first call on a third grid, q 0.55..7.8 1/A and 3 points fewer, that no run
  has seen (a new data set in a fresh process).

``--xfit PATH`` measures another checkout of xfit (its folder holding ``xfit/``), e.g. a ``git worktree`` of an
older commit, for before/after ratios measured in one run. Usage:

    python benchmarks/cold_start.py
    python benchmarks/cold_start.py --xfit /tmp/xfit_before --json results/cold_start_before_cpu.json
    python benchmarks/cold_start.py --smoke      # the import and prior-loading figures only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header
from _common import write_json

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import xfit
from xfit.learn import _conformer, _proposal
t_import = time.perf_counter() - t0
out = {"xfit": xfit.__file__, "import_s": t_import}
t = time.perf_counter(); _conformer.load_conformer_prior(); out["load_conformer_prior_s"] = time.perf_counter() - t
t = time.perf_counter(); _proposal.load_prior(); out["load_proposal_s"] = time.perf_counter() - t
if RETRIEVE:
    import numpy as np
    from ase.io import read
    pattern, start = xfit.load_pattern(f"{DATA}/chd_traj001_t12.txt"), read(f"{DATA}/chd.xyz")
    q = np.linspace(0.6, 7.5, len(pattern.q) - 5)
    values = np.asarray(xfit.scattering(start, q))
    grid = xfit.Pattern(q, values, 1e-3 * values)  # another q grid, a user's own data
    if OTHER_FIRST:  # a grid no earlier run has seen: 0.55..7.8 1/A, 3 points fewer
        q = np.linspace(0.55, 7.8, len(pattern.q) - 3)
        values = np.asarray(xfit.scattering(start, q))
        pattern = xfit.Pattern(q, values, 1e-3 * values)
    t = time.perf_counter(); xfit.retrieve(pattern, start); out["first_retrieve_s"] = time.perf_counter() - t
    other = xfit.Pattern(pattern.q, pattern.values * 1.01, None if pattern.sigma is None else pattern.sigma * 1.01)
    t = time.perf_counter(); xfit.retrieve(other, start); out["second_retrieve_s"] = time.perf_counter() - t
    t = time.perf_counter(); xfit.retrieve(grid, start); out["other_grid_retrieve_s"] = time.perf_counter() - t
out["process_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def measure(
    xfit_root: Path, cache: Path | None, *, retrieve: bool, min_compile_s: float = 0.0, other_first: bool = False
) -> dict:
    """One fresh interpreter running PROBE with ``xfit_root`` first on its path, JAX's persistent cache in
    ``cache`` (None: off) keeping programs that took at least ``min_compile_s`` to compile, the first call on the
    other q grid if ``other_first``; figures in seconds."""
    env = {**os.environ, "PYTHONPATH": str(xfit_root), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache is not None:
        env |= {
            "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(min_compile_s),
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
    code = PROBE.replace("RETRIEVE", repr(retrieve)).replace("DATA", repr(str(ROOT / "examples" / "data")))
    code = code.replace("OTHER_FIRST", repr(other_first))
    run = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    line = next(s for s in run.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xfit", type=Path, default=ROOT, help="the checkout to measure (holding xfit/)")
    parser.add_argument("--smoke", action="store_true", help="import and prior loading only (seconds)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    results = {"header": run_header(), "xfit": str(args.xfit.resolve()), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="xfit-cold-start-") as tmp:
        every, large = Path(tmp, "every"), Path(tmp, "large")
        plans = [
            ("no persistent cache", None, 0.0, False),
            ("cache empty", every, 0.0, False),
            ("cache filled by the run before", every, 0.0, False),
            ("cache of programs >= 0.2 s to compile, empty", large, 0.2, False),
            ("cache of programs >= 0.2 s to compile, filled", large, 0.2, False),
            ("cache filled (>= 0.2 s), the first call on a grid not seen before", large, 0.2, True),
        ]
        for label, folder, min_compile_s, other_first in plans[:1] if args.smoke else plans:
            row = measure(
                args.xfit, folder, retrieve=not args.smoke, min_compile_s=min_compile_s, other_first=other_first
            )
            if folder is not None:
                row["cache_files"] = len(list(folder.iterdir())) if folder.is_dir() else 0
            if "first_retrieve_s" in row:
                row["compile_s"] = row["first_retrieve_s"] - row["second_retrieve_s"]
            results["runs"][label] = row
            print(f"{label}:")
            for key, value in row.items():
                if key.endswith("_s"):
                    print(f"  {key[:-2]:>22} {value:8.2f} s")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
