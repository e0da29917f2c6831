"""Forward-model throughput: patterns per second, and the memory of the gradient.

Question: how fast is ``xfit.intensity`` (forward, and value-and-grad with respect to positions) against a
vectorised NumPy implementation and against DebyeCalculator, for an 18-atom molecule (NMM) and a 101-atom molecule
(the alkane C33H68), 512 q points, float32, batch 1 to 65,536? And how much scratch memory does the gradient take
(XLA's compiled memory analysis) on the fast path (checkpointed custom JVP) against the direct formula with plain
autodiff? The forward pass is timed every way a user writes it: q a NumPy float64 grid closed over (``q const``), the
same grid as float32 (``f32 const``), q a JAX array passed as an argument of the user's jitted function (``q traced``,
how a loss is written: ``jax.jit(loss)(x, q)``), and an ``xfit.QGrid`` passed as that argument (``QGrid arg``); then
value-and-grad with q closed over and with q traced. Accuracy: every float32 call style against a float64 NumPy
Debye sum (max relative error over the pattern, at batch 16).

Every figure printed is measured in this run, on this machine. Usage:

    python benchmarks/forward.py                      # full table (long on a CPU: cells over --max-seconds skip)
    python benchmarks/forward.py --smoke              # a few seconds: what the test suite runs
    python benchmarks/forward.py --json results.json

DebyeCalculator (``pip install '.[bench]'``) is timed when installed: its ``iq`` computes I(Q) per structure with
self-scattering; we set ``biso=0`` (no Debye-Waller damping) so that it computes the same undamped Debye sum, and time
both its exact ``pair_sum='direct'`` and its default, approximate ``pair_sum='grid'``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header as run_header  # noqa: E402
from _common import write_json  # noqa: E402

Q = np.linspace(0.5, 8.0, 512)


def alkane(n_carbons: int):
    """All-trans n-alkane CnH(2n+2) with ideal geometry (C-C 1.53 A, C-H 1.09 A, tetrahedral angles)."""
    from ase import Atoms

    half = np.deg2rad(109.47) / 2
    dx, dy = 1.53 * np.sin(half), 1.53 * np.cos(half) / 2
    carbons = np.array([[k * dx, dy if k % 2 else -dy, 0.0] for k in range(n_carbons)])
    symbols, positions = ["C"] * n_carbons, list(carbons)
    for k, c in enumerate(carbons):
        out = np.array([0.0, 1.0 if k % 2 else -1.0, 0.0])  # away from the backbone
        for sign in (1, -1):
            h = np.cos(np.deg2rad(54.75)) * out + np.sin(np.deg2rad(54.75)) * np.array([0, 0, sign])
            symbols.append("H")
            positions.append(c + 1.09 * h)
    for end, direction in ((carbons[0], -1.0), (carbons[-1], 1.0)):
        symbols.append("H")
        positions.append(end + 1.09 * np.array([direction, 0.0, 0.0]))
    return Atoms(symbols, positions=np.array(positions))


class NumpyDebye:
    """Vectorised NumPy Debye sum over pairs i < j (total X-ray intensity), chunked over the batch to bound memory;
    float32 (the timing yardstick) or float64 (the accuracy reference)."""

    def __init__(self, numbers, q, dtype=np.float32):
        import xfit

        self.dtype = dtype
        self.q = q.astype(dtype)
        f = np.asarray(xfit.form_factor(numbers, q), dtype=np.float64)
        self.i, self.j = np.triu_indices(len(numbers), k=1)
        self.weights = (2 * f[self.i] * f[self.j]).astype(dtype)
        self.constant = (np.sum(f**2, axis=0) + np.asarray(xfit.compton_function(numbers, q)).sum(0)).astype(dtype)
        self.chunk = max(1, int(2e7 // (len(self.i) * len(q))))

    def __call__(self, positions):
        positions = positions.astype(self.dtype)
        out = np.empty((len(positions), len(self.q)), self.dtype)
        for start in range(0, len(positions), self.chunk):
            x = positions[start : start + self.chunk]
            r = np.linalg.norm(x[:, self.i] - x[:, self.j], axis=-1)
            qr = r[..., None] * self.q
            out[start : start + self.chunk] = self.constant + np.einsum("bpq,pq->bq", np.sin(qr) / qr, self.weights)
        return out


def timed(fn, min_time: float) -> float:
    """Median seconds per call after one warm-up (compilation) call; at least 3 calls or ``min_time`` seconds."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 10 * min_time and len(times) >= 1:
            break
    return float(np.median(times))


def debyecalculator_rate(atoms, structures: int) -> dict[str, float]:
    try:
        from debyecalculator import DebyeCalculator
    except ImportError:
        return {}
    import warnings

    rates = {}
    step = float(Q[1] - Q[0])
    for pair_sum in ("direct", "grid"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = DebyeCalculator(
                qmin=float(Q[0]), qmax=float(Q[-1]) + step / 2, qstep=step, biso=0.0, device="cpu", pair_sum=pair_sum
            )
            frames = [atoms] * structures
            seconds = timed(lambda frames=frames, calc=calc: calc.iq(frames), 0.5)
        rates[pair_sum] = structures / seconds
    return rates


def gradient_memory(numbers, batch: int) -> dict[str, float]:
    """XLA scratch memory (MB) of value-and-grad and of the forward pass, fast path vs direct, at ``batch``."""
    import jax
    import jax.numpy as jnp

    import xfit

    x = jnp.zeros((batch, len(numbers), 3), jnp.float32)
    out = {}
    for method in ("auto", "direct"):

        def loss(x, method=method):
            return xfit.intensity(numbers, x, Q, method=method).sum()

        for name, fn in (("grad", jax.value_and_grad(loss)), ("forward", loss)):
            analysis = jax.jit(fn).lower(x).compile().memory_analysis()
            out[f"{name}_{method}_MB"] = analysis.temp_size_in_bytes / 1e6
    out["batch_x_pairs_x_q_MB"] = batch * len(numbers) * (len(numbers) - 1) / 2 * len(Q) * 4 / 1e6
    return out


def run(batches: list[int], molecules: list[str], max_seconds: float, min_time: float, with_debye: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from ase.io import read

    import xfit

    structures = {"NMM": read(ROOT / "examples" / "data" / "nmm.xyz"), "C33H68": alkane(33)}
    rng = np.random.default_rng(0)
    q32 = Q.astype(np.float32)
    rows, memory, debye, accuracy = [], {}, {}, {}
    for name in molecules:
        atoms = structures[name]
        numbers = atoms.numbers
        numpy_debye = NumpyDebye(numbers, Q)

        def total(x, q, numbers=numbers):
            return xfit.intensity(numbers, x, q)

        def loss(x, q, numbers=numbers):
            return jnp.sum(xfit.intensity(numbers, x, q) ** 2)

        styles = {  # label -> (jitted function of x, the q it is called with or None when q is closed over)
            "xfit_forward": (jax.jit(lambda x: total(x, Q)), None),
            "xfit_f32_grid": (jax.jit(lambda x: total(x, q32)), None),
            "xfit_traced_q": (jax.jit(total), jnp.asarray(q32)),
            "xfit_qgrid": (jax.jit(total), xfit.QGrid.from_values(Q)),
            "xfit_value_and_grad": (jax.jit(jax.value_and_grad(lambda x: loss(x, Q))), None),
            "xfit_value_and_grad_traced_q": (jax.jit(jax.value_and_grad(loss)), jnp.asarray(q32)),
        }

        def call(label, xj, styles=styles):
            fn, q = styles[label]
            return jax.block_until_ready(fn(xj) if q is None else fn(xj, q))

        x16 = (atoms.positions + rng.normal(0, 0.05, (16, len(atoms), 3))).astype(np.float32)
        reference = NumpyDebye(numbers, Q, np.float64)(x16.astype(np.float64))
        accuracy[name] = {
            label: float(np.max(np.abs(np.asarray(call(label, jnp.asarray(x16)), np.float64) / reference - 1)))
            for label in ("xfit_forward", "xfit_f32_grid", "xfit_traced_q", "xfit_qgrid")
        }
        estimates: dict[str, float] = {}
        for batch in batches:
            x = (atoms.positions + rng.normal(0, 0.05, (batch, len(atoms), 3))).astype(np.float32)
            xj = jnp.asarray(x)
            row = {"molecule": name, "atoms": len(atoms), "batch": batch}
            timers = [(label, lambda xj=xj, label=label: call(label, xj)) for label in styles]
            for label, fn in [*timers, ("numpy_forward", lambda x=x, f=numpy_debye: f(x))]:
                if estimates.get(label, 0.0) * batch > max_seconds:
                    row[label] = None  # skipped: the last batch's rate predicts more than max_seconds a call
                    continue
                seconds = timed(fn, min_time)
                estimates[label] = seconds / batch
                row[label] = batch / seconds
            rows.append(row)
            print(_format_row(row), flush=True)
        memory[name] = gradient_memory(numbers, min(1024, max(batches)))
        if with_debye:
            debye[name] = debyecalculator_rate(atoms, structures=8 if len(atoms) < 50 else 2)
    return {"rows": rows, "gradient_memory": memory, "debyecalculator": debye, "max_relative_error": accuracy}


def _rate(value) -> str:
    return f"{value:>12.4g}" if value is not None else f"{'skipped':>12}"


_COLUMNS = (
    ("xfit_forward", "q const/s"),
    ("xfit_f32_grid", "f32 const/s"),
    ("xfit_traced_q", "q traced/s"),
    ("xfit_qgrid", "QGrid arg/s"),
    ("xfit_value_and_grad", "v&g/s"),
    ("xfit_value_and_grad_traced_q", "v&g traced/s"),
    ("numpy_forward", "numpy fwd/s"),
)
_RATIOS = (("xfit_forward", "const/np"), ("xfit_f32_grid", "f32/np"), ("xfit_traced_q", "traced/np"))


def _format_row(row) -> str:
    ratios = [
        f"{row[label] / row['numpy_forward']:>9.2f}x" if row.get(label) and row.get("numpy_forward") else f"{'-':>10}"
        for label, _ in _RATIOS
    ]
    rates = " ".join(_rate(row.get(label)) for label, _ in _COLUMNS)
    return f"{row['molecule']:>7} {row['atoms']:>5} {row['batch']:>7} {rates} {' '.join(ratios)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (a few seconds), as in the test suite")
    parser.add_argument("--batches", default="1,16,256,1024,4096,16384,65536", help="comma-separated batch sizes")
    parser.add_argument("--molecules", default="NMM,C33H68", help="comma-separated: NMM, C33H68")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="skip cells predicted to take longer a call")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repetitions per cell")
    parser.add_argument("--no-debyecalculator", action="store_true", help="do not time DebyeCalculator")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    if args.smoke:
        args.batches, args.molecules, args.min_time, args.no_debyecalculator = "1,8", "NMM", 0.01, True
    batches = [int(b) for b in args.batches.split(",")]
    molecules = args.molecules.split(",")
    header = run_header() | {"machine": platform.machine(), "dtype": "float32", "n_q": len(Q)}
    print(
        f"# {header['date']}  {header['device']}  ({header['cpu_count']} CPUs)  jax {header['jax']}  float32, "
        f"{len(Q)} q points"
    )
    titles = " ".join(f"{title:>12}" for _, title in _COLUMNS) + " " + " ".join(f"{t:>10}" for _, t in _RATIOS)
    print(f"{'mol':>7} {'atoms':>5} {'batch':>7} {titles}")
    results = header | run(batches, molecules, args.max_seconds, args.min_time, not args.no_debyecalculator)

    print("\n# gradient scratch memory (XLA memory analysis), MB")
    for name, mem in results["gradient_memory"].items():
        print(
            f"{name:>7}: value_and_grad fast {mem['grad_auto_MB']:.1f}, direct {mem['grad_direct_MB']:.1f}; "
            f"forward fast {mem['forward_auto_MB']:.1f}, direct {mem['forward_direct_MB']:.1f}; "
            f"(batch x pairs x q x 4 B = {mem['batch_x_pairs_x_q_MB']:.1f})"
        )
    print("\n# float32 against a float64 NumPy Debye sum (batch 16): max relative error")
    for name, errors in results["max_relative_error"].items():
        print(f"{name:>7}: " + ", ".join(f"{label.removeprefix('xfit_')} {e:.2e}" for label, e in errors.items()))
    for name, rates in results["debyecalculator"].items():
        big = [r for r in results["rows"] if r["molecule"] == name and r["batch"] >= 1024 and r["xfit_forward"]]
        if not rates:
            print("\n# DebyeCalculator not installed (pip install '.[bench]')")
            continue
        for pair_sum, rate in rates.items():
            ratio = f", xfit at batch {big[-1]['batch']} is {big[-1]['xfit_forward'] / rate:.1f}x" if big else ""
            print(f"# DebyeCalculator ({pair_sum}, biso=0) {name}: {rate:.4g} patterns/s{ratio}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
