"""Flat-detector geometry, simulated detector images and their radial average, interoperable with pyFAI.

The geometry follows pyFAI's convention exactly (pyFAI documentation, "Geometry"; Kieffer et al., J. Synchrotron
Rad. 27, 558 (2020)), so that a PONI file means the same thing here and there: SI units (m, rad); pixel (i, j) of
an image of shape (n1, n2) has its centre at d1 = (i + 1/2) pixel1 along the slow axis (1, "y") and
d2 = (j + 1/2) pixel2 along the fast axis (2, "x"); the point of normal incidence (PONI) sits at (poni1, poni2);
the sample is at distance ``distance`` from the PONI; rot1, rot2, rot3 rotate the detector. Lab frame here:
z along the incident beam, x along t2, y along t1 of pyFAI's positions, so that chi = atan2(y, x).

Every pixel gets its outgoing direction k_hat, hence the scattering angle 2 theta, the azimuth chi, the q vector
q = (2 pi / lambda) (k_hat - z_hat) (on the Ewald sphere, not the flat approximation), |q| = 4 pi sin(theta)/lambda
in 1/A, the solid angle it subtends and the polarisation factor.

Electrons (ultrafast electron diffraction) use the same geometry with the electrons' relativistic de Broglie
wavelength (a PONI file calibrated on an electron instrument holds it; ``Detector.from_beam_center(...,
electron_energy_kev=E)`` computes it): their pixels carry the solid angle only, no polarisation factor
(:meth:`Detector.pixel_weight`), and their scattering is the elastic IAM with electron scattering factors, the
energy read from the wavelength.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xfit.physics import _elements, _iam

__all__ = ["Detector", "radial_average", "simulate_image"]


@dataclasses.dataclass(frozen=True)
class Detector:
    """A flat detector, in pyFAI's geometry convention (module notes).

    (One concept with many small derived quantities, each a short method or property: the class is long, its
    methods are not.)

    Attributes:
        distance: sample to PONI distance, m. shape: (n1, n2) pixels (slow, fast).
        pixel1, pixel2: pixel sizes along the slow and fast axes, m.
        poni1, poni2: point of normal incidence on the detector, m from its corner.
        rot1, rot2, rot3: detector rotations, rad (pyFAI's).
        wavelength: X-ray (or electron) wavelength, m.
        polarization: degree of linear polarisation of the beam, -1..1 (pyFAI's polarization_factor: 1 is fully
            polarised along x, the fast axis for an untilted detector; 0 is unpolarised).
    """

    distance: float
    shape: tuple[int, int]
    pixel1: float
    pixel2: float
    poni1: float
    poni2: float
    wavelength: float
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    polarization: float = 0.99

    def __post_init__(self):
        # Plain Python numbers (not NumPy scalars): the PONI file writes their repr.
        for name in ("distance", "pixel1", "pixel2", "poni1", "poni2", "wavelength", "rot1", "rot2", "rot3"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "polarization", float(self.polarization))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        for name in ("distance", "pixel1", "pixel2", "wavelength"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (n1, n2) pixels, got {self.shape}")
        if not -1 <= self.polarization <= 1:
            raise ValueError(f"polarization must be in [-1, 1], got {self.polarization}")

    @classmethod
    def from_beam_center(
        cls,
        *,
        distance_m: float,
        pixel_m: float,
        shape: tuple[int, int],
        beam_center_px: tuple[float, float] | None = None,
        energy_kev: float | None = None,
        wavelength_angstrom: float | None = None,
        tilt_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
        polarization: float = 0.99,
        electron_energy_kev: float | None = None,
    ) -> Detector:
        """An untilted (or tilted) detector from the beam centre in pixels (row, column; default the middle) and the
        photon energy (keV), the wavelength (A), or, for electron diffraction, the electrons' kinetic energy (keV,
        their relativistic de Broglie wavelength). For an untilted detector the beam centre is the PONI."""
        if sum(v is not None for v in (energy_kev, wavelength_angstrom, electron_energy_kev)) != 1:
            raise ValueError("give exactly one of energy_kev=, wavelength_angstrom= or electron_energy_kev=")
        if electron_energy_kev is not None:
            wavelength_angstrom = _elements.electron_wavelength(electron_energy_kev)
        if energy_kev is not None:
            if not energy_kev > 0:
                raise ValueError(f"photon energy must be positive (keV), got {energy_kev}")
            from scipy.constants import electron_volt, h, speed_of_light

            wavelength_angstrom = h * speed_of_light / (energy_kev * 1e3 * electron_volt) * 1e10
        center = beam_center_px if beam_center_px is not None else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
        rot = np.radians(tilt_deg)
        return cls(
            distance=distance_m,
            shape=tuple(int(n) for n in shape),
            pixel1=pixel_m,
            pixel2=pixel_m,
            poni1=(center[0] + 0.5) * pixel_m,
            poni2=(center[1] + 0.5) * pixel_m,
            wavelength=wavelength_angstrom * 1e-10,
            rot1=float(rot[0]),
            rot2=float(rot[1]),
            rot3=float(rot[2]),
            polarization=polarization,
        )

    @property
    def wavelength_angstrom(self) -> float:
        return self.wavelength * 1e10

    @property
    def electron_energy_kev(self) -> float:
        """Kinetic energy (keV) of electrons of this wavelength (for electron diffraction)."""
        return _elements.electron_energy_kev(self.wavelength_angstrom)

    @functools.cached_property
    def _pixel_positions(self) -> np.ndarray:
        """Pixel centres in the lab frame (n1, n2, 3) in m: pyFAI's t1, t2, t3 as (x, y, z) = (t2, t1, t3).

        Computed once per geometry (the dataclass is frozen) and read-only: every map below derives from it."""
        d1 = (np.arange(self.shape[0]) + 0.5) * self.pixel1 - self.poni1
        d2 = (np.arange(self.shape[1]) + 0.5) * self.pixel2 - self.poni2
        p1, p2 = np.meshgrid(d1, d2, indexing="ij")
        c1, c2, c3 = np.cos([self.rot1, self.rot2, self.rot3])
        s1, s2, s3 = np.sin([self.rot1, self.rot2, self.rot3])
        big_l = self.distance
        t1 = c2 * c3 * p1 + (c3 * s1 * s2 - c1 * s3) * p2 - (c1 * c3 * s2 + s1 * s3) * big_l
        t2 = c2 * s3 * p1 + (c1 * c3 + s1 * s2 * s3) * p2 - (c1 * s2 * s3 - c3 * s1) * big_l
        t3 = s2 * p1 - c2 * s1 * p2 + c1 * c2 * big_l
        out = np.stack([t2, t1, t3], axis=-1)
        out.setflags(write=False)
        return out

    @functools.cached_property
    def _directions(self) -> np.ndarray:
        x = self._pixel_positions
        out = x / np.linalg.norm(x, axis=-1, keepdims=True)
        out.setflags(write=False)
        return out

    def directions(self) -> np.ndarray:
        """Unit vectors k_hat of the scattered beam to each pixel, (n1, n2, 3) (read-only)."""
        return self._directions

    def two_theta(self) -> np.ndarray:
        """Scattering angle 2 theta of each pixel, rad."""
        k = self.directions()
        return np.arctan2(np.hypot(k[..., 0], k[..., 1]), k[..., 2])

    def chi(self) -> np.ndarray:
        """Azimuth of each pixel around the beam, rad (pyFAI's chi)."""
        k = self.directions()
        return np.arctan2(k[..., 1], k[..., 0])

    def q_vectors(self) -> np.ndarray:
        """q = k_out - k_in of each pixel, (n1, n2, 3) in 1/A (Ewald sphere)."""
        return 2 * np.pi / self.wavelength_angstrom * (self.directions() - np.array([0.0, 0.0, 1.0]))

    def q(self) -> np.ndarray:
        """|q| = 4 pi sin(theta)/lambda of each pixel, 1/A."""
        return 4 * np.pi / self.wavelength_angstrom * np.sin(self.two_theta() / 2)

    def solid_angle(self) -> np.ndarray:
        """Solid angle subtended by each pixel, sr: pixel area x cos(incidence) / r^2 (small-pixel limit)."""
        x = self._pixel_positions
        r = np.linalg.norm(x, axis=-1)
        cos_incidence = np.abs(x @ self._normal()) / r
        return self.pixel1 * self.pixel2 * cos_incidence / r**2

    def _normal(self) -> np.ndarray:
        """Unit normal of the detector plane in the lab frame: the image of the PONI direction (p1 = p2 = 0)."""
        probe = dataclasses.replace(self, shape=(1, 1), poni1=0.5 * self.pixel1, poni2=0.5 * self.pixel2)
        x = probe._pixel_positions[0, 0]
        return x / np.linalg.norm(x)

    def polarization_factor(self) -> np.ndarray:
        """0.5 (1 + cos^2 2theta) - 0.5 P sin^2 2theta cos 2chi (pyFAI's form; P = ``polarization``)."""
        tth, chi = self.two_theta(), self.chi()
        cos2 = np.cos(tth) ** 2
        return 0.5 * (1 + cos2) - 0.5 * self.polarization * (1 - cos2) * np.cos(2 * chi)

    def pixel_weight(self, probe: str = "xray") -> np.ndarray:
        """What multiplies I(q) in each pixel (n1, n2): polarisation factor x solid angle for X-rays, the solid angle
        alone for electrons (sr)."""
        if probe == "xray":
            return self.polarization_factor() * self.solid_angle()
        if probe == "electron":
            return self.solid_angle()
        raise ValueError(f"unknown probe {probe!r}; choose 'xray' or 'electron'")

    def check_q_range(self) -> float:
        """Largest |q| on the detector (1/A); raises if it is beyond the form-factor tables."""
        q_max = float(self.q().max())
        if q_max > _elements.Q_MAX:
            raise ValueError(
                f"the detector reaches q = {q_max:.1f} 1/A, beyond the form-factor tables (q <= {_elements.Q_MAX:.1f} "
                "1/A): shorten the wavelength's reach (larger distance, smaller detector or longer wavelength)"
            )
        return q_max

    # -------------------------------------------------------------------------------------------- pyFAI, PONI

    def to_poni(self, path: str | os.PathLike) -> Path:
        """Write a pyFAI PONI file (version 2), atomically."""
        import json

        path = Path(path)
        config = {"pixel1": self.pixel1, "pixel2": self.pixel2, "max_shape": list(self.shape)}
        text = (
            "# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis\n# Written by xfit\nponi_version: 2\n"
            f"Detector: Detector\nDetector_config: {json.dumps(config)}\nDistance: {self.distance!r}\n"
            f"Poni1: {self.poni1!r}\nPoni2: {self.poni2!r}\nRot1: {self.rot1!r}\nRot2: {self.rot2!r}\n"
            f"Rot3: {self.rot3!r}\nWavelength: {self.wavelength!r}\n"
        )
        from xfit._io import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
        return path

    @classmethod
    def from_poni(
        cls, path: str | os.PathLike, *, shape: tuple[int, int] | None = None, polarization: float = 0.99
    ) -> Detector:
        """Read a pyFAI PONI file (versions 1 and 2). ``shape`` is needed when the file does not give max_shape."""
        import json

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"PONI file not found: {path}")
        fields = {}
        for line in path.read_text().splitlines():
            if line.strip().startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        config = json.loads(fields.get("detector_config", "{}") or "{}")
        pixel1 = float(config.get("pixel1", fields.get("pixelsize1", "nan")))
        pixel2 = float(config.get("pixel2", fields.get("pixelsize2", "nan")))
        shape = shape or tuple(config.get("max_shape") or ())
        if len(shape) != 2:
            raise ValueError(f"{path}: the PONI file gives no detector shape; pass shape=(n1, n2)")
        try:
            return cls(
                distance=float(fields["distance"]),
                shape=tuple(int(n) for n in shape),
                pixel1=pixel1,
                pixel2=pixel2,
                poni1=float(fields["poni1"]),
                poni2=float(fields["poni2"]),
                rot1=float(fields.get("rot1", 0.0)),
                rot2=float(fields.get("rot2", 0.0)),
                rot3=float(fields.get("rot3", 0.0)),
                wavelength=float(fields["wavelength"]),
                polarization=polarization,
            )
        except KeyError as err:
            raise ValueError(f"{path}: PONI file lacks {err.args[0]!r}") from None

    def to_pyfai(self):
        """A pyFAI AzimuthalIntegrator with this geometry (needs ``pip install pyFAI``)."""
        try:
            from pyFAI.integrator.azimuthal import AzimuthalIntegrator
        except ImportError:  # pragma: no cover - depends on the optional extra
            raise ImportError("pyFAI is not installed: pip install 'xfit[detector]'") from None
        from pyFAI.detectors import Detector as PyFAIDetector

        detector = PyFAIDetector(pixel1=self.pixel1, pixel2=self.pixel2, max_shape=self.shape)
        return AzimuthalIntegrator(
            dist=self.distance,
            poni1=self.poni1,
            poni2=self.poni2,
            rot1=self.rot1,
            rot2=self.rot2,
            rot3=self.rot3,
            detector=detector,
            wavelength=self.wavelength,
        )


def simulate_image(
    atoms,
    detector: Detector,
    *,
    kind: str = "total",
    dipole=None,
    pump_polarization=(0.0, 1.0, 0.0),
    photons: float | None = None,
    key: jax.Array | None = None,
    n_grid: int = 4096,
    probe: str = "xray",
    electron_model: str = "mott-bethe",
) -> np.ndarray:
    """Detector image of a gas sample: polarisation x solid angle x I(pixel) (electrons: solid angle x I(pixel)),
    optionally with counting noise.

    Isotropic sample: I(pixel) = I(|q|). With ``dipole`` (the transition dipole in the molecule's frame), a
    cos^2-photoselected sample: I = I0(|q|) + I2(|q|) P2(q_hat . epsilon), with epsilon = ``pump_polarization``
    in the lab frame and q_hat the direction of each pixel's q vector (Ewald sphere). I(q) is computed exactly on a
    uniform grid of ``n_grid`` points up to the detector's q_max and interpolated linearly to the pixels (relative
    error < 1e-6 for molecules below 10 A across at 4096 points).

    Args:
        atoms: ``ase.Atoms``. detector: :class:`Detector`. kind: "total" or "elastic" (electrons: elastic, the
            same as "total").
        photons: expected photon (or electron) count over the whole image; with ``key``, Poisson counts are
            returned.
        probe: "xray", or "electron": electron scattering factors (``electron_model``, "mott-bethe" or "kirkland")
            at the energy of the detector's wavelength (:attr:`Detector.electron_energy_kev`), no polarisation.

    Returns:
        (n1, n2) float64 image in electron units x sr (electrons: A^2 x sr), or counts when ``photons`` is given.
    """
    from xfit.physics._anisotropy import anisotropic_scattering

    q_max = detector.check_q_range()
    grid = np.linspace(0.0, q_max * (1 + 1e-9), n_grid)
    q_pix = detector.q()
    weight = detector.pixel_weight(probe)
    electron = {}
    if probe == "electron":
        electron = {"probe": probe, "energy_kev": detector.electron_energy_kev, "electron_model": electron_model}
    if dipole is None:
        image = np.interp(q_pix, grid, _iam.scattering(atoms, grid, kind=kind, **electron)) * weight
    else:
        eps = np.asarray(pump_polarization, float)
        if np.linalg.norm(eps) == 0:
            raise ValueError("pump_polarization has zero length")
        eps = eps / np.linalg.norm(eps)
        i0, i2 = anisotropic_scattering(atoms, grid, dipole, kind=kind, **electron)
        qv = detector.q_vectors()
        cos = (qv @ eps) / np.maximum(np.linalg.norm(qv, axis=-1), 1e-300)
        p2 = 0.5 * (3 * cos**2 - 1)
        image = (np.interp(q_pix, grid, i0) + np.interp(q_pix, grid, i2) * p2) * weight
    if photons is not None:
        if key is None:
            raise ValueError("photon noise needs an explicit PRNG key (key=jax.random.key(seed))")
        expected = image / image.sum() * photons
        return np.asarray(jax.random.poisson(key, jnp.asarray(expected)), dtype=np.float64)
    return image


def radial_average(
    image: np.ndarray,
    detector: Detector,
    *,
    n_bins: int = 200,
    mask: np.ndarray | None = None,
    kind: str = "total",
    method: str = "xfit",
    probe: str = "xray",
):
    """Azimuthal (radial) average of an image to an ``xfit.Pattern`` over q, with standard errors.

    Each pixel is divided by its polarisation factor and solid angle (electrons: the solid angle), then pixels are
    binned in |q| (uniform bins over the detector's range); a bin's value is the mean and its sigma the standard
    error of the mean (bins with fewer than two pixels are dropped). ``method="pyfai"`` lets pyFAI's
    ``integrate1d`` do the same (histogram, azimuthal error model), scaled to the same absolute solid angle.

    Args:
        image: (n1, n2). detector: its geometry. n_bins: number of q bins. mask: True where pixels are bad.
        kind: the kind of the returned Pattern. method: "xfit" or "pyfai" (needs pyFAI).
        probe: "xray" or "electron" (the Pattern's probe, with the energy of the detector's wavelength).
    """
    from xfit.data._pattern import Pattern

    image = np.asarray(image, float)
    if image.shape != tuple(detector.shape):
        raise ValueError(f"image shape {image.shape} does not match the detector's {detector.shape}")
    weight = detector.pixel_weight(probe)  # also checks the probe
    beam = {"probe": probe, "energy_kev": detector.electron_energy_kev} if probe == "electron" else {}
    if method == "pyfai":
        result = detector.to_pyfai().integrate1d(
            image,
            n_bins,
            unit="q_A^-1",
            correctSolidAngle=True,
            polarization_factor=detector.polarization if probe == "xray" else None,
            mask=mask,
            error_model="azimuthal",
            method=("no", "histogram", "cython"),
        )
        omega_poni = detector.pixel1 * detector.pixel2 / detector.distance**2  # pyFAI's solid angles are relative
        keep = np.isfinite(result.intensity) & (result.sigma > 0)
        values, sigma = result.intensity[keep] / omega_poni, result.sigma[keep] / omega_poni
        source = {"source": "pyFAI integrate1d"}
        return Pattern(result.radial[keep], values, sigma, kind=kind, metadata=source, **beam)
    if method != "xfit":
        raise ValueError(f"unknown method {method!r}; choose 'xfit' or 'pyfai'")
    corrected = image / weight
    q = detector.q()
    good = np.isfinite(corrected) if mask is None else (~np.asarray(mask, bool) & np.isfinite(corrected))
    edges = np.linspace(q[good].min(), q[good].max() * (1 + 1e-12), n_bins + 1)
    index = np.digitize(q[good], edges) - 1
    counts = np.bincount(index, minlength=n_bins)[:n_bins]
    sums = np.bincount(index, corrected[good], minlength=n_bins)[:n_bins]
    squares = np.bincount(index, corrected[good] ** 2, minlength=n_bins)[:n_bins]
    q_sum = np.bincount(index, q[good], minlength=n_bins)[:n_bins]
    keep = counts > 1
    mean = sums[keep] / counts[keep]
    variance = np.maximum(squares[keep] / counts[keep] - mean**2, 0) * counts[keep] / (counts[keep] - 1)
    sigma = np.sqrt(variance / counts[keep])
    sigma = np.where(sigma > 0, sigma, np.abs(mean) * 1e-12 + 1e-300)
    q_mean = q_sum[keep] / counts[keep]
    return Pattern(q_mean, mean, sigma, kind=kind, metadata={"source": "radial_average"}, **beam)
