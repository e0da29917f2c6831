"""``xfit pool``: build a structure pool (HDF5) with a sampler, or summarise one (``xfit pool info``)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from xfit.cli._common import Q_HELP, SCHEDULER_HELP, dask_client, pair, parse_q, value_range


def run(args) -> int:
    from xfit.chem import _pool

    if args.target == "info":
        if args.file is None:
            raise ValueError("usage: xfit pool info FILE.h5")
        return _pool_info(args)
    if args.file is not None:
        raise ValueError(f"unexpected argument {str(args.file)!r}; the output file goes after -o")
    if args.output is None:
        raise ValueError("give the pool file with -o FILE.h5")
    spec = _pool.PoolSpec(
        molecule=args.target,
        method=args.method,
        n=args.n,
        q=(float(args.q[0]), float(args.q[-1]), len(args.q)),
        seed=args.seed,
        temperature=args.temperature,
        forcefield=args.forcefield,
        kind=args.kind,
        chunk=args.chunk,
        coordinate=args.coordinate,
        coordinate_range=args.range,
        charge=args.charge,
        multiplicity=args.multiplicity,
        duration=args.duration,
    )
    from tqdm.auto import tqdm

    surface = ""
    if spec.method == "excited":
        multiplicity = spec.multiplicity or "lowest open-shell"
        surface = f" on charge {spec.charge}, multiplicity {multiplicity}, {spec.duration:g} fs per trajectory,"
    print(
        f"pool: {spec.molecule}, {spec.method}, {spec.n} structures, T = {spec.temperature:g} K,{surface} "
        f"{spec.forcefield}, q = {spec.q[0]:g}..{spec.q[1]:g} 1/A ({spec.q[2]} points), seed {spec.seed} -> "
        f"{args.output}"
    )
    bar = tqdm(total=spec.n, unit="structure", unit_scale=True, desc="pool", disable=None)

    def progress(done, total):
        bar.update(done - bar.n)

    try:
        with dask_client(args.scheduler) as client:
            path = _pool.build_pool(
                args.output,
                spec,
                overwrite=args.overwrite,
                progress=progress,
                prepare_only=args.prepare_only,
                client=client,
            )
    finally:
        bar.close()
    if args.prepare_only:
        print(
            f"prepared {path} (reference geometry{' and Hessian' if spec.method in ('wigner', 'excited') else ''}); "
            "run the same "
            "command without --prepare-only to sample it, on any machine"
        )
    else:
        print(f"wrote {path}")
    return 0


def _pool_info(args) -> int:
    from xfit import _plot
    from xfit.chem import _pool

    summary = _pool.pool_summary(args.file, pairs=args.pair or None)
    attrs = summary["attrs"]
    print(
        f"{args.file}: {attrs.get('status')} pool of {summary['n']} structures of {attrs.get('molecule')} "
        f"({attrs.get('smiles')}), {len(summary['numbers'])} atoms"
    )
    print(
        f"sampler {attrs.get('sampler')} {attrs.get('sampler_parameters')}, force field {attrs.get('forcefield')}, "
        f"T = {attrs.get('temperature_K')} K, seed {attrs.get('seed')}, xfit {attrs.get('xfit_version')}, "
        f"created {attrs.get('created')}"
    )
    q = summary["q"]
    print(f"patterns: {attrs.get('probe')} {attrs.get('kind')}, q = {q[0]:g}..{q[-1]:g} 1/A ({len(q)} points)")
    lo, hi = summary["coordinate_min"], summary["coordinate_max"]
    print("coordinate ranges (A): " + ", ".join(f"{a} {lo[k]:.2f}..{hi[k]:.2f}" for k, a in enumerate("xyz")))
    for (i, j), d in summary["distances"].items():
        print(f"distance {i}-{j}: min {d['min']:.3f}, mean {d['mean']:.3f}, max {d['max']:.3f} A")
    if args.plot:
        _plot.plot_histograms(
            summary["distances"], args.plot, title=f"{attrs.get('molecule')}: {summary['n']} structures"
        )
        print(f"wrote {args.plot}")
    return 0


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
    from xfit.chem._pool import METHODS

    p = sub.add_parser(
        "pool",
        help="build a pool of sampled structures with their patterns (HDF5), or summarise one (pool info)",
        description=textwrap.fill(
            "Sample structures of a molecule (built-in NMM, CHD, DT; any SMILES; or a structure file) at a "
            "force-field minimum: Wigner (harmonic quantum, from the GFN2-xTB or MMFF94 Hessian), Langevin MD, "
            "Metropolis MC, a restrained sweep along a reaction coordinate, or dynamics after a vertical excitation "
            "(ground-state Wigner initial conditions run on the GFN2-xTB triplet or cation surface); compute their "
            "X-ray patterns; write "
            "one HDF5 file. An interrupted run leaves a readable pool of what it finished, and the same command "
            "resumes it. 'xfit pool info FILE.h5' summarises a pool.",
            width=100,
        ),
        epilog=(
            "examples:\n"
            "  xfit pool NMM --method wigner -n 1000000 --q 0.5:8:256 --seed 0 -o nmm_wigner.h5\n"
            "  xfit pool CHD --method sweep -n 2000 --q 0.5:8:256 -o chd_sweep.h5   # C1-C6 1.5 -> 5.5 A\n"
            "  xfit pool 'C1CCOC1' --method md -n 500 --forcefield mmff -o thf_md.h5\n"
            "  xfit pool CHD --method excited -n 3000 -o chd_excited.h5   # on the triplet, 300 fs each\n"
            "  xfit pool NMM --method excited --charge 1 -n 3000 -o nmm_cation.h5   # Rydberg: the cation core\n"
            "  xfit pool info nmm_wigner.h5 --pair 0,1 --plot nmm_pool.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MOLECULE", help="NMM, CHD, DT, a SMILES string, a structure file, or 'info'")
    p.add_argument("file", nargs="?", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, default="wigner", help="sampler (default wigner)")
    p.add_argument("-n", type=int, default=10000, help="number of structures (default 10000)")
    p.add_argument("--q", type=parse_q, default=parse_q("0.5:8:256"), metavar="QMIN:QMAX:NQ", help=Q_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default 300)")
    p.add_argument("--forcefield", choices=("gfn2", "mmff"), default="gfn2", help="GFN2-xTB (default) or MMFF94")
    p.add_argument("--kind", choices=("total", "elastic", "molecular"), default="total", help="pattern kind")
    p.add_argument("--chunk", type=int, default=0, help="structures per chunk (default: 16384 Wigner, 256 others)")
    p.add_argument("--coordinate", help="sweep coordinate, distance:I,J or dihedral:I,J,K,L (built-ins have one)")
    p.add_argument("--range", type=value_range, metavar="START:STOP", help="sweep range in A or degrees")
    p.add_argument(
        "--charge", type=int, default=0, help="excited: charge of the surface the dynamics run on (default 0)"
    )
    p.add_argument(
        "--multiplicity",
        type=int,
        default=0,
        help="excited: its multiplicity 2S+1 (default: triplet for an even electron count, doublet for an odd one)",
    )
    p.add_argument("--duration", type=float, default=0.0, help="excited: fs per trajectory (default 300)")
    p.add_argument("-o", "--output", type=Path, help="pool file (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace a file that holds a different pool")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="only the force-field work (minimum, Hessian); the same command without it samples the rest, "
        "e.g. a Wigner pool on a GPU machine without RDKit or tblite",
    )
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP + "; the pool file is written here, by this process"
    )
    p.add_argument("--pair", type=pair, action="append", default=[], metavar="I,J", help="info: distances to show")
    p.add_argument("--plot", type=Path, metavar="PNG", help="info: histogram of the chosen distances")
    p.set_defaults(run=run)
