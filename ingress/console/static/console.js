/* The console's behaviour: sign in with a key kept in sessionStorage, then poll the JSON
   endpoints with `Authorization: Bearer`. Text goes in with textContent only (never
   innerHTML), so nothing a tenant sent can run here. */
"use strict";
(function () {
  const STORE = "sluicegate.console.key";
  const LIVE_EVERY_MS = 5000;
  const $ = (id) => document.getElementById(id);
  let me = null;
  let timer = null;

  function key() { return sessionStorage.getItem(STORE); }

  async function api(path, options) {
    const init = Object.assign({}, options || {});
    init.headers = Object.assign({ Authorization: "Bearer " + key() }, init.headers || {});
    const response = await fetch(path, init);
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return response;
  }
  const json = async (path, options) => (await api(path, options)).json();

  function cell(content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
    return td;
  }
  function fill(tableId, rows, makeRow) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren(...rows.map(makeRow));
    $(tableId).hidden = rows.length === 0;
  }
  function tr(cells, className) {
    const row = document.createElement("tr");
    if (className) row.className = className;
    cells.forEach((c) => row.appendChild(c instanceof HTMLTableCellElement ? c : cell(c)));
    return row;
  }
  function empty(id, shown, message, command) {
    const box = $(id);
    box.hidden = !shown;
    if (!shown) return;
    box.replaceChildren(document.createTextNode(message));
    if (command) {
      const code = document.createElement("code");
      code.textContent = command;
      box.appendChild(code);
    }
  }
  function button(label, onClick, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (className) b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }
  const when = (unix) => (unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
  const isoTime = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "");
  const money = (v) => "$" + (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v > 0 ? v.toPrecision(2) : "0");
  const count = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));

  function curlExample() {
    const model = (me && me.models[0]) || "MODEL";
    return `curl ${location.origin}/v1/chat/completions -H "Authorization: Bearer $SLUICE_API_KEY" ` +
      `-H "Content-Type: application/json" -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello"}]}'`;
  }

  /* Sign in and out */

  async function signIn(secret) {
    sessionStorage.setItem(STORE, secret);
    try {
      me = await json("/console/api/me");
    } catch (error) {
      sessionStorage.removeItem(STORE);
      $("signin-error").textContent = error.status === 404
        ? "This ingress has no ledger database, so the console has nothing to show."
        : error.message;
      return;
    }
    $("signin-error").textContent = "";
    $("signin").hidden = true;
    $("console").hidden = false;
    $("signout").hidden = false;
    $("refresh").hidden = false;
    $("who").textContent = me.admin ? "admin — every tenant" : "tenant " + me.tenant;
    document.querySelectorAll("[data-admin]").forEach((node) => { node.hidden = !me.admin; });
    document.querySelectorAll("[data-tenant]").forEach((node) => { node.hidden = me.admin; });
    await loadAll();
    timer = setInterval(loadLive, LIVE_EVERY_MS);
  }

  function signOut() {
    sessionStorage.removeItem(STORE);
    clearInterval(timer);
    me = null;
    $("console").hidden = true;
    $("signin").hidden = false;
    $("signout").hidden = true;
    $("refresh").hidden = true;
    $("who").textContent = "";
    $("key").value = "";
  }

  async function guarded(name, load) {
    try { await load(); } catch (error) {
      if (error.status === 401 && name === "me") { signOut(); return; }
      console.warn("console: " + name + " failed: " + error.message);
    }
  }

  async function loadAll() {
    // Key lists are for whoever may manage keys (admin, tenant_admin); others never ask.
    $("keys").hidden = !(me && me.lists_keys);
    await Promise.all([loadLive(), guarded("failures", loadFailures), guarded("usage", loadUsage),
      guarded("batches", loadBatches), me && me.lists_keys ? guarded("keys", loadKeys) : null]);
  }

  async function loadLive() {
    const tasks = [guarded("throughput", loadThroughput)];
    if (me && me.admin) tasks.push(guarded("queues", loadQueues), guarded("health", loadHealth));
    await Promise.all(tasks);
  }

  /* Live */

  async function loadThroughput() {
    const body = await json("/console/api/throughput?minutes=15");
    const end = new Date(body.now);
    end.setUTCSeconds(0, 0);
    const minutes = [];
    for (let i = body.minutes - 1; i >= 0; i--) {
      minutes.push(new Date(end.getTime() - i * 60000).toISOString().slice(11, 16));
    }
    const counts = {};
    const models = [...new Set(body.data.map((r) => r.model))].sort();
    body.data.forEach((r) => {
      const k = r.minute.slice(11, 16) + "|" + r.model;
      counts[k] = (counts[k] || 0) + r.count;
    });
    const chart = $("throughput-chart");
    chart.hidden = body.data.length === 0;
    if (body.data.length) {
      SluiceCharts.stackedBars(chart, minutes, models, (m, s) => counts[m + "|" + s] || 0, count);
    }
    empty("throughput-empty", body.data.length === 0,
      "No requests finished in the last 15 minutes. Send one:", curlExample());
  }

  async function loadQueues() {
    const body = await json("/console/api/queues");
    const max = Math.max(1, ...body.data.map((r) => r.lag));
    fill("queues", body.data, (r) => tr([r.model, r.lane, String(r.lag),
      cell(SluiceCharts.gauge(r.lag, max)), r.topic]));
    empty("queues-empty", body.data.length === 0, "No models configured. Add one to the config and start a worker:",
      "sluice worker --config config.yaml");
  }

  /* Budgets and breakers */

  const DIMENSIONS = ["requests", "tokens", "input_tokens", "output_tokens"];

  async function loadHealth() {
    const [budgets, workers] = await Promise.all([json("/console/api/budgets"), json("/console/api/workers")]);
    const box = $("budgets");
    box.replaceChildren();
    budgets.data.forEach((b) => {
      const dims = DIMENSIONS.filter((d) => b[d]);
      if (!dims.length) {
        const row = document.createElement("div");
        row.className = "gauge";
        row.append(Object.assign(document.createElement("strong"), { textContent: b.deployment }),
          document.createTextNode(b.state === "unused" ? "no call yet in this window" : "concurrency only"),
          document.createTextNode(b.in_flight !== undefined ? `${b.in_flight} in flight` : ""));
        box.appendChild(row);
      }
      dims.forEach((d) => {
        // The bucket refills at the limit's pace and holds a burst of it: how empty it
        // is now is how much of the budget is in use now.
        const bucket = b[d];
        const used = Math.max(0, bucket.capacity - bucket.remaining);
        const row = document.createElement("div");
        row.className = "gauge";
        row.dataset.deployment = b.deployment;
        row.append(Object.assign(document.createElement("strong"), { textContent: `${b.deployment} · ${d}` }),
          SluiceCharts.gauge(used, bucket.capacity),
          document.createTextNode(`${Math.round(bucket.remaining)} of ${bucket.capacity} left; ` +
            `limit ${Math.round(bucket.limit)} per ${b.window_s}s`));
        box.appendChild(row);
      });
    });
    empty("budgets-empty", budgets.data.length === 0,
      "No deployment has a budget. Give one limits in the config (rpm, tpm, max_concurrency) and restart the workers.");
    fill("workers", workers.data, (w) => {
      const breakers = document.createElement("div");
      Object.entries(w.breakers || {}).forEach(([name, b]) => {
        const line = document.createElement("div");
        line.className = "state-" + b.state;
        line.dataset.deployment = name;
        line.textContent = `${name}: ${b.state}` + (b.consecutive_failures ? ` (${b.consecutive_failures} failures)` : "");
        breakers.appendChild(line);
      });
      const age = cell(w.stale ? `stale — ${Math.round(w.age_s)} s ago` : `${Math.round(w.age_s)} s ago`);
      age.className = "age";
      return tr([w.worker_id, w.models.join(", "), w.ready ? "yes" : "no", String(w.in_flight ?? ""),
        cell(breakers), age], w.stale ? "stale" : "");
    });
    empty("workers-empty", workers.data.length === 0,
      "No worker has reported. Start one (it reports every 5 s):", "sluice worker --config config.yaml");
  }

  /* Failures and dead letters */

  async function loadFailures() {
    const body = await json("/console/api/failures");
    fill("failed", body.data, (f) => {
      const cells = [isoTime(f.finished_at), f.id];
      if (me.admin) cells.push(f.tenant);
      cells.push(f.model, [f.error.code, f.error.message].filter(Boolean).join(": "));
      return tr(cells);
    });
    empty("failed-empty", body.data.length === 0, "No failed requests. Nothing to do here.");
  }

  async function loadDeadLetters() {
    $("deadletters-status").textContent = "Reading the dead-letter topic…";
    const body = await json("/console/api/dead-letters?limit=50");
    fill("deadletters", body.data, (d) => tr([d.id, isoTime(d.at), d.topic, d.reason, d.value,
      cell(button("Replay", () => replay([d.id]), "quiet"))]));
    empty("deadletters-empty", body.data.length === 0,
      "The dead-letter topic is empty. Messages that no worker could process land here (also: sluice dead-letters list).");
    $("deadletters-status").textContent = "";
  }

  async function replay(ids) {
    try {
      const body = await json("/console/api/dead-letters/replay", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ids }) });
      $("deadletters-status").textContent = `Replayed ${body.replayed} dead letter(s): ${body.ids.join(", ")}. ` +
        "Watch Live throughput and Recent failures for the outcome.";
    } catch (error) {
      $("deadletters-status").textContent = "Replay failed: " + error.message;
    }
  }

  /* Usage and spend, from /v1/usage */

  function usageRange() {
    const days = Number($("usage-days").value);
    const from = new Date(Date.now() - days * 86400000);
    from.setUTCHours(0, 0, 0, 0);
    return "from=" + encodeURIComponent(from.toISOString());
  }

  async function loadUsage() {
    const body = await json(`/v1/usage?group_by=day,model&${usageRange()}`);
    const rows = body.data;
    const days = [...new Set(rows.map((r) => r.day))].sort();
    const models = [...new Set(rows.map((r) => r.model))].sort();
    const cellOf = {};
    rows.forEach((r) => { cellOf[r.day + "|" + r.model] = r; });
    const requests = (d, m) => (cellOf[d + "|" + m] || {}).requests || 0;
    const spend = (d, m) => Number((cellOf[d + "|" + m] || {}).cost_usd || 0);
    const hasData = rows.length > 0;
    $("usage-requests").hidden = $("usage-spend").hidden = !hasData;
    if (hasData) {
      SluiceCharts.stackedBars($("usage-requests"), days, models, requests, count);
      SluiceCharts.stackedBars($("usage-spend"), days, models, spend, money);
    }
    fill("usage-table", rows, (r) => tr([r.day, r.model, String(r.requests), String(r.input_tokens),
      String(r.output_tokens), r.cost_usd ?? ""]));
    empty("usage-empty", !hasData, "No usage in this range. Send a request, then press Refresh:", curlExample());
    if (me.admin) {
      const tenants = (await json(`/v1/usage?group_by=tenant&${usageRange()}`)).data;
      $("usage-tenants").hidden = tenants.length === 0;
      SluiceCharts.horizontalBars($("usage-tenants"),
        tenants.map((t) => ({ label: t.tenant, value: Number(t.cost_usd || 0) })), money);
    }
  }

  async function exportCsv() {
    const response = await api(`/v1/usage?format=csv&group_by=tenant,model,day&${usageRange()}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `sluicegate-usage-${new Date().toISOString().slice(0, 10)}.csv`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  /* Batches */

  async function loadBatches() {
    const body = await json("/console/api/batches");
    fill("batch-list", body.data, (b) => {
      const counts = b.request_counts;
      const done = counts.completed + counts.failed;
      const progress = document.createElement("div");
      progress.append(SluiceCharts.gauge(done, Math.max(1, counts.total)),
        document.createTextNode(`${counts.completed} done, ${counts.failed} failed of ${counts.total}`));
      const cells = [b.id];
      if (me.admin) cells.push(b.tenant);
      cells.push(b.status, cell(progress), when(b.created_at));
      return tr(cells);
    });
    empty("batches-empty", body.data.length === 0,
      "No batches yet. Upload a JSONL file of requests, then start a batch:",
      `curl ${location.origin}/v1/files -H "Authorization: Bearer $SLUICE_API_KEY" -F purpose=batch -F file=@requests.jsonl\n` +
      `curl ${location.origin}/v1/batches -H "Authorization: Bearer $SLUICE_API_KEY" -H "Content-Type: application/json" ` +
      `-d '{"input_file_id": "file-…", "endpoint": "/v1/chat/completions", "completion_window": "24h"}'`);
  }

  /* Keys */

  async function loadKeys() {
    const body = await json("/console/api/keys");
    fill("key-list", body.data, (k) => {
      const cells = [k.id, k.tenant, k.name || "", k.prefix + "…", when(k.created_at), when(k.last_used_at),
        k.revoked_at ? "revoked " + when(k.revoked_at) : "active"];
      if (body.may_manage) {
        cells.push(cell(k.revoked_at ? "" : button("Revoke", (event) => revoke(k, event.target), "danger")));
      }
      return tr(cells, k.revoked_at ? "revoked" : "");
    });
    empty("keys-empty", body.data.length === 0, body.may_manage
      ? "No API keys yet. Create one above (or: sluice keys create TENANT)."
      : "No keys listed for your tenant.");
  }

  async function createKey(event) {
    event.preventDefault();
    const payload = { tenant: $("key-tenant").value.trim() };
    if ($("key-name").value.trim()) payload.name = $("key-name").value.trim();
    try {
      const body = await json("/v1/admin/keys", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
      $("key-secret-value").textContent = body.secret;
      $("key-secret").hidden = false;
      $("keys-status").textContent = `Created ${body.id} for tenant ${body.tenant}.`;
      $("key-form").reset();
      await loadKeys();
    } catch (error) {
      $("keys-status").textContent = "Not created: " + error.message;
    }
  }

  async function revoke(k, target) {
    if (target.dataset.armed !== "yes") {  // two clicks: no modal dialog, no accident
      target.dataset.armed = "yes";
      target.textContent = "Confirm revoke";
      return;
    }
    try {
      await json(`/v1/admin/keys/${encodeURIComponent(k.id)}/revoke`, { method: "POST" });
      $("keys-status").textContent = `Revoked ${k.id}.`;
      $("key-secret").hidden = true;
      await loadKeys();
    } catch (error) {
      $("keys-status").textContent = "Not revoked: " + error.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("key").value.trim());
    });
    $("signout").addEventListener("click", signOut);
    $("refresh").addEventListener("click", loadAll);
    $("deadletters-load").addEventListener("click", () => guarded("dead letters", loadDeadLetters));
    $("usage-days").addEventListener("change", () => guarded("usage", loadUsage));
    $("usage-csv").addEventListener("click", () => guarded("csv", exportCsv));
    $("key-form").addEventListener("submit", createKey);
    if (key()) signIn(key());
  });
})();
