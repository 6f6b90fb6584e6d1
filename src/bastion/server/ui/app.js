// Bastion web UI: plain JS, no build step. Talks to the same server's /v1 API with the API key
// kept in localStorage (or passed once as #key=... in the URL, which `make demo` prints).
"use strict";

const state = { key: localStorage.getItem("bastion.key") || "", timer: null };

function captureKeyFromHash() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    state.key = decodeURIComponent(m[1]);
    localStorage.setItem("bastion.key", state.key);
    history.replaceState(null, "", location.pathname + "#/runs");
  }
}

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${state.key}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (res.status === 401) { askForKey(); throw new Error("unauthorized"); }
  const body = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error(body && body.error ? body.error.message : res.statusText);
  return body;
}

function askForKey() {
  const dlg = document.getElementById("login");
  if (!dlg.open) dlg.showModal();
}

document.getElementById("login-form").addEventListener("submit", () => {
  state.key = document.getElementById("login-key").value.trim();
  localStorage.setItem("bastion.key", state.key);
  route();
});

const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmtJSON = (v) => esc(typeof v === "string" ? v : JSON.stringify(v, null, 2));
const fmtTime = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "";
const fmtUSD = (v) => `$${Number(v || 0).toFixed(6)}`;
const view = () => document.getElementById("view");

function every(ms, fn) {
  clearInterval(state.timer);
  fn();
  state.timer = setInterval(fn, ms);
}

// -- runs -----------------------------------------------------------------------------------

async function renderRuns() {
  const runs = await api("/v1/runs?limit=200");
  view().innerHTML = `
    <h2>Runs</h2>
    <table id="runs-table"><thead><tr><th>Run</th><th>Agent</th><th>Status</th><th>Input</th><th>Cost</th><th>Updated</th></tr></thead>
    <tbody>${runs.map((r) => `
      <tr data-run="${esc(r.id)}">
        <td><a href="#/runs/${esc(r.id)}">${esc(r.id)}</a></td><td>${esc(r.agent)}</td>
        <td><span class="status ${esc(r.status)}">${esc(r.status)}</span></td>
        <td>${esc(JSON.stringify(r.input)).slice(0, 80)}</td><td>${fmtUSD(r.cost_usd)}</td><td>${fmtTime(r.updated_at)}</td>
      </tr>`).join("") || `<tr><td colspan="6" class="muted">No runs yet.</td></tr>`}</tbody></table>`;
}

function spanKind(s) {
  const op = (s.attributes || {})["gen_ai.operation.name"] || "";
  if (s.name.startsWith("policy")) return "policy";
  return op || "other";
}

function renderTrace(spans) {
  if (!spans.length) return `<p class="muted">No trace recorded for this run.</p>`;
  const t0 = Math.min(...spans.map((s) => s.start)), t1 = Math.max(...spans.map((s) => s.end));
  const total = Math.max(t1 - t0, 1e-9);
  const children = {};
  spans.forEach((s) => { (children[s.parent_id || ""] = children[s.parent_id || ""] || []).push(s); });
  const ids = new Set(spans.map((s) => s.span_id));
  const roots = spans.filter((s) => !s.parent_id || !ids.has(s.parent_id));
  const rows = [];
  const walk = (s, depth) => {
    const a = s.attributes || {};
    const cost = a["bastion.cost.usd"];
    rows.push(`<div class="span-row" data-span="${esc(s.name)}">
      <div style="padding-left:${depth * 16}px" title="${fmtJSON(a)}">${esc(s.name)}</div>
      <div class="bar-track"><div class="bar ${esc(spanKind(s))} ${s.status === "error" ? "error" : ""}"
        style="left:${((s.start - t0) / total) * 100}%;width:${((s.end - s.start) / total) * 100}%"></div></div>
      <div>${((s.end - s.start) * 1000).toFixed(1)} ms</div><div>${cost != null ? fmtUSD(cost) : ""}</div></div>`);
    (children[s.span_id] || []).sort((x, y) => x.start - y.start).forEach((c) => walk(c, depth + 1));
  };
  roots.sort((x, y) => x.start - y.start).forEach((r) => walk(r, 0));
  return `<div id="trace">${rows.join("")}</div>`;
}

async function renderRun(id) {
  const run = await api(`/v1/runs/${encodeURIComponent(id)}`);
  const events = await api(`/v1/runs/${encodeURIComponent(id)}/events`);
  let trace = `<p class="muted">Tracing is not configured on this server.</p>`;
  try {
    const t = await api(`/v1/runs/${encodeURIComponent(id)}/trace`);
    trace = renderTrace(t.spans || []);
  } catch (e) { /* no trace store */ }
  view().innerHTML = `
    <h2>Run ${esc(run.id)} <span class="status ${esc(run.status)}" id="run-status">${esc(run.status)}</span></h2>
    <div class="card"><b>Agent</b> ${esc(run.agent)} · <b>Thread</b> ${esc(run.thread_id)} · <b>Cost</b> ${fmtUSD(run.cost_usd)}
      · <b>Tokens</b> ${esc((run.usage || {}).input_tokens || 0)} in / ${esc((run.usage || {}).output_tokens || 0)} out</div>
    <div class="card"><b>Input</b><pre>${fmtJSON(run.input)}</pre><b>Output</b><pre id="run-output">${fmtJSON(run.output)}</pre>
      ${run.error ? `<b>Error</b><pre>${esc(run.error)}</pre>` : ""}</div>
    <div class="card"><h3>Trace</h3>${trace}</div>
    <div class="card"><h3>Events</h3><table><tbody>${events.map((e) =>
      `<tr><td>${e.seq}</td><td>${esc(e.kind)}</td><td><pre>${fmtJSON(e.data)}</pre></td></tr>`).join("")}</tbody></table></div>`;
}

// -- approvals ------------------------------------------------------------------------------

function findApproval(v) {
  if (!v || typeof v !== "object") return null;
  if (v.type === "tool_approval") return v;
  for (const child of Object.values(v)) {
    const found = findApproval(child);
    if (found) return found;
  }
  return null;
}

async function renderApprovals() {
  const items = await api("/v1/approvals");
  document.getElementById("approval-count").textContent = items.length || "";
  view().innerHTML = `<h2>Approvals</h2>` + (items.map((a) => a.interrupts.map((i) => {
    const p = i.payload || i.value || i;
    const ask = findApproval(p) || p;  // nested agents wrap the tool's approval request
    const risk = (ask.risk && ask.risk.text) || ask.risk_summary || ask.summary || ask;
    return `<div class="card approval" data-run="${esc(a.run_id)}" data-interrupt="${esc(i.id || "")}">
      <div><b>${esc(a.agent)}</b> · ${esc(ask.tool || "")} · run <a href="#/runs/${esc(a.run_id)}">${esc(a.run_id)}</a></div>
      <div class="risk"><b>Risk summary</b><pre>${fmtJSON(risk)}</pre></div>
      <label>Edited arguments (JSON, optional)<textarea rows="3" class="edit-args">${fmtJSON(ask.arguments || "")}</textarea></label>
      <p><button class="approve">Approve</button> <button class="edit">Approve with edits</button>
         <button class="reject">Reject</button></p></div>`;
  }).join("")).join("") || `<p class="muted">Nothing is waiting for a decision.</p>`);
  view().querySelectorAll(".approval").forEach((card) => {
    const send = async (decision) => {
      const iid = card.dataset.interrupt;
      const body = { decision: iid ? { [iid]: decision } : decision };
      await api(`/v1/approvals/${encodeURIComponent(card.dataset.run)}`, { method: "POST", body: JSON.stringify(body) });
      card.outerHTML = `<div class="card decided">Decision sent: ${esc(decision.action)}</div>`;
    };
    card.querySelector(".approve").onclick = () => send({ action: "approve" });
    card.querySelector(".reject").onclick = () => send({ action: "reject", reason: "rejected in the web UI" });
    card.querySelector(".edit").onclick = () => {
      let args;
      try { args = JSON.parse(card.querySelector(".edit-args").value); } catch (e) { alert("Arguments must be JSON"); return; }
      send({ action: "edit", arguments: args });
    };
  });
}

// -- costs ----------------------------------------------------------------------------------

async function renderCosts() {
  const by = new URLSearchParams(location.hash.split("?")[1] || "").get("by") || "agent";
  let rows = [];
  try { rows = await api(`/v1/costs?by=${encodeURIComponent(by)}`); } catch (e) {
    view().innerHTML = `<h2>Costs</h2><p class="muted">${esc(e.message)}</p>`; return;
  }
  const max = Math.max(...rows.map((r) => r.cost_usd), 1e-12);
  view().innerHTML = `<h2>Costs by ${esc(by)}</h2>
    <p>${["tenant", "agent", "model", "tool", "user", "session"].map((d) =>
      `<a href="#/costs?by=${d}">${d}</a>`).join(" · ")}</p>
    <table id="costs-table"><thead><tr><th>${esc(by)}</th><th>Calls</th><th>Tokens in/out</th><th>Cost</th><th></th></tr></thead>
    <tbody>${rows.map((r) => `<tr><td>${esc(r.key)}</td><td>${r.calls}</td><td>${r.input_tokens}/${r.output_tokens}</td>
      <td>${fmtUSD(r.cost_usd)}</td><td><span class="cost-bar" style="width:${(r.cost_usd / max) * 200}px"></span></td></tr>`).join("")
      || `<tr><td colspan="5" class="muted">No cost recorded yet.</td></tr>`}</tbody></table>
    <h3>Last 24 hours, by ${esc(by)}</h3><div id="cost-series" class="muted">…</div>`;
  if (["tenant", "run"].includes(by)) { document.getElementById("cost-series").textContent = "(not available for this dimension)"; return; }
  try {
    const data = await api(`/v1/costs/series?by=${encodeURIComponent(by)}&hours=24&buckets=24`);
    const keys = Object.keys(data.series);
    const peak = Math.max(...keys.flatMap((k) => data.series[k]), 1e-12);
    document.getElementById("cost-series").innerHTML = keys.map((k) => `
      <div class="series-row"><span class="series-key">${esc(k)}</span><svg width="480" height="40" class="spark">${
        data.series[k].map((v, i) => `<rect x="${i * 20}" y="${40 - (v / peak) * 38}" width="16" height="${(v / peak) * 38}"><title>${fmtUSD(v)}</title></rect>`).join("")
      }</svg></div>`).join("") || "No spend in this window.";
  } catch (e) { document.getElementById("cost-series").textContent = e.message; }
}

// -- memory ---------------------------------------------------------------------------------

async function renderMemory() {
  view().innerHTML = `<h2>Memory</h2><form id="mem-form"><input type="search" id="mem-q" placeholder="Search this tenant's memory…"></form>
    <div id="mem-results"></div>`;
  document.getElementById("mem-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const q = document.getElementById("mem-q").value;
    const out = document.getElementById("mem-results");
    try {
      const hits = await api(`/v1/memory/search?q=${encodeURIComponent(q)}`);
      out.innerHTML = hits.map((h) => `<div class="card"><div class="muted">${esc(h.kind)} · score ${Number(h.score).toFixed(3)}
        ${h.trust === "untrusted" ? " · <b>untrusted</b>" : ""}</div><pre>${esc(h.text)}</pre></div>`).join("") || `<p class="muted">No matches.</p>`;
    } catch (e) { out.innerHTML = `<p class="muted">${esc(e.message)}</p>`; }
  };
}

// -- router ---------------------------------------------------------------------------------

async function route() {
  captureKeyFromHash();
  if (!state.key) { askForKey(); return; }
  const hash = location.hash || "#/runs";
  const [, tab, id] = hash.split("?")[0].split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  try {
    if (tab === "runs" && id) every(2000, () => renderRun(id));
    else if (tab === "approvals") { clearInterval(state.timer); await renderApprovals(); }
    else if (tab === "costs") { clearInterval(state.timer); await renderCosts(); }
    else if (tab === "memory") { clearInterval(state.timer); await renderMemory(); }
    else every(2000, renderRuns);
    api("/v1/approvals").then((a) => { document.getElementById("approval-count").textContent = a.length || ""; }).catch(() => {});
  } catch (e) {
    view().innerHTML = `<p class="muted">${esc(e.message)}</p>`;
  }
}

window.addEventListener("hashchange", route);
route();
