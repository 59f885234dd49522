// crossfade dashboard: logs in with a form (a session cookie, never the token), polls
// /dashboard/data, and renders per site the pools side by side (blue vs green during a
// canary) with their release, asset hash and servers, the routes with traffic, charts with
// the release timeline's events as markers, a before/after comparison and a focus view of
// one route or pool. Every table cell and chart point is clickable: it opens the focus view
// of that site/route/pool around that moment.
"use strict";

const fmt = {
  rate: (v) => v.toFixed(2),
  pct: (v) => (v * 100).toFixed(1) + "%",
  ms: (v) => v.toFixed(1),
  n: (v) => String(v),
  bytes: (v) => v >= 1 << 30 ? (v / (1 << 30)).toFixed(2) + " GiB" : v >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + " MiB" : (v / 1024).toFixed(0) + " KiB",
};
const COLUMNS = [
  ["requests", "requests", fmt.n],
  ["rate_per_second", "req/s", fmt.rate],
  ["hit_ratio", "hit ratio", fmt.pct],
  ["origin_error_rate", "pool errors", fmt.pct],
  ["edge_error_rate", "edge 5xx", fmt.pct],
  ["p50_ms", "p50 ms", fmt.ms],
  ["p95_ms", "p95 ms", fmt.ms],
  ["p99_ms", "p99 ms", fmt.ms],
  ["origin_ms", "origin ms", fmt.ms],
];
// Some of COLUMNS, in their order.
function columns(keys) {
  return COLUMNS.filter(([key]) => keys.includes(key));
}
const CHARTS = [
  ["rate", "requests", "req/s", false],
  ["hit", "hit ratio", "%", true],
  ["p99", "p99 response time", "ms", false],
  ["errors", "pool errors (5xx or no answer from its servers)", "%", true],
  ["edge", "edge 5xx, whole site (maintenance, no server, shed)", "%", true],
];
const charts = {};
let compareAt = null;
let focus = null;
let lastEvents = [];

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
  return e;
}

function when(ms) {
  return new Date(ms).toLocaleTimeString();
}

function setFocus(site, route, pool, at) {
  focus = { site, route, pool };
  if (at) compareAt = Math.round(at);
  refresh();
}

// A table of summaries; `extra` columns (text) come before the numbers.
function table(rows, label, extra) {
  const t = el("table");
  const head = el("tr");
  head.appendChild(el("th", label));
  for (const [title] of extra) head.appendChild(el("th", title));
  for (const [, title] of COLUMNS) head.appendChild(el("th", title));
  t.appendChild(head);
  for (const row of rows) {
    const tr = el("tr");
    tr.appendChild(el("td", row.label, { class: "pool-" + row.pool }));
    for (const [, get] of extra) {
      const v = get(row);
      const td = el("td", v.text, { class: "text " + (v.cls || "") });
      tr.appendChild(td);
    }
    for (const [key, , f] of COLUMNS) {
      const td = el("td", f(row.summary[key]), Object.assign({ "data-metric": key }, row.attrs));
      td.addEventListener("click", () => setFocus(row.attrs["data-site"], row.route, row.pool === "all" ? null : row.pool));
      tr.appendChild(td);
    }
    t.appendChild(tr);
  }
  return t;
}

// Markers: one per release event within the chart's time range, the event on hover. Placed
// when uPlot draws, so they follow the scale it just computed (setData commits later).
function placeMarkers(u) {
  u.over.querySelectorAll(".marker").forEach((m) => m.remove());
  const xs = u.data[0];
  if (!xs || xs.length < 2) return;
  for (const e of u.crossfadeEvents || []) {
    const t = e.at_ms / 1000;
    if (t < xs[0] || t > xs[xs.length - 1]) continue;
    u.over.appendChild(el("div", null, {
      class: "marker", "data-kind": e.kind,
      title: `${when(e.at_ms)} ${e.node} · ${e.by}: ${e.what}`,
      style: `left:${u.valToPos(t, "x")}px`,
    }));
  }
}

function chart(id, title, unit, percent, series, container, events) {
  const data = [series.times].concat(series.lines.map((l) => l.values));
  const opts = {
    title: title + " (" + unit + ")", width: 440, height: 200,
    scales: { y: { range: (u, min, max) => [0, percent ? Math.max(max, 1) : Math.max(max, unit === "ms" ? 1 : 0.1)] } },
    axes: [{}, { label: unit, values: (u, vals) => vals.map((v) => v + (unit === "%" ? "%" : "")) }],
    series: [{}].concat(series.lines.map((l) => ({
      label: l.label, stroke: l.label.includes("green") ? "#1d8a3a" : l.label.includes("blue") ? "#1f5fbf" : "#555",
    }))),
    hooks: { draw: [placeMarkers] },
  };
  let u = charts[id];
  if (u && u.series.length === opts.series.length && u.root.isConnected) {
    u.crossfadeEvents = events;
    u.setData(data);
  } else {
    if (u) u.destroy();
    const div = el("div", null, { class: "chart", "data-chart": id });
    container.appendChild(div);
    u = charts[id] = new uPlot(opts, data, div);
    u.crossfadeEvents = events;
    placeMarkers(u);
    u.over.addEventListener("click", () => {
      const idx = u.cursor.idx;
      if (idx === null || idx === undefined) return;
      const [site, , route, pool] = id.split("|");
      setFocus(site, route || null, pool || null, u.data[0][idx]);
    });
  }
  return u;
}

function poolRows(site) {
  const rows = site.pools.map((p) => ({
    label: p.pool, pool: p.pool, summary: p.summary, describe: p,
    attrs: { "data-site": site.site, "data-pool": p.pool },
  }));
  rows.push({ label: "all", pool: "all", summary: site.summary, describe: null, attrs: { "data-site": site.site, "data-pool": "all" } });
  return rows;
}

const POOL_COLUMNS = [
  ["role", (r) => ({ text: r.describe ? r.describe.role : "" })],
  ["release", (r) => ({ text: r.describe ? r.describe.release || "-" : "" })],
  ["asset hash", (r) => ({ text: r.describe ? r.describe.asset_hash || "-" : "" })],
  ["servers", (r) => {
    if (!r.describe) return { text: "" };
    const down = r.describe.servers.filter((s) => !s.healthy).length;
    const text = r.describe.servers.map((s) => `${s.addr} ${s.healthy ? "up" : "DOWN"}${s.inflight ? " (" + s.inflight + " in flight)" : ""}`).join(", ");
    return { text, cls: down ? "down" : "" };
  }],
];

// Routes of all pools together: requests and rates added, ratios weighted by requests, the
// worst p99.
function byRoute(routes) {
  const out = new Map();
  for (const r of routes || []) {
    const a = out.get(r.route) || { requests: 0, rate_per_second: 0, hit: 0, errors: 0, p99_ms: 0 };
    const s = r.summary;
    a.requests += s.requests;
    a.rate_per_second += s.rate_per_second;
    a.hit += s.hit_ratio * s.requests;
    a.errors += s.origin_error_rate * s.requests;
    a.p99_ms = Math.max(a.p99_ms, s.p99_ms);
    out.set(r.route, a);
  }
  for (const a of out.values()) {
    a.hit_ratio = a.requests ? a.hit / a.requests : 0;
    a.origin_error_rate = a.requests ? a.errors / a.requests : 0;
  }
  return out;
}

// The environments table's columns, per environment.
const ENV_COLUMNS = columns(["rate_per_second", "hit_ratio", "origin_error_rate", "p99_ms"]);

// This edge beside the other environments (fetched by the admin server), route by route.
function environmentsTable(site, environments) {
  const envs = [{ name: "this edge", ok: true, site }].concat(environments.map((e) => ({
    name: e.name, ok: e.ok, error: e.error, site: e.ok ? e.sites.find((x) => x.site === site.site) : null,
  })));
  const t = el("table", null, { class: "environments", "data-site": site.site });
  const head = el("tr");
  head.appendChild(el("th", "route"));
  for (const e of envs) {
    const th = el("th", e.name + (e.ok ? (e.site ? "" : " (no such site)") : " (unavailable: " + e.error + ")"), { colspan: ENV_COLUMNS.length });
    head.appendChild(th);
  }
  t.appendChild(head);
  const sub = el("tr");
  sub.appendChild(el("th", ""));
  for (let i = 0; i < envs.length; i++) for (const [, title] of ENV_COLUMNS) sub.appendChild(el("th", title));
  t.appendChild(sub);
  const routes = envs.map((e) => byRoute(e.site ? e.site.routes : []));
  const names = [...new Set(routes.flatMap((m) => [...m.keys()]))].sort();
  const rows = [["all", envs.map((e) => (e.site ? e.site.summary : null))]]
    .concat(names.map((n) => [n, routes.map((m) => m.get(n) || null)]));
  for (const [name, values] of rows) {
    const tr = el("tr");
    tr.appendChild(el("td", name));
    values.forEach((v, i) => {
      for (const [key, , f] of ENV_COLUMNS) {
        tr.appendChild(el("td", v ? f(v[key]) : "–", { "data-env": envs[i].name, "data-route": name, "data-key": key }));
      }
    });
    t.appendChild(tr);
  }
  return t;
}

function siteEvents(events, site) {
  return events.filter((e) => !e.site || e.site === site);
}

function renderSite(root, site, events, environments) {
  let section = document.getElementById("site-" + site.site);
  if (!section) {
    section = el("section", null, { id: "site-" + site.site });
    section.appendChild(el("h2"));
    section.appendChild(el("div", null, { class: "tables" }));
    section.appendChild(el("div", null, { class: "focus hidden" }));
    section.appendChild(el("div", null, { class: "charts main" }));
    root.appendChild(section);
  }
  const state = site.state || {};
  const canary = state.canary ? ` — canary ${state.canary.pool} ${state.canary.percent}%` : "";
  const m = state.maintenance || {};
  const maint = m.site ? " — MAINTENANCE" : (m.routes && m.routes.length ? ` — MAINTENANCE (${m.routes.join(", ")})` : "");
  section.querySelector("h2").textContent = `${site.site}: active ${state.active}${canary}${maint}`;
  const tables = section.querySelector(".tables");
  tables.replaceChildren();
  tables.appendChild(table(poolRows(site), "pool", POOL_COLUMNS));
  if (site.compare) {
    tables.appendChild(el("h3", "before / after " + new Date(site.compare.at * 1000).toLocaleString()));
    const rows = [];
    for (const p of site.compare.pools) {
      rows.push({ label: p.pool + " before", pool: p.pool, summary: p.before, attrs: { "data-site": site.site, "data-compare": p.pool + " before" } });
      rows.push({ label: p.pool + " after", pool: p.pool, summary: p.after, attrs: { "data-site": site.site, "data-compare": p.pool + " after" } });
    }
    tables.appendChild(table(rows, "pool", []));
  }
  if (site.routes.length) {
    tables.appendChild(table(site.routes.map((r) => ({
      label: r.route + " · " + r.pool, route: r.route, pool: r.pool, summary: r.summary,
      attrs: { "data-site": site.site, "data-route": r.route, "data-pool": r.pool },
    })), "route · pool (with traffic)", []));
  }
  if (environments.length) {
    tables.appendChild(el("h3", "beside the other environments (last " + document.getElementById("window").value + " s)"));
    tables.appendChild(environmentsTable(site, environments));
  }
  const box = section.querySelector(".focus");
  const own = siteEvents(events, site.site);
  if (site.focus) {
    box.classList.remove("hidden");
    box.replaceChildren(el("h3", "focus: " + site.site + " · " + site.focus.label), el("button", "close"));
    box.querySelector("button").addEventListener("click", () => { focus = null; refresh(); });
    box.appendChild(table([{ label: site.focus.label, pool: site.focus.pool, route: site.focus.route, summary: site.focus.summary, attrs: { "data-site": site.site, "data-focus": "1" } }], "series", []));
    const c = el("div", null, { class: "charts" });
    box.appendChild(c);
    for (const [key, title, unit, pct] of CHARTS) {
      chart(`${site.site}|focus-${key}|${site.focus.route || ""}|${site.focus.pool || ""}`, title, unit, pct, site.focus.history[key], c, own);
    }
  } else {
    box.classList.add("hidden");
    box.replaceChildren();
  }
  const c = section.querySelector(".charts.main");
  for (const [key, title, unit, pct] of CHARTS) {
    chart(`${site.site}|${key}||`, key === "edge" ? title : title + " by pool", unit, pct, site.history[key], c, own);
  }
}

function renderList(id, events, empty) {
  const ul = document.getElementById(id);
  ul.replaceChildren();
  if (!events.length) ul.appendChild(el("li", empty));
  for (const e of events) {
    ul.appendChild(el("li", `${when(e.at_ms)} · ${e.node} · ${e.by} · ${e.site || "-"}${e.route ? "/" + e.route : ""}: ${e.what}`, { "data-kind": e.kind }));
  }
}

// The fleet table's columns: those of the pool tables a node's summary carries.
const FLEET_COLUMNS = columns(["requests", "rate_per_second", "hit_ratio", "origin_error_rate", "edge_error_rate", "p99_ms"]);

// With [fleet]: a row per node (its last minute, as it published it) and the fleet's total.
function renderFleet(fleet) {
  const section = document.getElementById("fleet");
  if (!fleet) { section.classList.add("hidden"); return; }
  section.classList.remove("hidden");
  const t = document.getElementById("fleet-table");
  t.replaceChildren();
  const head = el("tr");
  head.appendChild(el("th", "node"));
  for (const [, title] of FLEET_COLUMNS) head.appendChild(el("th", title));
  head.appendChild(el("th", "cache objects"));
  t.appendChild(head);
  const rows = fleet.nodes.map((n) => [n.node, n.all, n.cache.objects]);
  rows.push(["fleet total (p99: the worst node's)", fleet.total, ""]);
  for (const [name, s, objects] of rows) {
    const tr = el("tr", null, { "data-node": name });
    tr.appendChild(el("td", name));
    for (const [key, , f] of FLEET_COLUMNS) tr.appendChild(el("td", f(s[key]), { "data-metric": key, "data-node": name }));
    tr.appendChild(el("td", String(objects)));
    t.appendChild(tr);
  }
}

function showLogin(message) {
  document.getElementById("board").classList.add("hidden");
  document.getElementById("login").classList.remove("hidden");
  document.getElementById("login-error").textContent = message || "";
}

async function refresh() {
  const windowSecs = document.getElementById("window").value;
  const q = new URLSearchParams({ window: windowSecs });
  if (compareAt) q.set("compare_at", compareAt);
  if (focus) {
    q.set("site", focus.site);
    if (focus.route) q.set("route", focus.route);
    if (focus.pool) q.set("pool", focus.pool);
  }
  const resp = await fetch("/dashboard/data?" + q, { credentials: "same-origin" });
  if (resp.status === 401) return showLogin();
  if (!resp.ok) {
    document.getElementById("status").textContent = "error " + resp.status;
    return;
  }
  const data = await resp.json();
  document.getElementById("login").classList.add("hidden");
  document.getElementById("board").classList.remove("hidden");
  lastEvents = data.events;
  renderFleet(data.fleet);
  const root = document.getElementById("sites");
  for (const site of data.sites) renderSite(root, site, data.events, data.environments || []);
  const c = data.cache;
  document.getElementById("cache").textContent =
    `cache: ${c.objects} objects, ${fmt.bytes(c.bytes)} of ${fmt.bytes(c.capacity)}, ${c.evictions} evictions`;
  renderList("events", data.events.slice().reverse().slice(0, 30), "no events in this window");
  renderList("purges", data.purges, "no purges");
  const status = document.getElementById("status");
  status.textContent = "updated " + new Date(data.now * 1000).toLocaleTimeString() +
    ` · window ${windowSecs} s (${data.span_seconds} s of it since the process started) · requests in it ${data.total_requests}`;
  status.setAttribute("data-total-requests", data.total_requests);
}

document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = document.getElementById("token").value;
  const resp = await fetch("/dashboard/login", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token }),
  });
  document.getElementById("token").value = "";
  if (resp.ok) refresh();
  else showLogin(resp.status === 401 ? "wrong token" : "login failed: " + resp.status);
});
document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/dashboard/logout", { method: "POST", credentials: "same-origin" });
  showLogin("logged out");
});
document.getElementById("window").addEventListener("change", () => {
  for (const id of Object.keys(charts)) { charts[id].destroy(); delete charts[id]; }
  refresh();
});
document.getElementById("compare").addEventListener("click", () => {
  const v = document.getElementById("moment").value;
  compareAt = v ? Math.floor(new Date(v).getTime() / 1000) : null;
  refresh();
});
document.getElementById("clear").addEventListener("click", () => { compareAt = null; focus = null; refresh(); });
refresh();
setInterval(refresh, 2000);
