"""What the P2 component of a photoselected pattern adds: CHD frames retrieved from the isotropic curve alone and
from the isotropic curve plus its P2 component (same frames, same noise on the isotropic curve).

Question: on the simulated CHD ring-opening frames of ../shared/reference (traj001 and traj090, validation only),
excited by a pump polarised along the ring's pi-pi* dipole (normal to the plane of C1, C2, C3: atoms 0, 1, 2), how
much closer does the default call get when it also fits the P2 component, and at what cost in time?

Patterns: X-ray total intensity, q = 0.5..8 1/A in 76 points (as ``benchmarks/posterior.py``). Isotropic component
I0 with Gaussian noise of ``--noise`` (default 0.1 %) of I0, sigma given; P2 component I2 with independent Gaussian
noise of sqrt(5) x that sigma (the projection onto P2 of noise uniform over cos theta_q: the best case, a full
azimuthal ring at every q). The isotropic patterns, noise included, are the same objects in both retrievals.
Start = chd_reference.xyz. Calls: ``xfit.retrieve(iso, start)`` and ``xfit.retrieve(iso + p2, start,
dipole=("normal", 0, 1, 2))``. Reported per call (scoring as ``benchmarks/posterior.py``): carbon RMSD median,
fraction <= 0.10 A, near-closed and opened medians, median |C1-C6 error| and reported sigma(C1-C6), time per
retrieval (one batched call over all frames, after a first call of the same shape that compiles).

    python benchmarks/anisotropic.py --stride 8 --max-frames 3 --json benchmarks/results/anisotropic_cpu.json
    python benchmarks/anisotropic.py --smoke --json /tmp/a.json      # seconds: what the test suite runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header
from _common import write_json
from posterior import CHD, load_frames, options
from ued import _run

DIPOLE = ("normal", 0, 1, 2)
NOISE = 1e-3


def photoselected_patterns(frames, q, noise: float, seed: int):
    """(isotropic, P2) Patterns of each frame photoselected along its own DIPOLE, noise as in the module notes."""
    import jax

    import xfit

    iso, p2 = [], []
    keys = jax.random.split(jax.random.key(seed), 2 * len(frames))
    for k, (_, atoms) in enumerate(frames):
        mu = np.asarray(xfit.dipole_vector(DIPOLE, atoms.positions))
        i0, i2 = xfit.anisotropic_scattering(atoms, q, mu, kind="total")
        s0, s2 = noise * i0, np.sqrt(5) * noise * i0
        n0, n2 = (np.asarray(jax.random.normal(keys[2 * k + j], q.shape), np.float64) for j in (0, 1))
        iso.append(xfit.Pattern(q, i0 + s0 * n0, s0, kind="total"))
        p2.append(xfit.Pattern(q, i2 + s2 * n2, s2, kind="total", legendre=2))
    return iso, p2


def main(argv=None) -> int:
    import xfit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=8, help="every STRIDE-th frame of each trajectory")
    parser.add_argument("--max-frames", type=int, default=3, help="at most this many frames per trajectory")
    parser.add_argument("--noise", type=float, default=NOISE, help="Gaussian noise relative to I0 (default 0.1 %%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="two frames, a tiny posterior: for the tests")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not CHD.exists():
        print(f"{CHD} not found: nothing to benchmark")
        return 0
    if args.smoke:
        args.stride, args.max_frames = 20, 1
    q = np.linspace(0.5, 8.0, 76)
    frames = load_frames(args.stride, args.max_frames)
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    kwargs = options({}, args.smoke, start)  # the default call, or in smoke runs a tiny posterior
    iso, p2 = photoselected_patterns(frames, q, args.noise, args.seed)
    results = {**run_header(), "noise_of_i0": args.noise, "q": [0.5, 8.0, 76], "dipole": list(DIPOLE)}
    print(f"{len(frames)} CHD frames, X-ray total, noise {100 * args.noise:g} % of I0 (P2: sqrt(5) x), dipole {DIPOLE}")
    calls = {
        "isotropic": lambda: xfit.retrieve(iso, start, **kwargs),
        "isotropic+p2": lambda: xfit.retrieve(iso + p2, start, dipole=DIPOLE, **kwargs),
    }
    for name, call in calls.items():
        _run(name, call, frames, results, timed=not args.smoke)
    a, b = results["isotropic"]["rows"], results["isotropic+p2"]["rows"]
    print("per frame, carbon RMSD iso -> iso+P2 (A):")
    for ra, rb in zip(a, b, strict=True):
        print(f"  {ra['frame']:<22} C1-C6 {ra['c1c6_true']:.2f} A: {ra['carbon_rmsd']:.3f} -> {rb['carbon_rmsd']:.3f}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
