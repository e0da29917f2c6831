"""Detector images and anisotropic patterns: how many per second.

Question: how fast does xfit simulate a 1-Mpixel detector image (isotropic, and photoselected with I0 + I2 P2),
how many anisotropic patterns (I0, I2) per second does ``xfit.anisotropic_intensity`` give for NMM (18 atoms,
512 q points, float32) at growing batch sizes, forward and with the gradient with respect to positions and dipole,
and what does one value-and-gradient of an image's pixel likelihood cost for a retrieval's particles (CHD, 112
particles, float32: the work of each sampler step; ``--likelihood-pixels``)? And what does a script that retrieves
a series of images pay per image (``--series``: the default call ``xfit.retrieve(image, atoms)`` on CHD images of
a 40 x 40 detector whose counts of NaN and negative pixels differ from image to image, the last ones with the
detector moved from 5.0 to 5.5 cm; the first call compiles, and any later one that compiles again shows as such)?

    python benchmarks/images.py                  # 1024 x 1024 pixels
    python benchmarks/images.py --smoke          # seconds, as in the test suite (no series)
    python benchmarks/images.py --sections series --json results.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header  # noqa: E402
from _common import write_json  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--pixels", type=int, default=1024, help="detector side in pixels")
    parser.add_argument("--batches", default="1,64,1024")
    parser.add_argument("--likelihood-pixels", default="64,192", help="detector sides for the likelihood timing")
    parser.add_argument("--particles", type=int, default=112, help="particles per likelihood evaluation")
    parser.add_argument("--series", type=int, default=6, help="images in the series section")
    parser.add_argument(
        "--sections", default="images,anisotropic,likelihood,series", help="comma-separated sections to run"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.pixels, args.batches, args.likelihood_pixels, args.particles = 64, "1,8", "16", 8
        args.sections = args.sections.replace("series", "")  # each retrieval compiles the posterior: ~30 s
    sections = set(args.sections.split(","))

    import jax
    import jax.numpy as jnp
    from ase.io import read

    import xfit

    nmm = read(ROOT / "examples" / "data" / "nmm.xyz")
    header = run_header()
    print(f"# {header['date']}  {header['device']} ({header['cpu_count']} CPUs)")
    detector = xfit.Detector.from_beam_center(
        distance_m=0.07, pixel_m=100e-6 * 1024 / args.pixels, shape=(args.pixels, args.pixels), energy_kev=9.5
    )
    dipole = np.array([0.0, 0.0, 1.0])
    images = {}
    for label, kwargs in (("isotropic", {}), ("photoselected", {"dipole": dipole})) if "images" in sections else ():
        seconds = timed(lambda kwargs=kwargs: xfit.simulate_image(nmm, detector, **kwargs))
        images[label] = {"pixels": args.pixels**2, "seconds": seconds, "images_per_second": 1 / seconds}
        print(f"{label:>14} image, {args.pixels} x {args.pixels} pixels: {seconds:.3f} s ({1 / seconds:.3g} images/s)")

    q = np.linspace(0.5, 8.0, 512)
    forward = jax.jit(lambda x, mu: xfit.anisotropic_intensity(nmm.numbers, x, q, mu))
    grad = jax.jit(
        jax.grad(lambda x, mu: jnp.sum(xfit.anisotropic_intensity(nmm.numbers, x, q, mu)[1] ** 2), argnums=(0, 1))
    )
    rows = []
    if "anisotropic" in sections:
        print(f"\n{'batch':>7} {'(I0, I2)/s':>12} {'with grad/s':>12}   NMM, 512 q, float32")
    for batch in (int(b) for b in args.batches.split(",")) if "anisotropic" in sections else ():
        x = jnp.asarray(np.broadcast_to(nmm.positions, (batch, len(nmm), 3)), jnp.float32)
        mu = jnp.asarray(np.broadcast_to(dipole, (batch, 3)), jnp.float32)
        t_forward = timed(lambda x=x, mu=mu: jax.block_until_ready(forward(x, mu)))
        t_grad = timed(lambda x=x, mu=mu: jax.block_until_ready(grad(x, mu)))
        rows.append({"batch": batch, "forward_per_second": batch / t_forward, "grad_per_second": batch / t_grad})
        print(f"{batch:>7} {batch / t_forward:>12.4g} {batch / t_grad:>12.4g}", flush=True)
    likelihood = _likelihood_rows(args, xfit, jax, jnp) if "likelihood" in sections else []
    series = _series_rows(args.series, xfit, jax) if "series" in sections else []
    results = header | {"images": images, "anisotropic": rows, "likelihood": likelihood, "series": series}
    write_json(args.json, results)
    return 0


def _likelihood_rows(args, xfit, jax, jnp) -> list[dict]:
    """Value and gradient of the summed pixel chi2 of ``args.particles`` CHD structures, per detector size and for
    an isotropic and a photoselected image (the same 9.5 keV geometry as above, photon counts at 1e10)."""
    from ase.io import read

    from xfit.infer._likelihood import build_image_likelihood

    chd = read(ROOT / "examples" / "data" / "chd.xyz")
    out = []
    print(f"\n{'pixels':>9} {'image':>14} {'value+grad':>11}   CHD, {args.particles} particles, float32")
    for side in (int(v) for v in args.likelihood_pixels.split(",")):
        detector = xfit.Detector.from_beam_center(
            distance_m=0.07, pixel_m=100e-6 * 1024 / side, shape=(side, side), energy_kev=9.5, polarization=0.99
        )
        counts = xfit.simulate_image(chd, detector, photons=1e10, key=jax.random.key(0))
        for label, dipole in (("isotropic", None), ("photoselected", ("normal", 0, 1, 2))):
            image = xfit.DetectorImage(counts, detector, dipole=dipole)
            like = build_image_likelihood([image], chd.numbers, background=False, dipole=dipole, dtype=jnp.float32)
            noise = 0.05 * jax.random.normal(jax.random.key(1), (1, args.particles, len(chd), 3))
            x = jnp.asarray(chd.positions, jnp.float32)[None, None] + noise
            fn = jax.jit(jax.value_and_grad(lambda x, like=like: jnp.sum(like.chi2(x))))
            seconds = timed(lambda fn=fn, x=x: jax.block_until_ready(fn(x)), repeats=5)
            out.append({"pixels": side * side, "image": label, "particles": args.particles, "seconds": seconds})
            print(f"{side:>4} x {side:<4} {label:>14} {1e3 * seconds:>8.1f} ms", flush=True)
    return out


def _series_rows(n_images: int, xfit, jax) -> list[dict]:
    """Seconds of the default call on each of ``n_images`` CHD images (C1-C6 at 2.33 A, 1e10 photons, 20 keV, 40 x 40
    pixels of 2.4 mm at 5.0 cm): image k has 4 k invalid pixels (NaN and negative, as hot and dead pixels after a
    dark subtraction), and the last third were taken at 5.5 cm (another q range)."""
    from ase.io import read

    data = ROOT / "examples" / "data"
    start, truth = read(data / "chd.xyz"), read(data / "chd_traj001_t12_true.xyz")
    out = []
    columns = f"{'image':>5} {'distance':>9} {'invalid':>8} {'seconds':>8} {'chi2_r':>7} {'C-RMSD':>7}"
    print(f"\n{columns}   default call, CHD")
    for k in range(n_images):
        distance = 0.05 if k < n_images - n_images // 3 else 0.055
        detector = xfit.Detector.from_beam_center(distance_m=distance, pixel_m=2.4e-3, shape=(40, 40), energy_kev=20.0)
        counts = np.array(xfit.simulate_image(truth, detector, photons=1e10, key=jax.random.key(k)))
        bad = np.random.default_rng(k).choice(counts.size, 4 * k, replace=False)
        counts.flat[bad[::2]], counts.flat[bad[1::2]] = np.nan, -3.0
        image = xfit.DetectorImage(counts, detector)
        t0 = time.perf_counter()
        result = xfit.retrieve(image, start)
        seconds = time.perf_counter() - t0
        rmsd = xfit.rmsd(result.atoms, truth, heavy_only=True)
        out.append(
            {"image": k, "distance_m": distance, "n_invalid": image.n_invalid, "seconds": seconds,
             "chi2_reduced": result.chi2_reduced, "carbon_rmsd": rmsd}
        )  # fmt: skip
        print(
            f"{k:>5} {100 * distance:>6.1f} cm {image.n_invalid:>8} {seconds:>8.2f} {result.chi2_reduced:>7.3f}"
            f" {rmsd:>7.3f}",
            flush=True,
        )
    if len(out) > 1:
        later = [row["seconds"] for row in out[1:]]
        first = out[0]["seconds"]
        print(f"first image {first:.1f} s; later ones median {np.median(later):.1f} s, max {max(later):.1f} s")
    return out


if __name__ == "__main__":
    sys.exit(main())
