"""Batch retrieval on a Dask cluster: the batch in equal chunks, one task per chunk, gathered in order.

The same strategy value runs on every chunk; each chunk is a sub-problem that keeps its patterns' global
positions (``Problem.index``), so every pattern draws the random numbers it would draw in the serial call
(``pattern_keys``: ``fold_in(key, t)``). The last chunk is padded (its last pattern repeated) to the common size,
so that every task on a worker calls the same compiled functions: jit caches are per process, and a worker
process compiles once and reuses. A worker that dies mid-chunk loses nothing that finished: the scheduler
reruns its unfinished tasks elsewhere (``allowed_failures``), and the client gathers whatever ran where.

Only this module imports ``distributed``: ``xfit`` works without it.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from xfit._dask import check_client, ordered_results
from xfit.infer._compiled import release_if_near_map_limit
from xfit.infer._problem import Problem

__all__ = ["default_chunk", "retrieve_on_cluster"]


def default_chunk(n_patterns: int, n_workers: int) -> int:
    """Patterns per task: about four tasks per worker (load balance, and little work lost with a worker), at
    most 64 (the serial progress chunk) and at least 1."""
    return int(max(1, min(64, -(-n_patterns // (4 * n_workers)))))


def _strategy_part(strategy, index: np.ndarray):
    """The strategy for a chunk: per-pattern extra starts (T, E, n_atoms, 3) cut to the chunk, no inner chunking
    or progress bar."""
    changes = {}
    extra = getattr(strategy, "extra_starts", None)
    if extra is not None and np.ndim(extra) == 4:
        changes["extra_starts"] = np.asarray(extra)[index]
    for name, value in (("chunk", None), ("progress", False)):
        if hasattr(strategy, name):
            changes[name] = value
    return dataclasses.replace(strategy, **changes) if changes else strategy


def _run_part(problem: Problem, strategy, seed: int, duplicate_tolerance: float, info: dict, x64: bool, rows: int):
    """One task: run the strategy on a (padded) chunk and summarise its first ``rows`` patterns."""
    from xfit.infer._result import summarise

    release_if_near_map_limit()  # a worker lives on across problems of many shapes
    with jax.enable_x64(x64):  # the client's precision setting, whatever the worker process started with
        ensemble = strategy.run(problem, jax.random.key(seed))
        real = problem.part(np.arange(rows))
        ensemble = dataclasses.replace(
            ensemble,
            **{
                f.name: getattr(ensemble, f.name)[:rows]
                for f in dataclasses.fields(ensemble)
                if isinstance(getattr(ensemble, f.name), np.ndarray) and f.name != "restraints"
            },
        )
        return summarise(real, ensemble, duplicate_tolerance=duplicate_tolerance, info=info)


def retrieve_on_cluster(
    client,
    problem: Problem,
    strategy,
    *,
    seed: int,
    duplicate_tolerance: float,
    info: dict,
    chunk: int | None = None,
    progress: bool = False,
    on_part=None,
) -> list:
    """Retrieve every pattern of ``problem`` on the Dask cluster behind ``client``; a list of ``Retrieval`` in the
    patterns' order, the same as ``summarise(problem, strategy.run(problem, key(seed)))`` pattern by pattern.

    Args:
        client: a ``dask.distributed.Client``.
        problem: the whole batch (T patterns).
        strategy: the strategy value (``Refinement`` or ``Posterior``); a coupled series (refinement with
            smoothness > 0) cannot be split and is refused.
        seed: the retrieval seed. duplicate_tolerance, info: as for ``summarise``.
        chunk: patterns per task (default :func:`default_chunk`).
        progress: a tqdm bar over patterns (stderr).
        on_part: called as ``on_part(first_index, results)`` on each chunk's results as they arrive, in order (to
            stream them into a results file); what it returns replaces them.
    """
    n_workers = check_client(client)
    if getattr(strategy, "smoothness", 0.0):
        raise ValueError(
            "smoothness > 0 couples neighbouring patterns into one problem, which cannot be split over Dask "
            "workers; retrieve a coupled series without client= (or with smoothness=0)"
        )
    n = problem.n_patterns
    chunk = default_chunk(n, n_workers) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 pattern, got {chunk}")
    chunk = min(chunk, n)
    x64 = bool(jax.config.jax_enable_x64)

    def calls():
        for lo in range(0, n, chunk):
            # Pad with the last pattern (same global index, so the same draws): every task has one shape.
            index = np.minimum(np.arange(lo, lo + chunk), n - 1)
            rows = min(chunk, n - lo)
            yield problem.part(index), _strategy_part(strategy, index), seed, duplicate_tolerance, info, x64, rows

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="retrieve", unit="pattern")
    results = []
    try:
        for part in ordered_results(client, _run_part, calls(), window=4 * n_workers, name="xfit-retrieve"):
            if on_part is not None:
                part = on_part(len(results), part)
            results.extend(part)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return results
