"""Keep a long-lived process clear of Linux's limit on memory maps, which XLA's compiled CPU programs fill.

XLA's CPU backend loads every compiled kernel into pages of its own (code, read-only data, data: three memory
maps), and they stay mapped while JAX caches the program. One retrieval at a pattern length this process has not
seen (the q grid padded to a multiple of 16 points: ``xfit.infer._likelihood.Likelihood.grid``) compiles about 950
kernels (CHD, X-ray: 2,780 maps). Linux refuses a process more than ``vm.max_map_count``
maps (65,530 by default), and XLA then dies with a segmentation fault while compiling or serialising a program:
a notebook that retrieves at ~20 pattern lengths in turn, a live session or a test runner would crash, never with a
Python error. Before each retrieval (and each retrieval task on a Dask worker), :func:`release_if_near_map_limit`
drops JAX's compilation caches when the process holds more than half its limit; programs still needed recompile
(or load from the persistent cache).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax

MAPS = Path("/proc/self/maps")
LIMIT = Path("/proc/sys/vm/max_map_count")


def memory_maps() -> tuple[int, int] | None:
    """(maps this process holds, the kernel's limit ``vm.max_map_count``), or None where /proc does not say (not
    Linux)."""
    try:
        with MAPS.open("rb") as f:
            held = sum(1 for _ in f)
        limit = int(LIMIT.read_text())
    except (OSError, ValueError):
        return None
    return held, limit


def release_if_near_map_limit(fraction: float = 0.5) -> bool:
    """Clear JAX's compilation caches (``jax.clear_caches``) when this process holds more than ``fraction`` of its
    memory-map limit; returns whether it did, with a RuntimeWarning that says why the next calls compile again."""
    counts = memory_maps()
    if counts is None or counts[0] <= fraction * counts[1]:
        return False
    held, limit = counts
    jax.clear_caches()
    warnings.warn(
        f"this process holds {held:,} memory maps, most of them compiled XLA programs, against a limit of {limit:,} "
        "(vm.max_map_count; past it XLA crashes): JAX's compilation caches were cleared, so programs compile again",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
