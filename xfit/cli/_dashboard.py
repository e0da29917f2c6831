"""``xfit live --serve PORT``: a small web dashboard over an HDF5 results file (Starlette + uvicorn, the ``live``
extra).

Endpoints: ``/`` the page; ``/dashboard.js`` its script (served by xfit: no CDN, no internet needed);
``/api/results?since=N`` the complete records after the first N, as JSON: for each, index, status, source,
chi2_reduced, written (UTC), and for successful records the structure (numbers, positions in A) and the tracked
distances (the heavy-atom bonds of the first structure) as {"i-j": [distance, standard error] in A}; plus ``n`` (all
complete records), ``n_ok``, ``throughput`` (files/s over the last minute) and ``latest``: the newest successful
record's pattern and fit (q in 1/A, q = 4 pi sin(theta)/lambda; values, model, sigma or null).
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import numpy as np

__all__ = ["make_app", "start_server"]

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>xfit live</title>
<style>
body { font-family: sans-serif; margin: 1em; background: #fafafa; }
.grid { display: grid; grid-template-columns: repeat(2, 520px); gap: 1em; }
canvas { background: white; border: 1px solid #ccc; }
h1 { font-size: 1.3em; } .big { font-size: 1.5em; font-weight: bold; }
</style></head>
<body>
<h1>xfit live: <span id="source">RESULTS</span></h1>
<p>results: <span id="n-results" class="big">0</span> (failed: <span id="n-failed">0</span>);
throughput: <span id="throughput">-</span> files/s; latest: <span id="latest">-</span></p>
<div class="grid">
<div><b>latest fit (data, model) and normalised residual</b><br>
<canvas id="fit" width="520" height="320"></canvas></div>
<div><b>latest structure</b><br><canvas id="structure" width="520" height="320"></canvas></div>
<div><b>chi2_reduced per result</b><br><canvas id="chi2" width="520" height="240"></canvas></div>
<div><b>files per second (last minute)</b><br><canvas id="rate" width="520" height="240"></canvas></div>
<div><b>heavy-atom bond distances (A) with standard errors</b> <span id="pairs"></span><br>
<canvas id="distances" width="520" height="240"></canvas></div>
</div>
<script src="dashboard.js"></script>
</body></html>
"""

_SCRIPT = r"""
"use strict";
const state = { n: 0, records: [], latest: null, rates: [], angle: 0 };
const ELEMENT = { 1: ["#ddd", 0.3], 6: ["#444", 0.5], 7: ["#3050f8", 0.5], 8: ["#ff0d0d", 0.5], 16: ["#cc0", 0.6] };

function axes(ctx, w, h) {
  ctx.clearRect(0, 0, w, h); ctx.strokeStyle = "#999"; ctx.strokeRect(40, 10, w - 50, h - 40);
}
function line(ctx, xs, ys, box, color, dots) {
  const [x0, x1, y0, y1, px, py, pw, ph] = box;
  ctx.strokeStyle = color; ctx.fillStyle = color; ctx.beginPath();
  xs.forEach((x, i) => {
    const X = px + (x - x0) / (x1 - x0 || 1) * pw, Y = py + ph - (ys[i] - y0) / (y1 - y0 || 1) * ph;
    if (dots) { ctx.fillRect(X - 1.5, Y - 1.5, 3, 3); } else if (i) { ctx.lineTo(X, Y); } else { ctx.moveTo(X, Y); }
  });
  if (!dots) ctx.stroke();
}
function range(a) { return [Math.min(...a), Math.max(...a)]; }
function label(ctx, text, x, y) { ctx.fillStyle = "#333"; ctx.font = "11px sans-serif"; ctx.fillText(text, x, y); }

function drawFit() {
  const c = document.getElementById("fit"), ctx = c.getContext("2d"), L = state.latest;
  axes(ctx, c.width, c.height);
  if (!L) return;
  const positive = L.values.concat(L.model).every(v => v > 0), f = positive ? Math.log10 : (v => v);
  const data = L.values.map(f), model = L.model.map(f);
  const [ylo, yhi] = range(data.concat(model));
  const top = [L.q[0], L.q[L.q.length - 1], ylo, yhi, 40, 10, c.width - 50, 190];
  line(ctx, L.q, data, top, "#000", true); line(ctx, L.q, model, top, "#d62728", false);
  if (positive) label(ctx, "log10", 45, 22);
  const res = L.values.map((v, i) => (v - L.model[i]) / (L.sigma ? L.sigma[i] : 1));
  const [rlo, rhi] = range(res);
  line(ctx, L.q, res, [L.q[0], L.q[L.q.length - 1], rlo, rhi, 40, 215, c.width - 50, 65], "#1f77b4", false);
  label(ctx, "q (1/A)", c.width / 2, c.height - 12); label(ctx, "residual" + (L.sigma ? "/sigma" : ""), 45, 225);
}

function drawStructure() {
  const c = document.getElementById("structure"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const ok = state.records.filter(r => r.status === "ok");
  if (!ok.length) return;
  const r = ok[ok.length - 1], a = state.angle, ca = Math.cos(a), sa = Math.sin(a);
  const p = r.positions.map(([x, y, z]) => [ca * x + sa * z, y, -sa * x + ca * z]);
  const s = 45, cx = c.width / 2, cy = c.height / 2;
  ctx.strokeStyle = "#888"; ctx.lineWidth = 3;
  for (let i = 0; i < p.length; i++) for (let j = i + 1; j < p.length; j++) {
    const d = Math.hypot(p[i][0] - p[j][0], p[i][1] - p[j][1], p[i][2] - p[j][2]);
    const hh = r.numbers[i] === 1 || r.numbers[j] === 1;
    if (d < (hh ? 1.25 : 1.75) && !(r.numbers[i] === 1 && r.numbers[j] === 1)) {
      ctx.beginPath(); ctx.moveTo(cx + s * p[i][0], cy - s * p[i][1]); ctx.lineTo(cx + s * p[j][0], cy - s * p[j][1]);
      ctx.stroke();
    }
  }
  p.map((q, i) => [q, i]).sort((u, v) => u[0][2] - v[0][2]).forEach(([q, i]) => {
    const [color, radius] = ELEMENT[r.numbers[i]] || ["#f0f", 0.5];
    ctx.beginPath(); ctx.fillStyle = color; ctx.strokeStyle = "#000"; ctx.lineWidth = 1;
    ctx.arc(cx + s * q[0], cy - s * q[1], s * radius * 0.6, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
  });
  label(ctx, r.source.split("/").pop(), 10, 15);
}

function drawSeries(id, xs, ys, name) {
  const c = document.getElementById(id), ctx = c.getContext("2d");
  axes(ctx, c.width, c.height);
  if (!xs.length) return;
  const [xlo, xhi] = range(xs), [ylo, yhi] = range(ys.concat([0]));
  line(ctx, xs, ys, [xlo, xhi, ylo, yhi * 1.05, 40, 10, c.width - 50, c.height - 40], "#1f77b4", true);
  label(ctx, yhi.toPrecision(3), 2, 18); label(ctx, "0", 25, c.height - 32);
  label(ctx, name, c.width / 2, c.height - 12);
}

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
function drawDistances(ok) {
  const c = document.getElementById("distances"), ctx = c.getContext("2d");
  axes(ctx, c.width, c.height);
  const rows = ok.filter(r => r.distances);
  if (!rows.length) return;
  const pairs = Object.keys(rows[0].distances);
  const all = rows.flatMap(r => pairs.flatMap(k => [r.distances[k][0] - r.distances[k][1],
                                                    r.distances[k][0] + r.distances[k][1]]));
  const [lo, hi] = range(all), n = Math.max(rows.length - 1, 1), pw = c.width - 50, ph = c.height - 40;
  const X = i => 40 + i / n * pw, Y = v => 10 + ph - (v - lo) / (hi - lo || 1) * ph;
  pairs.forEach((k, p) => {
    ctx.strokeStyle = ctx.fillStyle = COLORS[p % COLORS.length];
    rows.forEach((r, i) => {
      const [d, e] = r.distances[k];
      ctx.fillRect(X(i) - 2, Y(d) - 2, 4, 4);
      ctx.beginPath(); ctx.moveTo(X(i), Y(d - e)); ctx.lineTo(X(i), Y(d + e)); ctx.stroke();
    });
  });
  label(ctx, hi.toFixed(2), 2, 18); label(ctx, lo.toFixed(2), 2, c.height - 32);
  label(ctx, "result #", c.width / 2, c.height - 12);
  document.getElementById("pairs").innerHTML = pairs.map((k, p) =>
    '<span style="color:' + COLORS[p % COLORS.length] + '">' + k + "</span>").join(" ");
}

async function poll() {
  try {
    const response = await fetch("api/results?since=" + state.n);
    const data = await response.json();
    state.records = state.records.concat(data.records);
    state.n = data.n;
    if (data.latest) state.latest = data.latest;
    state.rates.push([Date.now() / 1000, data.throughput]);
    document.getElementById("n-results").textContent = data.n_ok;
    document.getElementById("n-failed").textContent = data.n - data.n_ok;
    document.getElementById("throughput").textContent = data.throughput.toFixed(2);
    document.getElementById("source").textContent = data.file;
    const ok = state.records.filter(r => r.status === "ok");
    if (ok.length) {
      const last = ok[ok.length - 1];
      document.getElementById("latest").textContent =
        last.source.split("/").pop() + ", chi2_reduced " + last.chi2_reduced.toPrecision(3);
    }
    drawFit();
    drawSeries("chi2", ok.map((r, i) => i), ok.map(r => r.chi2_reduced), "result #");
    drawDistances(ok);
    const t0 = state.rates[0][0];
    drawSeries("rate", state.rates.map(r => r[0] - t0), state.rates.map(r => r[1]), "time (s)");
  } catch (e) { console.log(e); }
  setTimeout(poll, 1000);
}
setInterval(() => { state.angle += 0.03; drawStructure(); }, 50);
poll();
"""


def _throughput(index: list[dict]) -> float:
    now = datetime.datetime.now(datetime.UTC)
    recent = [i for i in index if i["written"] and (now - datetime.datetime.fromisoformat(i["written"])).seconds < 60]
    return len(recent) / 60.0


def _listify(a):
    return None if a is None else np.asarray(a, np.float64).tolist()


def results_json(path: Path, since: int, pairs=None) -> dict:
    """The payload of ``/api/results?since=N`` (module notes); ``pairs(atoms)`` picks the tracked distances."""
    from xfit.data._results import load_results, read_index

    pairs = pairs or _Pairs()

    if not path.exists():
        return {"file": path.name, "n": 0, "n_ok": 0, "throughput": 0.0, "records": [], "latest": None}
    index = read_index(path)
    new = index[since:]
    ok_new = load_results(path, since=since)
    records, k = [], 0
    for j, i in enumerate(new):
        record = {"index": since + j, **{key: i[key] for key in ("status", "source", "written", "error")}}
        record["chi2_reduced"] = i["chi2_reduced"] if np.isfinite(i["chi2_reduced"]) else None
        if i["status"] == "ok":
            r = ok_new[k]
            k += 1
            record["numbers"] = r.atoms.numbers.tolist()
            record["positions"] = _listify(r.atoms.positions)
            x, e = r.atoms.positions, r.uncertainty.distances
            d = np.linalg.norm(x[:, None] - x[None], axis=-1)
            record["distances"] = {f"{a}-{b}": [float(d[a, b]), float(e[a, b])] for a, b in pairs(r.atoms)}
        records.append(record)
    latest = None
    if ok_new:
        r = ok_new[-1]
        latest = {
            "source": r.info.get("source"),
            "q": _listify(r.pattern.q),
            "values": _listify(r.pattern.values),
            "model": _listify(r.model.values),
            "sigma": _listify(r.pattern.sigma),
        }
    return {
        "file": path.name,
        "n": len(index),
        "n_ok": sum(i["status"] == "ok" for i in index),
        "throughput": _throughput(index),
        "records": records,
        "latest": latest,
    }


class _Pairs:
    """The tracked atom pairs: the heavy-atom bonds (at most 6) of the first structure seen, then kept fixed."""

    def __init__(self):
        self.pairs = None

    def __call__(self, atoms) -> list[tuple[int, int]]:
        if self.pairs is None:
            from xfit.chem._structures import covalent_bonds

            self.pairs = [(int(a), int(b)) for a, b in covalent_bonds(atoms, heavy_only=True)[:6]]
        return self.pairs


def make_app(path: str | Path):
    """The Starlette application serving the dashboard of results file ``path``."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    path, pairs = Path(path), _Pairs()

    async def page(request):
        return HTMLResponse(_PAGE)

    async def script(request):
        return Response(_SCRIPT, media_type="application/javascript")

    async def api(request):
        try:
            since = max(int(request.query_params.get("since", 0)), 0)
        except ValueError:
            return JSONResponse({"error": "since must be an integer"}, status_code=400)
        return JSONResponse(results_json(path, since, pairs))

    routes = [Route("/", page), Route("/dashboard.js", script), Route("/api/results", api)]
    return Starlette(routes=routes)


class _Server:
    def __init__(self, server, thread):
        self.server, self.thread = server, thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def start_server(path: str | Path, port: int, host: str = "127.0.0.1") -> _Server:
    """Serve the dashboard of ``path`` at http://host:port/ from a background thread; ``.stop()`` ends it."""
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError(
            "the dashboard needs the live extra: pip install 'xfit[live]' (starlette, uvicorn)"
        ) from error
    config = uvicorn.Config(make_app(path), host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        thread.join(timeout=0.05)
    return _Server(server, thread)
