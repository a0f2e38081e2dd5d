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

function afterAction(data) {
  // a job: follow it on its page; anything else: show the new state
  if (data && data.id && data.steps) window.location = "/ui/jobs/" + encodeURIComponent(data.id);
  else window.location.reload();
}

// buttons that POST to the API: <button data-post="/api/v1/..." [data-confirm="..."]>
document.addEventListener("click", async (ev) => {
  const btn = ev.target.closest("[data-post]");
  if (!btn) return;
  ev.preventDefault();
  if (btn.dataset.confirm && !confirm(btn.dataset.confirm)) return;
  btn.disabled = true;
  try { afterAction(await api("POST", btn.dataset.post)); }
  catch (e) { showError("action-error", e.message); btn.disabled = false; }
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

document.addEventListener("DOMContentLoaded", () => {
  setupFailoverDialog();
  setupJobPolling();
});
