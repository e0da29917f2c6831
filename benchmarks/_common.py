"""What every benchmark script shares: the run's header (date, device) and writing results atomically."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path


def header() -> dict:
    """Date (UTC), JAX device and CPU count of this run."""
    import jax

    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{device.platform}: {device.device_kind}",
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }


def write_json(path: Path | None, results: dict) -> None:
    """Write results as JSON through a temporary file and a rename (nothing when path is None)."""
    if path is None:
        return
    tmp = Path(path).with_suffix(".part")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)
    print(f"wrote {path}")
