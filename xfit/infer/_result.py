"""What ``retrieve`` returns: :class:`Retrieval` and :class:`Uncertainty`, and the two ways of summarising a
strategy's :class:`~xfit.infer._problem.Ensemble` into them.

- Candidates (refinement): ranked by chi^2 + restraints, near-duplicates merged; the best gets Gauss-Newton
  standard errors with the rigid-body modes projected out (Laplace at the optimum).
- Samples (posterior): aligned, clustered into modes by heavy-atom RMSD (reflection allowed), each mode weighed by
  its posterior mass; the structure is the heaviest mode's weighted mean heavy atoms, with the hydrogens of that
  mode's heaviest basin, relaxed to the nearest optimum of the posterior (``Ensemble.relax``; a mean of basins
  whose hydrogens differ need not fit), and the uncertainties (distances, positions, ``Uncertainty.of`` and
  ``draw``) come from the mixture of every basin's Laplace Gaussian, weighted by the strategy's ``error_weights``
  (tempered masses: the truth's basin often lies in another mode, ``xfit.Posterior``), never narrower than the
  chosen mode's samples.

``chi2_reduced`` = chi2_data / (n_q - number of nuisance parameters); structural parameters are not subtracted,
since the restraints or the prior make their effective number ambiguous. Without sigma the uncertainties are scaled
by sqrt(chi2_reduced): the noise level is re-estimated from the best fit's residual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem import _metrics
from xfit.chem._structures import rigid_body_modes
from xfit.data._pattern import Pattern
from xfit.infer._likelihood import Likelihood, model_and_parameters, prior_residuals
from xfit.infer._problem import Ensemble, Problem
from xfit.infer._restraints import Restraints

__all__ = ["Retrieval", "Uncertainty", "summarise"]


@dataclasses.dataclass(frozen=True, eq=False)
class Uncertainty:
    """How sure the retrieval is.

    Attributes:
        distances: standard errors (A) of all interatomic distances, (n_atoms, n_atoms): Gauss-Newton at the
            optimum (refinement) or the posterior standard deviation (posterior: over ``basins`` where the strategy
            gives them, never narrower than the chosen mode's samples).
        positions: standard errors (A) of the Cartesian coordinates in the frame of ``Retrieval.atoms`` (centred),
            (n_atoms, 3), rigid-body modes projected out: the square root of ``covariance``'s diagonal.
        candidate_spread: standard deviation (A) of each interatomic distance over the candidates whose chi^2 is
            comparable with the best (refinement), or over all posterior samples, every mode (posterior).
        n_comparable: how many candidates (refinement) or modes (posterior) that spread is taken over.
        covariance: full covariance (3 n_atoms, 3 n_atoms) of the coordinates (A^2), in the same frame: Gauss-Newton
            (refinement), the mixture of ``basins`` about its mean, or the chosen mode's samples (posterior without
            basins).
        reference_positions: the coordinates (n_atoms, 3) the covariance belongs to (the structure, centred).
        samples: the chosen mode's aligned samples (n, n_atoms, 3) and their weights (n,), or None (refinement).
        basins: the Gaussian mixture the posterior's error bars come from, or None: (optima (B, n_atoms, 3) in A and
            covariances (B, 3 n_atoms, 3 n_atoms) in A^2, each superposed on the structure in its frame with
            equivalent atoms relabelled to match it, and weights (B,) summing to 1): every kept basin of the
            posterior, each a Laplace Gaussian, weighted by its tempered mass (``xfit.Posterior``'s
            ``basin_tempering``).
    """

    distances: np.ndarray
    positions: np.ndarray
    candidate_spread: np.ndarray
    n_comparable: int
    covariance: np.ndarray
    reference_positions: np.ndarray
    samples: tuple[np.ndarray, np.ndarray] | None = None
    basins: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def distance(self, i: int, j: int) -> float:
        """Standard error (A) of the distance between atoms i and j."""
        return float(self.distances[i, j])

    def of(self, fn, *, step: float = 1e-4, period: float | None = None) -> float:
        """Standard error of any scalar function of the positions, as ``distances`` are made.

        Posterior: the standard deviation of fn under the mixture of ``basins`` (fn linearised within each basin,
        the spread of its values at the basins' optima between them), never less than its weighted standard
        deviation over the chosen mode's samples; so ``of`` of a distance equals ``distance`` to first order.
        Refinement: linearised at the structure, sqrt(g^T C g). Gradients g by central differences.

        Args:
            fn: maps positions (n_atoms, 3) in A to a float (a torsion in degrees, a puckering amplitude, ...).
                Superposition-invariant functions (distances, angles, torsions) are what error bars are for; a
                coordinate is taken in the frame of ``Retrieval.atoms``. Basins and samples are superposed with
                reflection allowed (an isotropic pattern cannot tell mirror images apart), so a torsion's sign is
                a convention: ``abs(xfit.dihedral(...))`` is the torsion such a pattern measures.
            step: finite-difference step in A.
            period: for an angle that wraps (360 for a signed torsion in degrees): differences are taken modulo
                the period, into [-period/2, period/2), so that -179 and +179 degrees are 2 apart, not 358.
        """
        if period is not None and not period > 0:
            raise ValueError(f"period must be positive (360 for degrees), got {period}")
        reference = fn(self.reference_positions)

        def deviation(values):
            d = np.asarray(values, np.float64) - reference
            return d if period is None else (d + 0.5 * period) % period - 0.5 * period

        spread = []
        if self.samples is not None:
            x, w = self.samples
            values = deviation([fn(s) for s in x])
            mean = np.sum(w * values)
            spread.append(np.sqrt(max(np.sum(w * (values - mean) ** 2), 0.0)))
        if self.basins is not None:
            optima, covariances, w = self.basins
            values = deviation([fn(x) for x in optima])
            within = np.array(
                [_linearised_variance(fn, x, c, step, period) for x, c in zip(optima, covariances, strict=True)]
            )
            mean = np.sum(w * values)
            spread.append(np.sqrt(max(np.sum(w * (within + (values - mean) ** 2)), 0.0)))
        if spread:
            return float(max(spread))
        return float(np.sqrt(_linearised_variance(fn, self.reference_positions, self.covariance, step, period)))

    def draw(self, n: int, *, seed: int = 0) -> np.ndarray:
        """n structures (n, n_atoms, 3) in A, in the frame of ``reference_positions``, drawn from the distribution
        the error bars describe: the mixture of ``basins`` (posterior), else the chosen mode's samples resampled by
        weight, else the Gaussian N(reference_positions, covariance) (refinement). For nonlinear functions of the
        structure (a histogram of a torsion, the plot's violins).

        Args:
            n: how many. seed: of numpy's generator (the same seed, the same draws).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return np.zeros((0, *self.reference_positions.shape))
        rng = np.random.default_rng(seed)
        if self.basins is None and self.samples is not None:
            x, w = self.samples
            return x[rng.choice(len(x), size=n, p=w / np.sum(w))]
        if self.basins is None:
            centres, covariances, w = self.reference_positions[None], self.covariance[None], np.ones(1)
        else:
            centres, covariances, w = self.basins
        counts = rng.multinomial(n, w / np.sum(w))
        out = []
        for centre, covariance, k in zip(centres, covariances, counts, strict=True):
            if k:
                value, vectors = np.linalg.eigh(covariance)
                z = rng.standard_normal((k, len(value))) * np.sqrt(np.clip(value, 0.0, None))
                out.append(centre + (z @ vectors.T).reshape(k, *centre.shape))
        return np.concatenate(out)[rng.permutation(n)]


def _linearised_variance(fn, x: np.ndarray, covariance: np.ndarray, step: float, period: float | None) -> float:
    """g^T C g (units of fn squared): fn's variance linearised at x (n, 3) in A under covariance C (3n, 3n) in
    A^2, the gradient g by central differences of ``step`` A (each difference modulo ``period`` unless None)."""
    grad = np.zeros(x.size)
    for k in range(x.size):
        plus, minus = x.copy().ravel(), x.copy().ravel()
        plus[k] += step
        minus[k] -= step
        diff = fn(plus.reshape(x.shape)) - fn(minus.reshape(x.shape))
        if period is not None:
            diff = (diff + 0.5 * period) % period - 0.5 * period
        grad[k] = diff / (2 * step)
    return max(float(grad @ covariance @ grad), 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Retrieval:
    """Result of :func:`retrieve` for one pattern.

    Attributes:
        atoms: the structure: the heaviest posterior mode's mean heavy atoms with its heaviest basin's hydrogens,
            relaxed to the nearest posterior optimum (posterior; ``info["relax_shift"]``: how far it moved, A RMS
            over all atoms) or the lowest chi^2 (refinement).
        candidates: distinct structures, ``candidates[0]`` is ``atoms``: the other modes by posterior mass
            (posterior) or the refined candidates by chi^2 + restraints (refinement).
        chi2: -2 log posterior up to a constant (chi^2 data + prior or restraints) of each candidate.
        chi2_reduced: data chi^2 of ``atoms`` per degree of freedom (see module notes).
        parameters: nuisance parameters of the fit: scale (and background) for intensities, excitation fraction
            for percent differences, fraction_x_scale for plain differences.
        model: the fitted pattern on the input q grid, an ``xfit.Pattern``.
        uncertainty: :class:`Uncertainty` of ``atoms``.
        pattern: the input pattern. reference: the reference structure (difference patterns) or None.
        pattern_p2, model_p2: for a joint anisotropic fit, the input P2 (legendre=2) pattern and its fitted model
            (``model`` and ``pattern`` are then the isotropic components); None otherwise.
        image: the input ``xfit.DetectorImage`` when one was retrieved (``pattern`` and ``model`` are then the
            radial averages of its valid pixels and of the fitted pixel model), else None.
        samples: posterior samples (n_samples, n_atoms, 3) in A, each aligned onto its mode's structure
            (posterior; None for refinement).
        modes: posterior mass of each candidate (n_candidates,), summing to 1 (posterior; None for refinement).
        sample_modes: the candidate each sample belongs to (n_samples,), and sample_weights their weights.
        info: how it was made; ``info["method"]`` is "posterior" or "refinement"; ``info["bonds"]`` the bonded
            pairs (i, j) of the input molecule's graph.
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
    samples: np.ndarray | None = None
    modes: np.ndarray | None = None
    sample_modes: np.ndarray | None = None
    sample_weights: np.ndarray | None = None
    pattern_p2: Pattern | None = None
    model_p2: Pattern | None = None
    image: Any = None

    def __repr__(self) -> str:
        sigma = {"fraction": self.info["fraction_sigma"]} if "fraction_sigma" in self.info else {}
        params = ", ".join(
            f"{k}={v:.4g}" + (f" +- {sigma[k]:.2g}" if k in sigma else "") for k, v in self.parameters.items()
        )
        mass = "" if self.modes is None else f", mode mass {self.modes[0]:.2f}"
        return (
            f"Retrieval({self.atoms.get_chemical_formula()}, {self.info.get('method', '?')}, "
            f"chi2_reduced={self.chi2_reduced:.3g}, {params}, {len(self.candidates)} candidates{mass})"
        )

    def plot(self, path=None, *, pairs: Sequence[tuple[int, int]] | None = None):
        """Data, fit and normalised residual, the structure (heavy-atom distances with error bars), and, for a
        posterior, the posterior of the key distances.

        Args:
            path: image file to write; None returns the matplotlib figure.
            pairs: atom pairs whose distances to show (default: the input molecule's heavy-atom bonds, broken
                or not, bonds new in the result, and the pairs that vary most over the posterior).
        """
        from xfit import _plot

        return _plot.plot_retrieval(self, path, pairs=pairs)


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces


def _fit(problem: Problem, t: int, x: np.ndarray):
    """(model pattern, parameters, chi2_data) of structure x (n_atoms, 3) for pattern t, float64."""
    like = problem.likelihood
    with jax.enable_x64(True):
        y, w, i_ref, pixels = (None if a is None else np.asarray(a, np.float64) for a in like.row(t))
        model, params = model_and_parameters(like.spec, jnp.asarray(x, jnp.float64), y, w, i_ref, pixels, like.grid)
        model = np.asarray(model, np.float64)
    return model, {k: float(v) for k, v in params.items()}, float(np.sum(w * (y - model) ** 2))


def _model_pattern(problem: Problem, t: int, model: np.ndarray, legendre: int = 0) -> Pattern:
    """The fitted model of pattern t as a Pattern: its isotropic component (legendre 0), or, for a joint
    anisotropic fit, its P2 component (legendre 2: the second half of the concatenated model)."""
    if problem.images is not None:  # a detector image: the model's radial average, on the data's bins
        image = problem.images[t]
        return image.model_pattern(model[: image.n_valid], n_bins=problem.image_bins)
    pattern = problem.patterns[t]
    n_q = len(pattern.q)
    # The model's points: pattern t's grid padded at weight 0 (``Likelihood.grid``), twice over for a joint fit.
    start = len(model) // 2 if legendre == 2 else 0
    sigma = pattern.sigma if problem.likelihood.has_sigma[t] else None
    if legendre == 2:
        sigma = None if sigma is None else np.asarray(problem.likelihood.w[t])[start : start + n_q] ** -0.5
    return Pattern(
        pattern.q,
        model[start : start + n_q],
        None if sigma is None else np.asarray(sigma, np.float64),
        kind=pattern.kind,
        probe=pattern.probe,
        delay=pattern.delay,
        metadata={
            "model": "IAM",
            "model_kind": problem.likelihood.spec.model_kind,
            **({"electron_model": problem.likelihood.spec.electron_model} if pattern.probe == "electron" else {}),
        },
        energy_kev=pattern.energy_kev,
        legendre=legendre,
    )


def _to_atoms(atoms: Atoms, x: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.positions = x - x.mean(axis=0)
    return out


def _distances(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)


def _distance_errors(x: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Linearised standard errors (n, n) of all distances of x (n, 3) from a coordinate covariance (3n, 3n)."""
    n = len(x)
    out = np.zeros((n, n))
    i, j = np.triu_indices(n, k=1)
    d = x[i] - x[j]
    unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    g = np.zeros((len(i), 3 * n))
    rows = np.arange(len(i))
    for c in range(3):
        g[rows, 3 * i + c] = unit[:, c]
        g[rows, 3 * j + c] = -unit[:, c]
    out[i, j] = out[j, i] = np.sqrt(np.clip(np.einsum("pa,ab,pb->p", g, covariance, g), 0.0, None))
    return out


def _distinct(structures: np.ndarray, order: np.ndarray, heavy: np.ndarray, tolerance: float) -> list[int]:
    """Indices (in ``order``) of structures that differ from every better-ranked one by > tolerance (A, RMSD)."""
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


def summarise(problem: Problem, ensemble: Ensemble, *, duplicate_tolerance: float, info: dict) -> list[Retrieval]:
    """One :class:`Retrieval` per pattern from a strategy's ensemble."""
    # The input molecule's bonds: what a bond broken in the result is measured against (the plot's key distances).
    info = {**info, **ensemble.info, "bonds": problem.molecule.bonds.tolist()}  # [[i, j], ...]: JSON round trip
    if ensemble.kind == "candidates":
        results = [
            _summarise_candidates(problem, ensemble, t, duplicate_tolerance, info) for t in range(problem.n_patterns)
        ]
    else:
        results = _summarise_sample_ensemble(problem, ensemble, info)
    return [_with_fraction_sigma(problem, t, r) for t, r in enumerate(results)]


def _summarise_sample_ensemble(problem: Problem, ensemble: Ensemble, info: dict) -> list[Retrieval]:
    """One :class:`Retrieval` per pattern from a sampling strategy's ensemble: its modes, the chosen mode's mean
    relaxed to the nearest optimum (where the ensemble can relax), the uncertainties."""
    modes = [_sample_modes(problem, ensemble, t, info) for t in range(problem.n_patterns)]
    means = np.stack([m.means[0] for m in modes])
    if ensemble.relax is None:
        structures = means
    else:
        heavy = problem.molecule.heavy
        starts = np.stack([_relax_start(m, ensemble.particle[t], heavy) for t, m in enumerate(modes)])
        structures = _relaxed(ensemble.relax, starts, heavy)
    labelled = [_labelled_like_start(problem, m, x) for m, x in zip(modes, structures, strict=True)]
    return [_summarise_samples(problem, ensemble, t, info, m, x) for t, (m, x) in enumerate(labelled)]


def _labelled_like_start(problem: Problem, modes: _Modes, best: np.ndarray) -> tuple[_Modes, np.ndarray]:
    """The structure ``best`` (n, 3) and its mode's samples and mean under the labelling of ``best`` closest to the
    starting structure's (:func:`closest_labelling`). Each mode's seed was so labelled already; the structure, a
    relaxed mean, can lie nearer the other labelling where the two are close."""
    molecule = problem.molecule
    order = closest_labelling(
        best, problem.atoms.positions, molecule.heavy, molecule.skeleton_automorphisms, molecule.automorphisms()
    )
    if np.array_equal(order, np.arange(len(order))):
        return modes, best
    aligned = modes.aligned.copy()
    chosen = modes.sample_modes == 0
    aligned[chosen] = aligned[chosen][:, order]
    means = [modes.means[0][order], *modes.means[1:]]
    return dataclasses.replace(modes, aligned=aligned, means=means), best[order]


@jax.jit
def _profiled_fraction(likelihood: Likelihood, x):
    """The excitation fraction solved for structure x (n_atoms, 3) against a one-pattern likelihood."""
    return likelihood.model_and_parameters(x[None])[1]["fraction"][0]


def _with_fraction_sigma(problem: Problem, t: int, result: Retrieval) -> Retrieval:
    """``result`` with ``info["fraction_sigma"]``, the posterior standard deviation of a fitted excitation fraction,
    where one was fitted (a fixed fraction has none).

    The fraction is solved in closed form for each structure, f*(x), so its spread has two parts, added in
    quadrature: at a fixed structure, 1/sqrt(sum w s^2 [+ 1/sd^2 under a prior]) with s = model/f the pattern's
    shape (the model is linear in f); and the spread of f*(x) over the structure's own uncertainty, as
    ``Uncertainty.of`` gives it (linearised in each basin, between the basins, over the chosen mode's samples).
    For a small structural change the second dominates: the pattern fixes only f times the change."""
    spec = problem.likelihood.spec
    f = result.parameters.get("fraction")
    if spec.fraction is not None or f is None:
        return result
    with jax.enable_x64(True):
        row = problem.likelihood.select(np.array([t])).astype(jnp.float64)
        sigma_x = result.uncertainty.of(lambda x: float(_profiled_fraction(row, jnp.asarray(x, jnp.float64))))
        model, _ = row.model_and_parameters(jnp.asarray(result.atoms.positions, jnp.float64)[None])
    shape = np.asarray(model, np.float64)[0] / max(f, 1e-6)
    precision = float(np.sum(np.asarray(row.w, np.float64)[0] * shape**2))
    if spec.fraction_prior is not None:
        precision += 1.0 / spec.fraction_prior[1] ** 2
    sigma = float(np.sqrt(sigma_x**2 + 1.0 / max(precision, 1e-300)))
    return dataclasses.replace(result, info={**result.info, "fraction_sigma": sigma})


# ----------------------------------------------------------------------------------------------------------------
# Candidates (refinement)


def _gauss_newton(likelihood: Likelihood, t: int, restraints: Restraints, x, scale_covariance):
    """Covariance (3n, 3n) of the coordinates from the Gauss-Newton Hessian J^T J of the weighted residuals."""
    y, w, i_ref, pixels = (None if a is None else jnp.asarray(a, jnp.float64) for a in likelihood.row(t))
    sqrt_w = jnp.sqrt(w)

    def residuals(flat):
        xs = flat.reshape(x.shape)
        model, parameters = model_and_parameters(likelihood.spec, xs, y, w, i_ref, pixels, likelihood.grid)
        r = jnp.concatenate([sqrt_w * (y - model), prior_residuals(likelihood.spec, parameters)])
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


def _summarise_candidates(problem: Problem, ensemble: Ensemble, t: int, tol: float, info: dict) -> Retrieval:
    """Rank, merge, and characterise the refined candidates of pattern t (float64)."""
    x, chi2_data = ensemble.positions[t], ensemble.chi2_data[t]
    total = chi2_data + ensemble.penalty[t]
    kept = _distinct(x, np.argsort(total), problem.molecule.heavy, tol)
    best = kept[0]
    x_best = x[best] - x[best].mean(axis=0)
    like = problem.likelihood
    has_sigma = like.has_sigma[t]
    model, params, _ = _fit(problem, t, x_best)
    dof = like.dof
    chi2_reduced = float(chi2_data[best]) / dof
    with jax.enable_x64(True):
        covariance = _gauss_newton(like, t, ensemble.restraints, x_best, 1.0 if has_sigma else chi2_reduced)
    n_sigma = 2.0 * np.sqrt(2.0 * dof) * (chi2_reduced if not has_sigma else 1.0)
    comparable = [k for k in kept if total[k] <= total[best] + n_sigma]
    best_atoms = _to_atoms(problem.atoms, x[best])
    return Retrieval(
        atoms=best_atoms,
        candidates=[best_atoms] + [_to_atoms(problem.atoms, x[k]) for k in kept[1:]],
        chi2=total[kept],
        chi2_reduced=chi2_reduced,
        parameters=params,
        model=_model_pattern(problem, t, model),
        uncertainty=Uncertainty(
            distances=_distance_errors(x_best, covariance),
            positions=np.sqrt(np.clip(np.diag(covariance), 0, None)).reshape(-1, 3),
            candidate_spread=_distances(x[comparable]).std(axis=0),
            n_comparable=len(comparable),
            covariance=covariance,
            reference_positions=x_best,
        ),
        pattern=problem.patterns[t],
        reference=problem.reference if problem.difference else None,
        info={**info, "chi2_data": float(chi2_data[best]), "chi2_restraints": float(ensemble.penalty[t][best])},
    )


# ----------------------------------------------------------------------------------------------------------------
# Samples (posterior)


def kabsch_rotations(x: np.ndarray, target: np.ndarray, heavy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The superposition of structures x (S, n, 3) onto target (n, 3) by their heavy atoms, reflection allowed
    (Kabsch, Acta Cryst. A32, 922 (1976), batched): (rotations R (S, 3, 3), possibly improper, x centred on its
    heavy atoms (S, n, 3), target centred on its heavy atoms (n, 3)); the superposed structures are
    ``centred @ R`` (row vectors), in A."""
    t = target - target[heavy].mean(axis=0)
    c = x - x[:, heavy].mean(axis=1, keepdims=True)
    h = np.einsum("sni,nj->sij", c[:, heavy], t[heavy])
    u, _, vt = np.linalg.svd(h)
    return u @ vt, c, t  # improper rotations allowed: an isotropic pattern cannot tell mirror images apart


def batch_kabsch(x: np.ndarray, target: np.ndarray, heavy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structures x (S, n, 3) superposed onto target (n, 3) by their heavy atoms, reflection allowed
    (:func:`kabsch_rotations`): (aligned (S, n, 3) in the target's frame centred on its heavy atoms, heavy-atom
    RMSD (S,) in A)."""
    rotation, c, t = kabsch_rotations(x, target, heavy)
    aligned = np.einsum("sni,sij->snj", c, rotation)
    rmsd = np.sqrt(np.mean(np.sum((aligned[:, heavy] - t[heavy]) ** 2, axis=-1), axis=-1))
    return aligned, rmsd


def match_labels(aligned: np.ndarray, target: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """For structures ``aligned`` (S, n, 3) superposed on ``target`` (n, 3), the graph automorphism (perms (P, n),
    ``MoleculeGraph.automorphisms``) of each that brings its atoms closest to the target's, all atoms counted:
    indices (S, n) such that ``aligned[s][index[s]]`` is the same structure relabelled. Structures of one mode found
    from different seeds may carry equivalent atoms (a methyl's hydrogens) under different labels; averaging them
    without this collapses those atoms onto each other."""
    cost = np.sum((aligned[:, perms] - target) ** 2, axis=(-2, -1))  # (S, P)
    return perms[np.argmin(cost, axis=1)]


def closest_labelling(x: np.ndarray, reference: np.ndarray, heavy: np.ndarray, skeleton: np.ndarray, perms):
    """The relabelling (n,) of structure x (n, 3) by a graph automorphism that brings it closest to ``reference``
    (n, 3), ``x[order]`` being the relabelled structure: the skeleton automorphism (skeleton (K, n),
    ``MoleculeGraph.skeleton_automorphisms``) of least heavy-atom RMSD after superposition, reflection allowed, then
    the labels of equivalent atoms (perms (P, n), ``automorphisms``) of least all-atom distance. A pattern and the
    prior cannot tell these labellings apart (CHD's ring read either way scatters alike), so without this the labels
    of a retrieved structure would be those of whichever prior draw its mode grew from; with it they follow the
    user's starting structure (a time series' previous frame, say)."""
    order = skeleton_labels(x[None], reference, heavy, skeleton)[0][0]
    if len(perms) <= 1:
        return order
    aligned, _ = batch_kabsch(x[order][None], reference, heavy)
    return order[match_labels(aligned, reference - reference[heavy].mean(axis=0), perms)[0]]


def batch_rmsd(x: np.ndarray, target: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """Heavy-atom RMSD (S,) in A of structures x (S, n, 3) from target (n, 3), reflection allowed."""
    return batch_kabsch(x, target, heavy)[1]


def skeleton_labels(x: np.ndarray, target: np.ndarray, heavy: np.ndarray, skeleton: np.ndarray):
    """For structures x (S, n, 3), the skeleton automorphism (skeleton (K, n), ``MoleculeGraph.
    skeleton_automorphisms``) of each that brings it closest to ``target`` (n, 3), heavy-atom RMSD after
    superposition, reflection allowed: (indices (S, n) such that ``x[s][index[s]]`` is structure s relabelled,
    its heavy-atom RMSD (S,) in A). A pattern and the prior cannot tell these labellings apart (CHD's ring read
    either way), so structures of one basin reached from different prior draws may carry either; superposing or
    averaging them as labelled mixes atoms that are not the same."""
    rmsd = np.stack([batch_rmsd(x[:, p], target, heavy) for p in skeleton], axis=1)  # (S, K)
    k = np.argmin(rmsd, axis=1)
    return skeleton[k], rmsd[np.arange(len(x)), k]


def cluster_modes(
    optima: np.ndarray, mass: np.ndarray, heavy: np.ndarray, radius: float, skeleton: np.ndarray | None = None
):
    """Greedy clustering of particle optima into posterior modes.

    The heaviest unassigned particle seeds a mode; every unassigned particle within ``radius`` (A, heavy-atom RMSD,
    reflection allowed, under the skeleton automorphism that brings it closest: :func:`skeleton_labels`) of it
    joins; repeated until every particle has a mode. Modes come out ordered by mass.

    Args:
        optima: (P, n, 3) in A. mass: (P,) posterior mass of each particle's basin. heavy: atoms of the RMSD.
        skeleton: (K, n) relabellings that leave the pattern and the prior unchanged (``MoleculeGraph.
            skeleton_automorphisms``); None compares the optima as labelled. Without them one structure found under
            both of CHD's labellings came out as two modes of about equal mass.

    Returns:
        (labels (P,) in 0..n_modes-1, mode masses (n_modes,) descending, seed particle of each mode).
    """
    skeleton = np.arange(optima.shape[1])[None] if skeleton is None else np.asarray(skeleton)
    labels = np.full(len(optima), -1)
    seeds = []
    while np.any(labels < 0):
        free = np.flatnonzero(labels < 0)
        seed = free[np.argmax(mass[free])]
        labels[free[skeleton_labels(optima[free], optima[seed], heavy, skeleton)[1] <= radius]] = len(seeds)
        labels[seed] = len(seeds)
        seeds.append(seed)
    total = np.bincount(labels, weights=mass, minlength=len(seeds))
    order = np.argsort(-total, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels], total[order], np.asarray(seeds)[order]


def _weighted_distance_std(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = _distances(x)
    mean = np.einsum("s,sij->ij", w, d)
    return np.sqrt(np.clip(np.einsum("s,sij->ij", w, (d - mean) ** 2), 0.0, None))


def _laplace_distance_std(optima: np.ndarray, covariances: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Standard deviations (n, n) in A of the interatomic distances under a mixture of Gaussians: basin b centred
    at ``optima[b]`` (n, 3) with covariance ``covariances[b]`` (3n, 3n), of weight ``w[b]`` (normalised).

    Within a basin the distance is linearised, var_b(d_ij) = u^T (C_ii + C_jj - C_ij - C_ji) u with u the unit
    vector from i to j; the mixture adds the spread of the basins' own distances. Rotation invariant: each basin's
    u and C are in that basin's frame, so no alignment is needed."""
    n = optima.shape[1]
    c = covariances.reshape(len(optima), n, 3, n, 3)
    diag = np.einsum("biaic->biac", c)  # (B, n, 3, 3): C_ii
    block = diag[:, :, None] + diag[:, None, :] - np.einsum("biajc->bijac", c) - np.einsum("bjaic->bijac", c)
    delta = optima[:, None, :, :] - optima[:, :, None, :]  # (B, n, n, 3): r_j - r_i
    d = np.linalg.norm(delta, axis=-1)
    u = delta / np.where(d > 0, d, 1.0)[..., None]
    within = np.einsum("bija,bijac,bijc->bij", u, block, u)
    mean = np.einsum("b,bij->ij", w, d)
    var = np.einsum("b,bij->ij", w, np.clip(within, 0.0, None) + (d - mean) ** 2)
    return np.sqrt(var)


@dataclasses.dataclass(frozen=True)
class _Modes:
    """Pattern t's samples clustered into modes (``_sample_modes``)."""

    weights: np.ndarray  # (S,) normalised sample weights
    mass: np.ndarray  # (P,) each particle's posterior mass
    labels: np.ndarray  # (P,) each particle's mode
    mode_mass: np.ndarray  # (M,) descending
    sample_modes: np.ndarray  # (S,) each sample's mode
    aligned: np.ndarray  # (S, n, 3) every sample superposed on its mode's seed, equivalent atoms relabelled
    means: list  # M x (n, 3): each mode's weighted mean, in its seed's frame
    chi2: list  # M: each mode's lowest chi2 + penalty among its samples


def _sample_modes(problem: Problem, ensemble: Ensemble, t: int, info: dict) -> _Modes:
    """Pattern t's samples aligned and clustered into modes by their particles' optima (float64)."""
    heavy = problem.molecule.heavy
    x, particle, optima = ensemble.positions[t], ensemble.particle[t], ensemble.optima[t]
    weights = ensemble.weights[t] / np.sum(ensemble.weights[t])
    mass = np.bincount(particle, weights=weights, minlength=len(optima))
    perms, skeleton = problem.molecule.automorphisms(), problem.molecule.skeleton_automorphisms
    labels, mode_mass, seeds = cluster_modes(optima, mass, heavy, info.get("mode_radius", 0.15), skeleton)
    sample_modes = labels[particle]
    total = ensemble.chi2_data[t] + ensemble.penalty[t]

    aligned = np.empty_like(x)
    means, chi2 = [], []
    for m, seed in enumerate(seeds):
        members = sample_modes == m
        # Each mode under the labels closest to the starting structure's; its samples follow its seed's: first the
        # skeleton's (CHD's ring read the same way), then, once superposed, those of equivalent atoms.
        seed_x = optima[seed][closest_labelling(optima[seed], problem.atoms.positions, heavy, skeleton, perms)]
        xm = x[members]
        if len(skeleton) > 1:
            xm = np.take_along_axis(xm, skeleton_labels(xm, seed_x, heavy, skeleton)[0][..., None], axis=1)
        a, _ = batch_kabsch(xm, seed_x, heavy)
        target = seed_x - seed_x[heavy].mean(axis=0)  # the frame batch_kabsch aligns into
        if len(perms) > 1:
            a = np.take_along_axis(a, match_labels(a, target, perms)[..., None], axis=1)
        aligned[members] = a
        total_weight = np.sum(weights[members])
        # A mode of no mass (its basins exp(-745) lighter than the best, or its particles dropped: their finite
        # placeholders) is still a structure: the plain mean of its samples, never a weighted mean of zeros.
        w = weights[members] / total_weight if total_weight > 0 else np.full(members.sum(), 1.0 / members.sum())
        means.append(np.einsum("s,sij->ij", w, aligned[members]))
        chi2.append(float(np.min(total[members])))
    return _Modes(weights, mass, labels, mode_mass, sample_modes, aligned, means, chi2)


def _relax_start(modes: _Modes, particle: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """Where the relaxation starts (n, 3): the heaviest mode's mean heavy atoms, with the hydrogens of its heaviest
    basin's mean (particle (S,): each sample's basin). The mean of a mode's hydrogens averages basins whose CH2
    groups point different ways, and the relaxation from such a mean ended in an optimum of higher -log posterior
    than the one nearest the truth on 70 % of the opened shared CHD frames as UED sM, 11 % from this start
    (``benchmarks/diagnostics.py basins``)."""
    best = np.argmax(np.where(modes.labels == 0, modes.mass, -np.inf))
    members = particle == best
    w = modes.weights[members] / modes.weights[members].sum()
    start = modes.means[0].copy()
    start[~heavy] = np.einsum("s,sij->ij", w, modes.aligned[members])[~heavy]
    return start


def _relaxed(relax, starts: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """Each pattern's start (T, n, 3: :func:`_relax_start`, or the mode mean) relaxed to its nearest posterior
    optimum by ``Ensemble.relax``, then superposed back onto the start (the frame of its samples). A mean averages
    basins that differ in their hydrogens (a CH2 tilted either way), and such an average can fit badly
    (chi2_reduced 10-20 measured on hot shared CHD frames whose basins all fit at 1); the relaxed structure is a
    geometry that fits."""
    out = relax(starts, np.arange(len(starts)))
    for k, (x, start) in enumerate(zip(out, starts, strict=True)):
        aligned, _ = batch_kabsch(x[None], start, heavy)
        out[k] = aligned[0] + start[heavy].mean(axis=0)
    return out


def _superposed_basins(
    optima: np.ndarray, covariances: np.ndarray, best: np.ndarray, heavy: np.ndarray, perms, skeleton=None
):
    """Basin optima (B, n, 3) and their covariances (B, 3n, 3n) in the frame of ``best`` (n, 3): relabelled as
    the samples are (:func:`_sample_modes`), first by the skeleton automorphism (skeleton (K, n); None: none) of
    least heavy-atom RMSD to best, then each equivalent atom by the graph automorphism (perms (P, n)) that brings it
    closest once superposed; then superposed on best's heavy atoms (:func:`kabsch_rotations`), each 3x3 block of a
    covariance turned with its basin, R^T C_ij R."""
    index = np.broadcast_to(np.arange(optima.shape[1]), optima.shape[:2])
    if skeleton is not None and len(skeleton) > 1:
        index = skeleton_labels(optima, best, heavy, skeleton)[0]
    if len(perms) > 1:  # the basins' atoms under the labels of the structure, as for the samples
        relabelled = np.take_along_axis(optima, index[..., None], axis=1)
        within = match_labels(batch_kabsch(relabelled, best, heavy)[0], best - best[heavy].mean(axis=0), perms)
        index = np.take_along_axis(index, within, axis=1)
    if not np.array_equal(index, np.broadcast_to(np.arange(optima.shape[1]), index.shape)):
        optima = np.take_along_axis(optima, index[..., None], axis=1)
        flat = (3 * index[:, :, None] + np.arange(3)).reshape(len(index), -1)  # (B, 3n) coordinate order
        covariances = np.stack([c[np.ix_(f, f)] for c, f in zip(covariances, flat, strict=True)])
    rotation, centred, _ = kabsch_rotations(optima, best, heavy)
    aligned = np.einsum("bni,bij->bnj", centred, rotation) + best[heavy].mean(axis=0)
    n = optima.shape[1]
    blocks = covariances.reshape(len(optima), n, 3, n, 3)
    turned = np.einsum("bai,bnamc,bcj->bnimj", rotation, blocks, rotation).reshape(covariances.shape)
    return aligned, turned


def _summarise_samples(problem: Problem, ensemble: Ensemble, t: int, info: dict, modes: _Modes, best) -> Retrieval:
    """Structure ``best`` (n, 3: the chosen mode's mean, relaxed or not), its fit and the posterior uncertainties
    of pattern t from its modes (float64)."""
    heavy = problem.molecule.heavy
    optima, perms = ensemble.optima[t], problem.molecule.automorphisms()
    weights, mass, aligned, means = modes.weights, modes.mass, modes.aligned, modes.means
    sample_modes = modes.sample_modes
    chosen = sample_modes == 0
    w0 = weights[chosen] / np.sum(weights[chosen])
    xs = aligned[chosen]
    model, params, chi2_best = _fit(problem, t, best)
    atoms = _to_atoms(problem.atoms, best)
    centre = best.mean(axis=0)
    shift = float(np.sqrt(np.mean(np.sum((best - means[0]) ** 2, axis=-1))))  # all atoms, A
    distances = _weighted_distance_std(xs, w0)
    if ensemble.optima_covariance is None:  # the chosen mode's samples alone, about their mean
        centred = (xs - means[0]).reshape(len(xs), -1)
        covariance, basins = np.einsum("s,sa,sb->ab", w0, centred, centred), None
    else:
        # The MALA chains are short (draws x thin steps from each optimum) and, measured on shared CHD frames,
        # spread 2-6x less than the Laplace Gaussian of their own basin: the error bars come from the mixture of
        # basin Gaussians, the distances' never narrower than the chosen mode's samples. Which basins and weights:
        # the strategy's ``error_weights`` (every basin, tempered masses: ``xfit.Posterior``'s
        # ``basin_tempering``, where the truth's basin often lies in another mode), else every basin at its mass.
        w_basin = mass if ensemble.error_weights is None else ensemble.error_weights[t]
        members = np.flatnonzero(w_basin > 0)
        w_basin = w_basin[members] / max(np.sum(w_basin[members]), 1e-300)
        optima_b, covariances = _superposed_basins(
            optima[members],
            ensemble.optima_covariance[t][members],
            best,
            heavy,
            perms,
            problem.molecule.skeleton_automorphisms,
        )
        distances = np.maximum(distances, _laplace_distance_std(optima_b, covariances, w_basin))
        optima_b = optima_b - centre
        offset = (optima_b - np.einsum("b,bij->ij", w_basin, optima_b)).reshape(len(optima_b), -1)
        covariance = np.einsum("b,bxy->xy", w_basin, covariances) + np.einsum("b,bx,by->xy", w_basin, offset, offset)
        basins = (optima_b, covariances, w_basin)
    return Retrieval(
        atoms=atoms,
        candidates=[atoms] + [_to_atoms(problem.atoms, m) for m in means[1:]],
        chi2=np.asarray(modes.chi2),
        chi2_reduced=chi2_best / problem.likelihood.dof,
        parameters=params,
        model=_model_pattern(problem, t, model),
        uncertainty=Uncertainty(
            distances=distances,
            positions=np.sqrt(np.clip(np.diag(covariance), 0, None)).reshape(-1, 3),
            candidate_spread=_weighted_distance_std(aligned, weights),  # every sample under the same labels
            n_comparable=len(means),
            covariance=covariance,
            reference_positions=best - centre,
            samples=(xs - centre, w0),
            basins=basins,
        ),
        pattern=problem.patterns[t],
        reference=problem.reference if problem.difference else None,
        info={**info, "chi2_data": chi2_best, "n_modes": len(means), "relax_shift": shift},
        samples=aligned - centre,
        modes=modes.mode_mass / modes.mode_mass.sum(),
        sample_modes=sample_modes,
        sample_weights=weights,
    )
