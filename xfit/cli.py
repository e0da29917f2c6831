"""The ``xfit`` command line: thin subcommands over the library.

    xfit pattern STRUCTURE [--q QMIN:QMAX:NQ] [--kind KIND] [-o OUT] [--plot PNG]

Run ``xfit --help`` or ``xfit SUBCOMMAND --help`` for details.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_Q_HELP = (
    "q grid as QMIN:QMAX:NQ (NQ evenly spaced points, both ends included), in 1/Angstrom with "
    "q = 4 pi sin(theta)/lambda (theta = half the scattering angle)"
)


def parse_q(text: str) -> np.ndarray:
    """'QMIN:QMAX:NQ' -> evenly spaced q grid in 1/A."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        q_min, q_max, n_q = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--q must look like QMIN:QMAX:NQ, e.g. 0.5:8:512; got {text!r}") from None
    if not (0 <= q_min < q_max) or n_q < 2:
        raise argparse.ArgumentTypeError(f"--q needs 0 <= QMIN < QMAX and NQ >= 2; got {text!r}")
    return np.linspace(q_min, q_max, n_q)


def _cmd_pattern(args) -> int:
    import jax

    import xfit
    from xfit import _plot

    frames = xfit.read_structures(args.structure)
    q = args.q
    parts = {kind: xfit.scattering(frames, q, kind=kind) for kind in ("total", "atomic", "molecular", "inelastic")}
    values = parts["total"] if args.kind == "total" else xfit.scattering(frames, q, kind=args.kind)
    patterns = [
        xfit.Pattern(q, v, kind=args.kind, metadata={"structure": str(args.structure), "frame": k})
        for k, v in enumerate(values)
    ]
    if args.noise is not None or args.photons is not None:
        keys = jax.random.split(jax.random.key(args.seed), len(patterns))
        patterns = [
            p.with_noise(k, relative=args.noise, photons=args.photons) for p, k in zip(patterns, keys, strict=True)
        ]

    formula = frames[0].get_chemical_formula()
    print(f"{args.structure}: {formula}, {len(frames[0])} atoms, {len(frames)} frame(s)")
    print(f"q = {q[0]:g}..{q[-1]:g} 1/A in {len(q)} points; kind = {args.kind} (X-ray, IAM, electron units)")
    print(f"{'frame':>5}  {'I(q_min)':>12}  {'I(q_max)':>12}  {'max |q I_mol/I_at|':>18}")
    for k, p in enumerate(patterns[:10]):
        smax = np.max(np.abs(q * parts["molecular"][k] / parts["atomic"][k]))
        print(f"{k:>5}  {p.values[0]:>12.5g}  {p.values[-1]:>12.5g}  {smax:>18.4g}")
    if len(patterns) > 10:
        print(f"  ... {len(patterns) - 10} more frames")
    if args.output:
        xfit.save_patterns(args.output, patterns)
        print(f"wrote {args.output}")
    if args.plot:
        labels = [f"frame {k}" for k in range(len(frames))]
        _plot.plot_scattering(q, parts, labels, f"{formula}: IAM X-ray scattering", args.plot)
        print(f"wrote {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import xfit

    parser = argparse.ArgumentParser(
        prog="xfit",
        description=(
            "Molecular geometry from gas-phase X-ray scattering. Conventions: q = 4 pi sin(theta)/lambda in "
            "1/Angstrom, positions in Angstrom."
        ),
    )
    parser.add_argument("--version", action="version", version=f"xfit {xfit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "pattern",
        help="compute (and plot) the X-ray scattering pattern of a structure file",
        description=(
            "Compute the isotropic (gas-phase, orientation-averaged) X-ray scattering pattern of a molecule in the "
            "Independent Atom Model: elastic Debye scattering with Waasmaier-Kirfel form factors plus Compton "
            "scattering. Multi-frame files (e.g. a trajectory .xyz) give one pattern per frame."
        ),
        epilog="example: xfit pattern examples/data/nmm.xyz --q 0.5:8:512 --plot nmm.png -o nmm_pattern.txt",
    )
    p.add_argument("structure", type=Path, help="structure file that ASE reads (xyz, extxyz, pdb, cif, ...)")
    p.add_argument("--q", type=parse_q, default=parse_q("0.5:8:512"), metavar="QMIN:QMAX:NQ", help=_Q_HELP)
    p.add_argument(
        "--kind",
        choices=xfit.KINDS,
        default="total",
        help="which part of the scattering to write: total = elastic + Compton (default), elastic = atomic + "
        "molecular, atomic, molecular (interference term), inelastic (Compton)",
    )
    p.add_argument("-o", "--output", type=Path, help="write the pattern(s): .txt/.dat/.csv (one frame), .npz, .h5")
    p.add_argument("--plot", type=Path, metavar="PNG", help="plot I(q) and q I_mol/I_at to this image")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, metavar="REL", help="add Gaussian noise of REL x I (e.g. 0.001)")
    noise.add_argument("--photons", type=float, metavar="N", help="add Poisson noise at N photons per pattern")
    p.add_argument("--seed", type=int, default=0, help="random seed for the noise (default 0)")
    p.set_defaults(run=_cmd_pattern)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, TypeError, IndexError) as err:
        print(f"xfit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
