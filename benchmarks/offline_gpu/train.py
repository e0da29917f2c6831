"""GPU machine: `xfit train` (the same xfit.train call and options) with per-step timing: set-up + compilation
(time to the first step) and the steady step time.

    python benchmarks/offline_gpu/train.py "bundle/pools/main/*.h5" -o prior_out --steps 20000 --batch-size 256
"""

import argparse
import glob
import json
import time

import jax
import tables  # noqa: F401  (patches xfit: see tables.py)

from xfit import _prior, _train

p = argparse.ArgumentParser()
p.add_argument("pools", nargs="+")
p.add_argument("-o", "--output", required=True)
p.add_argument("--steps", type=int, required=True)
p.add_argument("--batch-size", type=int, default=256)
p.add_argument("--learning-rate", type=float, default=1e-3)
p.add_argument("--width", type=int, default=64)
p.add_argument("--blocks", type=int, default=3)
p.add_argument("--max-atoms", type=int, default=24)
p.add_argument("--hypotheses", type=int, default=8)
p.add_argument("--physics-weight", type=float, default=0.1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--encoder", default="cnn", choices=("cnn", "gru"))
p.add_argument("--any-molecule", action="store_true")
a = p.parse_args()
pools = sorted(x for g in a.pools for x in glob.glob(g))
print(jax.devices(), len(pools), "pools", flush=True)
config = _prior.PriorConfig(
    n_hypotheses=a.hypotheses, width=a.width, blocks=a.blocks, max_atoms=a.max_atoms, encoder=a.encoder
)
tc = _train.TrainConfig(
    steps=a.steps,
    batch_size=a.batch_size,
    learning_rate=a.learning_rate,
    seed=a.seed,
    physics_weight=a.physics_weight,
    checkpoint_every=10**9,
)
stamps = {}
t0 = time.perf_counter()


def progress(step, metrics):
    stamps[step] = time.perf_counter() - t0
    if step % max(1, a.steps // 20) == 0 or step == a.steps:
        print(
            f"{a.output} step {step} t={stamps[step]:.1f}s rmsd={metrics['rmsd']:.4f} physics={metrics['physics']:.4g}",
            flush=True,
        )


prior = _train.train(pools, a.output, config=config, train_config=tc, progress=progress, any_molecule=a.any_molecule)
steady = (stamps[a.steps] - stamps[min(a.steps, 50)]) / max(1, a.steps - 50)
print(
    json.dumps(
        {
            "output": a.output,
            "steps": a.steps,
            "first_step_s": stamps[1],
            "step_ms": 1e3 * steady,
            "examples_per_s": a.batch_size / steady,
            "total_s": stamps[a.steps],
        }
    ),
    flush=True,
)
