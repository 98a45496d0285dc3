"""The ``GET /cluster`` page: one self-contained HTML document (no build step, no CDN).

The page carries the snapshot it was served with as an inline JSON document and renders it
with its own script on load (so the first paint needs no second request), then refreshes
itself from ``GET /cluster.json`` every ``REFRESH_SECONDS``. Each backend row is produced by
the script; ``data-source`` on the table says whether the rows came from the embedded snapshot
(``embedded``) or from a later fetch (``live``). Below the cards: two small SVG charts drawn
by the script from the snapshot's ``history`` (in-flight per backend, and prefix hits achieved
vs reachable, per interval over the last minutes) and the last decisions with their
explanations (``decisions``; see :class:`RoutingHistory`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from typing import Any

from clusterrouting import ReplicaCandidate, within_load_guard

__all__ = ["REFRESH_SECONDS", "RoutingHistory", "render_cluster_page"]

REFRESH_SECONDS = 2


class RoutingHistory:
    """The gateway's last routing decisions with their explanations, and per-interval
    samples for the page's charts.

    ``record(...)`` is called once per routed request with what the decision saw. It keeps
    the last ``decisions`` decisions (time, model, chain length, each candidate's in-flight
    count, last use and whether it was within the load guard, the preferred and pinned
    backends, the pick and the rule that made it: ``pinned``, ``affinity``,
    ``load_guard`` (the preferred backend was too busy) or ``least_loaded`` (no
    preference)), and per ``bucket_s`` interval over the last ``buckets`` intervals: the
    requests routed, those with a preferred backend (*reachable* hits: some backend held
    the prefix), those sent to it (*achieved*), and each backend's in-flight count at the
    interval's last decision. Memory is bounded by both counts. Not thread-safe: the
    gateway's event loop owns it.
    """

    def __init__(self, *, decisions: int = 20, bucket_s: float = 10.0, buckets: int = 30):
        self.bucket_s = bucket_s
        self._decisions: deque[dict[str, Any]] = deque(maxlen=decisions)
        self._buckets: deque[dict[str, Any]] = deque(maxlen=buckets)

    def record(
        self,
        *,
        now: float,
        model: str,
        chain_blocks: int,
        candidates: Sequence[ReplicaCandidate],
        preferred: str | None,
        pinned: str | None,
        picked: str,
        slack: int,
        in_flight: dict[str, int],
    ) -> None:
        """Record one decision (after the pick was reserved)."""
        least = min((c.in_flight for c in candidates), default=0)
        if pinned is not None and picked == pinned:
            rule = "pinned"
        elif preferred is None:
            rule = "least_loaded"
        elif picked == preferred:
            rule = "affinity"
        else:
            rule = "load_guard"
        self._decisions.append(
            {
                "time": now,
                "model": model,
                "chain_blocks": chain_blocks,
                "preferred": preferred,
                "pinned": pinned,
                "picked": picked,
                "rule": rule,
                "candidates": [
                    {
                        "node": c.node_id,
                        "in_flight": c.in_flight,
                        "last_used": c.last_used,
                        "within_load_guard": within_load_guard(c.in_flight, least, slack=slack),
                    }
                    for c in candidates
                ],
            }
        )
        start = now - now % self.bucket_s
        if not self._buckets or self._buckets[-1]["start"] != start:
            self._buckets.append(
                {"start": start, "requests": 0, "reachable": 0, "achieved": 0, "in_flight": {}}
            )
        b = self._buckets[-1]
        b["requests"] += 1
        if preferred is not None:
            b["reachable"] += 1
            if picked == preferred:
                b["achieved"] += 1
        b["in_flight"] = dict(in_flight)

    def to_json(self) -> dict[str, Any]:
        """``{"decisions": [...newest last], "history": {"bucket_s", "buckets": [...]}}``."""
        return {
            "decisions": list(self._decisions),
            "history": {
                "bucket_s": self.bucket_s,
                "buckets": [dict(b, in_flight=dict(b["in_flight"])) for b in self._buckets],
            },
        }


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
  .charts { display: flex; gap: 1.5rem; flex-wrap: wrap; margin: 1rem 0; }
  .chart { border: 1px solid #ddd; border-radius: .4rem; padding: .5rem .8rem; }
  .chart svg { display: block; }
  .legend span { margin-right: .8rem; }
  table.decisions td { font-size: 12px; }
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
<div class="charts">
  <div class="chart"><div>In flight per backend</div>
    <svg id="chart-inflight" width="420" height="140" data-points="0"></svg>
    <div id="legend-inflight" class="legend muted"></div></div>
  <div class="chart"><div>Prefix hits: achieved vs reachable</div>
    <svg id="chart-hits" width="420" height="140" data-points="0"></svg>
    <div class="legend muted"><span style="color:#bbb">&#9632; reachable</span>
      <span style="color:#2a9d55">&#9632; achieved</span></div></div>
</div>
<h2 style="font-size:1.05rem">Last decisions</h2>
<table id="decisions" class="decisions">
  <thead><tr><th>Time</th><th>Model</th><th>Blocks</th><th>Picked</th><th>Rule</th>
    <th>Preferred</th><th>Candidates (in flight, guard)</th></tr></thead>
  <tbody id="decision-rows"></tbody>
</table>
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
  renderCharts(snap);
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
const COLORS = ["#5b8def", "#e4572e", "#2a9d55", "#f3a712", "#8e44ad", "#17becf", "#7f7f7f"];
function svgEl(name, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const k in attrs) el.setAttribute(k, attrs[k]);
  return el;
}
function renderCharts(snap) {
  const buckets = (snap.history && snap.history.buckets) || [];
  const W = 420, H = 140, P = 18;
  const inflight = document.getElementById("chart-inflight");
  inflight.replaceChildren();
  const nodes = [];
  for (const b of buckets) for (const n in b.in_flight) if (!nodes.includes(n)) nodes.push(n);
  nodes.sort();
  let top = 1;
  for (const b of buckets) for (const n in b.in_flight) top = Math.max(top, b.in_flight[n]);
  const x = i => P + (buckets.length > 1 ? i * (W - 2 * P) / (buckets.length - 1) : 0);
  const y = v => H - P - v * (H - 2 * P) / top;
  inflight.appendChild(svgEl("line", {x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#ccc"}));
  const legend = document.getElementById("legend-inflight");
  legend.replaceChildren();
  nodes.forEach((n, k) => {
    const pts = buckets.map((b, i) => x(i) + "," + y(b.in_flight[n] || 0)).join(" ");
    const color = COLORS[k % COLORS.length];
    inflight.appendChild(svgEl("polyline", {points: pts, fill: "none", stroke: color,
      "stroke-width": 2, "class": "series", "data-node": n}));
    const tag = document.createElement("span");
    tag.style.color = color;
    tag.textContent = "\u25a0 " + n;
    legend.appendChild(tag);
  });
  inflight.dataset.points = String(buckets.length);
  const hits = document.getElementById("chart-hits");
  hits.replaceChildren();
  let most = 1;
  for (const b of buckets) most = Math.max(most, b.requests);
  const bw = buckets.length ? (W - 2 * P) / buckets.length : 0;
  buckets.forEach((b, i) => {
    const h1 = b.reachable * (H - 2 * P) / most, h2 = b.achieved * (H - 2 * P) / most;
    hits.appendChild(svgEl("rect", {x: P + i * bw, y: H - P - h1, width: Math.max(1, bw - 2),
      height: h1, fill: "#bbb", "class": "reachable"}));
    hits.appendChild(svgEl("rect", {x: P + i * bw, y: H - P - h2, width: Math.max(1, bw - 2),
      height: h2, fill: "#2a9d55", "class": "achieved"}));
  });
  hits.dataset.points = String(buckets.length);
  const rows = document.getElementById("decision-rows");
  rows.replaceChildren();
  for (const d of (snap.decisions || []).slice().reverse()) {
    const tr = document.createElement("tr");
    tr.className = "decision";
    tr.dataset.rule = d.rule;
    cell(tr, new Date(d.time * 1000).toLocaleTimeString());
    cell(tr, d.model);
    cell(tr, String(d.chain_blocks), "num");
    cell(tr, d.picked);
    cell(tr, d.rule);
    cell(tr, d.preferred === null ? "-" : d.preferred);
    cell(tr, d.candidates.map(c => c.node + " (" + c.in_flight +
      (c.within_load_guard ? "" : ", over guard") + ")").join(", "));
    rows.appendChild(tr);
  }
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
