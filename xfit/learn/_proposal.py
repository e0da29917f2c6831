"""The learned prior: a Flax network that proposes K candidate structures from a pattern and the atom list.

Why the original pattern -> coordinates regressors collapsed to the pool average, and what this network does
about each cause:

1. The pattern cannot fix rotation, translation, reflection or the labels of equivalent atoms, so an unaligned
   coordinate loss is minimised by the mean. Here the output is *equivariant*: each candidate is the reference
   geometry deformed along interatomic difference vectors, x_i + sum_j phi_ij u_ij (u_ij the unit vector from
   j to i in the reference, phi_ij learned scalars), and the loss (``xfit.learn._train``) compares interatomic
   distances, minimised over the molecule's graph automorphisms (equivalent hydrogens, ring symmetry).
2. One output cannot represent several structures that fit equally well. The network emits K hypotheses and is
   trained winner-take-all, plus a score per hypothesis (which one wins).
3. Patterns that differ by a few percent look identical to a network fed raw intensities. The input is the
   relative difference from the reference geometry's own pattern, (s I - I_ref) / I_ref_total with the scale s
   fitted, in percent, on a fixed q grid with a mask where the data have no points.

The network takes atoms as a set (no positional encoding: permuting the atoms permutes the output), with pair
features (reference distances, bond-graph hops) as attention biases, and cross-attends to the pattern tokens of a
1D CNN (or, as the ablation the original project planned, a bidirectional GRU). One network serves molecules of
different sizes through padding and masks.

Convention: q = 4 pi sin(theta)/lambda in 1/A for every q here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from xfit.chem._graph import MAX_HOPS, MoleculeGraph
from xfit.physics import _iam

__all__ = ["Prior", "PriorConfig", "PriorNet", "graph_key", "load_prior", "molecule_inputs", "relative_signal"]

N_RBF = 16
RBF_MAX = 8.0  # A: reference distances beyond this look alike to the network
PERCENT_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Hyperparameters that define a prior network (stored beside its weights).

    q_min, q_max, n_q: the network's q grid (1/A, q = 4 pi sin(theta)/lambda); patterns are resampled onto it.
    n_hypotheses: K candidates per pattern. max_atoms: padding size (the largest molecule it accepts).
    encoder: "cnn" or "gru" (pattern encoder). decoder: "set" (attention over atoms, equivariant output) or
    "mlp" (the original project's design: a flat coordinate vector; for the mode-collapse benchmark only).
    """

    q_min: float = 0.2
    q_max: float = 8.0
    n_q: int = 128
    n_hypotheses: int = 8
    max_atoms: int = 32
    width: int = 64
    heads: int = 4
    blocks: int = 3
    encoder: str = "cnn"
    decoder: str = "set"

    def __post_init__(self):
        if self.encoder not in ("cnn", "gru"):
            raise ValueError(f"encoder must be 'cnn' or 'gru', got {self.encoder!r}")
        if self.decoder not in ("set", "mlp"):
            raise ValueError(f"decoder must be 'set' or 'mlp', got {self.decoder!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.n_hypotheses < 1 or self.max_atoms < 2:
            raise ValueError("n_hypotheses must be >= 1 and max_atoms >= 2")

    @property
    def q(self) -> np.ndarray:
        return np.linspace(self.q_min, self.q_max, self.n_q)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def _graph(atoms: Atoms | MoleculeGraph) -> MoleculeGraph:
    return atoms if isinstance(atoms, MoleculeGraph) else MoleculeGraph.from_atoms(atoms)


def graph_key(atoms: Atoms | MoleculeGraph) -> str:
    """Canonical SMILES of the molecule's bond graph (``MoleculeGraph.key``): the identity under which a prior knows
    a molecule, whatever the atom order or geometry."""
    return _graph(atoms).key


def automorphisms(atoms: Atoms | MoleculeGraph, limit: int = 256) -> np.ndarray:
    """Permutations (n_perm, n_atoms) that map the bond graph onto itself (``MoleculeGraph.automorphisms``)."""
    return np.array(_graph(atoms).automorphisms(limit))


def molecule_inputs(atoms: Atoms | MoleculeGraph, max_atoms: int) -> dict[str, np.ndarray]:
    """The atom-side inputs of the network, padded to ``max_atoms``: numbers (N,), reference positions (N, 3) in A
    centred on their mean, bond-graph hops (N, N) and the atom mask (N,)."""
    graph = _graph(atoms)
    n = len(graph)
    if n > max_atoms:
        raise ValueError(f"{graph.formula} has {n} atoms; this prior takes at most {max_atoms}")
    numbers = np.zeros(max_atoms, np.int32)
    numbers[:n] = graph.numbers
    positions = np.zeros((max_atoms, 3), np.float32)
    positions[:n] = graph.positions - graph.positions.mean(axis=0)
    hops = np.full((max_atoms, max_atoms), MAX_HOPS, np.int32)
    hops[:n, :n] = graph.hops
    mask = np.zeros(max_atoms, bool)
    mask[:n] = True
    return {"numbers": numbers, "reference": positions, "hops": hops, "atom_mask": mask}


def fit_scale(y: np.ndarray, i_ref: np.ndarray, i_total: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Closed-form scale s minimising sum ((s y - i_ref) / i_total)^2 over the mask; y (..., n_q)."""
    w = (1.0 / i_total**2) * (1.0 if mask is None else mask)
    return np.sum(w * y * i_ref, axis=-1, keepdims=True) / np.sum(w * y * y, axis=-1, keepdims=True)


def relative_signal(
    q: np.ndarray,
    values: np.ndarray,
    kind: str,
    i_ref: np.ndarray,
    i_ref_total: np.ndarray,
    *,
    fraction: float | None = None,
) -> np.ndarray:
    """The network's view of a pattern: the change from the reference, Delta I / I_ref_total, on the pattern's grid.

    Args:
        q: (n_q,) in 1/A, q = 4 pi sin(theta)/lambda.
        values: (..., n_q) the pattern; intensities of ``kind`` (total, elastic, molecular; scale arbitrary) or a
            percent difference 100 (I_on - I_off) / I_off.
        i_ref: (n_q,) the reference geometry's intensity of the same kind (for a percent difference, of the kind
            the difference was taken in). i_ref_total: (n_q,) its total intensity.
        fraction: excitation fraction of a percent difference (the signal is divided by it).

    Returns:
        (..., n_q) Delta I / I_ref_total of the (excited) molecule. In the IAM the Compton part does not depend on
        the structure, so this is the same number whichever kind was measured.
    """
    values = np.asarray(values, np.float64)
    if kind == "percent_difference":
        if fraction is None:
            raise ValueError("a percent-difference pattern needs an excitation fraction for the prior")
        return values / PERCENT_SCALE * i_ref / (fraction * i_ref_total)
    if kind in ("total", "elastic", "molecular"):
        s = fit_scale(values, i_ref, i_ref_total)
        return (s * values - i_ref) / i_ref_total
    raise ValueError(f"the prior reads total, elastic, molecular or percent-difference patterns, not {kind!r}")


def pattern_features(config: PriorConfig, q: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Resample a relative signal (..., n_q) on ``q`` onto the network grid: features (..., config.n_q, 4) =
    (percent, asinh(percent), mask, q / q_max), zero outside the measured q range."""
    grid = config.q
    inside = (grid >= q.min() - 1e-9) & (grid <= q.max() + 1e-9)
    flat = np.asarray(rel, np.float64).reshape(-1, len(q))
    resampled = np.stack([np.interp(grid, q, row) for row in flat]).reshape(*np.shape(rel)[:-1], len(grid))
    percent = PERCENT_SCALE * resampled * inside
    features = np.stack(
        np.broadcast_arrays(percent, np.arcsinh(percent), inside.astype(np.float64), grid / config.q_max), axis=-1
    )
    return features.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Network


def _rbf(d):
    centres = jnp.linspace(0.0, RBF_MAX, N_RBF)
    width = centres[1] - centres[0]
    return jnp.exp(-(((d[..., None] - centres) / width) ** 2))


class PatternEncoder(nn.Module):
    """Pattern features (B, n_q, 4) -> tokens (B, T, width) and a global vector (B, width)."""

    width: int
    kind: str = "cnn"

    @nn.compact
    def __call__(self, x):
        mask = x[..., 2:3]
        if self.kind == "cnn":
            h = nn.gelu(nn.Conv(32, (5,))(x))
            h = nn.gelu(nn.Conv(48, (5,), strides=(2,))(h))
            h = nn.gelu(nn.Conv(self.width, (5,), strides=(2,))(h))
            h = nn.gelu(nn.Conv(self.width, (3,))(h))
            mask = mask[:, ::4]
        else:
            h = nn.gelu(nn.Dense(32)(x))
            h = nn.Bidirectional(nn.RNN(nn.GRUCell(self.width // 2)), nn.RNN(nn.GRUCell(self.width // 2)))(h)
        pooled = jnp.sum(h * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        return h, nn.gelu(nn.Dense(self.width)(pooled))


def _attention(q, k, v, bias, mask):
    """q (B, Nq, H, d), k/v (B, Nk, H, d), bias (B, H, Nq, Nk) or None, mask (B, 1, 1, Nk) -> (B, Nq, H, d)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    logits = jnp.where(mask, logits, -1e9)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


class Block(nn.Module):
    """Atom self-attention with pair biases, cross-attention to the pattern, MLP; pre-norm residuals."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, h, pair, atom_mask, tokens):
        d = self.width // self.heads
        proj = lambda name: nn.DenseGeneral((self.heads, d), name=name)  # noqa: E731
        x = nn.LayerNorm()(h)
        bias = jnp.moveaxis(nn.Dense(self.heads)(pair), -1, 1)
        out = _attention(proj("q")(x), proj("k")(x), proj("v")(x), bias, atom_mask[:, None, None, :])
        h = h + nn.DenseGeneral(self.width, axis=(-2, -1))(out)
        x = nn.LayerNorm()(h)
        t = nn.LayerNorm()(tokens)
        ones = jnp.ones((tokens.shape[0], 1, 1, tokens.shape[1]), bool)
        out = _attention(proj("cq")(x), proj("ck")(t), proj("cv")(t), None, ones)
        h = h + nn.DenseGeneral(self.width, axis=(-2, -1))(out)
        x = nn.LayerNorm()(h)
        return h + nn.Dense(self.width)(nn.gelu(nn.Dense(2 * self.width)(x)))


class PriorNet(nn.Module):
    """Pattern + molecule -> K candidate structures and their scores.

    Call with features (B, n_q, 4) from ``pattern_features`` and the padded molecule inputs of
    ``molecule_inputs`` with a leading batch axis: numbers (B, N), reference (B, N, 3) in A, hops (B, N, N),
    atom_mask (B, N). Returns positions (B, K, N, 3) in A (padding atoms at the origin) and logits (B, K).
    """

    config: PriorConfig

    @nn.compact
    def __call__(self, features, numbers, reference, hops, atom_mask):
        c = self.config
        tokens, pooled = PatternEncoder(c.width, c.encoder)(features)
        if c.decoder == "mlp":  # the original project's regressor: one flat coordinate vector, no symmetry
            h = nn.gelu(nn.Dense(4 * c.width)(jnp.concatenate([pooled, tokens.reshape(tokens.shape[0], -1)], -1)))
            h = nn.gelu(nn.Dense(4 * c.width)(h))
            x = nn.Dense(c.max_atoms * 3)(h).reshape(-1, 1, c.max_atoms, 3)
            x = (reference[:, None] + x) * atom_mask[:, None, :, None]
            return x, jnp.zeros(x.shape[:2])
        pair_mask = atom_mask[:, :, None] & atom_mask[:, None, :]
        diff = reference[:, :, None, :] - reference[:, None, :, :]
        off_diagonal = pair_mask & ~jnp.eye(c.max_atoms, dtype=bool)
        d = jnp.sqrt(jnp.sum(diff**2, axis=-1) + jnp.where(off_diagonal, 0.0, 1.0))
        pair = jnp.concatenate([_rbf(d), jax.nn.one_hot(hops, MAX_HOPS + 1)], axis=-1)
        pair = nn.gelu(nn.Dense(32)(pair))

        h = nn.Embed(120, c.width)(numbers) + nn.Dense(c.width)(pooled)[:, None]
        for _ in range(c.blocks):
            h = Block(c.width, c.heads)(h, pair, atom_mask, tokens)
        h = nn.LayerNorm()(h)

        # Equivariant coordinate head: per pair and hypothesis a signed length along the reference unit vector.
        a = nn.Dense(c.width)(h)[:, :, None] + nn.Dense(c.width)(h)[:, None, :] + nn.Dense(c.width)(pair)
        phi = nn.Dense(c.n_hypotheses, kernel_init=nn.initializers.zeros)(nn.gelu(a))  # (B, N, N, K)
        phi = phi * off_diagonal[..., None]
        unit = diff / d[..., None]
        x = reference[:, None] + jnp.einsum("bijk,bijc->bkic", phi, unit)
        x = x * atom_mask[:, None, :, None]
        summary = jnp.concatenate([jnp.sum(h * atom_mask[..., None], 1) / jnp.sum(atom_mask, 1)[:, None], pooled], -1)
        logits = nn.Dense(c.n_hypotheses)(nn.gelu(nn.Dense(c.width)(summary)))
        return x, logits


# ----------------------------------------------------------------------------------------------------------------
# The user-facing object


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
    """A trained prior: its network config, weights and the molecules it was trained on.

    ``molecules`` maps graph keys (see ``graph_key``) to names; ``metadata`` records how it was trained.
    ``any_molecule_of``: for a broad prior, the atomic numbers of the molecules it claims to serve beyond those it
    was trained on (any molecule of these elements up to ``config.max_atoms`` atoms); None for a prior of its
    training molecules only.
    """

    config: PriorConfig
    params: dict
    molecules: dict[str, str]
    metadata: dict
    path: str | None = None
    any_molecule_of: tuple[int, ...] | None = None

    def fits(self, atoms: Atoms | MoleculeGraph) -> bool:
        """Whether the prior serves this molecule: one it was trained on (same bond graph; atom order does not
        matter), or, for a broad prior, any molecule of its elements that is small enough."""
        if len(atoms) > self.config.max_atoms:
            return False
        if self.any_molecule_of is not None:
            return set(int(z) for z in atoms.numbers) <= set(self.any_molecule_of)
        return graph_key(atoms) in self.molecules

    def propose(
        self,
        q: np.ndarray,
        values: np.ndarray,
        kind: str,
        atoms: Atoms,
        *,
        fraction: float | None = None,
        model_kind: str = "total",
    ) -> tuple[np.ndarray, np.ndarray]:
        """K candidate structures for each pattern.

        Args:
            q: (n_q,) in 1/A, q = 4 pi sin(theta)/lambda. values: (n_q,) or (T, n_q), see ``relative_signal``.
            kind: the patterns' kind. atoms: the molecule and its reference (ground-state) geometry.
            fraction: excitation fraction of percent-difference patterns.
            model_kind: the intensity kind a percent difference was taken in.

        Returns:
            positions (T, K, n_atoms, 3) in A, in the frame of ``atoms`` (centred as it is), and scores (T, K),
            the network's probabilities that each hypothesis is the best.
        """
        values = np.atleast_2d(values)
        numbers = atoms.numbers
        ref = jnp.asarray(atoms.positions, jnp.float32)
        ref_kind = model_kind if kind == "percent_difference" else kind
        with jax.enable_x64(False):
            i_ref = np.asarray(_iam.intensity(numbers, ref, q, kind=ref_kind), np.float64)
            i_tot = np.asarray(_iam.intensity(numbers, ref, q, kind="total"), np.float64)
        rel = relative_signal(q, values, kind, i_ref, i_tot, fraction=fraction)
        features = pattern_features(self.config, np.asarray(q, np.float64), rel)
        inputs = molecule_inputs(atoms, self.config.max_atoms)
        batch = {k: np.broadcast_to(v, (len(values), *v.shape)) for k, v in inputs.items()}
        with jax.enable_x64(False):
            x, logits = _apply(self.config, self.params, features, batch)
        centre = atoms.positions.mean(axis=0)
        positions = np.asarray(x, np.float64)[:, :, : len(atoms)] + centre
        return positions, np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)


@partial(jax.jit, static_argnums=0)
def _apply(config: PriorConfig, params, features, batch):
    return PriorNet(config).apply(
        {"params": params}, features, batch["numbers"], batch["reference"], batch["hops"], batch["atom_mask"]
    )


def init_params(config: PriorConfig, key: jax.Array) -> dict:
    """Fresh network weights for ``config`` (float32)."""
    n = config.max_atoms
    return PriorNet(config).init(
        key,
        jnp.zeros((1, config.n_q, 4)),
        jnp.ones((1, n), jnp.int32),
        jnp.zeros((1, n, 3)) + jnp.arange(n)[None, :, None],
        jnp.zeros((1, n, n), jnp.int32),
        jnp.ones((1, n), bool),
    )["params"]


WEIGHTS_FILE = "params.msgpack"
CONFIG_FILE = "prior.json"


def save_prior(
    directory: str | os.PathLike,
    config: PriorConfig,
    params,
    molecules: dict,
    metadata: dict,
    *,
    any_molecule_of: Sequence[int] | None = None,
) -> None:
    """Write a prior as ``directory/prior.json`` (config, molecules, metadata, and ``any_molecule_of`` for a broad
    prior, see :class:`Prior`) and ``params.msgpack`` (flax serialisation), each replaced atomically."""
    from flax import serialization

    from xfit._io import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        Path(tmp).write_bytes(serialization.to_bytes(jax.device_get(params)))
    info = {"config": dataclasses.asdict(config), "molecules": molecules, "metadata": metadata}
    if any_molecule_of is not None:
        info["any_molecule_of"] = sorted(int(z) for z in any_molecule_of)
    text = json.dumps(info, indent=1, sort_keys=True)
    with atomic_path(directory / CONFIG_FILE) as tmp:
        Path(tmp).write_text(text + "\n")


SHIPPED = ("nmm_chd_dt", "broad")
"""The priors shipped in ``xfit/weights``: NMM, CHD and DT; and a broad one (32 small molecules of H, C, N, O, S)."""


def load_prior(path: str | os.PathLike | None = None) -> Prior:
    """Load a prior directory written by ``xfit train``, or a shipped prior by name (see ``SHIPPED``; default
    "nmm_chd_dt")."""
    from flax import serialization

    if path is None or (str(path) in SHIPPED and not Path(path).is_dir()):
        directory = Path(__file__).parents[1] / "weights" / str(path or SHIPPED[0])
    else:
        directory = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a prior: {name} is missing")
    info = json.loads((directory / CONFIG_FILE).read_text())
    config = PriorConfig(**info["config"])
    # Shapes only (eval_shape): running the initialisers would compile and run every layer op by op, seconds per load.
    template = jax.eval_shape(partial(init_params, config), jax.random.key(0))
    params = serialization.from_bytes(template, (directory / WEIGHTS_FILE).read_bytes())
    broad = info.get("any_molecule_of")
    return Prior(
        config, params, info["molecules"], info["metadata"], str(directory), None if broad is None else tuple(broad)
    )
