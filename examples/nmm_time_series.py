# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # N-methylmorpholine after UV excitation: structures from measured X-ray scattering
#
# The LCLS data of Stankus et al. (Nat. Chem. 2019), shipped as `examples/data/nmm_experiment.mat`: isotropic percent
# difference 100 (I_on - I_off)/I_off with standard errors, q = 0.33-4.37 1/A, delays -1 to 4 ps. Every delay from
# -0.1 to 4 ps is retrieved in one batched call from the ground state (`nmm.xyz`, also the reference), with the
# published excitation fraction 5.7 % fixed, and once more with the fraction fitted: the default call, posterior
# sampling with the shipped conformer prior, against the measured scatter of the data (the stated standard errors
# are rescaled first). Then the time course of the ring-methyl C-N-C torsion, the ring puckering and the C-O and C-N
# distances, with posterior bands (+- 1 posterior standard deviation of each coordinate).
#
# Set `XFIT_QUICK=1` for a small run (what CI executes). Figures and structures go to `examples/output/`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from ase.io import read, write

import xfit

QUICK = os.environ.get("XFIT_QUICK") == "1"
ROOT = Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent
OUT = ROOT / "examples" / "output"
OUT.mkdir(exist_ok=True)

nmm = read(ROOT / "examples" / "data" / "nmm.xyz")
all_delays = xfit.load_patterns(ROOT / "examples" / "data" / "nmm_experiment.mat")

# %% [markdown]
# Named coordinates (atom indices of `nmm.xyz`: ring C0-C1-N3-C5-C10-O12, methyl C6 on N3).

# %%
RING = [0, 1, 3, 5, 10, 12]
coordinates = {
    "torsion C6-N3-C1-C0 (deg)": lambda x: abs(xfit.dihedral(x, 6, 3, 1, 0)),
    "ring puckering Q (A)": lambda x: xfit.puckering_amplitude(x, RING),
    "C-O mean (A)": lambda x: 0.5 * (np.linalg.norm(x[0] - x[12]) + np.linalg.norm(x[10] - x[12])),
    "C-N mean (A)": lambda x: np.mean([np.linalg.norm(x[k] - x[3]) for k in (1, 5, 6)]),
}
for name, fn in coordinates.items():
    print(f"ground state {name}: {fn(nmm.positions):.3f}")

# %% [markdown]
# How large is the noise really? Before time zero nothing has happened, so the zero signal should fit within the
# stated standard errors (chi2_red ~ 1). It does not: the scatter of the unexcited delays is several times
# `iso_stdx`. `xfit.estimate_noise` measures that scatter and rescales every delay's sigma by it, so that the
# likelihood (and every chi2 below) is judged against the real noise.

# %%
before = [p for p in all_delays if p.delay <= -0.15]
zero_chi2 = np.array([np.mean((p.values / p.sigma) ** 2) for p in before])
rescaled_all, noise_scale = xfit.estimate_noise(all_delays, before=-0.15)
print(
    f"{len(before)} delays before -0.15 ps: chi2_red of the zero signal {zero_chi2.min():.1f}..{zero_chi2.max():.1f}, "
    f"median {np.median(zero_chi2):.1f}: the stated sigma understates the scatter by {noise_scale:.2f}x"
)
series = [p for p in rescaled_all if -0.1 <= p.delay <= 4.0]
if QUICK:
    series = series[::20]
print(f"{len(series)} delays, {series[0]!r}")

# %%
fixed = xfit.retrieve(series, nmm, fraction=0.057)
fitted = xfit.retrieve(series, nmm)
print(f"method: {fixed[0].info['method']}")
print(f"{'delay/ps':>8} {'chi2_red f=5.7%':>15} {'chi2_red fitted':>15} {'fitted f':>9}")
for a, b in zip(fixed, fitted, strict=True):
    print(f"{a.pattern.delay:>8.2f} {a.chi2_reduced:>15.2f} {b.chi2_reduced:>15.2f} {b.parameters['fraction']:>9.3f}")
chi2 = np.array([r.chi2_reduced for r in fixed])
print(f"chi2_red against the measured scatter: median {np.median(chi2):.2f}; <= 1.5 at {np.mean(chi2 <= 1.5):.0%}")

frames = []
for r in fixed:
    frame = r.atoms.copy()
    frame.info = {"delay_ps": r.pattern.delay, "chi2_reduced": r.chi2_reduced}
    frames.append(frame)
write(OUT / "nmm_series.xyz", frames, format="extxyz")

# %%
delays = np.array([r.pattern.delay for r in fixed])
fig, axes = plt.subplots(len(coordinates) + 1, 1, figsize=(7, 10), sharex=True, constrained_layout=True)
axes[0].plot(delays, [r.chi2_reduced for r in fixed], "o-", ms=3, label="f = 5.7 %")
axes[0].plot(delays, [r.chi2_reduced for r in fitted], "s-", ms=3, label="f fitted")
axes[0].axhline(1, color="0.6", lw=0.8)
axes[0].set_ylabel("chi2_red")
axes[0].legend(fontsize=8)
for ax, (name, fn) in zip(axes[1:], coordinates.items(), strict=True):
    values = np.array([fn(r.atoms.positions) for r in fixed])
    errors = np.array([r.uncertainty.of(fn) for r in fixed])  # posterior standard deviations
    ax.fill_between(delays, values - errors, values + errors, alpha=0.3, lw=0, label="posterior +- 1 sigma")
    ax.plot(delays, values, "o-", ms=3, lw=0.8)
    ax.axhline(fn(nmm.positions), color="0.6", lw=0.8, ls="--")
    ax.set_ylabel(name, fontsize=8)
axes[-1].set_xlabel("delay (ps)")
fig.savefig(OUT / "nmm_time_course.png", dpi=110)
