"""The ``GET /cluster`` page: one self-contained HTML document (no build step, no CDN).

The page carries the snapshot it was served with as an inline JSON document and renders it
with its own script on load (so the first paint needs no second request), then refreshes
itself from ``GET /cluster.json`` every ``REFRESH_SECONDS``. Each backend row is produced by
the script; ``data-source`` on the table says whether the rows came from the embedded snapshot
(``embedded``) or from a later fetch (``live``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["REFRESH_SECONDS", "render_cluster_page"]

REFRESH_SECONDS = 2

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Cluster · __GATEWAY__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem 0; }
  .muted { color: #777; }
  table { border-collapse: collapse; margin: .8rem 0 1.2rem 0; min-width: 60rem; }
  th, td { border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left; }
  th { background: #f4f4f6; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .state { font-weight: 600; padding: .05rem .45rem; border-radius: .6rem; }
  .online { background: #d9f5dd; color: #1b6b2a; }
  .offline { background: #eee; color: #666; }
  .failed { background: #fde0e0; color: #a11; }
  .bar { display: inline-block; height: .6rem; background: #5b8def; vertical-align: middle; }
  .cards { display: flex; gap: 1rem; flex-wrap: wrap; }
  .card { border: 1px solid #ddd; border-radius: .4rem; padding: .6rem .9rem; min-width: 12rem; }
  .card b { display: block; font-size: 1.2rem; }
  code { background: #f4f4f6; padding: 0 .25rem; border-radius: .2rem; }
</style>
</head>
<body>
<h1>Cluster · <span id="gateway"></span></h1>
<div class="muted">Refreshes every __REFRESH__ s from <code>/cluster.json</code>.
Last update: <span id="updated">never</span> <span id="error"></span></div>
<table id="backends" data-source="none">
  <thead><tr>
    <th>Backend</th><th>State</th><th>Address</th><th>In flight</th><th>Free VRAM</th>
    <th>Models</th><th>Affinity share</th><th>Served</th><th>Errors / failures</th>
    <th>Last seen</th>
  </tr></thead>
  <tbody id="backend-rows"></tbody>
</table>
<div class="cards">
  <div class="card">Index entries<b id="index-entries">–</b><span id="index-models"
    class="muted"></span></div>
  <div class="card">Pressure (forced disturbs)<b id="pressure">–</b><span id="pressure-detail"
    class="muted"></span></div>
  <div class="card">Sync<b id="sync-state">–</b><span id="sync-detail" class="muted"></span></div>
  <div class="card">Requests<b id="requests">–</b><span id="rejected" class="muted"></span></div>
</div>
<script id="initial-snapshot" type="application/json">__SNAPSHOT__</script>
<script>
"use strict";
function fmtBytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function render(snap, source) {
  document.getElementById("gateway").textContent = snap.gateway;
  const body = document.getElementById("backend-rows");
  body.replaceChildren();
  for (const b of snap.backends) {
    const tr = document.createElement("tr");
    tr.className = "backend";
    tr.dataset.node = b.id;
    cell(tr, b.name && b.name !== b.id ? b.name + " (" + b.id + ")" : b.id);
    const state = b.failed ? "failed" : (b.online ? "online" : "offline");
    const st = cell(tr, "");
    const badge = document.createElement("span");
    badge.className = "state " + state;
    badge.textContent = state;
    if (b.failed) badge.title = b.failure_reason;
    st.appendChild(badge);
    cell(tr, b.address);
    cell(tr, String(b.in_flight), "num");
    cell(tr, fmtBytes(b.available_vram), "num");
    cell(tr, b.models.length ? b.models.join(", ") : "(any)");
    const share = cell(tr, "");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.round(b.affinity_share * 80) + "px";
    share.appendChild(bar);
    share.appendChild(document.createTextNode(" " + (b.affinity_share * 100).toFixed(1) + " %"));
    cell(tr, String(b.served), "num");
    cell(tr, b.errors + " / " + b.failures, "num");
    cell(tr, b.last_seen_age === null ? "never" : b.last_seen_age.toFixed(1) + " s ago");
    body.appendChild(tr);
  }
  document.getElementById("backends").dataset.source = source;
  document.getElementById("index-entries").textContent = String(snap.index.entries);
  document.getElementById("index-models").textContent = snap.index.models.join(", ");
  const by = snap.pressure.by_model;
  let total = 0;
  for (const m in by) total += by[m];
  document.getElementById("pressure").textContent = String(total);
  document.getElementById("pressure-detail").textContent =
    Object.keys(by).map(m => m + ": " + by[m]).join(", ") +
    " (last " + snap.pressure.window + " s; scale-up at " + snap.pressure.scale_threshold + ")";
  document.getElementById("sync-state").textContent = snap.sync.enabled ? "on" : "off";
  document.getElementById("sync-detail").textContent =
    snap.sync.stats ? JSON.stringify(snap.sync.stats) : "";
  document.getElementById("requests").textContent = String(snap.requests);
  document.getElementById("rejected").textContent =
    "413: " + snap.rejected["413"] + ", 503: " + snap.rejected["503"];
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const r = await fetch("cluster.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json(), "live");
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "(refresh failed: " + e.message + ")";
  }
}
render(JSON.parse(document.getElementById("initial-snapshot").textContent), "embedded");
refresh();
setInterval(refresh, __REFRESH__ * 1000);
</script>
</body>
</html>
"""


def render_cluster_page(snapshot: dict[str, Any]) -> str:
    """The page, with ``snapshot`` embedded (escaped so it cannot close its script tag)."""
    embedded = (
        json.dumps(snapshot).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    gateway = (
        str(snapshot.get("gateway", ""))
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )
    return (
        _TEMPLATE.replace("__SNAPSHOT__", embedded)
        .replace("__GATEWAY__", gateway)
        .replace("__REFRESH__", str(REFRESH_SECONDS))
    )
