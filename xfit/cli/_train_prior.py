"""``xfit train-prior``: train the conformer prior (a density over conformations) on pools, resumably."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def run(args) -> int:
    from xfit.learn._conformer import ConformerConfig
    from xfit.learn._conformer_train import ConformerTrainConfig, train_conformer_prior

    config = ConformerConfig(width=args.width, components=args.components, max_atoms=args.max_atoms)
    train = ConformerTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    print(f"train-prior: {len(args.pools)} pool(s) -> {args.output}; {config}")
    prior = train_conformer_prior(args.pools, args.output, config=config, train_config=train, progress=True)
    last = prior.metadata["history"][-1] if prior.metadata["history"] else {}
    print(
        f"wrote {args.output}: molecules {', '.join(sorted(set(prior.molecules.values())))}; last denoising loss "
        f"{last.get('loss', float('nan')):.3f}; {prior.metadata['steps_per_second']:.0f} steps/s"
    )
    return 0


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
    t = sub.add_parser(
        "train-prior",
        help="train the conformer prior (denoising score model over structures) on pools, for posterior retrieval",
        description=textwrap.fill(
            "Train a conformer prior on one or more pools from 'xfit pool': a graph-conditioned density over "
            "interatomic distances (a mixture per pair), learned by denoising score matching on the pools' "
            "structures. Writes OUTPUT/conformer.json and OUTPUT/params.msgpack at the end, and a checkpoint every "
            "--checkpoint-every steps: the same command resumes an interrupted run exactly. Use the result with "
            "'xfit retrieve --prior OUTPUT'.",
            width=100,
        ),
        epilog="example:\n  xfit train-prior pools/chd_*.h5 pools/dt_*.h5 -o my_conformer_prior --steps 8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("pools", nargs="+", type=Path, metavar="POOL.h5", help="training pools")
    t.add_argument("-o", "--output", type=Path, required=True, help="folder for the prior and its checkpoint")
    t.add_argument("--steps", type=int, default=6000, help="optimisation steps (default 6000)")
    t.add_argument("--batch-size", type=int, default=128, help="structures per step (default 128)")
    t.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, batches and noise (default 0)")
    t.add_argument("--width", type=int, default=64, help="embedding width (default 64)")
    t.add_argument("--components", type=int, default=6, help="Gaussians per interatomic distance (default 6)")
    t.add_argument("--max-atoms", type=int, default=24, help="largest molecule (default 24)")
    t.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    t.set_defaults(run=run)
