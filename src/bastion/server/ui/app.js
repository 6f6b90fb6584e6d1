// Bastion web UI: plain JS, no build step. Talks to the same server's /v1 API with the API key
// kept in localStorage (or passed once as #key=... in the URL, which `make demo` prints).
"use strict";

const state = { key: localStorage.getItem("bastion.key") || "", timer: null, page: null };

function captureKeyFromHash() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    state.key = decodeURIComponent(m[1]);
    localStorage.setItem("bastion.key", state.key);
    history.replaceState(null, "", location.pathname + "#/runs");
    closeLogin();  // the link was opened while the key box was up
  }
}

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${state.key}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (res.status === 401) {
    askForKey(state.key ? "The server rejected this API key (401). Check it, or mint one with `bastion keys create`." : "");
    throw new Error("unauthorized");
  }
  const body = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error(body && body.error ? body.error.message : res.statusText);
  return body;
}

function askForKey(message = "") {
  const dlg = document.getElementById("login");
  document.getElementById("login-error").textContent = message;
  if (!dlg.open) dlg.showModal();
}

function closeLogin() {
  const dlg = document.getElementById("login");
  document.getElementById("login-error").textContent = "";
  if (dlg.open) dlg.close();
}

// The dialog stays up until the server accepts the key; an empty box never replaces the key.
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("login-key");
  const key = input.value.trim();
  if (!key) { askForKey("Enter an API key (`bastion keys create --tenant <name>` prints one)."); return; }
  state.key = key;
  localStorage.setItem("bastion.key", key);
  try { await api("/v1/runs?limit=1"); } catch (e) {
    if (e.message === "unauthorized") { input.select(); return; }  // the error is shown in the dialog
  }
  input.value = "";
  closeLogin();
  route();
});

const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmtJSON = (v) => esc(typeof v === "string" ? v : JSON.stringify(v, null, 2));
const fmtTime = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "";
const fmtUSD = (v) => `$${Number(v || 0).toFixed(6)}`;
// Each navigation renders into a fresh page element. A render captures its page before it awaits
// the API, so one that finishes after the reader moved on fills a detached page, never the new one.
const view = () => state.page;
function newPage() {
  state.page = document.createElement("div");
  state.page.innerHTML = `<p class="muted">Loading…</p>`;
  document.getElementById("view").replaceChildren(state.page);
}

function every(ms, fn) {
  clearInterval(state.timer);
  fn();
  state.timer = setInterval(fn, ms);
}

// -- runs -----------------------------------------------------------------------------------

async function renderRuns() {
  const page = view();
  const runs = await api("/v1/runs?limit=200");
  page.innerHTML = `
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

// Streamed tokens arrive as one event each: consecutive tokens of one agent become one row with
// the text they spell, and every row folds (a summary line; the JSON on demand).
function foldEvents(events) {
  const rows = [];
  for (const e of events) {
    const d = e.data || {};
    const agent = d.agent || d.node || "";
    const text = typeof d.text === "string" ? d.text : (typeof d.data === "string" ? d.data : "");
    const last = rows[rows.length - 1];
    if (e.kind === "token" && last && last.kind === "token" && last.agent === agent) {
      last.text += text; last.count += 1; last.last = e.seq;
    } else {
      rows.push({ kind: e.kind, agent, text, data: d, count: 1, first: e.seq, last: e.seq });
    }
  }
  return rows;
}

function eventSummary(r) {
  const d = r.data;
  const cut = (v, n) => { const t = typeof v === "string" ? v : JSON.stringify(v); return t.length > n ? t.slice(0, n) + "…" : t; };
  if (r.kind === "token") return `${r.agent ? `${r.agent}: ` : ""}${cut(r.text, 160)}`;
  if (d.call) return `${d.call.name}(${cut(d.call.arguments || {}, 120)})`;
  if (d.result) return `${d.result.name}: ${d.result.is_error ? "error" : "ok"}`;
  if (d.message && Array.isArray(d.message.parts)) {
    return `${r.agent ? `${r.agent}: ` : ""}${d.message.parts.map((p) => (typeof p.text === "string" ? cut(p.text, 120)
      : p.name ? `calls ${p.name}(${cut(p.arguments || {}, 80)})` : "")).filter(Boolean).join(" · ")}`;
  }
  if ("output" in d) return cut(d.output, 120);
  return cut(d, 120);
}

function renderEvents(events) {
  if (!events.length) return `<p class="muted">No events yet.</p>`;
  return `<div id="events">${foldEvents(events).map((r) => `
    <details class="event" data-kind="${esc(r.kind)}" data-seq="${r.first}"><summary>
      <span class="seq">${r.first}${r.last !== r.first ? `–${r.last}` : ""}</span>
      <b>${esc(r.kind === "token" ? `tokens ×${r.count}` : r.kind)}</b> <span class="muted">${esc(eventSummary(r))}</span></summary>
      <pre>${r.kind === "token" ? esc(r.text) : fmtJSON(r.data)}</pre></details>`).join("")}</div>`;
}

const FINAL = ["completed", "failed", "cancelled"];

async function renderRun(id) {
  const page = view();
  const run = await api(`/v1/runs/${encodeURIComponent(id)}`);
  const events = await api(`/v1/runs/${encodeURIComponent(id)}/events`);
  let trace = `<p class="muted">Tracing is not configured on this server.</p>`;
  try {
    const t = await api(`/v1/runs/${encodeURIComponent(id)}/trace`);
    trace = renderTrace(t.spans || []);
  } catch (e) { /* no trace store */ }
  // the page re-renders while the run is live: rows the reader opened stay open
  const opened = [...page.querySelectorAll("details.event[open]")].map((d) => d.dataset.seq);
  page.innerHTML = `
    <h2>Run ${esc(run.id)} <span class="status ${esc(run.status)}" id="run-status">${esc(run.status)}</span></h2>
    <div class="card"><b>Agent</b> ${esc(run.agent)} · <b>Thread</b> ${esc(run.thread_id)} · <b>Cost</b> ${fmtUSD(run.cost_usd)}
      · <b>Tokens</b> ${esc((run.usage || {}).input_tokens || 0)} in / ${esc((run.usage || {}).output_tokens || 0)} out</div>
    <div class="card"><b>Input</b><pre>${fmtJSON(run.input)}</pre><b>Output</b><pre id="run-output">${fmtJSON(run.output)}</pre>
      ${run.error ? `<b>Error</b><pre>${esc(run.error)}</pre>` : ""}</div>
    <div class="card"><h3>Trace</h3>${trace}</div>
    <div class="card"><h3>Events <span class="muted">(${events.length})</span></h3>${renderEvents(events)}</div>`;
  opened.forEach((seq) => { const d = page.querySelector(`details.event[data-seq="${seq}"]`); if (d) d.open = true; });
  if (FINAL.includes(run.status) && page === view()) clearInterval(state.timer);  // nothing will change: stop polling
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

// Where each argument value came from: the user's words, trusted data, a declassified output,
// untrusted output (which call) or nowhere (invented); untrusted and invented key values are marked.
const ORIGIN = {
  user: "from the user's request", trusted: "trusted data", schema: "fixed choice",
  declassified: "allowed tool output", untrusted: "UNTRUSTED tool output", invented: "NOT IN THE CONVERSATION",
};

function provenanceTable(args) {
  if (!args.length) return "";
  return `<table class="provenance"><thead><tr><th>argument</th><th>value</th><th>came from</th></tr></thead><tbody>${
    args.map((x) => {
      const risky = x.key !== false && (x.origin === "untrusted" || x.origin === "invented");
      const where = (ORIGIN[x.origin] || x.origin) + ((x.sources || []).filter((s) => s !== "user").length
        ? ` (${x.sources.filter((s) => s !== "user").join(", ")})` : "") + (x.note && x.origin !== "invented" ? `; ${x.note}` : "");
      return `<tr class="${risky ? "risky" : ""}"><td>${esc(x.argument)}</td><td><code>${esc(x.value)}</code></td>
        <td class="origin ${esc(x.origin)}">${risky ? "⚠ " : ""}${esc(where)}</td></tr>`;
    }).join("")}</tbody></table>`;
}

async function renderApprovals() {
  const page = view();
  const items = await api("/v1/approvals");
  document.getElementById("approval-count").textContent = items.length || "";
  page.innerHTML = `<h2>Approvals</h2>` + (items.map((a) => a.interrupts.map((i) => {
    const p = i.payload || i.value || i;
    const ask = findApproval(p) || p;  // nested agents wrap the tool's approval request
    const risk = (ask.risk && ask.risk.text) || ask.risk_summary || ask.summary || ask;
    const level = (ask.risk && ask.risk.level) || "";
    return `<div class="card approval ${esc(level)}" data-run="${esc(a.run_id)}" data-interrupt="${esc(i.id || "")}">
      <div><b>${esc(a.agent)}</b> · ${esc(ask.tool || "")} · run <a href="#/runs/${esc(a.run_id)}">${esc(a.run_id)}</a>
        ${level ? `<span class="level ${esc(level)}">${esc(level)}</span>` : ""}</div>
      ${provenanceTable((ask.risk && ask.risk.arguments) || [])}
      <div class="risk"><b>Risk summary</b><pre>${fmtJSON(risk)}</pre></div>
      <label>Edited arguments (JSON, optional)<textarea rows="3" class="edit-args">${fmtJSON(ask.arguments || "")}</textarea></label>
      <p><button class="approve">Approve</button> <button class="edit">Approve with edits</button>
         <button class="reject">Reject</button></p></div>`;
  }).join("")).join("") || `<p class="muted">Nothing is waiting for a decision.</p>`);
  page.querySelectorAll(".approval").forEach((card) => {
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

// Spend without an agent (or user, tool ...) comes from the OpenAI-compatible proxy or direct
// gateway calls: it gets a name instead of a blank cell.
const costKey = (by, k) => (k === null || k === undefined || k === "" || k === "None")
  ? (by === "agent" ? "proxy (no agent)" : "(none)") : k;

async function renderCosts() {
  const page = view();
  const by = new URLSearchParams(location.hash.split("?")[1] || "").get("by") || "agent";
  let rows = [];
  try { rows = await api(`/v1/costs?by=${encodeURIComponent(by)}`); } catch (e) {
    page.innerHTML = `<h2>Costs</h2><p class="muted">${esc(e.message)}</p>`; return;
  }
  const max = Math.max(...rows.map((r) => r.cost_usd), 1e-12);
  page.innerHTML = `<h2>Costs by ${esc(by)}</h2>
    <p>${["tenant", "agent", "model", "tool", "user", "session"].map((d) =>
      `<a href="#/costs?by=${d}">${d}</a>`).join(" · ")}</p>
    <table id="costs-table"><thead><tr><th>${esc(by)}</th><th>Calls</th><th>Tokens in/out</th><th>Cost</th><th></th></tr></thead>
    <tbody>${rows.map((r) => `<tr><td>${esc(costKey(by, r.key))}</td><td>${r.calls}</td><td>${r.input_tokens}/${r.output_tokens}</td>
      <td>${fmtUSD(r.cost_usd)}</td><td>${r.cost_usd > 0
        ? `<span class="cost-bar" style="width:${Math.max((r.cost_usd / max) * 200, 1)}px"></span>` : ""}</td></tr>`).join("")
      || `<tr><td colspan="5" class="muted">No cost recorded yet.</td></tr>`}</tbody></table>
    <h3>Budgets</h3><div id="budgets" class="muted">…</div>
    <h3>Last 24 hours, by ${esc(by)}</h3><div id="cost-series" class="muted">…</div>`;
  renderBudgets(page.querySelector("#budgets"));
  if (["tenant", "run"].includes(by)) { page.querySelector("#cost-series").textContent = "(not available for this dimension)"; return; }
  try {
    const data = await api(`/v1/costs/series?by=${encodeURIComponent(by)}&hours=24&buckets=24`);
    // a series that spent nothing would be a label over an empty chart: left out
    const keys = Object.keys(data.series).filter((k) => data.series[k].some((v) => v > 0));
    const peak = Math.max(...keys.flatMap((k) => data.series[k]), 1e-12);
    const box = page.querySelector("#cost-series");
    box.innerHTML = keys.map((k) => `
      <div class="series-row" data-key="${esc(k)}"><span class="series-key" title="${esc(costKey(by, k))}">${esc(costKey(by, k))}</span><svg width="480" height="40" class="spark"><rect class="spark-bg" width="480" height="40"></rect>${
        data.series[k].map((v, i) => v > 0 ? `<rect x="${i * 20}" y="${40 - Math.max((v / peak) * 38, 1)}" width="16" height="${Math.max((v / peak) * 38, 1)}"><title>${fmtUSD(v)}</title></rect>` : "").join("")
      }</svg><span class="muted">${fmtUSD(data.series[k].reduce((a, b) => a + b, 0))}</span></div>`).join("")
      + (keys.length ? `<div class="series-row series-axis muted"><span class="series-key"></span><span class="spark-axis"><span>24 h ago</span><span>now</span></span></div>` : "")
      || "No spend in this window.";
    box.classList.toggle("muted", !keys.length);
  } catch (e) { page.querySelector("#cost-series").textContent = e.message; }
}

// Each limit of the tenant's budgets with its spend in the current period (GET /v1/budgets).
async function renderBudgets(box) {
  try {
    const data = await api("/v1/budgets");
    const amount = (usd, tokens) => [usd != null ? fmtUSD(usd) : "", tokens != null ? `${tokens} tok` : ""].filter(Boolean).join(" · ");
    box.classList.remove("muted");
    box.innerHTML = data.budgets.length ? `<table id="budgets-table"><thead><tr><th>Scope</th><th>Period</th>
      <th>Spent</th><th>Limit</th><th>Used</th><th>Resets</th></tr></thead><tbody>${data.budgets.map((b) => `<tr>
      <td>${esc(b.scope)} ${esc(b.id)}</td><td>${esc(b.period || "none")}${b.tz ? ` (${esc(b.tz)})` : ""}</td>
      <td>${amount(b.limit_usd != null ? b.spent_usd : null, b.limit_tokens != null ? b.spent_tokens : null)}</td>
      <td>${amount(b.limit_usd, b.limit_tokens)}</td>
      <td><span class="cost-bar${b.used >= 0.8 ? " over" : ""}" style="width:${Math.min(b.used, 1) * 120}px"></span> ${(b.used * 100).toFixed(0)}%</td>
      <td>${b.resets ? esc(b.resets.replace("T", " ").slice(0, 16)) : "never"}</td></tr>`).join("")}</tbody></table>`
      : (data.configured ? "No budget applies to this tenant yet." : "No budgets configured.");
  } catch (e) { box.textContent = e.message; }
}

// -- memory ---------------------------------------------------------------------------------

// Memory lives in namespaces (agent, user, scope) inside the caller's tenant; a search covers
// the chosen namespace and the shared levels above it. The choice is kept in the URL.
const NS_FIELDS = [["agent", "Agent", "shared (empty)"], ["user", "User", "shared (empty)"], ["scope", "Scope", "default (empty)"]];

async function renderMemory() {
  const page = view();
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  let agents = [];
  try { agents = await api("/v1/agents"); } catch (e) { /* suggestions only */ }
  page.innerHTML = `<h2>Memory</h2><form id="mem-form" class="mem-form">
    <fieldset id="mem-ns"><legend>Namespace</legend>${NS_FIELDS.map(([name, label, hint]) => `<label>${label}
      <input id="mem-${name}" name="${name}" value="${esc(params.get(name) || "")}" placeholder="${hint}" autocomplete="off"
        ${name === "agent" ? 'list="mem-agents"' : ""}></label>`).join("")}</fieldset>
    <div class="mem-search"><input type="search" id="mem-q" value="${esc(params.get("q") || "")}" placeholder="Search this namespace…">
      <button type="submit">Search</button></div></form>
    <datalist id="mem-agents">${agents.map((a) => `<option value="${esc(a.name)}">`).join("")}</datalist>
    <p class="muted">A search covers the namespace and the shared levels above it (scope, then user, then agent
      emptied). Scopes are named by the project, e.g. a knowledge base ingested under its own scope.</p>
    <div id="mem-results"></div>`;
  page.querySelector("#mem-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const q = page.querySelector("#mem-q").value;
    const out = page.querySelector("#mem-results");
    const query = new URLSearchParams({ q });
    NS_FIELDS.forEach(([name]) => { const v = page.querySelector(`#mem-${name}`).value.trim(); if (v) query.set(name, v); });
    history.replaceState(null, "", `#/memory?${query}`);
    if (!q.trim()) { out.innerHTML = `<p class="muted">Type something to search for.</p>`; return; }
    try {
      const hits = await api(`/v1/memory/search?${query}`);
      out.innerHTML = hits.map((h) => `<div class="card"><div class="muted">${esc(h.kind)} · score ${Number(h.score).toFixed(3)}${
        h.metadata && h.metadata.source ? ` · ${esc(h.metadata.source)}` : ""}
        ${h.trust === "untrusted" ? " · <b>untrusted</b>" : ""}</div><pre>${esc(h.text)}</pre></div>`).join("") || `<p class="muted">No matches.</p>`;
    } catch (e) { out.innerHTML = `<p class="muted">${esc(e.message)}</p>`; }
  };
  if (params.get("q")) page.querySelector("#mem-form").requestSubmit();
}

// -- evals ----------------------------------------------------------------------------------

// Two stored eval reports (PUT /v1/evals/reports/{name}) compared case by case; regressions first.
async function renderEvals() {
  const page = view();
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  let reports = [];
  try { reports = await api("/v1/evals/reports"); } catch (e) {
    page.innerHTML = `<h2>Evals</h2><p class="muted">${esc(e.message)}</p>`; return;
  }
  const names = reports.map((r) => r.name);
  const base = params.get("base") || names[names.length - 2] || "", head = params.get("head") || names[names.length - 1] || "";
  const pick = (id, chosen) => `<select id="${id}">${names.map((n) => `<option${n === chosen ? " selected" : ""}>${esc(n)}</option>`).join("")}</select>`;
  page.innerHTML = `<h2>Evals</h2><form id="eval-form">Compare ${pick("eval-base", base)} → ${pick("eval-head", head)}
    <button type="submit">Compare</button></form><div id="eval-diff" class="muted">${names.length < 2
      ? "Upload two reports (PUT /v1/evals/reports/{name} with the JSON of `bastion eval --out`) to compare them." : ""}</div>`;
  page.querySelector("#eval-form").onsubmit = (ev) => {
    ev.preventDefault();
    location.hash = `#/evals?${new URLSearchParams({ base: page.querySelector("#eval-base").value, head: page.querySelector("#eval-head").value })}`;
  };
  if (names.length < 2 || !base || !head) return;
  const box = page.querySelector("#eval-diff");
  try {
    const d = await api(`/v1/evals/compare?${new URLSearchParams({ base, head })}`);
    const pct = (v) => v == null ? "–" : `${(v * 100).toFixed(0)}%`;
    box.classList.remove("muted");
    box.innerHTML = `<p>${Object.entries(d.counts).filter(([, n]) => n).map(([k, n]) => `${esc(k.replace("_", " "))}: <b>${n}</b>`).join(" · ")}
      · pass rate ${d.pass_rate_delta >= 0 ? "+" : ""}${(d.pass_rate_delta * 100).toFixed(1)} pts</p>
      <table id="eval-diff-table"><thead><tr><th>Case</th><th>Change</th><th>${esc(base)}</th><th>${esc(head)}</th><th>Score deltas</th></tr></thead>
      <tbody>${d.cases.map((c) => `<tr class="change-${esc(c.change)}" data-case="${esc(c.case_id)}"><td>${esc(c.case_id)}</td>
        <td>${esc(c.change.replace("_", " "))}</td><td>${pct(c.base_pass_rate)}</td><td>${pct(c.head_pass_rate)}</td>
        <td>${Object.entries(c.score_deltas).filter(([, v]) => Math.abs(v) > 1e-9).map(([k, v]) => `${esc(k)} ${v > 0 ? "+" : ""}${v.toFixed(2)}`).join(", ")}</td></tr>`).join("")}</tbody></table>`;
  } catch (e) { box.textContent = e.message; }
}

// -- router ---------------------------------------------------------------------------------

async function route() {
  captureKeyFromHash();
  if (!state.key) { askForKey(); return; }
  const hash = location.hash || "#/runs";
  const [, tab, id] = hash.split("?")[0].split("/");
  newPage();
  const page = view();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  try {
    if (tab === "runs" && id) every(2000, () => renderRun(id));
    else if (tab === "approvals") { clearInterval(state.timer); await renderApprovals(); }
    else if (tab === "costs") { clearInterval(state.timer); await renderCosts(); }
    else if (tab === "memory") { clearInterval(state.timer); await renderMemory(); }
    else if (tab === "evals") { clearInterval(state.timer); await renderEvals(); }
    else every(2000, renderRuns);
    api("/v1/approvals").then((a) => { document.getElementById("approval-count").textContent = a.length || ""; }).catch(() => {});
  } catch (e) {
    page.innerHTML = `<p class="muted">${esc(e.message)}</p>`;
  }
}

window.addEventListener("hashchange", route);
route();
