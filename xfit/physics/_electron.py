"""Ultrafast electron diffraction analysis: modified molecular scattering sM and the pair distribution function.

Conventions: q = 4 pi sin(theta)/lambda in 1/A, which electron diffraction papers usually call s (e.g. Wolf et
al., Nat. Chem. 11, 504 (2019)); theta is half the scattering angle. All functions are pure JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xfit.physics import _iam

__all__ = ["modified_scattering", "pair_distribution"]


def modified_scattering(numbers, positions, q, *, energy_kev: float, electron_model: str = "mott-bethe"):
    """Modified molecular scattering sM(q) = q I_mol(q) / I_at(q) of electrons, in 1/A.

    Args:
        numbers: atomic numbers (n_atoms,). positions: (..., n_atoms, 3) in A.
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, (n_q,).
        energy_kev: electron kinetic energy (keV). electron_model: "mott-bethe" or "kirkland".

    Returns:
        (..., n_q). Differences between two structures give Delta sM.
    """
    options = {"probe": "electron", "energy_kev": energy_kev, "electron_model": electron_model}
    molecular = _iam.intensity(numbers, positions, q, kind="molecular", **options)
    atomic = _iam.intensity(numbers, positions, q, kind="atomic", **options)
    return jnp.asarray(q, molecular.dtype) * molecular / atomic


def pair_distribution(q, sm, r, *, damping: float = 0.03) -> jax.Array:
    """Pair distribution function by sine transform: PDF(r) = int sM(q) sin(q r) exp(-damping q^2) dq.

    The Gaussian damping (A^2) suppresses the truncation ripples from the finite q range; the integral is the
    trapezoid rule on the given grid.

    Args:
        q: (n_q,) in 1/A, increasing. sm: (..., n_q), e.g. from :func:`modified_scattering` (or Delta sM).
        r: (n_r,) in A. damping: k in exp(-k q^2), A^2.

    Returns:
        (..., n_r); peaks sit at the interatomic distances (weighted by f_i f_j / sum f^2).
    """
    q = jnp.asarray(q)
    weights = jnp.concatenate([jnp.diff(q)[:1] / 2, (q[2:] - q[:-2]) / 2, jnp.diff(q)[-1:] / 2])
    kernel = jnp.sin(q[:, None] * jnp.asarray(r)[None, :]) * (weights * jnp.exp(-damping * q**2))[:, None]
    return jnp.asarray(sm) @ kernel
