"""The ``xfit`` command line: thin subcommands over the library.

    xfit pattern STRUCTURE [--q QMIN:QMAX:NQ] [--kind KIND] [-o OUT] [--plot PNG]
    xfit retrieve PATTERN_FILE --atoms START.xyz [--reference REF.xyz] -o result.xyz --plot fit.png
    xfit live WATCH_DIR --atoms START.xyz -o RESULTS.h5 [--batch N] [--once] [--serve PORT]
    xfit pool MOLECULE --method {wigner,md,mc,sweep} -n N --q QMIN:QMAX:NQ --seed S -o FILE.h5
    xfit pool info FILE.h5 [--pair I,J] [--plot PNG]

Run ``xfit --help`` or ``xfit SUBCOMMAND --help`` for details.
"""

from __future__ import annotations

import argparse
import sys

from xfit.cli import _live, _pattern, _pool, _retrieve, _train, _train_prior
from xfit.cli._common import compilation_cache
from xfit.cli._common import parse_q as parse_q
from xfit.cli._train import train_configs as train_configs

SUBCOMMANDS = (_pattern, _retrieve, _live, _pool, _train, _train_prior)
"""One module per subcommand, each with ``add_parser(subparsers)`` and ``run(args) -> int``."""


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
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "no_cache"):
            compilation_cache(disabled=args.no_cache)
        return args.run(args)
    except (ValueError, FileNotFoundError, TypeError, IndexError) as err:
        print(f"xfit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
