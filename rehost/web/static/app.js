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
    const fixups = Array.from(form.querySelectorAll("input[name=fixup]:checked"), (i) => i.value);
    if (fixups.length) body.fixups = fixups;
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

// -- forms: an API error goes next to the field it names (the CLI's --flag, or the API's
// "config.name:" / "name:"), else at the top of the form; nothing is kept from a failed submit
function escapeRx(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

function fieldPatterns(name) {
  const flag = "--" + name.replace(/_/g, "-");
  const out = [new RegExp(escapeRx(flag) + "(?![a-z0-9-])"),
               new RegExp("(^|[\\s;(])(config\\.)?" + escapeRx(name) + "(\\.[0-9]+)?:")];
  if (name === "name") out.push(/\bname '/);
  return out;
}

// the phrases a service's message names a field by, besides its flag: data-names="a|b"
function fieldMatchers(field) {
  const extra = (field.dataset.names || "").split("|").filter(Boolean).map((w) => new RegExp(escapeRx(w)));
  return [...fieldPatterns(field.dataset.field), ...extra];
}

function clearErrors(form) {
  form.querySelectorAll(".error").forEach((el) => { el.hidden = true; el.textContent = ""; });
  form.querySelectorAll(".field.invalid").forEach((el) => el.classList.remove("invalid"));
}

function showFormError(form, message) {
  let best = null;
  let at = Infinity;
  form.querySelectorAll(".field[data-field]").forEach((field) => {
    for (const rx of fieldMatchers(field)) {
      const m = rx.exec(message);
      if (m && m.index < at) { at = m.index; best = field; }
    }
  });
  if (best && best.closest("details")) best.closest("details").open = true;
  const el = best ? best.querySelector(".field-error") : form.querySelector(".form-error");
  if (best) best.classList.add("invalid");
  el.textContent = message;
  el.hidden = false;
  return best ? best.dataset.field : null;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// one input per option of a provider's config, as GET /api/v1/{sources,targets}/kinds lists them
function optionField(opt) {
  const flag = "--" + opt.name.replace(/_/g, "-");
  let input;
  if (opt.type === "bool") input = el("input", {type: "checkbox"});
  else if (opt.list) input = el("textarea", {rows: "2"});
  else input = el("input", {type: "text", autocomplete: "off"});
  input.name = opt.name;
  input.dataset.option = opt.type;
  if (opt.list) input.dataset.list = "1";
  const dflt = Array.isArray(opt.default) ? opt.default.join(", ") : opt.default;
  if (opt.type !== "bool" && dflt !== null && dflt !== "") input.placeholder = "default: " + dflt;
  else if (opt.list) input.placeholder = "one a line";
  if (opt.type === "bool" && opt.default === true) input.checked = true;
  return el("label", {class: "field" + (opt.type === "bool" ? " check" : ""), dataset: {field: opt.name}},
    opt.type === "bool" ? input : null,
    opt.name.replace(/_/g, " "), " ", el("code", {}, flag),
    opt.required ? el("span", {class: "req"}, " *") : null,
    opt.type === "bool" ? null : input,
    el("span", {class: "help"}, opt.help),
    el("span", {class: "error field-error", hidden: ""}));
}

function drawOptions(form, kind) {
  const box = form.querySelector(".options");
  box.replaceChildren();
  const optional = kind.options.filter((o) => !o.required);
  kind.options.filter((o) => o.required).forEach((o) => box.append(optionField(o)));
  if (optional.length) {
    const more = el("details", {}, el("summary", {}, "More options (" + optional.length + ")"));
    optional.forEach((o) => more.append(optionField(o)));
    box.append(more);
  }
  clearErrors(form);
}

function configOf(form) {
  const config = {};
  form.querySelectorAll("[data-option]").forEach((input) => {
    if (input.dataset.option === "bool") { if (input.checked) config[input.name] = true; return; }
    const text = input.value.trim();
    if (!text) return;  // the kind's default
    config[input.name] = input.dataset.list ? text.split("\n").map((s) => s.trim()).filter(Boolean) : text;
  });
  return config;
}

async function submitting(form, work) {
  clearErrors(form);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try { await work(); }
  catch (e) { showFormError(form, e.message); }
  finally { button.disabled = false; }
}

// Prepare infrastructure: protection goal, then source, target (verified) and policy forms
async function setupWizard() {
  const wizard = document.getElementById("setup");
  if (!wizard) return;
  const [sourceKinds, targetKinds] = await Promise.all([
    api("GET", "/api/v1/sources/kinds"), api("GET", "/api/v1/targets/kinds")]);
  const pick = (select, kinds, form, title) => {
    kinds.forEach((k) => select.append(el("option", {value: k.kind},
      k.kind + (k.test_double ? " (test double)" : ""))));
    const first = kinds.find((k) => !k.test_double);
    if (first) select.value = first.kind;
    const draw = () => {
      const kind = kinds.find((k) => k.kind === select.value);
      drawOptions(form, kind);
      document.getElementById(title).textContent = kind.kind + ": " + kind.summary;
      document.getElementById("goal-summary").textContent =
        "From " + document.getElementById("source-kind").value + " to " + document.getElementById("target-kind").value + ".";
    };
    select.addEventListener("change", draw);
    return draw;
  };
  const sourceForm = document.getElementById("source-form");
  const targetForm = document.getElementById("target-form");
  const drawSource = pick(document.getElementById("source-kind"), sourceKinds, sourceForm, "source-kind-title");
  const drawTarget = pick(document.getElementById("target-kind"), targetKinds, targetForm, "target-kind-title");
  drawSource();
  drawTarget();

  sourceForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(sourceForm, async () => {
      const body = {kind: document.getElementById("source-kind").value, config: configOf(sourceForm)};
      const name = sourceForm.elements.name.value.trim();
      if (name) body.name = name;
      const done = await api("POST", "/api/v1/sources", body);
      const m = done.machine;
      const result = document.getElementById("source-result");
      result.textContent = "Added " + m.name + " (" + m.source + ")" +
        (m.disks.length ? ": " + m.disks.length + " disk(s)" : "");
      document.getElementById("source-done").hidden = false;
      if (done.invitation) showInvitation(done.invitation, wizard.dataset.enrollUrl);
    });
  });

  targetForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(targetForm, async () => {
      const name = targetForm.elements.name.value.trim();
      const t = await api("POST", "/api/v1/targets",
        {kind: document.getElementById("target-kind").value, name, config: configOf(targetForm)});
      await verifyTarget(t.name);
    });
  });
  document.getElementById("verify-again").addEventListener("click", () =>
    verifyTarget(document.getElementById("verify").dataset.target).catch((e) => showFormError(targetForm, e.message)));

  const policyForm = document.getElementById("policy-form");
  policyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(policyForm, async () => {
      const body = {};
      for (const f of ["name", "rpo_threshold", "retention", "crash_consistent_every", "app_consistent_every", "bandwidth"]) {
        const v = policyForm.elements[f].value.trim();
        if (v) body[f] = v;
      }
      const windows = policyForm.elements.bandwidth_schedule.value.split("\n").map((s) => s.trim()).filter(Boolean);
      if (windows.length) body.bandwidth_schedule = windows;
      const p = await api("POST", "/api/v1/policies", body);
      const result = document.getElementById("policy-result");
      result.textContent = "Created policy " + p.name + ": RPO threshold " + p.rpo_threshold_s + " s, retention " +
        p.retention_s + " s, a crash-consistent point every " + p.crash_consistent_every_s + " s.";
      result.hidden = false;
    });
  });
}

async function verifyTarget(name) {
  const box = document.getElementById("verify");
  box.dataset.target = name;
  document.getElementById("verify-title").textContent = "Verifying target " + name + "…";
  const badge = document.getElementById("verify-badge");
  badge.textContent = "";
  box.hidden = false;
  const report = await api("POST", "/api/v1/targets/" + encodeURIComponent(name) + "/verify");
  document.getElementById("verify-title").textContent = "Target " + name;
  badge.textContent = report.ok ? "verified" : "failed";
  badge.className = "badge " + (report.ok ? "healthy" : "critical");
  document.getElementById("verify-checks").replaceChildren(...report.checks.map((c) =>
    el("li", {class: "check " + (c.ok ? "ok" : "fail"), dataset: {check: c.name}},
      el("span", {class: "mark"}), el("b", {}, c.name), el("span", {class: "check-detail"}, c.detail))));
}

// a physical server: its one-time passphrase and agent command, then the agent turning up
function showInvitation(inv, enrollUrl) {
  document.getElementById("inv-machine").textContent = inv.machine;
  document.getElementById("inv-expires").textContent = Math.round(inv.expires_in_s / 60) + " min";
  document.getElementById("inv-passphrase").textContent = inv.passphrase;
  document.getElementById("inv-fingerprint").textContent = inv.fingerprint;
  document.getElementById("agent-command").textContent = "rehost-agent register --server " + enrollUrl +
    " --passphrase " + inv.passphrase + " --fingerprint " + inv.fingerprint + " --disk /dev/sda";
  document.getElementById("invitation").hidden = false;
  const status = document.getElementById("agent-status");
  const url = "/api/v1/machines/" + encodeURIComponent(inv.machine);
  const timer = setInterval(async () => {
    let m;
    try { m = await api("GET", url); } catch (e) { return; }  // retried a second later
    const agent = m.agent || {};
    if (!agent.enrolled_at) return;
    const inventory = agent.inventory || {};
    const disks = inventory.disks || [];
    status.textContent = "registered " + String(agent.enrolled_at).replace("T", " ").slice(0, 19) + " UTC" + (agent.address ? " from " + agent.address : "") +
      (inventory.hostname ? ": " + inventory.hostname : "") + ", " + disks.length + " disk(s)";
    status.dataset.state = "registered";
    clearInterval(timer);
  }, 1000);
}

// Enable replication of several machines: one policy, target and network map for all of them
function setupEnable() {
  const form = document.getElementById("enable-form");
  const target = document.getElementById("enable-target");
  if (!form || !target) return;
  const networks = JSON.parse(target.dataset.networks || "{}");
  const drawNetworks = () => {
    const nets = networks[target.value] || [];
    form.querySelectorAll("select[data-source-net]").forEach((select) => {
      select.replaceChildren(el("option", {value: ""}, "(the target's default)"),
        ...nets.map((n) => el("option", {value: n.name}, n.name + (n.isolated ? " (isolated)" : ""))));
    });
  };
  target.addEventListener("change", drawNetworks);
  drawNetworks();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const machines = [...form.querySelectorAll("input[name=machine]:checked")].map((b) => b.value);
      if (!machines.length) throw new Error("pick at least one machine");
      const body = {network_map: {}, replicate: form.elements.replicate.checked};
      if (form.elements.policy.value) body.policy = form.elements.policy.value;
      if (target.value) body.target = target.value;
      form.querySelectorAll("select[data-source-net]").forEach((s) => {
        if (s.value) body.network_map[s.dataset.sourceNet] = s.value;
      });
      const results = document.getElementById("enable-results");
      results.replaceChildren();
      const line = (name, ok, text) => results.append(el("li", {class: "check " + (ok ? "ok" : "fail")},
        el("span", {class: "mark"}), el("b", {}, name), el("span", {class: "check-detail"}, text)));
      // one at a time, stopping at the first refusal: a bad setting is refused for the first
      // machine, before any is changed
      for (const [i, name] of machines.entries()) {
        try {
          await api("POST", "/api/v1/machines/" + encodeURIComponent(name) + "/enable", body);
          line(name, true, "enabled");
        } catch (e) {
          line(name, false, e.message);
          machines.slice(i + 1).forEach((rest) => line(rest, false, "not tried"));
          throw e;
        }
      }
      window.location = "/ui/items";
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupFailoverDialog();
  setupJobPolling();
  setupPlanPolling();
  setupWizard().catch((e) => showError("action-error", e.message));
  setupEnable();
});
