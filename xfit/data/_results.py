"""Retrieval results on disk: one self-describing, appendable HDF5 file (``xfit.save_results``/``load_results``).

Layout (schema version 1)::

    /                       attrs: format = "xfit-results", schema_version = 1
    /records/000000         one group per record, written completely, then ``complete = True`` set last
        attrs: status ("ok" or "failed"), source (pattern file or ""), complete, written (UTC, ISO 8601)
        failed records:     attrs error (the message); nothing else
        ok records:
            numbers (n_atoms,) int          positions (n_atoms, 3) A        candidates (n_c, n_atoms, 3) A
            chi2 (n_c,)                     attrs chi2_reduced, info (JSON), atoms_info (JSON)
            parameters/                     attrs: one float per nuisance parameter
            pattern/, model/                q (n_q,) 1/A (q = 4 pi sin(theta)/lambda), values (n_q,), sigma (n_q,)
                                            when known; attrs kind, probe, delay_ps (when known), metadata (JSON),
                                            legendre (when 2)
            pattern_p2/, model_p2/          the same, for the P2 component of an anisotropic retrieval only
            reference/                      numbers, positions (difference patterns only)
            uncertainty/                    distances (n, n) A, positions (n, 3) A, candidate_spread (n, n) A,
                                            covariance (3n, 3n) A^2, reference_positions (n, 3) A,
                                            samples (m, n, 3) A and sample_weights (m,) when present;
                                            basin_optima (B, n, 3) A, basin_covariances (B, 3n, 3n) A^2
                                            (float32, gzip) and basin_weights (B,) when present;
                                            attr n_comparable
            samples (S, n, 3) A, sample_weights (S,), sample_modes (S,), modes (n_c,)   posterior only

Appending opens the file, writes one group, flushes and closes it; readers open with HDF5 file locking off, so a
notebook or the dashboard can read while a watcher appends (a record is only read once ``complete`` is set; a
reader that catches the file mid-write retries). A group without ``complete`` (the writer was killed) is a torn
record: readers skip it and the next append deletes it.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "SCHEMA_VERSION", "append_failure", "load_results", "read_index", "save_results"]

FORMAT = "xfit-results"
SCHEMA_VERSION = 1
_WHAT = "an xfit results file (xfit.save_results)"


def _json(value: Any) -> str:
    def default(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return repr(v)

    return json.dumps(value, default=default)


def _open(path: Path, mode: str):
    from xfit._h5 import open_h5

    return open_h5(path, mode, what=_WHAT, locking=False)


def _check_header(f, path: Path) -> None:
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{path} is an HDF5 file but not {_WHAT}: its 'format' attribute is {fmt!r}")
    version = int(f.attrs.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        raise ValueError(f"{path} has results schema version {version}; this xfit reads up to {SCHEMA_VERSION}")


def _start(path: Path, append: bool):
    """Open ``path`` for one append (creating it, or replacing it when not appending), torn records removed."""
    from xfit._io import atomic_path

    if not append or not path.exists():
        with atomic_path(path) as tmp, _open(Path(tmp), "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.create_group("records")
    f = _open(path, "a")
    try:
        _check_header(f, path)
        records = f["records"]
        for name in list(records):
            if not records[name].attrs.get("complete", False):
                del records[name]  # torn by a killed writer: redone by the caller
    except Exception:
        f.close()
        raise
    return f


def _next_name(records) -> str:
    names = [int(n) for n in records]
    return f"{(max(names) + 1) if names else 0:06d}"


def _finish(f, g, status: str, source: str | None) -> None:
    g.attrs["status"] = status
    g.attrs["source"] = "" if source is None else str(source)
    g.attrs["written"] = datetime.datetime.now(datetime.UTC).isoformat()
    f.flush()
    g.attrs["complete"] = True  # last: a record without it is torn
    f.flush()


def _write_pattern(g, pattern) -> None:
    g["q"] = pattern.q
    g["values"] = pattern.values
    if pattern.sigma is not None:
        g["sigma"] = pattern.sigma
    g.attrs["kind"] = pattern.kind
    g.attrs["probe"] = pattern.probe
    if pattern.delay is not None:
        g.attrs["delay_ps"] = pattern.delay
    g.attrs["metadata"] = _json(pattern.metadata)
    if pattern.legendre:
        g.attrs["legendre"] = int(pattern.legendre)


def write_basins(g, basins) -> None:
    """``Uncertainty.basins`` into HDF5 group g: basin_optima, basin_covariances (float32, gzip: ~85 kB for CHD's 12
    basins instead of 170) and basin_weights."""
    optima, covariances, weights = basins
    g["basin_optima"], g["basin_weights"] = optima, weights
    g.create_dataset("basin_covariances", data=np.asarray(covariances, np.float32), compression="gzip")


def _write_record(g, r) -> None:
    g["numbers"] = r.atoms.numbers
    g["positions"] = r.atoms.positions
    g["candidates"] = np.stack([c.positions for c in r.candidates])
    g["chi2"] = np.asarray(r.chi2, np.float64)
    g.attrs["chi2_reduced"] = float(r.chi2_reduced)
    g.attrs["info"] = _json(r.info)
    g.attrs["atoms_info"] = _json(r.atoms.info)
    p = g.create_group("parameters")
    for name, value in r.parameters.items():
        p.attrs[name] = float(value)
    _write_pattern(g.create_group("pattern"), r.pattern)
    _write_pattern(g.create_group("model"), r.model)
    if r.pattern_p2 is not None:
        _write_pattern(g.create_group("pattern_p2"), r.pattern_p2)
        _write_pattern(g.create_group("model_p2"), r.model_p2)
    if r.reference is not None:
        ref = g.create_group("reference")
        ref["numbers"] = r.reference.numbers
        ref["positions"] = r.reference.positions
    u, ug = r.uncertainty, g.create_group("uncertainty")
    for name in ("distances", "positions", "candidate_spread", "covariance", "reference_positions"):
        ug[name] = np.asarray(getattr(u, name), np.float64)
    ug.attrs["n_comparable"] = int(u.n_comparable)
    if u.samples is not None:
        ug["samples"], ug["sample_weights"] = u.samples
    if u.basins is not None:
        write_basins(ug, u.basins)
    for name in ("samples", "sample_weights", "sample_modes", "modes"):
        value = getattr(r, name)
        if value is not None:
            g.create_dataset(name, data=np.asarray(value), compression="gzip" if name == "samples" else None)


def save_results(results: Sequence, path: str | os.PathLike, *, append: bool = False) -> Path:
    """Write ``xfit.Retrieval`` results to an HDF5 results file (layout and concurrency: module notes).

    Each record is written completely, then marked complete and flushed, then the file is closed, so a reader in
    another process sees every complete record at any time, and a writer killed mid-record leaves a torn record that
    readers skip and the next append removes.

    Args:
        results: a ``Retrieval`` or a sequence of them; each one's ``info["source"]`` (the pattern file) is stored.
        path: the file (.h5).
        append: add to an existing file (created when missing); False replaces the file.

    Returns:
        The path.

    Raises:
        ValueError: naming the file, when it exists but is not an xfit results file.
    """
    from xfit.infer._result import Retrieval

    path = Path(path)
    results = [results] if isinstance(results, Retrieval) else list(results)
    if not append and not results:
        _start(path, append=False).close()
        return path
    for k, r in enumerate(results):
        if not isinstance(r, Retrieval):
            raise TypeError(f"results[{k}] is a {type(r).__name__}, not an xfit.Retrieval")
        with _start(path, append=append or k > 0) as f:
            g = f["records"].create_group(_next_name(f["records"]))
            _write_record(g, r)
            _finish(f, g, "ok", r.info.get("source"))
    return path


def append_failure(path: str | os.PathLike, source: str | os.PathLike, error: str) -> None:
    """Append a failed record: the pattern file ``source`` could not be read or fitted, with the error message."""
    with _start(Path(path), append=True) as f:
        g = f["records"].create_group(_next_name(f["records"]))
        g.attrs["error"] = str(error)
        _finish(f, g, "failed", os.fspath(source))


def _read(path: Path, reader, retries: int = 20):
    """Run ``reader(file)`` on the file opened read-only without locking, retrying while a writer is mid-record."""
    for attempt in range(retries):
        try:
            with _open(path, "r") as f:
                _check_header(f, path)
                return reader(f)
        except (OSError, KeyError, RuntimeError):
            if attempt == retries - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def read_index(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per complete record, in order: name, status ("ok"/"failed"), source, chi2_reduced, error."""

    def reader(f):
        out = []
        for name in sorted(f["records"]):
            a = f["records"][name].attrs
            if a.get("complete", False):
                out.append(
                    {
                        "name": name,
                        "status": str(a["status"]),
                        "source": str(a["source"]),
                        "chi2_reduced": float(a.get("chi2_reduced", np.nan)),
                        "error": str(a.get("error", "")),
                        "written": str(a.get("written", "")),
                    }
                )
        return out

    return _read(Path(path), reader)


def _pattern_from(g):
    from xfit.data._pattern import Pattern

    return Pattern(
        g["q"][()],
        g["values"][()],
        g["sigma"][()] if "sigma" in g else None,
        kind=str(g.attrs["kind"]),
        probe=str(g.attrs["probe"]),
        delay=float(g.attrs["delay_ps"]) if "delay_ps" in g.attrs else None,
        metadata=json.loads(g.attrs["metadata"]),
        legendre=int(g.attrs.get("legendre", 0)),
    )


def _record_from(g):
    from ase import Atoms

    from xfit.infer._result import Retrieval, Uncertainty

    numbers = g["numbers"][()]
    atoms = Atoms(numbers=numbers, positions=g["positions"][()])
    atoms.info = json.loads(g.attrs["atoms_info"])
    candidates = [atoms] + [Atoms(numbers=numbers, positions=x) for x in g["candidates"][1:]]
    ug = g["uncertainty"]
    u_samples = (ug["samples"][()], ug["sample_weights"][()]) if "samples" in ug else None
    u_basins = None
    if "basin_optima" in ug:
        u_basins = tuple(ug[n][()].astype(np.float64) for n in ("basin_optima", "basin_covariances", "basin_weights"))
    uncertainty = Uncertainty(
        **{n: ug[n][()] for n in ("distances", "positions", "candidate_spread", "covariance", "reference_positions")},
        n_comparable=int(ug.attrs["n_comparable"]),
        samples=u_samples,
        basins=u_basins,
    )
    reference = None
    if "reference" in g:
        reference = Atoms(numbers=g["reference/numbers"][()], positions=g["reference/positions"][()])
    optional = {n: g[n][()] if n in g else None for n in ("samples", "sample_weights", "sample_modes", "modes")}
    return Retrieval(
        atoms=atoms,
        candidates=candidates,
        chi2=g["chi2"][()],
        chi2_reduced=float(g.attrs["chi2_reduced"]),
        parameters={k: float(v) for k, v in g["parameters"].attrs.items()},
        model=_pattern_from(g["model"]),
        uncertainty=uncertainty,
        pattern=_pattern_from(g["pattern"]),
        reference=reference,
        info=json.loads(g.attrs["info"]),
        **optional,
        **{n: _pattern_from(g[n]) if n in g else None for n in ("pattern_p2", "model_p2")},
    )


def load_results(path: str | os.PathLike, *, since: int = 0) -> list:
    """Read the successful records of an HDF5 results file (:func:`save_results`) as ``xfit.Retrieval`` objects.

    Safe while another process appends: torn or unfinished records are skipped. Failed records (pattern files that
    could not be read or fitted) are not returned; ``xfit.data._results.read_index`` lists them with their errors.

    Args:
        path: the file.
        since: skip the first ``since`` complete records (ok or failed), to read only what is new.

    Raises:
        FileNotFoundError; ValueError naming the file when it is not HDF5 or not an xfit results file.
    """

    def reader(f):
        names = [n for n in sorted(f["records"]) if f["records"][n].attrs.get("complete", False)]
        return [_record_from(f["records"][n]) for n in names[since:] if f["records"][n].attrs["status"] == "ok"]

    return _read(Path(path), reader)
