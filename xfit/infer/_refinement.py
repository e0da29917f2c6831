"""The refinement strategy: many starts refined together by gradient descent on chi^2 + restraints.

The point-estimate fallback for molecules without a learned prior. The objective for pattern t and a structure x
is chi2_t(x) (the likelihood, nuisance parameters profiled out) plus the restraint chi^2 (``_restraints``) at a
weight that is 1 for the first half of the run, to guide the search into the right basin, then decays to
``final_restraint_weight`` so that the data, not the reference geometry, set the final structure. A time series can
be coupled by a smoothness term lambda sum_t sum_{i<j} (d_ij(x_t) - d_ij(x_{t+1}))^2 (distances, so rigid motions
cost nothing). Adam with a cosine-decayed step, all starts of all patterns in one jit-compiled ``lax.scan``.
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
from xfit.infer._restraints import Restraints, restraint_chi2
from xfit.infer._starts import random_starts

__all__ = ["Refinement", "refine", "restraint_weight"]


def _pair_distances(x):
    n = x.shape[-2]
    i, j = np.triu_indices(n, k=1)
    return jnp.sqrt(jnp.sum((x[..., i, :] - x[..., j, :]) ** 2, axis=-1) + 1e-12)


def restraint_weight(step, steps: int, final: float):
    """Restraint weight at ``step``: 1 for the first half of the run (the restraints guide the search into the right
    basin), then a cosine decay to ``final`` (the data set the final geometry: restraints to a ground-state
    geometry bias structures far from it)."""
    progress = jnp.clip((step - steps / 2) / (steps / 2), 0.0, 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def refine(
    likelihood: Likelihood,
    restraints: Restraints,
    x0,
    smoothness,
    final_restraint_weight,
    *,
    steps: int,
    learning_rate: float,
):
    """Refine many starts against many patterns at once with Adam and a cosine-decaying step.

    Args:
        likelihood: T patterns (arrays in the working dtype).
        restraints: distance restraints (arrays).
        x0: starts (T, S, n_atoms, 3) in A: S starts for each of T patterns.
        smoothness: weight (1/A^2, chi^2 units) of the coupling between neighbouring patterns; 0 decouples them.
        final_restraint_weight: restraint weight at the end of the run (see :func:`restraint_weight`).
        steps: optimisation steps. learning_rate: initial step in A (Adam normalises the gradient).

    Returns:
        (x (T, S, n_atoms, 3), chi2_data (T, S), chi2_restraints (T, S)); chi2_restraints at unit weight.
    """

    def loss(x, weight):
        total = jnp.sum(likelihood.chi2(x) + weight * restraint_chi2(x, restraints))
        if x.shape[0] > 1:
            d = _pair_distances(x)
            total = total + smoothness * jnp.sum((d[1:] - d[:-1]) ** 2)
        return total

    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3)
    optimizer = optax.adam(schedule)

    def step(carry, index):
        x, state = carry
        grad = jax.grad(loss)(x, restraint_weight(index, steps, final_restraint_weight))
        updates, state = optimizer.update(grad, state, x)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.lax.scan(step, (x0, optimizer.init(x0)), jnp.arange(steps))
    return x, likelihood.chi2(x), restraint_chi2(x, restraints)


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Multi-start gradient refinement with restraints (the point-estimate strategy).

    Attributes:
        restraints: the restraint set (``covalent_restraints`` or ``Restraints.none()``).
        n_starts: starts per pattern: the input geometry and n_starts - 1 random perturbations of it.
        perturbation: standard deviation (A) of the random displacements of the starts.
        free_pairs: pairs whose bond may break: every second start pulls them apart.
        extra_starts: further starts (T, E, n_atoms, 3) in A for each pattern (a proposal network's, the user's).
        steps, learning_rate: Adam iterations and initial step (A), cosine-decayed.
        smoothness: coupling (chi^2 per A^2) of interatomic distances between neighbouring patterns.
        final_restraint_weight: restraint weight at the end of the run, in [0, 1].
        dtype: float32 (fast) or float64 (needs jax_enable_x64).
        chunk: patterns per compiled call (None: all at once). progress: a tqdm bar over chunks.
    """

    restraints: Restraints
    n_starts: int = 32
    perturbation: float = 0.15
    free_pairs: tuple[tuple[int, int], ...] = ()
    extra_starts: np.ndarray | None = None
    steps: int = 1000
    learning_rate: float = 0.02
    smoothness: float = 0.0
    final_restraint_weight: float = 0.05
    dtype: object = jnp.float32
    chunk: int | None = None
    progress: bool = False
    name: str = "refinement"

    def starts(self, problem: Problem, key: jax.Array) -> np.ndarray:
        """All starts (T, S + E, n_atoms, 3) in A; pattern t's random starts come from its own key
        (:func:`pattern_keys`), so they do not depend on the batch it is retrieved in."""
        seeds = np.asarray(jax.random.key_data(pattern_keys(problem, key))).reshape(problem.n_patterns, -1)
        x0 = np.concatenate(
            [
                random_starts(
                    problem.atoms.positions,
                    problem.molecule,
                    1,
                    self.n_starts,
                    self.perturbation,
                    self.free_pairs,
                    np.random.default_rng(seed.tolist()),
                )
                for seed in seeds
            ]
        )
        if self.extra_starts is not None:
            x0 = np.concatenate([x0, np.asarray(self.extra_starts, np.float64)], axis=1)
        return x0

    def run(self, problem: Problem, key: jax.Array) -> Ensemble:
        x0 = self.starts(problem, key)
        n = problem.n_patterns
        chunk = self.chunk or n
        if self.smoothness and chunk < n:
            chunk = n  # a coupled series must be refined in one piece
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="retrieve", unit="pattern")
        outputs = []
        with jax.enable_x64(self.dtype == jnp.float64):
            restraints = Restraints(
                np.asarray(self.restraints.pairs, np.int32),
                jnp.asarray(self.restraints.targets, self.dtype),
                jnp.asarray(self.restraints.sigmas, self.dtype),
            )
            for lo in range(0, n, chunk):
                index = np.arange(lo, min(lo + chunk, n))
                part = problem.likelihood.select(index)
                pixels = [] if part.pixels is None else [part.pixels]
                x, y, w, i_ref, *pixels = shard([x0[index], part.y, part.w, part.i_ref, *pixels], self.dtype)
                part = dataclasses.replace(part, y=y, w=w, i_ref=i_ref, pixels=pixels[0] if pixels else None)
                out = refine(
                    part,
                    restraints,
                    x,
                    jnp.asarray(self.smoothness, self.dtype),
                    jnp.asarray(self.final_restraint_weight, self.dtype),
                    steps=self.steps,
                    learning_rate=self.learning_rate,
                )
                outputs.append([np.asarray(a, np.float64)[: len(index)] for a in out])
                if bar is not None:
                    bar.update(len(index))
        if bar is not None:
            bar.close()
        x, chi2_data, chi2_restraints = (np.concatenate(a) for a in zip(*outputs, strict=True))
        # Ranking and error bars use the objective as it stands at the end of the run: restraints at their final
        # weight.
        w_final = self.final_restraint_weight
        final = self.restraints._replace(sigmas=self.restraints.sigmas / np.sqrt(w_final)) if w_final > 0 else None
        return Ensemble(
            positions=x,
            chi2_data=chi2_data,
            penalty=chi2_restraints * w_final,
            kind="candidates",
            restraints=final if final is not None else Restraints.none(),
            info={
                "method": "refinement",
                "n_starts": x0.shape[1],
                "steps": self.steps,
                "restraints": len(self.restraints.targets),
                "final_restraint_weight": w_final,
            },
        )
