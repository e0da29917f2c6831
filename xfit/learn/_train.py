"""Training the prior (``xfit.learn._proposal``) on HDF5 pools streamed from disk.

Each step draws one pool (all pools equally often, so that a 3,000-structure reaction sweep weighs as much as a
65,000-structure Wigner pool), takes the next batch of its shuffled stream, and augments it on the host:

- noise: Gaussian, a relative level drawn log-uniformly per pattern (``noise``);
- q range: a random window [q_lo, q_hi] per pattern (``q_low``, ``q_high``), masked outside, so one network
  reads a 39-point NMM pattern to 4.4 1/A as well as a CHD pattern to 8 1/A;
- reference geometry: the pool's force-field minimum plus Gaussian jitter (``reference_jitter``), so that the
  network does not learn one exact ground state (users bring their own, e.g. a Hartree-Fock geometry).

Loss (``loss="invariant"``), per hypothesis k:
    L_k = min over graph automorphisms pi of  sum_ij w_ij (d^k_ij - d^true_pi(i)pi(j))^2 / sum_ij w_ij
with distances d in A and weights w (1 heavy-heavy, 0.5 heavy-H, 0.2 H-H): invariant to rotation, translation,
reflection and relabelling of equivalent atoms. Winner-take-all: min_k L_k + spread_weight * mean_k L_k (the
small second term keeps every hypothesis trained). The scores learn which hypothesis wins (cross-entropy). The
physics term runs the IAM on the winner (``_iam.padded_intensity``: ``xfit.intensity`` with the scattering factors
passed as data, so one compiled step serves every molecule) and compares its relative signal with the clean
input's (squared mismatch over the squared signal, floored at 0.1 % noise). ``loss="coordinates"`` is the original
project's unaligned coordinate MSE (benchmarks only).

Everything is a function of (seed, step): the pool drawn, the augmentation, the batch. A checkpoint holds the
weights, the optimiser state, the step and how many batches each pool gave, so a resumed run continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase import Atoms

from xfit.chem._pool import iterate_pool
from xfit.learn import _proposal
from xfit.physics import _iam

__all__ = ["TrainConfig", "train"]

CHECKPOINT_FILE = "checkpoint.msgpack"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and augmentation settings (stored with the prior). Lengths in A, q in 1/A."""

    steps: int = 20000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup: int = 500
    weight_decay: float = 1e-4
    seed: int = 0
    noise: tuple[float, float] = (1e-4, 3e-3)
    q_low: tuple[float, float] = (0.2, 1.0)
    q_high: tuple[float, float] = (4.0, 8.0)
    reference_jitter: float = 0.01
    physics_weight: float = 0.1
    spread_weight: float = 0.05
    score_weight: float = 0.1
    loss: str = "invariant"
    checkpoint_every: int = 500

    def __post_init__(self):
        if self.loss not in ("invariant", "coordinates"):
            raise ValueError(f"loss must be 'invariant' or 'coordinates', got {self.loss!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")


@dataclasses.dataclass
class _Source:
    """One pool: its molecule, padded network inputs, automorphisms and batch stream."""

    path: str
    name: str
    atoms: Atoms
    q: np.ndarray
    inputs: dict
    perms: np.ndarray
    weights: np.ndarray
    factors: np.ndarray  # (max_atoms, n_q) X-ray f0 on the network's grid, for the physics term
    incoherent: np.ndarray  # (n_q,)
    attrs: dict
    stream: Iterator | None = None
    drawn: int = 0


def _pair_weights(numbers: np.ndarray, max_atoms: int) -> np.ndarray:
    heavy = numbers > 1
    w = np.where(heavy[:, None] & heavy[None, :], 1.0, np.where(heavy[:, None] | heavy[None, :], 0.5, 0.2))
    np.fill_diagonal(w, 0.0)
    out = np.zeros((max_atoms, max_atoms), np.float32)
    out[: len(numbers), : len(numbers)] = w
    return out


def _open_sources(paths: Sequence[str | os.PathLike], config: _proposal.PriorConfig, limit: int) -> list[_Source]:
    sources = []
    for path in paths:
        path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"pool not found: {path}")
        with h5py.File(path, "r") as f:
            for name in ("positions", "patterns", "numbers", "q", "reference_positions"):
                if name not in f:
                    raise ValueError(f"{path} is not an xfit pool: no {name!r} dataset")
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            atoms = Atoms(numbers=f["numbers"][()], positions=f["reference_positions"][()])
            q = f["q"][()]
        if attrs.get("kind", "total") != "total" or attrs.get("probe", "xray") != "xray":
            raise ValueError(f"{path}: the prior trains on total X-ray patterns, this pool holds {attrs.get('kind')}")
        if not attrs.get("n_complete"):
            raise ValueError(f"{path}: the pool is empty")
        if q.min() > config.q_min + 1e-6 or q.max() < config.q_max - 1e-6:
            raise ValueError(
                f"{path}: its q grid {q.min():.3g}..{q.max():.3g} 1/A does not cover the network's "
                f"{config.q_min:.3g}..{config.q_max:.3g} 1/A"
            )
        factors, incoherent = _iam.padded_factors(atoms.numbers, config.q, config.max_atoms)
        sources.append(
            _Source(
                path=path,
                name=str(attrs.get("molecule", Path(path).stem)),
                atoms=atoms,
                q=q,
                inputs=_proposal.molecule_inputs(atoms, config.max_atoms),
                perms=_proposal.automorphisms(atoms, limit),
                weights=_pair_weights(atoms.numbers, config.max_atoms),
                factors=factors.astype(np.float32),
                incoherent=incoherent.astype(np.float32),
                attrs=attrs,
            )
        )
    return sources


def _stream(path: str, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless batches of exactly ``batch_size`` rows from a pool (reshuffled every epoch)."""
    held = None
    for part in iterate_pool(path, batch_size, seed=seed, epochs=1 << 30):
        held = part if held is None else {k: np.concatenate([held[k], part[k]]) for k in part}
        while held is not None and len(held["positions"]) >= batch_size:
            yield {k: v[:batch_size] for k, v in held.items()}
            rest = {k: v[batch_size:] for k, v in held.items()}
            held = rest if len(rest["positions"]) else None


def _padded_perms(perms: np.ndarray, n_perm: int, max_atoms: int) -> np.ndarray:
    out = np.broadcast_to(np.arange(max_atoms, dtype=np.int32), (n_perm, max_atoms)).copy()
    out[: len(perms), : perms.shape[1]] = perms
    return out


@partial(jax.jit, static_argnums=(0, 2))
def _reference_pattern(numbers: tuple, positions, q: tuple):
    # q static (a tuple): the pool's grid is known when tracing, so a uniform one takes the fast kernel.
    return _iam.intensity(numbers, positions, np.asarray(q), kind="total")


def _host_batch(source: _Source, raw: dict, config: _proposal.PriorConfig, train: TrainConfig, rng) -> dict:
    """Augment one raw pool batch into network inputs and targets (numpy, float32)."""
    n, b = len(source.atoms), train.batch_size
    grid = config.q
    reference = source.atoms.positions + rng.normal(0.0, train.reference_jitter, source.atoms.positions.shape)
    numbers = tuple(int(z) for z in source.atoms.numbers)
    with jax.enable_x64(False):
        pool_q = tuple(source.q.tolist())
        i_ref = np.asarray(_reference_pattern(numbers, jnp.asarray(reference, jnp.float32), pool_q), np.float64)
    clean = raw["patterns"].astype(np.float64)
    level = np.exp(rng.uniform(*np.log(train.noise), size=(b, 1)))
    noisy = clean * (1.0 + level * rng.standard_normal(clean.shape))
    lo = rng.uniform(*train.q_low, size=(b, 1))
    hi = rng.uniform(*train.q_high, size=(b, 1))
    window_pool = (source.q >= lo) & (source.q <= hi)
    rels = []
    for y in (noisy, clean):
        s = _proposal.fit_scale(y, i_ref, i_ref, window_pool)
        rel = (s * y - i_ref) / i_ref
        rels.append(
            np.stack([np.interp(grid, source.q, row) for row in rel])
            if len(source.q) != len(grid) or not np.allclose(source.q, grid)
            else rel
        )
    window = ((grid >= lo) & (grid <= hi)).astype(np.float64)
    percent = _proposal.PERCENT_SCALE * rels[0] * window
    features = np.stack(np.broadcast_arrays(percent, np.arcsinh(percent), window, grid / config.q_max), -1)
    mol = dict(source.inputs)
    centred = reference - reference.mean(axis=0)
    mol["reference"] = mol["reference"].copy()
    mol["reference"][:n] = centred
    targets = np.zeros((b, config.max_atoms, 3), np.float32)
    targets[:, :n] = raw["positions"] - raw["positions"].mean(axis=1, keepdims=True)
    i_ref_grid = np.interp(grid, source.q, i_ref)
    return {
        "features": features.astype(np.float32),
        "mol": {k: np.broadcast_to(v, (b, *v.shape)) for k, v in mol.items()},
        "targets": targets,
        "rel_clean": rels[1].astype(np.float32),
        "window": window.astype(np.float32),
        "i_ref": i_ref_grid.astype(np.float32),
    }


def _distances(x):
    diff = x[..., :, None, :] - x[..., None, :, :]
    sq = jnp.sum(diff**2, axis=-1)
    zero = sq <= 0.0  # the diagonal and pairs of padding atoms (all at the origin): keep their gradients finite
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def invariant_costs(predicted, target, perms, weights):
    """Distance-matrix costs (B, K) in A^2, minimised over the automorphisms.

    predicted (B, K, N, 3), target (B, N, 3) in A; perms (P, N) atom permutations; weights (N, N), zero on the
    diagonal and on padding atoms, and equal for atoms that the permutations exchange.
    """
    dp = _distances(predicted)
    dt = _distances(target)
    dt_perm = dt[:, perms[:, :, None], perms[:, None, :]]  # (B, P, N, N)
    # Choose the automorphism by the expanded square (one contraction), then score it exactly.
    cross = jnp.einsum("bkij,bpij->bkp", weights * dp, dt_perm)
    expanded = jnp.sum(weights * dt_perm**2, axis=(-2, -1))[:, None, :] - 2.0 * cross
    best = jax.lax.stop_gradient(jnp.argmin(expanded, axis=-1))  # (B, K)
    chosen = jnp.take_along_axis(dt_perm, best[..., None, None], axis=1)  # (B, K, N, N)
    return jnp.sum(weights * (dp - chosen) ** 2, axis=(-2, -1)) / jnp.sum(weights)


def _loss(params, batch, molecule, *, config, train: TrainConfig):
    x, logits = _proposal.PriorNet(config).apply({"params": params}, batch["features"], **batch["mol"])
    mask = batch["mol"]["atom_mask"][:, None, :, None]
    if train.loss == "coordinates":
        cost = jnp.sum(mask * (x - batch["targets"][:, None]) ** 2, axis=(-2, -1)) / jnp.sum(mask[:, 0])
        fit = cost[:, 0]
        return jnp.mean(fit), {"loss": jnp.mean(fit), "rmsd": jnp.mean(jnp.sqrt(fit)), "physics": 0.0}
    cost = invariant_costs(x, batch["targets"], molecule["perms"], molecule["weights"])
    winner = jnp.argmin(cost, axis=-1)
    fit = jnp.min(cost, axis=-1)
    loss = jnp.mean(fit + train.spread_weight * jnp.mean(cost, axis=-1))
    score = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jax.lax.stop_gradient(winner)))
    loss = loss + train.score_weight * score
    physics = jnp.zeros(())
    if train.physics_weight > 0:
        # Factors as data (padded_intensity), so that one compiled step serves every molecule.
        best = jnp.take_along_axis(x, winner[:, None, None, None], axis=1)[:, 0]
        i = _iam.padded_intensity(best, jnp.asarray(config.q, x.dtype), molecule["factors"], molecule["incoherent"])
        w = batch["window"] / batch["i_ref"] ** 2
        s = jnp.sum(w * i * batch["i_ref"], -1, keepdims=True) / jnp.sum(w * i * i, -1, keepdims=True)
        rel = (s * i - batch["i_ref"]) / batch["i_ref"]
        # Mismatch relative to the signal's own size (floor: 0.1 % noise), so that a ring opening with a 30 %
        # signal and a 0.5 % vibration weigh alike.
        mismatch = jnp.sum(batch["window"] * (rel - batch["rel_clean"]) ** 2, -1)
        signal = jnp.sum(batch["window"] * batch["rel_clean"] ** 2, -1) + 1e-6 * jnp.sum(batch["window"], -1)
        physics = jnp.mean(mismatch / signal)
        loss = loss + train.physics_weight * physics
    return loss, {"loss": loss, "rmsd": jnp.mean(jnp.sqrt(fit)), "physics": physics}


def _optimizer(train: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, min(train.warmup, train.steps // 5), train.steps, train.learning_rate * 0.02
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=train.weight_decay))


@partial(jax.jit, static_argnames=("config", "train"), donate_argnums=(0, 1))
def _step(params, opt_state, batch, molecule, *, config, train):
    grad_fn = jax.value_and_grad(_loss, has_aux=True)
    (_, metrics), grads = grad_fn(params, batch, molecule, config=config, train=train)
    updates, opt_state = _optimizer(train).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


def _identity(config: _proposal.PriorConfig, train: TrainConfig, sources: list[_Source]) -> str:
    pools = [{"path": os.path.abspath(s.path), "config": s.attrs.get("config", "")} for s in sources]
    return json.dumps(
        {"prior": dataclasses.asdict(config), "train": dataclasses.asdict(train), "pools": pools}, sort_keys=True
    )


def _save_checkpoint(directory: Path, identity: str, step: int, params, opt_state, sources) -> None:
    from flax import serialization

    from xfit._io import atomic_path

    state = {
        "params": params,
        "opt_state": opt_state,
        "step": step,
        "drawn": {str(k): s.drawn for k, s in enumerate(sources)},
        "identity": identity,
    }
    with atomic_path(directory / CHECKPOINT_FILE) as tmp:
        Path(tmp).write_bytes(serialization.to_bytes(jax.device_get(state)))


def _load_checkpoint(directory: Path, identity: str, params, opt_state, sources):
    from flax import serialization

    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    raw = serialization.msgpack_restore(path.read_bytes())
    if raw.get("identity") != identity:
        raise ValueError(
            f"{path} belongs to a different training run (other pools or settings); remove it or choose another "
            "output folder"
        )
    template = {
        "params": params,
        "opt_state": opt_state,
        "step": 0,
        "drawn": {str(k): 0 for k in range(len(sources))},
        "identity": identity,
    }
    return serialization.from_state_dict(template, raw)


def _molecule_data(sources, config: _proposal.PriorConfig) -> list[dict]:
    """Per pool, the device arrays the loss needs: padded automorphisms (a power of two of them, so that pools
    share one compiled step), pattern weights and the scattering factors as data."""
    n_perm = int(2 ** np.ceil(np.log2(max(len(s.perms) for s in sources))))
    return [
        {
            "perms": jnp.asarray(_padded_perms(s.perms, n_perm, config.max_atoms)),
            "weights": jnp.asarray(s.weights),
            "factors": jnp.asarray(s.factors),
            "incoherent": jnp.asarray(s.incoherent),
        }
        for s in sources
    ]


def _initial_state(output: Path, identity: dict, sources, config, train_config: TrainConfig):
    """(params, opt_state, first step): fresh, or from ``output``'s checkpoint of the same run, whose pool streams
    are replayed to where it left them (so that a resumed run is identical to an uninterrupted one)."""
    params = _proposal.init_params(config, jax.random.key(train_config.seed))
    opt_state = _optimizer(train_config).init(params)
    start = 0
    restored = _load_checkpoint(output, identity, params, opt_state, sources)
    if restored is not None:
        params, opt_state, start = restored["params"], restored["opt_state"], int(restored["step"])
        for k, s in enumerate(sources):
            s.drawn = int(restored["drawn"][str(k)])
    for k, s in enumerate(sources):
        s.stream = _stream(s.path, train_config.batch_size, train_config.seed * 1000 + k)
        for _ in range(s.drawn):
            next(s.stream)
    return params, opt_state, start


def _metadata(sources, train_config: TrainConfig, history: list, examples_per_second: float) -> dict:
    """What a finished prior records about its training: settings, pools, loss history, speed, version, date."""
    import xfit

    return {
        "train": dataclasses.asdict(train_config),
        "pools": [
            {
                "path": s.path,
                "molecule": s.name,
                "sampler": s.attrs.get("sampler"),
                "n": int(s.attrs.get("n_complete", 0)),
                "config": s.attrs.get("config", ""),
            }
            for s in sources
        ],
        "automorphisms": {s.name: len(s.perms) for s in sources},
        "history": history[-200:],
        "examples_per_second": examples_per_second,
        "xfit_version": xfit.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def train(
    pools: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    config: _proposal.PriorConfig | None = None,
    train_config: TrainConfig | None = None,
    max_automorphisms: int = 256,
    progress: bool | Callable[[int, dict], None] = False,
    any_molecule: bool = False,
) -> _proposal.Prior:
    """Train a prior on one or more pools and write it to ``output`` (a folder, see ``xfit.load_prior``).

    A checkpoint is written to ``output/checkpoint.msgpack`` every ``train_config.checkpoint_every`` steps; calling
    again with the same pools and settings resumes from it, and the result is identical to an uninterrupted run.
    The finished prior (``prior.json`` + ``params.msgpack``) is written only at the end, atomically.

    Args:
        pools: HDF5 pools from ``xfit.build_pool`` (total X-ray patterns on a q grid covering the network's).
        output: folder for the checkpoint and the finished prior.
        config: the network (default ``PriorConfig()``); train_config: optimisation and augmentation (default
            ``TrainConfig()``).
        max_automorphisms: cap on the atom permutations the loss minimises over, per molecule.
        progress: True for a progress bar (stderr), or a callback(step, metrics) called after every step.
        any_molecule: mark the result as a broad prior that serves any molecule of its training elements (up to
            ``config.max_atoms`` atoms), not only its training molecules: for networks trained on many molecules,
            whose use on unseen ones has been checked (``benchmarks/prior.py``, section 5).

    Returns:
        The trained :class:`xfit.Prior`.
    """
    if not pools:
        raise ValueError("no pools given")
    config = config or _proposal.PriorConfig()
    train_config = train_config or TrainConfig()
    output = Path(output)
    sources = _open_sources(pools, config, max_automorphisms)
    molecule_data = _molecule_data(sources, config)
    identity = _identity(config, train_config, sources)
    output.mkdir(parents=True, exist_ok=True)
    params, opt_state, start = _initial_state(output, identity, sources, config, train_config)

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_config.steps, initial=start, desc="train", unit="step")
    history = []
    t0, examples = time.perf_counter(), 0
    metrics: dict = {}
    for step in range(start, train_config.steps):
        rng = np.random.default_rng([train_config.seed, step])
        k = int(rng.integers(len(sources)))
        source = sources[k]
        raw = next(source.stream)
        source.drawn += 1
        batch = _host_batch(source, raw, config, train_config, rng)
        params, opt_state, out = _step(params, opt_state, batch, molecule_data[k], config=config, train=train_config)
        examples += train_config.batch_size
        logged = (step + 1) % 50 == 0 or step + 1 == train_config.steps
        if logged or callable(progress):
            metrics = {name: float(v) for name, v in out.items()}
        if logged:
            history.append({"step": step + 1, "pool": source.name, **metrics})
            if bar is not None:
                bar.set_postfix(rmsd=f"{metrics['rmsd']:.3f}", physics=f"{metrics['physics']:.3g}")
        if callable(progress):
            progress(step + 1, metrics)
        if bar is not None:
            bar.update(1)
        if (step + 1) % train_config.checkpoint_every == 0 and step + 1 < train_config.steps:
            _save_checkpoint(output, identity, step + 1, params, opt_state, sources)
    if bar is not None:
        bar.close()
    for s in sources:
        s.stream.close()
    seconds = time.perf_counter() - t0

    molecules = {}
    for s in sources:
        molecules.setdefault(_proposal.graph_key(s.atoms), s.name)
    metadata = _metadata(sources, train_config, history, examples / seconds if examples else 0.0)
    elements = sorted({int(z) for s in sources for z in s.atoms.numbers})
    _proposal.save_prior(
        output, config, params, molecules, metadata, any_molecule_of=elements if any_molecule else None
    )
    (output / CHECKPOINT_FILE).unlink(missing_ok=True)
    return _proposal.load_prior(output)
