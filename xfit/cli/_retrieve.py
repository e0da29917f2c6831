"""``xfit retrieve``: structures behind pattern files or detector images, written as xyz with plots."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from xfit.cli._common import (
    FRACTION_HELP,
    SCHEDULER_HELP,
    add_cache_option,
    dask_client,
    dipole_spec,
    fraction,
    pair,
    value_range,
    vector,
    write_xyz,
)
from xfit.data._pattern import PATTERN_KINDS


def run(args) -> int:
    import xfit

    if _reads_images(args):
        patterns, p2 = _selected_images(args), []
        args.dipole = None  # each image carries it
    else:
        if (args.p2 is None) != (args.dipole is None):
            raise ValueError(
                "anisotropic retrieval needs both --p2 FILE and --dipole (bond:I,J or normal:I,J,K); for a "
                "detector image, give --detector GEOMETRY.poni"
            )
        patterns = _selected_patterns(args, args.pattern)
        p2 = [] if args.p2 is None else _selected_patterns(args, args.p2, legendre=2)
    if p2 and len(p2) != len(patterns):
        raise ValueError(f"{args.pattern} gives {len(patterns)} pattern(s) but --p2 {args.p2} gives {len(p2)}")
    atoms = xfit.read_structures(args.atoms)[0]
    reference = xfit.read_structures(args.reference)[0] if args.reference else None
    what = "image" if isinstance(patterns[0], xfit.DetectorImage) else "pattern"
    print(f"{args.pattern}: {len(patterns)} {what}(s), {patterns[0]!r}")
    if what == "image":
        d = patterns[0].detector
        print(
            f"detector: {d.shape[0]} x {d.shape[1]} pixels at {d.distance * 1e3:g} mm, lambda = "
            f"{d.wavelength_angstrom:.4g} A, q up to {d.check_q_range():.3g} 1/A"
            + ("" if patterns[0].dipole is None else f"; photoselected along dipole {patterns[0].dipole}")
        )
    if p2:
        print(f"{args.p2}: {len(p2)} P2 component(s), {p2[0]!r}; dipole {args.dipole} (jointly fitted)")
    reference_note = f"; reference: {args.reference}" if args.reference else ""
    print(f"start: {args.atoms} ({atoms.get_chemical_formula()}, {len(atoms)} atoms){reference_note}")
    # On a cluster an .h5 output is written chunk by chunk as the workers finish (a stopped run keeps its results).
    stream = args.scheduler is not None and _is_results_file(args.output)
    if stream:
        xfit.save_results([], args.output)  # an empty results file, replacing any earlier one
    with dask_client(args.scheduler) as client:
        fraction = args.fraction
        if fraction == "shared":  # pass 1: the fraction fitted per pattern; pass 2: the series' one fraction
            first = _retrieve(args, patterns + p2, atoms, reference, client, None, fraction=None)
            fraction = xfit.shared_fraction(first)
            print(f"shared excitation fraction: {fraction[0]:.4g} +- {fraction[1]:.2g} (from {len(first)} patterns)")
        results = _retrieve(args, patterns + p2, atoms, reference, client, args.output if stream else None, fraction)
    _report(results)
    _write_outputs(args, results, atoms)
    return 0


def _is_results_file(path) -> bool:
    return path is not None and path.suffix.lower() in (".h5", ".hdf5")


def _retrieve(args, patterns, atoms, reference, client, results_file, fraction):
    import xfit

    return xfit.retrieve(
        patterns,
        atoms,
        reference=reference,
        fraction=fraction,
        restraints=None if args.no_restraints else "covalent",
        free_pairs=args.free_pair,
        n_starts=args.starts,
        steps=args.steps,
        smoothness=args.smoothness,
        seed=args.seed,
        progress=len(patterns) > 1 and sys.stderr.isatty(),
        prior=None if args.no_prior else (args.prior or "auto"),
        electron_model=args.electron_model,
        dipole=args.dipole,
        client=client,
        results_file=results_file,
    )


IMAGE_ONLY = ("mask", "dataset", "pump_polarization")
"""Options that only an image retrieval takes."""
CURVE_ONLY = {"p2": "--p2", "energy_kev": "--energy-kev", "delays": "--delays"}
"""Options that an image retrieval does not take (an image has no delay axis, carries its P2 in its pixels, and an
electron image's energy is its detector's wavelength)."""


def _reads_images(args) -> bool:
    """Whether PATTERN holds detector images: --detector was given, or it is an HDF5 file that names its PONI file
    (as ``xfit pattern --detector -o image.h5`` writes)."""
    if args.detector is None and args.pattern.suffix.lower() in (".h5", ".hdf5") and args.pattern.is_file():
        import h5py

        with h5py.File(args.pattern, "r") as f:
            named = "poni" in f.attrs and any(k in f for k in ("image", "images"))
        if named:
            return True
    if args.detector is None:
        given = [f"--{name.replace('_', '-')}" for name in IMAGE_ONLY if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for detector images only; give --detector GEOMETRY.poni")
        return False
    return True


def _selected_images(args) -> list:
    """The images the options pick from the file: --index; --q-max masks the pixels beyond it."""
    import xfit

    given = [flag for name, flag in CURVE_ONLY.items() if getattr(args, name) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} cannot be used with detector images (frames without delays, their P2 in their "
            "pixels, an electron image's energy given by the PONI file's wavelength)"
        )
    pump = (0.0, 1.0, 0.0) if args.pump_polarization is None else args.pump_polarization
    images = xfit.load_images(
        args.pattern,
        args.detector,
        mask=args.mask,
        dataset=args.dataset,
        kind=args.kind,
        dipole=args.dipole,
        pump_polarization=pump,
        polarization=args.polarization,
        probe=args.probe,
    )
    if args.index is not None:
        if not -len(images) <= args.index < len(images):
            raise IndexError(f"{args.pattern} holds {len(images)} images; --index {args.index} is out of range")
        images = [images[args.index]]
    if args.q_max is not None:
        import dataclasses

        beyond = images[0].detector.q() > args.q_max
        images = [dataclasses.replace(im, mask=beyond if im.mask is None else (im.mask | beyond)) for im in images]
    return images


def _selected_patterns(args, path: Path, legendre: int | None = None) -> list:
    """The patterns the options pick from the file: --index, --delays, --q-max."""
    import xfit

    if args.energy_kev is not None and (args.probe or "electron") != "electron":
        raise ValueError("--energy-kev is for --probe electron")
    patterns = xfit.load_patterns(path, kind=args.kind, probe=args.probe, energy_kev=args.energy_kev, legendre=legendre)
    if args.index is not None:
        if not -len(patterns) <= args.index < len(patterns):
            raise IndexError(f"{path} holds {len(patterns)} patterns; --index {args.index} is out of range")
        patterns = [patterns[args.index]]
    if args.delays is not None:
        lo, hi = args.delays
        if any(p.delay is None for p in patterns):
            raise ValueError(f"{path} has no delays; --delays needs a time series")
        tolerance = 1e-9 * max(1.0, abs(lo), abs(hi))  # delays stored as 1.2000000000000002 still count as 1.2
        patterns = [p for p in patterns if lo - tolerance <= p.delay <= hi + tolerance]
        if not patterns:
            raise ValueError(f"no pattern has a delay in [{lo:g}, {hi:g}] ps")
    if args.q_max is not None:
        patterns = [p.restrict(q_max=args.q_max) for p in patterns]
    return patterns


def _report(results) -> None:
    """One line per pattern: delay, chi2_reduced, the first nuisance parameter, mode mass or candidate count."""
    used = results[0].info.get("prior")
    method = results[0].info.get("method")
    print(f"method: {method}; prior: {used or 'none (no trained prior fits this molecule and pattern, or --no-prior)'}")
    param = next(iter(results[0].parameters))
    mass = "mode mass" if method == "posterior" else "candidates"
    width = 18 if "fraction_sigma" in results[0].info else 10  # a fitted fraction with its standard deviation
    print(f"{'#':>4} {'delay/ps':>9} {'chi2_red':>9} {param:>{width}} {mass:>10}")
    for k, r in enumerate(results):
        delay = f"{r.pattern.delay:>9.3g}" if r.pattern.delay is not None else f"{'-':>9}"
        last = f"{r.modes[0]:>10.2f}" if r.modes is not None else f"{len(r.candidates):>10}"
        value = f"{r.parameters[param]:.4g}"
        if param == "fraction" and "fraction_sigma" in r.info:
            value += f" +- {r.info['fraction_sigma']:.2g}"
        print(f"{k:>4} {delay} {r.chi2_reduced:>9.3f} {value:>{width}} {last}")
    for k, r in enumerate(results):
        if "warning" in r.info:
            print(f"warning: pattern {k}: {r.info['warning']}")


def _write_outputs(args, results, atoms) -> None:
    """--samples (HDF5), -o (multi-frame xyz with the fit in each frame's info) and --plot."""
    import xfit
    from xfit import _plot

    if args.samples:
        from xfit.data._samples import save_samples

        save_samples(results, args.samples)
        print(f"wrote {args.samples} (posterior samples, modes and structures)")
    if _is_results_file(args.output):
        if args.scheduler is None:  # with one, retrieve has streamed them there already
            xfit.save_results(results, args.output)
        print(f"wrote {args.output} ({len(results)} result(s): structures, fits, uncertainties; xfit.load_results)")
    elif args.output:
        frames = []
        for r in results:
            frame = r.atoms.copy()
            frame.info = {"chi2_reduced": r.chi2_reduced, **r.parameters}
            if r.pattern.delay is not None:
                frame.info["delay_ps"] = r.pattern.delay
            frames.append(frame)
        write_xyz(args.output, frames)
        print(f"wrote {args.output} ({len(frames)} frame(s))")
    if args.plot:
        if len(results) == 1:
            results[0].plot(args.plot)
        else:
            from xfit.chem._structures import covalent_bonds

            pairs = args.track or covalent_bonds(atoms, heavy_only=True)[:6].tolist()
            _plot.plot_time_course(results, args.plot, pairs=pairs)
        print(f"wrote {args.plot}")


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
    # Long on purpose: a declarative list, one add_argument per option, read top to bottom like the --help it makes.
    r = sub.add_parser(
        "retrieve",
        help="retrieve the structure behind a scattering pattern (or a time series of them)",
        description=textwrap.fill(
            "Find the molecular structure behind a measured or simulated X-ray or electron scattering pattern, or "
            "2D detector images. By default, for molecules the shipped conformer prior covers (NMM, CHD, DT), the "
            "posterior p(structure | pattern) is sampled (IAM likelihood, nuisance parameters solved in closed "
            "form, learned prior): the heaviest mode is written, with posterior error bars, and bonds may break "
            "without being told which; --prior picks another prior (from xfit train-prior). Other molecules, or "
            "--no-prior, fall back to refinement: many starts around the given geometry (and a proposal network's "
            "candidates, where one fits) refined by gradient descent on chi^2 with covalent restraints (--free-pair "
            "lets a bond break). With --p2 and --dipole the isotropic and P2 components of a photoselected "
            "(polarised-pump) pattern are fitted jointly; with --detector, images are fitted pixel by pixel. Files "
            "with a delay axis (e.g. the LCLS NMM .mat) are retrieved in one call, one structure per delay. "
            "q = 4 pi sin(theta)/lambda in 1/Angstrom.",
            width=100,
        ),
        epilog=(
            "examples:\n"
            "  xfit retrieve examples/data/chd_traj001_t12.txt --atoms examples/data/chd.xyz -o result.xyz "
            "--plot fit.png --samples posterior.h5\n"
            "  xfit retrieve NMM_exp_dataset.mat --atoms examples/data/nmm.xyz --fraction 0.057 --delays -0.1:4 "
            "-o nmm_series.xyz --plot nmm_course.png\n"
            "  xfit retrieve iso.txt --p2 p2.txt --dipole normal:0,1,2 --atoms examples/data/chd.xyz -o result.xyz\n"
            "  xfit retrieve frames.h5 --detector geometry.poni --mask beamstop.npy --atoms examples/data/chd.xyz "
            "-o result.h5"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "pattern",
        type=Path,
        help="pattern file: text (q, value[, sigma]), .npz, .h5 or .mat; with --detector, detector image(s): one "
        "frame or a stack in .npy, .npz, .h5/.nxs, text, or EDF/CBF/TIFF (through fabio)",
    )
    r.add_argument("--atoms", type=Path, required=True, help="starting structure (and default reference), e.g. .xyz")
    r.add_argument("--reference", type=Path, help="reference (ground-state) structure for difference patterns")
    r.add_argument("--kind", choices=PATTERN_KINDS, help="override the pattern kind the file declares")
    r.add_argument("--fraction", type=fraction, help=FRACTION_HELP)
    r.add_argument("--probe", choices=("xray", "electron"), help="override the probe the file declares (xray)")
    r.add_argument(
        "--energy-kev",
        type=float,
        help="electron kinetic energy in keV (electrons; optional: without it the fitted scale absorbs gamma^2)",
    )
    r.add_argument(
        "--electron-model",
        choices=("mott-bethe", "kirkland"),
        default="mott-bethe",
        help="electron scattering factors (default mott-bethe)",
    )
    r.add_argument(
        "--free-pair",
        type=pair,
        action="append",
        default=[],
        metavar="I,J",
        help="atom pair (0-based) whose bond may break: not restrained (repeatable); e.g. 0,5 for CHD's C1-C6",
    )
    r.add_argument(
        "--p2",
        type=Path,
        metavar="FILE",
        help="anisotropic retrieval: the P2 Legendre component of the same measurement(s), same q grid, "
        "kind and delays as PATTERN (read as legendre=2), fitted jointly with it (one scale or fraction); needs "
        "--dipole",
    )
    r.add_argument(
        "--dipole",
        type=dipole_spec,
        metavar="bond:I,J|normal:I,J,K",
        help="with --p2, or with a detector image of a photoselected sample: the pump's transition dipole in the "
        "molecular frame, along atoms I -> J or normal to the plane of atoms I, J, K (0-based); it moves with the "
        "structure",
    )
    r.add_argument(
        "--detector",
        type=Path,
        metavar="GEOMETRY.poni",
        help="PATTERN holds 2D detector image(s) taken with this pyFAI geometry: retrieved pixel by pixel (photon "
        "counts, Poisson noise; NaN, negative and, for unsigned integers, the type's largest value mark invalid "
        "pixels). Not needed for an .h5 file that names its PONI file (xfit pattern --detector -o image.h5)",
    )
    r.add_argument("--mask", type=Path, metavar="FILE", help="images: pixels to exclude (nonzero = excluded, pyFAI)")
    r.add_argument("--dataset", metavar="NAME", help="images: the array's name (.npz) or path (HDF5) in PATTERN")
    r.add_argument(
        "--polarization",
        type=float,
        default=0.99,
        help="images: the X-ray beam's degree of linear polarisation (default 0.99)",
    )
    r.add_argument(
        "--pump-polarization",
        type=vector,
        metavar="X,Y,Z",
        help="images with --dipole: the pump's polarisation in the lab frame (z along the beam, x the detector's "
        "fast axis; default 0,1,0)",
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
        help="a conformer prior (folder from 'xfit train-prior', or 'conformer'): posterior sampling with it; or a "
        "proposal network (folder from 'xfit train', or nmm_chd_dt, broad): refinement seeded by it. Default: "
        "posterior sampling with the shipped conformer prior where it fits (NMM, CHD, DT), else refinement "
        "(seeded by the shipped proposal network where one fits) with a warning",
    )
    prior.add_argument(
        "--no-prior", action="store_true", help="refinement with covalent restraints alone (no learned prior)"
    )
    r.add_argument("--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP + " (not with --smoothness)")
    r.add_argument("--index", type=int, help="retrieve only this pattern of a multi-pattern file (or image of a stack)")
    r.add_argument("--delays", type=value_range, metavar="MIN:MAX", help="retrieve only delays in this range (ps)")
    add_cache_option(r)
    r.add_argument("--q-max", type=float, help="use only q <= Q_MAX (1/A) (images: the pixels up to it)")
    r.add_argument(
        "--track",
        type=pair,
        action="append",
        default=[],
        metavar="I,J",
        help="distance to follow in a time-series plot (repeatable; default: heavy-atom bonds)",
    )
    r.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the best structure(s) as (multi-frame) extended xyz; PATH.h5: the full results (xfit.load_results)",
    )
    r.add_argument(
        "--samples", type=Path, metavar="PATH.h5", help="write the posterior samples, modes and structures (HDF5)"
    )
    r.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="one pattern: data, fit, residual and structure; several: time course of chi2 and distances",
    )
    r.set_defaults(run=run)
