"""Posterior samples on disk: one HDF5 file per call of ``xfit retrieve --samples``, written atomically.

Layout: a group per pattern, ``pattern_0000``, ... with

    numbers (n_atoms,)                     structure (n_atoms, 3) A        candidates (n_modes, n_atoms, 3) A
    samples (n_samples, n_atoms, 3) A      sample_weights (n_samples,)     sample_modes (n_samples,) int
    modes (n_modes,) posterior mass of each candidate                      uncertainty_distances (n_atoms, n_atoms) A
    basin_optima (B, n_atoms, 3) A, basin_covariances (B, 3 n_atoms, 3 n_atoms) A^2, basin_weights (B,): the
        Gaussian mixture the error bars come from (``Uncertainty.basins``, superposed on the structure), when present

and attributes method, chi2_reduced, delay_ps (when known), and the fitted nuisance parameters. Refinement
results (no samples) store their candidates and uncertainty only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["save_samples"]


def save_samples(results: Sequence, path: str | os.PathLike) -> None:
    """Write ``Retrieval`` results (their posterior samples, modes and structures) to an HDF5 file, atomically."""
    import h5py

    from xfit._io import atomic_path
    from xfit.data._results import write_basins

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["n_patterns"] = len(results)
        for k, r in enumerate(results):
            g = f.create_group(f"pattern_{k:04d}")
            g["numbers"] = r.atoms.numbers
            g["structure"] = r.atoms.positions
            g["candidates"] = np.stack([c.positions for c in r.candidates])
            g["uncertainty_distances"] = r.uncertainty.distances
            if r.samples is not None:
                g.create_dataset("samples", data=r.samples.astype(np.float32), compression="gzip", shuffle=True)
                g["sample_weights"] = r.sample_weights
                g["sample_modes"] = r.sample_modes
                g["modes"] = r.modes
            if r.uncertainty.basins is not None:
                write_basins(g, r.uncertainty.basins)
            g.attrs["method"] = str(r.info.get("method", ""))
            g.attrs["chi2_reduced"] = r.chi2_reduced
            if r.pattern.delay is not None:
                g.attrs["delay_ps"] = r.pattern.delay
            for name, value in r.parameters.items():
                g.attrs[name] = value
