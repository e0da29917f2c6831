"""Diagnostics of the posterior default call: where its error comes from, one question per subcommand.

These reach into xfit's internals (they wrap ``xfit.infer._retrieve``'s strategy choice and summary, restored on
exit), so they are for developers; the figures they print are quoted in benchmarks/README.md.

    # the benchmarks with Posterior fields changed (ablations): any field of xfit.Posterior
    python benchmarks/diagnostics.py --set n_prior=48,tempering=0 bench posterior -- --methods "default call" --no-nmm
    python benchmarks/diagnostics.py --set n_prior=144 bench ued -- --stride 4 --kinds sm
    # search or ranking? the default call against the same call with the true structure as one more start
    python benchmarks/diagnostics.py seed-truth --kind sm --frames traj001/target_52,traj090/target_56
    # which structure to report: the mode mean, the mean relaxed (the default) or the heaviest basin's optimum
    python benchmarks/diagnostics.py structure --stride 3
    # the mode radius, on xfit's own pools (hot Wigner + sweep CHD), never the shared frames
    python benchmarks/diagnostics.py radius --kind xray
    # ranking or search, near-closed frames: the reported structure against the posterior optimum nearest the truth
    python benchmarks/diagnostics.py basins --kind sm --stride 3
    # error bars where the truth is the prior's own draw (simulation-based calibration), never the shared frames
    python benchmarks/diagnostics.py calibration --n 64 --steps 100
    # the same with the truths made exact draws of the prior's density (MALA chains from the annealed draws)
    python benchmarks/diagnostics.py calibration --n 64 --steps 400 --mcmc 4000
    # near-closed frames: ring bond lengths as assigned vs as a set, bond-length alternation of truth, result, pools
    python benchmarks/diagnostics.py alternation --stride 3 --pools pools/chd_*.h5
    # other conformer priors (folders from xfit train-prior) in the default call, paired against the shipped one
    python benchmarks/diagnostics.py priors --priors my_prior,other_prior --kinds xray,sm --stride 3
    # the same on a held-out pool of xfit's own, with the priors' own draws (never the shared frames)
    python benchmarks/diagnostics.py heldout --pool chd_sweep_seed11.h5 --priors my_prior
    # near-closed ranking on held-out pools: the prior tempered in the ranking, and a product of several priors
    python benchmarks/diagnostics.py ranking --pools chd_excited_seed12.h5 --experts conformer,prior_a,prior_b
    # do a prior's own draws depend on the number of annealing levels? (one density at every level: they should not)
    python benchmarks/diagnostics.py levels --priors conformer,my_prior
    # which labelling: the result against the truth as labelled and with CHD's ring read either way; modes that are
    # mode 0 under the other labelling (PYTHONPATH=<another checkout> measures that checkout's xfit)
    python benchmarks/diagnostics.py labelling --stride 4 --kind xray
    # near-closed: does the pattern prefer the truth to the reported structure? alternation, its error bars, other
    # point estimates from the same posterior (shared frames, or a pool of xfit's own: --pool)
    python benchmarks/diagnostics.py identifiability --kinds sm,elastic --pool chd_excited_seed12.h5

Shared frames: ../shared/reference (validation only, as in ``benchmarks/posterior.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from posterior import CHD, chd_patterns, load_frames
from ued import ued_patterns

ROOT = Path(__file__).resolve().parents[1]
Q_XRAY = np.linspace(0.5, 8.0, 76)
Q_UED = np.linspace(1.0, 10.0, 181)


@contextlib.contextmanager
def posterior_fields(fields: dict):
    """The default call's Posterior with ``fields`` replaced (refinement untouched)."""
    from xfit.infer import _retrieve

    original = _retrieve._choose_strategy

    def choose(*args, **kwargs):
        strategy, path = original(*args, **kwargs)
        if fields and strategy.name == "posterior":
            strategy = dataclasses.replace(strategy, **fields)
        return strategy, path

    _retrieve._choose_strategy = choose
    try:
        yield
    finally:
        _retrieve._choose_strategy = original


@contextlib.contextmanager
def captured_summary(store: dict):
    """Keeps the problem, ensemble and options of the next summary in ``store``."""
    from xfit.infer import _retrieve

    original = _retrieve.summarise

    def summarise(problem, ensemble, **kwargs):
        store.update(problem=problem, ensemble=ensemble, kwargs=kwargs)
        return original(problem, ensemble, **kwargs)

    _retrieve.summarise = summarise
    try:
        yield
    finally:
        _retrieve.summarise = original


def parse_fields(text: str | None) -> dict:
    import xfit

    types = {f.name: f.type for f in dataclasses.fields(xfit.Posterior)}
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, value = item.split("=")
        if name not in types:
            raise SystemExit(f"unknown Posterior field {name!r}")
        out[name] = int(value) if types[name] == "int" else float(value)
    return out


def patterns_of(frames, kind: str, noise: float | None = None):
    """The benchmarks' patterns of the frames: X-ray total at 0.1 % noise (``posterior.py``) or UED at 0.2 % of
    I_at (``ued.py``), or at ``noise`` (relative, as there)."""
    if kind == "xray":
        return chd_patterns(frames, Q_XRAY, 1e-3 if noise is None else noise, 0)
    return ued_patterns(frames, Q_UED, kind, 3000.0, 2e-3 if noise is None else noise, 0)


def near_closed_frames(stride: int):
    """Every ``stride``-th shared frame whose ring is near-closed (C1-C6 <= 2.3 A)."""
    return select_frames(stride, "near-closed")


def select_frames(stride: int, which: str):
    """Every ``stride``-th shared frame, those near-closed (C1-C6 <= 2.3 A), ``opened`` (the others) or ``all``."""
    frames = load_frames(stride, None)
    if which == "all":
        return frames
    return [f for f in frames if (f[1].get_distance(0, 5) <= 2.3) == (which == "near-closed")]


def carbon_rmsd(atoms, truth) -> float:
    import xfit

    return xfit.rmsd(atoms, truth, heavy_only=True)


def nearest_optima(likelihood, energy, truths: np.ndarray, sigma: float) -> np.ndarray:
    """The optimum of U = chi2/2 + E(x, sigma) nearest each truth (T, n, 3) in A: the truth relaxed by 600 Adam steps
    (first step 3e-3 A, float32), as (T, n, 3) float64."""
    import jax.numpy as jnp

    from xfit.infer._posterior import relax

    x = relax(likelihood, energy, jnp.asarray(truths, jnp.float32), jnp.asarray(sigma), steps=600, learning_rate=3e-3)
    return np.asarray(x, np.float64)


def seed_truth(args) -> None:
    import xfit

    wanted = args.frames.split(",")
    frames = [f for f in load_frames(1, None) if f[0] in wanted]
    patterns = patterns_of(frames, args.kind)
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    plain = xfit.retrieve(patterns, start)
    for (name, truth), pattern, a in zip(frames, patterns, plain, strict=True):
        b = xfit.retrieve(pattern, start, starts=truth)
        print(
            f"{name}: default C-RMSD {carbon_rmsd(a.atoms, truth):.3f} A, chi2_red {a.chi2_reduced:.2f} | with the "
            f"truth as a start {carbon_rmsd(b.atoms, truth):.3f} A, chi2_red {b.chi2_reduced:.2f}",
            flush=True,
        )


def structure(args) -> None:
    import jax.numpy as jnp

    import xfit
    from xfit.infer._result import cluster_modes, summarise

    frames = load_frames(args.stride, None)
    patterns = patterns_of(frames, args.kind)
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    store = {}
    with captured_summary(store):
        relaxed = xfit.retrieve(patterns, start)
    problem, ensemble, kwargs = store["problem"], store["ensemble"], store["kwargs"]
    means = summarise(problem, dataclasses.replace(ensemble, relax=None), **kwargs)
    optima = []
    for t in range(problem.n_patterns):
        w = ensemble.weights[t] / ensemble.weights[t].sum()
        mass = np.bincount(ensemble.particle[t], weights=w, minlength=ensemble.optima.shape[1])
        molecule = problem.molecule
        seeds = cluster_modes(
            ensemble.optima[t], mass, molecule.heavy, ensemble.info["mode_radius"], molecule.skeleton_automorphisms
        )[2]
        optima.append(ensemble.optima[t][seeds[0]])
    closed = np.array([truth.get_distance(0, 5) <= 2.3 for _, truth in frames])
    choices = {
        "mode mean": np.stack([r.atoms.positions for r in means]),
        "mean relaxed (default)": np.stack([r.atoms.positions for r in relaxed]),
        "heaviest basin's optimum": np.stack(optima),
    }
    for label, x in choices.items():
        chi2 = np.asarray(problem.likelihood.chi2(jnp.asarray(x)[:, None]))[:, 0] / problem.likelihood.dof
        rmsd = []
        for k, (_, truth) in enumerate(frames):
            atoms = truth.copy()
            atoms.positions = x[k]
            rmsd.append(carbon_rmsd(atoms, truth))
        rmsd = np.asarray(rmsd)
        print(
            f"{label:>25}: C-RMSD median {np.median(rmsd):.4f} A (near-closed {np.median(rmsd[closed]):.4f}, opened "
            f"{np.median(rmsd[~closed]):.4f}), <= 0.10 A {np.mean(rmsd <= 0.1):.0%}; chi2_red median "
            f"{np.median(chi2):.2f}, > 1.5 on {np.mean(chi2 > 1.5):.0%} of {len(frames)} frames",
            flush=True,
        )


def radius(args) -> None:
    import h5py

    import xfit
    from xfit.infer._result import summarise

    work = Path(tempfile.mkdtemp(prefix="xfit_radius_"))
    q = (float(Q_XRAY[0]), float(Q_XRAY[-1]), len(Q_XRAY))
    specs = [
        xfit.PoolSpec("CHD", "wigner", 40, q, seed=123, temperature=1000.0),
        xfit.PoolSpec("CHD", "sweep", 40, q, seed=321),
    ]
    start = xfit.read_structures(ROOT / "examples" / "data" / "chd.xyz")[0]
    truths = []
    for k, spec in enumerate(specs):
        with h5py.File(xfit.build_pool(work / f"pool{k}.h5", spec)) as f:
            positions = np.asarray(f["positions"])
        for x in positions[:: max(1, len(positions) // 30)]:
            atoms = start.copy()
            atoms.positions = x
            truths.append(atoms)
    frames = [(f"pool/{k}", a) for k, a in enumerate(truths)]
    patterns = patterns_of(frames, args.kind)
    store = {}
    with captured_summary(store):
        xfit.retrieve(patterns, start)
    problem, ensemble, kwargs = store["problem"], store["ensemble"], store["kwargs"]
    for r in (0.10, 0.15, 0.20, 0.25, 0.35, 0.50):
        results = summarise(problem, dataclasses.replace(ensemble, info={**ensemble.info, "mode_radius": r}), **kwargs)
        rmsd = np.array([carbon_rmsd(a.atoms, t) for a, t in zip(results, truths, strict=True)])
        z = np.array(
            [
                abs(a.atoms.get_distance(0, 5) - t.get_distance(0, 5)) / a.uncertainty.distance(0, 5)
                for a, t in zip(results, truths, strict=True)
            ]
        )
        print(
            f"{args.kind} mode_radius {r:.2f} A: C-RMSD median {np.median(rmsd):.4f}, mean {np.mean(rmsd):.4f}, "
            f"<= 0.10 A {np.mean(rmsd <= 0.1):.0%}, C1-C6 within 2 sigma {np.mean(z <= 2):.0%} "
            f"({len(truths)} structures)",
            flush=True,
        )


def basins(args) -> None:
    """Near-closed frames (``--frames opened``: the others; ``all``: every one): the reported structure against
    the optimum of U = chi2/2 + E nearest the truth (the truth relaxed at the prior's lowest level): their carbon
    RMSD from the truth and which has the lower U. If the truth's optimum has the lower U, the sampler missed it
    (search); if the reported one has, the posterior ranks another basin first (the prior and the data decide)."""
    import jax.numpy as jnp

    import xfit

    frames = select_frames(args.stride, args.frames)
    patterns = patterns_of(frames, args.kind, args.noise)
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    store = {}
    with captured_summary(store):
        results = xfit.retrieve(patterns, start, seed=args.seed)
    problem = store["problem"]
    prior = xfit.load_conformer_prior()
    energy, likelihood, sigma = prior.energy_fn(problem.molecule), problem.likelihood, prior.sigma_min
    truth = np.stack([t.positions for _, t in frames])
    reported = np.stack([r.atoms.positions for r in results])
    optimum = nearest_optima(likelihood, energy, truth, sigma)

    chi2, u = [], []
    for x in (jnp.asarray(reported, jnp.float32), jnp.asarray(optimum, jnp.float32)):
        chi2.append(np.asarray(likelihood.chi2(x)))
        u.append(0.5 * chi2[-1] + np.asarray(energy(x, sigma)))
    u_reported, u_optimum = u
    rmsd_reported, rmsd_optimum = [], []
    for k, (_, t) in enumerate(frames):
        a = t.copy()
        a.positions = optimum[k]
        rmsd_reported.append(carbon_rmsd(results[k].atoms, t))
        rmsd_optimum.append(carbon_rmsd(a, t))
    missed = u_optimum < u_reported - 0.5
    noise = "" if args.noise is None else f" at noise {args.noise:g}"
    seed = f" seed {args.seed}" if args.seed else ""
    print(
        f"{args.kind}{noise}{args.set_text}{seed}, {len(frames)} {args.frames} frames: reported C-RMSD median "
        f"{np.median(rmsd_reported):.4f} A (<= 0.10 A: {np.mean(np.array(rmsd_reported) <= 0.10):.0%}); the "
        f"optimum nearest the truth {np.median(rmsd_optimum):.4f} A from it, with the lower U (by > 0.5) on "
        f"{np.mean(missed):.0%} of frames (search missed it); U(nearest) - U(reported) median "
        f"{np.median(u_optimum - u_reported):+.2f}; the nearest has the lower chi2 on {np.mean(chi2[1] < chi2[0]):.0%}",
        flush=True,
    )


def exact_prior_draws(prior, graph, x0: np.ndarray, key, steps: int) -> tuple[np.ndarray, float]:
    """Chains of blackjax's Metropolis-adjusted Langevin (MALA) on the prior's density exp(-E(x, sigma_min)) itself,
    one from each annealed draw x0 (n, n_atoms, 3) in A, ``steps`` steps: the annealing's last levels leave draws
    that are not yet from that density (100 levels: 61 % with every ring C-C in 1.25-1.70 A), and a calibration
    test needs truths from exactly the prior the posterior uses. The step is tuned over the first half (acceptance
    towards 0.57, one step for all chains), fixed over the second. Returns (draws (n, n_atoms, 3), the second
    half's mean acceptance)."""
    import blackjax
    import jax
    import jax.numpy as jnp

    energy = prior.energy_fn(graph)
    sigma = prior.sigma_min

    def chains(x, key, step, n):
        kernel = blackjax.mala(lambda v: -energy(v, sigma), step)
        states = jax.vmap(kernel.init)(x)

        def one(states, k):
            states, info = jax.vmap(kernel.step)(jax.random.split(k, len(x)), states)
            return states, jnp.mean(info.is_accepted)

        states, accepted = jax.lax.scan(one, states, jax.random.split(key, n))
        return states.position, jnp.mean(accepted)

    run = jax.jit(chains, static_argnums=3)
    x, step, chunk = jnp.asarray(x0, jnp.float32), 2.5e-5, 100
    for k in range(max(steps // (2 * chunk), 1)):  # tuning: the step follows the acceptance, chunk by chunk
        x, acceptance = run(x, jax.random.fold_in(key, k), step, chunk)
        step *= float(np.exp(2.0 * (float(acceptance) - 0.57)))
    x, acceptance = run(x, jax.random.fold_in(key, 1_000_000), step, max(steps - steps // (2 * chunk) * chunk, 1))
    return np.asarray(x, np.float64), float(acceptance)


def calibration(args) -> None:
    """Calibration where the truth is the prior's own: CHD structures drawn from the shipped conformer prior
    (``--steps`` annealing levels from its tables, as the posterior's seeds are drawn), their X-ray patterns at
    0.1 % noise, the default call from the ground state (examples/data/chd.xyz). Were the draws exact and the
    posterior exact, every interval would cover at its nominal rate (simulation-based calibration); the draws whose
    ring C-C bonds all lie in 1.25-1.70 A ("physical") are reported apart. Never the shared frames."""
    import jax

    import xfit

    start = xfit.read_structures(ROOT / "examples" / "data" / "chd.xyz")[0]
    graph = xfit.MoleculeGraph.from_atoms(start)
    prior = xfit.load_conformer_prior()
    draws = np.asarray(prior.sample(jax.random.key(100 + args.seed), graph, args.n, steps=args.steps, tables=True))
    if args.mcmc:
        draws, acceptance = exact_prior_draws(prior, graph, draws, jax.random.key(200 + args.seed), args.mcmc)
        args.set_text += f", then {args.mcmc} MALA steps on the prior (acceptance {acceptance:.2f})"
    truths, patterns = [], []
    for k, x in enumerate(draws):
        truth = start.copy()
        truth.positions = x
        truths.append(truth)
        pattern = xfit.Pattern(Q_XRAY, xfit.scattering(truth, Q_XRAY))
        patterns.append(pattern.with_noise(jax.random.key(10_000 * (args.seed + 1) + k), relative=1e-3))
    store = {}
    with captured_summary(store):
        results = xfit.retrieve(patterns, start, seed=args.seed)
    ring = [(i, j) for i, j in graph.heavy_bonds.tolist() if (i, j) != (0, 5)]
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    z = np.abs(
        [
            [(r.atoms.get_distance(i, j) - t.get_distance(i, j)) / r.uncertainty.distance(i, j) for i, j in pairs]
            for r, t in zip(results, truths, strict=True)
        ]
    )
    error = np.array([carbon_rmsd(r.atoms, t) for r, t in zip(results, truths, strict=True)])
    physical = np.array([all(1.25 <= t.get_distance(i, j) <= 1.70 for i, j in ring) for t in truths])
    mass = np.array([r.modes[0] for r in results])
    c16_error = np.abs(
        [r.atoms.get_distance(0, 5) - t.get_distance(0, 5) for r, t in zip(results, truths, strict=True)]
    )
    c16_sigma = np.array([r.uncertainty.distance(0, 5) for r in results])
    c16_chains = np.array([_chosen_mode_sd(r, 0, 5) for r in results])
    chi2 = np.array([r.chi2_reduced for r in results])
    print(
        f"{args.n} prior draws ({args.steps} levels, seed {args.seed}){args.set_text}: {physical.mean():.0%} physical"
    )
    for name, rows in (("all", np.ones(len(truths), bool)), ("physical", physical)):
        if not rows.any():
            continue
        c16 = z[rows, pairs.index((0, 5))]
        print(
            f"  {name:8s} ({rows.sum()}): C-RMSD median {np.median(error[rows]):.3f} A, chi2_red median "
            f"{np.median(chi2[rows]):.2f}, chosen mode's mass median {np.median(mass[rows]):.2f}; C1-C6 within 1/2/3 "
            f"sigma {np.mean(c16 <= 1):.0%}/{np.mean(c16 <= 2):.0%}/{np.mean(c16 <= 3):.0%}, all 15 C-C distances "
            f"{np.mean(z[rows] <= 1):.0%}/{np.mean(z[rows] <= 2):.0%}/{np.mean(z[rows] <= 3):.0%}",
            flush=True,
        )
        print(
            f"             C1-C6 medians: |error| {np.median(c16_error[rows]):.3f} A, reported sigma "
            f"{np.median(c16_sigma[rows]):.3f} A, the chosen mode's MALA samples alone "
            f"{np.median(c16_chains[rows]):.3f} A",
            flush=True,
        )
    truth_basin_masses(store["problem"], prior, draws, results)


def truth_basin_masses(problem, prior, truths: np.ndarray, results) -> None:
    """Ranking or width: each truth (n, n_atoms, 3) relaxed to its optimum of U = chi2/2 + E, and that basin's
    Laplace log mass against the reported structure's (``xfit.infer._posterior.laplace``, as the posterior weighs
    its basins). With exact truths and an exact posterior, the truth's basin would be one the posterior gives
    weight to, not one it ranks exponentially lower."""
    import jax.numpy as jnp

    import xfit
    from xfit.infer._posterior import laplace
    from xfit.infer._result import batch_rmsd

    energy, likelihood, sigma = prior.energy_fn(problem.molecule), problem.likelihood, prior.sigma_min
    heavy = problem.molecule.heavy
    optimum = nearest_optima(likelihood, energy, truths, sigma)
    reported = np.stack([r.atoms.positions for r in results])
    pair = jnp.asarray(np.stack([reported, optimum], axis=1), jnp.float32)
    scale = jnp.ones(len(truths), jnp.float32)  # sigma given: the likelihood as it is
    log_mass = np.asarray(
        laplace(likelihood, energy, pair, jnp.float32(sigma), scale, floor=xfit.Posterior.curvature_floor)[0]
    )
    gap = log_mass[:, 1] - log_mass[:, 0]
    to_truth = np.array([batch_rmsd(o[None], t, heavy)[0] for o, t in zip(optimum, truths, strict=True)])
    to_reported = np.array([batch_rmsd(o[None], r, heavy)[0] for o, r in zip(optimum, reported, strict=True)])
    other = to_reported > 0.05
    print(
        f"  the truth relaxed to its optimum: {np.median(to_truth):.3f} A from the truth, "
        f"{np.median(to_reported):.3f} A from the reported structure (heavy-atom RMSD medians), another basin "
        f"(> 0.05 A) on {np.mean(other):.0%}; its Laplace log mass minus the reported one's, 10/25/50/75/90 %: "
        f"{np.percentile(gap, [10, 25, 50, 75, 90]).round(1).tolist()}, heavier on {np.mean(gap > 0):.0%}",
        flush=True,
    )


def _chosen_mode_sd(result, i: int, j: int) -> float:
    """Weighted standard deviation (A) of distance i-j over the chosen mode's MALA samples alone (no Laplace)."""
    from xfit.infer._result import _weighted_distance_std

    chosen = result.sample_modes == 0
    w = result.sample_weights[chosen] / result.sample_weights[chosen].sum()
    return float(_weighted_distance_std(result.samples[chosen], w)[i, j])


RING_SINGLE, RING_DOUBLE = [(0, 1), (2, 3), (4, 5)], [(1, 2), (3, 4)]  # CHD's ground-state single/double ring bonds


def alternation_index(x: np.ndarray) -> np.ndarray:
    """CHD's bond-length alternation (A), x (..., n_atoms, 3): mean of the ground state's single ring bonds C1-C2,
    C3-C4, C5-C6 minus mean of its double bonds C2=C3, C4=C5 (about +0.15 A at the ground-state minimum; it turns
    negative when the pi* orbital's nodes swap the bond orders, as on the excited state)."""
    length = lambda i, j: np.linalg.norm(x[..., i, :] - x[..., j, :], axis=-1)  # noqa: E731
    return np.mean([length(*b) for b in RING_SINGLE], axis=0) - np.mean([length(*b) for b in RING_DOUBLE], axis=0)


def alternation(args) -> None:
    """Near-closed frames: is the error the assignment of ring bond lengths? The data give the set of C-C distances
    (sorted) more closely than which pair has which (assigned); the alternation index of the truth and of the
    reported structure, and, with ``--pools``, how xfit's own pools (the prior's training data) spread it."""
    import itertools

    import xfit

    pairs = np.array(list(itertools.combinations(range(6), 2)))

    def carbon_distances(x):
        return np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)

    frames = near_closed_frames(args.stride)
    truth = np.stack([t.positions for _, t in frames])
    a_truth = alternation_index(truth)
    print(
        f"{len(frames)} near-closed frames: true alternation index 5/50/95 % "
        f"{np.percentile(a_truth, [5, 50, 95]).round(3).tolist()} A, below +0.05 A on {np.mean(a_truth < 0.05):.0%}"
    )
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    for kind in args.kinds.split(","):
        results = xfit.retrieve(patterns_of(frames, kind), start, **({"prior": args.prior} if args.prior else {}))
        reported = np.stack([r.atoms.positions for r in results])
        a = alternation_index(reported)
        d_true, d_reported = carbon_distances(truth), carbon_distances(reported)
        assigned = np.mean(np.abs(d_reported - d_true))
        as_a_set = np.mean(np.abs(np.sort(d_reported, axis=1) - np.sort(d_true, axis=1)))
        rmsd = np.array([carbon_rmsd(r.atoms, t) for r, (_, t) in zip(results, frames, strict=True)])
        print(
            f"{kind:>8}: C-RMSD median {np.median(rmsd):.4f} A; C-C distances off by {assigned:.3f} A as assigned, "
            f"{as_a_set:.3f} A as a set; reported alternation 5/50/95 % "
            f"{np.percentile(a, [5, 50, 95]).round(3).tolist()} A (correlation with the truth's "
            f"{np.corrcoef(a, a_truth)[0, 1]:+.2f}); on the {np.sum(a_truth < 0.05)} frames whose true index is "
            f"< +0.05 A, C-RMSD median {np.median(rmsd[a_truth < 0.05]):.4f} A, on the rest "
            f"{np.median(rmsd[a_truth >= 0.05]):.4f} A",
            flush=True,
        )
    for path in args.pools or []:
        chunks = [b["positions"] for b in xfit.iterate_pool(path, 4096, shuffle=False, fields=("positions",))]
        x = np.concatenate(chunks)
        x = x[np.linalg.norm(x[:, 0] - x[:, 5], axis=-1) <= 2.3]
        if len(x):
            a = alternation_index(x)
            print(
                f"pool {Path(path).name}: {len(x)} near-closed structures, alternation index 5/50/95 % "
                f"{np.percentile(a, [5, 50, 95]).round(3).tolist()} A, below +0.05 A on {np.mean(a < 0.05):.0%}"
            )


def priors(args) -> None:
    """The default call with the shipped conformer prior and with each of ``--priors`` (``retrieve(...,
    prior=FOLDER)``: the same posterior, seeds and proposal network, another prior), on the same patterns, paired."""
    import json

    import xfit

    frames = load_frames(args.stride, None)
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    closed = np.array([t.get_distance(0, 5) <= 2.3 for _, t in frames])
    out = {}
    for kind in args.kinds.split(","):
        patterns = patterns_of(frames, kind)
        rows = {}
        for name in ["shipped", *args.priors.split(",")]:
            results = xfit.retrieve(patterns, start, **({} if name == "shipped" else {"prior": name}))
            rmsd = np.array([carbon_rmsd(r.atoms, t) for r, (_, t) in zip(results, frames, strict=True)])
            z = np.array(
                [
                    abs(r.atoms.get_distance(0, 5) - t.get_distance(0, 5)) / r.uncertainty.distance(0, 5)
                    for r, (_, t) in zip(results, frames, strict=True)
                ]
            )
            base = rows.get("shipped", {}).get("rmsd", rmsd)
            rows[name] = {"rmsd": rmsd, "z": z}
            better, closer = np.mean(rmsd < base), np.mean(rmsd[closed] < base[closed])
            print(
                f"{kind:>8} {name:>40}: C-RMSD median {np.median(rmsd):.4f} A, near-closed "
                f"{np.median(rmsd[closed]):.4f}, opened {np.median(rmsd[~closed]):.4f}, <= 0.10 A "
                f"{np.mean(rmsd <= 0.1):.0%}, C1-C6 within 2 sigma {np.mean(z <= 2):.0%}; against the shipped "
                f"prior: better on {better:.0%} of frames (near-closed {closer:.0%}), mean difference "
                f"{np.mean(rmsd - base):+.4f} A",
                flush=True,
            )
        out[kind] = {name: {k: v.tolist() for k, v in row.items()} for name, row in rows.items()}
    if args.json:
        args.json.write_text(json.dumps({"frames": [n for n, _ in frames], "results": out}, indent=1))


def pool_truths(path, stride: int, start):
    """Every ``stride``-th structure of an xfit pool of ``start``'s molecule: (positions (n, n_atoms, 3) in A, [(name,
    Atoms), ...])."""
    import h5py

    with h5py.File(path, "r") as f:
        positions = f["positions"][::stride]
    truths = []
    for x in positions:
        truth = start.copy()
        truth.positions = x
        truths.append((f"{Path(path).stem}/{len(truths)}", truth))
    return positions, truths


def heldout(args) -> None:
    """Conformer priors on CHD structures of one of xfit's own pools that no prior trained on (e.g. a sweep with
    another seed: ``xfit pool CHD --method sweep -n 96 --range 1.45:6.0 --temperature 800 --seed 11``), never the
    shared frames. Per prior: its own draws (``--draws``, 300 levels: the fraction with C1-C6 > 2.5 A, with another
    ring bond > 2.5 A, and the opened draws' C1-C6 and C2-C3 medians against the pool's), its branch weights beyond
    2.5 A on the ring bonds that never break, then the default call with ``prior=FOLDER`` on X-ray total (0.1 %)
    and percent-difference patterns (f = 0.1 known, 0.1 % on each of I_on and I_off) of the pool's structures."""
    import jax
    from posterior import other_bond_broken

    import xfit

    start = xfit.read_structures(ROOT / "examples" / "data" / "chd.xyz")[0]
    graph = xfit.MoleculeGraph.from_atoms(start)
    positions, truths = pool_truths(args.pool, args.stride, start)
    ring = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]

    def distances(x):
        d = {b: np.linalg.norm(x[:, b[0]] - x[:, b[1]], axis=-1) for b in [*ring, (0, 5)]}
        opened = d[(0, 5)] > 2.5
        wrong = np.mean([np.mean(d[b] > 2.5) for b in ring])
        c16, c23 = (float(np.median(d[b][opened])) if opened.any() else float("nan") for b in ((0, 5), (1, 2)))
        return (
            f"C1-C6 > 2.5 A {opened.mean():.3f}, per other ring bond {wrong:.4f}; opened: C1-C6 {c16:.2f}, C2-C3 "
            f"{c23:.3f} A"
        )

    c16 = np.array([t.get_distance(0, 5) for _, t in truths])
    closed = c16 <= 2.3
    print(f"{args.pool}: {len(truths)} structures, {closed.sum()} near-closed; pool: {distances(positions)}")
    kinds = {
        "xray": patterns_of(truths, "xray"),
        "pd known": chd_patterns(truths, Q_XRAY, 1e-3, 0, "percent_difference", start, 0.1),
    }
    shipped = {}
    for name in ["conformer", *args.priors.split(",")]:
        prior = xfit.load_conformer_prior(name)
        draws = prior.sample(jax.random.key(0), graph, args.draws, steps=300)
        energy = prior.energy_fn(graph)
        i, j = np.asarray(energy.pair_i), np.asarray(energy.pair_j)
        bonds = [int(np.flatnonzero((i == a) & (j == b))[0]) for a, b in ring]
        weights = np.exp(np.asarray(energy.head["log_weights"]))[:, bonds]  # (M, 5, K)
        far = np.sum(weights * (np.asarray(energy.head["centres"])[:, bonds] > 2.5), -1)
        print(
            f"{name}: {prior.config.components} component(s); draws: {distances(draws)}; ring-bond branch weight "
            f"beyond 2.5 A, median {np.median(far):.3f}",
            flush=True,
        )
        for kind, patterns in kinds.items():
            results = xfit.retrieve(patterns, start, prior=name, **({"fraction": 0.1} if kind != "xray" else {}))
            rmsd = np.array([carbon_rmsd(r.atoms, t) for r, (_, t) in zip(results, truths, strict=True)])
            z = np.array(
                [
                    abs(r.atoms.get_distance(0, 5) - d) / r.uncertainty.distance(0, 5)
                    for r, d in zip(results, c16, strict=True)
                ]
            )
            wrong = sum(other_bond_broken(r.atoms) for r in results)
            base = shipped.setdefault(kind, rmsd)
            print(
                f"  {kind:>8}: C-RMSD median {np.median(rmsd):.3f} A, mean {np.mean(rmsd):.3f}, near-closed "
                f"{np.median(rmsd[closed]):.3f}, opened {np.median(rmsd[~closed]):.3f}, > 0.5 A {np.sum(rmsd > 0.5)}, "
                f"another ring bond broken {wrong}; C1-C6 within 2 sigma {np.mean(z <= 2):.0%}; against the shipped "
                f"prior: closer on {np.mean(rmsd < base):.0%} of structures, mean difference "
                f"{np.mean(rmsd - base):+.3f} A",
                flush=True,
            )


def ranking(args) -> None:
    """Near-closed ranking, two remedies tried on held-out pools of xfit's own (never the shared frames), X-ray total
    at 0.1 %, default Posterior without proposal seeds:

    - the basins ranked with the prior tempered, weights from -chi2/2 - lam E(x*, sigma_min) instead of -chi2/2 - E
      (one annealing, each lam re-summarised; lam 0: chi2 alone ranks);
    - a product of experts: the prior the mean energy (network and tables) of ``--experts``, the bank of prior draws
      from the first of them.

    Pools, e.g. ``xfit pool CHD --method excited -n 96 --q 0.2:8:16 --seed 12`` and ``xfit pool CHD --method sweep -n
    96 --range 1.45:6.0 --temperature 800 --q 0.2:8:16 --seed 11``."""
    import flax
    import jax
    import jax.numpy as jnp

    import xfit
    from xfit.infer import _result

    @flax.struct.dataclass
    class Mean:  # E(x, sigma) or a table's E(x, level): the members' mean
        members: tuple

        def __call__(self, x, s):
            return sum(m(x, s) for m in self.members) / len(self.members)

        def hessian(self, x, sigma):  # the networks' own (the Laplace stage; a table has none and needs none)
            return sum(m.hessian(x, sigma) for m in self.members) / len(self.members)

    class Experts:
        def __init__(self, names):
            self.priors = [xfit.load_conformer_prior(n) for n in names]
            self.sigma_min = self.priors[0].sigma_min
            if any(p.sigma_min != self.sigma_min for p in self.priors):
                raise SystemExit("--experts: priors with different sigma_min")

        def energy_fn(self, mol):
            return Mean(tuple(p.energy_fn(mol) for p in self.priors))

        def energy_table(self, mol, sigmas):
            return Mean(tuple(p.energy_table(mol, sigmas) for p in self.priors))

        def bank(self, *a, **k):
            return self.priors[0].bank(*a, **k)

        def sample(self, *a, **k):
            return self.priors[0].sample(*a, **k)

    start = xfit.read_structures(ROOT / "examples" / "data" / "chd.xyz")[0]
    lams = [float(v) for v in args.lams.split(",")]
    fields = parse_fields(args.set)

    def report(label, results, truths, base):
        rmsd = np.array([carbon_rmsd(r.atoms, t) for r, t in zip(results, truths, strict=True)])
        c16 = np.array([t.get_distance(0, 5) for t in truths])
        closed = c16 <= 2.3
        z = np.array(
            [
                abs(r.atoms.get_distance(0, 5) - d) / r.uncertainty.distance(0, 5)
                for r, d in zip(results, c16, strict=True)
            ]
        )
        base = rmsd if base is None else base
        med = lambda a: f"{np.median(a):.3f}" if len(a) else "-"  # noqa: E731
        print(
            f"  {label}: C-RMSD median {med(rmsd)} A, mean {np.mean(rmsd):.3f}, near-closed {med(rmsd[closed])}, "
            f"opened {med(rmsd[~closed])}; C1-C6 within 2 sigma {np.mean(z <= 2):.0%}; against the first row: "
            f"closer on {np.mean(rmsd < base - 1e-6):.0%}, farther on {np.mean(rmsd > base + 1e-6):.0%}",
            flush=True,
        )
        return base

    shipped = xfit.load_conformer_prior("conformer")
    for pool in args.pools:
        _, frames = pool_truths(pool, args.stride, start)
        truths = [t for _, t in frames]
        closed = sum(t.get_distance(0, 5) <= 2.3 for t in truths)
        print(f"{pool}: {len(truths)} structures, {closed} near-closed", flush=True)
        patterns = patterns_of(frames, "xray")
        store = {}
        with captured_summary(store):
            xfit.retrieve(patterns, start, strategy=xfit.Posterior(shipped, **fields))
        problem, ensemble, kwargs = store["problem"], store["ensemble"], store["kwargs"]
        energy = shipped.energy_fn(problem.molecule)
        e = np.asarray(energy(jnp.asarray(ensemble.optima, jnp.float32), shipped.sigma_min), np.float64)  # (T, S)
        e = np.repeat(e, ensemble.weights.shape[1] // e.shape[1], axis=1)  # per draw: its basin's
        base = None
        for lam in lams:
            log_w = np.where(
                ensemble.weights > 0, np.log(np.maximum(ensemble.weights, 1e-300)) + (1 - lam) * e, -np.inf
            )
            w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
            tempered = dataclasses.replace(ensemble, weights=w / w.sum(axis=1, keepdims=True))
            base = report(
                f"prior x {lam:g} in the ranking", _result.summarise(problem, tempered, **kwargs), truths, base
            )
        if args.experts:
            experts = Experts(args.experts.split(","))
            results = xfit.retrieve(patterns, start, strategy=xfit.Posterior(experts, **fields))
            report(f"experts {args.experts}", results, truths, base)
        jax.clear_caches()


def levels(args) -> None:
    """Conformer priors' own CHD draws against the number of annealing levels (``ConformerPrior.sample``, tables,
    4,000 draws): the fraction with C1-C6 > 2.5 A and with another ring bond > 2.5 A. A prior whose scores at every
    noise level belong to one density gives the same fractions at any number of levels; the training pools hold
    C1-C6 > 2.5 A in 19 % of CHD structures, weighted as training draws them, and no other ring bond broken."""
    import jax

    import xfit

    graph = xfit.MoleculeGraph.from_atoms(xfit.read_structures(ROOT / "examples" / "data" / "chd.xyz")[0])
    ring = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    for name in args.priors.split(","):
        prior = xfit.load_conformer_prior(name)
        for steps in (100, 300, 1000, 3000):
            x = prior.sample(jax.random.key(args.seed), graph, args.draws, steps=steps, tables=True)
            other = np.mean([np.linalg.norm(x[:, i] - x[:, j], axis=-1) > 2.5 for i, j in ring])
            opened = np.mean(np.linalg.norm(x[:, 0] - x[:, 5], axis=-1) > 2.5)
            print(f"{name}: {steps:5d} levels: C1-C6 > 2.5 A {opened:.3f}, per other ring bond {other:.4f}", flush=True)


def quantiles(args) -> None:
    """Conformer priors' own draws against their training pools, per molecule (the table of
    ``xfit/weights/conformer/README.md``): 5 / 50 / 95 % quantiles of CHD's ring distances and C-H bonds, the
    fraction of CHD draws with C1-C6 > 2.5 A, and per molecule the fraction of draws with any bond beyond the pools'
    99.9th percentile of that bond + 0.3 A, and with a bond broken (``xfit.chem._sampling.broken_bonds``) that no
    pool structure breaks. Pools are weighted as training draws them (each pool alike): ``--draws``
    structures per molecule, split evenly over its pools; prior draws by ``ConformerPrior.sample`` (300 levels,
    from the per-pair tables)."""
    import json

    import h5py
    import jax
    from ase import Atoms

    import xfit
    from xfit.chem._sampling import broken_bonds
    from xfit.chem._structures import covalent_bonds

    rng = np.random.default_rng(args.seed)
    paths: dict[str, list] = {}
    for path in args.pools:
        with h5py.File(path, "r") as f:
            paths.setdefault(str(f.attrs["molecule"]), []).append(path)
    by_molecule: dict[str, list] = {}
    for name, group in paths.items():
        parts = []
        for path in group:
            with h5py.File(path, "r") as f:
                n, numbers, reference = int(f.attrs["n_complete"]), f["numbers"][:], f["reference_positions"][:]
                rows = np.sort(rng.choice(n, min(n, args.draws // len(group)), replace=False))
                parts.append(f["positions"][rows])
                # Every frame against the bonds of the pool's start, a swept distance aside: a pool of the molecule
                # breaks none (the sweeps before commit f563db0 did).
                swept = json.loads(f.attrs["sampler_parameters"]).get("coordinate") or ""
                start_bonds = covalent_bonds(Atoms(numbers=numbers, positions=reference))
                if swept.startswith("distance:"):
                    pair = sorted(int(v) for v in swept.partition(":")[2].split(","))
                    start_bonds = start_bonds[np.any(start_bonds != pair, axis=1)]
                torn = broken_bonds(numbers, start_bonds, f["positions"][:n]).any(axis=-1).sum()
                print(
                    f"{Path(path).name}: {torn} of {n} frames break a bond of the start structure "
                    f"({swept or 'no sweep'} aside)"
                )
        by_molecule[name] = [xfit.MoleculeGraph.from_atoms(Atoms(numbers=numbers, positions=reference)), parts]
    chd_pairs = {"C1-C2": (0, 1), "C2-C3": (1, 2), "C3-C4": (2, 3), "C1-C6": (0, 5)}

    def bond_lengths(graph, x):
        return np.linalg.norm(x[:, graph.bonds[:, 0]] - x[:, graph.bonds[:, 1]], axis=-1)  # (B, n_bonds)

    def row(values) -> str:
        return " / ".join(f"{v:.2f}" for v in np.percentile(values, [5, 50, 95]))

    samples = {}
    for prior_name in args.priors.split(","):
        prior = xfit.load_conformer_prior(prior_name)
        for name, (graph, _) in by_molecule.items():
            x = prior.sample(jax.random.key(args.seed), graph, args.draws, steps=300, tables=True)
            samples[prior_name, name] = np.asarray(x, np.float64)
    for name, (graph, parts) in by_molecule.items():
        pool = np.concatenate(parts)
        limit = np.percentile(bond_lengths(graph, pool), 99.9, axis=0) + 0.3
        print(f"{name}: {len(pool)} pool structures ({len(parts)} pools alike), {args.draws} draws per prior")
        sources = {"pools": pool, **{p: samples[p, name] for p in args.priors.split(",")}}
        if graph.formula == "C6H8":
            ch = [k for k, (a, b) in enumerate(graph.bonds) if sorted(graph.numbers[[a, b]]) == [1, 6]]
            for label, x in sources.items():
                cells = [f"{k} {row(np.linalg.norm(x[:, i] - x[:, j], axis=-1))}" for k, (i, j) in chd_pairs.items()]
                cells.append(f"C-H (all) {row(bond_lengths(graph, x)[:, ch].ravel())}")
                opened = np.mean(np.linalg.norm(x[:, 0] - x[:, 5], axis=-1) > 2.5)
                print(f"    {label:>20}: {'; '.join(cells)}; C1-C6 > 2.5 A {100 * opened:.1f} %")
        never = ~broken_bonds(graph.numbers, graph.bonds, pool).any(axis=0)  # bonds that no pool structure breaks
        for label, x in sources.items():
            beyond = np.mean(np.any(bond_lengths(graph, x) > limit, axis=1))
            torn = np.mean(broken_bonds(graph.numbers, graph.bonds[never], x).any(axis=-1))
            print(
                f"    {label:>20}: any bond beyond the pools' 99.9th percentile + 0.3 A: {100 * beyond:.1f} %; "
                f"a bond broken (> 1.5 x covalent radii) that no pool structure breaks: {100 * torn:.1f} %"
            )


def labelling(args) -> None:
    """The default call on every ``stride``-th shared frame: carbon RMSD as labelled and allowing the molecule's
    graph symmetry (CHD's ring read the other way round), on how many frames the other labelling of the result lies
    closer to the truth, and how many results hold a mode of mass > 0.01 that is mode 0 under the other labelling
    (carbon RMSD to mode 0 < 0.1 A with the relabelling, > 0.15 A without). Written for xfit >= 2026-12-07; with
    ``PYTHONPATH`` at an older checkout its retrieval runs and this file's scoring (the graph symmetry enumerated
    here, as ``MoleculeGraph.skeleton_automorphisms`` does) measures it."""
    import xfit
    from xfit.chem._graph import MoleculeGraph

    frames = load_frames(args.stride, None)
    start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
    results = xfit.retrieve(patterns_of(frames, args.kind), start)
    automorphisms = MoleculeGraph.from_atoms(start).automorphisms()
    reverse = next(list(p) for p in automorphisms if list(p[:6]) == [5, 4, 3, 2, 1, 0])

    def carbons(a, b, symmetric: bool) -> float:
        same = xfit.rmsd(a, b, heavy_only=True, permute_equivalent=False)
        return min(same, xfit.rmsd(a[reverse], b, heavy_only=True, permute_equivalent=False)) if symmetric else same

    labelled, either, duplicates = [], [], 0
    for r, (_, truth) in zip(results, frames, strict=True):
        labelled.append(carbons(r.atoms, truth, False))
        either.append(carbons(r.atoms, truth, True))
        duplicates += any(
            mass > 0.01 and carbons(c, r.candidates[0], True) < 0.1 and carbons(c, r.candidates[0], False) > 0.15
            for mass, c in zip(r.modes[1:], r.candidates[1:], strict=True)
        )
    labelled, either = np.array(labelled), np.array(either)
    closed = np.array([t.get_distance(0, 5) <= 2.3 for _, t in frames])
    print(f"{args.kind}, {len(frames)} frames (stride {args.stride}), xfit at {Path(xfit.__file__).parents[1]}")
    print(f"  other labelling closer to the truth on {np.sum(either < labelled - 1e-9)} of {len(frames)} frames")
    for name, m in (("all", np.ones_like(closed)), ("near-closed", closed), ("opened", ~closed)):
        print(
            f"  {name:<11} ({m.sum():>3}): carbon RMSD median as labelled {np.median(labelled[m]):.4f} A, "
            f"either labelling {np.median(either[m]):.4f} A"
        )
    print(f"  results with a mode (mass > 0.01) that is mode 0 under the other labelling: {duplicates}")


def identifiability(args) -> None:
    """Near-closed CHD: do the pattern and the prior tell the truth from the reported structure? The default call on
    the shared near-closed frames (``--pool``: instead every ``stride``-th near-closed structure of a CHD pool of
    xfit's own, e.g. ``xfit pool CHD --method excited -n 96 --q 0.2:8:16 --seed 12``, never the shared frames), then
    per kind:

    - the optimum of U = chi2/2 + E(x, sigma_min) nearest the truth (the truth relaxed, as in :func:`basins`) against
      the reported structure: U's difference split into the data's, (chi2(nearest) - chi2(reported))/2 (negative:
      the data prefer the truth's basin), and the prior's, E(nearest) - E(reported) (positive: the prior prefers
      the reported one), in nats; chi2 with scale and background profiled (float64);
    - CHD's bond-length alternation (:func:`alternation_index`) of truth and result, and how often a truth whose
      alternation is inverted (A < 0, the excited state's bond orders) comes back with the ground state's (A > +0.05);
    - the error bars: the six ring bonds and A within 1/2/3 sigma (``uncertainty.distance``, ``uncertainty.of``), and
      whether the nearest optimum is among the basins they are made of (``uncertainty.basins``), at what weight;
    - other point estimates from the same posterior: the chosen mode's sample mean and the mean of every kept basin
      (``uncertainty.basins``, weights the Laplace masses to the power beta), heavy atoms, the hydrogens as reported:
      carbon RMSD, chi2_reduced and the fraction of frames closer than the reported structure."""
    import jax.numpy as jnp

    import xfit
    from xfit.infer import _result

    if args.pool:
        start = xfit.read_structures(ROOT / "examples" / "data" / "chd.xyz")[0]
        frames = pool_truths(args.pool, args.stride, start)[1]
        frames = [f for f in frames if f[1].get_distance(0, 5) <= 2.3]
    else:
        start = xfit.read_structures(CHD / "chd_reference.xyz")[0]
        frames = near_closed_frames(args.stride)
    truths = [t for _, t in frames]
    a_truth = alternation_index(np.stack([t.positions for t in truths]))
    ring = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0)]
    betas = [1.0, 0.35]
    defaults = {f.name: f.default for f in dataclasses.fields(xfit.Posterior)}
    tempering = parse_fields(args.set).get("basin_tempering", defaults["basin_tempering"])  # of the basins' weights
    prior = xfit.load_conformer_prior()
    print(
        f"{args.pool or 'shared frames'}{args.set_text}: {len(frames)} near-closed structures (stride {args.stride}); "
        f"true alternation 5/50/95 % {np.percentile(a_truth, [5, 50, 95]).round(3).tolist()} A, < 0 on "
        f"{np.mean(a_truth < 0):.0%}",
        flush=True,
    )
    pct = lambda a: "/".join(f"{100 * np.mean(a <= k):.0f}" for k in (1, 2, 3)) + " %"  # noqa: E731
    q = lambda a: "/".join(f"{v:+.1f}" for v in np.percentile(a, [5, 50, 95]))  # noqa: E731
    for kind in args.kinds.split(","):
        store = {}
        with captured_summary(store):
            results = xfit.retrieve(patterns_of(frames, kind), start)
        problem = store["problem"]
        heavy, dof = problem.molecule.heavy, problem.likelihood.dof
        energy, sigma = prior.energy_fn(problem.molecule), prior.sigma_min
        truth_x = np.stack([xfit.relabelled(t, r.atoms).positions for t, r in zip(truths, results, strict=True)])
        nearest = nearest_optima(problem.likelihood, energy, truth_x, sigma)
        best = np.stack([r.atoms.positions for r in results])
        chi2 = {
            name: np.array([_result._fit(problem, t, x[t])[2] for t in range(len(x))])
            for name, x in (("reported", best), ("nearest", nearest))
        }
        e = {
            name: np.asarray(energy(jnp.asarray(x, jnp.float32), sigma), np.float64)
            for name, x in (("reported", best), ("nearest", nearest))
        }
        data, prior_part = 0.5 * (chi2["nearest"] - chi2["reported"]), e["nearest"] - e["reported"]
        reported = np.array([carbon_rmsd(r.atoms, t) for r, t in zip(results, truths, strict=True)])
        near = np.array([carbon_rmsd(_with(start, x), t) for x, t in zip(nearest, truths, strict=True)])
        a_result = alternation_index(best)
        z_bonds, z_a, held = [], [], []
        others = {"chosen mode's sample mean": []} | {f"every basin, mass^{b:g}": [] for b in betas}
        for t, (r, truth) in enumerate(zip(results, truths, strict=True)):
            z_bonds.append(
                [
                    abs(r.atoms.get_distance(i, j) - np.linalg.norm(truth_x[t, i] - truth_x[t, j]))
                    / r.uncertainty.distance(i, j)
                    for i, j in ring
                ]
            )
            sigma_a = r.uncertainty.of(lambda x: float(alternation_index(x)))
            z_a.append(abs(a_result[t] - float(alternation_index(truth_x[t]))) / sigma_a)
            optima, _, w = r.uncertainty.basins
            gap = [carbon_rmsd(_with(start, o), _with(start, nearest[t])) for o in optima]
            held.append((min(gap), w[int(np.argmin(gap))], carbon_rmsd(r.atoms, _with(start, nearest[t]))))
            log_w = np.log(np.maximum(w, 1e-300)) / tempering  # back to the untempered masses
            xs, w0 = r.uncertainty.samples
            means = [np.einsum("s,sij->ij", w0, xs)]
            for beta in betas:
                wb = np.exp(beta * (log_w - log_w.max()))
                means.append(np.einsum("b,bij->ij", wb / wb.sum(), optima))
            for values, mean in zip(others.values(), means, strict=True):
                x = best[t].copy()
                x[heavy] = mean[heavy] + best[t].mean(axis=0)
                values.append((carbon_rmsd(_with(start, x), truth), _result._fit(problem, t, x)[2] / dof))
        z_bonds, z_a = np.array(z_bonds), np.array(z_a)
        inverted = a_truth < 0
        print(
            f"{kind:>8}: reported C-RMSD median {np.median(reported):.4f} A ({np.sum(reported <= 0.075)} of "
            f"{len(reported)} within 0.075 A); the optimum nearest the truth {np.median(near):.4f} A from it",
            flush=True,
        )
        print(
            f"          nearest - reported, 5/50/95 %: data (chi2/2) {q(data)}, prior (E) {q(prior_part)}, U "
            f"{q(data + prior_part)} nats; the data prefer the nearest on {np.mean(data < 0):.0%} (by > 2 nats on "
            f"{np.mean(data < -2):.0%}), the prior the reported on {np.mean(prior_part > 0):.0%}"
        )
        print(
            f"          alternation of the result 5/50/95 % {np.percentile(a_result, [5, 50, 95]).round(3).tolist()} A "
            f"(correlation with the truth's {np.corrcoef(a_result, a_truth)[0, 1]:+.2f}); truths with A < 0 reported "
            f"with A > +0.05 A: {np.sum(a_result[inverted] > 0.05)} of {inverted.sum()}; C-RMSD median on truths "
            f"with A < +0.05 A {np.median(reported[a_truth < 0.05]):.4f}, the rest "
            f"{np.median(reported[a_truth >= 0.05]):.4f} A"
        )
        print(f"          within 1/2/3 sigma: ring bonds {pct(z_bonds)}, alternation {pct(z_a)}")
        gap, weight, apart = np.array(held).T
        other, inside = apart > 0.03, (gap < 0.03) & (apart > 0.03)
        print(
            f"          where the nearest optimum is not the reported one (> 0.03 A apart, {other.sum()} of "
            f"{len(other)}), it is among the error bars' basins (< 0.03 A) on {inside.sum()}, at tempered weight "
            f"median {np.median(weight[inside]) if inside.any() else float('nan'):.2f}"
        )
        for name, values in others.items():
            c, chi2r = np.array(values).T
            print(
                f"          {name}: C-RMSD median {np.median(c):.4f} A ({np.sum(c <= 0.075)} within 0.075 A), closer "
                f"than reported on {np.mean(c < reported - 1e-6):.0%}; chi2_reduced median {np.median(chi2r):.2f}, "
                f"> 1.5 on {np.mean(chi2r > 1.5):.0%} (reported: "
                f"{np.mean([r.chi2_reduced > 1.5 for r in results]):.0%})",
                flush=True,
            )


def _with(atoms, x):
    """A copy of ``atoms`` at positions x (n, 3)."""
    out = atoms.copy()
    out.positions = x
    return out


def paired(args) -> None:
    """Two runs of ``posterior.py`` (or ``ued.py``: ``--section sm``) compared frame by frame from their JSON files:
    medians, the fraction of frames the second run has closer to the truth (carbon RMSD by more than 1e-3 A) and
    farther, the mean difference, over all frames, near-closed (C1-C6 <= 2.3 A) and opened ones, and the opened
    frames more than 0.5 A off; then, for near-closed frames, each run's mean, how many lie within 0.075 A (issue
    12's target for their median, which sits on a gap between two clusters of frames), and the true ring's
    bond-length alternation (:func:`alternation_index`) of the frames within 0.075 A against the rest."""
    import json

    def rows(path):
        data = json.loads(Path(path).read_text())
        section = data["chd"]["default call"] if args.section is None else data[args.section]
        return {r["frame"]: r for r in section["rows"]}

    a, b = rows(args.first), rows(args.second)
    frames = [k for k in a if k in b]
    ca, cb = (np.array([r[k]["carbon_rmsd"] for k in frames]) for r in (a, b))
    closed = np.array([a[k]["c1c6_true"] <= 2.3 for k in frames])
    print(f"{args.first} -> {args.second}" + (f" [{args.section}]" if args.section else ""))
    for label, m in (("all", np.ones_like(closed)), ("near-closed", closed), ("opened", ~closed)):
        d = cb[m] - ca[m]
        print(
            f"  {label:>11} ({m.sum():3d} frames): median {np.median(ca[m]):.4f} -> {np.median(cb[m]):.4f} A; "
            f"closer on {100 * np.mean(d < -1e-3):.0f} %, farther on {100 * np.mean(d > 1e-3):.0f} %, mean difference "
            f"{d.mean():+.4f} A; > 0.5 A: {np.sum(ca[m] > 0.5)} -> {np.sum(cb[m] > 0.5)}"
        )
    truths = dict(load_frames(1, None))
    alt = alternation_index(np.stack([truths[k].positions for k in frames]))[closed]
    for name, c in ((args.first, ca[closed]), (args.second, cb[closed])):
        good = c <= 0.075
        print(
            f"  near-closed, {Path(name).name}: mean {c.mean():.4f} A, within 0.075 A on {good.sum()} of {len(c)}; "
            f"true alternation median {np.median(alt[good]):+.3f} A there, {np.median(alt[~good]):+.3f} A on the rest"
        )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", help="field=value,... of xfit.Posterior, for every subcommand (before it)")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run benchmarks/NAME.py with Posterior fields replaced (args after --)")
    bench.add_argument("name", choices=["posterior", "ued"])
    seed = sub.add_parser("seed-truth", help="default call against the same with the true structure as a start")
    seed.add_argument("--frames", required=True, help="frame names, e.g. traj001/target_52,traj090/target_56")
    seed.add_argument("--kind", default="xray", choices=["xray", "sm", "elastic"])
    struct = sub.add_parser("structure", help="mode mean, relaxed mean, heaviest basin's optimum")
    struct.add_argument("--stride", type=int, default=3)
    struct.add_argument("--kind", default="xray", choices=["xray", "sm", "elastic"])
    rad = sub.add_parser("radius", help="mode radius on xfit's own CHD pools")
    rad.add_argument("--kind", default="xray", choices=["xray", "sm", "elastic"])
    bas = sub.add_parser("basins", help="reported structure against the posterior optimum nearest the truth")
    bas.add_argument("--stride", type=int, default=3)
    bas.add_argument("--kind", default="xray", choices=["xray", "sm", "elastic"])
    bas.add_argument("--frames", default="near-closed", choices=["near-closed", "opened", "all"])
    bas.add_argument("--seed", type=int, default=0, help="retrieve's seed")
    bas.add_argument("--noise", type=float, help="relative noise (default: the benchmark's, 0.1 %% X-ray, 0.2 %% UED)")
    alt = sub.add_parser("alternation", help="near-closed frames: ring bond lengths assigned, and the pools' spread")
    alt.add_argument("--stride", type=int, default=3)
    alt.add_argument("--kinds", default="xray,sm", help="comma-separated: xray, sm, elastic")
    alt.add_argument("--prior", help="a conformer prior folder instead of the shipped one")
    alt.add_argument("--pools", nargs="*", help="CHD pools (xfit pool) whose alternation to show")
    cal = sub.add_parser("calibration", help="coverage where the truths are the prior's own draws (not shared)")
    cal.add_argument("--n", type=int, default=64, help="prior draws")
    cal.add_argument("--steps", type=int, default=100, help="annealing levels of each draw")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--mcmc", type=int, default=0, help="then this many MALA steps on the prior itself (blackjax)")
    pri = sub.add_parser("priors", help="the default call with other conformer priors, paired against the shipped")
    pri.add_argument("--priors", required=True, help="comma-separated prior folders (xfit train-prior outputs)")
    pri.add_argument("--kinds", default="xray,sm", help="comma-separated: xray, sm, elastic")
    pri.add_argument("--stride", type=int, default=3)
    pri.add_argument("--json", type=Path)
    held = sub.add_parser("heldout", help="conformer priors on a held-out pool of xfit's own (never the shared frames)")
    held.add_argument("--pool", required=True, help="a CHD pool no prior trained on")
    held.add_argument("--priors", required=True, help="comma-separated prior folders, against the shipped one")
    held.add_argument("--stride", type=int, default=2)
    held.add_argument("--draws", type=int, default=2000, help="prior draws for the distance statistics")
    ran = sub.add_parser("ranking", help="near-closed: the prior tempered in the ranking, a product of priors")
    ran.add_argument("--pools", nargs="+", required=True, help="CHD pools of xfit's own no prior trained on")
    ran.add_argument(
        "--lams", default="1,0.8,0.6,0.4,0.2,0", help="prior weights in the ranking (1 first: the default)"
    )
    ran.add_argument("--experts", help="comma-separated priors whose mean energy to try as the prior")
    ran.add_argument("--stride", type=int, default=1)
    lev = sub.add_parser("levels", help="conformer priors' own draws against the number of annealing levels")
    lev.add_argument("--priors", default="conformer", help="comma-separated prior folders or shipped names")
    lev.add_argument("--draws", type=int, default=4000)
    lev.add_argument("--seed", type=int, default=0)
    qua = sub.add_parser("quantiles", help="conformer priors' own draws against their training pools, per molecule")
    qua.add_argument("--pools", nargs="+", required=True, help="the prior's training pools (xfit pool)")
    qua.add_argument("--priors", default="conformer", help="comma-separated prior folders or shipped names")
    qua.add_argument("--draws", type=int, default=2000, help="structures per molecule, pools and each prior")
    qua.add_argument("--seed", type=int, default=0)
    lab = sub.add_parser("labelling", help="the result as labelled and with CHD's ring read either way; split modes")
    lab.add_argument("--stride", type=int, default=4)
    lab.add_argument("--kind", default="xray", choices=["xray", "sm", "elastic"])
    ide = sub.add_parser("identifiability", help="near-closed: the truth's chi2 against the result's; alternation")
    ide.add_argument("--kinds", default="xray,sm,elastic", help="comma-separated: xray, sm, elastic")
    ide.add_argument("--stride", type=int, default=1)
    ide.add_argument("--pool", help="a CHD pool of xfit's own instead of the shared frames")
    par = sub.add_parser("paired", help="two posterior.py (or ued.py) JSON files compared frame by frame")
    par.add_argument("first", type=Path)
    par.add_argument("second", type=Path)
    par.add_argument("--section", help="ued.py: the kind (sm, elastic, ...); posterior.py: leave out")
    args = parser.parse_args(argv)
    args.set_text = f" (--set {args.set})" if args.set else ""
    if (
        not CHD.exists()
        and not getattr(args, "pool", None)
        and args.command
        not in (
            "radius",
            "calibration",
            "heldout",
            "ranking",
            "levels",
            "quantiles",
            "paired",
        )
    ):
        print(f"{CHD} not found: nothing to diagnose")
        return 0
    with posterior_fields(parse_fields(args.set)):
        if args.command == "bench":
            return importlib.import_module(args.name).main(rest)
        commands = {
            "seed-truth": seed_truth,
            "structure": structure,
            "radius": radius,
            "basins": basins,
            "calibration": calibration,
            "alternation": alternation,
            "priors": priors,
            "heldout": heldout,
            "ranking": ranking,
            "levels": levels,
            "quantiles": quantiles,
            "paired": paired,
            "labelling": labelling,
            "identifiability": identifiability,
        }
        commands[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
