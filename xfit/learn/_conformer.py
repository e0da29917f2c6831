"""The conformer prior: a learned density p(x | molecular graph) over conformations, for posterior retrieval.

Model. An energy E(x, sigma) = -log p_sigma(x) + const of the conformation x (n_atoms, 3) in A, smoothed by
Gaussian noise of sigma A per coordinate (the noise levels of a denoising diffusion model; score = -grad_x E):

    E(x, sigma) = - sum_{i<j} log sum_k pi_ijk N(d_ij ; mu_ijk, s_ijk^2 + 2 sigma^2),   d_ij = |x_i - x_j|,

a mixture of K Gaussians for every interatomic distance, whose weights, centres and widths a graph network
predicts from the molecular graph alone (elements, bonds, the reference geometry's distances): two rounds of
message passing over the bond graph give every atom an embedding of its chemical surroundings, and every pair an
embedding of its two atoms, its bond-graph distance and its reference distance. Why this form:

- Invariant by construction to rotation, translation and reflection (distances only: an isotropic pattern
  cannot tell mirror images apart), and to relabelling of graph-equivalent atoms (equal embeddings).
- Multimodal where the chemistry is: CHD's C1-C6 is 1.5 A closed and 3-6 A open, and both are components of one
  pair's mixture; a bond that never breaks in the training pools keeps one narrow component.
- The noise level enters analytically: a distance d between two atoms each displaced by N(0, sigma^2) per axis
  varies by about 2 sigma^2 along the bond (for d >> sigma), so each component's variance grows by 2 sigma^2.
  One network serves every noise level, from the data's own spread to sigma ~ 1 A. (Measured on a diatomic with
  known bond-length spread: the learned score matches the analytic one at sigma >= 0.05 A; at 0.01 A its mode sits
  ~0.02 A low, since the Cartesian density's 1/d^2 shell factor is not modelled separately.)
- Smooth, with well-defined curvature everywhere (the posterior's Laplace and MALA stages use its Hessian), and
  cheap: a few flops per pair and component, so the sampler's cost stays in the forward model.
- What it cannot hold: correlations beyond those a pairwise potential induces through the geometry (a pairwise
  distance potential is what classical force fields are made of, and enough to tell a ring from a chain).

Training (``xfit.learn._conformer_train``): denoising score matching (Vincent, Neural Comput. 23, 1661 (2011);
Song & Ermon, NeurIPS 2019) on xfit's own pools: x_sigma = x0 + sigma eps, loss |sigma grad E(x_sigma) - eps|^2
(centre-of-mass components removed), sigma log-uniform. ``ConformerPrior.sample`` draws by annealed Langevin
dynamics on the learned score.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem._graph import MAX_HOPS, MoleculeGraph

__all__ = [
    "ConformerConfig",
    "ConformerPrior",
    "load_conformer_prior",
    "pair_inputs",
    "save_conformer_prior",
]

CONFIG_FILE = "conformer.json"
WEIGHTS_FILE = "params.msgpack"
SHIPPED = ("conformer",)
N_RBF = 16
RBF_MAX = 8.0


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """Hyperparameters of a conformer prior (stored beside its weights).

    width: atom and pair embedding width. components: K Gaussians per distance. max_atoms: padding size (the
    largest molecule one compiled training step takes). sigma_min, sigma_max: the noise levels (A) it is trained
    on; sigma_min is the level the posterior uses.
    """

    width: int = 64
    components: int = 6
    rounds: int = 2
    max_atoms: int = 24
    sigma_min: float = 0.01
    sigma_max: float = 1.0

    def __post_init__(self):
        if self.components < 1 or self.width < 4 or self.max_atoms < 2:
            raise ValueError("components >= 1, width >= 4 and max_atoms >= 2 are needed")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


def _graph(atoms) -> MoleculeGraph:
    return atoms if isinstance(atoms, MoleculeGraph) else MoleculeGraph.from_atoms(atoms)


def pair_inputs(graph: MoleculeGraph, max_atoms: int) -> dict[str, np.ndarray]:
    """The graph side of the network, padded to ``max_atoms``: numbers (N,), bond adjacency (N, N), hops (N, N),
    reference distances (N, N) in A averaged over the graph's automorphisms (so that equivalent atoms, an axial
    and an equatorial hydrogen of one CH2 say, get equal inputs and the energy is exactly invariant to relabelling
    them), atom mask (N,)."""
    n = len(graph)
    if n > max_atoms:
        raise ValueError(f"{graph.formula} has {n} atoms; this prior takes at most {max_atoms}")
    numbers = np.zeros(max_atoms, np.int32)
    numbers[:n] = graph.numbers
    adjacency = np.zeros((max_atoms, max_atoms), np.float32)
    adjacency[graph.bonds[:, 0], graph.bonds[:, 1]] = adjacency[graph.bonds[:, 1], graph.bonds[:, 0]] = 1.0
    hops = np.full((max_atoms, max_atoms), MAX_HOPS, np.int32)
    hops[:n, :n] = graph.hops
    d0 = np.zeros((max_atoms, max_atoms), np.float32)
    x = graph.positions
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    perms = graph.automorphisms()
    d0[:n, :n] = np.mean([d[np.ix_(p, p)] for p in perms], axis=0)
    mask = np.zeros(max_atoms, bool)
    mask[:n] = True
    return {"numbers": numbers, "adjacency": adjacency, "hops": hops, "d0": d0, "mask": mask}


def _rbf(d, n=N_RBF, top=RBF_MAX):
    centres = jnp.linspace(0.0, top, n)
    return jnp.exp(-(((d[..., None] - centres) / (centres[1] - centres[0])) ** 2))


class PairMixtures(nn.Module):
    """Graph inputs (batched or not) -> per-pair mixture parameters (log weights, centres in A, log widths in A),
    each (..., N, N, K)."""

    config: ConformerConfig

    @nn.compact
    def __call__(self, numbers, adjacency, hops, d0, mask):
        c = self.config
        h = nn.Embed(120, c.width)(numbers) * mask[..., None]
        for _ in range(c.rounds):  # message passing over the bond graph: chemical surroundings, not geometry
            messages = jnp.einsum("...ij,...jw->...iw", adjacency, nn.Dense(c.width)(h))
            h = h + nn.gelu(nn.Dense(c.width)(jnp.concatenate([h, messages], -1))) * mask[..., None]
            h = nn.LayerNorm()(h)
        a = nn.Dense(c.width)(h)
        pair = jnp.concatenate(
            [
                nn.gelu(a[..., :, None, :] + a[..., None, :, :]),  # symmetric in i, j
                a[..., :, None, :] * a[..., None, :, :],
                jax.nn.one_hot(hops, MAX_HOPS + 1),
                _rbf(d0),
            ],
            -1,
        )
        z = nn.gelu(nn.Dense(c.width)(pair))
        z = nn.gelu(nn.Dense(c.width)(z))
        k = c.components
        logits = nn.Dense(k)(z)
        # Centres as offsets from the reference distance (spread at initialisation so components can specialise),
        # widths from 0.005 to ~2 A.
        spread = jnp.linspace(-0.5, 2.5, k) if k > 1 else jnp.zeros(1)
        centres = d0[..., None] + spread + nn.Dense(k, kernel_init=nn.initializers.zeros)(z)
        log_widths = jnp.clip(nn.Dense(k)(z) - 2.5, np.log(0.005), np.log(2.0))
        return logits, centres, log_widths


def mixture_energy(x, sigma, logits, centres, log_widths, pair_mask):
    """E(x, sigma) (...) of structures x (..., N, 3) for per-pair mixtures (N, N, K) (see the module notes);
    sigma in A, a scalar or one per structure (...)."""
    sigma = jnp.asarray(sigma, x.dtype)[..., None, None, None]
    diff = x[..., :, None, :] - x[..., None, :, :]
    sq = jnp.sum(diff * diff, axis=-1)
    safe = jnp.where(pair_mask, sq, 1.0)
    d = jnp.sqrt(jnp.maximum(safe, 1e-12))
    var = jnp.exp(2.0 * log_widths) + 2.0 * sigma**2
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    log_n = -0.5 * (d[..., None] - centres) ** 2 / var - 0.5 * jnp.log(2.0 * jnp.pi * var)
    log_p = jax.scipy.special.logsumexp(log_pi + log_n, axis=-1)
    return -0.5 * jnp.sum(jnp.where(pair_mask, log_p, 0.0), axis=(-2, -1))  # each pair counted once


def init_params(config: ConformerConfig, key: jax.Array) -> dict:
    n = config.max_atoms
    dummy = (jnp.ones(n, jnp.int32), jnp.zeros((n, n)), jnp.zeros((n, n), jnp.int32), jnp.ones((n, n)))
    return PairMixtures(config).init(key, *dummy, jnp.ones(n, bool))["params"]


@dataclasses.dataclass(frozen=True, eq=False)
class ConformerPrior:
    """A trained conformer prior: its config, weights and the molecules it knows.

    ``molecules`` maps graph keys (``MoleculeGraph.key``) to names; ``metadata`` records how it was trained.
    """

    config: ConformerConfig
    params: dict
    molecules: dict[str, str]
    metadata: dict
    path: str | None = None

    @property
    def sigma_min(self) -> float:
        return self.config.sigma_min

    def fits(self, atoms: Atoms | MoleculeGraph) -> bool:
        """Whether this prior knows the molecule (same bond graph, any atom order) and it is small enough."""
        graph = _graph(atoms)
        return len(graph) <= self.config.max_atoms and graph.key in self.molecules

    def mixtures(self, atoms: Atoms | MoleculeGraph):
        """Per-pair mixture parameters (logits, centres, log widths), each (n, n, K), and the pair mask (n, n)."""
        graph = _graph(atoms)
        if not self.fits(graph):
            raise ValueError(
                f"this conformer prior knows {sorted(self.molecules.values())} ({', '.join(sorted(self.molecules))}),"
                f" not {graph.formula} ({graph.key})"
            )
        inputs = pair_inputs(graph, self.config.max_atoms)
        with jax.enable_x64(False):
            out = PairMixtures(self.config).apply({"params": self.params}, *(jnp.asarray(v) for v in inputs.values()))
        n = len(graph)
        upper = np.triu(np.ones((n, n), bool), k=1)
        return tuple(np.asarray(a[:n, :n], np.float64) for a in out), upper

    def energy_fn(self, atoms: Atoms | MoleculeGraph):
        """A pure JAX function E(x, sigma) of structures x (..., n_atoms, 3) in A and a noise level sigma in A,
        in the dtype of x; jit/vmap/grad-friendly (the graph's network outputs are computed once, here)."""
        (logits, centres, log_widths), upper = self.mixtures(atoms)
        pair_mask = upper | upper.T  # both triangles, halved in mixture_energy: symmetric gradients

        def energy(x, sigma):
            cast = lambda a: jnp.asarray(a, x.dtype)  # noqa: E731
            return mixture_energy(x, sigma, cast(logits), cast(centres), cast(log_widths), pair_mask)

        return energy

    def energy(self, x, atoms: Atoms | MoleculeGraph, sigma: float | None = None) -> np.ndarray:
        """E(x, sigma) (...) for x (..., n_atoms, 3) in A (default sigma: ``sigma_min``)."""
        return np.asarray(self.energy_fn(atoms)(jnp.asarray(x), self.sigma_min if sigma is None else sigma))

    def score(self, x, atoms: Atoms | MoleculeGraph, sigma: float | None = None) -> np.ndarray:
        """The score grad_x log p_sigma(x) = -grad_x E, (..., n_atoms, 3) in 1/A."""
        energy = self.energy_fn(atoms)
        sigma = self.sigma_min if sigma is None else sigma
        return np.asarray(-jax.grad(lambda v: jnp.sum(energy(v, sigma)))(jnp.asarray(x)))

    def sample(
        self, key: jax.Array, atoms: Atoms | MoleculeGraph, n: int, *, levels: int = 60, steps_per_level: int = 4
    ) -> np.ndarray:
        """n unconditional samples (n, n_atoms, 3) in A by annealed Langevin dynamics on the learned score (Song &
        Ermon 2019, step 0.1 sigma^2 per level), from the reference geometry plus sigma_max noise down to
        sigma_min."""
        graph = _graph(atoms)
        energy = self.energy_fn(graph)
        sigmas = np.geomspace(self.config.sigma_max, self.config.sigma_min, levels).astype(np.float32)
        k0, k1 = jax.random.split(key)
        x0 = jnp.asarray(graph.positions, jnp.float32) + sigmas[0] * jax.random.normal(k0, (n, len(graph), 3))
        return np.asarray(_annealed_langevin(energy, x0, jnp.asarray(sigmas), k1, steps_per_level), np.float64)


def _annealed_langevin(energy, x0, sigmas, key, steps_per_level: int):
    grad = jax.grad(lambda x, s: jnp.sum(energy(x, s)))

    @jax.jit
    def run(x0, sigmas, key):
        def level(carry, sigma):
            x, key = carry
            eta = 0.1 * sigma**2

            def step(carry, _):
                x, key = carry
                key, sub = jax.random.split(key)
                x = x - eta * grad(x, sigma) + jnp.sqrt(2 * eta) * jax.random.normal(sub, x.shape, x.dtype)
                return (x, key), None

            (x, key), _ = jax.lax.scan(step, (x, key), None, length=steps_per_level)
            return (x, key), None

        (x, _), _ = jax.lax.scan(level, (x0, key), sigmas)
        return x

    return run(x0, sigmas, key)


def save_conformer_prior(directory: str | os.PathLike, config: ConformerConfig, params, molecules, metadata) -> None:
    """Write ``directory/conformer.json`` (config, molecules, metadata) and ``params.msgpack``, each atomically."""
    from flax import serialization

    from xfit._io import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        Path(tmp).write_bytes(serialization.to_bytes(jax.device_get(params)))
    info = {"config": dataclasses.asdict(config), "molecules": molecules, "metadata": metadata}
    with atomic_path(directory / CONFIG_FILE) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def load_conformer_prior(name_or_path: str | os.PathLike | None = None) -> ConformerPrior:
    """A conformer prior from a folder written by ``xfit train-prior``, or the shipped one by name ("conformer",
    the default).

    Raises:
        FileNotFoundError: no such folder, or a file missing. ValueError: a corrupt file.
    """
    from flax import serialization

    name = str(name_or_path or SHIPPED[0])
    directory = Path(name)
    if name in SHIPPED and not directory.is_dir():
        directory = Path(__file__).parents[1] / "weights" / name
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory} is not a conformer prior: {file} is missing")
    try:
        info = json.loads((directory / CONFIG_FILE).read_text())
        config = ConformerConfig(**info["config"])
        template = jax.device_get(init_params(config, jax.random.key(0)))
        params = serialization.from_bytes(template, (directory / WEIGHTS_FILE).read_bytes())
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{directory}: corrupt conformer prior ({type(err).__name__}: {err})") from None
    return ConformerPrior(config, params, info["molecules"], info.get("metadata", {}), str(directory))
