"""Plots for people: matplotlib figures written atomically to files. Nothing here is needed by the physics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files, not windows; a no-op where a backend is already chosen
    import matplotlib.pyplot as plt

    return plt


def _figure(nrows: int, height: float = 3.0):
    fig, axes = _pyplot().subplots(nrows, 1, figsize=(7, height * nrows), squeeze=False, constrained_layout=True)
    return fig, axes[:, 0]


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a figure through a temporary file and a rename, so an interrupted save leaves no broken image."""
    import matplotlib.pyplot as plt

    from xfit._io import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    finally:
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


def _key_pairs(result, n_extra: int = 3) -> list[tuple[int, int]]:
    """Heavy-atom bonds of the input molecule (``info["bonds"]``, so that a bond broken in the result is shown), then
    heavy-atom bonds new in the result, then the heavy-atom pairs whose distance varies most over the posterior
    samples."""
    from xfit.chem._graph import MoleculeGraph

    graph = MoleculeGraph.from_atoms(result.atoms)
    heavy = np.flatnonzero(graph.heavy)
    is_heavy = set(heavy.tolist())
    given = [tuple(int(v) for v in b) for b in result.info.get("bonds", [])]
    pairs = [b for b in given if b[0] in is_heavy and b[1] in is_heavy]
    pairs += [p for p in map(tuple, graph.heavy_bonds.tolist()) if p not in pairs]
    if result.samples is not None:
        spread = result.uncertainty.candidate_spread[np.ix_(heavy, heavy)]
        i, j = np.triu_indices(len(heavy), k=1)
        for k in np.argsort(-spread[i, j])[:n_extra]:
            pair = (int(heavy[i[k]]), int(heavy[j[k]]))
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def _distance_panel(ax, result, pairs) -> None:
    """Distances of ``pairs``: posterior violins (2000 draws of ``Uncertainty.draw``: the mixture the error bars
    come from) with the structure's value, or the structure's value with its Gauss-Newton standard error."""
    atoms = result.atoms
    symbols = atoms.get_chemical_symbols()
    labels = [f"{symbols[a]}{a}-{symbols[b]}{b}" for a, b in pairs]
    d = [atoms.get_distance(a, b) for a, b in pairs]
    if result.samples is not None:
        x = result.uncertainty.draw(2000)
        draws = [np.linalg.norm(x[:, a] - x[:, b], axis=-1) for a, b in pairs]
        parts = ax.violinplot(draws, positions=range(len(pairs)), widths=0.8, showextrema=False)
        for body in parts["bodies"]:
            body.set_alpha(0.5)
        ax.plot(range(len(pairs)), d, "o", ms=4, color="k")
        ax.set_title("posterior of key distances (violins; dots: structure)", fontsize=9)
    else:
        err = [result.uncertainty.distances[a, b] for a, b in pairs]
        ax.errorbar(range(len(pairs)), d, err, fmt="o", ms=4, color="k", capsize=2)
        ax.set_title("distances +- Gauss-Newton standard error", fontsize=9)
    ax.set_xticks(range(len(pairs)), labels, rotation=60, fontsize=7)
    ax.set_ylabel(r"distance ($\AA$)")


def plot_retrieval(result, path=None, *, pairs=None):
    """Four panels: data with the fit, normalised residual, the structure (projection on its principal plane), and
    the key distances: posterior violins (posterior retrieval) or Gauss-Newton error bars (refinement)."""
    from xfit.chem._structures import covalent_bonds

    pattern, model, atoms = result.pattern, result.model, result.atoms
    sm = _electron_sm(result) if pattern.probe == "electron" else None
    if sm is None:
        fig = _pyplot().figure(figsize=(11, 6.5), constrained_layout=True)
        grid = fig.add_gridspec(2, 2, width_ratios=[1.5, 1], height_ratios=[2, 1])
    else:
        fig = _pyplot().figure(figsize=(15, 6.5), constrained_layout=True)
        grid = fig.add_gridspec(2, 3, width_ratios=[1.5, 1, 1], height_ratios=[2, 1])
        _pdf_panel(fig.add_subplot(grid[:, 2]), pattern.q, *sm)
    ax_fit, ax_res = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
    ax_mol, ax_dist = fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])

    q = pattern.q
    if pattern.sigma is not None:
        ax_fit.errorbar(q, pattern.values, pattern.sigma, fmt=".", ms=3, color="k", lw=0.8, label="data")
        residual = (pattern.values - model.values) / pattern.sigma
        ax_res.set_ylabel("(data - fit) / sigma")
    else:
        ax_fit.plot(q, pattern.values, ".", ms=3, color="k", label="data")
        residual = pattern.values - model.values
        ax_res.set_ylabel("data - fit")
    ax_fit.plot(q, model.values, color="C3", lw=1.5, label="IAM fit")
    title = f"{atoms.get_chemical_formula()}: chi2_red = {result.chi2_reduced:.3g}"
    title += "".join(f", {k} = {v:.3g}" for k, v in result.parameters.items())
    if pattern.delay is not None:
        title += f", delay {pattern.delay:g} ps"
    ax_fit.set_title(title, fontsize=9)
    ax_fit.set_ylabel(pattern.kind.replace("_", " "))
    if pattern.kind in ("total", "elastic", "atomic", "inelastic") and np.all(pattern.values > 0):
        ax_fit.set_yscale("log")
    ax_fit.legend(fontsize=8)
    ax_res.axhline(0, color="0.6", lw=0.8)
    ax_res.plot(q, residual, ".-", ms=3, lw=0.6, color="k")
    ax_res.set_xlabel(r"q = 4$\pi$ sin($\theta$)/$\lambda$ (1/$\AA$)")

    x = atoms.positions - atoms.positions.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    for a, b in covalent_bonds(atoms):
        ax_mol.plot(xy[[a, b], 0], xy[[a, b], 1], color="0.5", lw=1.5, zorder=1)
    colors = {1: "white", 6: "0.3", 7: "C0", 8: "C3", 16: "gold"}
    for k, z in enumerate(atoms.numbers):
        ax_mol.scatter(*xy[k], s=40 if z == 1 else 120, color=colors.get(z, "C4"), edgecolor="k", zorder=2)
        if z > 1:
            ax_mol.annotate(str(k), xy[k], fontsize=7, ha="center", va="center", color="w", zorder=3)
    ax_mol.set_aspect("equal")
    ax_mol.set_axis_off()
    method = result.info.get("method", "")
    mass = "" if result.modes is None else f", mode mass {result.modes[0]:.2f}"
    ax_mol.set_title(f"structure ({method}{mass}; principal plane, atom indices)", fontsize=9)

    pairs = _key_pairs(result) if pairs is None else [tuple(p) for p in pairs]
    if pairs:
        _distance_panel(ax_dist, result, pairs)
    if path is None:
        return fig
    return save_figure(fig, path)


def _electron_sm(result):
    """(label, data, model) as sM or Delta sM = q I_mol/I_at (1/A) of an electron retrieval, or None for kinds that do
    not convert (plain differences). I_at is computed as the likelihood does (gamma = 1 without energy_kev)."""
    import xfit
    from xfit.physics._elements import relativistic_factor

    pattern, model = result.pattern, result.model
    kind, q = pattern.kind, pattern.q
    if kind in ("sm", "delta_sm"):
        return ("sM" if kind == "sm" else r"$\Delta$sM"), pattern.values, model.values
    if kind not in ("elastic", "molecular", "percent_difference"):
        return None
    energy = pattern.energy_kev or 100.0
    options = {"probe": "electron", "energy_kev": energy, "electron_model": model.metadata.get("electron_model")}
    options["electron_model"] = options["electron_model"] or "mott-bethe"
    gamma2 = 1.0 if pattern.energy_kev else relativistic_factor(energy) ** 2
    i_at = xfit.scattering(result.atoms, q, kind="atomic", **options) / gamma2
    if kind == "percent_difference":
        i_ref = xfit.scattering(result.reference, q, kind=model.metadata["model_kind"], **options) / gamma2
        fraction = result.parameters["fraction"]
        return r"$\Delta$sM / f", *(q * v / 100 / fraction * i_ref / i_at for v in (pattern.values, model.values))
    scale = result.parameters["scale"]
    atomic = i_at if kind == "elastic" else 0.0
    return "sM", *(q * (v / scale - atomic) / i_at for v in (pattern.values, model.values))


def _pdf_panel(ax, q, label, data, model) -> None:
    """The pair distribution function (damped sine transform, ``xfit.pair_distribution``) of data and fit."""
    from xfit.physics._electron import pair_distribution

    r = np.linspace(0.3, 6.0, 400)
    ax.plot(r, np.asarray(pair_distribution(q, data, r)), color="k", lw=1.2, label=f"data ({label})")
    ax.plot(r, np.asarray(pair_distribution(q, model, r)), color="C3", lw=1.2, label="IAM fit")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(r"r ($\AA$)")
    ax.set_ylabel("PDF (sine transform of sM)")
    ax.set_title("pair distribution function", fontsize=9)
    ax.legend(fontsize=8)


def plot_sm(q, values, r, kind: str, path) -> Path:
    """sM or Delta sM curves (top) and their pair distribution functions (bottom).

    Args:
        q: q = 4 pi sin(theta)/lambda in 1/A, (n_q,). values: (n_frames, n_q) sM or Delta sM (1/A). r: (n_r,) in A.
        kind: "sm" or "delta_sm". path: output image.
    """
    from xfit.physics._electron import pair_distribution

    fig, (top, bottom) = _figure(2)
    label = "sM" if kind == "sm" else r"$\Delta$sM"
    for k, v in enumerate(values[:10]):
        top.plot(q, v, lw=1.0, label=f"frame {k}" if len(values) > 1 else None)
        bottom.plot(r, np.asarray(pair_distribution(q, v, r)), lw=1.0)
    top.axhline(0, color="0.6", lw=0.8)
    top.set_xlabel(r"q = 4$\pi$ sin($\theta$)/$\lambda$ (1/$\AA$)")
    top.set_ylabel(f"{label} (1/$\\AA$)")
    bottom.axhline(0, color="0.6", lw=0.8)
    bottom.set_xlabel(r"r ($\AA$)")
    bottom.set_ylabel("PDF")
    if 1 < len(values) <= 10:
        top.legend(fontsize=8)
    return save_figure(fig, path)


def plot_time_course(results, path, *, pairs, labels=None):
    """chi2_reduced, the fitted nuisance parameter and chosen distances (with Gauss-Newton error bars) over delay.

    Args:
        results: list of Retrieval, one per pattern (with delays, else their index is the x axis).
        path: image file. pairs: atom pairs (i, j) whose distances to follow. labels: their names.
    """
    delays = [r.pattern.delay for r in results]
    x = np.array(delays, float) if all(d is not None for d in delays) else np.arange(len(results), dtype=float)
    xlabel = "delay (ps)" if all(d is not None for d in delays) else "pattern"
    n_panels = 2 + len(pairs)
    fig, axes = _figure(n_panels, height=1.9)
    axes[0].plot(x, [r.chi2_reduced for r in results], "o-", ms=3, color="k")
    axes[0].axhline(1.0, color="0.6", lw=0.8)
    axes[0].set_ylabel(r"$\chi^2_{red}$")
    name = next(iter(results[0].parameters))
    axes[1].plot(x, [r.parameters[name] for r in results], "o-", ms=3, color="C0")
    axes[1].set_ylabel(name.replace("_", " "))
    symbols = results[0].atoms.get_chemical_symbols()
    for k, (i, j) in enumerate(pairs):
        ax = axes[2 + k]
        d = [r.atoms.get_distance(i, j) for r in results]
        err = [r.uncertainty.distances[i, j] for r in results]
        ax.errorbar(x, d, err, fmt="o-", ms=3, lw=0.8, capsize=1.5, color=f"C{(k + 2) % 10}")
        ax.set_ylabel((labels[k] if labels else f"{symbols[i]}{i}-{symbols[j]}{j}") + r" ($\AA$)", fontsize=8)
    axes[-1].set_xlabel(xlabel)
    return save_figure(fig, path)


def plot_histograms(distances: dict, path, *, title: str) -> Path:
    """Histograms of interatomic distances: {(i, j): {"counts", "edges"}} from ``pool_summary``."""
    fig, axes = _figure(len(distances), height=2.4)
    for ax, ((i, j), d) in zip(axes, distances.items(), strict=True):
        centres = 0.5 * (d["edges"][1:] + d["edges"][:-1])
        ax.bar(centres, d["counts"], width=np.diff(d["edges"]), color="C0", alpha=0.8)
        ax.set_xlabel(f"distance {i}-{j} (A)")
        ax.set_ylabel("structures")
    axes[0].set_title(title)
    return save_figure(fig, path)


def plot_image(image, detector, pattern, path) -> Path:
    """A detector image (log scale) beside its radial average with error bars."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    shown = np.where(image > 0, image, np.nan)
    art = left.imshow(np.log10(shown), origin="lower", cmap="magma")
    fig.colorbar(art, ax=left, label="log10 intensity")
    left.set_title(f"detector image, {detector.shape[0]} x {detector.shape[1]} pixels")
    left.set_xlabel("pixel (fast axis, 2)")
    left.set_ylabel("pixel (slow axis, 1)")
    right.errorbar(pattern.q, pattern.values, pattern.sigma, fmt=".", ms=2, lw=0.6)
    right.set_yscale("log")
    right.set_xlabel(r"q = 4$\pi$ sin($\theta$)/$\lambda$ (1/$\AA$)")
    weight = "solid angle" if getattr(pattern, "probe", "xray") == "electron" else "polarisation x solid angle"
    right.set_ylabel(f"radial average / ({weight})")
    return save_figure(fig, path)
