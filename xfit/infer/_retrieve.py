"""``xfit.retrieve``: the structure behind a scattering pattern, with its fit, parameters and uncertainties.

Pipeline for each pattern: starts (the input geometry and random perturbations of it) are refined together by
gradient descent on chi^2 (see ``xfit.infer._refine``), ranked by chi^2 (data + restraints), near-duplicates merged, and
the best candidate gets Gauss-Newton standard errors with the rigid-body modes projected out.

Choices where the data say nothing:
- sigma absent: the fit assumes noise of ``relative_sigma`` (default 0.1 %) of each intensity value (for difference
  patterns, that noise on both I_on and I_off), which sets how the data weigh against the restraints;
  ``chi2_reduced`` is then reported against that assumption, and the uncertainties are scaled by it (they are
  multiplied by sqrt(chi2_reduced), i.e. the noise level is re-estimated from the best fit's residual).
- ``chi2_reduced`` = chi2_data / (n_q - number of nuisance parameters); structural parameters are not subtracted,
  since the restraints make their effective number ambiguous.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem import _metrics
from xfit.chem._structures import as_arrays, rigid_body_modes
from xfit.data._pattern import Pattern
from xfit.infer import _refine
from xfit.learn import _proposal
from xfit.physics import _iam

__all__ = ["Retrieval", "Uncertainty", "retrieve"]


@dataclasses.dataclass(frozen=True, eq=False)
class Uncertainty:
    """How sure the retrieval is.

    Attributes:
        distances: standard errors (A) of all interatomic distances, (n_atoms, n_atoms), Gauss-Newton at the optimum.
        positions: standard errors (A) of the Cartesian coordinates in the frame of ``Retrieval.atoms`` (centred),
            (n_atoms, 3), rigid-body modes projected out.
        candidate_spread: standard deviation (A) of each interatomic distance over the candidates whose chi^2 is
            comparable with the best (within 2 standard deviations of a chi^2 variable), (n_atoms, n_atoms).
        n_comparable: how many candidates that spread is taken over.
        covariance: full covariance (3 n_atoms, 3 n_atoms) of the coordinates (A^2), in the same frame.
        reference_positions: the coordinates (n_atoms, 3) the covariance belongs to (the best structure, centred).
    """

    distances: np.ndarray
    positions: np.ndarray
    candidate_spread: np.ndarray
    n_comparable: int
    covariance: np.ndarray
    reference_positions: np.ndarray

    def distance(self, i: int, j: int) -> float:
        """Standard error (A) of the distance between atoms i and j."""
        return float(self.distances[i, j])

    def of(self, fn, *, step: float = 1e-4) -> float:
        """Standard error of any scalar function of the positions, sqrt(g^T C g), g by central differences.

        Args:
            fn: maps positions (n_atoms, 3) in A to a float (a torsion in degrees, a puckering amplitude, ...).
            step: finite-difference step in A.
        """
        x = self.reference_positions
        grad = np.zeros(x.size)
        for k in range(x.size):
            plus, minus = x.copy().ravel(), x.copy().ravel()
            plus[k] += step
            minus[k] -= step
            grad[k] = (fn(plus.reshape(x.shape)) - fn(minus.reshape(x.shape))) / (2 * step)
        return float(np.sqrt(max(grad @ self.covariance @ grad, 0.0)))


@dataclasses.dataclass(frozen=True, eq=False)
class Retrieval:
    """Result of :func:`retrieve` for one pattern.

    Attributes:
        atoms: best structure (lowest chi^2), ``ase.Atoms``.
        candidates: distinct refined structures ranked by chi^2 (``candidates[0]`` is ``atoms``).
        chi2: total chi^2 (data + restraints) of each candidate.
        chi2_reduced: data chi^2 of the best candidate per degree of freedom (see module notes).
        parameters: nuisance parameters of the best fit: scale (and background) for intensities, excitation
            fraction for percent differences, fraction_x_scale for plain differences.
        model: the fitted pattern on the input q grid, an ``xfit.Pattern``.
        uncertainty: :class:`Uncertainty` of the best structure.
        pattern: the input pattern. reference: the reference structure (difference patterns) or None.
    """

    atoms: Atoms
    candidates: list[Atoms]
    chi2: np.ndarray
    chi2_reduced: float
    parameters: dict[str, float]
    model: Pattern
    uncertainty: Uncertainty
    pattern: Pattern
    reference: Atoms | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:.4g}" for k, v in self.parameters.items())
        return (
            f"Retrieval({self.atoms.get_chemical_formula()}, chi2_reduced={self.chi2_reduced:.3g}, {params}, "
            f"{len(self.candidates)} candidates)"
        )

    def plot(self, path=None, *, pairs: Sequence[tuple[int, int]] | None = None):
        """Data, fit and normalised residual, and the structure (heavy-atom distances with error bars).

        Args:
            path: image file to write; None returns the matplotlib figure.
            pairs: atom pairs whose distances to show in the structure panel (default: heavy-atom bonds).
        """
        from xfit import _plot

        return _plot.plot_retrieval(self, path, pairs=pairs)


def _weights(pattern: Pattern, relative_sigma: float) -> tuple[np.ndarray, bool]:
    """1/sigma^2, and whether sigma was given.

    Without sigma the noise is assumed to be ``relative_sigma`` of each intensity value, or, for difference
    patterns, ``relative_sigma`` x 100 sqrt(2) percent (that noise on both I_on and I_off) and relative_sigma x
    sqrt(2) x the RMS of the signal for plain differences. The scale matters: it sets how the data weigh against
    the restraints.
    """
    if pattern.sigma is not None:
        return 1.0 / pattern.sigma**2, True
    y = np.abs(pattern.values)
    if pattern.kind in _refine.INTENSITY_KINDS:
        floor = y[y > 0].min() if np.any(y > 0) else 1.0
        sigma = relative_sigma * np.where(y > 0, y, floor)
    elif pattern.kind == "percent_difference":
        sigma = np.full_like(y, 100 * np.sqrt(2) * relative_sigma)
    else:
        sigma = np.full_like(y, np.sqrt(2) * relative_sigma * max(np.sqrt(np.mean(y * y)), 1e-300))
    return 1.0 / sigma**2, False


def _gauss_newton(data, restraints, x, y, w, i_ref, scale_covariance):
    """Covariance (3n, 3n) of the coordinates from the Gauss-Newton Hessian J^T J of the weighted residuals."""
    sqrt_w = jnp.sqrt(w)

    def residuals(flat):
        xs = flat.reshape(x.shape)
        model, _ = _refine.model_and_parameters(data, xs, y, w, i_ref)
        r = sqrt_w * (y - model)
        if len(restraints.targets):
            i, j = restraints.pairs[:, 0], restraints.pairs[:, 1]
            d = jnp.sqrt(jnp.sum((xs[i] - xs[j]) ** 2, axis=-1))
            r = jnp.concatenate([r, (d - restraints.targets) / restraints.sigmas])
        return r

    jac = np.asarray(jax.jacrev(residuals)(jnp.asarray(x.ravel())))
    hessian = jac.T @ jac
    rigid = rigid_body_modes(x).T
    projector = np.eye(len(hessian)) - rigid @ rigid.T
    covariance = np.linalg.pinv(projector @ hessian @ projector, rcond=1e-10, hermitian=True)
    covariance = projector @ covariance @ projector
    return covariance * scale_covariance


def _distance_errors(x: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    n = len(x)
    out = np.zeros((n, n))
    i, j = np.triu_indices(n, k=1)
    d = x[i] - x[j]
    unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    for k, (a, b) in enumerate(zip(i, j, strict=True)):
        g = np.zeros(3 * n)
        g[3 * a : 3 * a + 3] = unit[k]
        g[3 * b : 3 * b + 3] = -unit[k]
        out[a, b] = out[b, a] = np.sqrt(max(g @ covariance @ g, 0.0))
    return out


def _distinct(structures: np.ndarray, order: np.ndarray, numbers: np.ndarray, tolerance: float) -> list[int]:
    """Indices (in ``order``) of candidates that differ from every better-ranked one by > tolerance (A, RMSD)."""
    heavy = numbers > 1 if np.any(numbers > 1) else np.ones(len(numbers), bool)
    kept: list[int] = []
    for k in order:
        a = structures[k][heavy] - structures[k][heavy].mean(axis=0)
        duplicate = False
        for m in kept:
            b = structures[m][heavy] - structures[m][heavy].mean(axis=0)
            if _metrics.kabsch(a, b, allow_reflection=True)[1] < tolerance:
                duplicate = True
                break
        if not duplicate:
            kept.append(int(k))
    return kept


STRETCH_MAX = 4.0
"""Largest extra separation (A) given to a free pair in the stretched starts."""


def _starts(atoms: Atoms, n_patterns: int, n_starts: int, perturbation: float, free_pairs, rng) -> np.ndarray:
    """Starting structures (n_patterns, n_starts, n_atoms, 3): the input geometry, then random Cartesian
    perturbations of it. With free pairs (bonds that may break), every second perturbed start also pulls each free
    pair apart by a random 0..STRETCH_MAX A along its axis, shared out over the atoms near each end (weights 1/2,
    1/4, 1/8 by bond-graph distance), so that the search also begins in broken-bond basins that small
    perturbations never reach."""
    start = np.asarray(atoms.positions, np.float64)
    x0 = np.broadcast_to(start, (n_patterns, n_starts, len(atoms), 3)).copy()
    x0[:, 1:] += rng.normal(0.0, perturbation, x0[:, 1:].shape)
    if not free_pairs or n_starts < 3:
        return x0
    hops = _graph_distances(atoms, free_pairs)
    for i, j in free_pairs:
        axis = start[j] - start[i]
        axis /= np.linalg.norm(axis)
        # Positive weight: moves with j; negative: with i. Atoms as near to both ends cancel out.
        weight = 0.5 ** (1 + hops[j]) - 0.5 ** (1 + hops[i])
        stretch = rng.uniform(0.0, STRETCH_MAX, (n_patterns, len(range(2, n_starts, 2))))
        x0[:, 2::2] += stretch[..., None, None] * weight[:, None] * axis
    return x0


def _extra_starts(starts, atoms: Atoms) -> np.ndarray:
    """User-given starting structures as (n_extra, n_atoms, 3), validated against ``atoms``."""
    if isinstance(starts, Atoms):
        starts = [starts]
    if isinstance(starts, np.ndarray | jax.Array):
        extra = np.asarray(starts, np.float64).reshape(-1, len(atoms), 3) if np.size(starts) else None
        if extra is None or np.shape(starts)[-2:] != (len(atoms), 3):
            raise ValueError(f"starts must have shape (n, {len(atoms)}, 3), got {np.shape(starts)}")
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


def _graph_distances(atoms: Atoms, free_pairs) -> np.ndarray:
    """Bond-graph distances (n_atoms, n_atoms), free pairs not counted as bonds, capped at 3 hops (4 = farther)."""
    from xfit.chem._structures import covalent_bonds, graph_hops

    free = {tuple(sorted(p)) for p in free_pairs}
    bonds = [(a, b) for a, b in covalent_bonds(atoms) if (a, b) not in free]
    return graph_hops(len(atoms), bonds, 4)


def _shard(arrays: list[np.ndarray], dtype) -> list[jax.Array]:
    """Put arrays whose leading axis runs over patterns on the local devices, split along that axis.

    With one device this is a plain transfer. With several (GPUs, or CPU devices from
    XLA_FLAGS=--xla_force_host_platform_device_count=N), the pattern axis is padded to a multiple of the device count
    by repeating the last pattern, and jit partitions the refinement across the devices (jax.sharding).
    """
    devices = jax.local_devices()
    if len(devices) == 1:
        return [jnp.asarray(a, dtype) for a in arrays]
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    pad = -len(arrays[0]) % len(devices)
    sharding = NamedSharding(Mesh(np.array(devices), ("patterns",)), PartitionSpec("patterns"))
    out = []
    for a in arrays:
        a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a
        out.append(jax.device_put(jnp.asarray(a, dtype), sharding))
    return out


PRIOR_FRACTIONS = (0.025, 0.05, 0.1, 0.2, 0.4, 1.0)
"""Excitation fractions at which the prior reads a percent difference whose fraction is unknown."""

PRIOR_KINDS = ("total", "elastic", "molecular", "percent_difference")
AUTO_PRIORS = ("nmm_chd_dt",)
"""The shipped priors that ``prior="auto"`` tries, in order."""


@functools.cache
def _shipped_prior(name: str):
    return _proposal.load_prior(name)


def _resolve_prior(prior, atoms: Atoms, kind: str):
    """The prior to use, or None (see ``retrieve``)."""
    if prior is None or prior is False:
        return None
    if isinstance(prior, str) and prior == "auto":
        if kind not in PRIOR_KINDS:
            return None
        # Only a prior trained on this molecule: the broad prior is opt-in (prior="broad"), since on molecules it
        # never saw it has not shown a consistent gain yet (benchmarks/prior.py, section 5).
        for name in AUTO_PRIORS:
            model = _shipped_prior(name)
            if model.fits(atoms):
                return model
        return None
    model = prior if isinstance(prior, _proposal.Prior) else _proposal.load_prior(prior)
    if kind not in PRIOR_KINDS:
        raise ValueError(f"the prior reads {PRIOR_KINDS} patterns, not {kind!r}; pass prior=None")
    if len(atoms) > model.config.max_atoms:
        raise ValueError(f"the prior takes molecules of at most {model.config.max_atoms} atoms, not {len(atoms)}")
    return model


def _prior_starts(model, patterns: list[Pattern], reference: Atoms, fraction, model_kind: str) -> np.ndarray:
    """The prior's proposals as starts (n_patterns, n_proposals, n_atoms, 3)."""
    q, y, kind = patterns[0].q, np.stack([p.values for p in patterns]), patterns[0].kind
    fractions = [None] if kind != "percent_difference" else ([fraction] if fraction else list(PRIOR_FRACTIONS))
    proposals = [model.propose(q, y, kind, reference, fraction=f, model_kind=model_kind)[0] for f in fractions]
    return np.concatenate(proposals, axis=1)


def _check_inputs(patterns: list[Pattern], atoms: Atoms, reference: Atoms | None):
    numbers, _, _ = as_arrays(atoms)
    if reference is not None:
        if len(reference) != len(atoms) or not np.array_equal(reference.numbers, atoms.numbers):
            raise ValueError(
                f"reference ({reference.get_chemical_formula()}, {len(reference)} atoms) does not have the same "
                f"atoms in the same order as atoms ({atoms.get_chemical_formula()}, {len(atoms)} atoms)"
            )
        as_arrays(reference)
    first = patterns[0]
    for k, p in enumerate(patterns):
        if not isinstance(p, Pattern):
            raise TypeError(f"pattern {k} is a {type(p).__name__}, not an xfit.Pattern")
        if p.probe != "xray":
            raise ValueError(f"pattern {k}: probe {p.probe!r} is not supported by retrieval yet (X-ray only)")
        if not np.array_equal(p.q, first.q) or p.kind != first.kind:
            raise ValueError(
                f"pattern {k} has a different q grid or kind from pattern 0; patterns retrieved in one call must share "
                "both (call retrieve separately for each grid)"
            )
        if len(p) < 2:
            raise ValueError(f"pattern {k} has {len(p)} point(s); a fit needs more")
    try:
        _iam.check_q(first.q, name="pattern q")
    except ValueError as err:
        raise ValueError(f"{err} (the model cannot be evaluated there)") from None
    return numbers


def retrieve(
    pattern: Pattern | Sequence[Pattern],
    atoms: Atoms,
    *,
    reference: Atoms | None = None,
    fraction: float | None = None,
    model_kind: str = "total",
    background: bool = False,
    restraints: str | _refine.Restraints | None = "covalent",
    free_pairs: Sequence[tuple[int, int]] = (),
    bond_sigma: float = 0.03,
    angle_sigma: float = 0.1,
    n_starts: int = 32,
    starts=None,
    perturbation: float = 0.15,
    steps: int = 1000,
    learning_rate: float = 0.02,
    smoothness: float = 0.0,
    final_restraint_weight: float = 0.05,
    relative_sigma: float = 1e-3,
    duplicate_tolerance: float = 0.02,
    seed: int = 0,
    dtype=jnp.float32,
    progress: bool = False,
    chunk: int | None = None,
    prior="auto",
) -> Retrieval | list[Retrieval]:
    """Retrieve the molecular structure behind a scattering pattern (or a batch of them).

    Args:
        pattern: an ``xfit.Pattern``, or a sequence of them on one q grid (a time series, a stack of shots),
            which gives a list of results. q = 4 pi sin(theta)/lambda in 1/A.
        atoms: the molecule, ``ase.Atoms``; its geometry is the starting point of the search and the default
            reference (ground state) for difference patterns and restraints.
        reference: reference structure for difference patterns and restraint targets (default: ``atoms``).
        fraction: excitation fraction for percent-difference/difference patterns; None fits it.
        model_kind: which intensity the model computes for difference patterns ("total" or "elastic", ...).
            Intensity patterns are modelled with their own kind.
        background: also fit a flat background (intensity patterns).
        restraints: "covalent" (bonds and 1-3 distances of the reference, see ``free_pairs``), None for
            restraint-free fitting, or an explicit ``Restraints``.
        free_pairs: atom pairs (i, j) whose bond may break: not restrained, nor any 1-3 distance through them.
        bond_sigma, angle_sigma: restraint widths in A for bonds and 1-3 distances.
        n_starts: starts per pattern: the input geometry and n_starts - 1 random perturbations of it.
        starts: extra starting structures tried for every pattern besides those (e.g. a learned prior's
            proposals): ``ase.Atoms`` of this molecule, or an array (n_extra, n_atoms, 3) in A.
        perturbation: standard deviation (A) of the random Cartesian displacements of the starts.
        steps, learning_rate: Adam iterations and initial step (A), cosine-decayed.
        final_restraint_weight: the restraints weigh fully in the first half of the run, to guide the search, then
            decay to this weight, so that the data, not the reference geometry, set the final structure; ranking
            and error bars use this final weight. 1 keeps them at full weight throughout.
        smoothness: coupling (chi^2 per A^2) of interatomic distances between neighbouring patterns of a sequence.
        relative_sigma: the noise assumed for patterns without sigma, as a fraction of the intensity (see module
            notes); it sets how the data weigh against the restraints.
        duplicate_tolerance: candidates within this heavy-atom RMSD (A) of a better one are merged into it.
        seed: seed of the random starts (the same seed gives the same result).
        dtype: float32 (fast) or float64 (needs jax_enable_x64) for the refinement.
        progress: show a progress bar (stderr) over chunks of a batch.
        chunk: patterns refined per compiled call (default: all of them, or 64 with ``progress``).
        prior: the learned prior whose K proposals per pattern join the starts. "auto" (default) uses the shipped
            NMM/CHD/DT prior for those molecules (``Prior.fits``: same bond graph) when the pattern is one it reads
            (X-ray total, elastic, molecular or percent difference), and nothing otherwise; a shipped prior's name
            ("nmm_chd_dt", or "broad" for any molecule of H, C, N, O, S up to 24 atoms), a folder written by
            ``xfit train`` or an ``xfit.Prior`` uses that one (an error if it cannot read the pattern); None or
            False switches it off. For a percent difference with the fraction unknown, the prior proposes at
            fractions 2.5 % to 100 % (PRIOR_FRACTIONS) and all proposals join. ``info["prior"]`` says which was
            used.

    Returns:
        A :class:`Retrieval` (one pattern) or a list of them (a sequence of patterns).

    Raises:
        ValueError: NaN or sigma <= 0 in a pattern (raised when the Pattern is built), q outside the model's range,
        a difference pattern with no reference geometry, atoms whose count or order does not match the reference,
        patterns on different q grids, unknown options.
    """
    single = isinstance(pattern, Pattern)
    patterns = [pattern] if single else list(pattern)
    if not patterns:
        raise ValueError("no patterns given")
    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms (the starting structure), got {type(atoms).__name__}")
    numbers = _check_inputs(patterns, atoms, reference)
    reference = atoms if reference is None else reference
    kind = patterns[0].kind
    difference_kind = kind in ("percent_difference", "difference")
    if model_kind not in _iam.KINDS:
        raise ValueError(f"unknown model_kind {model_kind!r}; choose one of {_iam.KINDS}")
    if fraction is not None and not difference_kind:
        raise ValueError(f"fraction is for difference patterns; this pattern's kind is {kind!r}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 0 <= final_restraint_weight <= 1:
        raise ValueError(f"final_restraint_weight must be in [0, 1], got {final_restraint_weight}")
    if n_starts < 1 or steps < 1:
        raise ValueError("n_starts and steps must be at least 1")

    if restraints == "covalent":
        restraint_set = _refine.covalent_restraints(
            reference, free_pairs=free_pairs, bond_sigma=bond_sigma, angle_sigma=angle_sigma
        )
    elif restraints is None:
        restraint_set = _refine.Restraints.none()
    elif isinstance(restraints, _refine.Restraints):
        restraint_set = restraints
    else:
        raise ValueError(f"restraints must be 'covalent', None or a Restraints, got {restraints!r}")

    q = patterns[0].q
    data = _refine.Data(
        numbers=tuple(int(z) for z in numbers),
        q=tuple(float(v) for v in q),
        kind=kind,
        model_kind=model_kind if difference_kind else kind,
        fraction=fraction,
        background=background and not difference_kind,
    )
    y = np.stack([p.values for p in patterns])
    if not relative_sigma > 0:
        raise ValueError(f"relative_sigma must be positive, got {relative_sigma}")
    weights = [_weights(p, relative_sigma) for p in patterns]
    w = np.stack([wt for wt, _ in weights])
    with jax.enable_x64(dtype == jnp.float64):
        i_ref = np.asarray(_iam.intensity(numbers, jnp.asarray(reference.positions, dtype), q, kind=data.model_kind))
    i_ref = np.broadcast_to(i_ref, y.shape)

    x0 = _starts(atoms, len(patterns), n_starts, perturbation, free_pairs, np.random.default_rng(seed))
    prior_model = _resolve_prior(prior, atoms, kind)
    if prior_model is not None:
        x0 = np.concatenate([x0, _prior_starts(prior_model, patterns, reference, fraction, model_kind)], axis=1)
    if starts is not None:
        extra = _extra_starts(starts, atoms)
        x0 = np.concatenate([x0, np.broadcast_to(extra, (len(patterns), *extra.shape))], axis=1)

    chunk = chunk or (64 if progress else len(patterns))
    if smoothness and chunk < len(patterns):
        chunk = len(patterns)  # a coupled series must be refined in one piece
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(patterns), desc="retrieve", unit="pattern")
    xs, chi2_data, chi2_restraints = [], [], []
    with jax.enable_x64(dtype == jnp.float64):
        rs = _refine.Restraints(
            np.asarray(restraint_set.pairs, np.int32),
            jnp.asarray(restraint_set.targets, dtype),
            jnp.asarray(restraint_set.sigmas, dtype),
        )
        for lo in range(0, len(patterns), chunk):
            batch = [a[lo : lo + chunk] for a in (x0, y, w, i_ref)]
            out = _refine.refine(
                data,
                rs,
                *_shard(batch, dtype),
                jnp.asarray(smoothness, dtype),
                jnp.asarray(final_restraint_weight, dtype),
                steps=steps,
                learning_rate=learning_rate,
            )
            n = len(batch[0])
            xs.append(np.asarray(out[0], np.float64)[:n])
            chi2_data.append(np.asarray(out[1], np.float64)[:n])
            chi2_restraints.append(np.asarray(out[2], np.float64)[:n])
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    xs, chi2_data, chi2_restraints = (np.concatenate(a) for a in (xs, chi2_data, chi2_restraints))

    # Ranking and error bars use the objective as it stands at the end of the run: restraints at their final weight.
    final = restraint_set._replace(sigmas=restraint_set.sigmas / np.sqrt(final_restraint_weight))
    final = final if final_restraint_weight > 0 else _refine.Restraints.none()
    chi2_restraints = chi2_restraints * final_restraint_weight
    results = []
    with jax.enable_x64(True):
        for t, p in enumerate(patterns):
            results.append(
                _assemble(
                    data,
                    final,
                    p,
                    atoms,
                    reference if difference_kind else None,
                    xs[t],
                    chi2_data[t],
                    chi2_restraints[t],
                    y[t],
                    w[t],
                    i_ref[t],
                    weights[t][1],
                    duplicate_tolerance,
                    {
                        "n_starts": x0.shape[1],
                        "steps": steps,
                        "restraints": len(rs.targets),
                        "seed": seed,
                        "final_restraint_weight": final_restraint_weight,
                        "prior": None if prior_model is None else prior_model.path,
                    },
                )
            )
    return results[0] if single else results


def _assemble(
    data, restraints, pattern, atoms, reference, x, chi2_data, chi2_restraints, y, w, i_ref, has_sigma, tol, info
):
    """Rank, merge, and characterise the refined candidates of one pattern (float64)."""
    numbers = np.asarray(data.numbers)
    total = chi2_data + chi2_restraints
    order = np.argsort(total)
    kept = _distinct(x, order, numbers, tol)
    best = kept[0]
    x_best = x[best] - x[best].mean(axis=0)

    model, params = _refine.model_and_parameters(data, jnp.asarray(x_best), y, w, i_ref)
    n_nuisance = len(params) if data.fraction is None or data.kind in _refine.INTENSITY_KINDS else 0
    dof = max(len(y) - n_nuisance, 1)
    chi2_reduced = float(chi2_data[best]) / dof
    scale_cov = 1.0 if has_sigma else chi2_reduced
    covariance = _gauss_newton(data, restraints, x_best, y, w, i_ref, scale_cov)
    position_errors = np.sqrt(np.clip(np.diag(covariance), 0, None)).reshape(-1, 3)

    n_sigma = 2.0 * np.sqrt(2.0 * dof) * (chi2_reduced if not has_sigma else 1.0)
    comparable = [k for k in kept if total[k] <= total[best] + n_sigma]
    d = np.stack([np.linalg.norm(x[k][:, None] - x[k][None], axis=-1) for k in comparable])
    sigma = None if not has_sigma else pattern.sigma
    model_pattern = Pattern(
        pattern.q,
        np.asarray(model, np.float64),
        sigma,
        kind=pattern.kind,
        probe=pattern.probe,
        delay=pattern.delay,
        metadata={"model": "IAM", "model_kind": data.model_kind},
    )

    def to_atoms(k):
        out = atoms.copy()
        out.positions = x[k] - x[k].mean(axis=0)
        return out

    best_atoms = to_atoms(best)
    return Retrieval(
        atoms=best_atoms,
        candidates=[best_atoms] + [to_atoms(k) for k in kept[1:]],
        chi2=total[kept],
        chi2_reduced=chi2_reduced,
        parameters={k: float(v) for k, v in params.items()},
        model=model_pattern,
        uncertainty=Uncertainty(
            distances=_distance_errors(x_best, covariance),
            positions=position_errors,
            candidate_spread=d.std(axis=0),
            n_comparable=len(comparable),
            covariance=covariance,
            reference_positions=x_best,
        ),
        pattern=pattern,
        reference=reference,
        info={**info, "chi2_data": float(chi2_data[best]), "chi2_restraints": float(chi2_restraints[best])},
    )
