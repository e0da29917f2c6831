"""Pattern-encoder ablation of the learned prior: 1D CNN against a bidirectional GRU, everything else equal.

The original project planned to compare convolutional and recurrent encoders. Here both are trained with the same
network size, pools, seed, steps and augmentation on CHD pools (``--pools``: make_pools.sh's chd_*.h5), then
evaluated on the CHD trajectories of ../shared/reference (every --stride-th frame, 0.1 % noise, q 0.5-8 1/A):
the prior alone (top-scored and best of K hypotheses) and prior + refinement (32 starts). Also: training
throughput and inference rate.

    python benchmarks/prior_encoders.py --pools POOL_DIR --steps 1500
    python benchmarks/prior_encoders.py --smoke       # seconds: what the test suite runs (tiny MMFF pool)
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


def frames_and_reference(stride: int, smoke: bool, workdir: Path):
    """CHD frames to retrieve and the ground state they start from."""
    from ase.io import read

    import xfit

    chd = SHARED / "chd_trajectories"
    if chd.exists():
        frames = []
        for trajectory in ("traj001", "traj090"):
            frames += [read(p) for p in sorted((chd / trajectory).glob("target_*.xyz"))[::stride]]
        return frames, read(chd / "chd_reference.xyz")
    # Without the shared data (a bare clone): hot MMFF MD of CHD stands in for the trajectories.
    spec = xfit.PoolSpec("CHD", "md", 8, (0.5, 8.0, 76), seed=101, chunk=8, temperature=1000, forcefield="mmff")
    path = xfit.build_pool(workdir / "encoders_chd_md_frames.h5", spec)
    import h5py
    from ase import Atoms

    with h5py.File(path) as f:
        x, numbers, ref = f["positions"][()], f["numbers"][()], f["reference_positions"][()]
    return [Atoms(numbers=numbers, positions=p) for p in x], Atoms(numbers=numbers, positions=ref)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pools", type=Path, help="folder with chd_*.h5 from xfit/weights/make_pools.sh")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stride", type=int, default=3, help="every STRIDE-th CHD trajectory frame")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import jax

    import xfit

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        spec = xfit.PoolSpec("CHD", "md", 64, (0.2, 8.0, 128), seed=5, chunk=64, temperature=1000, forcefield="mmff")
        pools = [xfit.build_pool(args.workdir / "encoders_chd_smoke.h5", spec)]
        steps, batch, stride, n_starts, refine_steps = 4, 8, 40, 4, 20
    else:
        if args.pools is None:
            parser.error("--pools is required (or --smoke)")
        pools = sorted(args.pools.glob("chd_*.h5"))
        if not pools:
            parser.error(f"no chd_*.h5 pools in {args.pools} (run xfit/weights/make_pools.sh)")
        steps, batch, stride, n_starts, refine_steps = args.steps, args.batch_size, args.stride, 32, 1000
    frames, reference = frames_and_reference(stride, args.smoke, args.workdir)
    q = np.linspace(0.5, 8.0, 76)
    patterns = [
        xfit.Pattern(q, xfit.scattering(t, q)).with_noise(jax.random.fold_in(jax.random.key(0), k), relative=1e-3)
        for k, t in enumerate(frames)
    ]
    y = np.stack([p.values for p in patterns])
    opened = np.array([t.get_distance(0, 5) > 2.3 for t in frames])
    header = run_header() | {
        "steps": steps,
        "batch_size": batch,
        "frames": len(frames),
        "pools": [str(p) for p in pools],
    }
    print(f"# {header['date']}  {header['device']} ({header['cpu_count']} CPUs)  {steps} steps x {batch}, CHD pools")
    print(f"{len(frames)} frames ({opened.sum()} ring-opened); median carbon RMSD (A), fraction <= 0.10 A")
    print(
        f"{'encoder':>8} {'train ex/s':>10} {'infer pat/s':>11} {'top':>6} {'best K':>6} {'+refine':>7} "
        f"{'<=0.1':>6} {'opened':>6}"
    )
    results = {"header": header, "encoders": {}}
    for encoder in ("cnn", "gru"):
        config = xfit.PriorConfig(encoder=encoder, width=48, blocks=2, max_atoms=24, n_hypotheses=8)
        train = xfit.TrainConfig(steps=steps, batch_size=batch, seed=0, warmup=min(500, steps // 5 + 1))
        out = args.workdir / f"encoder_{encoder}_{steps}x{batch}{'_smoke' if args.smoke else ''}"
        prior = (
            xfit.load_prior(out)
            if (out / "prior.json").is_file()
            else xfit.train(pools, out, config=config, train_config=train)
        )
        prior.propose(q, y, "total", reference)  # compile for this batch shape first
        t0 = time.perf_counter()
        proposals, scores = prior.propose(q, y, "total", reference)
        rate = len(y) / (time.perf_counter() - t0)

        def rmsd(p, t):
            a = reference.copy()
            a.positions = p
            return xfit.rmsd(a, t, heavy_only=True)

        top = np.array([rmsd(ps[np.argmax(s)], t) for ps, s, t in zip(proposals, scores, frames, strict=True)])
        best = np.array([min(rmsd(p, t) for p in ps) for ps, t in zip(proposals, frames, strict=True)])
        refined = xfit.retrieve(
            patterns, reference, prior=prior, free_pairs=[(0, 5)], steps=refine_steps, n_starts=n_starts
        )
        final = np.array([xfit.rmsd(r.atoms, t, heavy_only=True) for r, t in zip(refined, frames, strict=True)])
        row = {
            "training_examples_per_s": prior.metadata["examples_per_second"],
            "inference_patterns_per_s": rate,
            "prior_top_median": float(np.median(top)),
            "prior_best_of_k_median": float(np.median(best)),
            "refined_median": float(np.median(final)),
            "refined_fraction_le_0.10": float(np.mean(final <= 0.10)),
            "refined_opened_median": float(np.median(final[opened])) if opened.any() else None,
        }
        results["encoders"][encoder] = row
        opened_text = f"{row['refined_opened_median']:>6.3f}" if opened.any() else f"{'-':>6}"
        print(
            f"{encoder:>8} {row['training_examples_per_s']:>10.0f} {rate:>11.0f} {row['prior_top_median']:>6.3f} "
            f"{row['prior_best_of_k_median']:>6.3f} {row['refined_median']:>7.3f} "
            f"{row['refined_fraction_le_0.10']:>6.2f} {opened_text}"
        )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
