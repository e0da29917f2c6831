"""GPU machine: `xfit train` (its parser, options and xfit.train call) with per-step timing: set-up + compilation
(time to the first step) and the steady step time.

    python benchmarks/offline_gpu/train.py bundle/pools/main/*.h5 -o prior_out --steps 20000 --batch-size 256 \
        --width 64 --blocks 3 --max-atoms 24
"""

import json
import sys
import time

import jax
import tables  # noqa: F401  (patches xfit: see tables.py)

from xfit.cli import build_parser, train_configs
from xfit.learn import _train

args = build_parser().parse_args(["train", *sys.argv[1:]])
config, train_config = train_configs(args)
print(jax.devices(), len(args.pools), "pools", config, flush=True)
steps, stamps, t0 = train_config.steps, {}, time.perf_counter()


def progress(step, metrics):
    stamps[step] = time.perf_counter() - t0
    if step % max(1, steps // 20) == 0 or step == steps:
        print(
            f"step {step} t={stamps[step]:.1f}s rmsd={metrics['rmsd']:.4f} physics={metrics['physics']:.4g}", flush=True
        )


_train.train(
    args.pools, args.output, config=config, train_config=train_config, progress=progress, any_molecule=args.any_molecule
)
first = 50 if steps > 100 else 1  # steady rate: after the compiled step has warmed up
steady = (stamps[steps] - stamps[first]) / max(1, steps - first)
summary = {
    "output": str(args.output),
    "steps": steps,
    "first_step_s": stamps[1],
    "step_ms": 1e3 * steady,
    "examples_per_s": train_config.batch_size / steady if steady > 0 else None,
    "total_s": stamps[steps],
}
print(json.dumps(summary), flush=True)
