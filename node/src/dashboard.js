"use strict";
// The dashboard: one page, no build step. It reads the node's own API (/v1/cluster,
// /v1/jobs, /v1/jobs/{id}/events, TES /ga4gh/tes/v1/tasks) with the token kept in session
// storage, and redraws the page shown by the URL's hash every few seconds.
const TOKEN_KEY = "shoal-token";
const REFRESH_MS = 1500;
let generation = 0;
let timer = null;
let stream = null;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const headers = { "Accept": "application/json" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({ headers }, options || {}));
  if (response.status === 401) showLogin(true);
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (_) {}
    throw new HttpError(response.status, message);
  }
  showLogin(false);
  return response.json();
}

// A sticky message (a refused action) stays until the next action or page; others go with
// the next refresh that works.
function showMessage(text, sticky) {
  const box = document.getElementById("message");
  box.dataset.sticky = sticky ? "1" : "";
  box.textContent = text || "";
  box.classList.toggle("shown", Boolean(text));
}

function showLogin(shown) {
  document.getElementById("login").classList.toggle("shown", shown);
}

function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function stateCell(state) { return el("td", { class: "state " + state }, state); }

function progress(counts) {
  const total = Math.max(counts.total, 1);
  const done = 100 * (counts.done + (counts.skipped || 0)) / total;
  const failed = 100 * counts.failed / total;
  // Sizes go through the CSSOM: the page's policy allows no inline style attributes.
  const doneBar = el("span", { class: "done" });
  doneBar.style.width = done + "%";
  const failedBar = el("span", { class: "failed" });
  failedBar.style.left = done + "%";
  failedBar.style.width = failed + "%";
  return el("span", { class: "bar", title: `${counts.done} done, ${counts.failed} failed of ${counts.total}` },
    doneBar, failedBar);
}

function table(id, headings, rows) {
  return el("div", { class: "scroll" }, el("table", { id },
    el("thead", {}, el("tr", {}, headings.map(h => el("th", h.wide ? { class: "wide" } : {}, h.text || h)))),
    el("tbody", {}, rows)));
}

// --- pages ----------------------------------------------------------------------------------

async function overview() {
  const [cluster, jobs] = await Promise.all([
    api("/v1/cluster?consistency=stale"),
    api("/v1/jobs?kind=all&page_size=50"),
  ]);
  document.getElementById("node").textContent = "node " + (cluster.members.find(m => m.node_id === cluster.node_id) || { name: cluster.node_id }).name;
  const leader = cluster.members.find(m => m.leader);
  const members = cluster.members.map(m => el("tr", { "data-node": m.name },
    el("td", {}, m.name, m.leader ? el("span", { class: "muted" }, " (leader)") : null),
    el("td", { class: "wide" }, m.node_id),
    el("td", {}, m.role),
    el("td", {}, m.executor || ""),
    el("td", { class: "running" }, m.running ?? ""),
    el("td", {}, m.slots ?? ""),
    el("td", {}, m.last_heartbeat ? age(m.last_heartbeat) + " ago" : ""),
    el("td", { class: "draining" }, m.draining ? "draining" : ""),
    el("td", {}, el("button", {
      class: m.draining ? "undrain" : "drain", type: "button", "data-node": m.name,
      onclick: () => nodeAction(m.name, m.draining ? "undrain" : "drain"),
    }, m.draining ? "undrain" : "drain"))));
  const rows = jobs.jobs.map(j => {
    const link = j.kind === "task" ? "#/tasks/" + encodeURIComponent(j.id) : "#/jobs/" + encodeURIComponent(j.id);
    return el("tr", { "data-id": j.id },
      el("td", {}, j.kind),
      el("td", {}, el("a", { href: link }, j.id)),
      el("td", {}, j.name),
      el("td", { class: "wide" }, j.owner),
      stateCell(j.state),
      el("td", {}, progress(j.counts), " ", `${j.counts.done}/${j.counts.total}`),
      el("td", { class: "wide" }, j.datums_per_second ? j.datums_per_second.toFixed(1) + "/s" : ""),
      el("td", {}, age(j.created)));
  });
  return [
    el("section", {},
      el("h2", {}, "Cluster"),
      el("div", { class: "facts" },
        el("span", {}, "cluster ", el("b", {}, cluster.cluster_id || "forming")),
        el("span", {}, "leader ", el("b", { id: "leader" }, leader ? leader.name : "none")),
        el("span", {}, "term ", el("b", {}, cluster.term)),
        el("span", {}, "applied ", el("b", {}, cluster.applied_index ?? "")))),
    el("section", {},
      el("h2", {}, `Members (${cluster.members.length})`),
      table("members", ["name", { text: "id", wide: true }, "role", "executor", "running", "slots", "heartbeat", "", ""], members)),
    el("section", {},
      el("h2", {}, "Tasks and jobs"),
      rows.length ? table("jobs", ["kind", "id", "name", { text: "owner", wide: true }, "state", "datums", { text: "rate", wide: true }, "age"], rows)
        : el("p", { class: "muted", id: "jobs-empty" }, "No tasks or jobs to show.")),
  ];
}

async function nodeAction(name, action) {
  try {
    await api(`/v1/cluster/nodes/${encodeURIComponent(name)}:${action}`, { method: "POST" });
    showMessage("");
    render();
  } catch (error) {
    showMessage(`${action} ${name}: ${error.message}`, true);
  }
}

function executorLogs(logs) {
  return (logs || []).map((log, i) => el("div", { class: "executor" },
    el("p", { class: "muted" }, `executor ${i}`, log.exit_code !== undefined && log.exit_code !== null ? ` — exit code ${log.exit_code}` : " — running"),
    el("pre", { class: "stdout" }, log.stdout || ""),
    log.stderr ? el("pre", { class: "stderr" }, log.stderr) : null));
}

async function taskPage(id) {
  const task = await api("/ga4gh/tes/v1/tasks/" + encodeURIComponent(id) + "?view=FULL");
  const attempts = (task.logs || []).map((log, i) => el("section", { class: "attempt" },
    el("h2", {}, `Attempt ${i + 1}`),
    el("div", { class: "facts" },
      el("span", {}, "started ", el("b", {}, log.start_time || "")),
      el("span", {}, "ended ", el("b", {}, log.end_time || ""))),
    (log.system_logs || []).length ? el("pre", { class: "system" }, log.system_logs.join("\n")) : null,
    executorLogs(log.logs)));
  return [
    el("section", {},
      el("h2", {}, "Task ", el("span", { id: "task-id" }, task.id)),
      el("div", { class: "facts" },
        el("span", {}, "state ", el("b", { class: "state " + task.state, id: "task-state" }, task.state)),
        el("span", {}, "name ", el("b", {}, task.name || "")),
        el("span", {}, "created ", el("b", {}, task.creation_time || "")))),
    el("section", {}, el("h2", {}, "Executors"),
      (task.executors || []).map(e => el("pre", {}, (e.image ? e.image + ": " : "") + (e.command || []).join(" ")))),
    attempts,
  ];
}

function watchJob(id, onJob) {
  // The job's change feed (server-sent events), read with fetch so the token can be sent.
  const controller = new AbortController();
  const headers = token() ? { "Authorization": "Bearer " + token() } : {};
  fetch("/v1/jobs/" + encodeURIComponent(id) + "/events", { headers, signal: controller.signal })
    .then(async response => {
      if (!response.ok || !response.body) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5)).join("\n");
          if (data) onJob(JSON.parse(data));
        }
      }
    })
    .catch(() => {});
  return controller;
}

async function jobPage(id) {
  const [job, datums] = await Promise.all([
    api("/v1/jobs/" + encodeURIComponent(id)),
    api("/v1/jobs/" + encodeURIComponent(id) + "/datums?page_size=100"),
  ]);
  const rows = datums.datums.map(d => {
    const last = d.attempts[d.attempts.length - 1];
    return el("tr", {},
      el("td", {}, el("a", { href: `#/datums/${encodeURIComponent(d.id)}?job=${encodeURIComponent(job.id)}` }, d.index)),
      stateCell(d.state),
      el("td", {}, d.attempts.length),
      el("td", {}, last ? last.node : ""),
      el("td", { class: "wide" }, last && last.error ? last.error : ""));
  });
  const summary = el("div", { class: "facts", id: "job-facts" });
  // The change feed outlives each redraw: it fills whichever summary the page shows now.
  const fill = (j, target) => (target || document.getElementById("job-facts") || summary).replaceChildren(
    el("span", {}, "state ", el("b", { class: "state " + j.state, id: "job-state" }, j.state)),
    el("span", {}, progress(j.counts), ` ${j.counts.done} done, ${j.counts.failed} failed, ${j.counts.running} running of ${j.counts.total}`),
    el("span", {}, "rate ", el("b", {}, j.datums_per_second.toFixed(1) + "/s")),
    el("span", {}, "owner ", el("b", {}, j.owner)),
    el("span", {}, "age ", el("b", {}, age(j.created))));
  fill(job, summary);
  if (!stream) stream = watchJob(job.id, j => fill(j));
  return [
    el("section", {}, el("h2", {}, `Job ${job.name} (${job.id})`), summary,
      job.error ? el("p", { class: "state error" }, job.error) : null),
    el("section", {}, el("h2", {}, "Datums"),
      table("datums", ["index", "state", "attempts", "node", { text: "error", wide: true }], rows)),
  ];
}

async function datumPage(id, query) {
  const job = new URLSearchParams(query).get("job");
  const suffix = job ? "?job=" + encodeURIComponent(job) : "";
  const [datum, logs] = await Promise.all([
    api("/v1/datums/" + encodeURIComponent(id) + suffix),
    api("/v1/datums/" + encodeURIComponent(id) + "/logs" + suffix),
  ]);
  return [
    el("section", {}, el("h2", {}, `Datum ${datum.index} of `, el("a", { href: "#/jobs/" + encodeURIComponent(datum.job) }, datum.job)),
      el("div", { class: "facts" }, el("span", {}, "state ", el("b", { class: "state " + datum.state }, datum.state))),
      el("ul", {}, datum.inputs.map(i => el("li", {}, `${i.path} ← ${i.url}`)))),
    logs.attempts.map(a => el("section", { class: "attempt" },
      el("h2", {}, `Attempt ${a.attempt} on ${a.node}`), executorLogs(a.executors))),
  ];
}

// --- routing and refresh ---------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "tasks" && parts[1]) return () => taskPage(parts[1]);
  if (parts[0] === "jobs" && parts[1]) return () => jobPage(parts[1]);
  if (parts[0] === "datums" && parts[1]) return () => datumPage(parts[1], query || "");
  return overview;
}

async function render() {
  const mine = ++generation;
  clearTimeout(timer);
  try {
    const content = await route()();
    if (mine !== generation) return;
    document.getElementById("view").replaceChildren(...[content].flat(2).filter(Boolean));
    if (document.getElementById("message").dataset.sticky !== "1") showMessage("");
  } catch (error) {
    if (mine !== generation) return;
    if (!(error instanceof HttpError && error.status === 401)) showMessage(error.message);
  }
  if (mine === generation) timer = setTimeout(render, REFRESH_MS);
}

window.addEventListener("hashchange", () => {
  if (stream) { stream.abort(); stream = null; }
  showMessage("");
  render();
});
document.getElementById("token-form").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
  document.getElementById("token-input").value = "";
  if (stream) { stream.abort(); stream = null; }
  render();
});
document.getElementById("token-clear").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  render();
});
document.getElementById("token-button").addEventListener("click", () => showLogin(true));
render();
