"""Plots for people: matplotlib figures written atomically to files. Nothing here is needed by the physics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def _figure(nrows: int, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, 1, figsize=(7, height * nrows), squeeze=False, constrained_layout=True)
    return fig, axes[:, 0]


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure through a temporary file and a rename, so an interrupted save leaves no broken image."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
    return path


def plot_scattering(q, parts: dict[str, np.ndarray], labels: list[str], title: str, path) -> Path:
    """Total/elastic/atomic/Compton intensities (top) and the modified molecular scattering q I_mol / I_at (bottom).

    Args:
        q: 1/A, (n_q,). parts: name -> (n_frames, n_q) for "total", "atomic", "molecular", "inelastic".
        labels: one label per frame. title: figure title. path: output image.
    """
    fig, (top, bottom) = _figure(2)
    import matplotlib.pyplot as plt

    n_frames = parts["total"].shape[0]
    legend_frames = n_frames <= 10  # beyond that, frames are told apart by a colour scale, not a legend
    colors = plt.cm.viridis(np.linspace(0, 1, n_frames)) if not legend_frames else [None] * n_frames
    for k in range(n_frames):
        label = (labels[k] if n_frames > 1 else "total") if legend_frames else None
        top.plot(q, parts["total"][k], lw=1.5 if legend_frames else 0.8, color=colors[k], label=label)
        sm = q * parts["molecular"][k] / parts["atomic"][k]
        bottom.plot(q, sm, lw=1.2 if legend_frames else 0.8, color=colors[k], label=label)
    if not legend_frames:
        top.text(
            0.99,
            0.97,
            f"{n_frames} frames: {labels[0]} (purple) .. {labels[-1]} (yellow)",
            transform=top.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    top.plot(q, parts["atomic"][0], "k--", lw=1, label="atomic")
    top.plot(q, parts["inelastic"][0], "k:", lw=1, label="Compton")
    top.set_yscale("log")
    top.set_ylabel("I(q) (electron units)")
    top.set_title(title)
    top.legend(fontsize=8, ncol=2)
    bottom.axhline(0, color="0.6", lw=0.8)
    bottom.set_xlabel(r"q = 4$\pi$ sin($\theta$)/$\lambda$ (1/$\AA$)")
    bottom.set_ylabel(r"q I$_{mol}$ / I$_{at}$ (1/$\AA$)")
    if 1 < n_frames <= 10:
        bottom.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)
