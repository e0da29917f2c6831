"""``xfit.retrieve``: the structure behind a scattering pattern, with its fit, parameters and uncertainties.

An orchestration, nothing more: check the inputs, build the problem once (molecular graph, likelihood), pick a
strategy, run it and summarise its ensemble into :class:`Retrieval` objects.

- ``posterior`` (``xfit.infer._posterior``): a learned conformer prior fits the molecule; p(x | pattern) is
  sampled with the prior's score and the likelihood's gradient; modes are ranked by posterior mass.
- ``refinement`` (``xfit.infer._refinement``): the fallback for molecules without a conformer prior (or
  ``prior=None``): multi-start gradient refinement with covalent restraints, seeded by a proposal network's
  candidates when one fits.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem._graph import MoleculeGraph
from xfit.chem._structures import as_arrays
from xfit.data._image import DetectorImage
from xfit.data._pattern import Pattern
from xfit.infer import _restraints
from xfit.infer._compiled import release_if_near_map_limit
from xfit.infer._likelihood import (
    ANISOTROPIC_KINDS,
    DIFFERENCE_KINDS,
    ELECTRON_KINDS,
    FRACTION_KINDS,
    build_image_likelihood,
    build_likelihood,
)
from xfit.infer._problem import Problem, Strategy
from xfit.infer._refinement import Refinement
from xfit.infer._result import Retrieval, _fit, _model_pattern, summarise
from xfit.infer._starts import extra_starts, proposal_starts
from xfit.learn import _proposal
from xfit.physics import _anisotropy, _iam

__all__ = ["PriorFallbackWarning", "retrieve", "shared_fraction"]

PROPOSAL_KINDS = ("total", "elastic", "molecular", "percent_difference")
"""Pattern kinds the proposal network reads."""
AUTO_PROPOSALS = ("nmm_chd_dt",)
"""The shipped proposal networks that ``prior="auto"`` tries for the refinement fallback, in order."""
AUTO_CONFORMER = "conformer"
"""The shipped conformer prior that ``prior="auto"`` uses when it fits the molecule (CHD, NMM, DT): retrieval is then
posterior sampling (``benchmarks/posterior.py``, shared CHD frames at stride 4: carbon RMSD median 0.091 A against
0.131 for refinement with proposals, ring-opened frames 0.183 A against 0.393; on all 150 frames 0.098 A, the true
C1-C6 within 2 sigma on 75 %). Other molecules fall back to refinement with a ``PriorFallbackWarning``."""
SHIPPED_CONFORMER = "conformer"


class PriorFallbackWarning(UserWarning):
    """No learned conformer prior fits the molecule or pattern: retrieval falls back to refinement."""


@functools.cache
def _shipped_proposal(name: str):
    return _proposal.load_prior(name)


@functools.cache
def _shipped_conformer(name: str):
    from xfit.learn._conformer import load_conformer_prior

    try:
        return load_conformer_prior(name)
    except FileNotFoundError:  # a checkout without shipped conformer weights: refinement only
        return None


def _is_conformer(prior) -> bool:
    from xfit.learn._conformer import ConformerPrior

    if isinstance(prior, ConformerPrior):
        return True
    if isinstance(prior, str | Path) and not isinstance(prior, _proposal.Prior):
        return str(prior) == SHIPPED_CONFORMER or (Path(prior) / "conformer.json").is_file()
    return False


def _check_inputs(patterns: list[Pattern], atoms: Atoms, reference: Atoms | None) -> np.ndarray:
    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms (the starting structure), got {type(atoms).__name__}")
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
        if not np.array_equal(p.q, first.q) or p.kind != first.kind:
            raise ValueError(
                f"pattern {k} has a different q grid or kind from pattern 0; patterns retrieved in one call must share "
                "both (call retrieve separately for each grid)"
            )
        if p.probe != first.probe or p.energy_kev != first.energy_kev:
            raise ValueError(
                f"pattern {k} has a different probe or energy_kev from pattern 0 ({p.probe}, {p.energy_kev} keV "
                f"against {first.probe}, {first.energy_kev} keV); patterns retrieved in one call must share both"
            )
        if len(p) < 2:
            raise ValueError(f"pattern {k} has {len(p)} point(s); a fit needs more")
    try:
        _iam.check_q(first.q, name="pattern q")
    except ValueError as err:
        raise ValueError(f"{err} (the model cannot be evaluated there)") from None
    if first.probe == "electron" and first.kind not in ELECTRON_KINDS:
        raise ValueError(
            f"an electron pattern of kind {first.kind!r} cannot be modelled: electron inelastic scattering is not in "
            f"the IAM here; use one of {ELECTRON_KINDS} (for a measured total curve, 'elastic')"
        )
    if first.kind in ("sm", "delta_sm") and first.q[0] <= 0:
        raise ValueError(
            f"a {first.kind} pattern (q I_mol/I_at) is identically zero at q = 0, where it carries no information and "
            "has no noise model; drop the q = 0 point (pattern.restrict(q_min=...))"
        )
    for k, p in enumerate(patterns):
        _check_signal(p, k)
    return numbers


def _split_components(patterns: list[Pattern], dipole) -> tuple[list[Pattern], list[Pattern] | None]:
    """(isotropic patterns, their P2 partners or None): legendre=2 patterns pair in order with legendre=0 ones."""
    for k, p in enumerate(patterns):
        if not isinstance(p, Pattern):
            raise TypeError(f"pattern {k} is a {type(p).__name__}, not an xfit.Pattern")
    iso = [p for p in patterns if p.legendre == 0]
    p2 = [p for p in patterns if p.legendre == 2]
    if not p2:
        if dipole is not None:
            raise ValueError(
                "dipole is for anisotropic retrieval: pass the P2 component (a Pattern with legendre=2) beside each "
                "isotropic one, e.g. retrieve([p0, p2], atoms, dipole=('bond', i, j))"
            )
        return iso, None
    if dipole is None:
        raise ValueError(
            "a P2 (legendre=2) pattern needs the transition dipole in the molecular frame: retrieve([p0, p2], atoms, "
            "dipole=('bond', i, j)) or dipole=('normal', i, j, k) (atom indices)"
        )
    if len(iso) != len(p2):
        raise ValueError(
            f"{len(iso)} isotropic (legendre=0) and {len(p2)} P2 (legendre=2) patterns: anisotropic retrieval pairs "
            "them in order, one P2 component per isotropic one"
        )
    for k, (a, b) in enumerate(zip(iso, p2, strict=True)):
        if not np.array_equal(a.q, b.q):
            raise ValueError(
                f"P2 pattern {k} is on a different q grid ({len(b.q)} points, {b.q[0]:.3g}..{b.q[-1]:.3g} 1/A) from "
                f"its isotropic partner ({len(a.q)} points, {a.q[0]:.3g}..{a.q[-1]:.3g} 1/A); the two components of "
                "one measurement share their q grid"
            )
        if a.kind != b.kind or a.probe != b.probe:
            raise ValueError(
                f"P2 pattern {k} is a {b.probe} {b.kind!r} pattern, its isotropic partner a {a.probe} {a.kind!r} one; "
                "the two components of one measurement share kind and probe"
            )
        if b.kind not in ANISOTROPIC_KINDS or (b.probe == "electron" and b.kind == "total"):
            raise ValueError(
                f"anisotropic retrieval models patterns of kinds {ANISOTROPIC_KINDS} (no 'total' for electrons), "
                f"not a {b.probe} {b.kind!r} pattern (atomic and inelastic scattering have no P2 component)"
            )
        _check_signal(b, k)
    return iso, p2


def _split_images(items: list, dipole) -> tuple[list[DetectorImage], list[Pattern]]:
    """(the images, their radial averages) for a retrieval of ``xfit.DetectorImage``s; errors for mixed inputs."""
    for k, item in enumerate(items):
        if not isinstance(item, DetectorImage):
            raise TypeError(
                f"item {k} is a {type(item).__name__}, not an xfit.DetectorImage; retrieve images and patterns in "
                "separate calls"
            )
    if dipole is not None:
        raise ValueError(
            "an image carries its own dipole: DetectorImage(data, detector, dipole=('normal', i, j, k)), not "
            "retrieve(..., dipole=)"
        )
    first = items[0]
    for k, image in enumerate(items):
        if image.kind != first.kind or image.dipole != first.dipole or image.probe != first.probe:
            raise ValueError(
                f"image {k} ({image.kind}, {image.probe}, dipole {image.dipole}) differs from image 0 ({first.kind}, "
                f"{first.probe}, dipole {first.dipole}); images retrieved in one call share kind, probe and dipole"
            )
    return items, [image.radial_average() for image in items]


def _check_signal(p: Pattern, k: int) -> None:
    """A pattern without signal has nothing to fit (numpy would fail later with "SVD did not converge")."""
    source = p.metadata.get("source")
    where = f"pattern {k}" + (f" ({source})" if source else "")
    v = p.values
    if not np.any(v):
        raise ValueError(f"{where} has no signal: every value is zero")
    if np.ptp(v) <= 1e-12 * np.max(np.abs(v)):
        raise ValueError(f"{where} has no signal: every value is {v[0]:g} (constant; no structure to fit)")
    if p.sigma is not None and not np.any(np.abs(v) > p.sigma):
        raise ValueError(
            f"{where} has no signal: no value is above its sigma (max |value|/sigma is "
            f"{np.max(np.abs(v) / p.sigma):.3g})"
        )


# A fit with the right molecule, kind, units and noise level has chi2_reduced ~ 1 +- sqrt(2/dof); IAM model error
# and a misjudged sigma (up to 2x) raise it to a few. Above 25 the residual is 5x the stated (or assumed) noise: no
# noise misestimate of that size is common, and the causes are gross (see chi2_warning).
CHI2_WARNING_THRESHOLD = 25.0


def chi2_warning(result: Retrieval) -> str | None:
    """A one-line warning when result.chi2_reduced > CHI2_WARNING_THRESHOLD, naming the likely causes, else None."""
    if not result.chi2_reduced > CHI2_WARNING_THRESHOLD:
        return None
    sigma = "sigma too small" if result.pattern.sigma is not None else "no sigma given (0.1 % noise assumed)"
    return (
        f"poor fit: chi2_reduced = {result.chi2_reduced:.3g} > {CHI2_WARNING_THRESHOLD:g}; likely causes: wrong "
        f"molecule for this pattern, {sigma}, wrong pattern kind ({result.pattern.kind!r}), or q not in 1/A "
        "(q = 4 pi sin(theta)/lambda)"
    )


def _check_options(
    pattern, model_kind, fraction, final_restraint_weight, n_starts, steps, relative_sigma, background, electron_model
):
    from xfit.physics._elements import ELECTRON_MODELS

    kind = pattern.kind
    if model_kind not in _iam.KINDS:
        raise ValueError(f"unknown model_kind {model_kind!r}; choose one of {_iam.KINDS}")
    if electron_model not in ELECTRON_MODELS:
        raise ValueError(f"unknown electron_model {electron_model!r}; choose one of {ELECTRON_MODELS}")
    if pattern.probe == "electron":
        if model_kind == "inelastic" and kind in ("percent_difference", "difference"):
            raise ValueError("electron inelastic scattering is not modelled; use model_kind='elastic'")
        if kind == "difference" and fraction is not None and pattern.energy_kev is None:
            raise ValueError(
                "an electron 'difference' pattern with a fixed fraction is absolute (A^2), which needs the electrons' "
                "energy for the relativistic factor: give the Pattern energy_kev, or fit the fraction (fraction=None)"
            )
    if background and kind not in ("total", "elastic", "atomic", "molecular", "inelastic"):
        raise ValueError(f"background is for intensity patterns; this pattern's kind is {kind!r}")
    if fraction is not None and kind not in DIFFERENCE_KINDS:
        raise ValueError(f"fraction is for difference patterns; this pattern's kind is {kind!r}")
    if isinstance(fraction, tuple):
        if kind not in FRACTION_KINDS:
            raise ValueError(
                f"a prior (mean, sd) on the fraction is for {FRACTION_KINDS} patterns, whose solved coefficient is "
                f"the fraction itself; this pattern's kind is {kind!r} (fraction x scale)"
            )
        if len(fraction) != 2 or not (0 < fraction[0] <= 1 and fraction[1] > 0):
            raise ValueError(f"fraction as a prior is (mean in (0, 1], sd > 0), got {fraction}")
    elif fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 0 <= final_restraint_weight <= 1:
        raise ValueError(f"final_restraint_weight must be in [0, 1], got {final_restraint_weight}")
    if n_starts < 1 or steps < 1:
        raise ValueError("n_starts and steps must be at least 1")
    if not relative_sigma > 0:
        raise ValueError(f"relative_sigma must be positive, got {relative_sigma}")


def _restraint_set(restraints, graph: MoleculeGraph, free_pairs, bond_sigma, angle_sigma):
    if isinstance(restraints, str) and restraints == "covalent":
        return _restraints.covalent_restraints(
            graph, free_pairs=free_pairs, bond_sigma=bond_sigma, angle_sigma=angle_sigma
        )
    if restraints is None:
        return _restraints.Restraints.none()
    if isinstance(restraints, _restraints.Restraints):
        return restraints
    raise ValueError(f"restraints must be 'covalent', None or a Restraints, got {restraints!r}")


def _resolve_proposal(prior, graph: MoleculeGraph, kind: str, probe: str = "xray"):
    """The proposal network for the refinement fallback, or None (always for electrons: the networks read X-ray
    patterns)."""
    auto = isinstance(prior, str) and prior == "auto"
    if prior is None or prior is False or (auto and (kind not in PROPOSAL_KINDS or probe != "xray")):
        return None
    if probe != "xray":
        raise ValueError("the proposal networks were trained on X-ray patterns, not electron ones; pass prior=None")
    if isinstance(prior, str) and prior == "auto":
        # Only a network trained on this molecule: the broad one is opt-in (prior="broad"), since on molecules it
        # never saw it has not shown a consistent gain yet (benchmarks/prior.py, section 5).
        return next((m for m in map(_shipped_proposal, AUTO_PROPOSALS) if m.fits(graph)), None)
    model = prior if isinstance(prior, _proposal.Prior) else _proposal.load_prior(prior)
    if kind not in PROPOSAL_KINDS:
        raise ValueError(f"the proposal network reads {PROPOSAL_KINDS} patterns, not {kind!r}; pass prior=None")
    if len(graph) > model.config.max_atoms:
        raise ValueError(f"the prior takes molecules of at most {model.config.max_atoms} atoms, not {len(graph)}")
    return model


def _resolve_conformer(prior, graph: MoleculeGraph):
    """The conformer prior for the posterior strategy, or None (with a warning when one was asked for but does not
    fit; an explicitly given prior for another molecule is an error)."""
    if prior is None or prior is False:
        return None
    if isinstance(prior, str) and prior == "auto":
        model = None if AUTO_CONFORMER is None else _shipped_conformer(AUTO_CONFORMER)
        if model is None or not model.fits(graph):
            return None
        return model
    if not _is_conformer(prior):
        return None
    from xfit.learn._conformer import ConformerPrior, load_conformer_prior

    model = prior if isinstance(prior, ConformerPrior) else load_conformer_prior(prior)
    if not model.fits(graph):
        raise ValueError(
            f"the conformer prior {model.path or ''} was trained on {sorted(model.molecules)} "
            f"({', '.join(sorted(set(model.molecules.values())))}), not on this molecule's graph {graph.key}"
        )
    return model


def retrieve(
    pattern: Pattern | Sequence[Pattern],
    atoms: Atoms,
    *,
    reference: Atoms | None = None,
    fraction: float | tuple[float, float] | None = None,
    model_kind: str = "total",
    background: bool = False,
    restraints: str | _restraints.Restraints | None = "covalent",
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
    strategy: Strategy | None = None,
    electron_model: str = "mott-bethe",
    dipole: tuple | None = None,
    client=None,
    results_file: str | os.PathLike | None = None,
) -> Retrieval | list[Retrieval]:
    """Retrieve the molecular structure behind a scattering pattern (or a batch of them).

    Args:
        pattern: an ``xfit.Pattern``, or a sequence of them on one q grid (a time series, a stack of shots),
            which gives a list of results. q = 4 pi sin(theta)/lambda in 1/A. Or an ``xfit.DetectorImage`` (or a
            list of them): its valid pixels are fitted (``xfit.infer._likelihood``, module notes), the image carries
            its own dipole (no ``dipole=`` here), ``info["n_invalid"]`` counts its NaN/negative pixels (masked, not
            fitted) and ``pattern``/``model`` of the Retrieval are radial averages of data and fit.
        atoms: the molecule, ``ase.Atoms``; its geometry is the starting point of the search and the default
            reference (ground state) for difference patterns and restraints.
        reference: reference structure for difference patterns and restraint targets (default: ``atoms``).
        fraction: excitation fraction for percent-difference/difference patterns; None fits it in [0, 1]; a pair
            (mean, sd) fits it under that Gaussian prior ("percent_difference", "delta_sm"), for a fraction the
            experiment knows roughly (pump fluence, ground-state bleach): for a small structural change the
            pattern fixes only the fraction times the displacement (see ``fraction_warning``).
        model_kind: which intensity the model computes for difference patterns ("total" or "elastic", ...).
            Intensity patterns are modelled with their own kind.
        background: also fit a flat background (intensity patterns).
        electron_model: electron scattering factors for ``probe="electron"`` patterns: "mott-bethe" (from the X-ray
            form factors) or "kirkland". Neither needs the pattern's ``energy_kev``: the energy enters both only as
            the relativistic factor gamma^2 of the intensity, which the fitted scale absorbs (or ratios cancel);
            only a plain "difference" with a fixed ``fraction`` needs it. Electron kinds: "elastic", "atomic",
            "molecular", "sm" (scale fitted), "percent_difference", "difference", "delta_sm" (fraction fixed or
            fitted); "total" and "inelastic" are errors for electrons (no inelastic model).
        dipole: anisotropic (photoselected) retrieval: the pump's transition dipole in the molecular frame,
            ``("bond", i, j)`` (along r_j - r_i) or ``("normal", i, j, k)`` (normal to the plane of atoms i, j, k),
            atom indices of ``atoms``; it moves with the structure (``xfit.dipole_vector``). ``pattern`` then mixes
            isotropic (``legendre=0``) and P2 (``legendre=2``) components on the same q grid, paired in order:
            ``retrieve([p0, p2], atoms, dipole=("bond", 0, 1))``, or [p0_a, p0_b, p2_a, p2_b] for two time points.
            Each pair is fitted jointly (chi2 of both components summed) by one structure, with one shared scale
            (intensity kinds) or excitation fraction (differences); one Retrieval per pair, its ``pattern``/``model``
            the isotropic component and ``pattern_p2``/``model_p2`` the P2 one. Kinds: total (X-rays), elastic,
            molecular, percent_difference (P2 as 100 Delta I2 / I_off), difference; electrons also sm (P2 as
            q I2/I_at) and delta_sm (q Delta I2/I_at).
        prior: which learned prior, and so which strategy.
            "auto" (default): posterior sampling with the shipped conformer prior where it fits (NMM, CHD, DT,
            any atom order; see AUTO_CONFORMER), its particles seeded also by the shipped proposal network;
            other molecules: refinement, with a ``PriorFallbackWarning`` saying so.
            A ``ConformerPrior``, its folder (from ``xfit train-prior``) or "conformer" (the shipped one, NMM, CHD
            and DT): posterior sampling with it (``info["method"] == "posterior"``; no restraints, bonds may
            break by themselves; an error if it was trained on another molecule). A proposal ``xfit.Prior``, its
            folder (from ``xfit train``) or a shipped one's name ("nmm_chd_dt", "broad"): refinement seeded by it.
            None or False: refinement alone. ``info["prior"]`` says which prior was used.
        strategy: an explicit strategy value (``xfit.Posterior(...)`` or ``xfit.Refinement(...)``) overriding the
            choice above and the options below that configure it.

    Refinement options (the fallback; ignored by the posterior):
        restraints: "covalent" (bonds and 1-3 distances of the reference, see ``free_pairs``), None for
            restraint-free fitting, or an explicit ``Restraints``.
        free_pairs: atom pairs (i, j) whose bond may break: not restrained, nor any 1-3 distance through them.
        bond_sigma, angle_sigma: restraint widths in A for bonds and 1-3 distances.
        n_starts: starts per pattern: the input geometry and n_starts - 1 random perturbations of it.
        starts: extra starting structures tried for every pattern besides those: ``ase.Atoms`` of this molecule,
            or an array (n_extra, n_atoms, 3) in A (the posterior uses them as extra particle seeds).
        perturbation: standard deviation (A) of the random Cartesian displacements of the starts.
        steps, learning_rate: Adam iterations and initial step (A), cosine-decayed.
        final_restraint_weight: the restraints weigh fully in the first half of the run, to guide the search, then
            decay to this weight, so that the data, not the reference geometry, set the final structure; ranking
            and error bars use this final weight. 1 keeps them at full weight throughout.
        smoothness: coupling (chi^2 per A^2) of interatomic distances between neighbouring patterns of a sequence.
        duplicate_tolerance: candidates within this heavy-atom RMSD (A) of a better one are merged into it.

    Common options:
        relative_sigma: the noise assumed for patterns without sigma, as a fraction of the intensity (see
            ``xfit.infer._likelihood.weights``); it sets how the data weigh against the restraints or prior.
        seed: seed of every random draw (the same seed gives the same result).
        dtype: float32 (fast) or float64 (needs jax_enable_x64).
        progress: show a progress bar (stderr). chunk: patterns per compiled call (default: all, or 64 with
            ``progress``); with ``client``, patterns per Dask task (default: about 4 tasks per worker, at most 64).
        client: a ``dask.distributed.Client`` (``pip install 'xfit[dask]'``): the batch is split into equal chunks
            (the last one padded) run on the cluster's workers and gathered in order. Each pattern's random draws
            depend only on the seed and its position in the batch, so the result is the serial one (up to float32
            rounding, which depends on the batch shape); a worker lost mid-chunk is survived (its chunk reruns).
            Not with ``smoothness`` > 0 (a coupled series is one problem).
        results_file: append every result to this results file (``xfit.save_results``; created when missing) as
            soon as it exists: with ``client``, chunk by chunk as the workers finish them, so a run that stops
            midway keeps every finished result (``xfit.load_results`` reads it, also while it is written).

    Returns:
        A :class:`Retrieval` (one pattern) or a list of them (a sequence of patterns); ``info["method"]`` says
        which strategy ran.

    Raises:
        ValueError: NaN or sigma <= 0 in a pattern (raised when the Pattern is built), q outside the model's range,
        a difference pattern with no reference geometry, atoms whose count or order does not match the reference,
        patterns on different q grids, unknown options, a conformer prior given for another molecule, an electron
        pattern of kind "total"/"inelastic", an sM or Delta sM pattern with q = 0 in its grid,
        ``client`` with ``smoothness`` > 0; for anisotropic retrieval a P2 pattern without a dipole (or a dipole
        without P2 patterns), unpaired components, a P2 component on another q grid than its partner's, a dipole
        naming atoms that do not exist or repeated ones (also an image's); images mixed with patterns (TypeError),
        images of different kinds or dipoles in one call, ``dipole=`` given with images.
        TypeError: ``client`` that is not a ``dask.distributed.Client``.

    Warns:
        PriorFallbackWarning: the default prior does not fit the molecule (refinement ran instead).
        RuntimeWarning: this process held more than half of Linux's memory-map limit, most of it compiled XLA
        programs, and JAX's compilation caches were cleared first (``xfit.infer._compiled``).
    """
    release_if_near_map_limit()  # a process that retrieves at many pattern lengths would otherwise crash in XLA
    single = isinstance(pattern, Pattern | DetectorImage)
    patterns = [pattern] if single else list(pattern)
    if not patterns:
        raise ValueError("no patterns given")
    if isinstance(fraction, list | tuple | np.ndarray):  # (mean, sd): a prior on a fitted fraction
        fraction = tuple(float(v) for v in fraction)
    images, p2_patterns = None, None
    if any(isinstance(p, DetectorImage) for p in patterns):
        images, patterns = _split_images(patterns, dipole)
        dipole = images[0].dipole
    else:
        patterns, p2_patterns = _split_components(patterns, dipole)
    # The radial averages of images need not share a q grid (their masks differ); their pixels are the data.
    numbers = _check_inputs(patterns[:1] if images else patterns, atoms, reference)
    reference = atoms if reference is None else reference
    if dipole is not None:
        dipole = _anisotropy.check_dipole(dipole, len(atoms), reference.positions)
    kind = patterns[0].kind
    _check_options(
        patterns[0],
        model_kind,
        fraction,
        final_restraint_weight,
        n_starts,
        steps,
        relative_sigma,
        background,
        electron_model,
    )

    graph = MoleculeGraph.from_atoms(reference)
    if images is not None:
        likelihood = build_image_likelihood(
            images, numbers, background=background, dipole=dipole, dtype=dtype, electron_model=electron_model
        )
    else:
        likelihood = build_likelihood(
            patterns,
            numbers,
            reference.positions,
            fraction=fraction,
            model_kind=model_kind,
            background=background,
            relative_sigma=relative_sigma,
            dtype=dtype,
            electron_model=electron_model,
            p2_patterns=p2_patterns,
            dipole=dipole,
        )
    problem = Problem(
        tuple(patterns),
        likelihood,
        graph,
        atoms,
        reference,
        kind in DIFFERENCE_KINDS,
        images=None if images is None else tuple(images),
    )
    info = {"seed": seed}
    if kind in DIFFERENCE_KINDS:
        info["fraction_fitted"] = fraction is None or isinstance(fraction, tuple)
    if strategy is None:
        refinement = {
            "restraints": restraints,
            "free_pairs": free_pairs,
            "bond_sigma": bond_sigma,
            "angle_sigma": angle_sigma,
            "n_starts": n_starts,
            "perturbation": perturbation,
            "steps": steps,
            "learning_rate": learning_rate,
            "smoothness": smoothness,
            "final_restraint_weight": final_restraint_weight,
            "chunk": chunk,
        }
        choice = _choose_strategy(problem, prior, starts, fraction, model_kind, dtype, progress, refinement)
        strategy, info["prior"] = choice
    if client is not None:
        from xfit.infer import _distributed

        results = _distributed.retrieve_on_cluster(
            client,
            problem,
            strategy,
            seed=seed,
            duplicate_tolerance=duplicate_tolerance,
            info=info,
            chunk=chunk,
            progress=progress,
            on_part=lambda first, part: _deliver(
                part,
                patterns[first : first + len(part)],
                results_file,
                None if p2_patterns is None else (problem, first, p2_patterns),
                None if images is None else images[first : first + len(part)],
            ),
        )
        return results[0] if single else results
    ensemble = strategy.run(problem, jax.random.key(seed))
    results = summarise(problem, ensemble, duplicate_tolerance=duplicate_tolerance, info=info)
    p2 = None if p2_patterns is None else (problem, 0, p2_patterns)
    results = _deliver(results, patterns, results_file, p2, images)
    return results[0] if single else results


def _deliver(results: list[Retrieval], patterns: list[Pattern], results_file, p2=None, images=None) -> list[Retrieval]:
    """Results annotated (``_annotate``) and, with ``results_file``, appended to it (a chunk at a time on a cluster).

    p2: for anisotropic retrieval, (problem, index of the first result in it, all P2 patterns): each result gets its
    P2 pattern and the fitted P2 model. images: the results' DetectorImages (image retrieval): each result keeps its
    image, and info["n_invalid"] its count of invalid (masked, unfitted) pixels.
    """
    results = [_annotate(r, p) for r, p in zip(results, patterns, strict=True)]
    if images is not None:
        results = [
            dataclasses.replace(r, image=im, info={**r.info, "n_invalid": im.n_invalid, "n_pixels": im.n_valid})
            for r, im in zip(results, images, strict=True)
        ]
    if p2 is not None:
        problem, first, p2_patterns = p2
        results = [
            dataclasses.replace(
                r,
                pattern_p2=p2_patterns[t],
                model_p2=_model_pattern(problem, t, _fit(problem, t, r.atoms.positions)[0], 2),
            )
            for t, r in enumerate(results, start=first)
        ]
    if results_file is not None:
        from xfit.data._results import save_results

        save_results(results, results_file, append=True)
    return results


def fraction_warning(result: Retrieval) -> str | None:
    """A one-line warning when a fitted excitation fraction ended at a bound of [0, 1], else None.

    For a small structural change a difference pattern is linear in it, f (dI/dx) dx, and fixes only the product of
    the fraction and the displacement: f = 1 with a displacement f_true times smaller fits as well. The prior then
    prefers the smaller change, and the fit runs to f = 1. Measured: the UED notebook's Delta sM (CHD, f = 0.15, C1-C6
    1.53 -> 2.33 A) gave f = 1.000, C1-C6 1.68 +- 0.02 A, chi2_red 0.90 (the truth's 0.98), against f = 0.148,
    C1-C6 2.25 +- 0.15 A with ``fraction=(0.15, 0.05)``. At the bound the error bars do not include that trade-off."""
    f = result.parameters.get("fraction")
    if not result.info.get("fraction_fitted") or f is None or 1e-4 < f < 0.999:
        return None
    return (
        f"the fitted excitation fraction sits at its bound ({f:.3g}): the pattern fixes only the fraction times the "
        "structural change, so the structure is not determined (its error bars leave this out); give fraction=f, "
        "or fraction=(mean, sd) for a fraction known roughly (pump fluence, ground-state bleach)"
    )


def shared_fraction(results: Sequence[Retrieval]) -> tuple[float, float]:
    """One excitation fraction for a pump-probe series, from the fractions fitted pattern by pattern.

    In one experiment every delay shares the pump, so one fraction holds for all; patterns with a large structural
    change fix it tightly, those with a small change hardly at all (the pattern fixes only f times the change).
    Returns (mean, sd): the inverse-variance weighted mean of the fitted fractions f_t +- ``info["fraction_sigma"]``,
    its standard error inflated by the Birge ratio sqrt(chi2/(n - 1)) when the f_t scatter more than their error
    bars allow (a fit in a wrong basin). Fractions at a bound of [0, 1] are left out (their error bars do not hold).
    The combination takes the delays' errors as independent: a bias they share is not averaged out, and the sd does
    not include it. Where every delay's change is small, the prior's preference for the size of a change is such a
    bias. Measured: on the shared CHD trajectory (percent difference, f = 0.1, 19 frames, most ring-opened) 0.0986
    +- 0.0065; on the measured LCLS NMM series (81 delays, no bond broken) 0.025 +- 0.001 against the published
    0.057, so there it is no substitute for a fraction the experiment knows.
    Then ``retrieve(patterns, atoms, fraction=(mean, sd))`` (or ``fraction=mean``) retrieves the series again under
    it; ``xfit retrieve --fraction shared`` does both passes.

    Args:
        results: retrievals with the fraction fitted flat (``percent_difference`` or ``delta_sm`` patterns retrieved
            without ``fraction=``; fits under a prior ``fraction=(mean, sd)`` would count that prior once per delay).
    """
    results = list(results)
    if not results:
        raise ValueError("shared_fraction needs at least one retrieval, got none")
    f, sigma = [], []
    for k, r in enumerate(results):
        if not r.info.get("fraction_fitted") or "fraction_sigma" not in r.info:
            raise ValueError(
                f"result {k} has no fitted excitation fraction with an error bar (kind {r.pattern.kind!r}, "
                f"fraction fitted: {bool(r.info.get('fraction_fitted'))}): retrieve difference patterns without "
                "fraction=f first"
            )
        value = r.parameters["fraction"]
        if 1e-4 < value < 0.999 and r.info["fraction_sigma"] > 0:
            f.append(value)
            sigma.append(r.info["fraction_sigma"])
    if not f:
        raise ValueError(
            f"all {len(results)} fitted fractions sit at a bound of [0, 1]: no shared fraction to estimate"
        )
    f, w = np.asarray(f), 1.0 / np.asarray(sigma) ** 2
    mean = float(np.sum(w * f) / np.sum(w))
    sd = float(1.0 / np.sqrt(np.sum(w)))
    if len(f) > 1:
        sd *= max(1.0, float(np.sqrt(np.sum(w * (f - mean) ** 2) / (len(f) - 1))))
    return mean, sd


def _annotate(result: Retrieval, pattern: Pattern) -> Retrieval:
    """info["source"]: the pattern file (or None); info["warning"] when the fit is poor (:func:`chi2_warning`) or a
    fitted excitation fraction ends at a bound (:func:`fraction_warning`), both when both."""
    info = {**result.info, "source": pattern.metadata.get("source")}
    warning = "; ".join(w for w in (chi2_warning(result), fraction_warning(result)) if w is not None)
    if warning:
        info["warning"] = warning
    return dataclasses.replace(result, info=info)


def _choose_strategy(problem: Problem, prior, starts, fraction, model_kind, dtype, progress, options: dict):
    """The strategy ``prior`` asks for, and the path of the prior it uses (see ``retrieve``)."""
    graph, patterns = problem.molecule, list(problem.patterns)
    extra = None if starts is None else extra_starts(starts, problem.atoms)
    conformer = _resolve_conformer(prior, graph)
    if conformer is not None:
        from xfit.infer._posterior import Posterior

        # The shipped proposal network's candidates join the particles where it fits: more basins found, never a
        # different target (the posterior weighs every particle's basin by its own mass).
        proposal = _resolve_proposal("auto", graph, patterns[0].kind, patterns[0].probe)
        seeds = None
        if proposal is not None:
            seeds = proposal_starts(proposal, patterns, problem.reference, fraction, model_kind)
        if extra is not None:
            extra = np.broadcast_to(extra, (len(patterns), *extra.shape))
            seeds = extra if seeds is None else np.concatenate([seeds, extra], axis=1)
        return Posterior(conformer, extra_starts=seeds, dtype=dtype, progress=progress), conformer.path
    if isinstance(prior, str) and prior == "auto":
        _warn_fallback(graph)
    proposal = _resolve_proposal(prior, graph, patterns[0].kind, patterns[0].probe)
    x_extra = None if extra is None else np.broadcast_to(extra, (len(patterns), *extra.shape))
    if proposal is not None:
        seeds = proposal_starts(proposal, patterns, problem.reference, fraction, model_kind)
        x_extra = seeds if x_extra is None else np.concatenate([seeds, x_extra], axis=1)
    free_pairs = tuple(tuple(int(v) for v in p) for p in options["free_pairs"])
    restraints = _restraint_set(options["restraints"], graph, free_pairs, options["bond_sigma"], options["angle_sigma"])
    strategy = Refinement(
        restraints,
        n_starts=options["n_starts"],
        perturbation=options["perturbation"],
        free_pairs=free_pairs,
        extra_starts=x_extra,
        steps=options["steps"],
        learning_rate=options["learning_rate"],
        smoothness=options["smoothness"],
        final_restraint_weight=options["final_restraint_weight"],
        dtype=dtype,
        chunk=options["chunk"] or (64 if progress else None),
        progress=progress,
    )
    return strategy, None if proposal is None else proposal.path


def _warn_fallback(graph: MoleculeGraph) -> None:
    shipped = None if AUTO_CONFORMER is None else _shipped_conformer(AUTO_CONFORMER)
    if shipped is None:  # a checkout without the shipped conformer weights: refinement is the plan, not a fallback
        return
    warnings.warn(
        f"no learned conformer prior covers {graph.formula} ({graph.key}); retrieving by refinement with covalent "
        "restraints (info['method'] == 'refinement'; pass prior=None to choose it explicitly)",
        PriorFallbackWarning,
        stacklevel=3,
    )
