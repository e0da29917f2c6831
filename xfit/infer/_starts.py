"""Starting structures for the search: the input geometry, random perturbations of it, starts that pull chosen
pairs apart (bonds allowed to break), a proposal network's candidates and the user's own."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from xfit.chem._graph import MoleculeGraph
from xfit.chem._structures import as_arrays
from xfit.data._pattern import Pattern

__all__ = ["STRETCH_MAX", "extra_starts", "proposal_starts", "random_starts"]

STRETCH_MAX = 4.0
"""Largest extra separation (A) given to a free pair in the stretched starts."""

PROPOSAL_FRACTIONS = (0.025, 0.05, 0.1, 0.2, 0.4, 1.0)
"""Excitation fractions at which the proposal network reads a percent difference whose fraction is unknown."""


def random_starts(
    start: np.ndarray, graph: MoleculeGraph, n_patterns: int, n_starts: int, perturbation: float, free_pairs, rng
) -> np.ndarray:
    """Starting structures (n_patterns, n_starts, n_atoms, 3): the input geometry ``start`` (n_atoms, 3), then
    random Cartesian perturbations of it (``perturbation`` A). With free pairs (bonds that may break), every second
    perturbed start also pulls each free pair apart by a random 0..STRETCH_MAX A along its axis, shared out over the
    atoms near each end (weights 1/2, 1/4, 1/8 by bond-graph distance, free pairs not counted as bonds), so that
    the search also begins in broken-bond basins that small perturbations never reach."""
    start = np.asarray(start, np.float64)
    x0 = np.broadcast_to(start, (n_patterns, n_starts, len(start), 3)).copy()
    x0[:, 1:] += rng.normal(0.0, perturbation, x0[:, 1:].shape)
    if not free_pairs or n_starts < 3:
        return x0
    hops = graph.without(free_pairs).hops
    for i, j in free_pairs:
        axis = start[j] - start[i]
        axis /= np.linalg.norm(axis)
        # Positive weight: moves with j; negative: with i. Atoms as near to both ends cancel out.
        weight = 0.5 ** (1 + hops[j]) - 0.5 ** (1 + hops[i])
        stretch = rng.uniform(0.0, STRETCH_MAX, (n_patterns, len(range(2, n_starts, 2))))
        x0[:, 2::2] += stretch[..., None, None] * weight[:, None] * axis
    return x0


def extra_starts(starts, atoms: Atoms) -> np.ndarray:
    """User-given starting structures as (n_extra, n_atoms, 3), validated against ``atoms``."""
    import jax

    if isinstance(starts, Atoms):
        starts = [starts]
    if isinstance(starts, np.ndarray | jax.Array):
        if not np.size(starts) or np.shape(starts)[-2:] != (len(atoms), 3):
            raise ValueError(f"starts must have shape (n, {len(atoms)}, 3), got {np.shape(starts)}")
        extra = np.asarray(starts, np.float64).reshape(-1, len(atoms), 3)
    else:
        starts = list(starts)
        if not starts:
            raise ValueError("starts is empty")
        numbers, extra, _ = as_arrays(starts)
        if not np.array_equal(numbers, atoms.numbers):
            raise ValueError("starts do not have the same atoms in the same order as atoms")
    if not np.all(np.isfinite(extra)):
        raise ValueError("starts contain NaN or infinite positions")
    return extra


def proposal_starts(model, patterns: list[Pattern], reference: Atoms, fraction, model_kind: str) -> np.ndarray:
    """A proposal network's candidates as starts (n_patterns, n_proposals, n_atoms, 3); for a percent difference
    with the fraction unknown, proposals at each of PROPOSAL_FRACTIONS join."""
    q, y, kind = patterns[0].q, np.stack([p.values for p in patterns]), patterns[0].kind
    if isinstance(fraction, tuple):  # a prior (mean, sd): the network reads the signal at its mean
        fraction = fraction[0]
    fractions = [None] if kind != "percent_difference" else ([fraction] if fraction else list(PROPOSAL_FRACTIONS))
    proposals = [model.propose(q, y, kind, reference, fraction=f, model_kind=model_kind)[0] for f in fractions]
    return np.concatenate(proposals, axis=1)
