// Legion dashboard: the ring, the members, transfers in flight and one panel per engine.
// Plain JavaScript, no library, no build step. Talks only to the node that served it
// (same origin): GET /v1/cluster every POLL_CLUSTER_MS and GET /v1/dashboard every
// POLL_FIGURES_MS, each with "Authorization: Bearer <token>". The token is kept in
// sessionStorage (this tab only; gone when it closes), never in a URL or a cookie.
// Everything from the cluster is written with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "legion.token";
const POLL_CLUSTER_MS = 500;
const POLL_FIGURES_MS = 2000;
const RESULT_CHARS_MAX = 4000;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"];
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let session = null; // {token, timers, colours, panels} while signed in

class AuthError extends Error {}

async function api(path) {
  const response = await fetch(path, {
    headers: {Authorization: "Bearer " + session.token},
    cache: "no-store",
    credentials: "omit",
  });
  if (response.status === 401) throw new AuthError("the cluster refused this token (401 Unauthorized)");
  return response;
}

async function apiJson(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = !message;
}

function el(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// --- signing in and out ------------------------------------------------------

function signIn(token) {
  signOut(false);
  sessionStorage.setItem(TOKEN_KEY, token);
  session = {token, timers: [], colours: new Map(), panels: null, partitions: 0};
  $("sign-in-panel").hidden = true;
  $("sign-out").hidden = false;
  loop(pollCluster, POLL_CLUSTER_MS);
  loop(pollFigures, POLL_FIGURES_MS);
}

function signOut(clearToken) {
  if (session) session.timers.forEach(clearTimeout);
  session = null;
  if (clearToken) sessionStorage.removeItem(TOKEN_KEY);
  // No data stays on the page once signed out (or refused).
  $("app").hidden = true;
  $("ring").replaceChildren();
  $("legend").replaceChildren();
  document.querySelector("#members tbody").replaceChildren();
  $("transfers").replaceChildren();
  $("panels").replaceChildren();
  $("summary").textContent = "";
  $("sign-in-panel").hidden = false;
  $("sign-out").hidden = true;
}

function loop(poll, intervalMs) {
  const mine = session;
  const tick = async () => {
    if (session !== mine) return;
    try {
      await poll();
    } catch (error) {
      if (session !== mine) return;
      if (error instanceof AuthError) {
        signOut(true);
        showError("Sign-in failed: " + error.message + ". Paste the contents of the cluster's token file.");
        return;
      }
      showError("Cannot reach the cluster: " + error.message + " (retrying)");
    }
    if (session === mine) mine.timers.push(setTimeout(tick, intervalMs));
  };
  tick();
}

// --- the cluster: ring, members, transfers ----------------------------------------

async function pollCluster() {
  const status = await apiJson("/v1/cluster");
  if (!session) return;
  showError("");
  $("app").hidden = false;
  const ids = status.members.map((m) => m.id).sort();
  ids.forEach((id) => { if (!session.colours.has(id)) session.colours.set(id, PALETTE[session.colours.size % PALETTE.length]); });
  $("summary").textContent = "cluster " + status.cluster_id + " · epoch " + status.epoch + " · " +
    status.partitions + " partitions × " + status.replicas + " replicas · " + (status.rebalancing ? "rebalancing" : "settled");
  drawRing(status);
  drawMembers(status);
  drawTransfers(status);
}

function colourOf(node) {
  return session.colours.get(node) || "#cccccc";
}

function wedge(index, count) {
  const outer = 100, inner = 62, gap = count > 1 ? 0.004 : 0;
  const a0 = 2 * Math.PI * index / count - Math.PI / 2 + gap;
  const a1 = 2 * Math.PI * (index + 1) / count - Math.PI / 2 - gap;
  const point = (r, a) => (r * Math.cos(a)).toFixed(2) + " " + (r * Math.sin(a)).toFixed(2);
  const large = a1 - a0 > Math.PI ? 1 : 0;
  return "M " + point(outer, a0) + " A " + outer + " " + outer + " 0 " + large + " 1 " + point(outer, a1) +
    " L " + point(inner, a1) + " A " + inner + " " + inner + " 0 " + large + " 0 " + point(inner, a0) + " Z";
}

function drawRing(status) {
  const svg = $("ring");
  const count = status.placement.length;
  if (session.partitions !== count) {
    svg.replaceChildren();
    for (let p = 0; p < count; p++) {
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", wedge(p, count));
      path.setAttribute("class", "partition");
      path.setAttribute("data-partition", String(p));
      path.appendChild(document.createElementNS(SVG_NS, "title"));
      svg.appendChild(path);
    }
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("text-anchor", "middle");
    label.setAttribute("dy", "0.35em");
    label.setAttribute("font-size", "14");
    svg.appendChild(label);
    session.partitions = count;
  }
  const moving = new Set((status.transfers || []).map((t) => t.partition));
  svg.querySelectorAll(".partition").forEach((path, p) => {
    const nodes = status.placement[p];
    path.setAttribute("data-primary", nodes[0] || "");
    path.setAttribute("data-replicas", nodes.slice(1).join(","));
    path.setAttribute("fill", colourOf(nodes[0]));
    path.classList.toggle("moving", moving.has(p));
    let title = "partition " + p + ": primary " + (nodes[0] || "none") + "; replicas " + (nodes.slice(1).join(", ") || "none");
    if (status.pending) title += "; moving to " + status.pending[p].join(", ");
    path.firstChild.textContent = title;
  });
  svg.querySelector("text").textContent = count + " partitions";
  $("ring-caption").textContent = "(colour: primary's node; hover a partition for its replicas)";
  const legend = $("legend");
  legend.replaceChildren();
  for (const member of status.members) {
    if (member.status === "removed") continue;
    const item = el("li", {"data-node": member.id});
    const swatch = el("span", {class: "swatch"});
    swatch.style.background = colourOf(member.id);
    item.append(swatch, member.id + " (" + member.primary + " primary)");
    legend.appendChild(item);
  }
}

function drawMembers(status) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  for (const member of status.members) {
    const row = el("tr", {"data-node": member.id, "data-status": member.status});
    row.append(
      el("td", {}, member.id),
      el("td", {class: "status-" + member.status}, member.status),
      el("td", {}, member.url),
      el("td", {class: "num"}, member.primary),
      el("td", {class: "num"}, member.replica),
      el("td", {class: "num"}, status.epoch),
      el("td", {}, member.id === status.claimant ? "claimant" : ""),
    );
    body.appendChild(row);
  }
}

function drawTransfers(status) {
  const transfers = status.transfers || [];
  const list = $("transfers");
  list.replaceChildren();
  const progress = $("transfers-progress");
  if (!transfers.length) {
    $("transfers-summary").textContent = "none in flight";
    progress.hidden = true;
    return;
  }
  const ready = transfers.filter((t) => t.ready).length;
  $("transfers-summary").textContent = ready + " of " + transfers.length + " partition copies done";
  progress.hidden = false;
  progress.max = transfers.length;
  progress.value = ready;
  const copying = session.copying || new Set();
  for (const t of transfers) {
    const state = t.ready ? "copied" : copying.has(t.to + "/" + t.partition) ? "copying" : "waiting";
    list.appendChild(el("li", {"data-partition": t.partition, "data-state": state},
      "partition " + t.partition + " → " + t.to + ": " + state));
  }
}

// --- engines: figures and lookups ---------------------------------------------------

async function pollFigures() {
  const board = await apiJson("/v1/dashboard");
  if (!session) return;
  session.copying = new Set();
  for (const [node, answer] of Object.entries(board.nodes)) {
    for (const p of (answer && answer.handoffs) || []) session.copying.add(node + "/" + p);
  }
  if (!session.panels) {
    session.panels = board.panels;
    buildPanels(board.panels);
  }
  fillFigures(board);
}

function buildPanels(panels) {
  const container = $("panels");
  container.replaceChildren();
  for (const [engine, panel] of Object.entries(panels)) {
    const card = el("section", {class: "card engine-panel", "data-engine": engine});
    card.appendChild(el("h2", {}, panel.title));
    const table = el("table", {class: "figures"});
    card.appendChild(table);
    for (const lookup of panel.lookups) card.appendChild(lookupForm(lookup));
    container.appendChild(card);
  }
}

function fillFigures(board) {
  for (const [engine, panel] of Object.entries(session.panels)) {
    const table = document.querySelector('.engine-panel[data-engine="' + CSS.escape(engine) + '"] table');
    if (!table) continue;
    const nodes = Object.keys(board.nodes).sort();
    const head = el("tr");
    head.appendChild(el("th", {}, ""));
    nodes.forEach((n) => head.appendChild(el("th", {class: "num"}, n)));
    head.appendChild(el("th", {class: "num"}, "all nodes"));
    const rows = [head];
    for (const [figure, label] of Object.entries(panel.figures)) {
      const row = el("tr", {"data-figure": figure});
      row.appendChild(el("td", {}, label));
      let sum = 0;
      for (const n of nodes) {
        const answer = board.nodes[n];
        const value = answer && answer.engines[engine] ? answer.engines[engine][figure] : undefined;
        if (typeof value === "number") sum += value;
        row.appendChild(el("td", {class: "num", "data-node": n}, typeof value === "number" ? value : "–"));
      }
      row.appendChild(el("td", {class: "num total"}, sum));
      rows.push(row);
    }
    table.replaceChildren(...rows);
  }
}

function lookupForm(lookup) {
  const form = el("form", {class: "lookup"});
  form.appendChild(el("strong", {}, lookup.label));
  const inputs = {};
  for (const field of lookup.fields) {
    const input = el("input", {name: field, placeholder: field, autocomplete: "off", spellcheck: "false"});
    inputs[field] = input;
    form.appendChild(input);
  }
  form.appendChild(el("button", {type: "submit"}, "Go"));
  const result = el("pre", {class: "lookup-result", hidden: ""});
  form.appendChild(result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let path = lookup.path;
    for (const field of lookup.fields) path = path.split("{" + field + "}").join(encodeURIComponent(inputs[field].value));
    result.hidden = false;
    result.textContent = "…";
    try {
      const response = await api(path);
      const text = await response.text();
      result.textContent = response.status + " " + response.statusText + "\n" +
        (text.length > RESULT_CHARS_MAX ? text.slice(0, RESULT_CHARS_MAX) + "…" : text);
    } catch (error) {
      result.textContent = "error: " + error.message;
    }
  });
  return form;
}

// --- start ------------------------------------------------------------------------

$("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) {
    showError("Paste the cluster token first.");
    return;
  }
  showError("");
  signIn(token);
});
$("sign-out").addEventListener("click", () => { signOut(true); showError(""); });

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
