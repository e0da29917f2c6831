"""Opening HDF5 files with errors that name the file and what was expected, not h5py's "file signature not found"."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["open_h5"]


def open_h5(path: str | os.PathLike, mode: str = "r", *, what: str, **kwargs):
    """``h5py.File(path, mode, **kwargs)``, raising ValueError naming ``path`` and ``what`` it should hold when the
    file exists but is not HDF5 (corrupt, truncated, or another format), FileNotFoundError when it is missing."""
    import h5py

    path = Path(path)
    if mode == "r" and not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return h5py.File(path, mode, **kwargs)
    except OSError as error:
        if path.exists() and not h5py.is_hdf5(path):
            size = path.stat().st_size
            raise ValueError(
                f"{path} is not an HDF5 file ({size} bytes; corrupt, truncated or another format): expected {what}"
            ) from error
        raise OSError(f"cannot open {path} ({what}): {error}") from error
