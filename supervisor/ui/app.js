// plugd's dashboard: a client of the admin API under /admin, with the live stream for updates.
// No framework and no external requests; every value from the server goes into the page as
// text (textContent), never as markup.
"use strict";

const TOKEN_KEY = "plugd.token";
const $ = (sel) => document.querySelector(sel);
const state = { who: null, plugins: [], workers: [], view: "plugins", plugin: null, stream: null, logStream: null };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? `${status} ${body.error}: ${body.detail}` : `${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body, headers) {
  const init = { method, headers: Object.assign({ Authorization: `Bearer ${token()}` }, headers || {}) };
  if (body !== undefined) init.body = body;
  let res;
  try {
    res = await fetch(`/admin${path}`, init);
  } catch (e) {
    throw new Error(`cannot reach plugd: ${e.message}`);
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (res.status === 401) { signOut("The token is not valid any more: sign in again."); }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function badge(s) { return el("span", { class: `badge state-${s}`, "data-state": s }, s); }
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function when(ms) { return new Date(ms).toLocaleString(); }
function say(text, isError) {
  const s = $("#status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

// ----- sign-in -----

async function signIn(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    state.who = await api("GET", "/whoami");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw e;
  }
  $("#who-name").textContent = state.who.name;
  $("#who-role").textContent = state.who.role;
  document.body.classList.toggle("viewer", state.who.role !== "admin");
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  startStream();
  await route();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.who = null;
  stopStreams();
  for (const v of document.querySelectorAll("main > section")) v.hidden = true;
  $("#nav").hidden = true;
  $("#who").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  $("#token").value = "";
  $("#token").focus();
}

// ----- the live stream (fetch, so the token goes in a header and never in a URL) -----

async function follow(query, onEvent, controller) {
  const res = await fetch(`/admin/stream?${query}`, {
    headers: { Authorization: `Bearer ${token()}` }, signal: controller.signal,
  });
  if (!res.ok) throw new Error(`stream: ${res.status}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) { try { onEvent(JSON.parse(data)); } catch (_) { /* a kind this page does not know */ } }
    }
  }
}

function keepFollowing(slot, query, onEvent) {
  const controller = new AbortController();
  state[slot] = controller;
  let delay = 500;
  (async () => {
    while (!controller.signal.aborted && token()) {
      try {
        await follow(query, (ev) => { delay = 500; onEvent(ev); }, controller);
      } catch (_) { /* reconnect below */ }
      if (controller.signal.aborted) return;
      if (slot === "stream") setLive(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();
}

function setLive(on) {
  const live = $("#live");
  live.textContent = on ? "live" : "offline";
  live.classList.toggle("on", on);
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route(true), 150);
}

function startStream() {
  keepFollowing("stream", "kinds=state,audit", (ev) => {
    if (ev.kind === "hello") { setLive(true); refreshSoon(); return; }
    if (ev.kind === "state") applyState(ev);
    if (ev.kind === "audit" && state.view === "events") prependEvent($("#events tbody"), ev.event, true);
    if (ev.kind === "audit" && state.view === "plugin" && ev.event.plugin === state.plugin) prependEvent($("#p-events tbody"), ev.event, false);
    refreshSoon();
  });
}

function stopStreams() {
  for (const slot of ["stream", "logStream"]) {
    if (state[slot]) { state[slot].abort(); state[slot] = null; }
  }
  setLive(false);
}

// A state change shows at once in the row it concerns; the refresh that follows fills the rest.
function applyState(ev) {
  const row = document.querySelector(`#plugins tr[data-plugin="${CSS.escape(ev.plugin)}"]`);
  if (row && ev.worker === state.thisWorker) {
    const cell = row.querySelector("td.state");
    cell.replaceChildren(badge(ev.state));
  }
}

// ----- views -----

async function route(quiet) {
  if (!state.who) return;
  const hash = location.hash || "#/";
  let view = "plugins";
  let name = null;
  if (hash.startsWith("#/plugin/")) { view = "plugin"; name = decodeURIComponent(hash.slice(9)); }
  else if (hash === "#/workers") view = "workers";
  else if (hash === "#/events") view = "events";
  const changed = view !== state.view || name !== state.plugin;
  state.view = view;
  state.plugin = name;
  for (const v of document.querySelectorAll("main > section")) v.hidden = v.id !== `view-${view}`;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (changed && state.logStream) { state.logStream.abort(); state.logStream = null; }
  try {
    if (view === "plugins") await showPlugins();
    else if (view === "plugin") await showPlugin(name, changed);
    else if (view === "workers") await showWorkers();
    else await showEvents();
    if (changed && !quiet) $("#main").focus();
  } catch (e) {
    say(e.message, true);
  }
}

async function loadCluster() {
  const [list, workers, stats] = await Promise.all([api("GET", "/plugins"), api("GET", "/workers"), api("GET", "/stats")]);
  state.plugins = list.plugins;
  state.workers = workers.workers;
  const me = workers.workers.find((w) => w.this);
  state.thisWorker = me ? me.id : null;
  return stats;
}

async function showPlugins() {
  const stats = await loadCluster();
  const totals = [["Plugins", stats.plugins], ["Enabled", stats.enabled], ["Ready here", stats.ready],
    ["Failed here", stats.failed], ["Workers", stats.workers], ["Ready on all workers", stats.ready_everywhere]];
  $("#totals").replaceChildren(...totals.map(([k, v]) => el("div", { "data-total": k }, el("strong", {}, String(v)), k)));
  const rows = state.plugins.map((p) => {
    const perWorker = el("span", {});
    for (const w of state.workers) {
      const s = (w.plugins[p.name] || { state: "absent" }).state;
      perWorker.append(el("span", { class: `badge state-${s}`, title: `${w.host} (${w.id}): ${s}` }, w.id.slice(0, 6)), " ");
    }
    const mem = p.usage ? `${bytes(p.usage.memory_bytes)} / ${bytes(p.limits && p.limits.memory)}` : "–";
    const cpu = p.usage ? `${p.usage.cpu_cores.toFixed(2)}${p.limits && p.limits.cpu ? ` / ${p.limits.cpu}` : ""}` : "–";
    return el("tr", { "data-plugin": p.name },
      el("td", {}, el("a", { href: `#/plugin/${encodeURIComponent(p.name)}` }, p.name)),
      el("td", {}, p.version),
      el("td", { class: "state" }, badge(p.state)),
      el("td", {}, perWorker),
      el("td", {}, mem),
      el("td", {}, cpu),
      el("td", { class: "restarts" }, String(p.restarts)),
      el("td", { class: "err" }, p.last_error || ""),
      el("td", { class: "write" }, actions(p)));
  });
  $("#plugins tbody").replaceChildren(...rows);
}

function actions(p) {
  const box = el("div", { class: "actions" });
  const add = (label, verb, question) => box.append(el("button", {
    type: "button", "data-action": verb, "aria-label": `${label} ${p.name}`,
    onclick: () => act(p.name, verb, question),
  }, label));
  if (p.enabled) add("Disable", "disable", `Disable ${p.name} on every worker? Its routes stop answering.`);
  else add("Enable", "enable", `Enable ${p.name} on every worker?`);
  if (p.enabled) {
    add("Reload", "reload", `Reload ${p.name} (blue/green)?`);
    add("Restart", "restart", `Restart ${p.name}?`);
  }
  return box;
}

function confirmDialog(question) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = question;
  dialog.returnValue = "";
  dialog.showModal();
  $("#confirm-ok").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function act(name, verb, question) {
  if (!(await confirmDialog(question))) return;
  try {
    let answer;
    if (verb === "uninstall") {
      answer = await api("DELETE", `/plugins/${encodeURIComponent(name)}`);
      say(`Uninstalled ${answer.uninstalled}.`);
      location.hash = "#/";
    } else {
      answer = await api("POST", `/plugins/${encodeURIComponent(name)}/${verb}`);
      say(answer.detail);
    }
  } catch (e) {
    say(`${verb} ${name} failed: ${e.message}`, true);
  }
  refreshSoon();
}

async function showPlugin(name, changed) {
  const p = await api("GET", `/plugins/${encodeURIComponent(name)}`);
  $("#p-name").replaceChildren(p.name, " ", badge(p.state));
  $("#p-desc").textContent = p.description;
  const acts = actions(p);
  acts.append(el("button", { type: "button", "data-action": "uninstall", onclick: () => act(p.name, "uninstall", `Uninstall ${p.name}? Its files and registration are removed.`) }, "Uninstall"));
  $("#p-actions").replaceChildren(acts);
  const facts = [["Version", p.version + (p.version_running && p.version_running !== p.version ? ` (running ${p.version_running})` : "")],
    ["Author", p.author], ["Enabled", `${p.enabled} (generation ${p.generation})`], ["Restarts", String(p.restarts)],
    ["PID", p.pid ? String(p.pid) : "–"], ["Up", p.uptime_s !== null ? `${p.uptime_s} s` : "–"], ["Last error", p.last_error || "–"]];
  $("#p-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("#p-workers tbody").replaceChildren(...Object.entries(p.workers || {}).map(([id, s]) =>
    el("tr", { "data-worker": id }, el("td", {}, id), el("td", {}, badge(s.state)), el("td", {}, s.pid ? String(s.pid) : "–"), el("td", {}, s.version || "–"))));
  const list = (sel, items) => $(sel).replaceChildren(...(items.length ? items : ["none"]).map((t) => el("li", {}, t)));
  list("#p-routes", p.routes.map((r) => `${r.method} /plugins/${p.name}${r.path}`));
  list("#p-hooks", p.hooks.map((h) => `${h.name} (${h.mode}, priority ${h.priority}${h.fail_closed ? ", fail-closed" : ""})`));
  list("#p-services", p.services);
  list("#p-permissions", p.permissions.map((x) => `${x.key}: ${x.description}`));
  const l = p.limits || {};
  const u = p.usage || {};
  const lim = [["Memory", `${bytes(u.memory_bytes)} of ${bytes(l.memory)}`], ["CPU", `${u.cpu_cores !== undefined ? u.cpu_cores.toFixed(2) : "–"} of ${l.cpu || "unlimited"} cores`],
    ["Tasks", `${u.tasks ?? "–"} of ${l.tasks ?? "–"}`], ["Open files", `${u.open_files ?? "–"} of ${l.open_files ?? "–"}`],
    ["Request timeout", l.request_timeout_ms ? `${l.request_timeout_ms} ms` : "–"], ["In flight", l.max_in_flight ?? "–"]];
  $("#p-limits").replaceChildren(...lim.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  // Rendered on arrival only, so a live refresh never wipes what an admin is typing.
  if (changed) await showSettings(name);
  const events = await api("GET", `/events?plugin=${encodeURIComponent(name)}&limit=50`);
  $("#p-events tbody").replaceChildren(...events.events.map(eventRow(false)));
  if (changed) followLogs(name);
}

// The plugin page's settings form, rendered from the schema the API answers. Only the fields an
// admin changed are sent (PATCH, conditional on the generation read); a secret is never shown,
// and its field left empty keeps it.
const settingsForm = { name: null, generation: null, fields: new Map() };

function settingHint(s) {
  const bits = [s.type];
  if (s.required) bits.push("required");
  if (s.restart) bits.push("reloads the plugin");
  if (s.min !== undefined) bits.push(`min ${s.min}`);
  if (s.max !== undefined) bits.push(`max ${s.max}`);
  if (s.type === "duration") bits.push("milliseconds, or words like 30s");
  if (s.type === "size") bits.push("bytes, or words like 10MiB");
  if (s.type === "list") bits.push("comma-separated");
  if (s.default !== undefined) bits.push(`default ${JSON.stringify(s.default)}`);
  bits.push(s.source === "set" ? `set by ${s.updated_by}` : s.source);
  return `${s.description ? s.description + " — " : ""}${bits.join(", ")}`;
}

function settingInput(s) {
  const id = `setting-${s.name}`;
  const attrs = { id, name: s.name, "data-setting": s.name };
  if (s.type === "boolean") {
    const box = el("input", Object.assign(attrs, { type: "checkbox" }));
    box.checked = s.value === true;
    return [box, () => box.checked, String(box.checked)];
  }
  if (s.type === "enum") {
    const select = el("select", attrs, ...(s.required ? [] : [el("option", { value: "" }, "(default)")]),
      ...s.values.map((v) => el("option", { value: v }, v)));
    select.value = s.value ?? "";
    return [select, () => (select.value === "" ? null : select.value), select.value];
  }
  const input = el("input", Object.assign(attrs, { type: s.secret ? "password" : (s.type === "integer" || s.type === "number") ? "number" : "text", autocomplete: "off" }));
  if (s.secret) input.placeholder = s.source === "set" ? "(set: type to replace)" : "(not set)";
  else if (s.value !== undefined) input.value = s.type === "list" ? s.value.join(", ") : String(s.value);
  const read = () => {
    const text = input.value.trim();
    if (text === "") return s.secret ? undefined : null;
    if (s.type === "integer" || s.type === "number") return Number(text);
    if ((s.type === "duration" || s.type === "size") && /^\d+$/.test(text)) return Number(text);
    if (s.type === "list") return text.split(",").map((x) => x.trim()).filter((x) => x !== "");
    return text;
  };
  return [input, read, input.value];
}

async function showSettings(name) {
  const view = await api("GET", `/plugins/${encodeURIComponent(name)}/settings`);
  settingsForm.name = name;
  settingsForm.generation = view.generation;
  settingsForm.fields = new Map();
  const rows = view.settings.map((s) => {
    const [input, read, initial] = settingInput(s);
    const problem = el("p", { class: "problem", id: `problem-${s.name}`, "aria-live": "polite" });
    const reset = el("button", { type: "button", class: "write", "data-reset": s.name, hidden: s.source === "set" ? undefined : "",
      onclick: () => resetSetting(name, s.name) }, "Reset");
    settingsForm.fields.set(s.name, { read, initial, input, problem, secret: s.secret });
    return el("div", { class: "setting", "data-setting-row": s.name },
      el("label", { for: input.id }, s.name), input, reset,
      el("p", { class: "hint" }, settingHint(s)), problem);
  });
  $("#p-settings-fields").replaceChildren(...rows);
  $("#p-settings-none").hidden = view.settings.length > 0;
  $("#p-settings-save").hidden = view.settings.length === 0;
  const viewer = document.body.classList.contains("viewer");
  for (const f of settingsForm.fields.values()) f.input.disabled = viewer;
}

async function saveSettings(event) {
  event.preventDefault();
  const changes = {};
  for (const [key, f] of settingsForm.fields) {
    f.problem.textContent = "";
    const value = f.read();
    if (value === undefined) continue; // a secret left empty
    const now = f.input.type === "checkbox" ? String(f.input.checked) : f.input.value;
    if (!f.secret && now === f.initial) continue;
    changes[key] = value;
  }
  const result = $("#p-settings-result");
  result.className = "";
  if (Object.keys(changes).length === 0) { result.textContent = "Nothing changed."; return; }
  try {
    const answer = await api("PATCH", `/plugins/${encodeURIComponent(settingsForm.name)}/settings`,
      JSON.stringify(changes), { "Content-Type": "application/json", "If-Match": `"${settingsForm.generation}"` });
    // The answer is shown once the form shows the stored settings again (a secret emptied).
    await showSettings(settingsForm.name);
    result.textContent = answer.detail;
  } catch (e) {
    result.className = "error";
    result.textContent = e.message;
    for (const f of (e.body && e.body.fields) || []) {
      const field = settingsForm.fields.get(f.key);
      if (field) { field.problem.textContent = f.problem; field.input.setAttribute("aria-invalid", "true"); }
    }
  }
}

async function resetSetting(name, key) {
  const result = $("#p-settings-result");
  try {
    const answer = await api("DELETE", `/plugins/${encodeURIComponent(name)}/settings/${encodeURIComponent(key)}`,
      undefined, { "If-Match": `"${settingsForm.generation}"` });
    // As for a save: the answer is shown once the form shows the stored settings again.
    await showSettings(name);
    result.className = "";
    result.textContent = answer.detail;
  } catch (e) {
    result.className = "error";
    result.textContent = e.message;
  }
}

// The plugin page's logs: subscribed first, then the history read, so no line falls between
// the two; one text node per line, the oldest dropped past MAX_LOG_LINES.
const MAX_LOG_LINES = 2000;
function followLogs(name) {
  const pre = $("#p-logs");
  pre.replaceChildren();
  delete pre.dataset.live;
  const seen = new Set();
  const add = (l) => {
    const key = `${l.at_ms} ${l.pid} ${l.line}`;
    if (seen.has(key)) return;
    seen.add(key);
    pre.append(document.createTextNode(`${l.stream} ${l.line}\n`));
    while (pre.childNodes.length > MAX_LOG_LINES) pre.firstChild.remove();
    if (seen.size > 4 * MAX_LOG_LINES) seen.clear();
    pre.scrollTop = pre.scrollHeight;
  };
  keepFollowing("logStream", `kinds=log&plugin=${encodeURIComponent(name)}`, async (ev) => {
    if (ev.kind === "log") add(ev);
    if (ev.kind !== "hello") return;
    try {
      const logs = await api("GET", `/plugins/${encodeURIComponent(name)}/logs?lines=200`);
      const live = Array.from(pre.childNodes);
      pre.replaceChildren();
      logs.lines.forEach(add);
      pre.append(...live);
      pre.dataset.live = "1";
    } catch (e) {
      say(`logs of ${name}: ${e.message}`, true);
    }
  });
}

function eventRow(withPlugin) {
  return (e) => el("tr", { "data-event": String(e.id) }, el("td", {}, when(e.at_ms)),
    ...(withPlugin ? [el("td", {}, e.plugin || "–")] : []),
    el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.detail));
}

function prependEvent(tbody, e, withPlugin) {
  if (tbody.querySelector(`tr[data-event="${e.id}"]`)) return;
  tbody.prepend(eventRow(withPlugin)(e));
}

async function showWorkers() {
  await loadCluster();
  $("#workers tbody").replaceChildren(...state.workers.map((w) => {
    const ready = Object.values(w.plugins).filter((s) => s.state === "ready").length;
    const sys = w.system;
    return el("tr", { "data-worker": w.id },
      el("td", {}, w.id + (w.this ? " (this one)" : "")), el("td", {}, w.host), el("td", {}, String(w.pid)),
      el("td", {}, sys ? String(sys.cpus) : "–"), el("td", {}, sys ? sys.load.map((x) => x.toFixed(2)).join(" / ") : "–"),
      el("td", {}, sys ? `${bytes(sys.memory_used)} of ${bytes(sys.memory_total)}` : "–"),
      el("td", {}, `${ready} of ${Object.keys(w.plugins).length}`), el("td", {}, when(w.seen_ms)));
  }));
}

async function showEvents() {
  const page = await api("GET", "/events?limit=100");
  $("#events tbody").replaceChildren(...page.events.map(eventRow(true)));
}

// ----- install by drag and drop (or the keyboard) -----

let chosen = null;

async function choose(file) {
  chosen = file;
  $("#bundle-name").textContent = file.name;
  $("#bundle-size").textContent = bytes(file.size);
  $("#install-result").textContent = "";
  let sha = "(computed by plugd on upload: this page is not in a secure context)";
  if (window.crypto && crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    sha = Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, "0")).join("");
  }
  $("#bundle-sha").textContent = sha;
  $("#bundle").hidden = false;
  $("#bundle-install").focus();
}

async function install() {
  if (!chosen) return;
  const result = $("#install-result");
  result.className = "";
  result.textContent = `Installing ${chosen.name}…`;
  try {
    const done = await api("POST", "/plugins/install", chosen, { "Content-Type": "application/octet-stream" });
    result.textContent = `${done.upgraded ? "Upgraded" : "Installed"} ${done.name} ${done.version} (sha256 ${done.sha256}).`;
    $("#bundle").hidden = true;
    chosen = null;
    refreshSoon();
  } catch (e) {
    result.className = "error";
    result.textContent = `The bundle was refused: ${e.message}`;
  }
}

function setUpInstall() {
  const zone = $("#dropzone");
  const input = $("#bundle-file");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { if (input.files.length) choose(input.files[0]); input.value = ""; });
  $("#bundle-install").addEventListener("click", install);
  $("#bundle-cancel").addEventListener("click", () => { chosen = null; $("#bundle").hidden = true; });
}

// ----- start -----

document.addEventListener("DOMContentLoaded", () => {
  setUpInstall();
  $("#p-settings").addEventListener("submit", saveSettings);
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#signin-error").textContent = "";
    try {
      await signIn($("#token").value.trim());
    } catch (err) {
      signOut(err.status === 401 ? "That token is not valid." : `Cannot sign in: ${err.message}`);
    }
  });
  $("#signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", () => route());
  // Keep the workers' figures fresh while a page is open (the stream carries state changes).
  setInterval(() => { if (state.who && state.view === "workers") route(true); }, 5000);
  if (token()) signIn(token()).catch(() => signOut("Sign in again.")); else signOut("");
});
