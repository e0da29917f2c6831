"""The ``Pattern`` value object: a measured or simulated 1-D scattering curve, validated, with readers and writers.

A pattern is one curve over q = 4 pi sin(theta)/lambda in 1/A. A time series (one curve per pump-probe delay) is a
list of Patterns, each with its ``delay`` in ps: that is what :func:`load_patterns` returns for files with a delay
axis (such as the measured NMM data), and what ``xfit.retrieve`` takes for a batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xfit.data import _signals

__all__ = ["PATTERN_KINDS", "Pattern", "load_pattern", "load_patterns", "save_patterns"]

PATTERN_KINDS = (
    "total",
    "elastic",
    "atomic",
    "molecular",
    "inelastic",
    "percent_difference",
    "difference",
    "sm",
    "delta_sm",
)
ELECTRON_ONLY_KINDS = ("sm", "delta_sm")
"""Kinds defined by electron diffraction: sM = q I_mol / I_at and Delta sM = q (I_mol - I_mol,ref) / I_at."""
PROBES = ("xray", "electron")

# Names under which readers look for each array in .npz, HDF5 and .mat files, first match wins.
_Q_KEYS = ("q",)
_VALUE_KEYS = ("values", "intensity", "I", "iso", "signal", "dI")
_SIGMA_KEYS = ("sigma", "iso_stdx", "stdx", "err", "error", "std")
_DELAY_KEYS = ("delays", "delay", "t")


def _as_vector(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """One scattering curve.

    Attributes:
        q: momentum transfer q = 4 pi sin(theta)/lambda in 1/A, shape (n_q,), strictly increasing, >= 0.
        values: the signal, shape (n_q,): an intensity in electron units (or arbitrary units for measured data),
            or a percent difference 100 (I_on - I_off)/I_off, or a plain difference, or (electrons) the modified
            molecular scattering sM = q I_mol/I_at or its change Delta sM = q (I_mol,on - I_mol,off)/I_at (1/A), as
            ``kind`` says.
        sigma: standard errors of ``values``, shape (n_q,), positive; None when unknown.
        kind: "total", "elastic", "atomic", "molecular", "inelastic", "percent_difference", "difference", or for
            electrons "sm" or "delta_sm".
        probe: "xray" or "electron".
        energy_kev: kinetic energy of the electrons in keV (probe="electron" only), or None when unknown: it sets
            only the relativistic factor gamma^2 of absolute electron intensities (see ``xfit.Likelihood``).
        delay: pump-probe delay in ps, or None.
        legendre: which Legendre component of a photoselected (polarised-pump) pattern I0(q) + I2(q) P2(cos theta_q)
            the curve is: 0 (default) the isotropic one, I0 (all an isotropic sample has); 2 the P2 component I2 of
            the same kind (for a percent difference, 100 Delta I2 / I_off,0). ``xfit.retrieve`` fits a legendre=2
            pattern jointly with its legendre=0 partner, given the transition dipole (see ``xfit.retrieve``).
        metadata: free-form provenance (source file, excitation fraction, ...).

    Raises:
        ValueError: on construction, naming the problem: NaN or infinite values, mismatched lengths, q not strictly
            increasing or negative, sigma not positive, unknown kind or probe, sM kinds for X-rays, energy_kev not
            positive or given for X-rays, legendre not 0 or 2, legendre=2 for kinds without a P2 component
            ("atomic", "inelastic": isotropic by construction).
    """

    q: np.ndarray
    values: np.ndarray
    sigma: np.ndarray | None = None
    kind: str = "total"
    probe: str = "xray"
    delay: float | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    energy_kev: float | None = None
    legendre: int = 0

    def __post_init__(self):
        q = _as_vector(self.q, "q")
        values = _as_vector(self.values, "values")
        if len(q) == 0:
            raise ValueError("pattern is empty: q has no points")
        if len(values) != len(q):
            raise ValueError(f"values has {len(values)} points but q has {len(q)}: lengths must match")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"q contains NaN or infinite values at indices {np.flatnonzero(~np.isfinite(q))[:5]}")
        if np.any(q < 0):
            raise ValueError(f"q must be non-negative (q = 4 pi sin(theta)/lambda), min is {q.min():g}")
        if np.any(np.diff(q) <= 0):
            k = int(np.flatnonzero(np.diff(q) <= 0)[0])
            raise ValueError(f"q must be strictly increasing; q[{k}] = {q[k]:g} >= q[{k + 1}] = {q[k + 1]:g}")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"values contain NaN or infinite entries at q indices {bad[:5].tolist()}")
        sigma = self.sigma
        if sigma is not None:
            sigma = _as_vector(sigma, "sigma")
            if len(sigma) != len(q):
                raise ValueError(f"sigma has {len(sigma)} points but q has {len(q)}: lengths must match")
            bad = np.flatnonzero(~(np.isfinite(sigma) & (sigma > 0)))
            if bad.size:
                raise ValueError(f"sigma must be positive and finite; it is not at q indices {bad[:5].tolist()}")
        if self.kind not in PATTERN_KINDS:
            raise ValueError(f"unknown pattern kind {self.kind!r}; choose one of {PATTERN_KINDS}")
        if self.probe not in PROBES:
            raise ValueError(f"unknown probe {self.probe!r}; choose one of {PROBES}")
        if self.kind in ELECTRON_ONLY_KINDS and self.probe != "electron":
            raise ValueError(f"kind {self.kind!r} (modified molecular scattering) is for probe='electron'")
        energy = None if self.energy_kev is None else float(self.energy_kev)
        if energy is not None:
            if self.probe != "electron":
                raise ValueError("energy_kev is for probe='electron'; X-ray patterns do not depend on photon energy")
            if not (np.isfinite(energy) and energy > 0):
                raise ValueError(f"energy_kev must be a positive electron kinetic energy in keV, got {energy}")
        if isinstance(self.legendre, bool) or self.legendre not in (0, 2):
            raise ValueError(f"legendre must be 0 (isotropic component) or 2 (P2 component), got {self.legendre!r}")
        if self.legendre == 2 and self.kind in ("atomic", "inelastic"):
            raise ValueError(f"a {self.kind!r} pattern is isotropic by construction: it has no P2 (legendre=2) part")
        delay = None if self.delay is None else float(self.delay)
        if delay is not None and not np.isfinite(delay):
            raise ValueError("delay must be finite")
        for name, value in (("q", q), ("values", values), ("sigma", sigma)):
            if value is not None:
                value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "delay", delay)
        object.__setattr__(self, "energy_kev", energy)
        object.__setattr__(self, "legendre", int(self.legendre))
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __len__(self) -> int:
        return len(self.q)

    def __repr__(self) -> str:
        delay = "" if self.delay is None else f", delay={self.delay:g} ps"
        delay += "" if self.energy_kev is None else f", {self.energy_kev:g} keV"
        delay += ", P2 component" if self.legendre == 2 else ""
        sigma = "with sigma" if self.sigma is not None else "no sigma"
        return (
            f"Pattern({self.kind}, {self.probe}, {len(self.q)} points, q = {self.q[0]:.3g}..{self.q[-1]:.3g} 1/A, "
            f"{sigma}{delay})"
        )

    def replace(self, **changes) -> Pattern:
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def restrict(self, q_min: float = 0.0, q_max: float = np.inf) -> Pattern:
        """The part of the pattern with q_min <= q <= q_max (1/A)."""
        keep = (self.q >= q_min) & (self.q <= q_max)
        if keep.sum() < 2:
            raise ValueError(f"fewer than 2 points of {self!r} lie in [{q_min:g}, {q_max:g}] 1/A")
        sigma = None if self.sigma is None else self.sigma[keep]
        return self.replace(q=self.q[keep], values=self.values[keep], sigma=sigma)

    def with_noise(self, key: jax.Array, *, relative: float | None = None, photons: float | None = None) -> Pattern:
        """A noisy copy with sigma set: Gaussian noise of ``relative`` x I, or Poisson noise at ``photons`` per pattern.

        Args:
            key: JAX PRNG key (explicit: the same key gives the same noise).
            relative: standard deviation as a fraction of each value (e.g. 1e-3 for 0.1 %).
            photons: expected photon count summed over the pattern (intensities only).
        """
        if (relative is None) == (photons is None):
            raise ValueError("give exactly one of relative= or photons=")
        if relative is not None:
            values, sigma = _signals.gaussian_noise(key, self.values, relative)
        else:
            if np.any(self.values < 0):
                raise ValueError("Poisson noise needs a non-negative intensity, not a difference signal")
            values, sigma = _signals.poisson_noise(key, self.values, photons)
        if np.any(np.asarray(sigma) <= 0):
            raise ValueError("noise model gave sigma = 0 at some q (zero signal with relative noise)")
        meta = {**self.metadata, "noise": {"relative": relative} if relative is not None else {"photons": photons}}
        return self.replace(values=np.asarray(values, np.float64), sigma=np.asarray(sigma, np.float64), metadata=meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pattern; the format follows the extension: .txt/.dat/.csv (columns), .npz, .h5/.hdf5.

        The file is written to a temporary name and renamed into place, so no half-written file is ever left.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".h5", ".hdf5"):
            writer = self._write_h5
        elif suffix == ".npz":
            writer = self._write_npz
        elif suffix in (".txt", ".dat", ".csv", ""):
            writer = self._write_text
        else:
            raise ValueError(f"unknown pattern file extension {suffix!r}; use .txt, .dat, .csv, .npz, .h5 or .hdf5")
        _atomic_write(path, writer)
        return path

    def _header(self) -> dict[str, Any]:
        header = {"kind": self.kind, "probe": self.probe, "legendre": self.legendre}
        if self.energy_kev is not None:
            header["energy_kev"] = self.energy_kev
        if self.delay is not None:
            header["delay_ps"] = self.delay
        return header

    def _write_text(self, handle):
        columns = [self.q, self.values] + ([self.sigma] if self.sigma is not None else [])
        names = "q_inv_angstrom value" + (" sigma" if self.sigma is not None else "")
        lines = ["xfit pattern; q = 4 pi sin(theta)/lambda in 1/A"]
        lines += [f"{k} = {v}" for k, v in self._header().items()]
        lines.append(names)
        np.savetxt(handle, np.column_stack(columns), header="\n".join(lines), fmt="%.10e")

    def _write_npz(self, handle):
        arrays = {"q": self.q, "values": self.values, **({"sigma": self.sigma} if self.sigma is not None else {})}
        np.savez(handle, **arrays, **{k: np.asarray(v) for k, v in self._header().items()})

    def _write_h5(self, handle):
        import h5py

        with h5py.File(handle, "w") as f:
            f["q"] = self.q
            f["values"] = self.values
            if self.sigma is not None:
                f["sigma"] = self.sigma
            f.attrs.update(self._header())
            f.attrs["q_convention"] = "q = 4 pi sin(theta)/lambda, 1/A"


def _atomic_write(path: Path, writer) -> None:
    """Call writer(binary handle) on a temporary file that replaces ``path`` only once complete."""
    from xfit._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer(handle)


# ----------------------------------------------------------------------------------------------------------------
# Readers.


def _first(mapping, keys, path, what, required=True):
    for key in keys:
        if key in mapping:
            return key, mapping[key]
    if required:
        raise ValueError(f"{path}: no {what} array found; expected one of {list(keys)}, found {sorted(mapping)}")
    return None, None


def _patterns_from_arrays(
    path, q, values, sigma, delays, kind, probe, metadata, energy_kev=None, legendre=0
) -> list[Pattern]:
    q = np.asarray(q, dtype=np.float64).ravel()
    values = np.asarray(values, dtype=np.float64)
    sigma = None if sigma is None else np.asarray(sigma, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
        sigma = None if sigma is None else sigma.reshape(1, -1)
    elif values.ndim == 2:
        if values.shape[1] != len(q) and values.shape[0] == len(q):  # stored as (n_q, n_delays)
            values = values.T
            sigma = None if sigma is None else sigma.T
    else:
        raise ValueError(f"{path}: values must be 1-D or 2-D, got shape {values.shape}")
    if values.shape[1] != len(q):
        raise ValueError(f"{path}: values has shape {values.shape}, which does not match {len(q)} q points")
    if sigma is not None and sigma.shape != values.shape:
        raise ValueError(f"{path}: sigma has shape {sigma.shape} but values has {values.shape}")
    n = values.shape[0]
    if delays is not None:
        delays = np.asarray(delays, dtype=np.float64).ravel()
        if len(delays) != n:
            raise ValueError(f"{path}: {len(delays)} delays for {n} patterns")
    patterns = []
    for k in range(n):
        try:
            patterns.append(
                Pattern(
                    q,
                    values[k],
                    None if sigma is None else sigma[k],
                    kind=kind,
                    probe=probe,
                    delay=None if delays is None else delays[k],
                    metadata={**metadata, "source": str(path), "index": k},
                    energy_kev=energy_kev,
                    legendre=legendre,
                )
            )
        except ValueError as err:
            where = f"pattern {k}" + ("" if delays is None else f" (delay {delays[k]:g} ps)")
            raise ValueError(f"{path}, {where}: {err}") from None
    return patterns


def _text_header(path: Path) -> dict[str, str]:
    header = {}
    with open(path) as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            if "=" in line:
                key, _, value = line[1:].partition("=")
                header[key.strip()] = value.strip()
    return header


def _read_text(path: Path):
    header = _text_header(path)
    delimiter = "," if path.suffix.lower() == ".csv" else None
    data = np.loadtxt(path, comments="#", delimiter=delimiter, ndmin=2)
    if data.shape[1] not in (2, 3):
        raise ValueError(f"{path}: expected 2 or 3 columns (q, value[, sigma]), found {data.shape[1]}")
    sigma = data[:, 2] if data.shape[1] == 3 else None
    delay = float(header["delay_ps"]) if "delay_ps" in header else None
    return data[:, 0], data[:, 1], sigma, None if delay is None else [delay], header


def _read_mapping(path: Path, mapping, attrs):
    _, q = _first(mapping, _Q_KEYS, path, "q")
    value_key, values = _first(mapping, _VALUE_KEYS, path, "values")
    _, sigma = _first(mapping, _SIGMA_KEYS, path, "sigma", required=False)
    _, delays = _first(mapping, _DELAY_KEYS, path, "delay", required=False)
    keys = ("kind", "probe", "energy_kev", "legendre")
    header = {k: str(np.asarray(v).squeeze()) for k, v in attrs.items() if k in keys}
    if "delay_ps" in attrs and delays is None:
        delays = [float(np.asarray(attrs["delay_ps"]))]
    if value_key == "iso" and "kind" not in header:  # the LCLS isotropic percent-difference layout (NMM data)
        header["kind"] = "percent_difference"
    return q, values, sigma, delays, header


def _read_any(
    path: Path, kind: str | None, probe: str | None, energy_kev: float | None = None, legendre: int | None = None
) -> list[Pattern]:
    if not path.exists():
        raise FileNotFoundError(f"pattern file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            mapping = {k: data[k] for k in data.files}
        q, values, sigma, delays, header = _read_mapping(path, mapping, mapping)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        from xfit._h5 import open_h5

        with open_h5(path, what="a pattern file (datasets q and values)") as f:
            mapping = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
            attrs = dict(f.attrs)
        q, values, sigma, delays, header = _read_mapping(path, mapping, attrs)
    elif suffix == ".mat":
        from scipy.io import loadmat

        mapping = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        q, values, sigma, delays, header = _read_mapping(path, mapping, {})
    else:
        q, values, sigma, delays, header = _read_text(path)
    kind = kind or header.get("kind", "total")
    probe = probe or header.get("probe", "xray")
    if energy_kev is None and "energy_kev" in header and probe == "electron":
        try:
            energy_kev = float(header["energy_kev"])
        except ValueError:
            raise ValueError(f"{path}: energy_kev = {header['energy_kev']!r} is not a number (keV)") from None
    if legendre is None:
        try:
            legendre = int(header.get("legendre", 0))
        except ValueError:
            raise ValueError(f"{path}: legendre = {header['legendre']!r} is not 0 or 2") from None
    return _patterns_from_arrays(path, q, values, sigma, delays, kind, probe, {}, energy_kev, legendre)


def load_patterns(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    probe: str | None = None,
    energy_kev: float | None = None,
    legendre: int | None = None,
) -> list[Pattern]:
    """Read every pattern in a file: a list with one Pattern per delay (or a single-element list).

    Formats, by extension:
        - text (.txt, .dat, .csv or anything else): two or three columns q, value[, sigma]; '#' comment lines, of
          which ``# kind = ...``, ``# probe = ...``, ``# energy_kev = ...``, ``# legendre = ...`` and
          ``# delay_ps = ...`` are read (as :meth:`Pattern.save` writes them).
        - .npz, HDF5 (.h5, .hdf5) and MATLAB (.mat): arrays ``q`` and one of values/intensity/I/iso/signal, with
          optional sigma (or iso_stdx/stdx/err) and delays (or t, in ps). A 2-D values array holds one pattern per
          delay, stored as (n_delays, n_q) or (n_q, n_delays). The LCLS layout of the measured NMM data (q, t, iso,
          iso_stdx) reads as percent-difference patterns with delays in ps.

    Args:
        path: the file.
        kind, probe: override what the file says (default "total" and "xray" when it says nothing).
        energy_kev: electron kinetic energy (keV), overriding the file's ``energy_kev`` (read for electrons only, so
            that ``probe="xray"`` on an electron file is not an error).
        legendre: 0 or 2, overriding the file's ``legendre`` (default 0: the isotropic component).

    Raises:
        FileNotFoundError, ValueError naming the file, the pattern and the problem.
    """
    return _read_any(Path(path), kind, probe, energy_kev, legendre)


def load_pattern(
    path: str | os.PathLike,
    *,
    index: int | None = None,
    kind: str | None = None,
    probe: str | None = None,
    energy_kev: float | None = None,
    legendre: int | None = None,
) -> Pattern:
    """Read one pattern from a file (formats as in :func:`load_patterns`).

    Args:
        path: the file.
        index: which pattern of a multi-pattern file (e.g. which delay); required when there are several.
        kind, probe, energy_kev, legendre: override what the file says.
    """
    patterns = load_patterns(path, kind=kind, probe=probe, energy_kev=energy_kev, legendre=legendre)
    if index is None:
        if len(patterns) > 1:
            raise ValueError(
                f"{path} holds {len(patterns)} patterns (a delay axis); use xfit.load_patterns(path) for all of "
                "them or load_pattern(path, index=k) for one"
            )
        return patterns[0]
    if not -len(patterns) <= index < len(patterns):
        raise IndexError(f"{path} holds {len(patterns)} patterns; index {index} is out of range")
    return patterns[index]


def save_patterns(path: str | os.PathLike, patterns: list[Pattern]) -> Path:
    """Write several patterns on one q grid to one .npz or HDF5 file (values as (n_patterns, n_q)).

    A single pattern may go to any format :meth:`Pattern.save` writes. :func:`load_patterns` reads these back.
    """
    path = Path(path)
    if not patterns:
        raise ValueError("no patterns to save")
    if len(patterns) == 1:
        return patterns[0].save(path)
    first = patterns[0]
    for k, p in enumerate(patterns[1:], start=1):
        if not np.array_equal(p.q, first.q) or p.kind != first.kind or p.probe != first.probe:
            raise ValueError(f"pattern {k} differs from pattern 0 in q grid, kind or probe; save them separately")
        if p.energy_kev != first.energy_kev or p.legendre != first.legendre:
            raise ValueError(f"pattern {k} differs from pattern 0 in energy_kev or legendre; save them separately")
    has_sigma = all(p.sigma is not None for p in patterns)
    arrays = {"q": first.q, "values": np.stack([p.values for p in patterns])}
    if has_sigma:
        arrays["sigma"] = np.stack([p.sigma for p in patterns])
    if all(p.delay is not None for p in patterns):
        arrays["delays"] = np.array([p.delay for p in patterns])
    attrs = {"kind": first.kind, "probe": first.probe, "legendre": first.legendre}
    if first.energy_kev is not None:
        attrs["energy_kev"] = first.energy_kev
    suffix = path.suffix.lower()
    if suffix == ".npz":

        def writer(handle):
            np.savez(handle, **arrays, **{k: np.asarray(v) for k, v in attrs.items()})

    elif suffix in (".h5", ".hdf5"):

        def writer(handle):
            import h5py

            with h5py.File(handle, "w") as f:
                for k, v in arrays.items():
                    f[k] = v
                f.attrs.update(attrs)
                f.attrs["q_convention"] = "q = 4 pi sin(theta)/lambda, 1/A"

    else:
        raise ValueError(f"{len(patterns)} patterns need a .npz or .h5 file, not {suffix or 'no extension'!r}")
    _atomic_write(path, writer)
    return path
