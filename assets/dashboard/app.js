// crossfade dashboard: polls /dashboard/data and renders per site the pools side by side
// (blue vs green during a canary), per-route tables, live charts and a before/after view.
"use strict";

const fmt = {
  rate: (v) => v.toFixed(2),
  pct: (v) => (v * 100).toFixed(1) + "%",
  ms: (v) => v.toFixed(1),
  n: (v) => String(v),
};
const COLUMNS = [
  ["requests", "requests", fmt.n],
  ["rate_per_second", "req/s", fmt.rate],
  ["hit_ratio", "hit ratio", fmt.pct],
  ["error_rate", "errors", fmt.pct],
  ["p50_ms", "p50 ms", fmt.ms],
  ["p95_ms", "p95 ms", fmt.ms],
  ["p99_ms", "p99 ms", fmt.ms],
  ["origin_ms", "origin ms", fmt.ms],
];
const charts = {};
let compareAt = null;

function cell(tag, text, attrs) {
  const el = document.createElement(tag);
  el.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function table(rows, label, attrsOf) {
  const t = document.createElement("table");
  const head = document.createElement("tr");
  head.appendChild(cell("th", label));
  for (const [, title] of COLUMNS) head.appendChild(cell("th", title));
  t.appendChild(head);
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.appendChild(cell("td", row.label, { class: "pool-" + row.pool }));
    for (const [key, , f] of COLUMNS) {
      tr.appendChild(cell("td", f(row.summary[key]), Object.assign({ "data-metric": key }, attrsOf(row))));
    }
    t.appendChild(tr);
  }
  return t;
}

function chart(id, title, series, container) {
  const data = [series.times].concat(series.lines.map((l) => l.values));
  const opts = {
    title, width: 460, height: 200,
    series: [{}].concat(series.lines.map((l) => ({
      label: l.label, stroke: l.label.includes("green") ? "#1d8a3a" : l.label.includes("blue") ? "#1f5fbf" : "#888",
    }))),
  };
  if (charts[id] && charts[id].series.length === opts.series.length) {
    charts[id].setData(data);
  } else {
    if (charts[id]) charts[id].destroy();
    const div = document.createElement("div");
    container.appendChild(div);
    charts[id] = new uPlot(opts, data, div);
  }
  return charts[id];
}

async function refresh() {
  const windowSecs = document.getElementById("window").value;
  let url = "/dashboard/data?window=" + windowSecs;
  if (compareAt) url += "&compare_at=" + compareAt;
  const resp = await fetch(url, { credentials: "same-origin" });
  if (!resp.ok) {
    document.getElementById("status").textContent = "error " + resp.status;
    return;
  }
  const data = await resp.json();
  const root = document.getElementById("sites");
  for (const site of data.sites) {
    let section = document.getElementById("site-" + site.site);
    if (!section) {
      section = document.createElement("section");
      section.id = "site-" + site.site;
      section.appendChild(cell("h2", ""));
      const tables = document.createElement("div");
      tables.className = "tables";
      section.appendChild(tables);
      const c = document.createElement("div");
      c.className = "charts";
      section.appendChild(c);
      root.appendChild(section);
    }
    const state = site.state || {};
    const canary = state.canary ? ` — canary ${state.canary.pool} ${state.canary.percent}%` : "";
    const maint = state.maintenance && state.maintenance.site ? " — MAINTENANCE" : "";
    section.querySelector("h2").textContent = `${site.site}: active ${state.active}${canary}${maint}`;
    const tables = section.querySelector(".tables");
    tables.replaceChildren();
    tables.appendChild(table(site.pools.map((p) => ({ label: p.pool, pool: p.pool, summary: p.summary })), "pool",
      (r) => ({ "data-site": site.site, "data-pool": r.pool })));
    if (site.compare) {
      tables.appendChild(cell("h3", "before / after " + new Date(site.compare.at * 1000).toLocaleString()));
      const rows = [];
      for (const p of site.compare.pools) {
        rows.push({ label: p.pool + " before", pool: p.pool, summary: p.before });
        rows.push({ label: p.pool + " after", pool: p.pool, summary: p.after });
      }
      tables.appendChild(table(rows, "pool", (r) => ({ "data-site": site.site, "data-compare": r.label })));
    }
    tables.appendChild(table(site.routes.map((r) => ({ label: r.route + " · " + r.pool, pool: r.pool, summary: r.summary })), "route · pool",
      (r) => ({ "data-site": site.site, "data-route": r.label })));
    const c = section.querySelector(".charts");
    chart(site.site + "-rate", "requests/s by pool", site.history.rate, c);
    chart(site.site + "-p99", "p99 ms by pool", site.history.p99, c);
    chart(site.site + "-errors", "error rate by pool", site.history.errors, c);
  }
  document.getElementById("status").textContent =
    "updated " + new Date(data.now * 1000).toLocaleTimeString() + " · window " + windowSecs + " s · total requests " + data.total_requests;
  document.getElementById("status").setAttribute("data-total-requests", data.total_requests);
}

document.getElementById("window").addEventListener("change", refresh);
document.getElementById("compare").addEventListener("click", () => {
  const v = document.getElementById("moment").value;
  compareAt = v ? Math.floor(new Date(v).getTime() / 1000) : null;
  refresh();
});
document.getElementById("clear").addEventListener("click", () => { compareAt = null; refresh(); });
refresh();
setInterval(refresh, 2000);
