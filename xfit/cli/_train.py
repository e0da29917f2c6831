"""``xfit train``: train the proposal network (K candidate structures per pattern) on pools."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def train_configs(args):
    """(PriorConfig, TrainConfig) from parsed ``xfit train`` arguments."""
    from xfit.learn import _proposal, _train

    config = _proposal.PriorConfig(
        n_hypotheses=args.hypotheses,
        encoder=args.encoder,
        width=args.width,
        blocks=args.blocks,
        max_atoms=args.max_atoms,
    )
    train_config = _train.TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        physics_weight=args.physics_weight,
        checkpoint_every=args.checkpoint_every,
    )
    return config, train_config


def _cmd_train(args) -> int:
    from xfit.learn import _train

    config, train_config = train_configs(args)
    print(f"train: {len(args.pools)} pool(s) -> {args.output}; {config}")
    prior = _train.train(
        args.pools,
        args.output,
        config=config,
        train_config=train_config,
        progress=True,
        any_molecule=args.any_molecule,
    )
    last = prior.metadata["history"][-1] if prior.metadata["history"] else {}
    print(
        f"wrote {args.output}: molecules {', '.join(sorted(set(prior.molecules.values())))}; "
        f"last winner distance RMSD {last.get('rmsd', float('nan')):.3f} A; "
        f"{prior.metadata['examples_per_second']:.0f} examples/s"
    )
    return 0


def run(args) -> int:
    from xfit.learn import _train

    config, train_config = train_configs(args)
    print(f"train: {len(args.pools)} pool(s) -> {args.output}; {config}")
    prior = _train.train(
        args.pools,
        args.output,
        config=config,
        train_config=train_config,
        progress=True,
        any_molecule=args.any_molecule,
    )
    last = prior.metadata["history"][-1] if prior.metadata["history"] else {}
    print(
        f"wrote {args.output}: molecules {', '.join(sorted(set(prior.molecules.values())))}; "
        f"last winner distance RMSD {last.get('rmsd', float('nan')):.3f} A; "
        f"{prior.metadata['examples_per_second']:.0f} examples/s"
    )
    return 0


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
    t = sub.add_parser(
        "train",
        help="train a learned prior (Flax network proposing K structures per pattern) on pools",
        description=textwrap.fill(
            "Train the prior network on one or more pools from 'xfit pool' (total X-ray patterns): winner-take-all "
            "over K hypotheses with a distance-matrix loss invariant to rotation, reflection and equivalent-atom "
            "labels, plus a physics term (the IAM pattern of the winner against the input). Writes OUTPUT/prior.json "
            "and OUTPUT/params.msgpack at the end, and a checkpoint every --checkpoint-every steps: the same command "
            "resumes an interrupted run exactly. Use the result with 'xfit retrieve --prior OUTPUT'.",
            width=100,
        ),
        epilog="example:\n  xfit train pools/chd_*.h5 pools/dt_*.h5 -o my_prior --steps 20000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("pools", nargs="+", type=Path, metavar="POOL.h5", help="training pools")
    t.add_argument("-o", "--output", type=Path, required=True, help="folder for the prior and its checkpoint")
    t.add_argument("--steps", type=int, default=20000, help="optimisation steps (default 20000)")
    t.add_argument("--batch-size", type=int, default=64, help="patterns per step (default 64)")
    t.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentation (default 0)")
    t.add_argument("--hypotheses", type=int, default=8, help="K, candidate structures per pattern (default 8)")
    t.add_argument("--encoder", choices=("cnn", "gru"), default="cnn", help="pattern encoder (default cnn)")
    t.add_argument("--width", type=int, default=64, help="network width (default 64)")
    t.add_argument("--blocks", type=int, default=3, help="attention blocks (default 3)")
    t.add_argument("--max-atoms", type=int, default=32, help="largest molecule the network takes (default 32)")
    t.add_argument("--physics-weight", type=float, default=0.1, help="weight of the IAM consistency term")
    t.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    t.add_argument(
        "--any-molecule",
        action="store_true",
        help="mark a broad prior: it fits any molecule of its training elements up to --max-atoms, not only its "
        "training molecules (check it on unseen molecules: benchmarks/prior.py --sections unseen)",
    )
    t.set_defaults(run=run)
