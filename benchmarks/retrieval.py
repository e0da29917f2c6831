"""Retrieval accuracy and speed on the simulated CHD ring-opening trajectories.

Question: from the ground-state geometry (chd_reference), how close does ``xfit.retrieve`` get to each trajectory
frame, how fast, and how does that depend on noise, q range and the kind of pattern?

For each configuration (noise 0 / 0.1 % / 1 % of I; q_max 4 or 8 1/A, 76 points from 0.5; total intensity with
unknown scale, or percent difference against chd_reference of fully excited frames, with the excitation fraction
fitted or given) every selected
frame of ../shared/reference/chd_trajectories is simulated with xfit's IAM, noised with a fixed key, and retrieved
independently (C1-C6 left free to break). Reported: carbon and all-atom RMSD after superposition (reflection and
equivalent-H permutations allowed), |C1-C6 error|, for frames with C1-C6 <= 2.3 A ("closed") and > 2.3 A
("opened") separately; batched time per retrieval (all frames in one call) and single-pattern latency, both after
compilation. Targets (issue): closed frames at 0.1 % noise, q <= 8: median carbon RMSD <= 0.05 A, one retrieval
<= 1 s on a 2-core CPU.

    python benchmarks/retrieval.py                  # full table (minutes on a CPU)
    python benchmarks/retrieval.py --smoke          # seconds: what the test suite runs
    python benchmarks/retrieval.py --json results.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header  # noqa: E402
from _common import write_json  # noqa: E402

CHD = ROOT.parent / "shared" / "reference" / "chd_trajectories"


def load_frames(stride: int):
    from ase.io import read

    frames = []
    for trajectory in ("traj001", "traj090"):
        paths = sorted((CHD / trajectory).glob("target_*.xyz"))
        frames += [(f"{trajectory}/{p.stem}", read(p)) for p in paths[::stride]]
    return frames


def simulate(frames, reference, q, noise: float, kind: str, seed: int):
    import jax

    import xfit

    patterns = []
    i_ref = xfit.scattering(reference, q)
    for k, (_, atoms) in enumerate(frames):
        key = jax.random.fold_in(jax.random.key(seed), k)
        intensity = xfit.scattering(atoms, q)
        if kind == "total":
            p = xfit.Pattern(q, intensity)
            patterns.append(p.with_noise(key, relative=noise) if noise else p)
        else:
            # Percent difference of the fully excited frame (fraction 1): noise of `noise` x I on both the "on" and
            # the "off" intensities gives sigma = 100 sqrt(2) noise in percent. Noiseless patterns carry no sigma
            # (retrieve then assumes its default relative_sigma), like the intensity patterns.
            signal = np.asarray(xfit.percent_difference(intensity, i_ref, 1.0))
            sigma = np.full_like(signal, 100 * np.sqrt(2) * noise) if noise else None
            if noise:
                signal = signal + sigma * np.asarray(jax.random.normal(key, signal.shape))
            patterns.append(xfit.Pattern(q, signal, sigma, kind="percent_difference"))
    return patterns


def evaluate(results, frames):
    import xfit

    rows = []
    for r, (name, truth) in zip(results, frames, strict=True):
        rows.append(
            {
                "frame": name,
                "c1c6_true": float(truth.get_distance(0, 5)),
                "c1c6_found": float(r.atoms.get_distance(0, 5)),
                "rmsd_carbon": xfit.rmsd(r.atoms, truth, heavy_only=True),
                "rmsd_all": xfit.rmsd(r.atoms, truth),
                "chi2_reduced": r.chi2_reduced,
            }
        )
    return rows


def summarise(rows, which):
    sel = [r for r in rows if (r["c1c6_true"] <= 2.3) == (which == "closed")]
    if not sel:
        return None
    c = np.array([r["rmsd_carbon"] for r in sel])
    return {
        "n": len(sel),
        "median_rmsd_carbon": float(np.median(c)),
        "fraction_carbon_le_0.10": float(np.mean(c <= 0.10)),
        "median_rmsd_all": float(np.median([r["rmsd_all"] for r in sel])),
        "median_c1c6_error": float(np.median([abs(r["c1c6_found"] - r["c1c6_true"]) for r in sel])),
        "median_chi2_reduced": float(np.median([r["chi2_reduced"] for r in sel])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="two frames, one configuration, few steps")
    parser.add_argument("--stride", type=int, default=3, help="use every STRIDE-th frame of each trajectory")
    parser.add_argument("--noise", default="0,0.001,0.01", help="relative noise levels")
    parser.add_argument("--qmax", default="8,4", help="q_max values (1/A)")
    parser.add_argument(
        "--kinds",
        default="total,percent_difference,percent_difference_known_fraction",
        help="total (unknown scale); percent_difference (fraction fitted); ..._known_fraction (fraction given)",
    )
    parser.add_argument("--difference-qmax", default="8", help="q_max values for the percent-difference kinds")
    parser.add_argument("--starts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--final-restraint-weight", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not CHD.exists():
        print(f"CHD reference frames not found at {CHD}", file=sys.stderr)
        return 1

    from ase.io import read

    import xfit

    if args.smoke:
        args.stride, args.noise, args.qmax, args.kinds, args.starts, args.steps = 40, "0.001", "8", "total", 4, 20
    frames = load_frames(args.stride)
    reference = read(CHD / "chd_reference.xyz")
    options = dict(
        prior="nmm_chd_dt",  # this script measures the refinement path (posterior: benchmarks/posterior.py)
        free_pairs=[(0, 5)],
        n_starts=args.starts,
        steps=args.steps,
        final_restraint_weight=args.final_restraint_weight,
    )
    options_shown = {k: v for k, v in options.items() if k != "free_pairs"} | {"free_pairs": "C1-C6"}
    header = run_header() | {"frames": len(frames), "options": options_shown}
    print(f"# {header['date']}  {header['device']} ({header['cpu_count']} CPUs)  {len(frames)} frames  {options}")
    print(
        f"{'kind':>34} {'noise':>6} {'qmax':>4} {'frames':>7} {'n':>3} {'med C-RMSD':>10} {'C<=0.1':>6} "
        f"{'med all':>8} {'C1C6 err':>8} {'chi2_red':>8} {'s/retr':>7} {'latency':>8}"
    )
    configs = []
    for kind in args.kinds.split(","):
        q_maxes = args.qmax if kind == "total" else args.difference_qmax
        for q_max in (float(v) for v in q_maxes.split(",")):
            for noise in (float(v) for v in args.noise.split(",")):
                q = np.linspace(0.5, q_max, 76)
                pattern_kind = "total" if kind == "total" else "percent_difference"
                patterns = simulate(frames, reference, q, noise, pattern_kind, seed=0)
                opts = options | ({"fraction": 1.0} if kind.endswith("known_fraction") else {})
                xfit.retrieve(patterns[0], reference, **opts)  # compile the single-pattern shape
                t0 = time.perf_counter()
                xfit.retrieve(patterns[0], reference, **opts)
                latency = time.perf_counter() - t0
                xfit.retrieve(patterns, reference, **opts)  # compile the batched shape
                t0 = time.perf_counter()
                results = xfit.retrieve(patterns, reference, **opts)
                per_retrieval = (time.perf_counter() - t0) / len(patterns)
                rows = evaluate(results, frames)
                config = {
                    "kind": kind,
                    "noise": noise,
                    "q_max": q_max,
                    "seconds_per_retrieval_batched": per_retrieval,
                    "latency_single_s": latency,
                    "rows": rows,
                }
                for which in ("closed", "opened"):
                    s = summarise(rows, which)
                    config[which] = s
                    if s is None:
                        continue
                    print(
                        f"{kind:>34} {noise:>6.3g} {q_max:>4g} {which:>7} {s['n']:>3} "
                        f"{s['median_rmsd_carbon']:>10.3f} {s['fraction_carbon_le_0.10']:>6.0%} "
                        f"{s['median_rmsd_all']:>8.3f} {s['median_c1c6_error']:>8.3f} "
                        f"{s['median_chi2_reduced']:>8.2f} {per_retrieval:>7.3f} {latency:>8.3f}",
                        flush=True,
                    )
                configs.append(config)
    write_json(args.json, header | {"configs": configs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
