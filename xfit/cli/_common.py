"""Shared argument types and output helpers of the ``xfit`` subcommands."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import numpy as np

Q_HELP = (
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


def pair(text: str) -> tuple[int, int]:
    try:
        i, j = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an atom pair I,J (0-based indices), got {text!r}") from None
    return i, j


def dipole_spec(text: str) -> tuple:
    """``bond:I,J`` -> ("bond", I, J), ``normal:I,J,K`` -> ("normal", I, J, K): a transition dipole attached to atoms
    (0-based indices); see ``xfit.dipole_vector``."""
    kind, sep, rest = text.partition(":")
    counts = {"bond": 2, "normal": 3}
    try:
        indices = tuple(int(v) for v in rest.split(","))
    except ValueError:
        indices = ()
    if not sep or kind not in counts or len(indices) != counts[kind]:
        raise argparse.ArgumentTypeError(
            f"expected a dipole bond:I,J (along atom I -> J) or normal:I,J,K (normal to the plane of atoms I, J, K), "
            f"0-based atom indices, got {text!r}"
        )
    return (kind, *indices)


FRACTION_HELP = (
    "excitation fraction of difference patterns: F fixes it, F+-SD fits it under a Gaussian prior (percent_difference, "
    "delta_sm; for a fraction known roughly: a small structural change fixes only fraction x displacement); "
    "'shared' (xfit retrieve, a series): fit it per pattern, then retrieve again under the series' one fraction "
    "(xfit.shared_fraction); default: fit it in [0, 1]"
)


def fraction(text: str) -> float | tuple[float, float] | str:
    """'F' -> F (fixed); 'F+-SD' -> (F, SD), a Gaussian prior on the fitted fraction; 'shared' as it is."""
    if text == "shared":
        return text
    try:
        if "+-" in text:
            mean, sd = (float(v) for v in text.split("+-"))
            return mean, sd
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--fraction must look like 0.15, 0.15+-0.05 or shared; got {text!r}"
        ) from None


def vector(text: str) -> tuple[float, float, float]:
    """``X,Y,Z`` -> a finite, nonzero 3-vector."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)) or not any(values):
        raise argparse.ArgumentTypeError(f"expected a nonzero vector X,Y,Z, got {text!r}")
    return values


def value_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    return lo, hi


def write_xyz(path: Path, frames) -> None:
    """Multi-frame extended xyz, written atomically (never a half-written file)."""
    from ase.io import write

    from xfit._io import atomic_path

    with atomic_path(path) as tmp:
        write(tmp, frames, format="extxyz")


def cache_dir() -> Path:
    """Where the CLI keeps JAX's persistent compilation cache: $XFIT_CACHE_DIR, else $XDG_CACHE_HOME/xfit/jax, else
    ~/.cache/xfit/jax."""
    if os.environ.get("XFIT_CACHE_DIR"):
        return Path(os.environ["XFIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "xfit" / "jax"


def compilation_cache(*, disabled: bool = False) -> Path | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_dir` (the next run of the same command loads the
    compiled functions instead of compiling again); returns the folder, or None when disabled or not writable."""
    if disabled:
        return None
    import jax

    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def add_cache_option(parser) -> None:
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache ($XFIT_CACHE_DIR, default ~/.cache/xfit/jax): every run "
        "compiles afresh",
    )


SCHEDULER_HELP = (
    "run the work on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786; pip install "
    "'xfit[dask]'); the result is the one without it"
)


@contextlib.contextmanager
def dask_client(address: str | None, timeout: float = 20.0):
    """A ``dask.distributed.Client`` connected to the scheduler at ``address`` for the duration (None: no client);
    a clear ValueError when Dask is missing or the scheduler cannot be reached."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs dask.distributed: pip install 'xfit[dask]'") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s ({err})") from None
    with client:
        yield client
