"""What xfit's Dask paths share: the client check and an ordered, bounded stream of task results.

Only the modules behind ``client=`` arguments import this, and this imports ``distributed`` only when called:
``xfit`` works without Dask (``pip install 'xfit[dask]'`` adds it).
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Iterable, Iterator

__all__ = ["check_client", "ordered_results"]


def check_client(client) -> int:
    """The number of workers of a ``dask.distributed.Client``; a clear error for anything else."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - the dask extra is not installed
        raise ImportError("client= needs dask.distributed: pip install 'xfit[dask]'") from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
    workers = len(client.scheduler_info().get("workers", {}))
    if workers < 1:
        raise ValueError(f"the Dask cluster behind {client} has no workers")
    return workers


def ordered_results(client, fn: Callable, calls: Iterable[tuple], *, window: int, name: str) -> Iterator:
    """Run ``fn(*args)`` on the cluster for each ``args`` of ``calls`` and yield the results in the calls' order,
    with at most ``window`` tasks submitted and not yet consumed (so the client holds a bounded number of results
    however long the run). A task whose worker dies is rerun by the scheduler (``allowed_failures``); an exception
    raised by ``fn`` is raised here."""
    token = uuid.uuid4().hex[:12]
    calls = iter(calls)
    pending: collections.deque = collections.deque()
    count = 0

    def submit_next() -> bool:
        nonlocal count
        args = next(calls, None)
        if args is None:
            return False
        pending.append(client.submit(fn, *args, key=f"{name}-{token}-{count}", pure=False))
        count += 1
        return True

    while len(pending) < window and submit_next():
        pass
    while pending:
        future = pending.popleft()
        result = future.result()
        future.release()
        submit_next()
        yield result
