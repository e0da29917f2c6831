"""``xfit live``: follow a folder of pattern files and retrieve each one as it arrives, into an HDF5 results file.

A file is taken once its writer is done: names starting with "." or ending in .part/.tmp/.partial are ignored
(write there and rename into place), and any other file must keep the same size and modification time for
``--settle`` seconds. Files waiting together are retrieved in one call (at most ``--batch``; batches are padded to a
power of two so the compiled function is reused); each result is appended to RESULTS.h5 and flushed. Sources already
complete there (ok or failed) are skipped, so a killed watcher restarted with the same command redoes only what is
missing: every file ends up in the results exactly once. A file that cannot be read or fitted is recorded as failed
with its error and never retried. With --detector GEOMETRY.poni the files are detector images (``xfit.load_images``:
one frame or a stack per file), fitted pixel by pixel; all images of one detector share one compiled program,
however their invalid pixels differ.
"""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path

from xfit.cli._common import FRACTION_HELP, add_cache_option, fraction, pair
from xfit.data._pattern import PATTERN_KINDS

_IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".swp", ".lock")


def _candidate(path: Path, output: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() not in _IGNORED_SUFFIXES
        and path.resolve() != output.resolve()
    )


class _Watcher:
    """State of one ``xfit live`` run: what is done, what waits, the fit options, the throughput so far."""

    def __init__(self, args, atoms, detector=None):
        from xfit.data._results import read_index

        self.args, self.atoms, self.detector = args, atoms, detector
        self.output = args.output.resolve()
        self.done = {i["source"] for i in read_index(self.output)} if self.output.exists() else set()
        self.seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first time seen so)
        self.n_ok = self.n_failed = 0
        self.t0 = time.perf_counter()

    def scan(self, folder: Path) -> list[Path]:
        """Files in ``folder`` that are complete (size and mtime stable for --settle s) and not done yet."""
        now, ready = time.monotonic(), []
        for path in sorted(folder.iterdir()):
            path = path.resolve()
            if str(path) in self.done or not _candidate(path, self.output):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            previous = self.seen.get(path)
            if previous is None or previous[:2] != key:
                self.seen[path] = (*key, now)
                previous = self.seen[path]
            if st.st_size > 0 and now - previous[2] >= self.args.settle:
                ready.append(path)
        return ready

    def settling(self) -> bool:
        """Whether some file not done yet changed within the last --settle seconds (still being written)."""
        now = time.monotonic()
        return any(
            str(p) not in self.done and now - seen < 2 * self.args.settle for p, (_, _, seen) in self.seen.items()
        )

    def process(self, files: list[Path]) -> None:
        for lo in range(0, len(files), self.args.batch):
            self._batch(files[lo : lo + self.args.batch])

    def _batch(self, files: list[Path]) -> None:
        import xfit
        from xfit.data._results import append_failure

        t_start = time.perf_counter()
        loaded: list[tuple[Path, list]] = []
        for path in files:
            try:
                if self.detector is not None:
                    options = {"mask": self.args.mask, "kind": self.args.kind, "probe": self.args.probe}
                    patterns = xfit.load_images(path, self.detector, **options)
                else:
                    patterns = xfit.load_patterns(path, kind=self.args.kind, probe=self.args.probe)
                loaded.append((path, patterns))
            except Exception as error:  # any unreadable file is recorded, never fatal
                self._failed(path, error, append_failure)
        # one retrieve call per q grid and kind (a batch of files from one instrument shares both)
        groups: dict[tuple, list[tuple[Path, list]]] = {}
        for path, patterns in loaded:
            p = patterns[0]
            key = (p.kind, p.shape) if self.detector is not None else (p.kind, p.q.tobytes())
            groups.setdefault(key, []).append((path, patterns))
        for group in groups.values():
            self._retrieve_group(group, t_start)

    def _retrieve_group(self, group, t_start: float) -> None:
        from xfit.data._results import append_failure

        flat = [p for _, patterns in group for p in patterns]
        try:
            results = self._retrieve(flat)
        except Exception:
            if len(group) == 1:
                path = group[0][0]
                try:
                    results = self._retrieve(group[0][1])
                except Exception as error:
                    self._failed(path, error, append_failure)
                    return
            else:  # find the culprit: each file on its own
                for item in group:
                    self._retrieve_group([item], time.perf_counter())
                return
        k = 0
        latency = time.perf_counter() - t_start
        for path, patterns in group:
            self._write(path, results[k : k + len(patterns)], latency)
            k += len(patterns)

    def _retrieve(self, patterns: list) -> list:
        import xfit

        n = len(patterns)
        size = 1 << (n - 1).bit_length()  # pad to a power of two: a handful of compiled shapes, reused
        padded = patterns + [patterns[-1]] * (size - n)
        a = self.args
        results = xfit.retrieve(
            padded,
            self.atoms,
            fraction=a.fraction,
            restraints=None if a.no_restraints else "covalent",
            free_pairs=a.free_pair,
            n_starts=a.starts,
            steps=a.steps,
            seed=a.seed,
            prior=None if a.no_prior else (a.prior or "auto"),
        )
        return results[:n]

    def _write(self, path: Path, results: list, latency: float) -> None:
        import xfit

        xfit.save_results(results, self.output, append=True)
        self.done.add(str(path))
        self.n_ok += 1
        elapsed = time.perf_counter() - self.t0
        chi2 = ", ".join(f"{r.chi2_reduced:.3g}" for r in results)
        print(
            f"{path.name}: chi2_red {chi2}; latency {latency:.2f} s; {self.n_ok + self.n_failed} files, "
            f"{(self.n_ok + self.n_failed) / elapsed:.2f} files/s",
            flush=True,
        )
        for r in results:
            if "warning" in r.info:
                print(f"warning: {path.name}: {r.info['warning']}", flush=True)

    def _failed(self, path: Path, error: Exception, append_failure) -> None:
        message = f"{type(error).__name__}: {error}"
        append_failure(self.output, path, message)
        self.done.add(str(path))
        self.n_failed += 1
        print(f"{path.name}: FAILED ({message}); recorded in {self.output.name}, not retried", flush=True)


def run(args) -> int:
    import xfit

    folder = args.watch_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"watch folder not found: {folder}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.fraction == "shared":
        raise ValueError("--fraction shared needs the whole series at once (xfit retrieve); live mode takes F or F+-SD")
    if args.detector is None and args.mask is not None:
        raise ValueError("--mask is for detector images: give --detector GEOMETRY.poni")
    atoms = xfit.read_structures(args.atoms)[0]
    detector = None
    if args.detector is not None:
        detector = xfit.Detector.from_poni(args.detector, polarization=args.polarization)
    watcher = _Watcher(args, atoms, detector)
    images = "" if detector is None else f"; images of a {detector.shape[0]} x {detector.shape[1]} detector"
    print(
        f"watching {folder} -> {args.output} ({len(watcher.done)} source(s) already done); start {args.atoms} "
        f"({atoms.get_chemical_formula()}); batch {args.batch}{images}",
        flush=True,
    )
    server = None
    if args.serve is not None:
        from xfit.cli._dashboard import start_server

        server = start_server(args.output, args.serve)
        print(f"dashboard: http://127.0.0.1:{args.serve}/", flush=True)
    try:
        _loop(watcher, folder, args)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
    print(f"done: {watcher.n_ok} retrieved, {watcher.n_failed} failed; results in {args.output}", flush=True)
    return 0


def _loop(watcher: _Watcher, folder: Path, args) -> None:
    import watchfiles

    while True:  # first what is there (waiting out --settle for files still being written)
        ready = watcher.scan(folder)
        if ready:
            watcher.process(ready)
            continue
        if not watcher.settling():
            break
        time.sleep(min(args.settle, 0.2))
    if args.once:
        return
    timeout_ms = max(int(args.settle * 1000), 50)
    for _ in watchfiles.watch(folder, rust_timeout=timeout_ms, yield_on_timeout=True, recursive=False):
        # changes or a quiet interval: take every file that has settled since
        ready = watcher.scan(folder)
        if ready:
            watcher.process(ready)


def add_parser(sub) -> None:
    """Register the subcommand on the ``xfit`` parser's subparsers."""
    r = sub.add_parser(
        "live",
        help="follow a folder of pattern files (or detector images), retrieving each as it arrives, into an HDF5 "
        "results file",
        description=textwrap.fill((__doc__ or "").split("\n\n", 1)[1].replace("\n", " "), width=100),
        epilog=(
            "example:\n"
            "  xfit live incoming/ --atoms examples/data/chd.xyz -o results.h5 --batch 16 --serve 8050\n"
            "  xfit live frames/ --detector geometry.poni --mask mask.npy --atoms examples/data/chd.xyz -o results.h5\n"
            "  python -c \"import xfit; print(xfit.load_results('results.h5')[-1])\""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("watch_dir", type=Path, metavar="WATCH_DIR", help="folder where pattern files arrive")
    r.add_argument("--atoms", type=Path, required=True, help="starting structure, e.g. .xyz")
    r.add_argument("-o", "--output", type=Path, required=True, metavar="RESULTS.h5", help="results file (appended)")
    r.add_argument("--kind", choices=PATTERN_KINDS, help="override the pattern kind the files declare")
    r.add_argument("--probe", choices=("xray", "electron"), help="override the probe the files declare")
    r.add_argument(
        "--detector",
        type=Path,
        metavar="GEOMETRY.poni",
        help="the files are 2D detector images (one frame or a stack each; formats as xfit retrieve --detector) "
        "taken with this pyFAI geometry (the PONI file must give the detector's shape): fitted pixel by pixel",
    )
    r.add_argument("--mask", type=Path, metavar="FILE", help="images: pixels to exclude (nonzero = excluded, pyFAI)")
    r.add_argument(
        "--polarization", type=float, default=0.99, help="images: the beam's degree of linear polarisation (0.99)"
    )
    r.add_argument("--batch", type=int, default=32, help="most files retrieved in one call (default 32)")
    r.add_argument("--once", action="store_true", help="process the files there now, then exit")
    r.add_argument("--serve", type=int, metavar="PORT", help="serve a dashboard at http://127.0.0.1:PORT/")
    r.add_argument("--settle", type=float, default=0.5, help="seconds a file's size must stay unchanged (0.5)")
    r.add_argument("--fraction", type=fraction, help=FRACTION_HELP)
    r.add_argument("--free-pair", type=pair, action="append", default=[], metavar="I,J", help="bond that may break")
    r.add_argument("--no-restraints", action="store_true", help="fit without covalent-geometry restraints")
    r.add_argument("--starts", type=int, default=32, help="starts per pattern (default 32)")
    r.add_argument("--steps", type=int, default=1000, help="optimisation steps (default 1000)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    prior = r.add_mutually_exclusive_group()
    prior.add_argument("--prior", metavar="FOLDER", help="as for xfit retrieve")
    prior.add_argument("--no-prior", action="store_true", help="refinement with covalent restraints alone")
    add_cache_option(r)
    r.set_defaults(run=run)
