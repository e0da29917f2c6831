"""``xfit pattern``: the forward model from the command line (curves, detector images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xfit.cli._common import Q_HELP, dipole_spec, parse_q
from xfit.physics._iam import KINDS

SM_KINDS = ("sm", "delta_sm")


def run(args) -> int:
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
    if args.legendre == 2:
        return _pattern_p2(args, frames)
    if args.kind in SM_KINDS:
        return _pattern_sm(args, frames, probe)
    if args.reference is not None or args.fraction is not None:
        raise ValueError("--reference and --fraction are for --kind delta_sm")
    # Every kind is a sum of three parts, each computed once (for electrons total = elastic: no Compton term).
    atomic = xfit.scattering(frames, q, kind="atomic", **probe)
    molecular = xfit.scattering(frames, q, kind="molecular", **probe)
    inelastic = xfit.scattering(frames, q, kind="inelastic") if xray else np.zeros_like(atomic)
    parts = {"total": atomic + molecular + inelastic, "atomic": atomic, "molecular": molecular, "inelastic": inelastic}
    kind = args.kind if xray or args.kind != "total" else "elastic"
    values = {**parts, "elastic": atomic + molecular}[kind]
    patterns = [
        xfit.Pattern(
            q,
            v,
            kind=kind,
            probe=args.probe,
            metadata={"structure": str(args.structure), "frame": k},
            energy_kev=args.energy_kev,
        )
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


def _pattern_sm(args, frames, probe: dict) -> int:
    """Electron sM = q I_mol/I_at, or Delta sM = f q (I_mol - I_mol,ref)/I_at,ref against ``--reference``, with
    noise of ``--noise`` x I on the intensities propagated (I_on and I_off for Delta sM)."""
    import jax

    import xfit
    from xfit import _plot

    if args.probe != "electron":
        raise ValueError(f"--kind {args.kind} (modified molecular scattering) needs --probe electron")
    if args.photons is not None:
        raise ValueError(f"--kind {args.kind}: use --noise (relative to I), not --photons")
    q = args.q
    if q[0] <= 0:
        raise ValueError(f"--kind {args.kind} is identically zero at q = 0; start the q range above 0")
    atomic = xfit.scattering(frames, q, kind="atomic", **probe)
    molecular = xfit.scattering(frames, q, kind="molecular", **probe)
    if args.kind == "sm":
        if args.reference is not None or args.fraction is not None:
            raise ValueError("--reference and --fraction are for --kind delta_sm")
        values = q * molecular / atomic
        relative_error = q * (atomic + molecular) / atomic
    else:
        if args.reference is None:
            raise ValueError("--kind delta_sm needs --reference REF.xyz (the unexcited structure)")
        fraction = 1.0 if args.fraction is None else args.fraction
        if not 0 < fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
        ref = xfit.read_structures(args.reference)[0]
        ref_atomic = xfit.scattering(ref, q, kind="atomic", **probe)
        ref_molecular = xfit.scattering(ref, q, kind="molecular", **probe)
        values = fraction * q * (molecular - ref_molecular) / ref_atomic
        relative_error = np.sqrt(2) * q * np.broadcast_to((ref_atomic + ref_molecular) / ref_atomic, values.shape)
    values, sigma = np.atleast_2d(values), None
    if args.noise is not None:
        sigma = args.noise * np.atleast_2d(relative_error)
        noise = np.asarray(jax.random.normal(jax.random.key(args.seed), values.shape), np.float64)
        values = values + sigma * noise
    patterns = [
        xfit.Pattern(
            q,
            v,
            None if sigma is None else sigma[k],
            kind=args.kind,
            probe="electron",
            metadata={"structure": str(args.structure), "frame": k, "electron_model": "mott-bethe"},
            energy_kev=args.energy_kev,
        )
        for k, v in enumerate(values)
    ]
    formula = frames[0].get_chemical_formula()
    print(f"{args.structure}: {formula}, {len(frames[0])} atoms, {len(frames)} frame(s)")
    print(f"q = {q[0]:g}..{q[-1]:g} 1/A in {len(q)} points; kind = {args.kind} (electron, {args.energy_kev:g} keV)")
    for k, p in enumerate(patterns[:10]):
        print(f"  frame {k}: max |{args.kind}| = {np.max(np.abs(p.values)):.4g} 1/A")
    if args.output:
        xfit.save_patterns(args.output, patterns)
        print(f"wrote {args.output}")
    if args.plot:
        r = np.linspace(0.5, 6.0, 300)
        _plot.plot_sm(q, np.stack([p.values for p in patterns]), r, args.kind, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _parse_dipole(text: str, atoms) -> tuple:
    """``X,Y,Z`` (a fixed vector in the structure's frame) or bond:I,J / normal:I,J,K (attached to atoms)."""
    import argparse

    from xfit.physics._anisotropy import check_dipole

    if ":" not in text:
        try:
            vector = np.array([float(v) for v in text.split(",")])
        except ValueError:
            vector = np.zeros(0)
        if vector.shape != (3,):
            raise ValueError(f"--dipole expects X,Y,Z, bond:I,J or normal:I,J,K, got {text!r}")
        return ("vector", vector)
    try:
        spec = dipole_spec(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"--dipole: {err}") from None
    return check_dipole(spec, len(atoms), atoms.positions)


def _dipole_vectors(dipole: tuple, frames) -> np.ndarray:
    """(n_frames, 3): the dipole of each frame (a fixed vector, or one attached to atoms, moving with them)."""
    import jax

    import xfit

    if dipole[0] == "vector":
        return np.broadcast_to(dipole[1], (len(frames), 3))
    with jax.enable_x64(True):  # float64 like the patterns: the CLI does not turn x64 on globally
        return np.stack([np.asarray(xfit.dipole_vector(dipole, np.asarray(f.positions, np.float64))) for f in frames])


def _pattern_p2(args, frames) -> int:
    """--legendre 2: the P2 component I2(q) of a cos^2-photoselected ensemble, one Pattern (legendre=2) per frame;
    with --noise REL, Gaussian noise of sqrt(5) x REL x I0 (the P2 projection of noise REL x I0 uniform over angle)."""
    import jax

    import xfit

    kinds = ("total", "elastic", "molecular") if args.probe == "xray" else ("elastic", "molecular", "sm")
    if args.kind not in kinds:
        raise ValueError(
            f"--legendre 2 with --probe {args.probe} takes --kind {', '.join(kinds)} (the P2 component is elastic "
            "and molecular; sm: q I2/I_at)"
        )
    electron = {}
    if args.probe == "electron":
        if args.energy_kev is None:
            raise ValueError("--probe electron needs --energy-kev (e.g. 90 for keV UED, 3000 for MeV UED)")
        electron = {"probe": "electron", "energy_kev": args.energy_kev}
    if args.dipole is None:
        raise ValueError(
            "--legendre 2 needs --dipole (bond:I,J, normal:I,J,K or X,Y,Z): the P2 component is zero "
            "without photoselection"
        )
    if args.photons is not None or args.reference is not None or args.fraction is not None or args.plot:
        raise ValueError("--legendre 2 takes --noise REL only (no --photons, --reference, --fraction, --plot)")
    q = args.q
    mus = _dipole_vectors(_parse_dipole(args.dipole, frames[0]), frames)
    pairs = [_components(f, q, mu, electron) for f, mu in zip(frames, mus, strict=True)]
    values, sigma = np.stack([i2 for _, i2 in pairs]), None
    i0 = np.stack([i0 for i0, _ in pairs])
    if args.kind == "sm":  # q I2/I_at, noise REL x I0 propagated as for sM
        i_at = np.stack([xfit.scattering(f, q, kind="atomic", **electron) for f in frames])
        values, i0 = q * values / i_at, q * i0 / i_at
    if args.noise is not None:
        sigma = np.sqrt(5) * args.noise * i0
        values = values + sigma * np.asarray(jax.random.normal(jax.random.key(args.seed), values.shape), np.float64)
    meta = {"structure": str(args.structure), "dipole": args.dipole}
    patterns = [
        xfit.Pattern(
            q,
            v,
            None if sigma is None else sigma[k],
            kind=args.kind,
            probe=args.probe,
            metadata={**meta, "frame": k},
            energy_kev=args.energy_kev,
            legendre=2,
        )
        for k, v in enumerate(values)
    ]
    print(f"{args.structure}: {frames[0].get_chemical_formula()}, {len(frames[0])} atoms, {len(frames)} frame(s)")
    print(f"q = {q[0]:g}..{q[-1]:g} 1/A in {len(q)} points; P2 component I2 (legendre=2), dipole {args.dipole}")
    for k, p in enumerate(patterns[:10]):
        print(f"  frame {k}: max |P2 component| = {np.max(np.abs(p.values)):.4g}")
    if args.output:
        xfit.save_patterns(args.output, patterns)
        print(f"wrote {args.output}")
    return 0


def _components(atoms, q, mu, electron: dict) -> tuple[np.ndarray, np.ndarray]:
    """(I0, I2) float64 of one structure photoselected along mu: X-ray total I0, or electron elastic."""
    if not electron:
        import xfit

        return xfit.anisotropic_scattering(atoms, q, mu, kind="total")
    import jax
    import jax.numpy as jnp

    from xfit.physics._anisotropy import anisotropic_intensity

    with jax.enable_x64(True):
        x = jnp.asarray(atoms.positions, jnp.float64)
        i0, i2 = anisotropic_intensity(atoms.numbers, x, q, np.asarray(mu, np.float64), **electron)
        return np.asarray(i0), np.asarray(i2)


def _pattern_image(args, frames) -> int:
    import jax

    from xfit import _plot
    from xfit.physics import _detector

    if args.probe == "xray" and args.energy_kev is not None:
        raise ValueError("--energy-kev is for --probe electron")
    detector = _detector.Detector.from_poni(args.detector, polarization=args.polarization)
    kind = args.kind
    if args.probe == "electron":
        # The PONI file's wavelength is the electrons' (an electron instrument's calibration): it gives the energy.
        energy = detector.electron_energy_kev
        if args.energy_kev is not None and abs(args.energy_kev - energy) > 1e-3 * energy:
            raise ValueError(
                f"--energy-kev {args.energy_kev:g} does not match {args.detector}'s wavelength "
                f"({detector.wavelength_angstrom:.5g} A: electrons of {energy:.5g} keV); drop it or fix the PONI file"
            )
        kind = "elastic" if kind == "total" else kind
    if kind not in ("total", "elastic") or (args.probe == "electron" and kind != "elastic"):
        allowed = "elastic" if args.probe == "electron" else "total or elastic"
        raise ValueError(f"--detector images are {allowed} scattering, not --kind {args.kind}")
    dipole = None if args.dipole is None else _dipole_vectors(_parse_dipole(args.dipole, frames[0]), frames[:1])[0]
    key = jax.random.key(args.seed) if args.photons is not None else None
    image = _detector.simulate_image(
        frames[0], detector, kind=kind, dipole=dipole, photons=args.photons, key=key, probe=args.probe
    )
    pattern = _detector.radial_average(image, detector, n_bins=args.bins, kind=kind, probe=args.probe)
    beam = "" if args.probe == "xray" else f" (electrons of {detector.electron_energy_kev:.4g} keV)"
    print(
        f"{args.structure}: {frames[0].get_chemical_formula()} on a {detector.shape[0]} x {detector.shape[1]} "
        f"detector at {detector.distance * 1e3:g} mm, lambda = {detector.wavelength_angstrom:.4g} A{beam}, "
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
                f.attrs["kind"], f.attrs["probe"] = kind, args.probe
        print(f"wrote {path}")
    if args.plot:
        _plot.plot_image(image, detector, pattern, args.plot)
        print(f"wrote {args.plot}")
    return 0


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
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
    p.add_argument("--q", type=parse_q, default=parse_q("0.5:8:512"), metavar="QMIN:QMAX:NQ", help=Q_HELP)
    p.add_argument(
        "--kind",
        choices=(*KINDS, *SM_KINDS),
        default="total",
        help="which part of the scattering to write: total = elastic + Compton (default), elastic = atomic + "
        "molecular, atomic, molecular (interference term), inelastic (Compton); with --probe electron also sm "
        "(q I_mol/I_at) and delta_sm (f q (I_mol - I_mol,ref)/I_at against --reference)",
    )
    p.add_argument("--reference", type=Path, help="with --kind delta_sm: the reference (unexcited) structure")
    p.add_argument("--fraction", type=float, help="with --kind delta_sm: excitation fraction (default 1)")
    p.add_argument("-o", "--output", type=Path, help="write the pattern(s): .txt/.dat/.csv (one frame), .npz, .h5")
    p.add_argument("--plot", type=Path, metavar="PNG", help="plot I(q) and q I_mol/I_at to this image")
    p.add_argument("--probe", choices=("xray", "electron"), default="xray", help="X-rays (default) or electrons")
    p.add_argument("--energy-kev", type=float, help="electron kinetic energy in keV (with --probe electron)")
    p.add_argument(
        "--detector",
        type=Path,
        metavar="GEOMETRY.poni",
        help="simulate a 2D detector image for this pyFAI PONI geometry, and plot it with its radial average (with "
        "--probe electron: an electron diffraction image, the PONI file's wavelength the electrons')",
    )
    p.add_argument(
        "--dipole",
        metavar="X,Y,Z|bond:I,J|normal:I,J,K",
        help="photoselect along this transition dipole (with --detector or --legendre 2): a fixed vector in the "
        "structure's frame, or attached to atoms (0-based): along I -> J, or normal to the plane of I, J, K",
    )
    p.add_argument(
        "--legendre",
        type=int,
        choices=(0, 2),
        default=0,
        help="0 (default): the isotropic curve; 2: its P2 component I2(q) under photoselection along --dipole, "
        "written as a legendre=2 pattern (the --p2 input of xfit retrieve)",
    )
    p.add_argument("--polarization", type=float, default=0.99, help="with --detector: degree of linear polarisation")
    p.add_argument("--bins", type=int, default=200, help="with --detector: q bins of the radial average")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, metavar="REL", help="add Gaussian noise of REL x I (e.g. 0.001)")
    noise.add_argument("--photons", type=float, metavar="N", help="add Poisson noise at N photons per pattern")
    p.add_argument("--seed", type=int, default=0, help="random seed for the noise (default 0)")
    p.set_defaults(run=run)
