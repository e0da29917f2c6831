"""Training the conformer prior (``xfit.learn._conformer``) by denoising score matching on xfit's own pools.

Each step draws one pool (every pool equally often, so that a 3,000-structure reaction sweep weighs as much as a
65,000-structure Wigner pool), a batch of its structures and a noise level per structure, log-uniform in
[sigma_min, sigma_max]; the loss is |sigma grad_x E(x0 + sigma eps, sigma) - eps|^2 per atom, with eps and the
score's centre-of-mass components removed (translations carry no information). Everything is a function of
(seed, step), and a checkpoint (weights, optimiser state, step) every ``checkpoint_every`` steps lets the same
call resume exactly where it stopped; the finished prior is written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase import Atoms

from xfit.chem._graph import MoleculeGraph
from xfit.learn import _conformer

__all__ = ["ConformerTrainConfig", "train_conformer_prior"]

CHECKPOINT_FILE = "checkpoint.msgpack"


@dataclasses.dataclass(frozen=True)
class ConformerTrainConfig:
    """Optimisation settings (stored with the prior)."""

    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 3e-3
    warmup: int = 200
    weight_decay: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")


@dataclasses.dataclass
class _Pool:
    path: str
    name: str
    graph: MoleculeGraph
    positions: np.ndarray  # (N, n_atoms, 3) float32
    inputs: dict
    sampler: str


def _open(path: str, config: _conformer.ConformerConfig) -> _Pool:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pool not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            for name in ("positions", "numbers", "reference_positions"):
                if name not in f:
                    raise ValueError(f"{path} is not an xfit pool: no {name!r} dataset")
            positions = np.asarray(f["positions"][()], np.float32)
            atoms = Atoms(numbers=f["numbers"][()], positions=f["reference_positions"][()])
            attrs = dict(f.attrs)
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 pool ({err})") from None
    if len(positions) == 0:
        raise ValueError(f"{path}: the pool is empty")
    graph = MoleculeGraph.from_atoms(atoms)
    return _Pool(
        path=path,
        name=str(attrs.get("molecule", Path(path).stem)),
        graph=graph,
        positions=positions,
        inputs=_conformer.pair_inputs(graph, config.max_atoms),
        sampler=str(attrs.get("sampler", "")),
    )


def _optimizer(train: ConformerTrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, min(train.warmup, train.steps // 5), train.steps, train.learning_rate * 0.02
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=train.weight_decay))


def _loss(params, x0, eps, sigma, inputs, *, config):
    logits, centres, log_widths = _conformer.PairMixtures(config).apply({"params": params}, **inputs)
    mask = inputs["mask"]
    pair_mask = mask[:, None] & mask[None, :] & ~jnp.eye(mask.shape[0], dtype=bool)

    def energy(x, s):
        return _conformer.mixture_energy(x, s, logits, centres, log_widths, pair_mask)

    x = x0 + sigma[:, None, None] * eps
    grad = jax.grad(lambda v: jnp.sum(energy(v, sigma)))(x)
    m = mask[None, :, None]
    n = jnp.sum(mask)
    grad = (grad - jnp.sum(grad * m, axis=1, keepdims=True) / n) * m
    residual = sigma[:, None, None] * grad - eps
    return jnp.sum(residual**2) / (x0.shape[0] * n * 3)


@partial(jax.jit, static_argnames=("config", "train"))
def _step(params, opt_state, x0, eps, sigma, inputs, *, config, train):
    loss, grads = jax.value_and_grad(_loss)(params, x0, eps, sigma, inputs, config=config)
    updates, opt_state = _optimizer(train).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _batch(pool: _Pool, config, train: ConformerTrainConfig, rng):
    """(x0, eps, sigma) for one step: structures centred, padded to max_atoms; eps with zero centre of mass."""
    n = len(pool.graph)
    x = pool.positions[rng.integers(len(pool.positions), size=train.batch_size)].astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    x0 = np.zeros((train.batch_size, config.max_atoms, 3), np.float32)
    x0[:, :n] = x
    eps = np.zeros_like(x0)
    e = rng.standard_normal((train.batch_size, n, 3))
    eps[:, :n] = e - e.mean(axis=1, keepdims=True)
    sigma = np.exp(rng.uniform(np.log(config.sigma_min), np.log(config.sigma_max), train.batch_size))
    return x0, eps, sigma.astype(np.float32)


def train_conformer_prior(
    pools: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    config: _conformer.ConformerConfig | None = None,
    train_config: ConformerTrainConfig | None = None,
    progress: bool | Callable[[int, float], None] = False,
) -> _conformer.ConformerPrior:
    """Train a conformer prior on pools and write it to ``output`` (see ``xfit.load_conformer_prior``).

    Args:
        pools: HDF5 pools from ``xfit.build_pool`` (their structures; the patterns are not used).
        output: folder for the checkpoint and the finished prior; calling again with the same pools and settings
            resumes from its checkpoint, with the same result as an uninterrupted run.
        config: the model (default ``ConformerConfig()``); train_config: optimisation (default
            ``ConformerTrainConfig()``).
        progress: True for a progress bar (stderr), or a callback(step, loss).

    Returns:
        The trained :class:`xfit.ConformerPrior`.
    """
    from flax import serialization

    from xfit._io import atomic_path

    if not pools:
        raise ValueError("no pools given")
    config = config or _conformer.ConformerConfig()
    train = train_config or ConformerTrainConfig()
    sources = [_open(str(p), config) for p in pools]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    identity = repr((dataclasses.asdict(config), dataclasses.asdict(train), [os.path.abspath(s.path) for s in sources]))
    params = _conformer.init_params(config, jax.random.key(train.seed))
    opt_state = _optimizer(train).init(params)
    start = 0
    checkpoint = output / CHECKPOINT_FILE
    if checkpoint.is_file():
        raw = serialization.msgpack_restore(checkpoint.read_bytes())
        if raw.get("identity") != identity:
            raise ValueError(f"{checkpoint} belongs to another training run; remove it or choose another folder")
        state = serialization.from_state_dict(
            {"params": params, "opt_state": opt_state, "step": 0, "identity": identity}, raw
        )
        params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
    inputs = [{k: jnp.asarray(v) for k, v in s.inputs.items()} for s in sources]

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=train.steps, initial=start, desc="train-prior", unit="step")
    history, t0 = [], time.perf_counter()
    for step in range(start, train.steps):
        rng = np.random.default_rng([train.seed, step])
        k = int(rng.integers(len(sources)))
        x0, eps, sigma = _batch(sources[k], config, train, rng)
        params, opt_state, loss = _step(params, opt_state, x0, eps, sigma, inputs[k], config=config, train=train)
        if (step + 1) % 50 == 0 or step + 1 == train.steps:
            history.append({"step": step + 1, "pool": sources[k].name, "loss": float(loss)})
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss):.3f}")
        if callable(progress):
            progress(step + 1, float(loss))
        if bar is not None:
            bar.update(1)
        if (step + 1) % train.checkpoint_every == 0 and step + 1 < train.steps:
            state = {"params": params, "opt_state": opt_state, "step": step + 1, "identity": identity}
            with atomic_path(checkpoint) as tmp:
                Path(tmp).write_bytes(serialization.to_bytes(jax.device_get(state)))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0

    import xfit

    molecules = {}
    for s in sources:
        molecules.setdefault(s.graph.key, s.name)
    metadata = {
        "train": dataclasses.asdict(train),
        "pools": [{"path": s.path, "molecule": s.name, "sampler": s.sampler, "n": len(s.positions)} for s in sources],
        "history": history[-100:],
        "steps_per_second": (train.steps - start) / seconds if seconds > 0 else 0.0,
        "xfit_version": xfit.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _conformer.save_conformer_prior(output, config, params, molecules, metadata)
    checkpoint.unlink(missing_ok=True)
    return _conformer.load_conformer_prior(output)
