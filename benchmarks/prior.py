"""The learned prior against mode collapse: four ways to get a structure from a pattern, on data no one trained on.

Questions and how each is measured (total X-ray patterns, q = 0.5-8 1/A in 76 points, 0.1 % Gaussian noise):

1. Held-out pool structures far from the mean. xfit builds fresh pools with seeds the training never used (CHD and
   DT reaction sweeps, NMM MD at 1000 K, GFN2-xTB); the half of each farthest from the ground state (heavy-atom
   RMSD) is kept. Four methods:
   (a) baseline built like the original project: one network per molecule, pattern -> flat Cartesian vector, one
       output, unaligned coordinate MSE, trained here on the same pools for --baseline-steps steps;
   (b) the prior alone (its top-scored hypothesis; best-of-K also shown);
   (c) refinement alone from the ground state (``retrieve(prior=None)``);
   (d) prior + refinement (``retrieve``, the default).
   Reported: success rate (heavy-atom RMSD <= 0.1 A), median heavy-atom RMSD, the spread of the predicted reaction
   coordinate over the spread of the true one (collapse -> 0), and their correlation. Reaction coordinates: CHD
   C1-C6, DT S-S, NMM the C-N-C-C ring-methyl torsion.
2. The CHD trajectories of ../shared/reference/chd_trajectories, every --stride-th frame, each retrieved from the
   ground state (chd_reference) with C1-C6 free: median carbon RMSD and fraction <= 0.10 A (targets 0.05 A and
   90 %), with and without the prior.
3. The measured NMM time series (percent difference, f = 5.7 %) re-fitted with the prior: chi2_reduced per delay
   against the stated errors, and the torsion time course, with and without it.
4. Training throughput (from the prior's metadata) and inference latency.
5. Molecules the broad prior (xfit/weights/broad, 32 molecules from SMILES) never saw: NMM, CHD and DT (the
   held-out structures of 1.) and three more (MMFF MD at 1000 K, seed 101, the farther half): success, median
   heavy-atom and all-atom RMSD for refinement alone, the broad prior alone, broad prior + refinement, and, for
   NMM/CHD/DT, the molecule-specific prior + refinement.

    python benchmarks/prior.py --pools POOL_DIR     # POOL_DIR from xfit/weights/make_pools.sh (baseline training)
    python benchmarks/prior.py --smoke              # seconds: what the test suite runs
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

SHARED = ROOT.parent / "shared" / "reference"
COORDINATES = {"CHD": ("distance", (0, 5)), "DT": ("distance", (3, 4)), "NMM": ("dihedral", (0, 1, 2, 3))}
HELD_OUT = {  # sampler, n, extra PoolSpec fields: seeds 101+ never appear in make_pools.sh
    "CHD": ("sweep", 64, {"temperature": 800, "coordinate_range": (1.45, 6.0)}),
    "DT": ("sweep", 64, {"temperature": 800, "coordinate_range": (2.0, 4.6)}),
    "NMM": ("md", 64, {"temperature": 1000}),
}
FREE = {"CHD": [(0, 5)], "DT": [(3, 4)], "NMM": []}
UNSEEN = {  # name -> SMILES: none is in xfit/weights/make_broad_pools.sh (checked at run time by bond graph)
    "NMM": "NMM",
    "CHD": "CHD",
    "DT": "DT",
    "1,4-thioxane": "C1CSCCO1",
    "N-methylpyrrolidine": "CN1CCCC1",
    "cyclopentanone": "O=C1CCCC1",
}
SECTIONS = ("held_out", "chd", "nmm", "speed", "unseen")


def coordinate(name, positions):
    import xfit

    kind, idx = COORDINATES[name]
    if kind == "distance":
        return np.linalg.norm(positions[..., idx[0], :] - positions[..., idx[1], :], axis=-1)
    return np.abs(xfit.dihedral(positions, *idx))


def held_out_set(name, workdir: Path, smoke: bool):
    import xfit

    method, n, extra = HELD_OUT[name]
    if smoke:  # MMFF cannot break bonds: a smoke run samples thermal MD instead of the sweeps
        method, n, extra = "md", 8, {"temperature": 1000}
    spec = xfit.PoolSpec(
        name, method, n, (0.5, 8.0, 76), seed=101, chunk=n, forcefield="mmff" if smoke else "gfn2", **extra
    )
    path = xfit.build_pool(workdir / f"heldout_{name.lower()}_{method}{'_smoke' if smoke else ''}.h5", spec)
    import h5py

    with h5py.File(path, "r") as f:
        x, ref, numbers = f["positions"][()].astype(np.float64), f["reference_positions"][()], f["numbers"][()]
    from ase import Atoms

    reference = Atoms(numbers=numbers, positions=ref)
    far = [xfit.rmsd(Atoms(numbers=numbers, positions=p), reference, heavy_only=True) for p in x]
    keep = np.argsort(far)[len(far) // 2 :]
    return reference, x[keep]


def unseen_set(name, smiles, workdir: Path, n: int, smoke: bool):
    """Far-from-minimum structures of a molecule: the held-out set of 1. for NMM/CHD/DT, else MMFF MD at 1000 K."""
    import h5py
    from ase import Atoms

    import xfit

    if name in HELD_OUT:
        reference, truths = held_out_set(name, workdir, smoke)
        return reference, truths[-n:]
    spec = xfit.PoolSpec(
        smiles, "md", 2 * n, (0.5, 8.0, 76), seed=101, chunk=2 * n, temperature=1000, forcefield="mmff"
    )
    path = xfit.build_pool(workdir / f"unseen_{name.replace(',', '').lower()}_md{2 * n}.h5", spec)
    with h5py.File(path, "r") as f:
        x, ref, numbers = f["positions"][()].astype(np.float64), f["reference_positions"][()], f["numbers"][()]
    reference = Atoms(numbers=numbers, positions=ref)
    far = [xfit.rmsd(Atoms(numbers=numbers, positions=p), reference, heavy_only=True) for p in x]
    return reference, x[np.argsort(far)[n:]]


def score(name, reference, truths, predicted):
    import xfit

    def atoms(p):
        a = reference.copy()
        a.positions = p
        return a

    heavy = np.array([xfit.rmsd(atoms(p), atoms(t), heavy_only=True) for p, t in zip(predicted, truths, strict=True)])
    every = np.array([xfit.rmsd(atoms(p), atoms(t)) for p, t in zip(predicted, truths, strict=True)])
    out = {
        "success": float(np.mean(heavy <= 0.1)),
        "median_heavy_rmsd": float(np.median(heavy)),
        "median_all_rmsd": float(np.median(every)),
    }
    if name in COORDINATES:
        rc_true, rc_pred = coordinate(name, truths), coordinate(name, predicted)
        out["spread_ratio"] = float(np.std(rc_pred) / np.std(rc_true))
        out["correlation"] = float(np.corrcoef(rc_true, rc_pred)[0, 1]) if np.std(rc_pred) > 1e-9 else 0.0
    return out


def train_baseline(name, pools: Path, workdir: Path, steps: int, smoke: bool):
    """The original project's design, trained on this molecule's pools (see module docstring)."""
    import xfit

    out = workdir / f"baseline_{name.lower()}_{steps}"
    if (out / "prior.json").is_file():
        return xfit.load_prior(out)
    paths = sorted(pools.glob(f"{name.lower()}_*.h5"))
    if not paths:
        raise FileNotFoundError(f"no {name} pools in {pools} (run xfit/weights/make_pools.sh)")
    config = xfit.PriorConfig(n_hypotheses=1, decoder="mlp", max_atoms=24, width=48, blocks=2)
    train = xfit.TrainConfig(steps=steps, loss="coordinates", physics_weight=0.0, batch_size=16 if smoke else 64)
    return xfit.train(paths, out, config=config, train_config=train)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", type=Path, help="prior folder (default: the shipped one)")
    parser.add_argument("--pools", type=Path, help="training pools (for the baseline); default: skip the baseline")
    parser.add_argument("--baseline-steps", type=int, default=3000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--stride", type=int, default=2, help="every STRIDE-th CHD trajectory frame")
    parser.add_argument("--steps", type=int, default=1000, help="refinement steps")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, MMFF held-out pools")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--broad", type=Path, help="broad prior folder for 5. (default: the shipped one)")
    parser.add_argument("--unseen-n", type=int, default=16, help="structures per molecule in 5.")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)

    import jax
    from ase import Atoms
    from ase.io import read

    import xfit
    from xfit.learn._proposal import graph_key

    prior = xfit.load_prior(args.prior)
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps = 20 if args.smoke else args.steps
    header = run_header() | {"prior": prior.path, "refinement_steps": steps}
    print(f"# {header['date']}  {header['device']} ({header['cpu_count']} CPUs)  prior {prior.path}")
    q = np.linspace(0.5, 8.0, 76)
    results = {"header": header, "held_out": {}, "chd": {}, "nmm": {}, "speed": {}}

    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        parser.error(f"unknown sections {sorted(sections - set(SECTIONS))}")
    if "held_out" in sections:
        # 1. Held-out pool structures far from the mean.
        print(f"\n{'molecule':>8} {'method':>22} {'n':>3} {'success':>7} {'median':>7} {'spread':>7} {'corr':>6}")
        # A smoke run goes through every code path once: one molecule is enough (the others differ in data only).
        for name in ("CHD",) if args.smoke else ("CHD", "DT", "NMM"):
            reference, truths = held_out_set(name, args.workdir, args.smoke)
            numbers = reference.numbers
            patterns = []
            for k, t in enumerate(truths):
                key = jax.random.fold_in(jax.random.key(7), k)
                structure = Atoms(numbers=numbers, positions=t)
                patterns.append(xfit.Pattern(q, xfit.scattering(structure, q)).with_noise(key, relative=1e-3))
            y = np.stack([p.values for p in patterns])
            methods = {}
            if args.pools:
                baseline = train_baseline(
                    name, args.pools, args.workdir, 10 if args.smoke else args.baseline_steps, args.smoke
                )
                methods["(a) baseline (original)"] = baseline.propose(q, y, "total", reference)[0][:, 0]
            proposals, scores = prior.propose(q, y, "total", reference)
            top = np.argmax(scores, axis=-1)
            methods["(b) prior alone, top"] = proposals[np.arange(len(y)), top]
            best = [
                np.argmin(
                    [
                        xfit.rmsd(
                            Atoms(numbers=numbers, positions=p), Atoms(numbers=numbers, positions=t), heavy_only=True
                        )
                        for p in ps
                    ]
                )
                for ps, t in zip(proposals, truths, strict=True)
            ]
            methods["    prior best of K"] = proposals[np.arange(len(y)), best]
            opts = dict(free_pairs=FREE[name], steps=steps, n_starts=4 if args.smoke else 32)
            methods["(c) refinement alone"] = np.stack(
                [r.atoms.positions for r in xfit.retrieve(patterns, reference, prior=None, **opts)]
            )
            methods["(d) prior + refinement"] = np.stack(
                [r.atoms.positions for r in xfit.retrieve(patterns, reference, prior=prior, **opts)]
            )
            results["held_out"][name] = {}
            for method, predicted in methods.items():
                s = score(name, reference, truths, predicted)
                results["held_out"][name][method.strip()] = s
                print(
                    f"{name:>8} {method:>22} {len(truths):>3} {s['success']:>7.2f} {s['median_heavy_rmsd']:>7.3f} "
                    f"{s['spread_ratio']:>7.2f} {s['correlation']:>6.2f}"
                )

    if "chd" in sections:
        # 2. CHD trajectories.
        chd_dir = SHARED / "chd_trajectories"
        if chd_dir.exists():
            frames = []
            for trajectory in ("traj001", "traj090"):
                paths = sorted((chd_dir / trajectory).glob("target_*.xyz"))
                frames += [read(p) for p in paths[:: 40 if args.smoke else args.stride]]
            reference = read(chd_dir / "chd_reference.xyz")
            patterns = [
                xfit.Pattern(q, xfit.scattering(t, q)).with_noise(
                    jax.random.fold_in(jax.random.key(0), k), relative=1e-3
                )
                for k, t in enumerate(frames)
            ]
            opened = np.array([t.get_distance(0, 5) > 2.3 for t in frames])
            print(f"\nCHD trajectories: {len(frames)} frames ({opened.sum()} ring-opened, C1-C6 > 2.3 A)")
            print(
                f"{'method':>18} {'frames':>7} {'median C-RMSD':>13} {'<= 0.10 A':>9} {'C1-C6 err':>9} {'s/frame':>8}"
            )
            for label, use in (("refinement alone", None), ("prior + refinement", prior)):
                t0 = time.perf_counter()
                out = xfit.retrieve(
                    patterns, reference, prior=use, free_pairs=[(0, 5)], steps=steps, n_starts=4 if args.smoke else 32
                )
                seconds = (time.perf_counter() - t0) / len(frames)
                rmsd = np.array([xfit.rmsd(r.atoms, t, heavy_only=True) for r, t in zip(out, frames, strict=True)])
                err = np.array(
                    [abs(r.atoms.get_distance(0, 5) - t.get_distance(0, 5)) for r, t in zip(out, frames, strict=True)]
                )
                results["chd"][label] = {}
                for which, sel in (("all", np.ones_like(opened)), ("closed", ~opened), ("opened", opened)):
                    if not sel.any():
                        continue
                    row = {
                        "n": int(sel.sum()),
                        "median_carbon_rmsd": float(np.median(rmsd[sel])),
                        "fraction_le_0.10": float(np.mean(rmsd[sel] <= 0.10)),
                        "median_c1c6_error": float(np.median(err[sel])),
                        "seconds_per_frame": seconds,
                    }
                    results["chd"][label][which] = row
                    print(
                        f"{label + ' ' + which:>26} {row['n']:>3} {row['median_carbon_rmsd']:>13.3f} "
                        f"{row['fraction_le_0.10']:>9.2f} {row['median_c1c6_error']:>9.3f} {seconds:>8.2f}"
                    )

    if "nmm" in sections:
        # 3. NMM measured time series.
        nmm_file = ROOT / "examples" / "data" / "nmm_experiment.mat"
        nmm = read(ROOT / "examples" / "data" / "nmm.xyz")
        series = [p for p in xfit.load_patterns(nmm_file) if p.delay >= -0.1]
        series = series[:3] if args.smoke else series
        print(f"\nNMM measured series: {len(series)} delays, f = 5.7 %")
        for label, use in (("refinement alone", None), ("prior + refinement", prior)):
            out = xfit.retrieve(series, nmm, fraction=0.057, prior=use, steps=steps, n_starts=4 if args.smoke else 32)
            chi2 = np.array([r.chi2_reduced for r in out])
            torsion = np.array([abs(xfit.dihedral(r.atoms.positions, 0, 1, 2, 3)) for r in out])
            late = np.array([r.pattern.delay > 0.5 for r in out])
            results["nmm"][label] = {
                "chi2_reduced_median": float(np.median(chi2)),
                "chi2_reduced_range": [float(chi2.min()), float(chi2.max())],
                "torsion_deg_per_delay": torsion.tolist(),
                "delays_ps": [r.pattern.delay for r in out],
            }
            late_text = f"{torsion[late].mean():.0f} +- {torsion[late].std():.0f}" if late.any() else "-"
            print(
                f"{label:>20}: chi2_red median {np.median(chi2):.2f} (range {chi2.min():.2f}-{chi2.max():.2f}); "
                f"|C-N-C-C torsion| after 0.5 ps {late_text} deg"
            )

    if "speed" in sections:
        # 4. Speed.
        reference = read(ROOT / "examples" / "data" / "chd.xyz")
        y = np.stack(
            [
                xfit.Pattern(q, xfit.scattering(reference, q)).with_noise(jax.random.key(k), relative=1e-3).values
                for k in range(16)
            ]
        )
        prior.propose(q, y[:1], "total", reference)
        t0 = time.perf_counter()
        for _ in range(5):
            prior.propose(q, y[:1], "total", reference)
        latency = (time.perf_counter() - t0) / 5
        batch = np.repeat(y, int(np.ceil(256 / len(y))), axis=0)[:256]
        prior.propose(q, batch, "total", reference)
        t0 = time.perf_counter()
        prior.propose(q, batch, "total", reference)
        rate = len(batch) / (time.perf_counter() - t0)
        results["speed"] = {
            "training_examples_per_s": prior.metadata.get("examples_per_second"),
            "inference_latency_s": latency,
            "inference_patterns_per_s_batch256": rate,
        }
        print(
            f"\nprior: trained at {prior.metadata.get('examples_per_second', 0):.0f} examples/s; inference latency "
            f"{1e3 * latency:.1f} ms per pattern, {rate:.0f} patterns/s in batches of 256"
        )
    if "unseen" in sections:
        # 5. Molecules the broad prior never saw.
        broad = xfit.load_prior(args.broad or "broad")
        results["unseen"] = {"broad_prior": broad.path}
        print(f"\nbroad prior {broad.path}: {len(broad.molecules)} training molecules")
        print(f"{'molecule':>20} {'method':>26} {'n':>3} {'success':>7} {'heavy':>7} {'all':>7}")
        unseen = {k: UNSEEN[k] for k in ("CHD", "1,4-thioxane")} if args.smoke else UNSEEN
        for name, smiles in unseen.items():
            reference, truths = unseen_set(name, smiles, args.workdir, 4 if args.smoke else args.unseen_n, args.smoke)
            if graph_key(reference) in broad.molecules:
                raise RuntimeError(f"{name} is among the broad prior's training molecules")
            patterns = [
                xfit.Pattern(q, xfit.scattering(Atoms(numbers=reference.numbers, positions=t), q)).with_noise(
                    jax.random.fold_in(jax.random.key(11), k), relative=1e-3
                )
                for k, t in enumerate(truths)
            ]
            y = np.stack([p.values for p in patterns])
            proposals, scores = broad.propose(q, y, "total", reference)
            methods = {"broad prior alone, top": proposals[np.arange(len(y)), np.argmax(scores, axis=-1)]}
            opts = dict(free_pairs=FREE.get(name, []), steps=steps, n_starts=4 if args.smoke else 32)
            uses = {"refinement alone": None, "broad prior + refinement": broad}
            if prior.fits(reference):
                uses["specific prior + refinement"] = prior
            for label, use in uses.items():
                out = xfit.retrieve(patterns, reference, prior=use, **opts)
                methods[label] = np.stack([r.atoms.positions for r in out])
            results["unseen"][name] = {}
            for method, predicted in methods.items():
                s = score(name, reference, truths, predicted)
                results["unseen"][name][method] = s
                print(
                    f"{name:>20} {method:>26} {len(truths):>3} {s['success']:>7.2f} {s['median_heavy_rmsd']:>7.3f} "
                    f"{s['median_all_rmsd']:>7.3f}"
                )

    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
