"""Difference signals and noise models: pure JAX functions with explicit PRNG keys.

All intensities here are arrays over q (q = 4 pi sin(theta)/lambda in 1/A) with any leading batch dimensions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["difference", "gaussian_noise", "percent_difference", "poisson_noise"]


def percent_difference(i_excited, i_reference, fraction=1.0) -> jax.Array:
    """Percent difference signal 100 f (I_exc - I_ref) / I_ref.

    This is the signal of a pump-probe experiment in which a fraction ``f`` of the molecules is excited: the
    "laser on" pattern is f I_exc + (1 - f) I_ref, so 100 (I_on - I_off) / I_off equals the expression above.

    Args:
        i_excited: intensity of the excited-state structure(s), shape (..., n_q).
        i_reference: intensity of the reference (ground-state) structure, broadcastable to ``i_excited``.
        fraction: excitation fraction f in [0, 1], scalar or broadcastable.

    Returns:
        Percent difference, shape of the broadcast inputs.
    """
    return 100.0 * fraction * (i_excited - i_reference) / i_reference


def difference(i_excited, i_reference, fraction=1.0) -> jax.Array:
    """Plain difference signal f (I_exc - I_ref), in the units of the intensities."""
    return fraction * (i_excited - i_reference)


def gaussian_noise(key: jax.Array, intensity, relative) -> tuple[jax.Array, jax.Array]:
    """Gaussian noise proportional to the intensity: I + relative * I * N(0, 1).

    Args:
        key: JAX PRNG key.
        intensity: noiseless intensity, shape (..., n_q).
        relative: noise standard deviation as a fraction of I (e.g. 1e-3 for 0.1 %).

    Returns:
        (noisy intensity, sigma = relative * |I|), each of the shape of ``intensity``.
    """
    intensity = jnp.asarray(intensity)
    sigma = relative * jnp.abs(intensity)
    return intensity + sigma * jax.random.normal(key, intensity.shape, intensity.dtype), sigma


def poisson_noise(key: jax.Array, intensity, photons) -> tuple[jax.Array, jax.Array]:
    """Photon-counting (Poisson) noise at a given total photon count per pattern.

    Each pattern (last axis) is scaled so that its expected counts sum to ``photons``, counts are drawn from a
    Poisson distribution, and the result is scaled back to the units of ``intensity``.

    Args:
        key: JAX PRNG key.
        intensity: noiseless, non-negative intensity, shape (..., n_q).
        photons: expected number of detected photons per pattern, summed over q.

    Returns:
        (noisy intensity, sigma), each of the shape of ``intensity``; sigma = sqrt(expected counts) in the units of
        ``intensity`` (at least one count, so it stays positive).
    """
    intensity = jnp.asarray(intensity)
    per_photon = jnp.sum(intensity, axis=-1, keepdims=True) / photons
    expected = intensity / per_photon
    counts = jax.random.poisson(key, expected, intensity.shape).astype(intensity.dtype)
    return counts * per_photon, jnp.sqrt(jnp.maximum(expected, 1.0)) * per_photon
