// farmhand's mock farm monitor: vanilla JS, served by the farm itself (no CDN).
//
// Routes (the URL's hash): #/jobs, #/jobs/<id>, #/sessions/<id>, #/workers, #/farm.
// The page reads /monitor/api/... (JSON, paged on the server) and follows the farm
// through /monitor/api/events (server-sent events: "the farm changed"), re-reading
// what it shows; a session's log follows /monitor/api/sessions/<id>/log/stream.
// Text from the farm only ever goes into textContent (no HTML from data).
"use strict";

const API = "/monitor/api";
const PAGE = 50;
const TASK_STATUSES = ["PENDING", "READY", "ASSIGNED", "STARTING", "SCHEDULED", "INTERRUPTING",
  "RUNNING", "SUSPENDED", "CANCELED", "FAILED", "SUCCEEDED", "NOT_COMPATIBLE"];

const state = {
  overview: null,
  route: null,
  view: null, // the current view: {refresh(), close()}
  refreshing: false,
  dirty: false,
};

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// Replace a node's children (null and undefined left out, as el() does).
function put(node, ...children) {
  clear(node);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

async function getJson(path) {
  const response = await fetch(API + path, { cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

function time(iso) {
  if (!iso) return "–";
  const moment = new Date(iso);
  const today = new Date();
  const clock = moment.toLocaleTimeString([], { hour12: false });
  return moment.toDateString() === today.toDateString()
    ? clock
    : `${moment.toLocaleDateString()} ${clock}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${Math.round(seconds % 60)}s`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  return `${duration(seconds)} ago`;
}

function short(id) {
  if (!id) return "–";
  const [kind, rest] = [id.split("-")[0], id.split("-").slice(1).join("-")];
  return rest.length > 12 ? `${kind}-${rest.slice(0, 8)}…` : id;
}

function status(value) {
  return el("span", { class: "status", "data-status": value || "", text: value || "–" });
}

function progress(counts, total) {
  const bar = el("div", { class: "progress", title: countsText(counts) });
  for (const name of TASK_STATUSES) {
    const n = counts[name] || 0;
    if (!n || !total) continue;
    const part = el("span", { class: `s-${name}` });
    part.style.width = `${(100 * n) / total}%`;
    bar.append(part);
  }
  const done = counts.SUCCEEDED || 0;
  return el("div", {}, bar, el("div", { class: "progress-text", text: `${done} / ${total} succeeded` }));
}

function countsText(counts) {
  return Object.entries(counts).map(([k, v]) => `${k.toLowerCase()} ${v}`).join(", ");
}

function notice(text, kind) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.dataset.kind = kind || "info";
  box.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 8000 : 3000);
}

function table(headers, rows, empty) {
  if (!rows.length) return el("div", { class: "empty", text: empty || "nothing here" });
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows));
}

// A pager for one server-side page: {total, offset, limit}.
function pager(page, go) {
  const first = page.total ? page.offset + 1 : 0;
  const last = Math.min(page.offset + page.limit, page.total);
  return el("div", { class: "pager" },
    el("button", {
      class: "small", "data-page": "prev", disabled: page.offset <= 0,
      onclick: () => go(Math.max(0, page.offset - page.limit)),
    }, "‹ prev"),
    el("span", { class: "page-range", text: `${first}–${last} of ${page.total.toLocaleString()}` }),
    el("button", {
      class: "small", "data-page": "next", disabled: last >= page.total,
      onclick: () => go(page.offset + page.limit),
    }, "next ›"));
}

function actionsAllowed() {
  return Boolean(state.overview && state.overview.actionsAllowed);
}

function actionButton(label, request, options) {
  const allowed = actionsAllowed();
  return el("button", {
    class: `small ${(options && options.danger) ? "danger" : ""}`,
    "data-action": request.action,
    disabled: !allowed,
    title: allowed ? null : "read-only: start the farm with --monitor-actions to allow changes",
    onclick: (event) => { event.stopPropagation(); act(request); },
  }, label);
}

async function act(request) {
  try {
    const response = await fetch(`${API}/actions`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Farmhand-Monitor": "1" },
      body: JSON.stringify(request),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || response.statusText);
    notice(`${request.action.replace(/_/g, " ")}: done`);
    refresh();
  } catch (error) {
    notice(`${request.action.replace(/_/g, " ")}: ${error.message}`, "error");
  }
}

// ------------------------------------------------------------------ routing

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "") || "jobs";
  const [path, search] = hash.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(search || "") };
}

function go(parts, params) {
  const search = params ? query(params) : "";
  location.hash = `#/${parts.join("/")}${search}`;
}

function route() {
  if (state.view && state.view.close) state.view.close();
  const { parts, params } = parseRoute();
  state.route = { parts, params };
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("active", link.dataset.nav === parts[0] ||
      (link.dataset.nav === "jobs" && parts[0] === "sessions"));
  }
  const main = clear(document.getElementById("view"));
  if (parts[0] === "jobs" && parts[1]) state.view = jobView(main, parts[1], params);
  else if (parts[0] === "sessions" && parts[1]) state.view = sessionView(main, parts[1], params);
  else if (parts[0] === "workers") state.view = workersView(main, params);
  else if (parts[0] === "farm") state.view = farmView(main);
  else state.view = jobsView(main, params);
  refresh();
}

// Re-read what the view shows: one at a time, once more if the farm changed meanwhile.
async function refresh() {
  if (state.refreshing) { state.dirty = true; return; }
  state.refreshing = true;
  try {
    do {
      state.dirty = false;
      const view = state.view;
      try {
        state.overview = await getJson("/overview");
        showOverview();
        if (view === state.view) await view.refresh();
      } catch (error) {
        if (view === state.view && view.failed) view.failed(error);
      }
    } while (state.dirty);
  } finally {
    state.refreshing = false;
  }
}

function showOverview() {
  const o = state.overview;
  document.getElementById("endpoint").textContent = o.endpointUrl;
  const mode = document.getElementById("mode");
  mode.textContent = o.actionsAllowed ? "actions allowed" : "read-only";
  mode.dataset.actions = String(o.actionsAllowed);
}

function follow() {
  const live = document.getElementById("live");
  const events = new EventSource(`${API}/events`);
  events.addEventListener("open", () => { live.dataset.state = "open"; live.textContent = "live"; });
  events.addEventListener("error", () => { live.dataset.state = "error"; live.textContent = "reconnecting"; });
  events.addEventListener("change", () => refresh());
}

function failedInto(node) {
  return (error) => {
    put(node, el("p", { class: "empty", text: `cannot read it: ${error.message}` }));
  };
}

// ------------------------------------------------------------------ views

function jobsView(main, params) {
  const offset = Number(params.get("offset") || 0);
  const queue = params.get("queue") || "";
  const wanted = params.get("status") || "";
  const queueSelect = el("select", { id: "queue-filter", onchange: () => go(["jobs"], { queue: queueSelect.value, status: wanted }) },
    el("option", { value: "", text: "all queues" }));
  const statusSelect = el("select", { id: "status-filter", onchange: () => go(["jobs"], { queue, status: statusSelect.value }) },
    el("option", { value: "", text: "any status" }),
    TASK_STATUSES.map((s) => el("option", { value: s, text: s, selected: s === wanted })));
  const pagerSlot = el("div", { class: "pager-slot" });
  const body = el("div", { id: "jobs" });
  main.append(el("h1", { id: "view-title", text: "Jobs" }),
    el("div", { class: "toolbar" }, el("label", { text: "queue" }), queueSelect,
      el("label", { text: "status" }), statusSelect, pagerSlot),
    el("section", { class: "panel" }, body));
  let queuesShown = false;
  return {
    failed: failedInto(body),
    async refresh() {
      if (!queuesShown && state.overview) {
        for (const q of state.overview.queues) {
          queueSelect.append(el("option", { value: q.queueId, text: `${q.name} (${q.jobs})`, selected: q.queueId === queue }));
        }
        queuesShown = true;
      }
      const page = await getJson(`/jobs${query({ queue, status: wanted, offset, limit: PAGE })}`);
      put(pagerSlot, pager(page, (o) => go(["jobs"], { queue, status: wanted, offset: o })));
      const rows = page.items.map((job) => el("tr", {
        class: "clickable", "data-job-id": job.jobId, onclick: () => go(["jobs", job.jobId]),
      },
      el("td", {}, el("a", { href: `#/jobs/${job.jobId}`, class: "job-name", text: job.name }),
        el("div", { class: "muted mono", text: job.jobId })),
      el("td", { class: "job-status" }, status(job.status),
        job.targetStatus ? el("div", { class: "muted", text: `→ ${job.targetStatus}` }) : null),
      el("td", {}, progress(job.taskCounts, job.tasks)),
      el("td", { class: "job-priority", text: job.priority }),
      el("td", { class: "mono", text: job.createdBy.split("/").pop() }),
      el("td", { text: time(job.createdAt) }),
      el("td", { text: time(job.startedAt) }),
      el("td", { text: time(job.endedAt) })));
      put(body, table(["job", "status", "progress", "priority", "submitter", "created", "started", "ended"],
        rows, "no jobs yet: submit one (python -m agent mockfarm submit JOB.yaml)"));
    },
  };
}

function jobView(main, jobId, params) {
  const header = el("section", { class: "panel", id: "job-header" });
  const actions = el("div", { class: "toolbar", id: "job-actions" });
  const steps = el("div", { id: "steps" });
  const tasks = el("div", { id: "tasks" });
  const tasksTitle = el("h2", { text: "Tasks" });
  const taskTools = el("div", { class: "toolbar" });
  const sessions = el("div", { id: "sessions" });
  const sessionTools = el("div", { class: "toolbar" });
  main.append(el("div", {}, el("a", { href: "#/jobs", text: "← jobs" })),
    el("h1", { id: "view-title", text: "Job" }), header, actions,
    el("h2", { text: "Steps" }), el("section", { class: "panel" }, steps),
    tasksTitle, taskTools, el("section", { class: "panel" }, tasks),
    el("h2", { text: "Sessions" }), sessionTools, el("section", { class: "panel" }, sessions));
  const view = { step: params.get("step"), taskStatus: params.get("tstatus") || "", taskOffset: Number(params.get("toffset") || 0), sessionOffset: Number(params.get("soffset") || 0) };
  const reroute = (changes) => {
    const next = { ...view, ...changes };
    go(["jobs", jobId], { step: next.step, tstatus: next.taskStatus, toffset: next.taskOffset || "", soffset: next.sessionOffset || "" });
  };
  const priority = el("input", { type: "number", min: 0, max: 100, id: "priority-input" });
  let actionsShown = false;
  function showActions(job) {
    if (actionsShown) return;
    actionsShown = true;
    priority.value = job.priority;
    const allowed = actionsAllowed();
    priority.disabled = !allowed;
    actions.append(
      actionButton("Cancel job", { action: "cancel_job", jobId }, { danger: true }),
      actionButton("Suspend", { action: "suspend_job", jobId }),
      actionButton("Requeue", { action: "requeue_job", jobId }),
      el("label", { text: "priority" }), priority,
      el("button", {
        class: "small", "data-action": "set_priority", disabled: !allowed,
        onclick: () => act({ action: "set_priority", jobId, priority: Number(priority.value) }),
      }, "Set"));
  }
  return {
    failed: failedInto(header),
    async refresh() {
      const job = await getJson(`/jobs/${encodeURIComponent(jobId)}`);
      document.getElementById("view-title").textContent = job.name;
      showActions(job);
      put(header, 
        el("div", { class: "toolbar" }, el("span", { id: "job-status" }, status(job.status)),
          job.targetStatus ? el("span", { class: "muted", text: `target ${job.targetStatus}` }) : null,
          progress(job.taskCounts, job.tasks)),
        el("dl", { class: "meta" },
          el("dt", { text: "job" }), el("dd", { class: "mono", text: job.jobId }),
          el("dt", { text: "priority" }), el("dd", { id: "job-priority", text: job.priority }),
          el("dt", { text: "submitter" }), el("dd", { class: "mono", text: job.createdBy }),
          el("dt", { text: "created" }), el("dd", { text: time(job.createdAt) }),
          el("dt", { text: "started" }), el("dd", { text: time(job.startedAt) }),
          el("dt", { text: "ended" }), el("dd", { text: time(job.endedAt) }),
          el("dt", { text: "retries" }), el("dd", { text: `${job.retries} (at most ${job.maxRetriesPerTask} per task)` }),
          el("dt", { text: "failures" }), el("dd", { text: `${job.failureCount} (fails at ${job.maxFailedTasksCount})` }),
          el("dt", { text: "sessions" }), el("dd", { text: `${job.sessions} (${job.activeSessions} active)` })),
        job.lifecycleMessage ? el("p", { class: "muted", text: job.lifecycleMessage }) : null);
      if (!view.step && job.steps.length) view.step = job.steps[0].stepId;
      put(steps, table(["step", "status", "progress", "retries", "depends on", "started", "ended"],
        job.steps.map((s) => el("tr", {
          class: `clickable ${s.stepId === view.step ? "selected" : ""}`, "data-step-id": s.stepId,
          onclick: () => reroute({ step: s.stepId, taskOffset: 0 }),
        },
        el("td", { text: s.name }), el("td", {}, status(s.status)), el("td", {}, progress(s.taskCounts, s.tasks)),
        el("td", { text: s.retries }), el("td", { text: s.dependencies.join(", ") || "–" }),
        el("td", { text: time(s.startedAt) }), el("td", { text: time(s.endedAt) })))));
      const step = job.steps.find((s) => s.stepId === view.step);
      if (step) {
        tasksTitle.textContent = `Tasks of ${step.name}`;
        const page = await getJson(`/jobs/${encodeURIComponent(jobId)}/steps/${encodeURIComponent(step.stepId)}/tasks${query({ status: view.taskStatus, offset: view.taskOffset, limit: PAGE })}`);
        const filter = el("select", { id: "task-status-filter", onchange: () => reroute({ taskStatus: filter.value, taskOffset: 0 }) },
          el("option", { value: "", text: "any status" }),
          TASK_STATUSES.map((s) => el("option", { value: s, text: s, selected: s === view.taskStatus })));
        put(taskTools, el("label", { text: "status" }), filter, pager(page, (o) => reroute({ taskOffset: o })));
        put(tasks, table(["#", "parameters", "status", "retries", "started", "ended", "run time", "session", ""],
          page.items.map((t) => el("tr", { "data-task-id": t.taskId },
            el("td", { text: t.index }),
            el("td", { class: "kv" }, Object.entries(t.parameters).map(([k, v]) => el("span", { text: `${k}=${v}` }))),
            el("td", { class: "task-status" }, status(t.status), t.targetStatus ? el("div", { class: "muted", text: `→ ${t.targetStatus}` }) : null),
            el("td", { text: t.retries }), el("td", { text: time(t.startedAt) }), el("td", { text: time(t.endedAt) }),
            el("td", { text: duration(t.runSeconds) }),
            el("td", {}, t.sessionId ? el("a", { href: `#/sessions/${t.sessionId}`, class: "mono", text: short(t.sessionId) }) : "–"),
            el("td", {}, actionButton("cancel", { action: "cancel_task", jobId, taskId: t.taskId }, { danger: true }), " ",
              actionButton("suspend", { action: "suspend_task", jobId, taskId: t.taskId }), " ",
              actionButton("requeue", { action: "requeue_task", jobId, taskId: t.taskId })))),
          "no tasks with that status"));
      } else {
        clear(taskTools);
        put(tasks, el("div", { class: "empty", text: "this job has no steps" }));
      }
      const sessionPage = await getJson(`/jobs/${encodeURIComponent(jobId)}/sessions${query({ offset: view.sessionOffset, limit: PAGE })}`);
      put(sessionTools, pager(sessionPage, (o) => reroute({ sessionOffset: o })));
      put(sessions, table(["session", "worker", "host", "lifecycle", "actions", "started", "ended"],
        sessionPage.items.map((s) => el("tr", { class: "clickable", "data-session-id": s.sessionId, onclick: () => go(["sessions", s.sessionId]) },
          el("td", {}, el("a", { href: `#/sessions/${s.sessionId}`, class: "mono", text: s.sessionId })),
          el("td", { class: "mono", text: short(s.workerId) }), el("td", { text: s.hostName || "–" }),
          el("td", {}, status(s.lifecycleStatus)), el("td", { text: `${s.actions} (${s.openActions} open)` }),
          el("td", { text: time(s.startedAt) }), el("td", { text: time(s.endedAt) }))),
        "no sessions yet: no worker has taken this job"));
    },
  };
}

function sessionView(main, sessionId, params) {
  const header = el("section", { class: "panel", id: "session-header" });
  const actionTools = el("div", { class: "toolbar" });
  const actionsBox = el("div", { id: "session-actions" });
  const followBox = el("input", { type: "checkbox", id: "log-follow", checked: true });
  const earlier = el("button", { class: "small", id: "log-earlier", hidden: true }, "load earlier lines");
  const logInfo = el("span", { class: "muted", id: "log-info" });
  const logBox = el("div", { id: "log", "data-lines": "0" });
  main.append(el("div", {}, el("a", { id: "back-to-job", href: "#/jobs", text: "← job" })),
    el("h1", { id: "view-title", text: `Session ${sessionId}` }), header,
    el("h2", { text: "Actions" }), actionTools, el("section", { class: "panel" }, actionsBox),
    el("h2", { text: "Log" }),
    el("div", { class: "toolbar" }, el("label", {}, followBox, " follow"), earlier, logInfo),
    logBox);
  let actionOffset = Number(params.get("aoffset") || 0);
  let first = null; // index of the first line shown
  let lines = 0;
  let kept = true;

  function lineNode(line) {
    const text = line.message;
    let kind = "";
    if (text.startsWith("[farmhand] usage:")) kind = "usage";
    else if (text.startsWith("[farmhand]")) kind = "farmhand";
    else if (text.startsWith("openjd_")) kind = "openjd";
    return el("div", { class: `log-line ${kind}`, "data-index": line.index },
      el("span", { class: "log-time", text: new Date(line.timestamp).toLocaleTimeString([], { hour12: false }) }),
      text);
  }
  function showInfo() {
    logInfo.textContent = kept
      ? `${lines.toLocaleString()} line(s) shown${first ? `, ${first.toLocaleString()} earlier` : ""}`
      : "this farm keeps no log events (FarmConfig.keep_log_events is off)";
    earlier.hidden = !first;
    logBox.dataset.lines = String(lines);
  }
  const stream = new EventSource(`${API}/sessions/${encodeURIComponent(sessionId)}/log/stream`);
  stream.addEventListener("start", (event) => {
    const start = JSON.parse(event.data);
    if (first === null) { first = start.first; }
    kept = start.kept;
    showInfo();
  });
  stream.addEventListener("lines", (event) => {
    const batch = JSON.parse(event.data);
    const fragment = document.createDocumentFragment();
    const last = logBox.lastElementChild;
    const after = last ? Number(last.dataset.index) : -1;
    for (const line of batch) {
      if (line.index <= after) continue; // a reconnect resends what it had
      fragment.append(lineNode(line));
      lines += 1;
    }
    logBox.append(fragment);
    if (followBox.checked) logBox.scrollTop = logBox.scrollHeight;
    showInfo();
  });
  earlier.addEventListener("click", async () => {
    const limit = Math.min(500, first);
    const offset = first - limit;
    const page = await getJson(`/sessions/${encodeURIComponent(sessionId)}/log${query({ offset, limit })}`);
    const fragment = document.createDocumentFragment();
    page.items.forEach((line, i) => fragment.append(lineNode({ ...line, index: offset + i })));
    logBox.prepend(fragment);
    lines += page.items.length;
    first = offset;
    showInfo();
  });
  return {
    close() { stream.close(); },
    failed: failedInto(header),
    async refresh() {
      const s = await getJson(`/sessions/${encodeURIComponent(sessionId)}`);
      document.getElementById("back-to-job").setAttribute("href", `#/jobs/${s.jobId}`);
      document.getElementById("back-to-job").textContent = `← ${s.jobName}`;
      put(header, 
        el("div", { class: "toolbar" }, el("span", { id: "session-status" }, status(s.lifecycleStatus))),
        el("dl", { class: "meta" },
          el("dt", { text: "job" }), el("dd", {}, el("a", { href: `#/jobs/${s.jobId}`, text: s.jobName })),
          el("dt", { text: "worker" }), el("dd", { class: "mono", text: s.workerId }),
          el("dt", { text: "host" }), el("dd", { text: s.hostName || "–" }),
          el("dt", { text: "started" }), el("dd", { text: time(s.startedAt) }),
          el("dt", { text: "ended" }), el("dd", { text: time(s.endedAt) }),
          el("dt", { text: "log" }), el("dd", { class: "mono", text: `${s.logGroupName} ${s.logStreamName}` })));
      const page = await getJson(`/sessions/${encodeURIComponent(sessionId)}/actions${query({ offset: actionOffset, limit: PAGE })}`);
      put(actionTools, pager(page, (o) => { actionOffset = o; refresh(); }));
      put(actionsBox, table(["#", "action", "status", "started", "ended", "run time", "exit", "progress"],
        page.items.map((a) => el("tr", { "data-action-id": a.sessionActionId },
          el("td", { text: a.index }),
          el("td", {}, el("span", { class: "mono", text: a.kind }), " ", a.what),
          el("td", { class: "action-status" }, status(a.status), a.cancelRequested && !a.endedAt ? el("div", { class: "muted", text: "cancel sent" }) : null),
          el("td", { text: time(a.startedAt) }), el("td", { text: time(a.endedAt) }),
          el("td", { text: duration(a.runSeconds) }),
          el("td", { text: a.processExitCode ?? "–" }),
          el("td", { text: a.progressPercent !== null ? `${Math.round(a.progressPercent)} %${a.progressMessage ? ` ${a.progressMessage}` : ""}` : (a.progressMessage || "–") })))));
    },
  };
}

function workersView(main, params) {
  const offset = Number(params.get("offset") || 0);
  const pagerSlot = el("div", { class: "pager-slot" });
  const body = el("div", { id: "workers" });
  main.append(el("h1", { id: "view-title", text: "Workers" }), el("div", { class: "toolbar" }, pagerSlot),
    el("section", { class: "panel" }, body));
  return {
    failed: failedInto(body),
    async refresh() {
      const page = await getJson(`/workers${query({ offset, limit: PAGE })}`);
      put(pagerSlot, pager(page, (o) => go(["workers"], { offset: o })));
      put(body, table(["worker", "status", "host", "capabilities", "current session", "last heartbeat", ""],
        page.items.map((w) => el("tr", { "data-worker-id": w.workerId },
          el("td", { class: "mono", text: w.workerId }),
          el("td", { class: "worker-status" }, status(w.status), w.stopRequested ? el("div", { class: "muted", text: "stop requested" }) : null),
          el("td", {}, w.hostName || "–", el("div", { class: "muted", text: w.ipAddresses.join(", ") })),
          el("td", { class: "kv" },
            Object.entries(w.amounts).map(([k, v]) => el("span", { text: `${k.replace(/^amount\./, "")}=${v}` })),
            Object.entries(w.attributes).map(([k, v]) => el("span", { text: `${k.replace(/^attr\./, "")}=${(v || []).join("|")}` }))),
          el("td", {}, w.sessions.length
            ? w.sessions.map((s) => el("div", {}, el("a", { href: `#/sessions/${s.sessionId}`, class: "mono", text: short(s.sessionId) }), ` ${s.jobName}`))
            : el("span", { class: "muted", text: "idle" })),
          el("td", { title: w.lastHeartbeatAt || "", text: ago(w.lastHeartbeatAt) }),
          el("td", {}, actionButton("stop", { action: "stop_worker", workerId: w.workerId }, { danger: true })))),
        "no workers yet: start one against this farm"));
    },
  };
}

function farmView(main) {
  const body = el("div", { id: "farm" });
  main.append(el("h1", { id: "view-title", text: "Farm" }), body);
  return {
    failed: failedInto(body),
    async refresh() {
      const o = state.overview;
      const byStatus = (counts) => el("span", { class: "counts" },
        Object.entries(counts).map(([k, v]) => el("span", {}, status(k), ` ${v}`)));
      put(body, 
        el("section", { class: "panel" }, el("dl", { class: "meta" },
          el("dt", { text: "endpoint" }), el("dd", { class: "mono", text: o.endpointUrl }),
          el("dt", { text: "region" }), el("dd", { text: o.region }),
          el("dt", { text: "state" }), el("dd", { text: o.persistent ? "persistent (SQLite)" : "in memory" }),
          el("dt", { text: "jobs" }), el("dd", { text: o.statistics.jobs }),
          el("dt", { text: "workers" }), el("dd", { text: o.statistics.workers }),
          el("dt", { text: "API calls" }), el("dd", { text: o.statistics.calls.toLocaleString() }))),
        el("h2", { text: "Farms" }),
        el("section", { class: "panel" }, table(["farm", "name", "created"],
          o.farms.map((f) => el("tr", {}, el("td", { class: "mono", text: f.farmId }), el("td", { text: f.name }), el("td", { text: time(f.createdAt) }))))),
        el("h2", { text: "Queues" }),
        el("section", { class: "panel" }, table(["queue", "name", "jobs", "by status", "attachments"],
          o.queues.map((q) => el("tr", { class: "clickable", "data-queue-id": q.queueId, onclick: () => go(["jobs"], { queue: q.queueId }) },
            el("td", { class: "mono", text: q.queueId }), el("td", { text: q.name }), el("td", { text: q.jobs }),
            el("td", {}, byStatus(q.jobsByStatus)), el("td", { text: q.jobAttachments ? "yes" : "no" }))))),
        el("h2", { text: "Fleets" }),
        el("section", { class: "panel" }, table(["fleet", "name", "workers", "by status", "min–max"],
          o.fleets.map((f) => el("tr", { class: "clickable", "data-fleet-id": f.fleetId, onclick: () => go(["workers"]) },
            el("td", { class: "mono", text: f.fleetId }), el("td", { text: f.name }), el("td", { text: f.workers }),
            el("td", {}, byStatus(f.workersByStatus)), el("td", { text: `${f.minWorkerCount}–${f.maxWorkerCount}` }))))));
    },
  };
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => { follow(); route(); });
