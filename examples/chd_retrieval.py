# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Retrieving 1,3-cyclohexadiene structures along a ring-opening trajectory
#
# Simulated CHD frames (Northey, Weber & Kirrander; `../shared/reference/chd_trajectories`) are turned into X-ray
# patterns with xfit's IAM (total intensity, q = 0.5-8 1/A, 0.1 % noise), and each is retrieved independently from
# the ground-state geometry, with C1-C6 (atoms 0 and 5) free to break. Then the same for percent-difference
# patterns against the ground state, with the excitation fraction fitted.
#
# Set `XFIT_QUICK=1` for a small run (what CI executes). Figures go to `examples/output/`.

# %%
import os
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from ase.io import read

import xfit

QUICK = os.environ.get("XFIT_QUICK") == "1"
ROOT = Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent
FRAMES = ROOT.parent / "shared" / "reference" / "chd_trajectories"
OUT = ROOT / "examples" / "output"
OUT.mkdir(exist_ok=True)
options = {"free_pairs": [(0, 5)], "n_starts": 4 if QUICK else 32, "steps": 50 if QUICK else 400}

reference = read(ROOT / "examples" / "data" / "chd.xyz")
stride = 16 if QUICK else 4
paths = sorted((FRAMES / "traj001").glob("target_*.xyz"))[::stride]
truths = [read(p) for p in paths]
q = np.linspace(0.5, 8.0, 76)
print(
    f"{len(truths)} frames of traj001, C1-C6 from {truths[0].get_distance(0, 5):.2f} to "
    f"{truths[-1].get_distance(0, 5):.2f} A"
)

# %% [markdown]
# ## Total intensity with unknown scale, 0.1 % noise

# %%
patterns = [
    xfit.Pattern(q, xfit.scattering(t, q)).with_noise(jax.random.fold_in(jax.random.key(0), k), relative=1e-3)
    for k, t in enumerate(truths)
]
results = xfit.retrieve(patterns, reference, **options)
print(f"{'frame':>6} {'C1-C6 true':>10} {'found':>7} {'+-':>6} {'C-RMSD':>7} {'all':>6} {'chi2_red':>8}")
for path, truth, r in zip(paths, truths, results, strict=True):
    print(
        f"{path.stem[-2:]:>6} {truth.get_distance(0, 5):>10.3f} {r.atoms.get_distance(0, 5):>7.3f} "
        f"{r.uncertainty.distance(0, 5):>6.3f} {xfit.rmsd(r.atoms, truth, heavy_only=True):>7.3f} "
        f"{xfit.rmsd(r.atoms, truth):>6.3f} {r.chi2_reduced:>8.2f}"
    )
results[len(results) // 2].plot(OUT / "chd_fit.png")

# %% [markdown]
# ## The ring-opening coordinate, found against true

# %%
true_c16 = [t.get_distance(0, 5) for t in truths]
found = [r.atoms.get_distance(0, 5) for r in results]
errors = [r.uncertainty.distance(0, 5) for r in results]
fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
ax.errorbar(true_c16, found, errors, fmt="o", ms=4, capsize=2)
lim = [1.3, max(true_c16 + found) + 0.2]
ax.plot(lim, lim, color="0.6", lw=0.8)
ax.set_xlabel("true C1-C6 (A)")
ax.set_ylabel("retrieved C1-C6 (A)")
ax.set_title("CHD traj001, total intensity, 0.1 % noise")
fig.savefig(OUT / "chd_c1c6.png", dpi=110)

# %% [markdown]
# ## Percent difference against the ground state, excitation fraction fitted

# %%
i_ref = xfit.scattering(reference, q)
fraction = 0.1
difference_patterns = []
for k, t in enumerate(truths):
    signal = np.asarray(xfit.percent_difference(xfit.scattering(t, q), i_ref, fraction))
    sigma = np.full_like(signal, 100 * np.sqrt(2) * 1e-3)  # 0.1 % noise on both I_on and I_off
    noise = sigma * np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(1), k), signal.shape))
    difference_patterns.append(xfit.Pattern(q, signal + noise, sigma, kind="percent_difference"))
diff_results = xfit.retrieve(difference_patterns, reference, **options)
for truth, r in zip(truths, diff_results, strict=True):
    print(
        f"C1-C6 {truth.get_distance(0, 5):.2f} -> {r.atoms.get_distance(0, 5):.2f} A, fraction "
        f"{r.parameters['fraction']:.3f} (true {fraction}), C-RMSD {xfit.rmsd(r.atoms, truth, heavy_only=True):.3f}"
    )
