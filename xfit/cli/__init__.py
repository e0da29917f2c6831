"""The ``xfit`` command line: thin subcommands over the library.

    xfit pattern STRUCTURE [--q QMIN:QMAX:NQ] [--kind KIND] [-o OUT] [--plot PNG]
    xfit retrieve PATTERN_FILE --atoms START.xyz [--reference REF.xyz] -o result.xyz --plot fit.png
    xfit pool MOLECULE --method {wigner,md,mc,sweep} -n N --q QMIN:QMAX:NQ --seed S -o FILE.h5
    xfit pool info FILE.h5 [--pair I,J] [--plot PNG]

Run ``xfit --help`` or ``xfit SUBCOMMAND --help`` for details.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

from xfit.data._pattern import PATTERN_KINDS

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
    if args.detector:
        return _pattern_image(args, frames)
    q = args.q
    probe = {"probe": args.probe}
    if args.probe == "electron":
        if args.energy_kev is None:
            raise ValueError("--probe electron needs --energy-kev (e.g. 90 for keV UED, 3000 for MeV UED)")
        probe["energy_kev"] = args.energy_kev
    elif args.energy_kev is not None:
        raise ValueError("--energy-kev is for --probe electron")
    xray = args.probe == "xray"
    if not xray and args.kind == "inelastic":
        raise ValueError("electron inelastic scattering is not modelled; use --kind elastic")
    # Every kind is a sum of three parts, each computed once (for electrons total = elastic: no Compton term).
    atomic = xfit.scattering(frames, q, kind="atomic", **probe)
    molecular = xfit.scattering(frames, q, kind="molecular", **probe)
    inelastic = xfit.scattering(frames, q, kind="inelastic") if xray else np.zeros_like(atomic)
    parts = {"total": atomic + molecular + inelastic, "atomic": atomic, "molecular": molecular, "inelastic": inelastic}
    kind = args.kind if xray or args.kind != "total" else "elastic"
    values = {**parts, "elastic": atomic + molecular}[kind]
    patterns = [
        xfit.Pattern(q, v, kind=kind, probe=args.probe, metadata={"structure": str(args.structure), "frame": k})
        for k, v in enumerate(values)
    ]
    if args.noise is not None or args.photons is not None:
        keys = jax.random.split(jax.random.key(args.seed), len(patterns))
        patterns = [
            p.with_noise(k, relative=args.noise, photons=args.photons) for p, k in zip(patterns, keys, strict=True)
        ]

    formula = frames[0].get_chemical_formula()
    units = "electron units" if args.probe == "xray" else f"A^2, {args.energy_kev:g} keV electrons"
    print(f"{args.structure}: {formula}, {len(frames[0])} atoms, {len(frames)} frame(s)")
    print(f"q = {q[0]:g}..{q[-1]:g} 1/A in {len(q)} points; kind = {kind} ({args.probe}, IAM, {units})")
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
        probe_name = "X-ray" if args.probe == "xray" else f"electron ({args.energy_kev:g} keV)"
        _plot.plot_scattering(q, parts, labels, f"{formula}: IAM {probe_name} scattering", args.plot)
        print(f"wrote {args.plot}")
    return 0


def _pattern_image(args, frames) -> int:
    import jax

    from xfit import _plot
    from xfit.physics import _detector

    if args.probe != "xray":
        raise ValueError("--detector images are X-ray images; drop --probe electron")
    detector = _detector.Detector.from_poni(args.detector, polarization=args.polarization)
    dipole = None if args.dipole is None else np.array([float(v) for v in args.dipole.split(",")])
    key = jax.random.key(args.seed) if args.photons is not None else None
    image = _detector.simulate_image(frames[0], detector, dipole=dipole, photons=args.photons, key=key)
    pattern = _detector.radial_average(image, detector, n_bins=args.bins)
    print(
        f"{args.structure}: {frames[0].get_chemical_formula()} on a {detector.shape[0]} x {detector.shape[1]} "
        f"detector at {detector.distance * 1e3:g} mm, lambda = {detector.wavelength_angstrom:.4g} A, "
        f"q = {detector.q().min():.3g}..{detector.q().max():.3g} 1/A"
        + ("" if dipole is None else f", photoselected along dipole {args.dipole}")
    )
    if args.output:
        path = Path(args.output)
        if path.suffix.lower() == ".npy":
            from xfit._io import atomic_path

            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, image)
        else:
            import h5py

            from xfit._io import atomic_path

            with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
                f["image"] = image
                f["q"] = detector.q()
                f.attrs["poni"] = str(args.detector)
        print(f"wrote {path}")
    if args.plot:
        _plot.plot_image(image, detector, pattern, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _pair(text: str) -> tuple[int, int]:
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an atom pair I,J (0-based indices), got {text!r}") from None
    return i, j


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    return lo, hi


def _write_xyz(path: Path, frames) -> None:
    """Multi-frame extended xyz, written atomically (never a half-written file)."""
    from ase.io import write

    from xfit._io import atomic_path

    with atomic_path(path) as tmp:
        write(tmp, frames, format="extxyz")


def _cmd_retrieve(args) -> int:
    import xfit
    from xfit import _plot

    patterns = xfit.load_patterns(args.pattern, kind=args.kind)
    if args.index is not None:
        if not -len(patterns) <= args.index < len(patterns):
            raise IndexError(f"{args.pattern} holds {len(patterns)} patterns; --index {args.index} is out of range")
        patterns = [patterns[args.index]]
    if args.delays is not None:
        lo, hi = args.delays
        if any(p.delay is None for p in patterns):
            raise ValueError(f"{args.pattern} has no delays; --delays needs a time series")
        tolerance = 1e-9 * max(1.0, abs(lo), abs(hi))  # delays stored as 1.2000000000000002 still count as 1.2
        patterns = [p for p in patterns if lo - tolerance <= p.delay <= hi + tolerance]
        if not patterns:
            raise ValueError(f"no pattern has a delay in [{lo:g}, {hi:g}] ps")
    if args.q_max is not None:
        patterns = [p.restrict(q_max=args.q_max) for p in patterns]
    atoms = xfit.read_structures(args.atoms)[0]
    reference = xfit.read_structures(args.reference)[0] if args.reference else None
    print(f"{args.pattern}: {len(patterns)} pattern(s), {patterns[0]!r}")
    reference_note = f"; reference: {args.reference}" if args.reference else ""
    print(f"start: {args.atoms} ({atoms.get_chemical_formula()}, {len(atoms)} atoms){reference_note}")
    results = xfit.retrieve(
        patterns,
        atoms,
        reference=reference,
        fraction=args.fraction,
        restraints=None if args.no_restraints else "covalent",
        free_pairs=args.free_pair,
        n_starts=args.starts,
        steps=args.steps,
        smoothness=args.smoothness,
        seed=args.seed,
        progress=len(patterns) > 1 and sys.stderr.isatty(),
        prior=None if args.no_prior else (args.prior or "auto"),
    )
    used = results[0].info.get("prior")
    print(f"prior: {used}" if used else "prior: none (no trained prior fits this molecule and pattern, or --no-prior)")
    param = next(iter(results[0].parameters))
    print(f"{'#':>4} {'delay/ps':>9} {'chi2_red':>9} {param:>10} {'candidates':>10}")
    for k, r in enumerate(results):
        delay = f"{r.pattern.delay:>9.3g}" if r.pattern.delay is not None else f"{'-':>9}"
        print(f"{k:>4} {delay} {r.chi2_reduced:>9.3f} {r.parameters[param]:>10.4g} {len(r.candidates):>10}")
    if args.output:
        frames = []
        for r in results:
            frame = r.atoms.copy()
            frame.info = {"chi2_reduced": r.chi2_reduced, **r.parameters}
            if r.pattern.delay is not None:
                frame.info["delay_ps"] = r.pattern.delay
            frames.append(frame)
        _write_xyz(args.output, frames)
        print(f"wrote {args.output} ({len(frames)} frame(s))")
    if args.plot:
        if len(results) == 1:
            results[0].plot(args.plot)
        else:
            from xfit.chem._structures import covalent_bonds

            pairs = args.track or covalent_bonds(atoms, heavy_only=True)[:6].tolist()
            _plot.plot_time_course(results, args.plot, pairs=pairs)
        print(f"wrote {args.plot}")
    return 0


def _cmd_pool(args) -> int:
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
    )
    from tqdm.auto import tqdm

    print(
        f"pool: {spec.molecule}, {spec.method}, {spec.n} structures, T = {spec.temperature:g} K, {spec.forcefield}, "
        f"q = {spec.q[0]:g}..{spec.q[1]:g} 1/A ({spec.q[2]} points), seed {spec.seed} -> {args.output}"
    )
    bar = tqdm(total=spec.n, unit="structure", unit_scale=True, desc="pool", disable=None)

    def progress(done, total):
        bar.update(done - bar.n)

    try:
        path = _pool.build_pool(
            args.output, spec, overwrite=args.overwrite, progress=progress, prepare_only=args.prepare_only
        )
    finally:
        bar.close()
    if args.prepare_only:
        print(
            f"prepared {path} (reference geometry{' and Hessian' if spec.method == 'wigner' else ''}); run the same "
            "command without --prepare-only to sample it, on any machine"
        )
    else:
        print(f"wrote {path}")
    return 0


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
    p.add_argument("--probe", choices=("xray", "electron"), default="xray", help="X-rays (default) or electrons")
    p.add_argument("--energy-kev", type=float, help="electron kinetic energy in keV (with --probe electron)")
    p.add_argument(
        "--detector",
        type=Path,
        metavar="GEOMETRY.poni",
        help="simulate a 2D detector image for this pyFAI PONI geometry, and plot it with its radial average",
    )
    p.add_argument("--dipole", metavar="X,Y,Z", help="with --detector: photoselect along this transition dipole")
    p.add_argument("--polarization", type=float, default=0.99, help="with --detector: degree of linear polarisation")
    p.add_argument("--bins", type=int, default=200, help="with --detector: q bins of the radial average")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, metavar="REL", help="add Gaussian noise of REL x I (e.g. 0.001)")
    noise.add_argument("--photons", type=float, metavar="N", help="add Poisson noise at N photons per pattern")
    p.add_argument("--seed", type=int, default=0, help="random seed for the noise (default 0)")
    p.set_defaults(run=_cmd_pattern)

    r = sub.add_parser(
        "retrieve",
        help="retrieve the structure behind a scattering pattern (or a time series of them)",
        description=textwrap.fill(
            "Fit a molecular structure to a measured or simulated X-ray scattering pattern: many starts around the "
            "given geometry are refined together by gradient descent on chi^2 (IAM model, nuisance parameters "
            "solved in closed form, covalent restraints), ranked by chi^2, and the best is written with "
            "Gauss-Newton error bars. Files with a delay axis (e.g. the LCLS NMM .mat) are retrieved in one call, "
            "one structure per delay. q = 4 pi sin(theta)/lambda in 1/Angstrom.",
            width=100,
        ),
        epilog=(
            "examples:\n"
            "  xfit retrieve examples/data/chd_frame.txt --atoms examples/data/chd.xyz --free-pair 0,5 "
            "-o result.xyz --plot fit.png\n"
            "  xfit retrieve NMM_exp_dataset.mat --atoms examples/data/nmm.xyz --fraction 0.057 --delays -0.1:4 "
            "-o nmm_series.xyz --plot nmm_course.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("pattern", type=Path, help="pattern file: text (q, value[, sigma]), .npz, .h5 or .mat")
    r.add_argument("--atoms", type=Path, required=True, help="starting structure (and default reference), e.g. .xyz")
    r.add_argument("--reference", type=Path, help="reference (ground-state) structure for difference patterns")
    r.add_argument("--kind", choices=PATTERN_KINDS, help="override the pattern kind the file declares")
    r.add_argument("--fraction", type=float, help="excitation fraction of difference patterns (default: fit it)")
    r.add_argument(
        "--free-pair",
        type=_pair,
        action="append",
        default=[],
        metavar="I,J",
        help="atom pair (0-based) whose bond may break: not restrained (repeatable); e.g. 0,5 for CHD's C1-C6",
    )
    r.add_argument("--no-restraints", action="store_true", help="fit without covalent-geometry restraints")
    r.add_argument("--starts", type=int, default=32, help="starts per pattern (default 32)")
    r.add_argument("--steps", type=int, default=1000, help="optimisation steps (default 1000)")
    r.add_argument("--smoothness", type=float, default=0.0, help="couple neighbouring delays (chi^2 per A^2)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    prior = r.add_mutually_exclusive_group()
    prior.add_argument(
        "--prior",
        metavar="FOLDER",
        help="prior folder from 'xfit train', or a shipped prior by name: nmm_chd_dt, broad (default: the NMM/CHD/DT "
        "prior that fits the molecule)",
    )
    prior.add_argument("--no-prior", action="store_true", help="do not add the learned prior's proposals as starts")
    r.add_argument("--index", type=int, help="retrieve only this pattern of a multi-pattern file")
    r.add_argument("--delays", type=_range, metavar="MIN:MAX", help="retrieve only delays in this range (ps)")
    r.add_argument("--q-max", type=float, help="use only q <= Q_MAX (1/A)")
    r.add_argument(
        "--track",
        type=_pair,
        action="append",
        default=[],
        metavar="I,J",
        help="distance to follow in a time-series plot (repeatable; default: heavy-atom bonds)",
    )
    r.add_argument("-o", "--output", type=Path, help="write the best structure(s) as (multi-frame) extended xyz")
    r.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="one pattern: data, fit, residual and structure; several: time course of chi2 and distances",
    )
    r.set_defaults(run=_cmd_retrieve)

    from xfit.chem._pool import METHODS

    p = sub.add_parser(
        "pool",
        help="build a pool of sampled structures with their patterns (HDF5), or summarise one (pool info)",
        description=textwrap.fill(
            "Sample structures of a molecule (built-in NMM, CHD, DT; any SMILES; or a structure file) at a "
            "force-field minimum: Wigner (harmonic quantum, from the GFN2-xTB or MMFF94 Hessian), Langevin MD, "
            "Metropolis MC, or a restrained sweep along a reaction coordinate; compute their X-ray patterns; write "
            "one HDF5 file. An interrupted run leaves a readable pool of what it finished, and the same command "
            "resumes it. 'xfit pool info FILE.h5' summarises a pool.",
            width=100,
        ),
        epilog=(
            "examples:\n"
            "  xfit pool NMM --method wigner -n 1000000 --q 0.5:8:256 --seed 0 -o nmm_wigner.h5\n"
            "  xfit pool CHD --method sweep -n 2000 --q 0.5:8:256 -o chd_sweep.h5   # C1-C6 1.5 -> 5.5 A\n"
            "  xfit pool 'C1CCOC1' --method md -n 500 --forcefield mmff -o thf_md.h5\n"
            "  xfit pool info nmm_wigner.h5 --pair 0,1 --plot nmm_pool.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MOLECULE", help="NMM, CHD, DT, a SMILES string, a structure file, or 'info'")
    p.add_argument("file", nargs="?", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, default="wigner", help="sampler (default wigner)")
    p.add_argument("-n", type=int, default=10000, help="number of structures (default 10000)")
    p.add_argument("--q", type=parse_q, default=parse_q("0.5:8:256"), metavar="QMIN:QMAX:NQ", help=_Q_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default 300)")
    p.add_argument("--forcefield", choices=("gfn2", "mmff"), default="gfn2", help="GFN2-xTB (default) or MMFF94")
    p.add_argument("--kind", choices=("total", "elastic", "molecular"), default="total", help="pattern kind")
    p.add_argument("--chunk", type=int, default=0, help="structures per chunk (default: 16384 Wigner, 256 others)")
    p.add_argument("--coordinate", help="sweep coordinate, distance:I,J or dihedral:I,J,K,L (built-ins have one)")
    p.add_argument("--range", type=_range, metavar="START:STOP", help="sweep range in A or degrees")
    p.add_argument("-o", "--output", type=Path, help="pool file (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace a file that holds a different pool")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="only the force-field work (minimum, Hessian); the same command without it samples the rest, "
        "e.g. a Wigner pool on a GPU machine without RDKit or tblite",
    )
    p.add_argument("--pair", type=_pair, action="append", default=[], metavar="I,J", help="info: distances to show")
    p.add_argument("--plot", type=Path, metavar="PNG", help="info: histogram of the chosen distances")
    p.set_defaults(run=_cmd_pool)

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
    t.set_defaults(run=_cmd_train)
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
