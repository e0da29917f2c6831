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
import os
import sys
from pathlib import Path

import numpy as np

from xfit.physics._anisotropy import check_dipole
from xfit.physics._detector import Detector, radial_average

__all__ = ["IMAGE_KINDS", "DetectorImage", "load_images"]

IMAGE_KINDS = ("total", "elastic")
"""What an image's pixels measure (the kinds ``simulate_image`` makes); electron images are "elastic"."""


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
        kind: "total" (with Compton scattering) or "elastic"; None (default): "total" for X-rays, "elastic" for
            electrons (the only kind an electron image has).
        metadata: free-form (e.g. {"source": path}).
        probe: "xray", or "electron" (ultrafast electron diffraction): the detector's wavelength is then the
            electrons' (``Detector.from_beam_center(..., electron_energy_kev=E)``, or a PONI file calibrated with
            electrons), the pixels carry no polarisation factor, and the model uses electron scattering factors.

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
    kind: str | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    probe: str = "xray"

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
        if self.probe not in ("xray", "electron"):
            raise ValueError(f"unknown probe {self.probe!r}; choose 'xray' or 'electron'")
        if self.kind is None:
            object.__setattr__(self, "kind", "total" if self.probe == "xray" else "elastic")
        if self.kind not in IMAGE_KINDS:
            raise ValueError(f"unknown image kind {self.kind!r}; choose one of {IMAGE_KINDS}")
        if self.probe == "electron" and self.kind != "elastic":
            raise ValueError(
                f"an electron image measures elastic scattering (kind='elastic'), not {self.kind!r}: inelastic "
                "electron scattering is not modelled"
            )
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
        weight = d.pixel_weight(self.probe)[valid]
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
        pattern = radial_average(
            self.data, self.detector, n_bins=n_bins, mask=~self.valid, kind=self.kind, probe=self.probe
        )
        source = self.metadata.get("source")
        return dataclasses.replace(pattern, metadata={**pattern.metadata, **({"source": source} if source else {})})

    def model_pattern(self, values: np.ndarray, n_bins: int = 100):
        """A model of the valid pixels (n_valid,) radially averaged on the same bins as :meth:`radial_average`
        (values only: a model has no sigma)."""
        image = np.zeros(self.shape)
        image[self.valid] = values
        options = {"n_bins": n_bins, "mask": ~self.valid, "kind": self.kind, "probe": self.probe}
        pattern = radial_average(image, self.detector, **options)
        return dataclasses.replace(pattern, sigma=None, metadata={"model": "IAM", "source": "radial_average"})

    def __repr__(self) -> str:
        photo = "" if self.dipole is None else f", dipole={self.dipole}"
        probe = "" if self.probe == "xray" else f", electrons at {self.detector.electron_energy_kev:.4g} keV"
        return (
            f"DetectorImage({self.shape[0]}x{self.shape[1]}, {self.kind}{probe}, {self.n_valid} valid pixels, "
            f"{self.n_invalid} invalid, {self.n_masked} masked{photo})"
        )


# ---------------------------------------------------------------------------------------------------------- files

IMAGE_NAMES = ("image", "images", "data")
"""Array names read as the image (or stack) in .npz and HDF5 files, in this order, when none is named."""
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".nexus")
TEXT_SUFFIXES = (".txt", ".dat", ".csv", ".tsv", ".asc")


def load_images(
    path: str | os.PathLike,
    detector: Detector | str | os.PathLike | None = None,
    *,
    mask: np.ndarray | str | os.PathLike | None = None,
    dataset: str | None = None,
    kind: str | None = None,
    dipole: tuple | None = None,
    pump_polarization: tuple[float, float, float] = (0.0, 1.0, 0.0),
    polarization: float = 0.99,
    probe: str | None = None,
) -> list[DetectorImage]:
    """Read detector images from a file: one image (n1, n2) or a stack (n_images, n1, n2), as ``DetectorImage``s.

    Formats, by extension:
        - .npy: the array.
        - .npz: the array named ``dataset``, else the first of image/images/data, else the only array.
        - HDF5 (.h5, .hdf5, .hdf, .nxs, .nx5, .nexus): the dataset at path ``dataset``, else the first of
          image/images/data at the root, else the only 2-D or 3-D dataset anywhere (a NeXus /entry/data/data).
        - text (.txt, .dat, .csv, .tsv, .asc): a 2-D table (whitespace or commas; '#' comments).
        - anything else (EDF, CBF, TIFF, ...): every frame, through fabio, pyFAI's image reader
          (``pip install 'xfit[detector]'``).
        In .npz and HDF5 files, arrays ``sigma`` (standard errors) and ``mask`` (nonzero = excluded) beside the
        image are used. ``xfit pattern STRUCTURE --detector GEOMETRY.poni -o image.h5`` writes a file this reads,
        its geometry named in it. Unsigned-integer images mark gaps and dead pixels with the type's largest value
        (Eiger, Pilatus): such pixels are invalid (NaN), counted in ``n_invalid``, never fitted.

    Args:
        path: the file.
        detector: its geometry, an ``xfit.Detector`` or a pyFAI PONI file; None: the PONI file the HDF5 file names
            in its ``poni`` attribute (absolute, or relative to the file's folder or the working directory).
        mask: (n1, n2) booleans or a file holding them (any format above), pyFAI's convention (True, nonzero =
            pixel excluded); or-ed with a mask stored in the file.
        dataset: the array's name (.npz) or path (HDF5) when the file holds several.
        kind, dipole, pump_polarization, probe: as for :class:`DetectorImage`, the same for every image (kind and
            probe default to the HDF5 file's ``kind`` and ``probe`` attributes, which ``xfit pattern`` writes, else
            to DetectorImage's).
        polarization: the beam's degree of linear polarisation, for a detector read from a PONI file.

    Returns:
        One ``DetectorImage`` per frame, its ``metadata`` {"source": path, "frame": k}. Data are photon counts
        (Poisson sigma, assumed) unless the file gives ``sigma``.

    Raises:
        FileNotFoundError; ValueError naming the file and the problem (no image array, several candidates, a shape
        that is not the detector's, a mask of another shape, no geometry).
    """
    path = Path(path)
    frames, extras, attrs = _read_image_arrays(path, dataset)  # FileNotFoundError when it is not there
    poni = attrs.get("poni")
    kind = attrs.get("kind") if kind is None else kind
    probe = attrs.get("probe", "xray") if probe is None else probe
    if np.issubdtype(frames.dtype, np.unsignedinteger):  # the largest value marks gaps and dead pixels
        frames = np.where(frames == np.iinfo(frames.dtype).max, np.nan, frames.astype(np.float64))
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or min(frames.shape[1:]) < 2:
        raise ValueError(f"{path}: an image file holds one image (n1, n2) or a stack (n, n1, n2), got {frames.shape}")
    shape = frames.shape[1:]
    if detector is None:
        detector = _named_poni(path, poni)
    if not isinstance(detector, Detector):
        detector = _detector_of(Path(detector), shape, polarization)
    if tuple(detector.shape) != shape:
        raise ValueError(
            f"{path}: its images are {shape[0]} x {shape[1]} pixels but the detector is "
            f"{detector.shape[0]} x {detector.shape[1]}"
        )
    sigma = _stack_like(extras.get("sigma"), frames, path, "sigma")
    excluded = np.zeros(shape, bool)
    for name, given in (("the file's mask", extras.get("mask")), ("mask", mask)):
        if given is None:
            continue
        if isinstance(given, str | os.PathLike):
            given, _, _ = _read_image_arrays(Path(given), None)
        given = np.asarray(given)
        if given.shape != shape:
            raise ValueError(f"{path}: {name} is {given.shape}, not the images' {shape}")
        excluded |= given.astype(bool)
    return [
        DetectorImage(
            frame,
            detector,
            sigma=None if sigma is None else sigma[k],
            mask=excluded if excluded.any() else None,
            dipole=dipole,
            pump_polarization=pump_polarization,
            kind=kind,
            metadata={"source": str(path), "frame": k},
            probe=probe,
        )
        for k, frame in enumerate(frames)
    ]


def _read_image_arrays(path: Path, dataset: str | None) -> tuple[np.ndarray, dict, dict]:
    """(the image array, {"sigma", "mask"} beside it where present, the HDF5 file's ``poni``, ``kind`` and ``probe``
    attributes where present)."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path), {}, {}
    if suffix == ".npz":
        with np.load(path) as f:
            name = _pick(path, dataset, list(f.files), lambda n: f[n].ndim in (2, 3))
            extras = {k: f[k] for k in ("sigma", "mask") if k in f.files and k != name}
            return f[name], extras, {}
    if suffix in HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as f:
            found = []
            f.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None)
            name = _pick(path, dataset, found, lambda n: f[n].ndim in (2, 3))
            group = f[name].parent
            extras = {k: group[k][()] for k in ("sigma", "mask") if k in group and group[k].name != f[name].name}
            attrs = {k: str(f.attrs[k]) for k in ("poni", "kind", "probe") if k in f.attrs}
            return f[name][()], extras, attrs
    if suffix in TEXT_SUFFIXES:
        with open(path) as handle:
            rows = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
        delimiter = "," if any("," in row for row in rows) else None
        return np.loadtxt(path, delimiter=delimiter, ndmin=2), {}, {}
    try:
        import fabio
    except ImportError as error:
        raise ValueError(
            f"{path}: xfit reads .npy, .npz, HDF5 and text images itself; other detector formats ({suffix}) "
            "through fabio: pip install 'xfit[detector]'"
        ) from error
    with fabio.open(str(path)) as image:
        frames = [np.asarray(image.getframe(k).data) for k in range(image.nframes)] if image.nframes > 1 else []
        return (np.stack(frames) if frames else np.asarray(image.data)), {}, {}


def _pick(path: Path, dataset: str | None, names: list[str], is_image) -> str:
    """The array to read: ``dataset``, else the first of IMAGE_NAMES at the top level, else the only image-shaped
    one (``is_image``); errors name the candidates."""
    if dataset is not None:
        key = dataset.strip("/")
        if key not in names:
            raise ValueError(f"{path} has no array {dataset!r}; it holds {', '.join(names) or 'none'}")
        return key
    for name in IMAGE_NAMES:
        if name in names and is_image(name):
            return name
    candidates = [n for n in names if n.split("/")[-1] not in ("sigma", "mask") and is_image(n)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(f"{path} holds no 2-D or 3-D array to read as an image (arrays: {', '.join(names) or 'none'})")
    raise ValueError(
        f"{path} holds several image-shaped arrays ({', '.join(candidates)}); name one (dataset=, --dataset)"
    )


def _stack_like(values, frames: np.ndarray, path: Path, name: str):
    """``values`` (n1, n2) or (n, n1, n2) as one array per frame, or None."""
    if values is None:
        return None
    values = np.asarray(values, np.float64)
    if values.shape == frames.shape[1:]:
        return np.broadcast_to(values, frames.shape)
    if values.shape != frames.shape:
        raise ValueError(f"{path}: {name} is {values.shape}, not the images' {frames.shape[1:]} or {frames.shape}")
    return values


def _named_poni(path: Path, poni: str | None) -> Path:
    """The PONI file an HDF5 image file names, found as given, beside the file, or an error asking for one."""
    if poni is None:
        raise ValueError(f"{path}: no detector geometry; give one (detector=Detector or a PONI file, --detector)")
    for candidate in (Path(poni), path.parent / poni, path.parent / Path(poni).name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path} names the PONI file {poni}, which is not there; give the geometry (--detector)")


def _detector_of(poni: Path, shape: tuple[int, int], polarization: float) -> Detector:
    """The PONI file's detector, with the images' shape where the file gives none."""
    try:
        return Detector.from_poni(poni, polarization=polarization)
    except ValueError as error:
        if "no detector shape" not in str(error):
            raise
        return Detector.from_poni(poni, shape=shape, polarization=polarization)
