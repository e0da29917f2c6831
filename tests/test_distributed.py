"""Scale-out on Dask: a 2-worker LocalCluster gives the serial results, whatever ran where, a lost worker included.

One cluster (two worker processes, one thread each, with nannies that restart a killed worker) serves the module:
its workers compile once and reuse, as on a real cluster.
"""

import logging
import os
import signal
import threading
import time

import h5py
import jax
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

import xfit
from xfit.chem import _pool

Q = np.linspace(0.5, 8.0, 60)
FAST = {"n_starts": 3, "steps": 60, "seed": 4, "prior": None}


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: two test processes at once must not both ask for 8787
        silence_logs=logging.CRITICAL,  # the killed worker's nanny reports the death as an error log, on purpose
    )
    with cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def chd_patterns(chd):
    out = []
    for k in range(8):
        atoms = chd.copy()
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        pattern = xfit.Pattern(Q, xfit.scattering(atoms, Q), delay=0.1 * k)
        out.append(pattern.with_noise(jax.random.key(k), relative=1e-3))
    return out


@pytest.fixture(scope="module")
def serial(chd_patterns, chd):
    return xfit.retrieve(chd_patterns, chd, **FAST)


# The 6,000 structures in 6 chunks of 1,000 (a Wigner/MMFF chunk computes in ~0.1 s).
POOL = _pool.PoolSpec("DT", "wigner", 6000, (0.5, 8.0, 32), forcefield="mmff", chunk=1000, seed=3)


@pytest.fixture(scope="module")
def serial_pool(tmp_path_factory):
    return _pool.build_pool(tmp_path_factory.mktemp("pools") / "serial.h5", POOL)


def _max_deviation(a, b) -> float:
    return max(float(np.max(np.abs(x.atoms.positions - y.atoms.positions))) for x, y in zip(a, b, strict=True))


def test_retrieval_on_two_workers_matches_the_serial_call(client, chd_patterns, chd, serial, tmp_path):
    with get_task_stream(client) as stream:
        spread = xfit.retrieve(chd_patterns, chd, client=client, chunk=2, results_file=tmp_path / "r.h5", **FAST)
    workers = {t["worker"] for t in stream.data if str(t["key"]).startswith("xfit-retrieve")}
    assert len(workers) == 2, f"all chunks ran on {workers}"
    assert [r.pattern.delay for r in spread] == [p.delay for p in chd_patterns]
    # Same starts for every pattern (keys from the seed and the pattern's index), so the same optima; float32
    # rounding differs between a batch of 8 and chunks of 2.
    assert _max_deviation(spread, serial) < 1e-3
    for a, b in zip(spread, serial, strict=True):
        assert a.chi2_reduced == pytest.approx(b.chi2_reduced, rel=1e-2)
    # Streamed into the results file chunk by chunk, in the patterns' order.
    stored = xfit.load_results(tmp_path / "r.h5")
    assert [r.pattern.delay for r in stored] == [p.delay for p in chd_patterns]
    np.testing.assert_allclose([r.atoms.positions for r in stored], [r.atoms.positions for r in spread])


def _compiled_refinements() -> int:
    from xfit.infer._refinement import refine

    return refine._cache_size()


def test_a_padded_last_chunk_reuses_the_compiled_function(client, chd_patterns, chd, serial):
    xfit.retrieve(chd_patterns[:2], chd, client=client, chunk=2, **FAST)  # every worker has compiled chunks of 2
    before = client.run(_compiled_refinements)
    odd = xfit.retrieve(chd_patterns[:7], chd, client=client, chunk=2, **FAST)  # 3 chunks of 2, one padded 1 + 1
    assert client.run(_compiled_refinements) == before
    assert len(odd) == 7 and _max_deviation(odd, serial[:7]) < 1e-3


def test_a_pattern_draws_the_same_starts_in_any_batch(chd_patterns, chd):
    # What makes the cluster result the serial one: pattern t's starts depend on (seed, t) only.
    from xfit.chem._graph import MoleculeGraph
    from xfit.infer._likelihood import build_likelihood
    from xfit.infer._problem import Problem
    from xfit.infer._refinement import Refinement
    from xfit.infer._restraints import Restraints

    strategy = Refinement(Restraints.none(), n_starts=5, perturbation=0.1)
    options = {"fraction": None, "model_kind": "total", "background": False, "relative_sigma": 1e-3}
    like = build_likelihood(chd_patterns, chd.numbers, chd.positions, **options)
    problem = Problem(tuple(chd_patterns), like, MoleculeGraph.from_atoms(chd), chd, chd, False)
    key = jax.random.key(7)
    all_starts = strategy.starts(problem, key)
    part = strategy.starts(problem.part(np.array([5, 6])), key)
    np.testing.assert_array_equal(part, all_starts[[5, 6]])
    assert not np.allclose(all_starts[5], all_starts[6])  # different patterns, different draws


def test_coupled_series_and_bad_client_are_refused(client, chd_patterns, chd):
    with pytest.raises(ValueError, match="smoothness"):
        xfit.retrieve(chd_patterns, chd, client=client, smoothness=1.0, **FAST)
    with pytest.raises(TypeError, match=r"dask\.distributed\.Client"):
        xfit.retrieve(chd_patterns, chd, client="tcp://127.0.0.1:8786", **FAST)


def test_wigner_pool_built_on_the_cluster_equals_the_serial_pool(client, serial_pool):
    with get_task_stream(client) as stream:
        spread = _pool.build_pool(serial_pool.parent / "spread.h5", POOL, client=client)
    assert len({t["worker"] for t in stream.data if str(t["key"]).startswith("xfit-pool")}) == 2
    with h5py.File(serial_pool, "r") as a, h5py.File(spread, "r") as b:
        assert b.attrs["status"] == "complete" and b["positions"].shape == (POOL.n, len(a["numbers"]), 3)
        for name in ("positions", "patterns", "reference_positions", "hessian"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    assert not _pool._chunk_dir(spread).exists()


def test_a_pool_interrupted_on_the_cluster_resumes_to_the_serial_pool(client, serial_pool):
    class Interrupt(Exception):
        pass

    def stop_after_two_chunks(done, total):
        if done >= 2 * POOL.chunk:
            raise Interrupt

    path = serial_pool.parent / "interrupted.h5"
    with pytest.raises(Interrupt):
        _pool.build_pool(path, POOL, client=client, progress=stop_after_two_chunks)
    with h5py.File(path, "r") as f:  # what was published is a readable pool of the finished chunks
        assert f.attrs["status"] == "building" and f.attrs["n_complete"] == 2 * POOL.chunk
    _pool.build_pool(path, POOL, client=client)
    with h5py.File(serial_pool, "r") as a, h5py.File(path, "r") as b:
        assert b.attrs["status"] == "complete"
        for name in ("positions", "patterns"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_a_worker_killed_mid_run_loses_nothing(client, chd_patterns, chd, serial):
    client.wait_for_workers(2)
    out = {}
    run = threading.Thread(
        target=lambda: out.setdefault("results", xfit.retrieve(chd_patterns, chd, client=client, chunk=2, **FAST))
    )
    run.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        busy = {w: keys for w, keys in client.processing().items() if any("xfit-retrieve" in str(k) for k in keys)}
        victim = next(iter(busy), None)
        time.sleep(0.05)
    assert victim is not None, "no retrieval task ever reached a worker"
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    killed_while_running = run.is_alive()
    run.join(120)
    assert killed_while_running and not run.is_alive()
    assert victim not in client.scheduler_info()["workers"]  # the process did die (its nanny starts a new one)
    assert len(out["results"]) == len(chd_patterns)
    assert _max_deviation(out["results"], serial) < 1e-3


def test_cli_pool_and_retrieve_with_a_scheduler_give_the_serial_results(client, chd, chd_patterns, serial, serial_pool):
    from ase.io import read, write

    from xfit.cli import main

    tmp, address = serial_pool.parent, client.scheduler.address
    pool = tmp / "cli.h5"
    argv = ["pool", "DT", "--method", "wigner", "-n", "6000", "--q", "0.5:8:32", "--forcefield", "mmff"]
    assert main([*argv, "--chunk", "1000", "--seed", "3", "-o", str(pool), "--scheduler", address]) == 0
    with h5py.File(serial_pool, "r") as a, h5py.File(pool, "r") as b:
        for name in ("positions", "patterns"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)

    # The 8-pattern series as a file; --starts/--steps/--seed as FAST (default chunk: 1 pattern per task).
    series, start, out = tmp / "series.npz", tmp / "chd.xyz", tmp / "r.xyz"
    xfit.save_patterns(series, chd_patterns)
    write(start, chd)
    argv = ["retrieve", str(series), "--atoms", str(start), "--no-prior", "--starts", "3", "--steps", "60"]
    assert main([*argv, "--seed", "4", "-o", str(out), "--scheduler", address]) == 0
    frames = read(out, index=":")
    assert len(frames) == len(serial)
    results = tmp / "r.h5"  # an .h5 output is streamed from the workers' chunks
    assert main([*argv, "--seed", "4", "-o", str(results), "--scheduler", address]) == 0
    assert len(xfit.load_results(results)) == len(serial)
    deviation = [np.max(np.abs(f.positions - r.atoms.positions)) for f, r in zip(frames, serial, strict=True)]
    assert max(deviation) < 1e-3
