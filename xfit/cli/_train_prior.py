"""``xfit train-prior``: train the conformer prior (a density over conformations) on pools, resumably."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path

MODEL_OPTIONS = ("width", "branches", "components", "max_atoms")
"""The model's options, which ``--init`` takes from the prior it starts from."""


def run(args) -> int:
    from xfit.learn._conformer import ConformerConfig
    from xfit.learn._conformer_train import ConformerTrainConfig, train_conformer_prior

    config = ConformerConfig(
        width=args.width, branches=args.branches, components=args.components, max_atoms=args.max_atoms
    )
    if args.init is not None:
        changed = [
            f"--{k.replace('_', '-')}" for k in MODEL_OPTIONS if getattr(args, k) != getattr(ConformerConfig(), k)
        ]
        if changed:
            raise ValueError(f"--init fine-tunes that prior's own model; drop {', '.join(changed)}")
        config = None
    train = ConformerTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        branch_loss_weight=args.branch_loss_weight,
    )
    resuming = (Path(args.output) / "checkpoint.msgpack").is_file()
    start = f"fine-tuning {args.init}" if args.init is not None else str(config)
    print(f"train-prior: {len(args.pools)} pool(s) -> {args.output}{' (resuming)' if resuming else ''}; {start}")
    prior = train_conformer_prior(
        args.pools, args.output, config=config, train_config=train, progress=True, init=args.init
    )
    meta = prior.metadata
    rate = meta.get("examples_per_second")
    print(
        f"wrote {args.output}: molecules {', '.join(sorted(set(prior.molecules.values())))}; final training loss "
        f"{meta['final_loss']:.4f}" + (f"; {rate:.0f} structures/s" if rate else "")
    )
    return 0


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
    from xfit.learn._conformer import ConformerConfig
    from xfit.learn._conformer_train import ConformerTrainConfig

    d = argparse.Namespace(**dataclasses.asdict(ConformerConfig()), **dataclasses.asdict(ConformerTrainConfig()))
    t = sub.add_parser(
        "train-prior",
        help="train the conformer prior (denoising score model over structures) on pools, for posterior retrieval",
        description=textwrap.fill(
            "Train a conformer prior on one or more pools from 'xfit pool': a graph-conditioned energy over "
            "interatomic distances, learned by denoising score matching on the pools' structures (every pool drawn "
            "equally often). Writes OUTPUT/conformer.json and OUTPUT/params.msgpack at the end, and "
            "OUTPUT/checkpoint.msgpack every --checkpoint-every steps: the same command resumes an interrupted run, "
            "with the same result. Use the result with 'xfit retrieve --prior OUTPUT'.",
            width=100,
        ),
        epilog="example:\n  xfit train-prior pools/chd_*.h5 pools/dt_*.h5 -o my_conformer_prior --steps 20000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("pools", nargs="+", type=Path, metavar="POOL.h5", help="training pools")
    t.add_argument("-o", "--output", type=Path, required=True, help="folder for the prior and its checkpoint")
    t.add_argument("--steps", type=int, default=d.steps, help=f"optimisation steps (default {d.steps})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"structures per step (default {d.batch_size})")
    t.add_argument(
        "--learning-rate", type=float, default=d.learning_rate, help=f"peak learning rate (default {d.learning_rate})"
    )
    t.add_argument("--seed", type=int, default=d.seed, help=f"seed of weights, batches and noise (default {d.seed})")
    t.add_argument("--width", type=int, default=d.width, help=f"pair MLP width: cost per structure (default {d.width})")
    t.add_argument(
        "--branches", type=int, default=d.branches, help=f"modes per interatomic distance (default {d.branches})"
    )
    t.add_argument(
        "--components",
        type=int,
        default=d.components,
        help="whole-molecule mixture components, each its own set of pair densities, so that distances move together "
        f"(a ring open in one, closed in another; default {d.components})",
    )
    t.add_argument(
        "--branch-loss-weight",
        type=float,
        default=d.branch_loss_weight,
        help="weight of the maximum-likelihood fit of each distance's Gaussian branches beside score matching, which "
        f"alone leaves mass at distances no pool holds (default {d.branch_loss_weight})",
    )
    t.add_argument("--max-atoms", type=int, default=d.max_atoms, help=f"largest molecule (default {d.max_atoms})")
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help=f"steps between checkpoints (default {d.checkpoint_every})",
    )
    t.add_argument(
        "--init",
        metavar="PRIOR",
        help="start from this trained prior (folder or shipped name, e.g. conformer) instead of random weights: "
        "fine-tuning on corrected or more pools, with its model (use a lower --learning-rate, e.g. 2e-4)",
    )
    t.set_defaults(run=run)
