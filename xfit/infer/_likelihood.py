"""The likelihood p(patterns | structure): the IAM forward model with its nuisance parameters, built once per call.

For one pattern y (n_q,) with standard errors sigma and a structure x (n_atoms, 3),

    -2 log p(y | x) = chi2(x) + const,   chi2(x) = sum_k ((y_k - m_k(x; theta*(x))) / sigma_k)^2

where the model m depends on the pattern's kind and its nuisance parameters theta are solved in closed form
(weighted linear least squares, i.e. profiled out) at every x, so that strategies only see the structure:

- intensity kinds (total, elastic, ...): m = a I(x) [+ b], overall scale a (and flat background b when asked);
- "percent_difference": m = 100 f (I(x) - I_ref)/I_ref with the excitation fraction f fixed or solved (and then
  held in [0, 1]);
- "difference": m = c (I(x) - I_ref), c = fraction x scale, fixed or solved;
- electrons only, "sm" (modified molecular scattering): m = a q I_mol(x)/I_at, scale a solved (a measured sM has an
  arbitrary scale, set by how I_at was fitted to the data);
- electrons only, "delta_sm": m = f q (I_mol(x) - I_mol(ref))/I_at, the excitation fraction f fixed or solved in
  [0, 1] (Delta sM is a ratio of intensities, so it has no free scale).

Electron patterns (``probe="electron"``) use the same IAM kernel with electron scattering factors f_e (Mott-Bethe
or Kirkland, ``electron_model``). Both parametrisations depend on the electrons' energy only through the
relativistic factor gamma = 1 + E/(m c^2) multiplying every f_e (``xfit.electron_form_factor``), so every electron
intensity is gamma^2 times an energy-independent curve: the shape of every kind is exact without the energy.
Without ``energy_kev`` the model takes gamma = 1 and the fitted scale (or fraction x scale of a plain difference)
absorbs gamma^2; ratios (sm, delta_sm, percent_difference) do not depend on it at all. Only a plain difference
with a fixed fraction, whose model is absolute (A^2), needs the energy.

:class:`Likelihood` is a pytree (arrays as leaves, the static description as metadata), so a strategy passes it
into its jit-compiled loop as an argument; its methods are pure functions of the structure. The probe does not
enter anywhere else: a prior over structures serves X-ray and electron likelihoods alike.

Anisotropic (photoselected) patterns, X-rays or electrons: with a transition dipole ``dipole`` (attached to atoms, see
``xfit.dipole_vector``) each measurement is a pair, its isotropic component y0 (legendre=0) and its P2 component y2
(legendre=2), fitted jointly to one structure: y = [y0, y2] and m = [m0, m2] concatenated along q (2 n_q points,
each half on the grid padded at weight 0, ``Likelihood.grid``),
so chi2 is the sum of both components' chi2 and ONE nuisance parameter serves both (they are two projections of the
same measured image): the scale a of intensity kinds (m2 = a I2(x), I2 from ``xfit.physics._anisotropy``; a flat
background is isotropic and enters m0 only; for sM, m2 = a q I2(x)/I_at) and the fraction f of difference kinds
(m2 = f (I2(x) - I2(ref)); for percent differences 100 f (I2(x) - I2(ref))/I0(ref): the unexcited sample is
isotropic; for Delta sM, f q (I2(x) - I2(ref))/I_at). The excited structure
carries its dipole (evaluated on x), the depleted ground state the reference's.

Detector images (``xfit.DetectorImage``, ``spec.image``): every valid pixel p is a data point,

    m_p = a W_p [I0(|q_p|) + I2(|q_p|) P2(q_hat_p . epsilon)] [+ b],

W_p the polarisation factor x solid angle of the pixel, epsilon the pump polarisation (I2 = 0 without a dipole),
a the scale and b a flat background per pixel (``background``), solved in closed form as above. I0 and I2 depend
on |q| only: they are computed exactly on every ``IMAGE_STRIDE``-th point (``Likelihood.grid``, run-time arrays)
of a uniform grid 0..q_max(1 + 1e-9) of ``IMAGE_GRID`` points (the grid ``xfit.simulate_image`` uses), filled in
between by local cubics (error 1e-7 relative: a quarter of the IAM work; the photoselected I2, several times the
cost of I0, made that the image model's main cost) and interpolated linearly to the pixels, so the model is
simulate_image's image to 1e-7 at the same grid size; the interpolation's own error is 1.5e-5 relative
(measured, CHD to q = 9 1/A, tests/test_image.py), well below the Poisson noise of any pixel under 10^9 photons.
``pixels`` (T, 3, N) holds each pixel's grid coordinate |q_p|/dq, W_p and P2; images are padded with weight 0
(``dof`` counts the weighted points) to the largest number of pixels their masks leave, whatever the count of
invalid ones, so that a series of images on one detector runs one compiled program however many of their pixels
are NaN or negative, and a detector moved to another distance (another q_max) reuses it too.

Choices where the data say nothing (``weights``): without sigma the noise is assumed to be ``relative_sigma``
(default 0.1 %) of each intensity (for difference patterns, that noise on I_on and I_off), which sets how the data
weigh against restraints or a prior; fits then report chi2 against that assumption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xfit.data._pattern import Pattern
from xfit.physics import _anisotropy, _iam
from xfit.physics._elements import relativistic_factor
from xfit.physics._qgrid import GridArrays, padded_grid

__all__ = [
    "DIFFERENCE_KINDS",
    "ELECTRON_KINDS",
    "IMAGE_GRID",
    "INTENSITY_KINDS",
    "Likelihood",
    "LikelihoodSpec",
    "build_image_likelihood",
    "build_likelihood",
    "weights",
]

INTENSITY_KINDS = ("total", "elastic", "atomic", "molecular", "inelastic")
DIFFERENCE_KINDS = ("percent_difference", "difference", "delta_sm")
"""Kinds measured against a reference structure, with an excitation fraction."""
SCALED_KINDS = (*INTENSITY_KINDS, "sm")
"""Kinds with a free overall scale."""
ELECTRON_KINDS = ("elastic", "atomic", "molecular", "sm", "percent_difference", "difference", "delta_sm")
"""The kinds an electron pattern may have: electron inelastic scattering is not modelled, so "total" and
"inelastic" would be modelled as something they are not."""
ANISOTROPIC_KINDS = ("total", "elastic", "molecular", "percent_difference", "difference", "sm", "delta_sm")
"""Kinds with a P2 (legendre=2) component the joint fit models (I2 is purely elastic and molecular); "total" for
X-rays only, "sm" and "delta_sm" for electrons only (q I2/I_at and q Delta I2/I_at)."""
FRACTION_KINDS = ("percent_difference", "delta_sm")
"""Difference kinds whose solved coefficient is the excitation fraction itself, held in [0, 1]."""
IMAGE_GRID = 2049
"""Points of the uniform |q| grid from which the model of a detector image is interpolated to its pixels."""
IMAGE_STRIDE = 4
"""The IAM of an image's model is computed on every IMAGE_STRIDE-th point of its grid, the rest filled in by local
cubics (see module notes)."""
_NOMINAL_KEV = 100.0
"""Energy at which the electron kernel is evaluated when the pattern has none; gamma^2 is divided out again."""


@dataclasses.dataclass(frozen=True)
class LikelihoodSpec:
    """Everything static about the fit of a batch of patterns (hashable: a jit static argument). Not the q grid: it
    is the likelihood's run-time ``grid``, so that one compiled program serves every grid of the same length.

    Attributes:
        numbers: atomic numbers (n_atoms,).
        kind: the patterns' kind (one of Pattern's kinds).
        model_kind: the intensity the model computes ("total", "elastic", ...).
        fraction: fixed excitation fraction (difference kinds), or None to solve it.
        fraction_prior: (mean, sd) of a Gaussian prior on a solved excitation fraction (``FRACTION_KINDS``), or
            None (flat on [0, 1]). The fraction is then solved with the prior's term, and that term,
            ((f - mean)/sd)^2, joins chi2 (:func:`prior_residuals`).
        background: fit a flat background (intensity kinds).
        probe: "xray" or "electron".
        energy_kev: electron kinetic energy (keV), or None: the model then uses gamma = 1 (see module notes).
        electron_model: "mott-bethe" or "kirkland" (electrons).
        dipole: None (isotropic patterns), or the molecule-frame transition dipole ("bond", i, j) or
            ("normal", i, j, k): then every pattern is a pair [I0 component, P2 component] concatenated along q, and
            the grid is that of each half (see module notes).
        image: the patterns are detector images: the data points are pixels, the model's grid is uniform from 0
            (see module notes; intensity kinds only).
    """

    numbers: tuple[int, ...]
    kind: str
    model_kind: str
    fraction: float | None
    background: bool
    probe: str = "xray"
    energy_kev: float | None = None
    electron_model: str = "mott-bethe"
    dipole: tuple | None = None
    image: bool = False
    fraction_prior: tuple[float, float] | None = None

    @property
    def n_nuisance(self) -> int:
        """Nuisance parameters solved per pattern (subtracted from the degrees of freedom of chi2)."""
        if self.kind in SCALED_KINDS:
            return 1 + int(self.background)
        return 0 if self.fraction is not None else 1

    def intensity(self, x, kind: str, grid: GridArrays):
        """IAM intensity (..., n_q) of ``kind`` for structures x (..., n_atoms, 3) in A, for this spec's probe, on
        ``grid`` (q = 4 pi sin(theta)/lambda in 1/A).

        Electrons without an energy: gamma = 1, i.e. the kernel at a nominal energy divided by its gamma^2 (both
        electron models carry the energy only in that factor; see module notes).
        """
        numbers = np.asarray(self.numbers)
        if self.probe == "xray":
            return _iam.intensity(numbers, x, grid, kind=kind)
        energy = _NOMINAL_KEV if self.energy_kev is None else self.energy_kev
        out = _iam.intensity(
            numbers, x, grid, kind=kind, probe="electron", energy_kev=energy, electron_model=self.electron_model
        )
        if self.energy_kev is None:
            out = out / relativistic_factor(_NOMINAL_KEV) ** 2
        return out

    def intensity_p2(self, x, grid: GridArrays):
        """P2 component I2 (..., n_q) of structures x (..., n_atoms, 3) in A photoselected along their own dipole
        (``xfit.physics._anisotropy``), for this spec's probe (electrons without an energy: gamma = 1, as in
        ``intensity``), on ``grid``."""
        numbers = np.asarray(self.numbers)
        mu = _anisotropy.dipole_vector(self.dipole, x)
        if self.probe == "xray":
            return _anisotropy.anisotropic_intensity(numbers, x, grid, mu, kind="elastic")[1]
        energy = _NOMINAL_KEV if self.energy_kev is None else self.energy_kev
        electron = {"probe": "electron", "energy_kev": energy, "electron_model": self.electron_model}
        out = _anisotropy.anisotropic_intensity(numbers, x, grid, mu, **electron)[1]
        if self.energy_kev is None:
            out = out / relativistic_factor(_NOMINAL_KEV) ** 2
        return out

    def modified(self, i_molecular, i_atomic, grid: GridArrays):
        """sM = q I_mol / I_at (..., n_q) in 1/A, q = 4 pi sin(theta)/lambda (``grid``'s)."""
        return jnp.asarray(grid.q, i_molecular.dtype) * i_molecular / i_atomic


def _weighted_lstsq(columns, y, w):
    """Closed-form weighted least squares: coefficients c (..., k) minimising sum w (y - sum_k c_k col_k)^2.

    columns (..., k, n_q); y, w (..., n_q). Solved through the k x k normal equations (k <= 2), written out: a
    batched LAPACK solve of 1 x 1 and 2 x 2 systems and its gradient cost as much as the IAM itself on a CPU.
    """
    a = jnp.einsum("...kq,...lq,...q->...kl", columns, columns, w)
    b = jnp.einsum("...kq,...q,...q->...k", columns, y, w)
    if a.shape[-1] == 1:
        return b / (a[..., 0] + 1e-30)
    if a.shape[-1] != 2:
        raise ValueError(f"at most two linear parameters are fitted in closed form, not {a.shape[-1]}")
    a00, a01, a11 = a[..., 0, 0] + 1e-30, a[..., 0, 1], a[..., 1, 1] + 1e-30
    det = a00 * a11 - a01 * a01
    return jnp.stack([a11 * b[..., 0] - a01 * b[..., 1], a00 * b[..., 1] - a01 * b[..., 0]], axis=-1) / det[..., None]


def _scaled_fit(columns, y, w, background: bool):
    """The model and {"scale"[, "background"]} of the weighted least-squares fit of y by the listed columns
    (each (..., n_q): the shape, then the background's column when ``background``)."""
    columns = jnp.stack(columns, axis=-2)
    coef = _weighted_lstsq(columns, y, w)
    params = {"scale": coef[..., 0]}
    if background:
        params["background"] = coef[..., 1]
    return jnp.einsum("...k,...kq->...q", coef, columns), params


def model_and_parameters(spec: LikelihoodSpec, x, y, w, i_ref, pixels, grid: GridArrays):
    """Model pattern and nuisance parameters for structures x (..., n_atoms, 3) against y, w = 1/sigma^2 (n_q,).
    grid: the q grid as run-time arrays (``Likelihood.grid``): patterns' grid, or for images every
        ``IMAGE_STRIDE``-th point of their model's grid.

    i_ref: the reference structure's ``spec.model_kind`` intensity (difference kinds; for "delta_sm", its molecular
    intensity), broadcastable to the model. pixels: for images (``spec.image``), the per-pixel factors (..., 3, N)
    (see module notes); y, w and the model are then (..., N) pixels.

    Returns:
        (model (..., n_q), parameters dict of (...,) arrays); with ``spec.dipole``, y, w, i_ref and the model are
        (..., 2 n_q): the I0 and P2 components concatenated.
    """
    if spec.image:
        return _image_model_and_parameters(spec, x, y, w, pixels, grid)
    if spec.dipole is not None:
        return _joint_model_and_parameters(spec, x, y, w, i_ref, grid)
    intensity = spec.intensity(x, spec.model_kind, grid)
    if spec.kind in ("sm", "delta_sm"):
        # I_at does not depend on the structure; computed from x only for its batch shape and dtype.
        i_atomic = spec.intensity(x, "atomic", grid)
        if spec.kind == "sm":
            intensity = spec.modified(intensity, i_atomic, grid)
    if spec.kind in SCALED_KINDS:
        columns = [intensity] + ([jnp.ones_like(intensity)] if spec.background else [])
        return _scaled_fit(columns, y, w, spec.background)
    if spec.kind == "percent_difference":
        shape = 100.0 * (intensity - i_ref) / i_ref
    elif spec.kind == "delta_sm":
        shape = spec.modified(intensity - i_ref, i_atomic, grid)
    else:
        shape = intensity - i_ref
    f = _solved_fraction(spec, shape, y, w)
    name = "fraction" if spec.kind in FRACTION_KINDS else "fraction_x_scale"
    return f[..., None] * shape, {name: f}


def _solved_fraction(spec: LikelihoodSpec, shape, y, w):
    """The coefficient f (...,) of a difference model f x shape (..., n_q) against y, w: fixed, or the least-squares
    solution, with the Gaussian prior's term where ``spec.fraction_prior`` is set (still closed form:
    (sum w y s + m/sd^2) / (sum w s^2 + 1/sd^2)), held in [0, 1] for ``FRACTION_KINDS``."""
    if spec.fraction is not None:
        return jnp.full(shape.shape[:-1], spec.fraction, shape.dtype)
    numerator, denominator = jnp.sum(w * y * shape, axis=-1), jnp.sum(w * shape * shape, axis=-1)
    if spec.fraction_prior is not None:
        mean, sd = spec.fraction_prior
        numerator, denominator = numerator + mean / sd**2, denominator + 1.0 / sd**2
    f = numerator / (denominator + 1e-30)
    if spec.kind in FRACTION_KINDS:
        # A fraction of molecules lies in [0, 1]. Unbounded, it trades off against the size of the structural
        # change (a smaller change with f > 1 fits as well): measured on CHD, f = 2.6 and 0.14 A carbon RMSD
        # unbounded, against 0.05 A with f known. Within [0, 1] it still does for small changes (f runs to 1):
        # ``fraction_prior`` is for what the experiment knows of f.
        f = jnp.clip(f, 1e-6, 1.0)
    return f


def prior_residuals(spec: LikelihoodSpec, parameters: dict):
    """Residuals (..., k) of the priors on solved nuisance parameters, in chi2 units (their squares add to chi2):
    (f - mean)/sd for a fraction with ``spec.fraction_prior`` (k = 1), else none (k = 0)."""
    if spec.fraction_prior is None or "fraction" not in parameters:
        f = next(iter(parameters.values()))
        return jnp.zeros((*jnp.shape(f), 0), jnp.result_type(f))
    mean, sd = spec.fraction_prior
    return ((parameters["fraction"] - mean) / sd)[..., None]


def _image_model_and_parameters(spec: LikelihoodSpec, x, y, w, pixels, grid: GridArrays):
    """The pixel model a W_p [I0 + I2 P2] (+ b) (..., N), I0 and I2 computed on ``grid`` (the model grid's every
    IMAGE_STRIDE-th point), filled in by local cubics and interpolated linearly to the pixels (module notes)."""
    u, weight, p2 = pixels[..., 0, :], pixels[..., 1, :], pixels[..., 2, :]
    n_grid = (len(grid) - 1) * IMAGE_STRIDE + 1
    fine = np.arange(n_grid) / IMAGE_STRIDE  # the model grid in units of the coarse grid's spacing
    k = jnp.clip(jnp.floor(u), 0, n_grid - 2)
    frac = u - k
    k = k.astype(jnp.int32)

    def at(grid_values):  # (..., n_grid) -> (..., N), linear interpolation at the pixels
        batch = jnp.broadcast_shapes(grid_values.shape[:-1], k.shape[:-1])
        g = jnp.broadcast_to(grid_values, (*batch, n_grid))
        kk = jnp.broadcast_to(k, (*batch, k.shape[-1]))
        return jnp.take_along_axis(g, kk, axis=-1) * (1 - frac) + jnp.take_along_axis(g, kk + 1, axis=-1) * frac

    shape = at(_cubic(spec.intensity(x, spec.model_kind, grid), fine))
    if spec.dipole is not None:
        shape = shape + p2 * at(_cubic(spec.intensity_p2(x, grid), fine))
    shape = weight * shape
    columns = [shape] + ([jnp.broadcast_to(jnp.ones_like(weight), shape.shape)] if spec.background else [])
    return _scaled_fit(columns, y, w, spec.background)


def _cubic(values, u):
    """Local cubic (4-point Lagrange) interpolation: values (..., n) on nodes 0 .. n - 1 at the static positions u
    (m,) in node units, (..., m). Between nodes k and k + 1 the cubic through nodes k - 1 .. k + 2 (end intervals:
    the end stencils); exact for cubics, error at most (9/384) h^4 max|f^(4)| at node spacing h."""
    n = values.shape[-1]
    k = np.clip(np.floor(u), 1, n - 3).astype(np.int64)
    t = u - k
    weights = (
        -t * (t - 1) * (t - 2) / 6,
        (t + 1) * (t - 1) * (t - 2) / 2,
        -(t + 1) * t * (t - 2) / 2,
        (t + 1) * t * (t - 1) / 6,
    )
    return sum(jnp.asarray(w, values.dtype) * values[..., k + (i - 1)] for i, w in enumerate(weights))


def _joint_model_and_parameters(spec: LikelihoodSpec, x, y, w, i_ref, grid: GridArrays):
    """The anisotropic model [m0, m2] (..., 2 n_q) with one shared nuisance parameter (see module notes)."""
    i0 = spec.intensity(x, spec.model_kind, grid)
    i2 = spec.intensity_p2(x, grid)
    both = jnp.concatenate([i0, i2], axis=-1)
    if spec.kind in ("sm", "delta_sm"):
        i_atomic = spec.intensity(x, "atomic", grid)
        i_atomic = jnp.concatenate([i_atomic, i_atomic], axis=-1)
        q = jnp.asarray(grid.q, both.dtype)
        q2 = jnp.concatenate([q, q])
        if spec.kind == "sm":
            both = q2 * both / i_atomic
    if spec.kind in SCALED_KINDS:
        columns = [both]
        if spec.background:
            columns.append(jnp.concatenate([jnp.ones_like(i0), jnp.zeros_like(i2)], axis=-1))
        return _scaled_fit(columns, y, w, spec.background)
    shape = both - i_ref
    if spec.kind == "delta_sm":
        shape = q2 * shape / i_atomic
    if spec.kind == "percent_difference":
        n_q = i0.shape[-1]
        i0_ref = i_ref[..., :n_q]
        shape = 100.0 * shape / jnp.concatenate([i0_ref, i0_ref], axis=-1)
    f = _solved_fraction(spec, shape, y, w)  # one fraction for both components
    name = "fraction" if spec.kind in FRACTION_KINDS else "fraction_x_scale"
    return f[..., None] * shape, {name: f}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Likelihood:
    """Gaussian likelihood of T patterns on one q grid, nuisance parameters profiled out.

    Attributes:
        spec: the static description (:class:`LikelihoodSpec`).
        y: patterns (T, n_q), n_q the points of ``grid`` (or pixels, or twice the grid for I0 + P2 pairs). w: weights
            1/sigma^2 (T, n_q). i_ref: the reference structure's intensity of
            ``spec.model_kind`` (T, n_q), used by difference kinds.
        has_sigma: per pattern, whether sigma came with the data (else it was assumed, see ``weights``).
        pixels: detector images only, the per-pixel factors (T, 3, N) (see module notes); None for patterns.
        grid: the q grid as run-time arrays (``GridArrays``). Patterns: their grid,
            extended to a multiple of 16 points (``padded_grid``; each half of an I0 + P2 pair) whose extra points
            have y = 0 and w = 0. Images: every ``IMAGE_STRIDE``-th point of their model's uniform grid 0..q_max
            (module notes), whose values follow the detector while its length is fixed. Through ``jax.jit`` only the
            grid's length is static, so a retrieval on a grid it has not seen (another q range, a few points more or
            fewer, another detector distance) reuses the programs compiled for the last one instead of compiling its
            own (~30 s on a 2-core CPU for the posterior's), in the process and in JAX's persistent cache.

    Methods take structures x (T, ..., n_atoms, 3) in A: pattern t is compared with the structures x[t].
    """

    spec: LikelihoodSpec = dataclasses.field(metadata={"static": True})
    has_sigma: tuple[bool, ...] = dataclasses.field(metadata={"static": True})
    y: jax.Array
    w: jax.Array
    i_ref: jax.Array
    grid: GridArrays
    pixels: jax.Array | None = None

    @property
    def n_patterns(self) -> int:
        return self.y.shape[0]

    @property
    def n_model_q(self) -> int:
        """Points of the q grid the model is computed on per pattern (twice over for an I0 + P2 pair; for images,
        the grid the IAM is computed on, before the cubics fill in the rest)."""
        return len(self.grid) * (1 if self.spec.dipole is None else 2)

    @property
    def dof(self) -> int:
        """Degrees of freedom of each pattern's chi2: points minus nuisance parameters (structure not counted).

        The points of weight > 0 of the pattern with fewest: images are padded to one length, patterns to a grid of
        a multiple of 16 points, with weight 0."""
        n = int(np.min(np.count_nonzero(np.asarray(self.w) > 0, -1)))
        return max(n - self.spec.n_nuisance, 1)

    def _broadcast(self, x, a):
        """Pattern-axis array a (T, n_q) shaped to broadcast against x (T, ..., n_atoms, 3) -> (T, 1.., n_q)."""
        return a.reshape(a.shape[0], *([1] * (x.ndim - 3)), a.shape[-1])

    def model_and_parameters(self, x):
        """Model patterns (T, ..., n_q) and nuisance parameters {name: (T, ...)} for structures x (T, ..., n, 3)."""
        b = lambda a: self._broadcast(x, a)  # noqa: E731
        pixels = None
        if self.pixels is not None:
            pixels = self.pixels.reshape(self.pixels.shape[0], *([1] * (x.ndim - 3)), *self.pixels.shape[1:])
        return model_and_parameters(self.spec, x, b(self.y), b(self.w), b(self.i_ref), pixels, self.grid)

    def chi2(self, x):
        """chi2 (T, ...) of structures x (T, ..., n_atoms, 3) against their patterns."""
        model, parameters = self.model_and_parameters(x)
        chi2 = jnp.sum(self._broadcast(x, self.w) * (self._broadcast(x, self.y) - model) ** 2, axis=-1)
        return chi2 + jnp.sum(prior_residuals(self.spec, parameters) ** 2, axis=-1)

    def point_q(self):
        """q = 4 pi sin(theta)/lambda (1/A) of every data point, (T, N): the grid (twice over for an I0 + P2 pair),
        or each pixel's |q| for images."""
        if self.spec.image:  # pixels hold |q_p| in units of the model grid's step, a 1/IMAGE_STRIDE of the grid's
            step = (self.grid.q[1] - self.grid.q[0]) / IMAGE_STRIDE
            return self.pixels[:, 0, :] * jnp.asarray(step, self.y.dtype)
        q = jnp.asarray(self.grid.q, self.y.dtype)
        return jnp.broadcast_to(q if self.spec.dipole is None else jnp.concatenate([q, q]), self.y.shape)

    def tempered(self, blur, sensitivity=None):
        """The likelihood as seen by a structure whose every atom is uncertain by ``blur`` A per coordinate (a
        scalar): each point's weight w = 1/sigma^2 multiplied by exp(-(q blur)^2), the Debye-Waller factor of the
        pair term, so that the oscillations of the pair sum at high q, and the local optima they make, fade; and,
        with ``sensitivity`` S (T, N) = sum over coordinates of (d model / d x)^2 (``model_sensitivity``), the
        model's own spread from that uncertainty added to the noise, 1/w -> 1/w + blur^2 S (the likelihood
        covariance of pseudoinverse-guided diffusion, Song et al., ICLR 2023): however precise the data, a
        structure known to blur A is not held to them more tightly than its pattern is known. blur = 0 is this
        likelihood."""
        blur = jnp.asarray(blur, self.w.dtype)
        w = self.w * jnp.exp(-((self.point_q() * blur) ** 2))
        if sensitivity is not None:
            w = w / (1.0 + self.w * blur**2 * sensitivity)
        return dataclasses.replace(self, w=w)

    def model_sensitivity(self, x):
        """S (T, N): for each pattern t and data point, the sum over the 3 n coordinates of structure x[t] (T, n, 3)
        (A) of (d model / d x)^2, the model in the data's units with its nuisance parameters refitted: the variance
        of the model per A^2 of independent isotropic displacement of every atom, to first order."""
        image = self.pixels is not None
        pixels = self.pixels if image else jnp.zeros((len(self.y), 0), self.y.dtype)  # vmapped, unused for curves

        def one(x, y, w, i_ref, pixels):
            def model(f):
                return model_and_parameters(self.spec, f, y, w, i_ref, pixels if image else None, self.grid)[0]

            jac = jax.jacfwd(model)(x)  # (N, n, 3): one forward pass per coordinate
            return jnp.sum(jac**2, axis=(-2, -1))

        return jax.vmap(one)(x, self.y, self.w, self.i_ref, pixels)

    def log_density(self, x):
        """log p(y | x) up to a constant, -chi2/2, (T, ...)."""
        return -0.5 * self.chi2(x)

    def select(self, index) -> Likelihood:
        """The likelihood of a subset of the patterns (an index array or slice along T)."""
        index = np.arange(self.n_patterns)[index].reshape(-1)
        has = tuple(self.has_sigma[k] for k in index)
        pixels = None if self.pixels is None else self.pixels[index]
        return Likelihood(self.spec, has, self.y[index], self.w[index], self.i_ref[index], self.grid, pixels)

    def row(self, t: int) -> tuple:
        """(y, w, i_ref, pixels) of pattern t, the arguments of ``model_and_parameters`` after the structure (then
        ``grid``)."""
        return self.y[t], self.w[t], self.i_ref[t], None if self.pixels is None else self.pixels[t]

    def astype(self, dtype) -> Likelihood:
        pixels = None if self.pixels is None else jnp.asarray(self.pixels, dtype)
        arrays = (jnp.asarray(a, dtype) for a in (self.y, self.w, self.i_ref))
        grid = jax.tree.map(lambda a: jnp.asarray(a, dtype), self.grid)
        return Likelihood(self.spec, self.has_sigma, *arrays, grid, pixels)


def weights(pattern: Pattern, relative_sigma: float, sm_scale: float = 1.0) -> tuple[np.ndarray, bool]:
    """1/sigma^2 (n_q,), and whether sigma was given.

    Without sigma the noise is assumed to be ``relative_sigma`` of each intensity value, or, for difference
    patterns, ``relative_sigma`` x 100 sqrt(2) percent (that noise on both I_on and I_off) and relative_sigma x
    sqrt(2) x the RMS of the signal for plain differences. For sM = q I_mol/I_at that noise on I ~ I_at is
    relative_sigma x q in sM units, times the data's own scale ``sm_scale`` (measured sM has an arbitrary one); for
    Delta sM, relative_sigma x sqrt(2) x q. The scale matters: it sets how the data weigh against the restraints
    or the prior.
    """
    if pattern.sigma is not None:
        return 1.0 / pattern.sigma**2, True
    y = np.abs(pattern.values)
    if pattern.kind in INTENSITY_KINDS:
        floor = y[y > 0].min() if np.any(y > 0) else 1.0
        sigma = relative_sigma * np.where(y > 0, y, floor)
    elif pattern.kind == "percent_difference":
        sigma = np.full_like(y, 100 * np.sqrt(2) * relative_sigma)
    elif pattern.kind == "sm":
        sigma = relative_sigma * abs(sm_scale) * pattern.q
    elif pattern.kind == "delta_sm":
        sigma = np.sqrt(2) * relative_sigma * pattern.q
    else:
        sigma = np.full_like(y, np.sqrt(2) * relative_sigma * max(np.sqrt(np.mean(y * y)), 1e-300))
    return 1.0 / sigma**2, False


def model_kind_for(kind: str, model_kind: str, probe: str) -> str:
    """The intensity kind the model computes: its own for intensity patterns, the molecular intensity for sM kinds,
    ``model_kind`` for other differences (for electrons "total" is the elastic intensity: no inelastic model)."""
    if kind in ("sm", "delta_sm"):
        return "molecular"
    if kind not in DIFFERENCE_KINDS:
        return kind
    return "elastic" if probe == "electron" and model_kind == "total" else model_kind


def build_likelihood(
    patterns: Sequence[Pattern],
    numbers: np.ndarray,
    reference_positions: np.ndarray,
    *,
    fraction: float | tuple[float, float] | None,
    model_kind: str,
    background: bool,
    relative_sigma: float,
    dtype=jnp.float64,
    electron_model: str = "mott-bethe",
    p2_patterns: Sequence[Pattern] | None = None,
    dipole: tuple | None = None,
) -> Likelihood:
    """The likelihood of validated patterns on one q grid, its arrays in ``dtype``.

    Args:
        patterns: ``Pattern``s sharing q (q = 4 pi sin(theta)/lambda in 1/A), kind, probe and energy_kev.
        numbers: atomic numbers (n_atoms,). reference_positions: (n_atoms, 3) in A, the reference structure of
            difference patterns (and of the scale guess behind sM weights without sigma).
        fraction: fixed excitation fraction for difference kinds, None to solve it, or (mean, sd) to solve it
            under a Gaussian prior (``LikelihoodSpec.fraction_prior``).
        model_kind: the intensity kind difference patterns were taken in (intensity patterns model their own; sM
            kinds the molecular intensity; see ``model_kind_for``).
        background: fit a flat background (intensity kinds).
        relative_sigma: assumed relative noise where a pattern has no sigma (see ``weights``).
        dtype: float32 or float64 (needs jax_enable_x64). The reference intensity is computed in it, so that a
            difference model of the reference itself is exactly zero.
        electron_model: "mott-bethe" or "kirkland", for electron patterns.
        p2_patterns, dipole: for a joint anisotropic fit, the P2 (legendre=2) components paired in order with
            ``patterns`` (their legendre=0 components) and the validated molecule-frame dipole (see
            ``xfit.physics._anisotropy.check_dipole``). A P2 component without sigma is given sqrt(5) times its
            partner's (assumed or given) sigma: projecting noise that is uniform over cos theta_q onto
            (2l + 1)/2 P_l multiplies its variance by 2l + 1 relative to the l = 0 projection.
    """
    first = patterns[0]
    kind = first.kind
    spec = LikelihoodSpec(
        numbers=tuple(int(z) for z in numbers),
        kind=kind,
        model_kind=model_kind_for(kind, model_kind, first.probe),
        fraction=None if isinstance(fraction, tuple) else fraction,
        fraction_prior=tuple(float(v) for v in fraction) if isinstance(fraction, tuple) else None,
        background=background and kind in INTENSITY_KINDS,
        probe=first.probe,
        energy_kev=first.energy_kev if first.probe == "electron" else None,
        electron_model=electron_model if first.probe == "electron" else "mott-bethe",
        dipole=None if dipole is None else tuple(dipole),
    )
    grid, n = padded_grid(first.q)
    pad = ((0, 0), (0, len(grid) - n))  # the grid's extra points: y = 0 at weight 0
    if dipole is not None:
        return _build_joint(spec, grid, patterns, p2_patterns, reference_positions, relative_sigma, dtype)
    y = np.stack([p.values for p in patterns])
    with jax.enable_x64(dtype == jnp.float64):
        x_ref = jnp.asarray(reference_positions, dtype)
        i_ref = spec.intensity(x_ref, spec.model_kind, grid)
        scales = np.ones(len(patterns))
        if kind == "sm":  # the data's scale against the reference's sM: only for the assumed sigma
            s_ref = np.asarray(spec.modified(i_ref, spec.intensity(x_ref, "atomic", grid), grid), np.float64)[:n]
            scales = y @ s_ref / max(float(s_ref @ s_ref), 1e-300)
        ws = [weights(p, relative_sigma, a) for p, a in zip(patterns, scales, strict=True)]
        w = np.pad(np.stack([w for w, _ in ws]), pad)
        arrays = (jnp.asarray(np.pad(y, pad), dtype), jnp.asarray(w, dtype))
        has = tuple(bool(h) for _, h in ws)
        return Likelihood(spec, has, *arrays, jnp.broadcast_to(i_ref, (len(y), len(i_ref))), grid=grid)


def _build_joint(spec, grid, patterns, p2_patterns, reference_positions, relative_sigma, dtype) -> Likelihood:
    """The anisotropic likelihood: y, w, i_ref as (T, 2 n_pad), the I0 and P2 components on the padded ``grid``
    concatenated, each half's extra points at y = 0 and weight 0."""
    if p2_patterns is None or len(p2_patterns) != len(patterns):
        raise ValueError("a joint anisotropic likelihood needs one P2 pattern per isotropic pattern")
    n_pad, n = len(grid), len(patterns[0].q)

    def pair(a, b):  # the two halves, each padded to the grid
        return np.concatenate([np.pad(a, (0, n_pad - n)), np.pad(b, (0, n_pad - n))])

    y = np.stack([pair(p.values, p2.values) for p, p2 in zip(patterns, p2_patterns, strict=True)])
    scales = np.ones(len(patterns))
    if spec.kind == "sm":  # the data's scale against the reference's sM: only for the assumed sigma (as above)
        with jax.enable_x64(True):
            x64 = jnp.asarray(reference_positions, jnp.float64)
            s_ref = spec.modified(spec.intensity(x64, "molecular", grid), spec.intensity(x64, "atomic", grid), grid)
            s_ref = np.asarray(s_ref)[:n]
        scales = np.stack([p.values for p in patterns]) @ s_ref / max(float(s_ref @ s_ref), 1e-300)
    ws, has = [], []
    for p, p2, scale in zip(patterns, p2_patterns, scales, strict=True):
        w0, h0 = weights(p, relative_sigma, scale)
        w2, h2 = (1.0 / p2.sigma**2, True) if p2.sigma is not None else (w0 / 5.0, False)
        ws.append(pair(w0, w2))
        has.append(bool(h0 and h2))
    with jax.enable_x64(dtype == jnp.float64):
        x_ref = jnp.asarray(reference_positions, dtype)
        i_ref = jnp.concatenate([spec.intensity(x_ref, spec.model_kind, grid), spec.intensity_p2(x_ref, grid)], -1)
        arrays = (jnp.asarray(y, dtype), jnp.asarray(np.stack(ws), dtype))
        return Likelihood(spec, tuple(has), *arrays, jnp.broadcast_to(i_ref, y.shape), grid=grid)


def image_grid(images, n_grid: int = IMAGE_GRID) -> np.ndarray:
    """The uniform |q| grid (n_grid,) in 1/A of the images' model: simulate_image's, up to the largest q_max."""
    q_max = max(image.detector.check_q_range() for image in images)
    return np.linspace(0.0, q_max * (1 + 1e-9), n_grid)


def build_image_likelihood(
    images,
    numbers: np.ndarray,
    *,
    background: bool,
    dipole: tuple | None,
    dtype=jnp.float64,
    n_grid: int = IMAGE_GRID,
    electron_model: str = "mott-bethe",
) -> Likelihood:
    """The pixel likelihood of validated ``xfit.DetectorImage``s sharing kind, probe and dipole (see module notes).

    Args:
        images: the images. numbers: atomic numbers (n_atoms,).
        background: fit a flat background per pixel. dipole: the validated dipole (``check_dipole``) or None.
        electron_model: the electron scattering factors of electron images ("mott-bethe" or "kirkland"), their
            energy left to the fitted scale (gamma^2, as for electron patterns without one).
        dtype: float32 or float64. n_grid: points of the model's |q| grid, 1 + a multiple of ``IMAGE_STRIDE`` (the
            IAM is computed on every IMAGE_STRIDE-th point, the last one included).
    """
    if n_grid < 4 * IMAGE_STRIDE or (n_grid - 1) % IMAGE_STRIDE:
        raise ValueError(
            f"n_grid must be 1 + a multiple of {IMAGE_STRIDE} and at least {4 * IMAGE_STRIDE}, not {n_grid}"
        )
    model_grid = image_grid(images, n_grid)
    dq = model_grid[1] - model_grid[0]
    coarse = model_grid[::IMAGE_STRIDE]  # where the IAM is computed (the last point included: see n_grid)
    spec = LikelihoodSpec(
        numbers=tuple(int(z) for z in numbers),
        kind=images[0].kind,
        model_kind=images[0].kind,
        fraction=None,
        background=background,
        probe=images[0].probe,
        electron_model=electron_model,
        dipole=None if dipole is None else tuple(dipole),
        image=True,
    )
    # Padded to the pixels not masked by the user, not to the valid ones: the count of NaN or negative pixels
    # changes from image to image, and each new length would compile the retrieval again (~20 s on a 2-core CPU).
    n = max(image.data.size - image.n_masked for image in images)
    y, w, pixels, has = np.zeros((len(images), n)), np.zeros((len(images), n)), np.zeros((len(images), 3, n)), []
    for t, image in enumerate(images):
        m = image.n_valid
        sigma, given = image.pixel_sigma()
        factors = image.pixel_factors()
        y[t, :m], w[t, :m] = image.data[image.valid], 1.0 / sigma**2
        pixels[t, :, :m] = factors["q"] / dq, factors["weight"], factors["p2"]
        has.append(bool(given))
    with jax.enable_x64(dtype == jnp.float64):
        y, w, i_ref, pixels = (jnp.asarray(a, dtype) for a in (y, w, np.zeros_like(y), pixels))
        return Likelihood(spec, tuple(has), y, w, i_ref, GridArrays.of(coarse), pixels)
