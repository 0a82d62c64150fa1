"""A small browsing page next to Tiled's web UI: find a run, see its map and a spot's CV.

Tiled's own UI lists runs by bare uid, shows event tables empty (upstream bluesky/tiled#1378) and draws a stack of
waveforms as a grey strip.  This page, served by the same Tiled server, shows

* ``/custom/espt/`` -- the runs, newest first, with plan, technique, sample, time, status and the one-line summary
  (derived products are not runs: they are listed on their run's page);
* ``/custom/espt/run/<uid>`` -- the run's metadata, its map as an image on µm axes with a colour bar (any scalar of
  the map, chosen by ``?var=``), the waveform (CV) of one spot (``?spot=``, marked on the map), its streams with
  units and shapes, and its products drawn as images.

It is a FastAPI router that :func:`espt_bluesky.storage.server.tiled_config` lists under Tiled's ``routers``, so
both ``LocalCatalog.in_process`` and ``espt serve`` mount it (Tiled mounts routers under ``/custom``).  It reads
through Tiled's HTTP API with the caller's own credentials (``?api_key=`` once -- Tiled then keeps it in a cookie --
or the ``Authorization`` header), so it shows exactly what the caller may read.

Example
-------
>>> print(page_url(catalog))  # open it in a browser
"""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Mapping
from itertools import islice
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from tiled.server.authentication import get_api_key, move_api_key

from ..summary import local_time, run_summary, sample_name

router = APIRouter(prefix="/espt")
#: Where Tiled mounts the page (its ``routers`` go under ``/custom``).
PATH = "/custom/espt/"
RUN_SPEC = "BlueskyRun"
MAX_RUNS = 200

_clients: dict[tuple[str, str | None], Any] = {}
_lock = threading.Lock()


def page_url(catalog: Any) -> str:
    """The run list of a :class:`~espt_bluesky.storage.LocalCatalog`, with its key (opening it once sets a
    cookie)."""
    return f"{catalog.base_url}{PATH}?api_key={quote_plus(catalog.api_key)}"


# ------------------------------------------------------------------------------------------------ reading
def _client(request: Request, api_key: str | None):
    """A Tiled client of this very server with the caller's key (cached per key)."""
    from tiled.client import from_uri

    base = str(request.base_url).rstrip("/")
    with _lock:
        c = _clients.get((base, api_key))
        if c is None:
            try:
                c = from_uri(base, api_key=api_key)
            except Exception as exc:  # no or a wrong key: say how to get in
                raise HTTPException(401, detail=f"Tiled refused access ({exc}); open this page with "
                                                f"?api_key=<key> (see `espt serve` or the catalog's api_key)")
            _clients[(base, api_key)] = c
        return c


def _run(client, uid: str):
    try:
        run = client[uid]
    except KeyError:
        raise HTTPException(404, detail=f"no run {uid!r}")
    if RUN_SPEC not in [s.name for s in run.specs]:
        raise HTTPException(404, detail=f"{uid!r} is not a run")
    return run


def _prefix(request: Request) -> str:
    """The page's own mount point (``/custom/espt`` or Tiled's back-compat ``/api/v1/espt``)."""
    path = request.url.path
    return path[: path.index("/espt") + len("/espt")]


def _waveform_keys(run) -> tuple[str | None, str | None, str | None]:
    """(stream, potential key, current key) of the first stream with a potentiostat waveform."""
    streams = list(run)
    for name in ["primary"] + [s for s in streams if s != "primary"]:
        if name not in streams:
            continue
        keys = run[name].metadata.get("data_keys", {})
        cur = next((k for k in keys if k.endswith("_wf_current")), None)
        pot = next((k for k in keys if k.endswith("_wf_potential")), None)
        if cur and pot:
            return name, pot, cur
    return None, None, None


def _map_dataset(run):
    from .maps import read_map

    try:
        return read_map(run, waveforms=False, valid_only=False)
    except Exception:  # not a map run (approach, count ...): no map, the rest of the page still shows
        return None


def _scalar_vars(ds) -> list[str]:
    return [k for k, v in ds.data_vars.items() if v.dtype.kind in "fiu" and np.isfinite(v.values).any()]


def _default_var(run, ds) -> str | None:
    names = _scalar_vars(ds)
    if not names:
        return None
    start = run.metadata["start"]
    if start.get("topography_key") in names:
        return start["topography_key"]
    hints = (run["primary"].metadata.get("hints") or {}) if "primary" in run else {}
    for obj in hints.values():
        for f in (obj or {}).get("fields", []):
            if f in names:
                return f
    return names[0]


def _spot_position(ds, spot: int) -> tuple[float, float] | None:
    seq = ds["seq_num"].values
    hit = np.argwhere(seq == spot + 1)
    if hit.size == 0:
        return None
    idx = tuple(hit[0])
    if "x_measured" in ds.coords:
        return float(ds["x_measured"].values[idx]), float(ds["y_measured"].values[idx])
    return float(ds["x"].values[idx]), float(ds["y"].values[idx])


def _png(fig) -> Response:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------------------ html
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;
vertical-align:top}th{background:#f3f3f3}tr.run:hover{background:#eef5ff}
.status-success{color:#176f2c}.status-fail,.status-abort{color:#b00020}
.muted{color:#777;font-size:.9em}img{max-width:100%;border:1px solid #ddd}
.figs{display:flex;flex-wrap:wrap;gap:1.5em}code{font-size:.9em}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _technique(start: Mapping) -> str:
    return " ".join(str(v) for v in (start.get("technique"), start.get("mode")) if v)


@router.get("/", response_class=HTMLResponse)
def run_list(request: Request, api_key: str | None = Depends(get_api_key), _=Depends(move_api_key),
             limit: int = 100):
    """The runs, newest first: plan, technique, sample, time, status, summary."""
    client = _client(request, api_key)
    pre = _prefix(request)
    rows = []
    n = 0
    limit = max(1, min(int(limit), MAX_RUNS))
    for uid, run in islice(client.sort(("start.time", -1)).items(), limit + 1):
        if RUN_SPEC not in [s.name for s in run.specs] or n >= limit:
            continue  # the products container and anything else that is not a run
        md = run.metadata
        start, stop = md.get("start") or {}, md.get("stop") or {}
        status = stop.get("exit_status") or "running"
        events = ", ".join(f"{k} {v}" for k, v in (stop.get("num_events") or {}).items())
        rows.append(
            f"<tr class='run' data-uid='{_e(uid)}'>"
            f"<td class='plan'><a href='{pre}/run/{quote(uid)}'>{_e(start.get('plan_name') or 'run')}</a></td>"
            f"<td class='technique'>{_e(_technique(start))}</td><td class='sample'>{_e(sample_name(start))}</td>"
            f"<td class='time'>{_e(local_time(start.get('time')))}</td>"
            f"<td class='status status-{_e(status)}'>{_e(status)}</td>"
            f"<td class='summary'>{_e(run_summary(start))}"
            f"<div class='muted'>{_e(uid[:8])} {_e(events)}</div></td></tr>")
        n += 1
    table = ("<table id='runs'><tr><th>plan</th><th>technique</th><th>sample</th><th>time</th><th>status</th>"
             "<th>summary</th></tr>" + "".join(rows) + "</table>") if rows else "<p>No runs yet.</p>"
    return _page("espt runs", f"<h1>Runs</h1><p class='muted'>{n} newest runs. Tiled's own view: "
                              f"<a href='/ui/browse/'>/ui/browse/</a></p>{table}")


@router.get("/run/{uid}", response_class=HTMLResponse)
def run_page(request: Request, uid: str, var: str | None = None, spot: int = 0,
             api_key: str | None = Depends(get_api_key), _=Depends(move_api_key)):
    """One run: metadata, its map (``var``), the CV of ``spot``, streams and products."""
    client = _client(request, api_key)
    run = _run(client, uid)
    pre = _prefix(request)
    md = run.metadata
    start, stop = md.get("start") or {}, md.get("stop") or {}
    parts = [f"<p><a href='{pre}/'>← all runs</a> · <a href='/ui/browse/{quote(uid)}/'>this run in Tiled's UI</a>"
             f"</p><h1>{_e(start.get('plan_name') or 'run')}</h1>"
             f"<p id='summary'>{_e(run_summary(start, stop))}</p>"]
    probe = start.get("probe") or {}
    rows = [("technique", _technique(start)), ("sample", sample_name(start)),
            ("sample description", (start.get("sample") or {}).get("description")
             if isinstance(start.get("sample"), Mapping) else None),
            ("probe", ", ".join(f"{k}={v}" for k, v in probe.items()) if isinstance(probe, Mapping) else probe),
            ("electrolyte", start.get("electrolyte")),
            ("mediator", (start.get("mediator") or {}).get("name") if isinstance(start.get("mediator"), Mapping)
             else start.get("mediator")),
            ("reference electrode", start.get("reference_electrode")), ("time", local_time(start.get("time"))),
            ("status", stop.get("exit_status") or "running"), ("reason", stop.get("reason")),
            ("events", ", ".join(f"{k}: {v}" for k, v in (stop.get("num_events") or {}).items())),
            ("uid", uid)]
    parts.append("<table id='meta'>" + "".join(f"<tr><th>{_e(k)}</th><td class='meta-{_e(k.replace(' ', '-'))}'>"
                                               f"{_e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
                 + "</table>")
    figs = []
    ds = _map_dataset(run)
    if ds is not None:
        names = _scalar_vars(ds)
        var = var if var in names else _default_var(run, ds)
        if var is not None:
            q = urlencode({"var": var, "spot": spot})
            links = " · ".join(f"<a href='{pre}/run/{quote(uid)}?{urlencode({'var': k, 'spot': spot})}'>{_e(k)}</a>"
                               if k != var else f"<b>{_e(k)}</b>" for k in names)
            figs.append(f"<div><h2>Map: {_e(var)}</h2><img id='map' alt='map of {_e(var)}' "
                        f"src='{pre}/run/{quote(uid)}/map.png?{q}'><p class='muted'>{links}</p></div>")
    wf_stream, pot, cur = _waveform_keys(run)
    if wf_stream is not None:
        n = int(run[wf_stream][cur].shape[0])
        spot = min(max(int(spot), 0), max(n - 1, 0))
        nav = " ".join(f"<a href='{pre}/run/{quote(uid)}?{urlencode({'var': var or '', 'spot': k})}'>{label}</a>"
                       for k, label in ((spot - 1, "← previous"), (spot + 1, "next →")) if 0 <= k < n)
        figs.append(f"<div><h2>Waveform of spot {spot} ({_e(wf_stream)} stream, {n} in all)</h2>"
                    f"<img id='cv' alt='waveform of spot {spot}' src='{pre}/run/{quote(uid)}/cv.png?spot={spot}'>"
                    f"<p>{nav}</p></div>")
    if figs:
        parts.append("<div class='figs'>" + "".join(figs) + "</div>")
    parts.append(_streams_html(run))
    parts.append(_products_html(client, uid, pre))
    return _page(f"run {uid[:8]}", "".join(parts))


def _streams_html(run) -> str:
    out = ["<h2>Streams</h2><table id='streams'><tr><th>stream</th><th>key</th><th>shape</th><th>dims</th>"
           "<th>units</th><th>stored</th></tr>"]
    for name in run:
        for k, dk in (run[name].metadata.get("data_keys") or {}).items():
            out.append(f"<tr><td>{_e(name)}</td><td><code>{_e(k)}</code></td><td>{_e(dk.get('shape'))}</td>"
                       f"<td>{_e(dk.get('dims') or '')}</td><td>{_e(dk.get('units') or '')}</td>"
                       f"<td>{'external (HDF5)' if dk.get('external') else 'event'}</td></tr>")
    return "".join(out) + "</table>"


def _products(client, uid: str):
    from .maps import PRODUCTS

    if PRODUCTS not in client or uid not in client[PRODUCTS]:
        return {}
    return {k: v for k, v in client[PRODUCTS][uid].items() if hasattr(v, "items")}  # Dataset products


def _products_html(client, uid: str, pre: str) -> str:
    prods = _products(client, uid)
    if not prods:
        return ""
    out = ["<h2>Products</h2><div class='figs'>"]
    for name, node in prods.items():
        images = [k for k, a in node.items() if (a.metadata or {}).get("image")]
        out.append(f"<div class='product' data-name='{_e(name)}'><h3>{_e(name)}</h3>"
                   f"<p class='muted'>{_e((node.metadata or {}).get('analysis') or '')}</p>")
        out.extend(f"<img class='product-map' alt='{_e(name)} {_e(k)}' "
                   f"src='{pre}/run/{quote(uid)}/product/{quote(name)}/{quote(k)}.png'>" for k in images)
        out.append("</div>")
    return "".join(out) + "</div>"


# ------------------------------------------------------------------------------------------------ images
@router.get("/run/{uid}/map.png")
def map_png(request: Request, uid: str, var: str | None = None, spot: int | None = None,
            api_key: str | None = Depends(get_api_key)):
    """The run's map of ``var`` on µm axes with a colour bar (the ``spot`` marked)."""
    from ..analysis.figures import map_figure

    run = _run(_client(request, api_key), uid)
    ds = _map_dataset(run)
    if ds is None:
        raise HTTPException(404, detail=f"run {uid} is not a map")
    var = var if var in _scalar_vars(ds) else _default_var(run, ds)
    if var is None:
        raise HTTPException(404, detail=f"run {uid} has no scalar to map")
    da = ds[var]
    x, y = (ds["x"].values, ds["y"].values)
    mark = _spot_position(ds, spot) if spot is not None else None
    start = run.metadata["start"]
    fig = map_figure(x, y, da.values, label=var, units=str(da.attrs.get("units") or ""), mark=mark,
                     title=" · ".join(str(v) for v in (start.get("plan_name"), sample_name(start)) if v))
    return _png(fig)


@router.get("/run/{uid}/cv.png")
def cv_png(request: Request, uid: str, spot: int = 0, api_key: str | None = Depends(get_api_key)):
    """The waveform of one spot (event ``spot`` of the first stream holding waveforms): current vs potential."""
    from ..analysis.figures import waveform_figure

    run = _run(_client(request, api_key), uid)
    stream, pot, cur = _waveform_keys(run)
    if stream is None:
        raise HTTPException(404, detail=f"run {uid} has no waveforms")
    node = run[stream]
    n = int(node[cur].shape[0])
    if not 0 <= spot < n:
        raise HTTPException(404, detail=f"spot={spot}: the {stream} stream has {n} waveforms")
    keys = node.metadata.get("data_keys", {})
    e, i = np.asarray(node[pot][spot]), np.asarray(node[cur][spot])
    fig = waveform_figure(e, i, xlabel=f"E ({keys.get(pot, {}).get('units') or 'V'})",
                          ylabel=f"i ({keys.get(cur, {}).get('units') or 'A'})",
                          title=f"{run.metadata['start'].get('plan_name', 'run')}: {stream} event {spot + 1}")
    return _png(fig)


@router.get("/run/{uid}/product/{name}/{var}.png")
def product_png(request: Request, uid: str, name: str, var: str, api_key: str | None = Depends(get_api_key)):
    """A 2-D array of a product drawn on its physical axes."""
    from ..analysis.figures import map_figure

    client = _client(request, api_key)
    prods = _products(client, uid)
    if name not in prods or var not in prods[name]:
        raise HTTPException(404, detail=f"run {uid} has no product array {name}/{var}")
    node = prods[name]
    arr = node[var]
    amd = arr.metadata or {}
    if not amd.get("image"):
        raise HTTPException(404, detail=f"{name}/{var} is not a 2-D map")
    dy, dx = amd["dims"]
    x = np.asarray(node[dx].read()) if dx in node else np.arange(arr.shape[1])
    y = np.asarray(node[dy].read()) if dy in node else np.arange(arr.shape[0])
    fig = map_figure(x, y, np.asarray(arr.read(), float), label=f"{name}: {var}",
                     units=str(amd.get("units") or ""))
    return _png(fig)
