"""The posterior strategy: p(x | pattern) proportional to p(pattern | x) p(x | molecule), sampled with a learned
conformer prior.

With U(x) = chi2(x)/2 + E(x, sigma_min), -log of the posterior up to a constant (E: the prior's energy, its score
is -grad E; chi2: the likelihood with nuisance parameters profiled out), for every pattern at once:

1. Particles. ``n_prior`` draws from the learned diffusion prior itself (annealed Langevin on its score, so that
   ring-opened, twisted, hot structures are among the seeds when the prior holds them); the ``bank_seeds`` draws
   of one shared bank of ``n_bank`` prior draws that fit each pattern best (chi2 at the annealing's first, blurred
   level: a pool fit on the prior's own samples, which finds the rare open-chain conformers that a few dozen
   draws per pattern miss; drawn once per call, or once per process for ``xfit.ConformerPrior``, from per-pair
   tables); the input geometry and random perturbations of it; and any extra seeds (a proposal network's
   candidates, the user's ``starts``).
2. Annealing. Each particle descends U_sigma(x) = chi2(x)/2 + E(x, sigma) while sigma falls geometrically from
   ``sigma_start`` to the prior's sigma_min: early, the prior is the smoothed density of its noisier levels and
   the likelihood's gradient leads; late, both hold at full strength. Adam preconditions the very different
   stiffness of the data and the prior along different directions (the data pin some distances to 1e-3 A and
   leave others free). One jit-compiled ``lax.scan`` over particles x patterns (the guided-diffusion analogue of
   Chung et al., ICLR 2023, with the Tweedie step replaced by descent at each level: at the 0.1 % noise of these
   patterns the likelihood is far sharper than the prior, and plain Langevin steps small enough for it would need
   ~1e4 steps per level). The prior is read from per-pair tables at ``table_levels`` levels (cubic Hermite in
   the distance, ~15x cheaper than the network), and after ``prune_at`` of the steps each pattern keeps only the
   ``prune_fraction`` of its particles of lowest U, distinct structures first (successive halving), the last few
   of them replaced by copies of the best with their terminal groups (a methyl, the CH2 at each end of an opened
   ring) turned to their other orientation (``twist_moves``: a move no descent makes). The
   likelihood is tempered with the prior (``tempering``): at level sigma each point's weight carries the
   Debye-Waller factor exp(-q^2 b^2), b = sqrt(sigma^2 - sigma_min^2), that the pair term of a structure would
   show with every atom smeared by the prior's extra noise (the low-q data lead, the high-q data whose
   oscillations trap particles weigh in as sigma falls; full strength at the end), and its noise variance is
   inflated by the model's spread under that smearing, 1/w -> 1/w + b^2 S(q) with S the squared model gradient
   at the input geometry (``inflation``; the likelihood covariance of pseudoinverse-guided diffusion, Song et
   al., ICLR 2023). Without it, precise data made retrieval worse: held to the data from the first level, the
   descent fell into the optima they carve before the prior had shaped the structure (near-closed CHD frames,
   X-ray at 0.1 and 0.025 % noise: 0.080 and 0.095 A without, 0.072 and 0.077 A with it; benchmarks/README.md).
   Then ``polish`` x steps more at sigma_min with the likelihood untempered end every particle at an optimum.
3. Local posterior. At each particle's optimum x*, H = Gauss-Newton Hessian of chi2/2 + the prior energy's
   Hessian (rigid-body directions projected out, curvature floored). The basin's mass is its Laplace evidence,
   exp(-U(x*)) det'(H)^(-1/2) sqrt(det' I(x*)), where I is the inertia tensor (unit masses): integrating out the
   three rotations leaves that orbit-volume factor, which matters when modes of different shape (closed ring,
   open chain) are compared. The ``n_basins`` heaviest distinct basins go on (the rest hold exponentially less
   mass): samples within each come from a Metropolis-adjusted Langevin chain preconditioned by H^-1, exact for the
   basin whatever the Gaussian misses (importance weights from the Laplace Gaussian itself collapsed to one
   effective sample per basin in trials: the prior's curvature is not that of a Gaussian). Particles that
   converged to one optimum share its mass, one optimum being the same structure under any relabelling that
   leaves pattern and prior unchanged (``MoleculeGraph.skeleton_automorphisms``: CHD's ring read either way) and
   under reflection; and each optimum's mass counts every such copy of it in labelled coordinates (the symmetry
   number: :func:`_symmetry_copies`).
4. Summary (``xfit.infer._result``): optima clustered into modes by heavy-atom RMSD, reflection and those
   relabellings allowed, every sample and basin relabelled to its mode before superposition; mode masses; the
   heaviest mode's weighted mean heavy atoms, with the hydrogens of its heaviest basin, relaxed to the nearest
   optimum of U at sigma_min (:func:`relax`), as the structure; posterior standard deviations from its samples.
   The relaxation matters for hot structures: the basins of one mode differ in their hydrogens, and their mean
   fitted shared CHD frames at chi2_reduced 10-20 where every basin fitted at 1; relaxed from the mean hydrogens as
   well, it often ended in a worse optimum than from one basin's.

Noise: with sigma given, the likelihood is taken as it is. Without sigma (``relative_sigma`` assumed), the noise
level is re-estimated from the best particle's chi2_reduced before step 3, so error bars follow the residual.
Particles whose energy or weight is not finite are dropped and counted (``info["dropped"]``).

The prior is any object with ``energy_fn(graph) -> f(x, sigma)`` (pure JAX, x (..., n_atoms, 3) in A) and
``sample(key, graph, n) -> (n, n_atoms, 3)``; ``xfit.ConformerPrior`` is one.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xfit.infer._likelihood import Likelihood
from xfit.infer._problem import Ensemble, Problem, pattern_keys, shard

__all__ = ["Posterior", "anneal", "as_energy", "laplace", "mala", "relax"]


def _rigid_projector(x):
    """Projector (3n, 3n) onto the complement of the rigid-body motions of x (n, 3); rank-deficient rotations of
    linear molecules are dropped by their singular value."""
    n = x.shape[0]
    c = x - jnp.mean(x, axis=0)
    eye = jnp.eye(3, dtype=x.dtype)
    translations = [jnp.tile(eye[k], n) for k in range(3)]
    rotations = [jnp.cross(eye[k], c).ravel() for k in range(3)]
    basis = jnp.stack(translations + rotations, axis=1)  # (3n, 6)
    u, s, _ = jnp.linalg.svd(basis, full_matrices=False)
    keep = (s > 1e-6 * s[0]).astype(x.dtype)
    return jnp.eye(3 * n, dtype=x.dtype) - (u * keep) @ u.T


def _log_orbit_volume(x):
    """0.5 log det' of the unit-mass inertia tensor of x (n, 3): the volume of the rotation orbit of a structure,
    up to a constant (for a linear molecule, the product of its two non-zero moments). From the tensor's
    invariants (det = e1 e2 e3; c2 = e1 e2 + e1 e3 + e2 e3 = e2 e3 when e1 = 0), not an eigendecomposition: the
    sampler takes its gradient at every step."""
    c = x - jnp.mean(x, axis=0)
    r2 = jnp.sum(c * c)
    inertia = r2 * jnp.eye(3, dtype=x.dtype) - c.T @ c
    det = jnp.linalg.det(inertia)
    c2 = 0.5 * (jnp.trace(inertia) ** 2 - jnp.sum(inertia * inertia))
    planar = det > 1e-6 * jnp.maximum(c2, 1e-30) ** 1.5  # all three moments non-zero
    return 0.5 * jnp.where(planar, jnp.log(jnp.where(planar, det, 1.0)), jnp.log(jnp.maximum(c2, 1e-30)))


def as_energy(energy):
    """``energy`` as a pytree that jitted functions take as an argument: a prior's ``PairEnergy`` or ``PairTable``
    as it is (its weights are leaves: compiled once per molecule size), a plain function wrapped in
    ``jax.tree_util.Partial`` (compiled once per function object)."""
    leaves = jax.tree_util.tree_leaves(energy)
    return jax.tree_util.Partial(energy) if len(leaves) == 1 and leaves[0] is energy else energy


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def anneal(
    likelihood: Likelihood,
    energy,
    x0,
    levels,
    state=None,
    blur=None,
    sensitivity=None,
    *,
    steps: int,
    learning_rate: float,
):
    """Descend U_l(x) = chi2_b(x)/2 + E(x, l) with the prior's noise level l following ``levels`` and the
    likelihood tempered by ``blur`` b (:meth:`Likelihood.tempered`, with the model ``sensitivity``), Adam, cosine
    step.

    Args:
        likelihood: T patterns. energy: the prior's energy f(x, level) -> (...) as a pytree (:func:`as_energy`):
            with ``levels`` the noise levels in A (an energy function), or indices into a ``PairTable``'s levels.
        x0: particles (T, S, n_atoms, 3) in A. levels: the level at each step of this call.
        state: Adam's state from an earlier call (to go on where it stopped: its step count drives the cosine
            schedule), or None to start. blur: (len(levels),) the likelihood's smearing (A) at each step, or None
            for the likelihood as it is. sensitivity: (T, N) from :meth:`Likelihood.model_sensitivity`, or None
            (Debye-Waller damping only). steps: the whole run's steps (the schedule's length).
        learning_rate: initial step in A.

    Returns:
        (x (T, S, n_atoms, 3), Adam's state, chi2 (T, S) of the likelihood tempered by blur[-1],
        E(x, levels[-1]) (T, S)).
    """
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-2)
    optimizer = optax.adam(schedule)
    if jnp.issubdtype(levels.dtype, jnp.floating):
        levels = levels.astype(x0.dtype)
    blur = jnp.zeros(levels.shape, x0.dtype) if blur is None else jnp.asarray(blur, x0.dtype)

    def loss(x, level, b):
        return jnp.sum(0.5 * likelihood.tempered(b, sensitivity).chi2(x) + energy(x, level))

    def step(carry, inputs):
        x, state = carry
        grad = jax.grad(loss)(x, *inputs)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)  # a particle gone astray stops; it is dropped later
        updates, state = optimizer.update(grad, state, x)
        return (optax.apply_updates(x, updates), state), None

    state = optimizer.init(x0) if state is None else state
    (x, state), _ = jax.lax.scan(step, (x0, state), (levels, blur))
    return x, state, likelihood.tempered(blur[-1], sensitivity).chi2(x), energy(x, levels[-1])


@jax.jit
def inflation_sensitivity(likelihood: Likelihood, x):
    """S (T, N) for the likelihood's noise inflation (:meth:`Likelihood.tempered`): :meth:`Likelihood.model_sensitivity`
    at structures x (T, n, 3) in A, zero for a pattern where it is not finite. A difference pattern started from its
    own reference geometry has no signal there, its fitted fraction is 0 (or 0/0), and so S is about 0 (or zeroed
    here): such patterns are annealed with the Debye-Waller factor alone, as before the inflation. Compiled once
    per shape (eagerly, the first call took 5.6 s against 1.7 s on a CHD pattern)."""
    s = likelihood.model_sensitivity(x)
    return jnp.where(jnp.all(jnp.isfinite(s), axis=-1, keepdims=True), s, 0.0)


def bank_chi2(likelihood: Likelihood, bank, blur, sensitivity=None, *, budget: float = 2.0**26) -> np.ndarray:
    """chi2 (T, B) of every pattern against every structure of ``bank`` (B, n_atoms, 3) in A, the likelihood
    tempered by ``blur`` A (:meth:`Likelihood.tempered`, with ``sensitivity`` (T, N) or None): in chunks of the bank
    that keep each call's largest arrays (pair terms on the model's q grid, the model at the N data points or
    pixels) near ``budget`` elements."""
    t, n = likelihood.n_patterns, bank.shape[-2]
    n_q = likelihood.n_model_q  # the model's own q grid
    per_structure = t * (n_q * n * (n - 1) // 2 + likelihood.y.shape[-1])
    chunk = int(max(1, min(len(bank), budget // per_structure)))
    tempered = likelihood.tempered(blur, sensitivity)
    out = []
    for lo in range(0, len(bank), chunk):
        part = bank[lo : lo + chunk]
        if len(part) < chunk:  # one compiled shape: pad the last chunk with its first structure
            part = jnp.concatenate([part, jnp.broadcast_to(part[:1], (chunk - len(part), *part.shape[1:]))])
        out.append(np.asarray(_chi2_of(tempered, jnp.broadcast_to(part, (t, *part.shape))))[:, : len(bank) - lo])
    return np.concatenate(out, axis=1)


@jax.jit
def _chi2_of(likelihood: Likelihood, x):
    return likelihood.chi2(x)


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def relax(likelihood: Likelihood, energy, x, sigma_min, *, steps: int, learning_rate: float):
    """The optimum of U(x) = chi2(x)/2 + E(x, sigma_min) nearest to x, one structure per pattern: ``steps`` Adam
    steps from x (T, n_atoms, 3) in A at the prior's lowest noise level, cosine-decayed from ``learning_rate`` (A).
    Returns (T, n_atoms, 3) in A."""
    levels = jnp.full((steps,), sigma_min, x.dtype)
    out, _, _, _ = anneal(likelihood, energy, x[:, None], levels, steps=steps, learning_rate=learning_rate)
    return out[:, 0]


def _relaxer(likelihood: Likelihood, energy, sigma_min: float, noise_scale: np.ndarray, steps: int, dtype):
    """``Ensemble.relax`` for these patterns: :func:`relax` on the likelihood with its weights divided by the noise
    scale (the posterior the samples were drawn from), float64 in and out."""

    def fn(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        with jax.enable_x64(dtype == jnp.float64):
            like = likelihood.select(rows).astype(dtype)
            scale = jnp.asarray(noise_scale[rows], dtype)[:, None]
            like = dataclasses.replace(like, w=like.w / scale)
            out = relax(
                like, energy, jnp.asarray(x, dtype), jnp.asarray(sigma_min, dtype), steps=steps, learning_rate=3e-3
            )
        out = np.asarray(out, np.float64)
        return np.where(np.isfinite(out).all(axis=(-2, -1), keepdims=True), out, x)  # a relaxation gone astray

    return fn


def _residuals(likelihood: Likelihood, t, x):
    """Weighted residuals sqrt(w) (y - model) (n_q,) of structure x (n, 3) against pattern t, then those of the
    priors on nuisance parameters (:func:`~xfit.infer._likelihood.prior_residuals`)."""
    from xfit.infer._likelihood import model_and_parameters, prior_residuals

    y, w, i_ref, pixels = likelihood.row(t)
    model, parameters = model_and_parameters(likelihood.spec, x, y, w, i_ref, pixels, likelihood.grid)
    return jnp.concatenate([jnp.sqrt(w) * (y - model), prior_residuals(likelihood.spec, parameters)], axis=-1)


@functools.partial(jax.jit, static_argnames=("floor",))
def laplace(likelihood: Likelihood, energy, x_star, sigma_min, noise_scale, *, floor: float):
    """Each basin's posterior mass and Gaussian shape (Laplace), at the optima of the annealing.

    For the optimum x* of each particle: H = Gauss-Newton Hessian of chi2/2 + Hessian of the prior energy, the
    rigid-body directions projected out, eigenvalues floored at ``floor``. The basin's log mass is the Laplace
    evidence -U(x*) - 1/2 log det' H + 1/2 log det' I(x*) (I: the unit-mass inertia tensor, the volume of the
    rotation orbit).

    Args:
        likelihood: T patterns. energy: the prior's energy function f(x, sigma).
        x_star: optima (T, S, n_atoms, 3) in A. sigma_min: the prior's noise level (A) for E.
        noise_scale: (T,) factor dividing the likelihood weights (1 with sigma given; the re-estimated
            chi2_reduced without). floor: smallest curvature (1/A^2) kept along any internal direction.

    Returns:
        (log mass (T, S), eigenvectors of H (T, S, 3n, 3n), standard deviation along each (T, S, 3n) in A, zero
        along the rigid-body directions).
    """
    n_atoms = x_star.shape[-2]
    dim = 3 * n_atoms

    def one(t, x):
        flat = x.ravel()
        fn = lambda f: _residuals(likelihood, t, f.reshape(n_atoms, 3))  # noqa: E731
        # Residuals and their Jacobian from one linearisation, in whichever mode has fewer passes: reverse (one
        # per residual) for curves, forward (one per coordinate) for images, whose ~1e4 pixel residuals would
        # otherwise each need a backward pass (750 GB for a 96 x 96 image).
        n_residuals = jax.eval_shape(fn, flat).shape[0]
        if n_residuals <= dim:
            residuals, pullback = jax.vjp(fn, flat)
            jac = jax.vmap(pullback)(jnp.eye(n_residuals, dtype=flat.dtype))[0]
        else:
            residuals, tangent = jax.linearize(fn, flat)
            jac = jax.vmap(tangent, out_axes=1)(jnp.eye(dim, dtype=flat.dtype))
        if hasattr(energy, "hessian"):  # a pair energy assembles its own, at a fraction of the cost
            prior_hessian = energy.hessian(x, sigma_min)
        else:
            prior_hessian = jax.hessian(lambda f: energy(f.reshape(n_atoms, 3), sigma_min))(flat)
        hessian = jac.T @ jac / noise_scale[t] + prior_hessian
        hessian = 0.5 * (hessian + hessian.T)
        p = _rigid_projector(x)
        values, vectors = jnp.linalg.eigh(p @ hessian @ p + (jnp.eye(dim, dtype=x.dtype) - p))
        internal = jnp.sum((p @ vectors) ** 2, axis=0) > 0.5  # eigenvectors outside the rigid-body span
        values = jnp.where(internal, jnp.maximum(values, floor), 1.0)
        u = 0.5 * jnp.sum(residuals**2) / noise_scale[t] + energy(x, sigma_min) - _log_orbit_volume(x)
        log_mass = -u - 0.5 * jnp.sum(jnp.where(internal, jnp.log(values), 0.0))
        return log_mass, vectors, jnp.where(internal, 1.0 / jnp.sqrt(values), 0.0)

    t_index = jnp.arange(x_star.shape[0])
    return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, 0))(t_index, x_star)


@functools.partial(jax.jit, static_argnames=("draws", "thin"))
def mala(
    likelihood: Likelihood, energy, x_star, vectors, scale, sigma_min, keys, noise_scale, step_size, *, draws, thin
):
    """Samples of the posterior within each basin: a Metropolis-adjusted Langevin chain (Roberts & Tweedie,
    Bernoulli 2, 341 (1996)) started at the optimum x*, preconditioned by the basin's Laplace covariance
    C = V diag(scale^2) V^T (so each step is scaled to the basin's shape), targeting exp(-U(x)) sqrt(det' I(x));
    the accept/reject step makes the samples exact for the basin whatever the Gaussian approximation misses.
    ``draws`` states are kept, one every ``thin`` steps, after as many steps of step-size adaptation.

    Args:
        likelihood: T patterns. energy: the prior's energy function f(x, sigma).
        x_star: optima (T, S, n_atoms, 3) in A; vectors (T, S, 3n, 3n), scale (T, S, 3n): from :func:`laplace`.
        sigma_min: the prior's noise level (A). keys: PRNG keys (T, S), one per pattern and basin (split outside:
            see ``Posterior.run``). noise_scale: (T,) as for :func:`laplace`. step_size: the first MALA step in
            whitened units (about 1.65 d^(-1/6)).

    Returns:
        (samples (T, S, draws, n, 3), chi2 (T, S, draws), prior energy (T, S, draws), acceptance rate (T, S)).
    """
    n_atoms = x_star.shape[-2]
    dim = 3 * n_atoms

    def one(t, x, vectors, scale, k):
        def u(flat):  # -log posterior density including the orbit volume
            xs = flat.reshape(n_atoms, 3)
            r = _residuals(likelihood, t, xs)
            return 0.5 * jnp.sum(r * r) / noise_scale[t] + energy(xs, sigma_min) - _log_orbit_volume(xs)

        internal = scale > 0
        to_white = lambda v: (v @ vectors) / jnp.where(internal, scale, 1.0) * internal  # noqa: E731
        from_white = lambda z: (z * scale) @ vectors.T  # noqa: E731
        u_and_grad = jax.value_and_grad(u)

        def mean(flat, grad, eps):  # x - eps^2/2 C grad U
            return flat - 0.5 * eps**2 * from_white(scale * (grad @ vectors))

        burn = draws * thin  # steps of step-size adaptation before any sample is kept

        def step(state, inputs):
            flat, u_x, g_x, log_eps, accepted = state
            k_step, index = inputs
            eps = jnp.exp(log_eps)
            k1, k2 = jax.random.split(k_step)
            z = jax.random.normal(k1, (dim,), x.dtype) * internal
            proposal = mean(flat, g_x, eps) + eps * from_white(z)
            u_y, g_y = u_and_grad(proposal)
            back = to_white(flat - mean(proposal, g_y, eps)) / eps
            log_ratio = -u_y + u_x - 0.5 * jnp.sum(back**2) + 0.5 * jnp.sum(z**2)
            log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
            accept = jnp.log(jax.random.uniform(k2, (), x.dtype)) < log_ratio
            # Robbins-Monro on log step during burn-in, towards MALA's optimal acceptance of 0.574 (Roberts &
            # Rosenthal, J. R. Stat. Soc. B 60, 255 (1998)): the Laplace scale is only a first guess of the basin.
            rate = jnp.minimum(1.0, jnp.exp(jnp.minimum(log_ratio, 0.0)))
            log_eps = jnp.where(index < burn, log_eps + (rate - 0.574) / jnp.sqrt(1.0 + index), log_eps)
            new = (
                jnp.where(accept, proposal, flat),
                jnp.where(accept, u_y, u_x),
                jnp.where(accept, g_y, g_x),
                log_eps,
                accepted + jnp.where(index >= burn, accept, False),
            )
            return new, new[0]

        flat = x.ravel()
        u0, g0 = u_and_grad(flat)
        start = (flat, u0, g0, jnp.log(step_size), jnp.zeros((), x.dtype))
        inputs = (jax.random.split(k, burn + draws * thin), jnp.arange(burn + draws * thin, dtype=x.dtype))
        (_, _, _, _, accepted), chain = jax.lax.scan(step, start, inputs)
        samples = chain[burn:][thin - 1 :: thin].reshape(draws, n_atoms, 3)
        res = jax.vmap(lambda s: _residuals(likelihood, t, s))(samples)
        return samples, jnp.sum(res * res, axis=-1), energy(samples, sigma_min), accepted / (draws * thin)

    t_index = jnp.arange(x_star.shape[0])
    per_pattern = jax.vmap(one, in_axes=(None, 0, 0, 0, 0))
    return jax.vmap(per_pattern, in_axes=(0, 0, 0, 0, 0))(t_index, x_star, vectors, scale, keys)


def _same_optimum_groups(x: np.ndarray, heavy: np.ndarray, tolerance: float, skeleton=None) -> np.ndarray:
    """Labels (S,) grouping optima x (S, n, 3) within ``tolerance`` A heavy-atom RMSD (reflection allowed; under the
    skeleton automorphism (skeleton (K, n), ``MoleculeGraph.skeleton_automorphisms``; None: as labelled) that brings
    them closest). One structure reached under both of CHD's labellings (the ring read either way, which neither the
    pattern nor the prior can tell apart) is one optimum: counted twice, its mass would count twice."""
    from xfit.infer._result import skeleton_labels

    skeleton = np.arange(x.shape[1])[None] if skeleton is None else np.asarray(skeleton)
    labels = np.full(len(x), -1)
    for k in range(len(x)):
        if labels[k] >= 0:
            continue
        rest = np.flatnonzero(labels < 0)
        labels[rest[skeleton_labels(x[rest], x[k], heavy, skeleton)[1] <= tolerance]] = k
    return labels


def _noise_scale(problem: Problem, chi2: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Per pattern (T,), the factor dividing the likelihood weights: 1 with sigma given; without, the best
    particle's chi2_reduced (the noise level re-estimated from the residual), floored at 1e-3."""
    best = np.where(finite, chi2, np.inf).min(axis=1)
    scale = np.ones(len(chi2))
    for k, has_sigma in enumerate(problem.likelihood.has_sigma):
        if not has_sigma and np.isfinite(best[k]):
            scale[k] = max(best[k] / problem.likelihood.dof, 1e-3)
    return scale


def _select_basins(
    cost: np.ndarray, optima: np.ndarray, heavy: np.ndarray, tolerance: float, k: int, skeleton=None
) -> np.ndarray:
    """Indices (T, min(k, S)) of the particles whose basins get a chain, per pattern: the distinct optima
    (``tolerance`` A apart, heavy-atom RMSD under the closest skeleton automorphism: :func:`_same_optimum_groups`)
    of lowest ``cost`` (T, S) first, then, if fewer than k are distinct, the lowest-cost rest (their shared basins
    are counted once by ``_basin_weights``)."""
    k = min(k, cost.shape[1])
    picked = np.empty((len(cost), k), np.int64)
    for t in range(len(cost)):
        order = np.argsort(np.where(np.isnan(cost[t]), np.inf, cost[t]), kind="stable")
        labels = _same_optimum_groups(optima[t][order], heavy, tolerance, skeleton)
        first = labels == np.arange(len(order))  # the lowest-cost member of each group
        ranked = np.concatenate([order[first], order[~first]])
        picked[t] = ranked[:k]
    return picked


def _basin_counts(optima: np.ndarray, heavy: np.ndarray, tolerance: float, skeleton=None) -> np.ndarray:
    """(T, S): how many particles converged to each particle's optimum (within ``tolerance`` A, under either
    labelling the skeleton automorphisms allow: :func:`_same_optimum_groups`) for optima (T, S, n, 3). Each of them
    estimated that basin's whole mass, so each keeps 1/count of it."""
    out = np.empty(optima.shape[:2])
    for k in range(len(optima)):
        groups = _same_optimum_groups(optima[k], heavy, tolerance, skeleton)
        out[k] = np.bincount(groups, minlength=len(groups))[groups]
    return out


def _symmetry_copies(x: np.ndarray, heavy: np.ndarray, skeleton: np.ndarray, tolerance: float) -> np.ndarray:
    """How many distinct basins (S,) each optimum of x (S, n, 3) stands for: the size of its orbit under the
    relabellings that leave pattern and prior unchanged (skeleton (K, n), ``MoleculeGraph.skeleton_automorphisms``)
    and reflection, 2K / |stabiliser|, the stabiliser being the (relabelling, proper or improper rotation) pairs
    that bring the optimum within ``tolerance`` A heavy-atom RMSD of itself. The posterior over labelled
    coordinates holds every copy, each of the same Laplace mass, and the summary counts them as one structure (it
    superposes with reflection and relabels); a structure with no symmetry (a hot, twisted CHD: 4 copies) so holds
    twice the mass of one that is its own ring reversal (CHD's C2 minimum: 2), as the symmetry number does in a
    partition function."""
    a = x[:, heavy] - x[:, heavy].mean(axis=1, keepdims=True)
    norm = np.sum(a * a, axis=(1, 2))
    n = int(heavy.sum())
    fixed = np.zeros(len(x), np.int64)
    for perm in skeleton:
        b = x[:, perm][:, heavy]
        b = b - b.mean(axis=1, keepdims=True)
        u, sv, vt = np.linalg.svd(np.einsum("sni,snj->sij", b, a))
        d = np.sign(np.linalg.det(u @ vt))
        for trace in (sv[:, 0] + sv[:, 1] + d * sv[:, 2], sv[:, 0] + sv[:, 1] - d * sv[:, 2]):  # proper, improper
            msd = np.clip(norm + np.sum(b * b, axis=(1, 2)) - 2.0 * trace, 0.0, None) / n
            fixed += np.sqrt(msd) <= tolerance
    return 2.0 * len(skeleton) / np.maximum(fixed, 1)


def _basin_weights(log_mass: np.ndarray, counts: np.ndarray, ok: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Normalised weights (T, S) of the particles' basins: each basin's mass (``log_mass`` (T, S), as each of its
    particles estimated it) to the power ``beta``, shared among the ``counts`` (T, S) particles that found it;
    particles not ``ok`` at zero."""
    log_w = np.where(ok, beta * log_mass - np.log(counts), -np.inf)
    weights = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def _terminal_groups(x: np.ndarray, graph, stretch: float = 1.3) -> list[tuple[int, int, np.ndarray]]:
    """Terminal groups of one structure x (n_atoms, 3) in A: (atom, its one heavy neighbour, its hydrogens (k,))
    for every heavy atom with two or more hydrogens and exactly one intact heavy bond (a bond of ``graph`` no longer
    than ``stretch`` x its reference length), e.g. a methyl, or a CH2 left at the end of a chain when a ring opens."""
    bonds = graph.bonds
    ref = np.linalg.norm(graph.positions[bonds[:, 0]] - graph.positions[bonds[:, 1]], axis=-1)
    intact = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=-1) <= stretch * ref
    heavy = graph.numbers > 1
    heavy_bond = heavy[bonds[:, 0]] & heavy[bonds[:, 1]] & intact
    partners = np.bincount(bonds[heavy_bond].ravel(), minlength=len(heavy))
    groups = []
    for a in np.flatnonzero(heavy & (partners == 1)):
        at = (bonds == a).any(axis=1)
        other = np.where(bonds[:, 0] == a, bonds[:, 1], bonds[:, 0])
        hydrogens = other[at & ~heavy[other]]
        if len(hydrogens) >= 2:
            groups.append((int(a), int(other[at & heavy_bond][0]), hydrogens))
    return groups


def _twisted(x: np.ndarray, groups, which) -> np.ndarray:
    """x (n_atoms, 3) with the hydrogens of ``groups[g]`` for g in ``which`` turned about the bond to their heavy
    neighbour by half their symmetry period (90 degrees for CH2, 60 for CH3): the other orientation class of the
    group, which a descent does not reach (each hydrogen moves ~1.5 A across a barrier of the prior)."""
    y = x.copy()
    for g in which:
        a, b, hydrogens = groups[g]
        axis = (x[a] - x[b]) / np.linalg.norm(x[a] - x[b])
        angle = np.pi / len(hydrogens)
        v = x[hydrogens] - x[a]
        c, s = np.cos(angle), np.sin(angle)
        y[hydrogens] = x[a] + v * c + np.cross(axis, v) * s + np.outer(v @ axis, axis) * (1 - c)
    return y


def _twist_moves(x: np.ndarray, graph, n_moves: int) -> tuple[np.ndarray, np.ndarray]:
    """Twist moves for one pattern's particles x (S, n_atoms, 3), best first: each particle with terminal groups
    copied with every non-empty subset of its first three groups twisted (:func:`_twisted`), up to ``n_moves``
    copies. Returns (copies (m, n_atoms, 3), the index in x of each copy's source (m,))."""
    copies, sources = [], []
    for k in range(len(x)):
        if len(copies) >= n_moves:
            break
        if not np.all(np.isfinite(x[k])):
            continue
        groups = _terminal_groups(x[k], graph)[:3]
        for mask in range(1, 2 ** len(groups)):
            if len(copies) < n_moves:
                copies.append(_twisted(x[k], groups, [g for g in range(len(groups)) if mask >> g & 1]))
                sources.append(k)
    return np.asarray(copies, np.float64).reshape(-1, *x.shape[1:]), np.asarray(sources, np.int64)


def _twist_survivors(x: np.ndarray, kept: np.ndarray, graph, n_moves: int):
    """The prune step's twist moves: for each pattern of particles x (T, S, n_atoms, 3), its survivors ``kept``
    (T, K: indices into S, best first) with the last (at most n_moves, and at most K // 4) replaced by twisted
    copies of the best (:func:`_twist_moves`). Returns (kept (T, K) with each copy's slot holding its source's index,
    positions (T, K, n_atoms, 3) of the copies, which slots hold a copy (T, K))."""
    kept = kept.copy()
    moved = np.zeros((*kept.shape, *x.shape[2:]))
    is_moved = np.zeros(kept.shape, bool)
    n_keep = kept.shape[1]
    for row in range(len(kept)):
        copies, sources = _twist_moves(x[row, kept[row]], graph, min(n_moves, n_keep // 4))
        if len(copies):
            slots = slice(n_keep - len(copies), n_keep)
            kept[row, slots], moved[row, slots], is_moved[row, slots] = kept[row, sources], copies, True
    return kept, moved, is_moved


@dataclasses.dataclass(frozen=True)
class Posterior:
    """Posterior sampling with a learned conformer prior (see the module notes).

    Attributes:
        prior: the conformer prior (``energy_fn``, ``sample``, ``sigma_min``).
        n_prior: particles drawn from the prior, per pattern, by ``prior_steps`` predictor-corrector levels (seeds
            only: the annealed descent refines them, so fewer levels than an unconditional sample needs).
        n_bank, bank_seeds: a bank of n_bank prior draws shared by all patterns (from the run's key alone: the same
            for every batch and chunk), of which each pattern takes as seeds the bank_seeds whose chi2 (tempered
            and inflated as at the first level) is lowest (0: none). They matter most for precise electron data:
            on the 64 opened shared CHD frames as sM, the optimum nearest the truth was missed on 67 % of frames
            without them and 44 % with them (``benchmarks/diagnostics.py basins``).
        n_local: the input geometry and n_local - 1 random perturbations of it (``perturbation`` A).
        extra_starts: further seeds (n_extra, n_atoms, 3) or (T, n_extra, n_atoms, 3) in A.
        steps: annealing steps; learning_rate: initial Adam step (A); sigma_start: prior noise level (A) at the
            first step. tempering: the likelihood is tempered alongside the prior (:meth:`Likelihood.tempered`),
            blur = tempering x sqrt(sigma^2 - sigma_min^2) at prior level sigma: each atom smeared as the prior's
            extra noise smears it, so high-q data, whose oscillations trap particles, weigh in as sigma falls
            (0: the likelihood at full sharpness throughout). inflation: at the same time the noise variance of
            each point is inflated by the model's own spread under that smearing, blur^2 x (d model / d x)^2 summed
            over coordinates at the input geometry (:meth:`Likelihood.tempered`), so that the early levels see the
            same landscape however precise the data (see the module notes). polish: further steps, as a fraction
            of ``steps``, at the prior's lowest level with the likelihood untempered, after the levels have fallen.
        table_levels: noise levels at which the annealing reads the prior from per-pair tables (``energy_table``,
            where the prior has one; 0: the network at every step's own level). prune_at,
            prune_fraction: after that fraction of the steps, each pattern goes on with that fraction of its
            particles, those of lowest -log posterior, one per distinct structure (``prune_tolerance`` A
            heavy-atom RMSD apart, either labelling) first (0: no pruning).
        twist_moves: at the prune step, up to this many of the survivors ranked last (at most a quarter of them) are
            replaced by copies of the best ones with their terminal groups twisted by half a symmetry period about
            the bond to the chain (:func:`_twisted`: 90 degrees for a CH2, 60 for a CH3; every subset of a
            particle's groups), Adam's moments taken from the source: each hydrogen of such a turn moves ~1.5 A
            across a barrier of the prior that no descent crosses. The end CH2 groups of an opened ring are where
            retrieval went wrong on opened CHD frames as UED sM (0: no moves).
        n_basins: how many distinct optima, heaviest Laplace mass first, get a MALA chain and enter the summary
            (the rest are dropped: their mass is exponentially smaller).
        draws: posterior samples kept per basin, one every ``thin`` MALA steps of ``step_size`` (whitened units).
        curvature_floor: smallest curvature (1/A^2) of the Laplace approximation along any internal direction (a
            standard deviation of at most 1/sqrt(floor) A).
        basin_tempering: beta in (0, 1]: the error bars (``Uncertainty.basins``) are those of the mixture of every kept
            basin's Laplace Gaussian, all modes, each weighted by its Laplace mass to the power beta (1: the masses as
            they are). The structure and the ranking of modes keep the untempered masses. Why: the prior's energy
            separates basins more sharply than its own draws populate them. On CHD structures drawn from the shipped
            prior itself (exact MALA draws, X-ray at 0.1 % noise: ``benchmarks/diagnostics.py calibration``), the
            truth's basin had a log mass 3.5 below the reported one's (median), and the error bars of the chosen mode
            alone covered the true C1-C6 within 1/2/3 sigma on 36/56/70 %; with every basin at beta 0.35, 64/83/92 %
            (two sets of 64 draws: 64/83-86/92-95 %), beta 0.25 69/84-86/92-95 %. Chosen on those draws, never on the
            shared frames.
        duplicate_tolerance: optima closer than this (A, heavy-atom RMSD, reflection and the molecule's graph
            symmetry allowed) count as one basin.
        mode_radius: optima within this (A, heavy-atom RMSD, the same allowed) of a mode's best one belong to that
            mode.
        relax_steps: Adam steps (:func:`relax`, first step 3e-3 A) taking the chosen mode's mean (heavy atoms; the
            hydrogens of its heaviest basin) to the nearest optimum of the posterior, the reported structure (0: the
            mode's mean itself).
        dtype: float32 (fast) or float64. progress: unused (one compiled call), kept for a uniform interface.
    """

    prior: object
    n_prior: int = 96
    prior_steps: int = 100
    n_bank: int = 2048
    bank_seeds: int = 48
    n_local: int = 16
    perturbation: float = 0.1
    extra_starts: np.ndarray | None = None
    steps: int = 500
    table_levels: int = 25
    prune_at: float = 0.4
    prune_fraction: float = 0.5
    prune_tolerance: float = 0.05
    n_basins: int = 12
    learning_rate: float = 0.02
    sigma_start: float = 0.3
    tempering: float = 1.0
    inflation: bool = True
    polish: float = 0.2
    draws: int = 8
    thin: int = 4
    step_size: float = 0.9
    curvature_floor: float = 4.0
    basin_tempering: float = 0.35
    duplicate_tolerance: float = 0.02
    mode_radius: float = 0.15
    relax_steps: int = 300
    twist_moves: int = 12
    dtype: object = jnp.float32
    progress: bool = False
    name: str = "posterior"

    def __post_init__(self):
        if not 0.0 < self.basin_tempering <= 1.0:
            raise ValueError(f"basin_tempering must lie in (0, 1], got {self.basin_tempering}")

    def particles(self, problem: Problem, key: jax.Array, sensitivity: np.ndarray | None = None) -> np.ndarray:
        """Seeds (T, S, n_atoms, 3) in A: prior draws, the bank's best, the input geometry and its perturbations,
        extra seeds. Pattern t's draws come from its own key (:func:`pattern_keys`): independent of the batch it is
        in. sensitivity: the likelihood's inflation (:meth:`inflation_of`), computed here when not given."""
        t, n = problem.n_patterns, len(problem.molecule)
        k_bank, key = jax.random.split(key)
        keys = jax.vmap(jax.random.split)(pattern_keys(problem, key))
        k_prior, k_local = keys[:, 0], keys[:, 1]
        parts = []
        if self.n_prior:
            # One call per pattern (one compiled shape, reused): a batched draw would tie each pattern's samples to
            # the batch size.
            # From the prior's per-pair tables where it has them (~12x cheaper than its network, the same density).
            tables = {"tables": True} if hasattr(self.prior, "energy_table") else {}
            drawn = [
                self.prior.sample(k, problem.molecule, self.n_prior, steps=self.prior_steps, **tables) for k in k_prior
            ]
            parts.append(np.asarray(drawn, np.float64).reshape(t, self.n_prior, n, 3))
        if self.n_bank and self.bank_seeds:
            if sensitivity is None:
                sensitivity = self.inflation_of(problem)
            parts.append(self._bank_seeds(problem, k_bank, sensitivity))
        start = np.asarray(problem.atoms.positions, np.float64)
        local = np.broadcast_to(start, (t, max(self.n_local, 1), n, 3)).copy()
        shape = local.shape[1:]
        noise = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (shape[0] - 1, *shape[1:])))(k_local), np.float64)
        local[:, 1:] += self.perturbation * noise
        parts.append(local)
        if self.extra_starts is not None:
            extra = np.asarray(self.extra_starts, np.float64)
            parts.append(np.broadcast_to(extra, (t, *extra.shape[-3:])) if extra.ndim == 3 else extra)
        # Every particle centred on the input geometry's centroid: the likelihood and prior do not care, and Adam's
        # per-coordinate steps behave the same for all.
        x0 = np.concatenate(parts, axis=1)
        return x0 - x0.mean(axis=-2, keepdims=True) + start.mean(axis=0)

    def blur(self, sigmas) -> np.ndarray:
        """The likelihood's smearing (A) at prior noise levels ``sigmas`` (A): tempering x sqrt(sigma^2 -
        sigma_min^2)."""
        sigma_min = float(self.prior.sigma_min)
        return self.tempering * np.sqrt(np.maximum(np.asarray(sigmas, np.float64) ** 2 - sigma_min**2, 0.0))

    def inflation_of(self, problem: Problem) -> np.ndarray | None:
        """The model sensitivity S (T, N) that inflates the tempered likelihood's noise (:func:`inflation_sensitivity`
        at the input geometry, in ``dtype``), or None without inflation."""
        if not (self.inflation and self.tempering):
            return None
        with jax.enable_x64(self.dtype == jnp.float64):
            like = problem.likelihood.astype(self.dtype)
            start = jnp.asarray(problem.atoms.positions, self.dtype)
            return np.asarray(inflation_sensitivity(like, jnp.broadcast_to(start, (len(like.y), *start.shape))))

    def _bank_seeds(self, problem: Problem, key: jax.Array, sensitivity: np.ndarray | None) -> np.ndarray:
        """(T, bank_seeds, n_atoms, 3) in A: for each pattern, the prior draws of one shared bank of ``n_bank``
        (drawn from ``key`` alone, so the same whatever the batch) that its likelihood ranks best, tempered and
        inflated (``sensitivity``) as at the annealing's first level."""
        if hasattr(self.prior, "bank"):
            bank = self.prior.bank(key, problem.molecule, self.n_bank, steps=self.prior_steps)
        else:
            bank = self.prior.sample(key, problem.molecule, self.n_bank, steps=self.prior_steps)
        like = problem.likelihood.astype(jnp.float32)
        blur = jnp.float32(self.blur(max(self.sigma_start, self.prior.sigma_min)))
        sensitivity = None if sensitivity is None else jnp.asarray(sensitivity, jnp.float32)
        chi2 = bank_chi2(like, jnp.asarray(bank, jnp.float32), blur, sensitivity)
        best = np.argsort(np.where(np.isfinite(chi2), chi2, np.inf), axis=1, kind="stable")[:, : self.bank_seeds]
        return np.asarray(bank, np.float64)[best]

    def _sample_weights(self, problem: Problem, log_mass, optima, ok):
        """Normalised weights of the samples (T, S, draws), each draw an equal share of its basin's Laplace mass
        (basins found by several particles counted once; dropped particles at zero), the effective sample size per
        pattern (T,), and the basins' weights in the error bars (T, S): their masses to the power
        ``basin_tempering``, shared the same way."""
        molecule = problem.molecule
        counts = _basin_counts(optima, molecule.heavy, self.duplicate_tolerance, molecule.skeleton_automorphisms)
        basins = _basin_weights(log_mass, counts, ok)
        weights = np.repeat(basins[..., None] / self.draws, self.draws, axis=-1)
        ess = 1.0 / np.sum(weights.reshape(len(weights), -1) ** 2, axis=1)
        return weights, ess, _basin_weights(log_mass, counts, ok, self.basin_tempering)

    def run(self, problem: Problem, key: jax.Array) -> Ensemble:
        k_seed, k_draw = jax.random.split(key)
        inflation = self.inflation_of(problem)
        x0 = self.particles(problem, k_seed, inflation)
        # One key per pattern and particle, split here rather than inside the compiled chain: with the split inside,
        # XLA's CPU runtime (jaxlib 0.10) hung for good on 38 CHD patterns x 80 particles (every thread idle).
        k_draw = jax.vmap(lambda k: jax.random.split(k, x0.shape[1]))(pattern_keys(problem, k_draw))
        energy = as_energy(self.prior.energy_fn(problem.molecule))
        sigma_min = float(self.prior.sigma_min)
        # The levels fall over ``steps``; then polish x steps more hold the lowest level with the likelihood
        # untempered, so that every particle ends at an optimum of U itself (the Laplace stage assumes one): with
        # precise data the inflated likelihood is still far from full strength at the next-to-last level.
        n_fall, n_polish = self.steps, round(self.polish * self.steps)
        n_steps = n_fall + n_polish
        sigma_top = max(self.sigma_start, sigma_min)
        sigmas = np.concatenate([np.geomspace(sigma_top, sigma_min, n_fall), np.full(n_polish, sigma_min)])
        anneal_energy, levels = energy, sigmas
        blur = self.blur(sigmas)
        if self.table_levels and hasattr(self.prior, "energy_table"):
            # The annealing reads the prior from per-pair tables at table_levels noise levels (a staircase
            # schedule), ~15x cheaper than the network; the local stage uses the network itself.
            n_levels = min(self.table_levels, n_fall)
            anneal_energy = self.prior.energy_table(problem.molecule, np.geomspace(sigma_top, sigma_min, n_levels))
            fall = np.arange(n_fall) * n_levels // n_fall
            levels = np.concatenate([fall, np.full(n_polish, n_levels - 1)]).astype(np.int32)
        with jax.enable_x64(self.dtype == jnp.float64):
            like = problem.likelihood
            pixels = [] if like.pixels is None else [like.pixels]
            x, y, w, i_ref, *pixels = shard([x0, like.y, like.w, like.i_ref, *pixels], self.dtype)
            like = dataclasses.replace(like, y=y, w=w, i_ref=i_ref, pixels=pixels[0] if pixels else None)
            n_particles, levels, blur = x0.shape[1], jnp.asarray(levels), jnp.asarray(blur, self.dtype)
            kept = np.broadcast_to(np.arange(n_particles), x.shape[:2])
            sensitivity = None if inflation is None else shard([inflation], self.dtype)[0]
            run = functools.partial(
                anneal,
                like,
                anneal_energy,
                sensitivity=sensitivity,
                steps=n_steps,
                learning_rate=self.learning_rate,
            )
            if self.prune_fraction and self.prune_at and n_particles > 2 * self.n_basins:
                # Successive halving, keeping variety: after prune_at of the steps each pattern goes on with its
                # lowest-U particles, one per distinct structure first (a second mode a few units of U above the
                # first must survive), Adam's moments and step count carried over.
                at = max(1, min(int(self.prune_at * self.steps), n_steps - 1))
                n_keep = max(round(self.prune_fraction * n_particles), self.n_basins)
                x, state, chi2, prior_energy = run(x, levels[:at], blur=blur[:at])
                u = 0.5 * np.asarray(chi2, np.float64) + np.asarray(prior_energy, np.float64)
                heavy = problem.molecule.heavy
                x_np = np.asarray(x, np.float64)
                kept = _select_basins(
                    u, x_np, heavy, self.prune_tolerance, n_keep, problem.molecule.skeleton_automorphisms
                )
                kept, moved, is_moved = _twist_survivors(x_np, kept, problem.molecule, self.twist_moves)
                rows, index = jnp.arange(len(kept))[:, None], jnp.asarray(kept)
                # Adam's state follows each slot's index: a twisted copy goes on with its source's moments.
                x, state = jax.tree.map(lambda a: a[rows, index] if a.ndim == x.ndim else a, (x, state))
                if is_moved.any():
                    x = jnp.where(jnp.asarray(is_moved)[..., None, None], jnp.asarray(moved, x.dtype), x)
                x_star, _, chi2, prior_energy = run(x, levels[at:], state, blur[at:])
            else:
                x_star, _, chi2, prior_energy = run(x, levels, blur=blur)
            t = problem.n_patterns
            x_star, chi2 = np.asarray(x_star, np.float64)[:t], np.asarray(chi2, np.float64)[:t]
            prior_energy, kept = np.asarray(prior_energy, np.float64)[:t], np.asarray(kept)[:t]
            finite = np.isfinite(chi2) & np.isfinite(prior_energy) & np.all(np.isfinite(x_star), axis=(-2, -1))
            scale = _noise_scale(problem, chi2, finite)
            seeds = np.take_along_axis(x0[:t], kept[..., None, None], axis=1)
            k_draw = k_draw[:t][np.arange(t)[:, None], kept]
            safe = np.where(finite[..., None, None], x_star, seeds)
            local = like.select(np.arange(t)) if len(like.y) > t else like
            sigma_j, scale_j = jnp.asarray(sigma_min, self.dtype), jnp.asarray(scale, self.dtype)
            log_mass, vectors, spread = laplace(
                local, energy, jnp.asarray(safe, self.dtype), sigma_j, scale_j, floor=self.curvature_floor
            )
            # Each optimum stands for every copy of itself under relabelling and reflection (one structure to the
            # summary): its mass is theirs together.
            molecule = problem.molecule
            copies = np.stack(
                [
                    _symmetry_copies(o, molecule.heavy, molecule.skeleton_automorphisms, self.duplicate_tolerance)
                    for o in safe
                ]
            )
            log_mass = np.where(finite, np.asarray(log_mass, np.float64) + np.log(copies), -np.inf)
            # Only the heaviest basins get a chain: one exp(-10) lighter than the best holds nothing a summary sees,
            # and the chains would cost as much as the annealing otherwise.
            keep = _select_basins(
                -log_mass,
                safe,
                problem.molecule.heavy,
                self.duplicate_tolerance,
                self.n_basins,
                problem.molecule.skeleton_automorphisms,
            )
            rows = np.arange(t)[:, None]
            unselected = np.ones(finite.shape, bool)
            unselected[rows, keep] = False
            lost = int(np.sum(~finite & unselected))  # non-finite after annealing and not among the kept
            safe, finite, log_mass = safe[rows, keep], finite[rows, keep], log_mass[rows, keep]
            vectors, spread = np.asarray(vectors, np.float64)[rows, keep], np.asarray(spread, np.float64)[rows, keep]
            draws, chi2_d, prior_d, acceptance = mala(
                local,
                energy,
                jnp.asarray(safe, self.dtype),
                jnp.asarray(vectors, self.dtype),
                jnp.asarray(spread, self.dtype),
                sigma_j,
                k_draw[rows, keep],
                scale_j,
                jnp.asarray(self.step_size, self.dtype),
                draws=self.draws,
                thin=self.thin,
            )
        draws, chi2_d, prior_d, acceptance = (np.asarray(a, np.float64) for a in (draws, chi2_d, prior_d, acceptance))
        covariance = (vectors * spread[..., None, :] ** 2) @ np.swapaxes(vectors, -1, -2)  # H^-1, internal directions
        ok = finite & np.isfinite(log_mass) & np.all(np.isfinite(draws), axis=(-3, -2, -1))
        weights, ess, error_weights = self._sample_weights(problem, log_mass, safe, ok)
        # A dropped particle keeps finite placeholders (its seed) at zero weight.
        draws = np.where(ok[..., None, None, None], draws, safe[:, :, None])
        chi2_d, prior_d = (np.where(ok[..., None], a, np.inf) for a in (chi2_d, prior_d))
        s = safe.shape[1]
        flat = lambda a: a.reshape(t, s * self.draws, *a.shape[3:])  # noqa: E731
        return Ensemble(
            positions=flat(draws),
            chi2_data=flat(chi2_d),
            penalty=2.0 * flat(prior_d),
            kind="samples",
            weights=flat(weights),
            optima=safe,
            optima_covariance=np.where(ok[..., None, None], covariance, 0.0),
            error_weights=error_weights,
            particle=np.broadcast_to(np.repeat(np.arange(s), self.draws), (t, s * self.draws)),
            info={
                "method": "posterior",
                "particles": n_particles,
                "basins": s,
                "draws": self.draws,
                "steps": self.steps,
                "dropped": lost + int(np.sum(~ok)),
                "effective_sample_size": float(np.median(ess)),
                "acceptance": float(np.median(acceptance[ok])) if ok.any() else 0.0,
                "noise_scale": float(np.median(scale)),
                "mode_radius": self.mode_radius,
                "relax_steps": self.relax_steps,
            },
            relax=_relaxer(problem.likelihood, energy, sigma_min, scale, self.relax_steps, self.dtype)
            if self.relax_steps
            else None,
        )
