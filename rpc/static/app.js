// kernelfarm's live page: polls the tracker's JSON API (the same one scripts use) every
// second and redraws. No build step, no library, nothing loaded from outside the farm;
// every value from the farm goes into the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const curves = new Map(); // campaign name -> {version, data}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(path) {
  const r = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (r.status === 401) {
    window.location.assign("/login");
    throw new Error("logged out");
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(1) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}

function outcomes(counts) {
  const parts = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).map(([k, v]) => k + " " + v);
  return parts.length ? parts.join(", ") : "none";
}

function gflops(x) {
  return (x || 0).toFixed(2);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderTotals(summary) {
  const devices = summary.devices.length;
  const lost = (summary.lost || []).length;
  const stats = summary.stats || {};
  document.getElementById("totals").textContent =
    devices + " device(s) up, " + lost + " lost, " + summary.completed + " job(s) completed, " +
    (stats.clients ?? 0) + " client(s)";
  document.getElementById("error-totals").textContent =
    "Errors by outcome since the tracker started: " + outcomes(summary.errors_by_outcome);
}

function renderDevices(data) {
  const rows = data.devices.map((d) => {
    const fp = d.fingerprint_summary || {};
    const state = d.state === "lost" ? "lost (" + d.reason + ", " + ago(d.lost_s) + ")" : d.state;
    return el("tr", {"class": "state-" + d.state, "data-name": d.name, "data-key": d.key, "data-state": d.state},
      el("td", {}, d.key), el("td", {}, d.name), el("td", {}, fp.kind || "?"), el("td", {}, fp.isa || "?"),
      el("td", {}, fp.model || "?"), el("td", {}, fp.emulated ? "yes" : "no"),
      el("td", {"class": "state"}, state), el("td", {"class": "num"}, d.jobs_done),
      el("td", {}, outcomes(d.errors_by_outcome)), el("td", {}, ago(d.last_seen_s)));
  });
  fill(document.querySelector("#devices tbody"), rows);
}

function renderQueues(summary) {
  const rows = Object.keys(summary.keys).sort().map((key) => {
    const k = Object.assign({}, summary.keys[key], (summary.queues || {})[key]);
    const prios = Object.entries(k.priorities || {}).sort((a, b) => Number(b[0]) - Number(a[0]))
      .map(([p, n]) => p + ": " + n).join(", ");
    return el("tr", {"data-key": key}, el("td", {}, key), el("td", {"class": "num"}, k.devices),
      el("td", {"class": "num"}, k.free), el("td", {"class": "num"}, k.busy), el("td", {"class": "num"}, k.leased),
      el("td", {"class": "num"}, k.pending), el("td", {"class": "num"}, k.running ?? 0),
      el("td", {"class": "num"}, k.lease_requests ?? 0), el("td", {}, prios || "-"));
  });
  fill(document.querySelector("#queues tbody"), rows);
}

function renderFailures(summary) {
  const rows = (summary.failures || []).map((f) => el("tr", {"data-outcome": f.outcome},
    el("td", {}, new Date(f.at * 1000).toLocaleTimeString()), el("td", {"class": "outcome"}, f.outcome),
    el("td", {}, f.device), el("td", {}, f.key), el("td", {}, f.campaign || "-"),
    el("td", {"class": "message"}, f.message)));
  fill(document.querySelector("#failures tbody"), rows);
}

// One task's best-so-far curve: trials on x (up to the budget), GFLOPS on y.
function curveSvg(task) {
  const W = 360, H = 150, L = 48, R = 10, T = 12, B = 26;
  const pts = task.points || [];
  const xmax = Math.max(task.budget || 1, ...pts.map((p) => p[0]), 1);
  const ymax = Math.max(...pts.map((p) => p[1]), 1e-9) * 1.1;
  const x = (v) => L + (W - L - R) * v / xmax;
  const y = (v) => H - B - (H - T - B) * v / ymax;
  const root = svg("svg", {"class": "curve", "viewBox": "0 0 " + W + " " + H, "width": W, "height": H,
    "data-task": task.task, "data-points": pts.length, "role": "img"});
  root.append(svg("title", {}, task.task + ": best GFLOPS so far by trial"));
  root.append(svg("line", {"class": "axis", "x1": L, "y1": H - B, "x2": W - R, "y2": H - B}));
  root.append(svg("line", {"class": "axis", "x1": L, "y1": T, "x2": L, "y2": H - B}));
  root.append(svg("text", {"class": "tick", "x": L - 4, "y": T + 8, "text-anchor": "end"}, (ymax / 1.1).toFixed(1)));
  root.append(svg("text", {"class": "tick", "x": L - 4, "y": H - B, "text-anchor": "end"}, "0"));
  root.append(svg("text", {"class": "tick", "x": W - R, "y": H - 8, "text-anchor": "end"}, "trial " + xmax));
  root.append(svg("text", {"class": "tick", "x": L, "y": H - 8}, "GFLOPS"));
  if (pts.length) {
    // a step curve: the best so far holds until the next improvement
    const coords = [];
    pts.forEach((p, i) => {
      if (i > 0) coords.push(x(p[0]) + "," + y(pts[i - 1][1]));
      coords.push(x(p[0]) + "," + y(p[1]));
    });
    root.append(svg("polyline", {"class": "line", "points": coords.join(" ")}));
    const last = pts[pts.length - 1];
    root.append(svg("circle", {"class": "dot", "cx": x(last[0]), "cy": y(last[1]), "r": 3}));
  }
  return root;
}

async function curveOf(c) {
  const known = curves.get(c.name);
  if (known && known.version === c.version) return known.data;
  const data = await getJSON("/api/campaigns/" + encodeURIComponent(c.name) + "/curve");
  curves.set(c.name, {version: c.version, data});
  return data;
}

async function renderCampaigns(data) {
  const box = document.getElementById("campaigns");
  if (!data.campaigns.length) {
    box.replaceChildren(el("p", {"class": "empty"}, "No campaign has reported to this tracker."));
    return;
  }
  const cards = [];
  for (const c of data.campaigns) {
    const curve = await curveOf(c);
    const byTask = new Map(curve.tasks.map((t) => [t.task, t]));
    const rows = c.tasks.map((t) => el("tr", {"data-task": t.task}, el("td", {}, t.task),
      el("td", {"class": "num"}, t.done + " / " + t.budget), el("td", {"class": "num"}, gflops(t.best_gflops)),
      el("td", {"class": "num"}, t.errors), el("td", {"class": "num"}, t.in_flight),
      el("td", {}, t.error ? "failed: " + t.error : (t.finished ? "done" : "tuning"))));
    const charts = c.tasks.map((t) => el("figure", {}, curveSvg(byTask.get(t.task) || {task: t.task, points: []}),
      el("figcaption", {}, t.task + ": best " + gflops(t.best_gflops) + " GFLOPS")));
    cards.push(el("article", {"class": "campaign state-" + c.state, "data-name": c.name, "data-state": c.state},
      el("h3", {}, c.name + " ", el("span", {"class": "badge"}, c.state)),
      el("p", {}, "from " + (c.host || c.peer) + ", " + c.trials_done + " / " + c.budget + " trials, best " +
        gflops(c.best_gflops) + " GFLOPS, last report " + ago(c.last_report_s)),
      el("p", {}, "errors: " + c.errors + " (at the devices: " + outcomes(c.errors_by_outcome) + ")"),
      el("table", {"class": "tasks"}, el("thead", {}, el("tr", {}, el("th", {}, "Task"), el("th", {}, "Trials"),
        el("th", {}, "Best GFLOPS"), el("th", {}, "Errors"), el("th", {}, "In flight"), el("th", {}, "State"))),
      el("tbody", {}, ...rows)),
      el("div", {"class": "curves"}, ...charts)));
  }
  box.replaceChildren(...cards);
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const [summary, devices, campaigns] = await Promise.all(
      [getJSON("/api/summary"), getJSON("/api/devices"), getJSON("/api/campaigns")]);
    renderTotals(summary);
    renderDevices(devices);
    renderQueues(summary);
    renderFailures(summary);
    await renderCampaigns(campaigns);
    status.textContent = "live, updated " + new Date().toLocaleTimeString();
    status.className = "status live";
  } catch (e) {
    status.textContent = "tracker unreachable (" + e.message + "), retrying";
    status.className = "status down";
  } finally {
    window.setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
