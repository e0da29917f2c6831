"""Honest noise for measured difference signals: the real scatter, measured where the signal is known to be zero.

In a pump-probe series the delays before time zero carry no signal: the molecules have not been excited yet. The
scatter of those difference patterns about zero is the noise the measurement really has, whatever error bars the
reduction reported. On the LCLS N-methylmorpholine data the stated standard errors give a zero-model chi2_reduced
of ~22 (median) before time zero: they understate the scatter by ~4.6x, and fits judged against them look bad
for no structural reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xfit.data._pattern import Pattern

__all__ = ["estimate_noise"]

DIFFERENCE_KINDS = ("percent_difference", "difference", "delta_sm")


def estimate_noise(patterns: Sequence[Pattern], before: float = 0.0) -> tuple[list[Pattern], float]:
    """Rescale a difference series' sigma to the scatter measured before time zero.

    The patterns with ``delay < before`` (ps) are taken as signal-free. With stated sigma, the factor is
    sqrt(median over those patterns of their zero-model chi2_reduced, sum((y/sigma)^2)/n_q), and every pattern's
    sigma is multiplied by it. Without sigma, sigma(q) is the root-mean-square of the signal-free patterns at each q
    (a per-point noise level), applied to every pattern, and the factor is 1.

    Args:
        patterns: a time series of difference patterns (``percent_difference``, ``difference``, ``delta_sm``) on
            one q grid, each with its ``delay`` in ps (q = 4 pi sin(theta)/lambda in 1/A).
        before: delays strictly below this (ps) count as signal-free; choose it before the pump arrives, allowing
            for the time resolution.

    Returns:
        (patterns with rescaled sigma, in the same order; the factor applied to the stated sigma).

    Raises:
        ValueError: intensity patterns (no zero to compare with), missing delays, fewer than two signal-free
            patterns, different q grids.
    """
    patterns = list(patterns)
    if not patterns:
        raise ValueError("no patterns given")
    for k, p in enumerate(patterns):
        if p.kind not in DIFFERENCE_KINDS:
            raise ValueError(f"pattern {k} is of kind {p.kind!r}; noise is estimated from difference signals only")
        if p.delay is None:
            raise ValueError(f"pattern {k} has no delay; estimate_noise needs a time series")
        if not np.array_equal(p.q, patterns[0].q):
            raise ValueError(f"pattern {k} is on a different q grid from pattern 0")
    quiet = [p for p in patterns if p.delay < before]
    if len(quiet) < 2:
        raise ValueError(
            f"only {len(quiet)} pattern(s) before {before:g} ps; at least two signal-free patterns are needed"
        )
    stated = [p.sigma is not None for p in quiet]
    if all(stated):
        chi2_reduced = [float(np.mean((p.values / p.sigma) ** 2)) for p in quiet]
        factor = float(np.sqrt(np.median(chi2_reduced)))
        if not all(p.sigma is not None for p in patterns):
            raise ValueError("some patterns after time zero have no sigma while those before have one")
        return [p.replace(sigma=p.sigma * factor) for p in patterns], factor
    sigma = np.sqrt(np.mean(np.stack([p.values for p in quiet]) ** 2, axis=0))
    if not np.all(sigma > 0):
        raise ValueError("the signal-free patterns are exactly zero at some q: no noise to measure there")
    return [p.replace(sigma=sigma.copy()) for p in patterns], 1.0
