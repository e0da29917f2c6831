# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Training a learned prior, and what refinement does with its hypotheses
#
# The prior is a Flax network that reads a pattern and the atom list and proposes K candidate structures; each is
# then refined by gradient descent on the scattering residual. Here we build a small pool of 1,3-cyclohexadiene
# (CHD) structures with xfit's own samplers, train a tiny prior on it for a few hundred steps, and look at its
# hypotheses for one pattern before and after refinement, next to the prior shipped with xfit.
#
# The pattern is `examples/data/chd_traj001_t12.txt`: frame 12 of a simulated ring-opening trajectory (C1-C6 =
# 2.33 A), total intensity with 0.1 % noise. Nothing here is trained on that frame or its trajectory.
#
# Set `XFIT_QUICK=1` for a few training steps (what CI runs). Figures go to `examples/output/`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from ase.io import read

import xfit

QUICK = os.environ.get("XFIT_QUICK") == "1"
ROOT = Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent
DATA = ROOT / "examples" / "data"
OUT = ROOT / "examples" / "output"
OUT.mkdir(exist_ok=True)

# %% [markdown]
# ## Small pools: Wigner sampling at 1000 K and Langevin MD at 1500 K (MMFF94 here, for speed; the shipped
# prior also trains on GFN2-xTB ring-opening sweeps, which MMFF cannot do: it never breaks a bond)

# %%
q_pool = (0.2, 8.0, 128)  # the network's default grid, q = 4 pi sin(theta)/lambda in 1/A
wigner = xfit.build_pool(
    OUT / "chd_wigner_small.h5",
    xfit.PoolSpec("CHD", "wigner", 512 if QUICK else 8192, q_pool, temperature=1000, forcefield="mmff", seed=11),
)
hot = xfit.build_pool(
    OUT / "chd_md_small.h5",
    xfit.PoolSpec("CHD", "md", 24 if QUICK else 512, q_pool, temperature=1500, forcefield="mmff", seed=12),
)
for path in (wigner, hot):
    info = xfit.pool_summary(path, pairs=[(0, 5)])
    c1c6 = info["distances"][(0, 5)]
    print(f"{path.name}: {info['n']} structures, C1-C6 {c1c6['min']:.2f}-{c1c6['max']:.2f} A")

# %% [markdown]
# ## Train: K = 4 hypotheses, winner-take-all on an invariant distance loss, plus the physics term

# %%
config = xfit.PriorConfig(n_hypotheses=4, max_atoms=16, width=32, heads=2, blocks=1)
settings = xfit.TrainConfig(steps=20 if QUICK else 1500, batch_size=32, learning_rate=2e-3, warmup=5)
history = []
prior = xfit.train(
    [wigner, hot],
    OUT / "tiny_prior",
    config=config,
    train_config=settings,
    progress=lambda step, m: history.append(m["rmsd"]),
)
print(f"trained {settings.steps} steps at {prior.metadata['examples_per_second']:.0f} examples/s")
print(f"winner distance RMSD: first 10 steps {np.mean(history[:10]):.3f} A, last 10 {np.mean(history[-10:]):.3f} A")

# %% [markdown]
# ## Hypotheses for one pattern, before and after refinement

# %%
pattern = xfit.load_pattern(DATA / "chd_traj001_t12.txt")
truth = read(DATA / "chd_traj001_t12_true.xyz")
reference = read(DATA / "chd.xyz")
options = {"free_pairs": [(0, 5)], "n_starts": 1, "steps": 60 if QUICK else 1000}


def hypotheses(model):
    proposals, scores = model.propose(pattern.q, pattern.values, pattern.kind, reference)
    before = [reference.copy() for _ in range(proposals.shape[1])]
    for atoms, x in zip(before, proposals[0], strict=True):
        atoms.positions = x
    # Refine every hypothesis on its own (one start each, no random starts) to see where each one lands.
    after = [xfit.retrieve(pattern, h, reference=reference, prior=None, **options).atoms for h in before]
    return before, after, scores[0]


rows = {"tiny prior (trained above)": hypotheses(prior), "shipped prior": hypotheses(xfit.load_prior())}
print(f"{'prior':>28} {'k':>2} {'score':>6} {'C-RMSD before':>13} {'after':>6} {'C1-C6 before':>12} {'after':>6}")
for name, (before, after, scores) in rows.items():
    for k, (b, a) in enumerate(zip(before, after, strict=True)):
        print(
            f"{name:>28} {k:>2} {scores[k]:>6.2f} {xfit.rmsd(b, truth, heavy_only=True):>13.3f} "
            f"{xfit.rmsd(a, truth, heavy_only=True):>6.3f} {b.get_distance(0, 5):>12.2f} {a.get_distance(0, 5):>6.2f}"
        )
print(f"true C1-C6: {truth.get_distance(0, 5):.2f} A")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].plot(history)
axes[0].set(xlabel="step", ylabel="winner distance RMSD (A)", title="training (tiny prior)")
for name, (before, after, _) in rows.items():
    b = [xfit.rmsd(h, truth, heavy_only=True) for h in before]
    a = [xfit.rmsd(h, truth, heavy_only=True) for h in after]
    axes[1].scatter(b, a, label=name)
axes[1].axline((0, 0), slope=1, color="0.7", lw=0.8)
axes[1].set(xlabel="carbon RMSD to truth before refinement (A)", ylabel="after refinement (A)", title="hypotheses")
axes[1].legend()
fig.tight_layout()
fig.savefig(OUT / "prior_hypotheses.png", dpi=120)

# %% [markdown]
# The full retrieval (`xfit.retrieve(pattern, atoms)`) does this for you: the shipped prior's proposals join
# the random starts around the input geometry, all are refined together, and the best by chi^2 wins.

# %%
result = xfit.retrieve(pattern, reference, free_pairs=[(0, 5)], steps=options["steps"])
print(result, "prior:", result.info["prior"])
print(f"C-RMSD to truth {xfit.rmsd(result.atoms, truth, heavy_only=True):.3f} A")
