"""The conformer prior: a learned density p(x | molecular graph) over conformations, for posterior retrieval.

Model. An energy E(x, sigma) = -log p_sigma(x) + const(sigma) of a conformation x (n_atoms, 3) in A, where p_sigma
is the conformer density smoothed by Gaussian noise of sigma A per coordinate (the noise levels of a denoising
diffusion model; the score is -grad_x E). It is a sum over pairs i < j of a function of the distance d_ij:

    E(x, sigma) = sum_{i<j} [ -log sum_k pi_ijk N(d_ij ; mu_ijk, w_ijk^2 + 2 sigma^2) + R(d_ij ; c_ij, sigma) ]

a mixture of K ("branches", 6) Gaussians per distance plus a small MLP residual R. With M > 1 ``components`` the
energy is a whole-molecule mixture of such pairwise energies,

    E(x, sigma) = -log sum_m pi_m exp(-E_m(x, sigma)),    E_m = sum_{i<j} f_mij(d_ij, sigma),

each component with its own branches and residual output weights (the residual's hidden layers are shared, so a
component costs K Gaussians and one dot product per pair), and weights pi_m from a readout of the whole graph.
Everything pair-specific
(weights pi, centres mu, widths w, and R's first-layer biases, linear-in-d weights, noise gains and output weights)
comes from a pair context c_ij computed once per molecule from the bond graph alone: element embeddings refined by
a few rounds of message passing over the bonds, symmetrised over the pair (sum and product), and the bond-graph
distance (hops, 0..4). R sees the distance through a Gaussian radial basis and d itself, and the noise level
through Fourier features of log sigma (``sigma_features``). Per structure and pair the cost is rbf(d) -> width ->
width -> 1 (16 x 32 + 32 x 32 multiply-adds at the defaults) plus K Gaussians.

Why this form:

- Invariance by construction: distances only, so rotation, translation and reflection (an isotropic pattern
  cannot tell mirror images apart); atoms that a graph automorphism exchanges get equal embeddings and so equal
  pair contexts, so the energy is invariant to relabelling them.
- Multimodal where the chemistry is: CHD's C1-C6 is 1.5 A (closed) and 3-6 A (open), two branches of one pair.
- The noise level enters the mixture analytically: a distance between two atoms each displaced by N(0, sigma^2)
  per axis varies by about 2 sigma^2 along the bond (for d >> sigma), so each branch's variance grows by 2 sigma^2,
  and one network serves every level from a bond's zero-point spread to sigma ~ 2.5 A. The residual R learns what
  a mixture cannot hold: the 1/d^2 shell factor of a Cartesian density and non-Gaussian shapes.
- Centres come from the graph alone (softplus above rbf_min, spread 1..5.5 A at initialisation), not from a
  reference geometry: the earlier model placed them as offsets from the reference distances with a fixed spread
  of -0.5..2.5 A, and its samples stretched bonds that never break (CHD C2-C3 5-95 % 0.91-3.77 A; this model:
  1.25-1.49 A against 1.27-1.50 A in the pools). A reference-distance feature is optional (``reference``, off by
  default): with it the density would follow whatever geometry a user passes.
- Cheap and smooth (SiLU, Gaussian radial basis): the posterior takes its Hessian (Laplace, MALA).
- What one component cannot hold: correlations beyond those a pairwise potential induces through the geometry (a
  pairwise distance potential is what classical force fields are made of, and enough to tell a ring from a chain).
  Measured: with the ring open, CHD's bond lengths do not shift as they do in the pools (C2-C3 median 1.38 A
  against 1.46 A), the opened C1-C6 is short (median 3.1 A against 4.3 A), and every pair's long-distance tail is
  independent of which bond broke, so a chain broken at the wrong ring bond costs little more than the right one.
  Components hold such correlations: in one the ring is closed and every cross-ring pair short, in another the
  ring is open at its one breaking bond with every pair across it long (the test suite's triatomic whose two bonds
  are both short or both long: a pairwise density draws 43 % mixed pairs, two components under 5 %).

Training (``xfit.learn._conformer_train``): denoising score matching (Vincent, Neural Comput. 23, 1661 (2011);
Song & Ermon, NeurIPS 2019). Score matching sees only gradients of log p, so it cannot weigh modes that no data
connect (Wenliang & Kanagawa, arXiv:2008.10087, on its blindness to isolated components): branches that no
pool reaches keep their initial weights, and of several components one takes every structure. Two optional terms
weigh them: the branches' maximum likelihood (each pair's Gaussian branches alone are a normalised density of its
distance, ``branch_nll``), and, for components, a warm-up on k-means clusters of the pools' heavy-atom distances
with the cross-entropy of the components' responsibilities against those clusters. Measured (2026-12-06, shipped
pools): with three components the clusters are CHD's closed ring, its mid-open and its far-open chains, and the
opened draws' C1-C6 median moves from 3.2 to 3.6 A (pools 4.3; 4.4 with both terms); with the branch likelihood, a
never-breaking ring bond's branch weight beyond 2.5 A falls from 20 % to 1 %, and the draws' open-ring fraction
stays at 25-28 % from 100 to 3,000 sampling levels, where the shipped prior's falls from 24 % to 4 % (pools 19 %).
None retrieves better on held-out data (``benchmarks/diagnostics.py heldout`` and ``levels``), so the shipped
prior has one component and neither term.
``ConformerPrior.sample`` draws by reverse-diffusion predictor-corrector sampling
(Song et al., ICLR 2021) on the learned score.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem._graph import MAX_HOPS, MoleculeGraph

__all__ = [
    "ConformerConfig",
    "ConformerPrior",
    "graph_inputs",
    "init_params",
    "load_conformer_prior",
    "pair_energy",
    "save_conformer_prior",
]

CONFIG_FILE = "conformer.json"
WEIGHTS_FILE = "params.msgpack"
SHIPPED = ("conformer",)
SIGMA_FEATURES = 8
LOG_WIDTH_MIN, LOG_WIDTH_MAX = float(np.log(0.005)), float(np.log(5.0))
"""Bounds on the branches' own spreads (A): sharper than any bond's zero-point spread, wider than a molecule."""
PAIR_KEYS = ("centres", "log_widths", "log_weights", "b1", "w_lin", "g", "v")
"""The per-pair entries of a ``PairContext`` output (the rest are weights shared by all pairs)."""


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """Hyperparameters of a conformer prior (stored beside its weights). Lengths in A.

    width: the pair MLP's width (the per-structure cost). embed: the graph network's width (once per molecule).
    rounds: message-passing rounds over the bond graph. n_rbf, rbf_min, rbf_max: Gaussian radial basis of the
    distance. max_atoms: the largest molecule it takes. sigma_min, sigma_max: the noise levels it is trained on
    (sigma_min is the level the posterior uses). branches: Gaussians per distance. reference: also condition on the
    reference geometry's distances. components: whole-molecule mixture components (1: one pairwise density; see
    the module notes).
    """

    width: int = 32
    embed: int = 64
    rounds: int = 3
    n_rbf: int = 16
    rbf_min: float = 0.5
    rbf_max: float = 8.0
    max_atoms: int = 24
    sigma_min: float = 0.01
    sigma_max: float = 2.5
    branches: int = 6
    reference: bool = False
    components: int = 1

    def __post_init__(self):
        if self.width < 2 or self.embed < 2 or self.n_rbf < 2 or self.max_atoms < 2 or self.rounds < 0:
            raise ValueError("width, embed, n_rbf, max_atoms >= 2 and rounds >= 0 are needed")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not 0 < self.rbf_min < self.rbf_max or self.branches < 1 or self.components < 1:
            raise ValueError("need 0 < rbf_min < rbf_max, branches >= 1 and components >= 1")


def as_graph(atoms: Atoms | MoleculeGraph) -> MoleculeGraph:
    """A ``MoleculeGraph`` from either an ``ase.Atoms`` or a graph."""
    return atoms if isinstance(atoms, MoleculeGraph) else MoleculeGraph.from_atoms(atoms)


def symmetric_distances(graph: MoleculeGraph, positions: np.ndarray | None = None) -> np.ndarray:
    """Distances (n, n) in A of ``positions`` (default: the reference geometry), averaged over the graph's
    automorphisms, so that equivalent atoms (an axial and an equatorial hydrogen of one CH2) get equal values."""
    x = graph.positions if positions is None else positions
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    perms = graph.automorphisms()
    return np.mean(d[perms[:, :, None], perms[:, None, :]], axis=0)


def graph_inputs(graph: MoleculeGraph, size: int | None = None, d0: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The graph side of the model, padded to ``size`` atoms (default: the molecule's own): numbers (N,), bond
    adjacency (N, N), hops (N, N), reference distances d0 (N, N) in A (default ``symmetric_distances``), atom mask
    (N,), and the pairs i < j (P,), (P,) with their mask (P,), P = N (N - 1) / 2. Padding atoms have no bonds, so
    they change nothing for the real ones."""
    n = len(graph)
    size = n if size is None else size
    if n > size:
        raise ValueError(f"{graph.formula} has {n} atoms; at most {size} fit")
    numbers = np.zeros(size, np.int32)
    numbers[:n] = graph.numbers
    adjacency = np.zeros((size, size), np.float32)
    adjacency[graph.bonds[:, 0], graph.bonds[:, 1]] = adjacency[graph.bonds[:, 1], graph.bonds[:, 0]] = 1.0
    hops = np.full((size, size), MAX_HOPS, np.int32)
    hops[:n, :n] = graph.hops
    reference = np.zeros((size, size), np.float32)
    reference[:n, :n] = symmetric_distances(graph) if d0 is None else d0
    mask = np.zeros(size, bool)
    mask[:n] = True
    i, j = np.triu_indices(size, k=1)
    return {
        "numbers": numbers,
        "adjacency": adjacency,
        "hops": hops,
        "d0": reference,
        "mask": mask,
        "pair_i": i.astype(np.int32),
        "pair_j": j.astype(np.int32),
        "pair_mask": mask[i] & mask[j],
    }


def _rbf(d, n: int, lo: float, hi: float):
    centres = jnp.linspace(lo, hi, n, dtype=d.dtype)
    return jnp.exp(-(((d[..., None] - centres) / (centres[1] - centres[0])) ** 2))


def sigma_features(sigma, config: ConformerConfig):
    """(..., SIGMA_FEATURES) of noise levels sigma (...) in A: Fourier features of log sigma mapped onto [-1, 1]
    over the trained range (clipped outside it, where the branches' 2 sigma^2 alone carries the change)."""
    lo, hi = float(np.log(config.sigma_min)), float(np.log(config.sigma_max))  # Python floats: keep the dtype
    u = jnp.clip(2.0 * (jnp.log(sigma) - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    k = jnp.arange(1, SIGMA_FEATURES // 2, dtype=u.dtype) * jnp.pi
    uk = u[..., None] * k
    return jnp.concatenate([u[..., None], u[..., None] ** 2, jnp.sin(uk), jnp.cos(uk)], -1)


class PairContext(nn.Module):
    """Graph inputs (one molecule, from ``graph_inputs``) -> the pair MLP of that molecule (see ``pair_energy``):
    per-pair first-layer biases b1 and noise gains g (P, width), per component and pair the output weights v
    (M, P, width) and branches (centres, log_widths, log_weights: (M, P, K)), the components' log-weights (M,), and
    the shared weights."""

    config: ConformerConfig

    @nn.compact
    def __call__(self, numbers, adjacency, hops, d0, mask, pair_i, pair_j, pair_mask):
        c = self.config
        dtype = jnp.float32
        atom_mask = mask[:, None].astype(dtype)
        h = nn.Embed(120, c.embed)(numbers) * atom_mask
        for _ in range(c.rounds):  # chemical surroundings from the bond graph, never from the geometry
            messages = adjacency.astype(dtype) @ nn.Dense(c.embed)(h)
            update = nn.Dense(c.embed)(nn.gelu(nn.Dense(c.embed)(jnp.concatenate([h, messages], -1))))
            h = nn.LayerNorm()(h + update) * atom_mask
        hi, hj = h[pair_i], h[pair_j]
        parts = [hi + hj, hi * hj, jax.nn.one_hot(hops[pair_i, pair_j], MAX_HOPS + 1, dtype=dtype)]
        d0_pair = d0[pair_i, pair_j].astype(dtype)
        if c.reference:
            parts.append(_rbf(d0_pair, c.n_rbf, c.rbf_min, c.rbf_max))
        z = nn.gelu(nn.Dense(c.embed)(jnp.concatenate(parts, -1)))
        z = nn.gelu(nn.Dense(c.embed)(z))
        w, k, m = c.width, c.branches, c.components
        scaled = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")
        dense = nn.initializers.lecun_normal()

        def per_component(n_out: int, **kwargs):  # (P, n_out) per component -> (M, P, n_out)
            out = nn.Dense(m * n_out, **kwargs)(z)
            return jnp.moveaxis(out.reshape(out.shape[0], m, n_out), 1, 0)

        # Branch centres spread over bonded to far distances, widths from a bond's to a floppy pair's, at first.
        spread = np.linspace(1.0, 5.5, k) if k > 1 else np.array([1.5])
        if c.reference:
            centres = d0_pair[:, None] + per_component(k, bias_init=_constant(np.tile(spread - spread[0], m)))
        else:
            bias = np.tile(np.log(np.expm1(spread - c.rbf_min)), m)
            centres = c.rbf_min + nn.softplus(per_component(k, bias_init=_constant(bias)))
        log_widths = np.full(m * k, np.log(0.25))
        if m > 1:  # the molecule's weights of its components, from the whole graph
            readout = jnp.sum(h, 0) / jnp.maximum(jnp.sum(atom_mask), 1.0)
            log_components = jax.nn.log_softmax(nn.Dense(m, kernel_init=nn.initializers.zeros)(readout))
        else:
            log_components = jnp.zeros(1, dtype)
        return {
            "centres": centres,
            "log_widths": jnp.clip(per_component(k, bias_init=_constant(log_widths)), LOG_WIDTH_MIN, LOG_WIDTH_MAX),
            "log_weights": jax.nn.log_softmax(per_component(k, kernel_init=nn.initializers.zeros), axis=-1),
            "b1": nn.Dense(w)(z),
            "w_lin": nn.Dense(w, bias_init=nn.initializers.normal(2.0))(z),
            "g": 1.0 + nn.Dense(w, kernel_init=scaled)(z),
            "v": per_component(w, kernel_init=scaled) / float(np.sqrt(w)),
            "log_components": log_components,
            "w_rbf": self.param("w_rbf", dense, (c.n_rbf, w)),
            "w_sigma1": self.param("w_sigma1", dense, (SIGMA_FEATURES, w)),
            "w2": self.param("w2", dense, (w, w)),
            "b2": self.param("b2", nn.initializers.zeros, (w,)),
            "w_sigma2": self.param("w_sigma2", dense, (SIGMA_FEATURES, w)),
        }


@functools.partial(jax.jit, static_argnames="config")
def _context(params, inputs, *, config):
    return PairContext(config).apply({"params": params}, **inputs)


def _constant(values):
    def init(key, shape, dtype=jnp.float32):
        return jnp.broadcast_to(jnp.asarray(values, dtype), shape)

    return init


def pair_terms(head: dict, d, sigma, config: ConformerConfig):
    """Each pair's term f_mij(d_ij, sigma) (..., M, P) of each mixture component m, for distances d (..., P) in A and
    noise levels sigma (a scalar or (...)) in A, in the dtype of d: component m's energy is the sum over pairs
    (``combine`` makes the molecule's; see the module notes)."""
    dtype = d.dtype
    head = {k: jnp.asarray(v, dtype) for k, v in head.items()}
    sigma = jnp.broadcast_to(jnp.asarray(sigma, dtype), d.shape[:-1])
    s = sigma_features(sigma, config)
    a1 = (
        _rbf(d, config.n_rbf, config.rbf_min, config.rbf_max) @ head["w_rbf"]
        + d[..., None] * head["w_lin"]
        + head["b1"]
        + (s @ head["w_sigma1"])[..., None, :] * head["g"]
    )
    a2 = jax.nn.silu(a1) @ head["w2"] + head["b2"] + (s @ head["w_sigma2"])[..., None, :]
    residual = jnp.einsum("...pw,mpw->...mp", jax.nn.silu(a2), head["v"])
    var = jnp.exp(2.0 * head["log_widths"]) + 2.0 * sigma[..., None, None, None] ** 2
    branch = 0.5 * (d[..., None, :, None] - head["centres"]) ** 2 / var + 0.5 * jnp.log(var) - head["log_weights"]
    return residual - jax.nn.logsumexp(-branch, axis=-1)


def branch_nll(head: dict, d, sigma):
    """-log of each pair's Gaussian branches alone, sum_k pi_k N(d ; mu_k, w_k^2 + 2 sigma^2), (..., M, P), for
    distances d (..., P) in A at noise levels sigma (a scalar or (...)) in A: a normalised density of the distance,
    which training fits by maximum likelihood beside score matching (``xfit.learn._conformer_train.dsm_loss``)."""
    dtype = d.dtype
    sigma = jnp.broadcast_to(jnp.asarray(sigma, dtype), d.shape[:-1])
    centres, log_widths = jnp.asarray(head["centres"], dtype), jnp.asarray(head["log_widths"], dtype)
    var = jnp.exp(2.0 * log_widths) + 2.0 * sigma[..., None, None, None] ** 2
    z = 0.5 * (d[..., None, :, None] - centres) ** 2 / var + 0.5 * jnp.log(2.0 * jnp.pi * var)
    return -jax.nn.logsumexp(jnp.asarray(head["log_weights"], dtype) - z, axis=-1)


def combine(log_components, energies):
    """The molecule's energy (...) from its components' energies (..., M) and their log-weights (M,):
    -log sum_m exp(log pi_m - E_m), exactly E_1 for one component."""
    return -jax.nn.logsumexp(jnp.asarray(log_components, energies.dtype) - energies, axis=-1)


def _pair_distances(x, pair_i, pair_j, pair_mask=None):
    diff = x[..., pair_i, :] - x[..., pair_j, :]
    sq = jnp.sum(diff * diff, axis=-1)
    if pair_mask is not None:  # padding atoms sit on one point: keep their (discarded) gradients finite
        sq = jnp.where(pair_mask, sq, 1.0)
    return jnp.sqrt(jnp.maximum(sq, 1e-12))


def component_energies(head: dict, x, sigma, pair_i, pair_j, config: ConformerConfig, pair_mask=None):
    """Each component's energy E_m(x, sigma) (..., M) for structures x (..., N, 3) in A and noise levels sigma in A
    (a scalar or (...)), in the dtype of x (``pair_energy`` combines them)."""
    x = jnp.asarray(x)
    f = pair_terms(head, _pair_distances(x, pair_i, pair_j, pair_mask), sigma, config)
    if pair_mask is not None:
        f = jnp.where(pair_mask, f, 0.0)
    return jnp.sum(f, axis=-1)


def pair_energy(head: dict, x, sigma, pair_i, pair_j, config: ConformerConfig, pair_mask=None):
    """E(x, sigma) (...) for structures x (..., N, 3) in A and noise levels sigma in A (a scalar or (...)), in the
    dtype of x. ``head``: a molecule's ``PairContext`` output (any float dtype); pair_i, pair_j (P,): the pairs;
    pair_mask (P,): which are real (padding pairs in training), None for all."""
    energies = component_energies(head, x, sigma, pair_i, pair_j, config, pair_mask)
    return combine(head["log_components"], energies)


@flax.struct.dataclass(eq=False)  # hashed by identity: jax.jit(energy) works as for a function
class PairEnergy:
    """A molecule's energy E(x, sigma) as a pytree (the weights are leaves, the config static): pass it to jitted
    functions as an argument and they compile once per molecule size, not once per call. Called as
    ``energy(x, sigma)`` with x (..., N, 3) in A and sigma in A; returns (...)."""

    head: dict
    pair_i: jax.Array
    pair_j: jax.Array
    config: ConformerConfig = flax.struct.field(pytree_node=False)

    def __call__(self, x, sigma):
        return pair_energy(self.head, x, sigma, self.pair_i, self.pair_j, self.config)

    def hessian(self, x, sigma):
        """The Hessian (3N, 3N) in 1/A^2 of E at one structure x (N, 3) in A, assembled from each pair's first and
        second derivatives along its distance (forward mode, a few network passes, instead of 3N of them): in
        component m, pair (i, j) adds B = f'' u u^T + (f'/d)(1 - u u^T) to blocks ii and jj and -B to ij and ji, u
        the unit vector along the pair. With several components, H = sum_m w_m H_m - (sum_m w_m g_m g_m^T - g g^T),
        w_m the components' posterior weights at x, g_m their gradients and g = sum_m w_m g_m."""
        x = jnp.asarray(x)
        n = x.shape[0]
        diff = x[self.pair_i] - x[self.pair_j]
        d = jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, axis=-1), 1e-12))
        u = diff / d[:, None]
        ones = jnp.ones_like(d)

        def terms(v):
            return pair_terms(self.head, v, sigma, self.config)

        def slope(v):
            return jax.jvp(terms, (v,), (ones,))[1]

        f1, f2 = jax.jvp(slope, (d,), (ones,))  # (M, P)
        m = f1.shape[0]
        if m == 1:  # the components' weights are 1: no extra network pass for them
            w = jnp.ones(1, x.dtype)
        else:
            w = jax.nn.softmax(jnp.asarray(self.head["log_components"], x.dtype) - jnp.sum(terms(d), axis=-1))
        uu = u[:, :, None] * u[:, None, :]
        b2, b1 = jnp.einsum("m,mp->p", w, f2), jnp.einsum("m,mp->p", w, f1)
        block = b2[:, None, None] * uu + (b1 / d)[:, None, None] * (jnp.eye(3, dtype=x.dtype) - uu)
        h = jnp.zeros((n, n, 3, 3), x.dtype)
        h = h.at[self.pair_i, self.pair_i].add(block).at[self.pair_j, self.pair_j].add(block)
        h = h.at[self.pair_i, self.pair_j].add(-block).at[self.pair_j, self.pair_i].add(-block)
        h = h.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
        if m == 1:
            return h
        along = f1[:, :, None] * u  # (M, P, 3)
        g = jnp.zeros((m, n, 3), x.dtype).at[:, self.pair_i].add(along).at[:, self.pair_j].add(-along)
        g = g.reshape(m, 3 * n)
        mean = w @ g
        return h - (jnp.einsum("m,ma,mb->ab", w, g, g) - jnp.outer(mean, mean))


@flax.struct.dataclass(eq=False)
class PairTable:
    """A molecule's energy at a few fixed noise levels, tabulated per pair on a uniform distance grid and read by
    cubic Hermite interpolation (exact values and slopes at the nodes): called as ``table(x, level)`` with x
    (..., N, 3) in A and ``level`` an index into ``sigmas``; returns E(x, sigmas[level]) (...). Beyond the grid each
    pair term continues linearly with its end slope. Built by ``ConformerPrior.energy_table``; its gradient is ~15x
    cheaper than the network's (CHD, 576 structures: 1.6 against 25 ms on 2 CPU cores), which is what the
    annealing of the posterior spends its time on."""

    values: jax.Array  # (L, M, P, n_nodes)
    slopes: jax.Array  # (L, M, P, n_nodes): d f / d d at the nodes, 1/A
    log_components: jax.Array  # (M,)
    pair_i: jax.Array
    pair_j: jax.Array
    sigmas: jax.Array  # (L,) A
    d_min: float = flax.struct.field(pytree_node=False)
    spacing: float = flax.struct.field(pytree_node=False)

    def __call__(self, x, level):
        x = jnp.asarray(x)
        d = _pair_distances(x, self.pair_i, self.pair_j)
        n = self.values.shape[-1]
        clipped = jnp.clip(d, self.d_min, self.d_min + (n - 1) * self.spacing)
        u = (clipped - self.d_min) / self.spacing
        k = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, n - 2)
        t = u - k
        pairs = jnp.arange(d.shape[-1])
        values, slopes = self.values[level].astype(x.dtype), self.slopes[level].astype(x.dtype) * self.spacing
        # (M, ..., P): every component's term of every pair at its distance
        f0, f1, m0, m1 = values[:, pairs, k], values[:, pairs, k + 1], slopes[:, pairs, k], slopes[:, pairs, k + 1]
        t2, t3 = t * t, t * t * t
        value = (2 * t3 - 3 * t2 + 1) * f0 + (t3 - 2 * t2 + t) * m0 + (-2 * t3 + 3 * t2) * f1 + (t3 - t2) * m1
        slope = ((6 * t2 - 6 * t) * (f0 - f1) + (3 * t2 - 4 * t + 1) * m0 + (3 * t2 - 2 * t) * m1) / self.spacing
        energies = jnp.sum(value + jax.lax.stop_gradient(slope) * (d - clipped), axis=-1)  # (M, ...)
        return combine(self.log_components, jnp.moveaxis(energies, 0, -1))


@functools.partial(jax.jit, static_argnames="config")
def _tabulate(head, grid, sigmas, *, config):
    """Pair terms and their slopes (L, M, P, n) on ``grid`` (n,) A at noise levels ``sigmas`` (L,) A."""
    n_pairs = head["b1"].shape[0]
    d = jnp.broadcast_to(grid[:, None], (len(grid), n_pairs))

    def level(sigma):  # each term depends on its own distance only: one forward-mode pass gives every slope
        f, slope = jax.jvp(lambda v: pair_terms(head, v, sigma, config), (d,), (jnp.ones_like(d),))
        return jnp.moveaxis(f, 0, -1), jnp.moveaxis(slope, 0, -1)

    values, slopes = jax.lax.map(level, sigmas)
    return values, slopes


def init_params(config: ConformerConfig, key: jax.Array) -> dict:
    """Random weights of the model (float32)."""
    numbers = np.array([6, 1, 1], np.int32)
    graph = MoleculeGraph.from_bonds(numbers, [[0, 1], [0, 2]], np.eye(3))
    inputs = graph_inputs(graph)
    return PairContext(config).init(key, **{k: jnp.asarray(v) for k, v in inputs.items()})["params"]


@dataclasses.dataclass(frozen=True, eq=False)
class ConformerPrior:
    """A trained conformer prior: its config, weights and the molecules it knows.

    ``molecules`` maps graph keys (``MoleculeGraph.key``) to names; ``metadata`` records how it was trained.
    Wherever a molecule is asked for, an ``ase.Atoms`` or a ``MoleculeGraph`` will do.
    """

    config: ConformerConfig
    params: dict
    molecules: dict[str, str]
    metadata: dict
    path: str | None = None

    @property
    def sigma_min(self) -> float:
        return self.config.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.config.sigma_max

    def fits(self, atoms: Atoms | MoleculeGraph) -> bool:
        """Whether this prior knows the molecule (same bond graph, any atom order) and it is small enough."""
        graph = as_graph(atoms)
        return len(graph) <= self.config.max_atoms and graph.key in self.molecules

    def head(self, atoms: Atoms | MoleculeGraph) -> tuple[dict, np.ndarray, np.ndarray]:
        """The molecule's pair MLP (``PairContext`` output, float32 numpy) and its pairs i < j (P,), (P,).

        Raises:
            ValueError: the prior was not trained on this molecule.
        """
        graph = as_graph(atoms)
        if not self.fits(graph):
            known = ", ".join(f"{name} ({key})" for key, name in sorted(self.molecules.items()))
            raise ValueError(
                f"this conformer prior was not trained on {graph.formula} ({graph.key}, {len(graph)} atoms); it "
                f"knows {known} (at most {self.config.max_atoms} atoms)"
            )
        inputs = graph_inputs(graph)
        head = jax.tree.map(np.asarray, _context(self.params, inputs, config=self.config))
        # Equivalent pairs get equal contexts only up to float32 rounding (neighbour sums in another order): one
        # representative per orbit of the automorphisms makes the energy exactly invariant to relabelling.
        i, j = inputs["pair_i"], inputs["pair_j"]
        index = np.zeros((len(graph), len(graph)), np.int64)
        index[i, j] = index[j, i] = np.arange(len(i))
        images = np.stack([index[perm[i], perm[j]] for perm in graph.automorphisms()])  # (n_perm, P)
        representative = images.min(axis=0)
        for key in PAIR_KEYS:
            head[key] = np.take(head[key], representative, axis=-2)
        return head, i, j

    def energy_fn(self, atoms: Atoms | MoleculeGraph) -> PairEnergy:
        """E(x, sigma) -> (...) of structures x (..., n_atoms, 3) in A and a noise level sigma in A (a scalar or one
        per structure), in the dtype of x: -log p_sigma(x) up to a constant per sigma. A pure JAX pytree callable
        (jit/vmap/grad-friendly; pass it to jitted functions as an argument); the graph network runs once, here."""
        head, pair_i, pair_j = self.head(atoms)
        return PairEnergy(head, pair_i, pair_j, self.config)

    def energy_table(
        self, atoms: Atoms | MoleculeGraph, sigmas, *, spacing: float = 0.02, d_max: float = 12.0
    ) -> PairTable:
        """The energy at the noise levels ``sigmas`` (L,) A tabulated per pair, every ``spacing`` A from 0.05 A to
        ``d_max`` A: a ``PairTable`` called as ``table(x, level)``, E(x, sigmas[level]) to within ~1e-4 per pair
        (cubic Hermite on exact values and slopes), linear beyond the grid. Cached per molecule and levels."""
        graph = as_graph(atoms)
        key = (graph.numbers.tobytes(), graph.bonds.tobytes(), tuple(float(v) for v in sigmas), spacing, d_max)

        def build():
            head, pair_i, pair_j = self.head(graph)
            d_min = 0.05
            grid = d_min + spacing * np.arange(int(np.ceil((d_max - d_min) / spacing)) + 1)
            values, slopes = _tabulate(
                head, jnp.asarray(grid, jnp.float32), jnp.asarray(key[2], jnp.float32), config=self.config
            )
            sigmas = jnp.asarray(key[2], jnp.float32)
            return PairTable(values, slopes, head["log_components"], pair_i, pair_j, sigmas, d_min, spacing)

        return self._cached("_tables", key, build)  # a few MB each

    def energy(self, x, atoms: Atoms | MoleculeGraph, sigma: float | None = None) -> np.ndarray:
        """E(x, sigma) (...) for x (..., n_atoms, 3) in A (default sigma: ``sigma_min``)."""
        x = jnp.asarray(x)
        return np.asarray(self.energy_fn(atoms)(x, self.sigma_min if sigma is None else sigma))

    def score(self, x, atoms: Atoms | MoleculeGraph, sigma: float | None = None) -> np.ndarray:
        """The score grad_x log p_sigma(x) = -grad_x E, (..., n_atoms, 3) in 1/A (default sigma: ``sigma_min``)."""
        energy = self.energy_fn(atoms)
        sigma = self.sigma_min if sigma is None else sigma
        return np.asarray(-jax.grad(lambda v: jnp.sum(energy(v, sigma)))(jnp.asarray(x)))

    def sample(
        self,
        key: jax.Array,
        atoms: Atoms | MoleculeGraph,
        n: int,
        *,
        steps: int = 300,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        snr: float = 0.1,
        tables: bool = False,
    ) -> np.ndarray:
        """n unconditional samples (n, n_atoms, 3) in A (float32 precision): from the reference geometry plus
        sigma_max noise (default: the prior's), ``steps`` noise levels geometric down to ``sigma_min`` (default:
        the prior's), each a reverse-diffusion step and a Langevin corrector step (see ``annealed_sampling``).

        tables: read the energy from per-pair tables at those levels (:meth:`energy_table`, built once per molecule
        and schedule, then cached) instead of the network: ~12x cheaper per step, for many samples (2048 CHD
        samples at 100 levels: 1.5 s against 18 s on 2 CPU cores, the tables' first build 3 s more); the same
        distribution to within the tables' ~1e-4 per pair."""
        graph = as_graph(atoms)
        top, bottom = sigma_max or self.config.sigma_max, sigma_min or self.config.sigma_min
        sigmas = np.geomspace(top, bottom, max(int(steps), 2))
        k0, k1 = jax.random.split(key)
        x0 = jnp.asarray(graph.positions, jnp.float32) + sigmas[0] * jax.random.normal(k0, (n, len(graph), 3))
        if tables:
            out = _sample_table(self.energy_table(graph, sigmas), x0, k1, snr=snr)
        else:
            head, pair_i, pair_j = self.head(graph)
            out = _sample(head, pair_i, pair_j, x0, jnp.asarray(sigmas, jnp.float32), k1, config=self.config, snr=snr)
        return np.asarray(out, np.float64)

    def bank(self, key: jax.Array, atoms: Atoms | MoleculeGraph, n: int, *, steps: int = 100) -> np.ndarray:
        """``sample(key, atoms, n, steps=steps, tables=True)``, cached per molecule, key, n and steps (the latest
        few): a set of prior draws that many retrieval calls share (``xfit.Posterior``'s ``n_bank``), drawn once per
        process. Returns (n, n_atoms, 3) in A; the caller must not write to it."""
        graph = as_graph(atoms)
        cache_key = (
            graph.numbers.tobytes(),
            graph.bonds.tobytes(),
            np.asarray(jax.random.key_data(key)).tobytes(),
            int(n),
            int(steps),
        )

        def build():
            out = self.sample(key, graph, n, steps=steps, tables=True)
            out.setflags(write=False)
            return out

        return self._cached("_banks", cache_key, build)

    def _cached(self, name: str, key, build):
        """``build()`` kept in this prior's own cache ``name`` under ``key`` (its weights never change), the latest
        four per cache."""
        cache = self.__dict__.setdefault(name, {})
        if key not in cache:
            value = build()
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = value
        return cache[key]


@functools.partial(jax.jit, static_argnames=("config", "snr"))
def _sample(head, pair_i, pair_j, x0, sigmas, key, *, config, snr):
    """``annealed_sampling`` compiled once per molecule size and config (the weights are arguments, not
    constants)."""

    def energy(x, s):
        return pair_energy(head, x, s, pair_i, pair_j, config)

    return annealed_sampling(energy, x0, sigmas, key, snr=snr)


@functools.partial(jax.jit, static_argnames="snr")
def _sample_table(table, x0, key, *, snr):
    """``annealed_sampling`` on a ``PairTable``, one level per table level (compiled once per molecule size)."""
    levels = jnp.arange(len(table.sigmas))
    return annealed_sampling(table, x0, table.sigmas, key, snr=snr, levels=levels)


def annealed_sampling(energy, x0, sigmas, key, *, snr: float = 0.1, levels=None):
    """Predictor-corrector sampling (Song et al., ICLR 2021, variance-exploding SDE) from x0 (..., N, 3) at
    sigmas[0] down to sigmas[-1] (A). Predictor: the reverse-diffusion step x += (s_k^2 - s_{k+1}^2) score +
    sqrt(s_k^2 - s_{k+1}^2) z, which carries the mass between modes (CHD open vs closed) as the smoothed density
    sharpens, with no need to wait for Langevin to cross between them. Corrector: one Langevin step of size
    snr * s^2 at the new level (stable: the stiffest pair term has curvature ~ 1/(2 s^2) at most).

    ``energy(x, level)`` is called with ``levels`` (default: the sigmas themselves; a ``PairTable``'s indices)."""
    grad = jax.grad(lambda x, s: jnp.sum(energy(x, s)))
    sigmas = jnp.asarray(sigmas, x0.dtype)
    levels = sigmas if levels is None else jnp.asarray(levels)

    def level(carry, inputs):
        x, key = carry
        s, s_next, at, at_next = inputs
        key, k1, k2 = jax.random.split(key, 3)
        var = s**2 - s_next**2
        x = x - var * grad(x, at) + jnp.sqrt(var) * jax.random.normal(k1, x.shape, x.dtype)
        eta = snr * s_next**2
        x = x - eta * grad(x, at_next) + jnp.sqrt(2.0 * eta) * jax.random.normal(k2, x.shape, x.dtype)
        return (x, key), None

    inputs = (sigmas[:-1], sigmas[1:], levels[:-1], levels[1:])
    (x, _), _ = jax.lax.scan(level, (x0, key), inputs)
    return x


def save_conformer_prior(directory: str | os.PathLike, config: ConformerConfig, params, molecules, metadata) -> None:
    """Write ``directory/conformer.json`` (config, molecules {graph key: name}, metadata) and ``params.msgpack``
    (flax serialisation), each atomically."""
    from flax import serialization

    from xfit._io import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        Path(tmp).write_bytes(serialization.to_bytes(jax.device_get(params)))
    info = {"config": dataclasses.asdict(config), "molecules": dict(molecules), "metadata": metadata}
    with atomic_path(directory / CONFIG_FILE) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def load_conformer_prior(name_or_path: str | os.PathLike | None = None) -> ConformerPrior:
    """A conformer prior from a folder written by ``xfit train-prior``, or a shipped one by name ("conformer", the
    default, in ``xfit/weights/``).

    Raises:
        FileNotFoundError: no such folder, or one of its files missing. ValueError: a corrupt file (named).
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
        molecules = dict(info["molecules"])
    except (ValueError, KeyError, TypeError) as err:
        file = directory / CONFIG_FILE
        raise ValueError(f"corrupt conformer prior file {file} ({type(err).__name__}: {err})") from None
    # Shapes only (eval_shape): running the initialisers would compile and run every layer op by op, seconds per load.
    template = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
    try:
        params = serialization.from_bytes(template, (directory / WEIGHTS_FILE).read_bytes())
    except Exception as err:  # msgpack raises several unrelated types on bad bytes
        raise ValueError(
            f"corrupt conformer prior file {directory / WEIGHTS_FILE} ({type(err).__name__}: {err})"
        ) from None
    shapes = jax.tree.map(lambda leaf: tuple(leaf.shape), template)
    if jax.tree.structure(params) != jax.tree.structure(template) or jax.tree.map(np.shape, params) != shapes:
        raise ValueError(f"corrupt conformer prior file {directory / WEIGHTS_FILE}: weights do not match the config")
    return ConformerPrior(config, params, molecules, info.get("metadata", {}), str(directory))
