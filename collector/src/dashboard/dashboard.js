// The collector's dashboard: reads /v1/summary and /v1/history from this collector and draws one card
// per release (newest first) with its waves. Every text from the data is set with textContent (never
// markup): a report's reason is shown as the device wrote it, and cannot add elements to the page.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 15000;
// Stacking order of the chart, bottom up, and how each state is read from a bucket.
const LAYERS = [
  ["committed", (s) => s.committed],
  ["rolled_back", (s) => s.rolled_back],
  ["failed", (s) => s.failed],
  ["skipped", (s) => s.skipped_halted + s.skipped_pulled],
  ["drill", (s) => s.drill_passed + s.drill_failed],
];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function releaseKey(r) {
  return r.hardware + "/" + r.channel + "/" + r.to_version;
}

// Stacked bars, one per bucket: the states of `series` (and `pending`, when given) over time. `stretch`:
// as wide as its box (the bars stretch), else `width` pixels.
function chart(history, series, pending, width, height, stretch) {
  const svg = svgEl("svg", {
    width: stretch ? "100%" : width, height, viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none", "shape-rendering": "crispEdges", role: "img", class: "chart",
    "aria-label": "devices by state over time",
  });
  let top = 1;
  series.forEach((s, i) => {
    const total = LAYERS.reduce((sum, [, get]) => sum + get(s), 0) + (pending ? pending[i] : 0);
    top = Math.max(top, total);
  });
  const bar = width / Math.max(series.length, 1);
  series.forEach((s, i) => {
    let y = height;
    const layers = LAYERS.map(([name, get]) => [name, get(s)]);
    if (pending) layers.push(["pending", pending[i]]);
    const label = layers.filter(([, n]) => n > 0).map(([name, n]) => `${name.replace("_", " ")} ${n}`);
    const group = svgEl("g", {});
    const title = svgEl("title", {});
    title.textContent = when(history.start_ms + (i + 1) * history.bucket_ms) + ": " + (label.join(", ") || "no reports");
    group.append(title);
    for (const [name, n] of layers) {
      if (n <= 0) continue;
      const h = (n / top) * (height - 2);
      y -= h;
      group.append(svgEl("rect", { class: "bar " + name, x: i * bar, y, width: bar, height: h }));
    }
    svg.append(group);
  });
  return svg;
}

function tile(kind, label, value) {
  return el("div", { class: "tile " + kind, "data-count": kind }, el("b", {}, value), el("span", {}, label));
}

function totals(summary, release) {
  const s = summary || { devices: 0, committed: 0, rolled_back: 0, failed: 0, skipped: 0, drill_passed: 0, drill_failed: 0, pending: 0 };
  const converge = release.converged_after_ms === null ? "not yet" : duration(release.converged_after_ms);
  return el("div", { class: "totals" },
    tile("devices", "devices reported", s.devices),
    tile("committed", "committed", s.committed),
    tile("rolled_back", "rolled back", s.rolled_back),
    tile("failed", "failed", s.failed),
    tile("skipped", "skipped", s.skipped),
    tile("drills", "drills passed", `${s.drill_passed}/${s.drill_passed + s.drill_failed}`),
    tile("pending", "pending", s.pending),
    tile("converge", "time to converge", converge));
}

function waveRow(history, wave) {
  const now = wave.states[wave.states.length - 1] || {};
  const cell = (kind, value) => el("td", { class: "n", "data-count": kind }, value);
  return el("tr", { "data-wave": wave.wave === null ? "none" : wave.wave },
    el("td", {}, wave.wave === null ? "no wave" : "wave " + wave.wave),
    el("td", { class: "status" }, el("span", { class: "badge " + wave.status }, wave.status)),
    cell("committed", now.committed),
    cell("rolled_back", now.rolled_back),
    cell("failed", now.failed),
    cell("skipped", now.skipped_halted + now.skipped_pulled),
    cell("drills", `${now.drill_passed}/${now.drill_passed + now.drill_failed}`),
    el("td", {}, when(wave.first_report_ms)),
    el("td", {}, duration(wave.last_report_ms - wave.first_report_ms)),
    el("td", { class: "chart" }, chart(history, wave.states, null, 220, 36)));
}

function reasons(summary) {
  const list = (summary && summary.top_failure_reasons) || [];
  if (list.length === 0) return el("div", { class: "reasons" }, el("h3", {}, "Top failure reasons"), el("p", { class: "muted" }, "none"));
  const items = list.map((r) => el("li", {},
    el("span", { class: "count" }, `${r.devices} × `),
    el("span", { class: "text" }, r.reason === "" ? "(no reason given)" : r.reason)));
  return el("div", { class: "reasons" }, el("h3", {}, "Top failure reasons"), el("ol", {}, ...items));
}

// The collector's own halts and alerts on the release: when, which rule, and why (all as text).
function actions(release) {
  const list = release.actions || [];
  if (list.length === 0) return null;
  const items = list.map((a) => el("li", { "data-action": a.action },
    el("span", { class: "badge " + (a.action === "halted" ? "halted" : "alert") },
      a.action === "halted" ? "halted by the collector" : "alert"),
    el("span", { class: "when" }, " " + when(a.at_ms) + ": "),
    // The reason as the published halt gives it.
    el("span", { class: "reason" }, `collector rule ${a.rule}: ${a.rolled_back} of ${a.judged} rolled back`
      + (a.wave === null ? "" : ` in wave ${a.wave}`)),
    el("div", { class: "detail" }, a.detail)));
  return el("div", { class: "actions" }, el("h3", {}, "Collector actions"), el("ul", {}, ...items));
}

function releaseCard(history, release, summary) {
  const alerted = (release.actions || []).some((a) => a.action === "alerted");
  const head = el("h2", {},
    el("span", { class: "name" }, `${release.hardware} / ${release.channel} / ${release.to_version}`),
    el("span", { class: "badge " + release.status, "data-status": release.status }, release.status),
    alerted ? el("span", { class: "badge alert", "data-alert": "true" }, "alert") : "");
  const overall = release.waves[0] ? release.waves[0].states.map((_, i) => {
    const sum = {};
    for (const w of release.waves) for (const [k, v] of Object.entries(w.states[i])) sum[k] = (sum[k] || 0) + v;
    return sum;
  }) : [];
  const header = el("tr", {}, ...["wave", "status", "committed", "rolled back", "failed", "skipped", "drills",
    "first report", "reporting for", "state over time"].map((h) => el("th", {}, h)));
  return el("section", { class: "release status-" + release.status, "data-release": releaseKey(release) },
    head,
    actions(release) || "",
    totals(summary, release),
    el("div", { class: "overall" }, chart(history, overall, release.pending, 1000, 90, true)),
    el("p", { class: "axis muted" },
      el("span", {}, when(history.start_ms)),
      el("span", {}, when(history.start_ms + history.buckets * history.bucket_ms))),
    el("table", { class: "waves" }, el("thead", {}, header),
      el("tbody", {}, ...release.waves.map((w) => waveRow(history, w)))),
    reasons(summary));
}

async function fetchJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const [summary, history] = await Promise.all([fetchJson("/v1/summary"), fetchJson("/v1/history")]);
    const byKey = new Map(summary.releases.map((r) => [releaseKey(r), r]));
    const cards = history.releases.slice().reverse().map((r) => releaseCard(history, r, byKey.get(releaseKey(r))));
    const main = document.getElementById("releases");
    main.replaceChildren(...cards);
    if (cards.length === 0) main.append(el("p", { class: "muted" }, "No reports yet."));
    updated.className = "muted";
    updated.textContent = `${cards.length} release(s); updated ${when(Date.now())}`;
  } catch (e) {
    updated.className = "error";
    updated.textContent = "Could not read the collector: " + e.message;
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
