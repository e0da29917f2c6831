"""Regenerate chd_traj001_t12.txt: the simulated X-ray pattern that the README's main job retrieves.

IAM total scattering (xfit.scattering) of frame 12 of CHD trajectory 001 (chd_traj001_t12_true.xyz, C1-C6 stretched
to 2.33 A, 240 fs after excitation) on q = 0.5..8 1/A in 76 points, with Gaussian noise of 0.1 % of I (key 0) and
sigma written as the third column. Run from the repository root: python examples/data/make_chd_pattern.py
"""

from pathlib import Path

import jax
import numpy as np
from ase.io import read

import xfit

HERE = Path(__file__).parent
truth = read(HERE / "chd_traj001_t12_true.xyz")
q = np.linspace(0.5, 8.0, 76)
pattern = xfit.Pattern(q, xfit.scattering(truth, q), metadata={"source": "chd_traj001_t12_true.xyz"})
pattern.with_noise(jax.random.key(0), relative=1e-3).save(HERE / "chd_traj001_t12.txt")
