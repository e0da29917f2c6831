"""The ``DetectorImage`` value: a 2-D detector image with its geometry, retrieved pixel by pixel.

An image is one frame of a flat detector (``xfit.Detector``, pyFAI's geometry): ``data`` (n1, n2) photon counts
(or intensities with their ``sigma``), an optional ``mask`` in pyFAI's convention (True, or nonzero, = pixel
excluded) and, for a photoselected sample, the pump's transition ``dipole`` attached to atoms (``("bond", i, j)``
or ``("normal", i, j, k)``, as for ``xfit.retrieve(..., dipole=)``) with the pump's polarisation in the lab frame.

Pixels whose value is NaN, infinite or negative (or whose sigma is not finite and positive) are invalid: they are
masked and counted (``n_invalid``), never fitted. ``xfit.retrieve(image, atoms)`` fits the valid pixels
(``xfit.infer._likelihood`` explains the pixel model); the image's radial average is what a Retrieval plots.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

from xfit.physics._anisotropy import check_dipole
from xfit.physics._detector import Detector, radial_average

__all__ = ["IMAGE_KINDS", "DetectorImage"]

IMAGE_KINDS = ("total", "elastic")
"""What an image's pixels measure (the kinds ``simulate_image`` makes)."""


@dataclasses.dataclass(frozen=True, eq=False)
class DetectorImage:
    """One detector image, validated.

    Attributes:
        data: (n1, n2) pixel values, the detector's shape: photon counts, or intensities (then give ``sigma``).
        detector: its geometry (``xfit.Detector``, e.g. ``Detector.from_poni(path)``).
        sigma: standard errors (n1, n2), or None: the data are photon counts and sigma = sqrt(max(data, 1))
            (Poisson, the floor of 1 keeping empty pixels weighted); marked as assumed, so a Retrieval rescales its
            error bars by its chi2 (as for patterns without sigma).
        mask: (n1, n2) booleans, pyFAI's convention: True (nonzero) = pixel excluded (beam stop, gaps, hot pixels).
        dipole: None (isotropic sample), or the transition dipole attached to atoms of the molecule,
            ``("bond", i, j)`` or ``("normal", i, j, k)`` (0-based atom indices, checked against the molecule by
            ``retrieve``): the sample is cos^2-photoselected along it.
        pump_polarization: the pump's linear polarisation in the lab frame (z along the X-ray beam, x along the
            detector's fast axis, y along its slow axis, as ``xfit.Detector``); only used with ``dipole``.
        kind: "total" (with Compton scattering) or "elastic".
        metadata: free-form (e.g. {"source": path}).

    Derived: ``valid`` (n1, n2) the pixels fitted (not masked, finite, non-negative, sigma finite and positive),
    ``n_invalid`` how many pixels were dropped for bad values (NaN, inf, negative, bad sigma; masked pixels are not
    counted), ``n_valid``.
    """

    data: np.ndarray
    detector: Detector
    sigma: np.ndarray | None = None
    mask: np.ndarray | None = None
    dipole: tuple | None = None
    pump_polarization: tuple[float, float, float] = (0.0, 1.0, 0.0)
    kind: str = "total"
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.detector, Detector):
            raise TypeError(f"detector must be an xfit.Detector, got {type(self.detector).__name__}")
        data = np.array(self.data, dtype=np.float64)
        shape = tuple(self.detector.shape)
        if data.shape != shape:
            raise ValueError(f"image shape {data.shape} does not match its detector's shape {shape} (n1, n2)")
        object.__setattr__(self, "data", data)
        if self.sigma is not None:
            sigma = np.array(self.sigma, dtype=np.float64)
            if sigma.shape != shape:
                raise ValueError(f"sigma shape {sigma.shape} does not match the image's {shape}")
            object.__setattr__(self, "sigma", sigma)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.shape != shape:
                raise ValueError(f"mask shape {mask.shape} does not match the image's {shape}")
            object.__setattr__(self, "mask", mask.astype(bool))
        if self.kind not in IMAGE_KINDS:
            raise ValueError(f"unknown image kind {self.kind!r}; choose one of {IMAGE_KINDS}")
        if self.dipole is not None:  # the form only: the molecule (and so the index range) is retrieve's
            object.__setattr__(self, "dipole", check_dipole(self.dipole, sys.maxsize))
        eps = np.asarray(self.pump_polarization, np.float64)
        if eps.shape != (3,) or not np.all(np.isfinite(eps)) or np.linalg.norm(eps) == 0:
            raise ValueError(f"pump_polarization must be a finite, nonzero 3-vector, got {self.pump_polarization!r}")
        object.__setattr__(self, "pump_polarization", tuple(float(v) for v in eps / np.linalg.norm(eps)))
        self.detector.check_q_range()
        if self.n_valid < 2:
            raise ValueError(
                f"the image has {self.n_valid} valid pixel(s) ({self.n_invalid} invalid: NaN, infinite or negative, "
                f"{self.n_masked} masked); a fit needs more"
            )
        if np.ptp(data[self.valid]) <= 1e-12 * np.max(np.abs(data[self.valid])):
            raise ValueError("the image has no signal: every valid pixel has the same value")

    # ------------------------------------------------------------------------------------------------ pixels

    @functools.cached_property
    def _bad(self) -> np.ndarray:
        bad = ~np.isfinite(self.data) | (self.data < 0)
        if self.sigma is not None:
            bad |= ~np.isfinite(self.sigma) | ~(self.sigma > 0)
        masked = np.zeros_like(bad) if self.mask is None else self.mask
        out = bad & ~masked
        out.setflags(write=False)
        return out

    @functools.cached_property
    def valid(self) -> np.ndarray:
        """(n1, n2) True where the pixel is fitted."""
        masked = np.zeros(self.data.shape, bool) if self.mask is None else self.mask
        out = ~masked & ~self._bad
        out.setflags(write=False)
        return out

    @property
    def n_invalid(self) -> int:
        """Pixels dropped for their values (NaN, inf, negative, bad sigma), not counting user-masked ones."""
        return int(np.count_nonzero(self._bad))

    @property
    def n_masked(self) -> int:
        return 0 if self.mask is None else int(np.count_nonzero(self.mask))

    @property
    def n_valid(self) -> int:
        return int(np.count_nonzero(self.valid))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def pixel_sigma(self) -> tuple[np.ndarray, bool]:
        """Standard errors of the valid pixels (n_valid,), and whether they were given (else Poisson, assumed)."""
        if self.sigma is not None:
            return self.sigma[self.valid], True
        return np.sqrt(np.maximum(self.data[self.valid], 1.0)), False

    def pixel_factors(self) -> dict[str, np.ndarray]:
        """Fixed per-pixel factors of the valid pixels (n_valid,): |q| (1/A, q = 4 pi sin(theta)/lambda), the
        polarisation x solid angle weight, and P2(q_hat . epsilon) of the pump (zero without a dipole)."""
        d = self.detector
        valid = self.valid
        weight = (d.polarization_factor() * d.solid_angle())[valid]
        if self.dipole is None:
            p2 = np.zeros_like(weight)
        else:
            qv = d.q_vectors()[valid]
            cos = (qv @ np.asarray(self.pump_polarization)) / np.maximum(np.linalg.norm(qv, axis=-1), 1e-300)
            p2 = 0.5 * (3 * cos**2 - 1)
        return {"q": d.q()[valid], "weight": weight, "p2": p2}

    # ------------------------------------------------------------------------------------------------ plots

    def radial_average(self, n_bins: int = 100):
        """The valid pixels' radial average (``xfit.radial_average``) as an ``xfit.Pattern`` of this image's kind."""
        pattern = radial_average(self.data, self.detector, n_bins=n_bins, mask=~self.valid, kind=self.kind)
        source = self.metadata.get("source")
        return dataclasses.replace(pattern, metadata={**pattern.metadata, **({"source": source} if source else {})})

    def model_pattern(self, values: np.ndarray, n_bins: int = 100):
        """A model of the valid pixels (n_valid,) radially averaged on the same bins as :meth:`radial_average`
        (values only: a model has no sigma)."""
        image = np.zeros(self.shape)
        image[self.valid] = values
        pattern = radial_average(image, self.detector, n_bins=n_bins, mask=~self.valid, kind=self.kind)
        return dataclasses.replace(pattern, sigma=None, metadata={"model": "IAM", "source": "radial_average"})

    def __repr__(self) -> str:
        photo = "" if self.dipole is None else f", dipole={self.dipole}"
        return (
            f"DetectorImage({self.shape[0]}x{self.shape[1]}, {self.kind}, {self.n_valid} valid pixels, "
            f"{self.n_invalid} invalid, {self.n_masked} masked{photo})"
        )
