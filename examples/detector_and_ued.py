# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Beyond the 1D curve: a photoselected NMM detector image, and ultrafast electron diffraction of CHD
#
# 1. An XFEL-like flat detector (PONI geometry, 9.5 keV, 1 % polarisation impurity) sees N-methylmorpholine
#    excited with probability ~ cos^2(mu, epsilon): the image carries I0(q) + I2(q) P2(cos theta_q), where theta_q
#    is the angle of each pixel's q vector (on the Ewald sphere) to the pump polarisation. Its radial average gives
#    back the isotropic I0 with error bars, by xfit's own binning and by pyFAI's (when installed).
# 2. keV (90 keV) ultrafast electron diffraction of 1,3-cyclohexadiene before and after ring opening (a frame of
#    the shared simulated trajectory with C1-C6 = 5.3 A): modified scattering sM(q), its difference, and the pair
#    distribution functions, whose C1-C6 peak moves out.
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
OUT = ROOT / "examples" / "output"
OUT.mkdir(exist_ok=True)
nmm = read(ROOT / "examples" / "data" / "nmm.xyz")

# %% [markdown]
# ## A photoselected NMM detector image

# %%
n_pixels = 128 if QUICK else 1024
detector = xfit.Detector.from_beam_center(
    distance_m=0.07, pixel_m=100e-6 * 1024 / n_pixels, shape=(n_pixels, n_pixels), energy_kev=9.5, polarization=0.99
)
detector.to_poni(OUT / "nmm_detector.poni")
dipole = nmm.positions[3] - nmm.positions[12]  # an illustrative transition dipole along the N...O axis
pump = np.array([0.0, 1.0, 0.0])  # vertical pump polarisation, perpendicular to the X-ray polarisation
image = xfit.simulate_image(nmm, detector, dipole=dipole, pump_polarization=pump, photons=1e9, key=jax.random.key(0))
average = xfit.radial_average(image, detector, n_bins=120)
i0, i2 = xfit.anisotropic_scattering(nmm, average.q, dipole, kind="total")
print(f"q = {average.q[0]:.2f}..{average.q[-1]:.2f} 1/A; max |I2/I0| = {np.max(np.abs(i2 / i0)):.3f}")

# %%
corrected = image / (detector.polarization_factor() * detector.solid_angle())
isotropic = np.interp(detector.q(), average.q, average.values)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
art = axes[0].imshow(np.log10(np.maximum(image, 1)), origin="lower", cmap="magma")
fig.colorbar(art, ax=axes[0], label="log10 photons")
axes[0].set_title("photon counts (polarisation, solid angle, anisotropy)")
art = axes[1].imshow(corrected / isotropic - 1, origin="lower", cmap="RdBu_r", vmin=-0.2, vmax=0.2)
fig.colorbar(art, ax=axes[1], label="I / <I>_azimuth - 1")
axes[1].set_title("anisotropy: the P2 pattern of photoselection")
axes[2].errorbar(average.q, average.values, average.sigma, fmt=".", ms=2, label="radial average")
axes[2].plot(average.q, i0, color="C3", label="I0 (closed form)")
axes[2].set_yscale("log")
axes[2].set_xlabel("q (1/A)")
axes[2].legend()
fig.savefig(OUT / "nmm_detector.png", dpi=100)

# %%
try:
    via_pyfai = xfit.radial_average(image, detector, n_bins=120, method="pyfai")
    ratio = average.values / np.interp(average.q, via_pyfai.q, via_pyfai.values)
    print(f"xfit / pyFAI radial average: median {np.median(ratio):.5f}, 5-95 % {np.percentile(ratio, [5, 95])}")
except ImportError:
    print("pyFAI not installed: pip install 'xfit[detector]' to compare")

# %% [markdown]
# ## Ultrafast electron diffraction of CHD before and after ring opening

# %%
frames = ROOT.parent / "shared" / "reference" / "chd_trajectories" / "traj001"
closed = read(ROOT / "examples" / "data" / "chd.xyz")
opened = (
    read(frames / "target_40.xyz") if frames.exists() else read(ROOT / "examples" / "data" / "chd_traj001_t12_true.xyz")
)
print(f"C1-C6: {closed.get_distance(0, 5):.2f} A -> {opened.get_distance(0, 5):.2f} A")
q = np.linspace(0.3, 12.0, 300 if QUICK else 1200)
r = np.linspace(0.5, 6.0, 551)
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), constrained_layout=True)
for label, atoms in (("closed ring", closed), ("opened", opened)):
    sm = xfit.modified_scattering(atoms.numbers, atoms.positions, q, energy_kev=90.0)
    top.plot(q, sm, label=label)
    bottom.plot(r, xfit.pair_distribution(q, sm, r, damping=0.03), label=label)
delta = xfit.modified_scattering(opened.numbers, opened.positions, q, energy_kev=90.0) - xfit.modified_scattering(
    closed.numbers, closed.positions, q, energy_kev=90.0
)
top.plot(q, delta, "k", lw=0.8, label="Delta sM")
bottom.plot(r, xfit.pair_distribution(q, delta, r), "k", lw=0.8, label="Delta PDF")
top.set_xlabel("q = s (1/A)")
top.set_ylabel("sM (1/A)")
bottom.set_xlabel("r (A)")
bottom.set_ylabel("PDF")
top.legend()
bottom.legend()
fig.savefig(OUT / "chd_ued.png", dpi=100)
