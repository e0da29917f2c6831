"""Training the conformer prior (``xfit.learn._conformer``) by denoising score matching on xfit's own pools.

Each step draws one pool (every pool equally often, so that a 3,000-structure reaction sweep weighs as much as a
65,000-structure Wigner pool), the next batch of its shuffled stream (``xfit.iterate_pool``: memory stays flat),
and per structure a noise level sigma, log-uniform in [sigma_min, sigma_max], and noise eps (n_atoms, 3) with zero
centre of mass (translations carry no information). The loss, per coordinate of real atoms, is

    | sigma s_theta(x0 + sigma eps, sigma) + eps |^2,     s_theta = -grad_x E_theta,

the sigma^2-weighted denoising score-matching objective (Vincent 2011; Song & Ermon 2019): its minimiser is the
score of the sigma-smoothed pool density. Its minimum is not 0: eps is only partly predictable from x (rotations,
and the whole of it at large sigma). No random rotations: E sees distances only.

One compiled step serves every molecule: structures are padded to the largest training molecule, padding pairs
masked. Everything is a function of (seed, step): the pool drawn, the noise, the batch (each pool's stream has its
own seed). A checkpoint holds the weights, the optimiser state, the step and how many batches each pool gave, so a
resumed run continues exactly as if it had never stopped; the finished prior is written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
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

from xfit.chem._graph import MoleculeGraph
from xfit.chem._pool import iterate_pool
from xfit.learn import _conformer

__all__ = ["ConformerTrainConfig", "train_conformer_prior"]

CHECKPOINT_FILE = "checkpoint.msgpack"


@dataclasses.dataclass(frozen=True)
class ConformerTrainConfig:
    """Optimisation settings (stored with the prior). reference_jitter: A per coordinate added to the reference
    geometry each step (only used by a ``ConformerConfig(reference=True)`` model). component_warmup: with several
    mixture components, the fraction of the steps in which each structure trains only the component of its cluster
    (k-means per molecule over heavy-atom distances, ``component_clusters``); then the mixture as a whole.
    component_loss_weight: of the components' responsibility cross-entropy against those clusters, all along
    (``dsm_loss``). Trained by score matching alone, one component took every structure and the others never
    learned (measured on the shipped pools: from independent or near-copy initial weights, with a temperature on
    the mixture, or with the hard warm-up alone). branch_loss_weight: of the branches' maximum likelihood beside
    score matching (``dsm_loss``); with 0.1 the CHD draws' open-ring fraction no longer depends on the number of
    sampling levels (``benchmarks/diagnostics.py levels``)."""

    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup: int = 200
    weight_decay: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 500
    reference_jitter: float = 0.03
    component_warmup: float = 0.3
    component_loss_weight: float = 0.1
    branch_loss_weight: float = 0.0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
        if not 0.0 <= self.component_warmup <= 1.0:
            raise ValueError(f"component_warmup is a fraction of the steps, got {self.component_warmup}")
        if self.component_loss_weight < 0 or self.branch_loss_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got component {self.component_loss_weight}, branch "
                f"{self.branch_loss_weight}"
            )


@dataclasses.dataclass
class _Source:
    """One pool: its molecule, graph inputs and batch stream."""

    path: str
    name: str
    graph: MoleculeGraph
    attrs: dict
    inputs: dict | None = None
    stream: Iterator | None = None
    drawn: int = 0


def _open_sources(paths: Sequence[str | os.PathLike], config: _conformer.ConformerConfig) -> list[_Source]:
    sources = []
    for path in map(str, paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"pool not found: {path}")
        try:
            with h5py.File(path, "r") as f:
                for name in ("positions", "numbers", "reference_positions"):
                    if name not in f:
                        raise ValueError(f"{path} is not an xfit pool: no {name!r} dataset")
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
                attrs.setdefault("n_complete", f["positions"].shape[0])
                atoms = Atoms(numbers=f["numbers"][()], positions=f["reference_positions"][()])
        except OSError as err:
            raise ValueError(f"{path} is not a readable HDF5 pool ({err})") from None
        if not attrs["n_complete"]:
            raise ValueError(f"{path}: the pool is empty")
        graph = MoleculeGraph.from_atoms(atoms)
        if len(graph) > config.max_atoms:
            raise ValueError(f"{path}: {graph.formula} has {len(graph)} atoms, the model takes {config.max_atoms}")
        sources.append(_Source(path, str(attrs.get("molecule", Path(path).stem)), graph, attrs))
    return sources


def _stream(path: str, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of exactly ``batch_size`` structures (float32) from a pool, reshuffled every epoch."""
    held = None
    for part in iterate_pool(path, batch_size, seed=seed, fields=("positions",), epochs=1 << 30):
        held = part["positions"] if held is None else np.concatenate([held, part["positions"]])
        while held is not None and len(held) >= batch_size:
            yield held[:batch_size]
            held = held[batch_size:] if len(held) > batch_size else None


def _optimizer(train: ConformerTrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, min(train.warmup, train.steps // 5), train.steps, train.learning_rate * 0.02
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=train.weight_decay))


def dsm_loss(
    params,
    x0,
    eps,
    sigma,
    inputs,
    labels=None,
    hard=0.0,
    *,
    config: _conformer.ConformerConfig,
    weight: float = 0.0,
    branch_weight: float = 0.0,
):
    """The denoising loss per coordinate of real atoms, for clean structures x0 (B, N, 3) in A (padded), noise eps
    (B, N, 3) (zero on padding atoms), levels sigma (B,) in A, and one molecule's ``graph_inputs``.

    With mixture components, ``labels`` (B,) give each structure's cluster. ``hard`` = 1: each structure's score is
    its own component's; 0: the mixture's. Either way ``weight`` x the cross-entropy of the components'
    responsibilities at the noisy structure, softmax_m(log pi_m - E_m(x, sigma)), against the labels is added:
    score matching alone cannot tell how much mass separate components hold (it sees only gradients of log p), and
    without this one component takes every structure. ``branch_weight`` x the mean negative log-likelihood of every
    real pair's noisy distance under its Gaussian branches at the same level (``branch_nll``: the labelled
    component's, or the components' mean without labels) is added too: it gives the branches the weights of the
    pools' distances, which score matching leaves where they start for distances no pool reaches."""
    head = _conformer.PairContext(config).apply({"params": params}, **inputs)
    x = x0 + sigma[:, None, None] * eps
    pairs = (inputs["pair_i"], inputs["pair_j"], config, inputs["pair_mask"])

    def energy(v):
        each = _conformer.component_energies(head, v, sigma, *pairs)  # (B, M)
        mixed = _conformer.combine(head["log_components"], each)
        if labels is None:
            return jnp.sum(mixed), each
        own = jnp.take_along_axis(each, labels[:, None], axis=1)[:, 0]
        return jnp.sum(hard * own + (1.0 - hard) * mixed), each

    grad, each = jax.grad(energy, has_aux=True)(x)
    residual = (-sigma[:, None, None] * grad + eps) * inputs["mask"][None, :, None]
    loss = jnp.sum(residual**2) / (x0.shape[0] * 3 * jnp.sum(inputs["mask"]))
    if labels is not None:
        log_resp = jax.nn.log_softmax(head["log_components"] - each, axis=-1)
        loss = loss - weight * jnp.mean(jnp.take_along_axis(log_resp, labels[:, None], axis=1))
    if branch_weight:
        d = _conformer._pair_distances(x, inputs["pair_i"], inputs["pair_j"], inputs["pair_mask"])
        nll = _conformer.branch_nll(head, d, sigma)  # (B, M, P)
        if labels is None:
            nll = jnp.mean(nll, axis=1)
        else:
            nll = jnp.take_along_axis(nll, labels[:, None, None], axis=1)[:, 0]
        real = inputs["pair_mask"].astype(nll.dtype)
        loss = loss + branch_weight * jnp.sum(nll * real) / (x0.shape[0] * jnp.sum(real))
    return loss


@partial(jax.jit, static_argnames=("config", "train"), donate_argnums=(0, 1))
def _step(params, opt_state, x0, eps, sigma, inputs, labels, hard, *, config, train):
    weights = {"weight": train.component_loss_weight, "branch_weight": train.branch_loss_weight}
    loss, grads = jax.value_and_grad(dsm_loss)(params, x0, eps, sigma, inputs, labels, hard, config=config, **weights)
    updates, opt_state = _optimizer(train).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _heavy_distances(graph: MoleculeGraph, x: np.ndarray) -> np.ndarray:
    """(B, n_heavy_pairs) heavy-atom pair distances in A of structures x (B, n, 3); every atom's for molecules with
    fewer than three heavy atoms."""
    heavy = np.flatnonzero(graph.numbers > 1)
    if len(heavy) < 3:
        heavy = np.arange(len(graph))
    i, j = np.triu_indices(len(heavy), k=1)
    return np.linalg.norm(x[:, heavy[i]] - x[:, heavy[j]], axis=-1)


def component_clusters(sources: list[_Source], m: int, seed: int, per_pool: int = 2048) -> dict[str, np.ndarray]:
    """Per molecule (graph key), m k-means centroids (m, n_heavy_pairs) in A of its structures' heavy-atom
    distances, each of its pools weighted equally (as training draws them): up to ``per_pool`` structures each,
    k-means++ seeding (``scipy.cluster.vq.kmeans2``). Ring-opening sweeps split into closed and open clusters."""
    from scipy.cluster.vq import kmeans2

    rng = np.random.default_rng([seed, 17])
    out = {}
    for key in dict.fromkeys(s.graph.key for s in sources):
        mine = [s for s in sources if s.graph.key == key]
        features = []
        for s in mine:
            with h5py.File(s.path, "r") as f:
                n = int(s.attrs["n_complete"])
                rows = np.sort(rng.choice(n, min(n, per_pool), replace=False))
                features.append(_heavy_distances(s.graph, f["positions"][rows]))
        counts = min(len(f) for f in features)
        data = np.concatenate([f[:counts] for f in features]).astype(np.float64)
        centroids, _ = kmeans2(data, m, iter=100, minit="++", seed=rng)
        out[key] = centroids
    return out


def _labels(source: _Source, x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(B,) the nearest centroid (m, n_heavy_pairs) to each structure x (B, n, 3)."""
    from scipy.cluster.vq import vq

    return vq(_heavy_distances(source.graph, x), centroids)[0].astype(np.int32)


def _host_batch(source: _Source, raw: np.ndarray, size: int, config, train: ConformerTrainConfig, rng):
    """(x0, eps, sigma, graph inputs) for one step, numpy float32, padded to ``size`` atoms."""
    n, b = len(source.graph), len(raw)
    x0 = np.zeros((b, size, 3), np.float32)
    x0[:, :n] = raw - raw.mean(axis=1, keepdims=True)
    x0[(b + 1) // 2 :] = x0[: b // 2]
    # Antithetic noise: each structure and level twice, with eps and -eps. The terms of the loss gradient linear
    # in eps cancel between the two, which would otherwise swamp the small-sigma signal (there sigma s ~ sigma/s_bond
    # << eps); the estimate stays unbiased.
    half = (b + 1) // 2
    e = rng.standard_normal((half, n, 3))
    e = np.concatenate([e, -e])[:b]
    eps = np.zeros_like(x0)
    eps[:, :n] = e - e.mean(axis=1, keepdims=True)
    sigma = np.exp(rng.uniform(np.log(config.sigma_min), np.log(config.sigma_max), half))
    sigma = np.concatenate([sigma, sigma])[:b].astype(np.float32)
    if not config.reference:
        if source.inputs is None:
            source.inputs = _conformer.graph_inputs(source.graph, size)
        return x0, eps, sigma, source.inputs
    # A jittered reference, so that the model cannot lean on one exact geometry.
    jittered = source.graph.positions + train.reference_jitter * rng.standard_normal(source.graph.positions.shape)
    d0 = _conformer.symmetric_distances(source.graph, jittered)
    return x0, eps, sigma, _conformer.graph_inputs(source.graph, size, d0)


def _identity(config, train: ConformerTrainConfig, sources: list[_Source], init=None) -> str:
    pools = [{"path": os.path.abspath(s.path), "config": str(s.attrs.get("config", ""))} for s in sources]
    out = {"model": dataclasses.asdict(config), "train": dataclasses.asdict(train), "pools": pools}
    if init is not None:  # the weights started from, by content: a checkpoint resumes only the same fine-tuning
        from flax import serialization

        out["init"] = hashlib.sha256(serialization.to_bytes(jax.device_get(init.params))).hexdigest()
    return json.dumps(out, sort_keys=True)


def _state(params, opt_state, step: int, sources: list[_Source], identity: str) -> dict:
    drawn = {str(k): s.drawn for k, s in enumerate(sources)}
    return {"params": params, "opt_state": opt_state, "step": step, "drawn": drawn, "identity": identity}


def _load_checkpoint(path: Path, template: dict) -> dict | None:
    from flax import serialization

    if not path.is_file():
        return None
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        if not isinstance(raw, dict):
            raise TypeError("not a mapping")
    except Exception as err:  # msgpack raises several unrelated types on bad bytes
        raise ValueError(f"corrupt checkpoint {path} ({type(err).__name__}: {err}); remove it to start over") from None
    if raw.get("identity") != template["identity"]:
        raise ValueError(
            f"{path} belongs to a different training run (other pools or settings); remove it or choose another "
            "output folder"
        )
    try:
        return serialization.from_state_dict(template, raw)
    except Exception as err:
        raise ValueError(f"corrupt checkpoint {path} ({type(err).__name__}: {err}); remove it to start over") from None


def train_conformer_prior(
    pools: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    config: _conformer.ConformerConfig | None = None,
    train_config: ConformerTrainConfig | None = None,
    progress: bool | Callable[[int, float], None] = False,
    init: str | os.PathLike | _conformer.ConformerPrior | None = None,
) -> _conformer.ConformerPrior:
    """Train a conformer prior on pools and write it to ``output`` (see ``xfit.load_conformer_prior``).

    A checkpoint is written to ``output/checkpoint.msgpack`` every ``train_config.checkpoint_every`` steps; calling
    again with the same pools and settings resumes from it, with weights identical to an uninterrupted run. The
    finished prior (``conformer.json`` + ``params.msgpack``) is written only at the end, atomically.

    Args:
        pools: HDF5 pools from ``xfit.build_pool`` (their structures; the patterns are not read).
        output: folder for the checkpoint and the finished prior.
        config: the model (default ``ConformerConfig()``); train_config: optimisation (default
            ``ConformerTrainConfig()``).
        progress: True for a progress bar (stderr), or a callback(step, loss) called after every step.
        init: a trained prior (folder, shipped name or ``ConformerPrior``) to start from instead of random weights:
            fine-tuning, e.g. on corrected or more pools, with its model configuration (``config`` must be None or
            the same) and usually a lower ``learning_rate``. Its molecules stay known to the result, whether or not
            the pools hold them.

    Returns:
        The trained :class:`xfit.ConformerPrior`.

    Raises:
        FileNotFoundError: a pool is missing. ValueError: not a pool, empty, too large a molecule, a corrupt
        checkpoint or one from another run.
    """
    from flax import serialization

    from xfit._io import atomic_path

    if not pools:
        raise ValueError("no pools given")
    start_from = None
    if init is not None:
        start_from = init if isinstance(init, _conformer.ConformerPrior) else _conformer.load_conformer_prior(init)
        if config is not None and config != start_from.config:
            raise ValueError(
                f"init prior {start_from.path or '(in memory)'} has model {start_from.config}, not the config given "
                f"({config}); leave config out to fine-tune it"
            )
        config = start_from.config
    config = config or _conformer.ConformerConfig()
    train = train_config or ConformerTrainConfig()
    sources = _open_sources(pools, config)
    size = max(len(s.graph) for s in sources)  # pad to the largest training molecule, not max_atoms: fewer pairs
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / CHECKPOINT_FILE

    if start_from is not None:
        params = jax.tree.map(jnp.asarray, start_from.params)
    else:
        params = _conformer.init_params(config, jax.random.key(train.seed))
    opt_state = _optimizer(train).init(params)
    identity = _identity(config, train, sources, start_from)
    start = 0
    restored = _load_checkpoint(checkpoint, _state(params, opt_state, 0, sources, identity))
    if restored is not None:
        params, opt_state, start = restored["params"], restored["opt_state"], int(restored["step"])
        for k, s in enumerate(sources):
            s.drawn = int(restored["drawn"][str(k)])
    for k, s in enumerate(sources):
        s.stream = _stream(s.path, train.batch_size, train.seed * 1000 + k)
        for _ in range(s.drawn):  # replay the stream to where the checkpoint left it
            next(s.stream)

    clusters = component_clusters(sources, config.components, train.seed) if config.components > 1 else None
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=train.steps, initial=start, desc="train-prior", unit="step")
    history, recent = [], []
    t0 = time.perf_counter()
    try:
        for step in range(start, train.steps):
            rng = np.random.default_rng([train.seed, step])
            k = int(rng.integers(len(sources)))
            source = sources[k]
            raw = next(source.stream)
            source.drawn += 1
            x0, eps, sigma, inputs = _host_batch(source, raw, size, config, train, rng)
            labels, hard = None, np.float32(step < train.component_warmup * train.steps)
            if clusters is not None:
                labels = _labels(source, x0[:, : len(source.graph)], clusters[source.graph.key])
            step_args = (x0, eps, sigma, inputs, labels, hard)
            params, opt_state, loss = _step(params, opt_state, *step_args, config=config, train=train)
            recent = [*recent[-99:], loss]
            if (step + 1) % 50 == 0 or step + 1 == train.steps:
                history.append({"step": step + 1, "loss": float(np.mean(recent[-50:]))})
                if bar is not None:
                    bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
            if callable(progress):
                progress(step + 1, float(loss))
            if bar is not None:
                bar.update(1)
            if (step + 1) % train.checkpoint_every == 0 and step + 1 < train.steps:
                with atomic_path(checkpoint) as tmp:
                    state = _state(params, opt_state, step + 1, sources, identity)
                    Path(tmp).write_bytes(serialization.to_bytes(jax.device_get(state)))
    finally:
        if bar is not None:
            bar.close()
        for s in sources:
            s.stream.close()
    seconds = time.perf_counter() - t0

    import xfit

    molecules = dict(start_from.molecules) if start_from is not None else {}
    for s in sources:
        molecules.setdefault(s.graph.key, s.name)
    done = train.steps - start
    metadata = {
        "train": dataclasses.asdict(train),
        "seed": train.seed,
        "steps": train.steps,
        "pools": [
            {
                "path": s.path,
                "molecule": s.name,
                "sampler": str(s.attrs.get("sampler", "")),
                "n": int(s.attrs["n_complete"]),
                "status": str(s.attrs.get("status", "")),
                "config": str(s.attrs.get("config", "")),
            }
            for s in sources
        ],
        "final_loss": float(np.mean(recent)) if recent else None,
        "history": history[-200:],
        "examples_per_second": done * train.batch_size / seconds if done and seconds > 0 else None,
        "seconds": seconds,
        "resumed_at": start or None,
        "init": None
        if start_from is None
        else {
            "path": start_from.path,
            "created": start_from.metadata.get("created"),
            "pools": start_from.metadata.get("pools"),
        },
        "xfit_version": xfit.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _conformer.save_conformer_prior(output, config, params, molecules, metadata)
    checkpoint.unlink(missing_ok=True)
    return _conformer.load_conformer_prior(output)
