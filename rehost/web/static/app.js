// rehost dashboard: the few things a server-rendered page cannot do alone.
// Every change goes through the JSON API with the sign-in cookie and the CSRF header.
"use strict";

const CSRF = {"X-Rehost-CSRF": "1"};

async function api(method, url, body) {
  const headers = Object.assign({"Accept": "application/json"}, CSRF);
  const init = {method, headers, credentials: "same-origin"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(url, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
  return data;
}

function showError(id, message) {
  const el = document.getElementById(id) || document.getElementById("action-error");
  if (!el) { alert(message); return; }
  el.textContent = message;
  el.hidden = false;
}

function afterAction(data, stay) {
  // a job: follow it on its page (unless the page follows it itself); anything else: show the new state
  if (!stay && data && data.id && data.steps) window.location = "/ui/jobs/" + encodeURIComponent(data.id);
  else window.location.reload();
}

// buttons that call the API:
// <button data-post="/api/v1/..." [data-method="DELETE"] [data-body='{"json": 1}']
//         [data-body-check="field:checkbox-id"] [data-stay="1"] [data-confirm="..."] [data-force="1"]>
// data-body-check sets a boolean field of the body from a checkbox; data-force: when the API
// refuses (a verdict that did not pass), ask for a reason and send it again with force (recorded)
document.addEventListener("click", async (ev) => {
  const btn = ev.target.closest("[data-post]");
  if (!btn) return;
  ev.preventDefault();
  if (btn.dataset.confirm && !confirm(btn.dataset.confirm)) return;
  btn.disabled = true;
  const method = btn.dataset.method || "POST";
  let body = btn.dataset.body ? JSON.parse(btn.dataset.body) : undefined;
  if (btn.dataset.bodyCheck) {
    const [field, id] = btn.dataset.bodyCheck.split(":");
    const box = document.getElementById(id);
    body = Object.assign(body || {}, {[field]: !!(box && box.checked)});
  }
  try { afterAction(await api(method, btn.dataset.post, body), !!btn.dataset.stay); }
  catch (e) {
    const reason = btn.dataset.force && e.message.includes("--force")
      ? prompt(e.message + "\n\nComplete anyway? Say why (it is recorded):") : null;
    if (reason && reason.trim()) {
      try { afterAction(await api(method, btn.dataset.post, {force: true, reason: reason.trim()}), !!btn.dataset.stay); return; }
      catch (e2) { showError("action-error", e2.message); }
    } else showError("action-error", e.message);
    btn.disabled = false;
  }
});

// the failover dialog: one form for test failover and failover
function setupFailoverDialog() {
  const dialog = document.getElementById("failover-dialog");
  if (!dialog) return;
  const form = document.getElementById("failover-form");
  const machine = dialog.dataset.machine;
  document.querySelectorAll("[data-open-failover]").forEach((btn) => {
    btn.addEventListener("click", () => {
      const kind = btn.dataset.openFailover;
      form.elements.kind.value = kind;
      const test = kind === "test-failover";
      document.getElementById("failover-title").textContent = (test ? "Test failover of " : "Failover of ") + machine;
      document.getElementById("shutdown-row").hidden = test;
      document.getElementById("test-note").hidden = !test;
      document.getElementById("failover-error").hidden = true;
      dialog.showModal();
    });
  });
  document.getElementById("failover-cancel").addEventListener("click", (ev) => {
    ev.preventDefault();
    dialog.close();
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const kind = form.elements.kind.value;
    const body = {point: form.elements.point.value};
    if (kind === "failover") body.shutdown_source = form.elements.shutdown_source.checked;
    const start = document.getElementById("failover-start");
    start.disabled = true;
    try {
      afterAction(await api("POST", "/api/v1/machines/" + encodeURIComponent(machine) + "/" + kind, body));
    } catch (e) {
      showError("failover-error", e.message);
      start.disabled = false;
    }
  });
}

// live job progress: poll the job's JSON every second until it ends
function setupJobPolling() {
  const badge = document.getElementById("job-state");
  if (!badge) return;
  const id = badge.dataset.jobId;
  const live = (s) => s === "running" || s === "queued";
  if (!live(badge.textContent.trim())) return;
  const timer = setInterval(async () => {
    let job;
    try { job = await api("GET", "/api/v1/jobs/" + encodeURIComponent(id)); }
    catch (e) { return; }  // a missed poll is retried a second later
    badge.textContent = job.state;
    badge.className = "badge job-" + job.state;
    for (const s of job.steps) {
      const li = document.querySelector('[data-step="' + CSS.escape(s.name) + '"]');
      if (!li) continue;
      li.className = "step " + s.state;
      li.querySelector(".step-state").textContent = s.state;
      li.querySelector(".detail").textContent = (s.detail || "").split("\n")[0];
      const bar = li.querySelector("progress");
      if (s.total) { bar.hidden = false; bar.max = s.total; bar.value = s.done; }
    }
    if (job.error) {
      const el = document.getElementById("job-error");
      el.textContent = job.error.split("\n")[0];
      el.hidden = false;
    }
    const cancel = document.getElementById("cancel-job");
    if (cancel && !job.cancellable) cancel.hidden = true;
    if (!live(job.state)) clearInterval(timer);
  }, 1000);
}

// a plan's live progress: poll its newest plan job's JSON every second; when it changed, draw
// #plan-live again from this page as the server renders it now (the server escapes, this never
// builds markup from the JSON), until the job ends
async function redraw(id) {
  const r = await fetch(window.location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}});
  if (!r.ok) return false;
  const fresh = new DOMParser().parseFromString(await r.text(), "text/html").getElementById(id);
  const here = document.getElementById(id);
  if (!fresh || !here) return false;
  here.replaceWith(fresh);
  return true;
}

function setupPlanPolling() {
  const section = document.getElementById("plan-live");
  if (!section || section.dataset.polling !== "1") return;
  const url = "/api/v1/plans/" + encodeURIComponent(section.dataset.plan) + "/job";
  let seen = null;
  let busy = false;
  const timer = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      const job = await api("GET", url);
      const now = JSON.stringify(job);
      if (now !== seen && await redraw("plan-live")) seen = now;
      if (seen === now && job.state !== "running" && job.state !== "queued") clearInterval(timer);
    } catch (e) {
      // a missed poll is retried a second later
    } finally {
      busy = false;
    }
  }, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  setupFailoverDialog();
  setupJobPolling();
  setupPlanPolling();
});
