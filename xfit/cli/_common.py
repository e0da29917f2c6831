"""Shared argument types and output helpers of the ``xfit`` subcommands."""

from __future__ import annotations

import argparse
import contextlib
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
