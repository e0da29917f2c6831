"""``xfit live --serve``: the JSON endpoint, and the page in a real headless browser (Debian's Chromium)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import xfit

from .conftest import DATA, ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
Q = np.linspace(0.5, 8.0, 60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_pattern(folder, chd, k):
    rng = np.random.default_rng(100 + k)
    x = chd.positions + rng.normal(0, 0.03, chd.positions.shape)
    values = np.asarray(xfit.intensity(chd.numbers, x, Q))
    tmp = xfit.Pattern(Q, values, 0.003 * values).save(folder / f".p{k}.txt")
    os.replace(tmp, folder / f"p{k}.txt")


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode(), response.headers.get("content-type")


def _wait(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_dashboard_in_a_headless_browser_updates_when_a_pattern_arrives(chd, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium chromium-driver, as .ci/run does)")
    from playwright.sync_api import sync_playwright

    folder, results, port = tmp_path / "incoming", tmp_path / "results.h5", _free_port()
    folder.mkdir()
    _write_pattern(folder, chd, 0)
    cmd = [sys.executable, "-m", "xfit.cli", "live", str(folder), "--atoms", str(DATA / "chd.xyz"), "-o", str(results)]
    cmd += ["--starts", "2", "--steps", "20", "--no-prior", "--batch", "8", "--settle", "0.2", "--serve", str(port)]
    watcher = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: json.loads(_get(f"{base}/api/results")[0])["n_ok"] == 1, 120, watcher)
        api = json.loads(_get(f"{base}/api/results?since=0")[0])
        assert api["records"][0]["source"] == str((folder / "p0.txt").resolve())
        assert len(api["latest"]["q"]) == len(Q) and len(api["records"][0]["positions"]) == len(chd)
        d, e = api["records"][0]["distances"]["0-1"]  # the C1-C2 bond of CHD with its standard error
        assert 1.2 < d < 1.6 and 0 < e < 0.2
        assert json.loads(_get(f"{base}/api/results?since=1")[0])["records"] == []
        script, kind = _get(f"{base}/dashboard.js")
        assert "javascript" in kind and "fetch(" in script
        page_html = _get(base + "/")[0]
        assert "http" not in page_html.replace(base, "")  # every script served by xfit itself: no CDN
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('n-results').textContent === '1'", timeout=20_000)
            assert "p0.txt" in page.text_content("#latest")
            _write_pattern(folder, chd, 1)
            page.wait_for_function("document.getElementById('n-results').textContent === '2'", timeout=60_000)
            assert "p1.txt" in page.text_content("#latest")
            # the plots were drawn: the fit canvas is not blank
            blank = page.evaluate(
                "(() => { const c = document.getElementById('fit'); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; return d.every(v => v === 0); })()"
            )
            assert not blank
            assert errors == []
            browser.close()
    finally:
        watcher.send_signal(signal.SIGKILL)
        watcher.communicate()
