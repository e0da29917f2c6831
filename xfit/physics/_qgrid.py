"""q grids as the kernel sees them: a uniform grid's structure (start, step, length) is what makes it fast.

The pair-sum kernel (``xfit.physics._iam``) evaluates sin(q r) on a uniform grid q_k = q_0 + k dq by angle addition
from a few anchors, 2 (A + M) transcendentals per pair instead of n_q. It needs the grid's *structure* at trace time,
as Python numbers. A NumPy array closed over by a jitted function has it; a JAX array passed as an argument of one
does not (its values are traced). :class:`QGrid` carries the structure as static data, so it crosses ``jax.jit`` as
an argument with the fast path intact.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np

from xfit.physics import _elements

__all__ = ["GridArrays", "PerformanceWarning", "QGrid", "padded_grid", "q_blocks", "uniform_tolerance"]

UNIFORM_RTOL_FLOAT64 = 1e-9
"""Relative tolerance (of the grid's largest |q|) within which a float64 grid counts as uniform."""
UNIFORM_ULPS = 16
"""For lower precision, the tolerance in units of the dtype's epsilon times the largest |q|: a float32
np.linspace(0.5, 8, 512) deviates from exact uniformity by ~1 ulp of 8 (4.8e-7 1/A)."""


class PerformanceWarning(UserWarning):
    """xfit fell back to a slower path it could have avoided; the message names the cost and the fix."""


def uniform_tolerance(q: np.ndarray, dtype=None) -> float:
    """Largest deviation (1/A) from q_0 + k dq for which a grid of this dtype counts as uniform.

    float64: 1e-9 of max |q|; float32 or lower: 16 epsilon of the dtype times max |q| (a float32 grid cannot be
    more uniform than its own rounding, ~1 ulp).
    """
    dtype = np.dtype(q.dtype if dtype is None else dtype)
    eps = np.finfo(dtype).eps if np.issubdtype(dtype, np.floating) else 0.0
    scale = float(np.max(np.abs(q))) if q.size else 0.0
    return max(UNIFORM_RTOL_FLOAT64, UNIFORM_ULPS * eps) * scale


def _uniform_step(q: np.ndarray, dtype=None) -> float | None:
    """The step dq of a uniform grid (within ``uniform_tolerance``), or None."""
    n_q = len(q)
    if n_q < 2:
        return None
    values = np.asarray(q, np.float64)
    dq = (values[-1] - values[0]) / (n_q - 1)
    if dq <= 0:
        return None
    deviation = np.max(np.abs(values - (values[0] + dq * np.arange(n_q))))
    return float(dq) if deviation <= uniform_tolerance(np.asarray(q), dtype) else None


def q_blocks(start: float, step: float, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the uniform grid start + step * arange(n_q) into anchors qa (A,) and offsets dm (M,), float64, with
    q_k = qa_a + dm_m for k = a M + m.

    M (a power of two, <= 32) is close to sqrt(n_q), which minimises the 2 (A + M) transcendentals per pair; the
    last block may run past the grid and is trimmed by the caller. Grids shorter than 16 points get M = 1.
    """
    if n_q < 16 or step <= 0:
        return start + step * np.arange(n_q), np.zeros(1)
    m = int(min(32, 2 ** np.floor(np.log2(n_q / 8))))
    a = -(-n_q // m)
    return start + step * m * np.arange(a), step * np.arange(m)


def blocks_of(q: np.ndarray, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Anchors and offsets of a concrete grid (see :func:`q_blocks`); a non-uniform grid gets A = n_q, M = 1.

    ``dtype`` is the precision the grid was given in (default: its own), which sets the uniformity tolerance.
    """
    q = np.asarray(q)
    step = _uniform_step(q, dtype)
    if step is None:
        return np.asarray(q, np.float64).copy(), np.zeros(1)
    return q_blocks(float(q[0]), step, len(q))


GRID_MULTIPLE = 16
""":func:`padded_grid` extends a grid to a multiple of this many points."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GridArrays:
    """A q grid carried as arrays, so that through ``jax.jit`` its values are traced and only its shape is static:
    a program compiled for one grid serves every grid of the same length (and uniformity), where a NumPy grid closed
    over, or a :class:`QGrid`, compiles once per grid. ``xfit.intensity`` takes it wherever it takes q and keeps the
    fast angle-addition kernel, its blocks having been read from the values on the host (:func:`padded_grid`).

    Attributes:
        q: the grid (n,) in 1/A, q = 4 pi sin(theta)/lambda.
        qa, dm: anchors (A,) and offsets (M,) with q_k = qa_a + dm_m, k = a M + m (:func:`q_blocks`); a
            non-uniform grid has qa = q and dm = [0] (the pair sum evaluated point by point).
    """

    q: jax.Array
    qa: jax.Array
    dm: jax.Array

    def __len__(self) -> int:
        return self.q.shape[0]

    @classmethod
    def of(cls, q: np.ndarray) -> GridArrays:
        """The concrete grid q (n,) in 1/A with its blocks read on the host (:func:`blocks_of`), float64."""
        values = np.asarray(q, np.float64)
        return cls(values, *blocks_of(values))


def padded_grid(q: np.ndarray, multiple: int = GRID_MULTIPLE) -> tuple[GridArrays, int]:
    """The grid q (n,) in 1/A (q = 4 pi sin(theta)/lambda) as :class:`GridArrays` of n_pad >= n points, n_pad the
    next multiple of ``multiple``, and n. A uniform grid goes on with its own step (so it stays uniform and keeps
    the fast kernel, whose blocks span a multiple of their size anyway); a non-uniform one, or a uniform one that
    would pass ``Q_MAX``, repeats its last point. The points past n are the caller's to ignore (a likelihood gives
    them weight 0); their purpose is that grids of nearby lengths share one compiled program. float64 arrays."""
    values = np.asarray(q, np.float64)
    n = len(values)
    n_pad = -(-n // multiple) * multiple
    step = _uniform_step(values)
    if step is not None and values[0] + step * (n_pad - 1) <= _elements.Q_MAX:
        padded = np.concatenate([values, values[0] + step * np.arange(n, n_pad)])
    else:
        padded = np.concatenate([values, np.full(n_pad - n, values[-1])])
    return GridArrays.of(padded), n


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class QGrid:
    """A uniform momentum-transfer grid q_k = start + k (stop - start)/(num - 1), k = 0..num-1, in 1/A
    (q = 4 pi sin(theta)/lambda), held as three Python numbers.

    Use it where q would be traced: ``xfit.intensity`` takes it anywhere it takes a q array, and it is a static
    pytree (no array leaves), so ``jax.jit(loss)(x, xfit.QGrid(0.5, 8.0, 512))`` keeps the fast angle-addition
    kernel. Its values (float64) are ``np.asarray(grid)`` or ``grid.values``; a different grid recompiles, as a
    different static argument does.

    Example:
        >>> grid = QGrid(0.5, 8.0, 512)
        >>> len(grid), round(grid.step, 6)
        (512, 0.014677)
        >>> QGrid.from_values(np.linspace(0.5, 8.0, 512).astype(np.float32)) == grid
        True
    """

    start: float
    stop: float
    num: int

    def __post_init__(self):
        object.__setattr__(self, "start", float(self.start))
        object.__setattr__(self, "stop", float(self.stop))
        if isinstance(self.num, bool) or int(self.num) != self.num or self.num < 1:
            raise ValueError(f"QGrid num must be a positive integer, got {self.num!r}")
        object.__setattr__(self, "num", int(self.num))
        if not (np.isfinite(self.start) and np.isfinite(self.stop)):
            raise ValueError(f"QGrid start and stop must be finite, got {self.start}, {self.stop}")
        if self.start < 0:
            raise ValueError(f"QGrid start must be non-negative (q = 4 pi sin(theta)/lambda), got {self.start:g} 1/A")
        single = self.num == 1
        if self.stop < self.start or (single and self.stop != self.start) or (not single and self.stop == self.start):
            raise ValueError(f"QGrid needs start < stop for num > 1 (start == stop for num = 1), got {self}")
        if self.stop > _elements.Q_MAX:
            raise ValueError(
                f"QGrid stop {self.stop:g} 1/A is beyond the form-factor tables' range q <= {_elements.Q_MAX:.2f} 1/A"
            )

    @classmethod
    def from_values(cls, q) -> QGrid:
        """The grid of a concrete array that is uniform to within its dtype's rounding (``uniform_tolerance``).

        Raises:
            ValueError: q is not 1-D, has fewer than 2 points, or is not uniformly spaced (the message gives the
                largest deviation).
        """
        q = np.asarray(q)
        if q.ndim != 1 or len(q) < 2:
            raise ValueError(f"a QGrid needs a 1-D array of at least 2 points, got shape {q.shape}")
        if _uniform_step(q) is None:
            values = np.asarray(q, np.float64)
            dq = (values[-1] - values[0]) / (len(q) - 1)
            deviation = np.max(np.abs(values - (values[0] + dq * np.arange(len(q)))))
            raise ValueError(
                f"q is not a uniform grid: it deviates from q[0] + k dq by up to {deviation:.3g} 1/A "
                f"(tolerance {uniform_tolerance(q):.3g} for {q.dtype})"
            )
        return cls(float(q[0]), float(q[-1]), len(q))

    @property
    def step(self) -> float:
        """Spacing dq in 1/A (0 for a single point)."""
        return (self.stop - self.start) / (self.num - 1) if self.num > 1 else 0.0

    @property
    def values(self) -> np.ndarray:
        """The grid points (num,), float64, 1/A."""
        return np.linspace(self.start, self.stop, self.num)

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Anchors and offsets of the angle-addition kernel (see :func:`q_blocks`)."""
        return q_blocks(self.start, self.step, self.num)

    def __len__(self) -> int:
        return self.num

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


def traced_blocks(q) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Anchors and offsets of a traced q array (n_q,), assuming it is uniform, and whether it is.

    The block structure (A anchors x M offsets) depends only on n_q, which is static even when the values are
    traced; start and step are read from the values: qa = q[0] + step M arange(A), dm = step arange(M), with
    step = (q[-1] - q[0])/(n_q - 1). ``uniform`` (a traced bool) says whether q lies on that grid within
    :func:`uniform_tolerance` of its dtype; where it does not, the caller must use the direct sum.
    """
    import jax.numpy as jnp

    n_q = q.shape[0]
    unit_a, unit_m = q_blocks(0.0, 1.0, n_q)  # multiples of the step
    step = (q[-1] - q[0]) / (n_q - 1)
    deviation = jnp.max(jnp.abs(q - (q[0] + step * jnp.arange(n_q, dtype=q.dtype))))
    eps = float(np.finfo(np.dtype(q.dtype)).eps)
    tolerance = max(UNIFORM_RTOL_FLOAT64, UNIFORM_ULPS * eps) * jnp.max(jnp.abs(q))
    uniform = (step > 0) & (deviation <= tolerance)
    return q[0] + step * jnp.asarray(unit_a, q.dtype), step * jnp.asarray(unit_m, q.dtype), uniform


def traced_irregular_warning(n_q: int):
    """A host callback that warns, once per compiled program, that a traced q grid of n_q points is not uniform.

    Called from inside the program (``jax.debug.callback``) with the traced ``uniform`` flag, it warns only where
    the flag is false (under ``vmap`` the branch may run for every grid of a batch) and only the first time.
    """
    warned = []

    def callback(uniform) -> None:
        if warned or bool(np.all(uniform)):
            return
        warned.append(True)
        warnings.warn(
            f"q is a traced array of {n_q} points that is not uniformly spaced, so xfit evaluates the direct pair "
            "sum: n_q sines per pair instead of 2 (A + M) for A x M blocks of the grid (96 instead of 512 at 512 "
            "points; ~5x slower). Resample onto a uniform grid (xfit.QGrid(start, stop, num), or any evenly spaced "
            "array) or pass method='direct' to make the choice explicit and silence this.",
            PerformanceWarning,
            stacklevel=2,
        )

    return callback
