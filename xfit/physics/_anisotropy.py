"""Anisotropic scattering: photoselected (cos^2-excited) ensembles and fully oriented molecules.

Photoselection. A linearly polarised pump (polarisation epsilon) excites a molecule with probability proportional
to cos^2 of the angle between its transition dipole mu and epsilon; normalised to an orientation average of 1 the
weight is 3 (mu.epsilon)^2 = 1 + 2 P2(mu.epsilon). Averaging the elastic intensity sum_ij f_i f_j exp(i q.r_ij)
over orientations with that weight, by the plane-wave expansion exp(i q.r) = sum_l i^l (2l + 1) j_l(qr)
P_l(q.r) and the addition theorem <P_l(q.R r) P_2(R mu.epsilon)>_R = delta_l2 P_2(q.epsilon) P_2(r.mu) / 5:

    I(q, theta_q) = I0(q) + I2(q) P2(cos theta_q),   cos theta_q = q.epsilon / |q|
    I0(q) = sum_ij f_i f_j j0(q r_ij)                         (the isotropic Debye intensity)
    I2(q) = -2 sum_{i != j} f_i f_j j2(q r_ij) P2(r_ij.mu)    (unit vectors in the dot products)

(Baskin & Zewail, ChemPhysChem 7, 1562 (2006); Lorenz, Moller & Henriksen, Phys. Rev. A 81, 023422 (2010)).
Normalisation: per excited molecule, so that I0 is the pattern of an isotropic sample of the same structure.
q is q = 4 pi sin(theta)/lambda in 1/A everywhere; theta_q is the angle of the q *vector* to epsilon (on a
detector q has a component along the beam, from the Ewald sphere).
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from xfit.physics import _elements, _iam, _qgrid

__all__ = [
    "DIPOLE_KINDS",
    "anisotropic_intensity",
    "anisotropic_scattering",
    "check_dipole",
    "dipole_vector",
    "oriented_intensity",
    "spherical_j2",
]

DIPOLE_KINDS = {"bond": 2, "normal": 3}
"""Transition-dipole specifications attached to the molecule, and how many atom indices each takes."""


def spherical_j2(x):
    """Spherical Bessel function j2(x) = (3/x^2 - 1) sin(x)/x - 3 cos(x)/x^2, with its series below x = 0.5
    (where the closed form loses digits to cancellation); gradient-safe at 0."""
    small = x < 0.5
    xs = jnp.where(small, 1.0, x)
    closed = (3.0 / xs**2 - 1.0) * jnp.sin(xs) / xs - 3.0 * jnp.cos(xs) / xs**2
    x2 = x * x
    series = x2 / 15.0 * (1.0 - x2 / 14.0 * (1.0 - x2 / 36.0))
    return jnp.where(small, series, closed)


def check_dipole(spec, n_atoms: int, positions=None) -> tuple:
    """A validated transition-dipole specification ``(kind, i, j[, k])`` as a hashable tuple of Python values.

    ``("bond", i, j)``: along r_j - r_i; ``("normal", i, j, k)``: normal to the plane of atoms i, j, k (a pi-pi*
    transition of a planar chromophore). Indices are 0-based into the structure's atoms. With ``positions``
    (n_atoms, 3) in A, also checks that the direction is defined there (atoms not coincident, not collinear).

    A lab-frame vector is deliberately not accepted: the P2 component depends on r_ij . mu, so a fixed mu is
    rotation invariant only when the structure is fitted in a fixed frame, which retrieval does not do (its
    structures float freely, the likelihood of an isotropic pattern being invariant to rigid motions). A dipole
    attached to atoms rotates with the structure, keeping the whole likelihood invariant to rigid rotations.

    Raises:
        ValueError naming the problem: unknown kind, wrong number of indices, indices out of range or repeated,
        direction undefined at ``positions``.
    """
    if isinstance(spec, str) or not isinstance(spec, tuple | list) or not spec:
        raise ValueError(f"dipole must be a tuple ('bond', i, j) or ('normal', i, j, k) of atom indices, got {spec!r}")
    kind, indices = spec[0], spec[1:]
    if kind not in DIPOLE_KINDS:
        hint = " (a lab-frame vector is not invariant under the fit's rigid motions)" if kind == "vector" else ""
        raise ValueError(f"unknown dipole kind {kind!r}{hint}; choose one of {tuple(DIPOLE_KINDS)}")
    if len(indices) != DIPOLE_KINDS[kind]:
        raise ValueError(f"a {kind!r} dipole takes {DIPOLE_KINDS[kind]} atom indices, got {len(indices)}: {spec!r}")
    try:
        out = tuple(int(operator.index(v)) for v in indices)
    except TypeError:
        raise ValueError(f"dipole atom indices must be integers, got {indices!r}") from None
    bad = [v for v in out if not 0 <= v < n_atoms]
    if bad:
        raise ValueError(f"dipole {spec!r} refers to atom(s) {bad} that do not exist (the molecule has {n_atoms})")
    if len(set(out)) != len(out):
        raise ValueError(f"dipole {spec!r} repeats an atom; its atom indices must be distinct")
    if positions is not None:
        with jax.enable_x64(True):
            raw = np.asarray(_raw_dipole((kind, *out), jnp.asarray(np.asarray(positions, np.float64))))
        if np.linalg.norm(raw) < 1e-6:
            what = "coincide" if kind == "bond" else "are collinear"
            raise ValueError(f"dipole {spec!r} is undefined: its atoms {what} in the given structure")
    return (kind, *out)


def _raw_dipole(spec: tuple, positions):
    kind, *idx = spec
    if kind == "bond":
        return positions[..., idx[1], :] - positions[..., idx[0], :]
    a = positions[..., idx[1], :] - positions[..., idx[0], :]
    b = positions[..., idx[2], :] - positions[..., idx[0], :]
    return jnp.cross(a, b)


def dipole_vector(spec: tuple, positions):
    """Unit transition dipole (..., 3) of structures (..., n_atoms, 3) in A, for a molecule-frame ``spec``.

    ``spec``: ``("bond", i, j)`` (unit r_j - r_i) or ``("normal", i, j, k)`` (unit (r_j - r_i) x (r_k - r_i)),
    validated by :func:`check_dipole`. Pure JAX, differentiable; it rotates with the structure (R x -> R mu), so
    every quantity built from r_ij . mu is invariant to rigid motions. The sign is immaterial: photoselection
    depends on (mu . epsilon)^2 only.
    """
    raw = _raw_dipole(tuple(spec), jnp.asarray(positions))
    return raw / jnp.sqrt(jnp.sum(raw * raw, axis=-1, keepdims=True) + 1e-30)


def anisotropic_intensity(
    numbers,
    positions,
    q,
    dipole,
    *,
    kind: str = "elastic",
    probe: str = "xray",
    energy_kev: float | None = None,
    electron_model: str = "mott-bethe",
):
    """(I0, I2) of a cos^2-photoselected ensemble (see the module notes), pure JAX.

    Args:
        numbers: atomic numbers (n_atoms,), concrete.
        positions: (..., n_atoms, 3) in A.
        q: q = 4 pi sin(theta)/lambda in 1/A, (n_q,).
        dipole: transition dipole (..., 3) in the molecular frame (any length > 0; only its direction matters).
        kind: "elastic" (default) or "total": Compton scattering is isotropic and adds to I0 only (X-rays; for
            electrons "total" is the elastic intensity, no inelastic model).
        probe: "xray" (form factors f0) or "electron" (scattering factors f_e, ``xfit.electron_form_factor``: the
            same derivation holds for any real, isotropic atomic scattering factor).
        energy_kev, electron_model: electrons only, as for ``xfit.intensity``.

    Returns:
        I0, I2, each (..., n_q), electron units (X-rays) or A^2 (electrons). Differentiable with respect to
        positions and dipole.
    """
    if kind not in ("elastic", "total"):
        raise ValueError(f"kind must be 'elastic' or 'total' for anisotropic scattering, got {kind!r}")
    z = _elements.as_numbers(numbers)
    positions = jnp.asarray(positions)
    dipole = jnp.asarray(dipole, positions.dtype)
    if dipole.shape[-1] != 3:
        raise ValueError(f"dipole must have 3 components, got shape {dipole.shape}")
    if not isinstance(dipole, jax.core.Tracer) and np.any(np.linalg.norm(np.asarray(dipole), axis=-1) == 0):
        raise ValueError("dipole has zero length: the photoselection axis is undefined")
    if probe == "xray":
        i0 = _iam.intensity(z, positions, q, kind=kind)
    else:
        electron = {"probe": probe, "energy_kev": energy_kev, "electron_model": electron_model}
        i0 = _iam.intensity(z, positions, q, kind="elastic", **electron)
    q = jnp.asarray(q.q if isinstance(q, _qgrid.GridArrays) else q, positions.dtype)
    i, j = np.triu_indices(len(z), k=1)
    if probe == "xray":
        f = _elements.form_factor(z, q)
    else:
        f = _elements.electron_form_factor(z, q, energy_kev=energy_kev, electron_model=electron_model)
    d = positions[..., i, :] - positions[..., j, :]
    r = jnp.sqrt(jnp.sum(d * d, axis=-1) + 1e-30)
    mu = dipole / jnp.linalg.norm(dipole, axis=-1, keepdims=True)
    cos = jnp.sum(d * mu[..., None, :], axis=-1) / r
    p2 = 0.5 * (3.0 * cos**2 - 1.0)
    j2 = spherical_j2(r[..., None] * q)
    i2 = -4.0 * jnp.einsum("...p,...pq,pq->...q", p2, j2, f[i] * f[j])  # -2 sum_{i != j} = -4 sum_{i < j}
    return i0, i2


def anisotropic_scattering(atoms, q, dipole, *, kind: str = "elastic", **probe) -> tuple[np.ndarray, np.ndarray]:
    """(I0, I2) as NumPy float64 arrays over q for an ``ase.Atoms`` excited with probability ~ cos^2(mu, epsilon).

    The default kind is "elastic" (the anisotropic part is purely elastic); kind="total" adds the isotropic Compton
    scattering to I0. The pattern at a q vector making angle theta_q with the pump polarisation is
    I0 + I2 P2(cos theta_q). q = 4 pi sin(theta)/lambda in 1/A; dipole (3,) in the frame of ``atoms``. ``probe``:
    ``probe="electron", energy_kev=..., electron_model=...`` as for :func:`anisotropic_intensity`.
    """
    from xfit.chem._structures import as_arrays

    numbers, positions, single = as_arrays(atoms)
    q = _iam.check_q(q)
    with jax.enable_x64(True):
        mu = np.asarray(dipole, float)
        i0, i2 = anisotropic_intensity(numbers, jnp.asarray(positions), q, mu, kind=kind, **probe)
        i0, i2 = np.asarray(i0), np.asarray(i2)
    return (i0[0], i2[0]) if single else (i0, i2)


def oriented_intensity(numbers, positions, q_vectors):
    """Elastic intensity |sum_j f_j(|q|) exp(i q.r_j)|^2 of fixed-in-space molecules at arbitrary q vectors.

    Args:
        numbers: (n_atoms,). positions: (..., n_atoms, 3) in A.
        q_vectors: (n_q, 3) in 1/A (|q| = 4 pi sin(theta)/lambda).

    Returns:
        (..., n_q), electron units.
    """
    z = _elements.as_numbers(numbers)
    positions = jnp.asarray(positions)
    qv = jnp.asarray(q_vectors, positions.dtype)
    f = _elements.form_factor(z, jnp.linalg.norm(qv, axis=-1))  # (n, n_q)
    phase = jnp.einsum("...nc,qc->...nq", positions, qv)
    re = jnp.sum(f * jnp.cos(phase), axis=-2)
    im = jnp.sum(f * jnp.sin(phase), axis=-2)
    return re * re + im * im
