"""What every retrieval strategy takes and gives: the :class:`Problem` (built once per call) and the
:class:`Ensemble` of weighted structures a strategy returns.

A strategy is a small value with one method, ``run(problem, key) -> Ensemble``, in the spirit of optax's
transformations and blackjax's kernels: the problem carries the likelihood (a pure-JAX log-density with its
gradient), the molecular graph and the starting geometry; the strategy only consumes them. ``retrieve`` picks a
strategy, runs it and summarises the ensemble into ``Retrieval`` objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np
from ase import Atoms

from xfit.chem._graph import MoleculeGraph
from xfit.data._pattern import Pattern
from xfit.infer._likelihood import Likelihood

__all__ = ["Ensemble", "Problem", "Strategy", "pattern_keys"]


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One retrieval problem: T patterns on one grid, one molecule.

    Attributes:
        patterns: the validated patterns (T of them).
        likelihood: their likelihood, float64 arrays (a strategy casts it to its working dtype).
        molecule: the molecular graph, built once from ``atoms``.
        atoms: the starting structure. reference: the reference geometry (difference patterns, restraints).
        difference: whether the patterns are difference signals against ``reference``.
        images: the ``xfit.DetectorImage``s the patterns are the radial averages of (an image retrieval; their
            pixels are the likelihood's data), else None; image_bins: the radial averages' bins.
        index: (T,) each pattern's position in the whole batch the user gave (None: 0..T-1). A part of a batch
            (one chunk on a Dask worker) keeps its patterns' global positions, so that every pattern draws the same
            random numbers however the batch is split (see :func:`pattern_keys`).
    """

    patterns: tuple[Pattern, ...]
    likelihood: Likelihood
    molecule: MoleculeGraph
    atoms: Atoms
    reference: Atoms
    difference: bool
    index: np.ndarray | None = None
    images: tuple | None = None
    image_bins: int = 100

    @property
    def n_patterns(self) -> int:
        return len(self.patterns)

    @property
    def indices(self) -> np.ndarray:
        """(T,) the patterns' positions in the whole batch."""
        return np.arange(self.n_patterns) if self.index is None else np.asarray(self.index, np.int64)

    def part(self, index) -> Problem:
        """The sub-problem of the patterns at ``index`` (positions in this problem), keeping their global index."""
        index = np.asarray(index, np.int64)
        return dataclasses.replace(
            self,
            patterns=tuple(self.patterns[k] for k in index),
            likelihood=self.likelihood.select(index),
            index=self.indices[index],
            images=None if self.images is None else tuple(self.images[k] for k in index),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Ensemble:
    """Weighted structures for each pattern, as a strategy returns them (NumPy, float64).

    Attributes:
        positions: (T, S, n_atoms, 3) in A.
        chi2_data: (T, S) data chi^2 of each structure.
        penalty: (T, S) the prior's part of -2 log posterior: restraint chi^2 (refinement) or 2 x the prior energy
            (posterior), so that chi2_data + penalty ranks structures.
        kind: "candidates" (distinct optima to rank: refinement) or "samples" (draws from the posterior, each of
            weight ``weights``).
        weights: (T, S) normalised weights of samples (uniform for plain draws); None for candidates.
        restraints: the restraints the penalty refers to (candidates), for Gauss-Newton error bars.
        optima: (T, P, n_atoms, 3) the particles' optima each sample was drawn around (samples), and
            particle: (T, S) which particle each sample belongs to; modes are clusters of optima.
        optima_covariance: (T, P, 3 n_atoms, 3 n_atoms) Laplace covariance (A^2) of each particle's basin at its
            optimum (samples), or None.
        error_weights: (T, P) normalised weight of each particle's basin in the error bars (samples), or
            None for every basin at its posterior mass (``xfit.Posterior``'s ``basin_tempering``).
        info: what the strategy reports (method, settings, dropped particles, ...), shared by every pattern.
        relax: samples only, or None: relax(x, rows) maps one structure per pattern, x (k, n_atoms, 3) in A for the
            patterns ``rows`` (k,), to the nearest optimum of that pattern's -log posterior. The summary applies it
            to the chosen mode's mean, which averages basins and so need not be a geometry that fits (see
            ``xfit.infer._result``).
    """

    positions: np.ndarray
    chi2_data: np.ndarray
    penalty: np.ndarray
    kind: str
    weights: np.ndarray | None = None
    restraints: Any = None
    optima: np.ndarray | None = None
    particle: np.ndarray | None = None
    optima_covariance: np.ndarray | None = None
    error_weights: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)
    relax: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


class Strategy(Protocol):
    """A way to turn a problem into weighted structures: ``run(problem, key) -> Ensemble``."""

    name: str

    def run(self, problem: Problem, key: jax.Array) -> Ensemble: ...


def pattern_keys(problem: Problem, key: jax.Array) -> jax.Array:
    """One PRNG key per pattern (T,), ``fold_in(key, t)`` for each pattern's global index t: a pattern's random
    draws depend on the seed and its position in the batch only, never on how many patterns are retrieved together
    or how a batch is chunked (serially or across Dask workers)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jax.numpy.asarray(problem.indices, jax.numpy.uint32))


def shard(arrays: list[np.ndarray], dtype) -> list[jax.Array]:
    """Put arrays whose leading axis runs over patterns on the local devices, split along that axis.

    With one device this is a plain transfer. With several (GPUs, or CPU devices from
    XLA_FLAGS=--xla_force_host_platform_device_count=N), the pattern axis is padded to a multiple of the device count
    by repeating the last pattern, and jit partitions the work across the devices (jax.sharding).
    """
    import jax.numpy as jnp

    devices = jax.local_devices()
    if len(devices) == 1:
        return [jnp.asarray(a, dtype) for a in arrays]
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    pad = -len(arrays[0]) % len(devices)
    sharding = NamedSharding(Mesh(np.array(devices), ("patterns",)), PartitionSpec("patterns"))
    out = []
    for a in arrays:
        a = np.asarray(a)
        a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a
        out.append(jax.device_put(jnp.asarray(a, dtype), sharding))
    return out
