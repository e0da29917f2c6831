"""``xfit live``: a watcher killed with SIGKILL midway and restarted leaves every pattern file in the results once."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import xfit
from xfit.data._results import read_index

from .conftest import DATA, ROOT

Q = np.linspace(0.5, 8.0, 60)
N_FILES = 24


def _write_patterns(folder, chd, ks):
    """CHD frames: the shipped structure with 0.03 A perturbations, written then renamed into place."""
    for k in ks:
        rng = np.random.default_rng(k)
        x = chd.positions + rng.normal(0, 0.03, chd.positions.shape)
        values = np.asarray(xfit.intensity(chd.numbers, x, Q))
        tmp = xfit.Pattern(Q, values, 0.003 * values).save(folder / f".p{k:02d}.txt")
        os.replace(tmp, folder / f"p{k:02d}.txt")


def _wait(predicate, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def _count(path):
    return len(read_index(path)) if path.exists() else 0


def test_watcher_killed_midway_and_restarted_records_each_file_once(chd, tmp_path):
    folder, results = tmp_path / "incoming", tmp_path / "results.h5"
    folder.mkdir()
    (folder / "notes.txt").write_text("this is not a pattern\n")
    _write_patterns(folder, chd, range(N_FILES // 2))
    cmd = [sys.executable, "-m", "xfit.cli", "live", str(folder), "--atoms", str(DATA / "chd.xyz")]
    cmd += ["-o", str(results), "--starts", "2", "--steps", "20", "--no-prior", "--batch", "8", "--settle", "0.2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    watcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: _count(results) >= 1, 120, watcher)
        _write_patterns(folder, chd, range(N_FILES // 2, N_FILES))  # arrive while it runs: picked up by the watch
        second_half = {str((folder / f"p{k:02d}.txt").resolve()) for k in range(N_FILES // 2, N_FILES)}
        _wait(lambda: any(i["source"] in second_half for i in read_index(results)), 120, watcher)
    finally:
        watcher.send_signal(signal.SIGKILL)
        watcher.communicate()
    assert _count(results) < N_FILES + 1, "killed too late to test a restart"
    again = subprocess.run([*cmd, "--once"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    index = read_index(results)
    ok = [i for i in index if i["status"] == "ok"]
    failed = [i for i in index if i["status"] == "failed"]
    expected = {str((folder / f"p{k:02d}.txt").resolve()) for k in range(N_FILES)}
    assert sorted(i["source"] for i in ok) == sorted(expected)  # each file exactly once
    assert [i["source"] for i in failed] == [str((folder / "notes.txt").resolve())]
    assert "notes.txt" not in again.stdout  # recorded as failed by the first run, not retried
    loaded = xfit.load_results(results)
    assert len(loaded) == N_FILES
    chi2 = np.array([r.chi2_reduced for r in loaded])
    assert np.all(np.isfinite(chi2)) and np.all(chi2 < 25)
    # near-closed frames: every retrieved structure is close to its true (perturbed) CHD geometry
    for r in loaded:
        k = int(os.path.basename(r.info["source"])[1:3])
        truth = chd.copy()
        truth.positions = chd.positions + np.random.default_rng(k).normal(0, 0.03, chd.positions.shape)
        assert xfit.rmsd(r.atoms, truth) < 0.1


def test_live_rejects_a_missing_folder(tmp_path, capsys):
    from xfit.cli import main

    argv = ["live", str(tmp_path / "nope"), "--atoms", str(DATA / "chd.xyz"), "-o", str(tmp_path / "r.h5")]
    assert main([*argv, "--once", "--no-cache"]) == 2
    assert "watch folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("batch", [0])
def test_live_rejects_a_bad_batch(tmp_path, capsys, batch):
    from xfit.cli import main

    argv = ["live", str(tmp_path), "--atoms", str(DATA / "chd.xyz"), "-o", str(tmp_path / "r.h5")]
    assert main([*argv, "--once", "--no-cache", "--batch", str(batch)]) == 2
    assert "--batch" in capsys.readouterr().err


def test_live_detector_images(chd, tmp_path, capsys):
    # --detector: each arriving file is a detector frame (or a stack), fitted pixel by pixel; frames whose invalid
    # pixels differ go through one retrieve call and land in the results file, one record per frame.
    from xfit.cli import main

    folder, results = tmp_path / "frames", tmp_path / "results.h5"
    folder.mkdir()
    detector = xfit.Detector.from_beam_center(distance_m=0.05, pixel_m=2.4e-3, shape=(40, 40), energy_kev=20.0)
    poni = detector.to_poni(tmp_path / "geometry.poni")
    import jax

    for k in range(3):
        counts = np.asarray(xfit.simulate_image(chd, detector, photons=1e10, key=jax.random.key(k)))
        counts.flat[np.random.default_rng(k).choice(counts.size, k, replace=False)] = np.nan
        np.save(folder / f"frame{k}.npy", counts if k < 2 else np.stack([counts, counts]))
    beamstop = np.zeros(detector.shape, bool)
    beamstop[19:21, 19:21] = True
    np.save(tmp_path / "beamstop.npy", beamstop)
    argv = ["live", str(folder), "--detector", str(poni), "--mask", str(tmp_path / "beamstop.npy")]
    argv += ["--atoms", str(DATA / "chd.xyz"), "-o", str(results), "--once", "--settle", "0", "--no-prior"]
    assert main([*argv, "--starts", "2", "--steps", "100"]) == 0
    out = capsys.readouterr().out
    assert "images of a 40 x 40 detector" in out and "done: 3 retrieved, 0 failed" in out
    loaded = xfit.load_results(results)
    assert len(loaded) == 4  # the last file a stack of two frames
    assert [os.path.basename(r.info["source"]) for r in loaded] == ["frame0.npy", "frame1.npy", *["frame2.npy"] * 2]
    # started at the truth: each stays within what 1,600 pixels at 1e10 photons fix (0.006-0.03 A measured)
    assert all(0.5 < r.chi2_reduced < 1.5 and xfit.rmsd(r.atoms, chd, heavy_only=True) < 0.05 for r in loaded)
