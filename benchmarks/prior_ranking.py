"""Could the prior rank the refined candidates better than chi^2? A post-hoc measurement, not a feature.

``xfit.retrieve`` returns its candidates ranked by chi^2 (data + restraints). Candidates whose chi^2 is within
n_sigma = 2 sqrt(2 dof) chi2_red of the best cannot be told apart by the data (the set its ``uncertainty``
calls comparable). Among them, three choices are compared by the heavy-atom RMSD to the truth:
  chi2      the lowest chi^2 (what retrieve returns);
  near_top  the candidate nearest (heavy-atom RMSD) to the prior's top-scored proposal;
  oracle    the best candidate, chosen knowing the truth (a bound, not a method).
Sets: the CHD trajectories of ../shared/reference (every --stride-th frame) and the held-out CHD and DT sweep
structures of benchmarks/prior.py (xfit's own GFN2 pools, seed 101). Total X-ray, q 0.5-8 1/A, 0.1 % noise,
32 starts x 1000 steps with the shipped prior.

    python benchmarks/prior_ranking.py
    python benchmarks/prior_ranking.py --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header  # noqa: E402
from _common import write_json  # noqa: E402
from prior import FREE, SHARED, held_out_set  # noqa: E402


def choices(results, truths, proposals, scores, reference):
    import xfit

    def atoms(p):
        a = reference.copy()
        a.positions = p
        return a

    rows = {"chi2": [], "near_top": [], "oracle": []}
    for r, t, ps, sc in zip(results, truths, proposals, scores, strict=True):
        dof = len(r.pattern.q) - len(r.parameters)
        comparable = [
            k for k in range(len(r.candidates)) if r.chi2[k] <= r.chi2[0] + 2 * np.sqrt(2 * dof) * r.chi2_reduced
        ]
        top = atoms(ps[np.argmax(sc)])
        to_truth = [xfit.rmsd(c, atoms(t), heavy_only=True) for c in r.candidates]
        to_top = [xfit.rmsd(r.candidates[k], top, heavy_only=True) for k in comparable]
        rows["chi2"].append(to_truth[0])
        rows["near_top"].append(to_truth[comparable[int(np.argmin(to_top))]])
        rows["oracle"].append(min(to_truth[k] for k in comparable))
    return {
        k: {"median": float(np.median(v)), "fraction_le_0.10": float(np.mean(np.array(v) <= 0.10))}
        for k, v in rows.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import jax
    from ase import Atoms
    from ase.io import read

    import xfit

    prior = xfit.load_prior()
    steps, n_starts = (20, 4) if args.smoke else (1000, 32)
    q = np.linspace(0.5, 8.0, 76)
    sets = {}
    chd = SHARED / "chd_trajectories"
    if chd.exists():
        frames = []
        for trajectory in ("traj001", "traj090"):
            frames += [
                read(p) for p in sorted((chd / trajectory).glob("target_*.xyz"))[:: 40 if args.smoke else args.stride]
            ]
        sets["CHD trajectories"] = ("CHD", read(chd / "chd_reference.xyz"), np.stack([f.positions for f in frames]))
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in ("CHD", "DT"):
        reference, truths = held_out_set(name, args.workdir, args.smoke)
        sets[f"{name} held-out sweep"] = (name, reference, truths[:4] if args.smoke else truths)
    header = run_header() | {"prior": prior.path}
    print(f"# {header['date']}  {header['device']}  prior {prior.path}; median heavy-atom RMSD (A), fraction <= 0.10 A")
    print(f"{'set':>22} {'n':>3} {'chi2':>13} {'near_top':>13} {'oracle':>13}")
    results = {"header": header, "sets": {}}
    for label, (name, reference, truths) in sets.items():
        patterns = [
            xfit.Pattern(q, xfit.scattering(Atoms(numbers=reference.numbers, positions=t), q)).with_noise(
                jax.random.fold_in(jax.random.key(0), k), relative=1e-3
            )
            for k, t in enumerate(truths)
        ]
        proposals, scores = prior.propose(q, np.stack([p.values for p in patterns]), "total", reference)
        out = xfit.retrieve(patterns, reference, prior=prior, free_pairs=FREE[name], steps=steps, n_starts=n_starts)
        row = choices(out, truths, proposals, scores, reference)
        results["sets"][label] = row
        cells = " ".join(f"{row[k]['median']:>6.3f} ({row[k]['fraction_le_0.10']:>4.2f})" for k in row)
        print(f"{label:>22} {len(truths):>3} {cells}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
