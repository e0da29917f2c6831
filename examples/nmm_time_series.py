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
# published excitation fraction 5.7 % fixed, and once more with the fraction fitted. Then the time course of the
# ring-methyl C-N-C torsion, the ring puckering and the C-O and C-N distances, with Gauss-Newton error bars.
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
series = [p for p in xfit.load_patterns(ROOT / "examples" / "data" / "nmm_experiment.mat") if -0.1 <= p.delay <= 4.0]
if QUICK:
    series = series[::20]
print(f"{len(series)} delays, {series[0]!r}")
options = {"n_starts": 4 if QUICK else 32, "steps": 50 if QUICK else 400}

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
# `iso_stdx`. The ratio sets the noise floor that any fit of these data meets.

# %%
all_delays = xfit.load_patterns(ROOT / "examples" / "data" / "nmm_experiment.mat")
before = [p for p in all_delays if p.delay <= -0.2]
zero_chi2 = np.array([np.mean((p.values / p.sigma) ** 2) for p in before])
noise_scale = float(np.sqrt(np.median(zero_chi2)))
print(
    f"{len(before)} delays before -0.2 ps: chi2_red of the zero signal {zero_chi2.min():.1f}..{zero_chi2.max():.1f}, "
    f"median {np.median(zero_chi2):.1f}: the stated sigma understates the scatter by ~{noise_scale:.1f}x"
)

# %%
fixed = xfit.retrieve(series, nmm, fraction=0.057, **options)
fitted = xfit.retrieve(series, nmm, **options)
print(f"{'delay/ps':>8} {'chi2_red f=5.7%':>15} {'/ noise floor':>13} {'chi2_red fitted':>15} {'fitted f':>9}")
for a, b in zip(fixed, fitted, strict=True):
    print(
        f"{a.pattern.delay:>8.2f} {a.chi2_reduced:>15.2f} {a.chi2_reduced / noise_scale**2:>13.2f} "
        f"{b.chi2_reduced:>15.2f} {b.parameters['fraction']:>9.3f}"
    )
rescaled = np.array([r.chi2_reduced for r in fixed]) / noise_scale**2
print(
    f"chi2_red against the measured noise floor: median {np.median(rescaled):.2f}, "
    f"{np.mean(rescaled <= 1.5):.0%} of delays <= 1.5"
)

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
    values = [fn(r.atoms.positions) for r in fixed]
    errors = [r.uncertainty.of(fn) for r in fixed]
    ax.errorbar(delays, values, errors, fmt="o-", ms=3, lw=0.8, capsize=1.5)
    ax.axhline(fn(nmm.positions), color="0.6", lw=0.8, ls="--")
    ax.set_ylabel(name, fontsize=8)
axes[-1].set_xlabel("delay (ps)")
fig.savefig(OUT / "nmm_time_course.png", dpi=110)
