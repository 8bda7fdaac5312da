// The station page: plain JS against the same /api/v1 routes the stations use.
// Live progress comes from the events stream, read with fetch() because EventSource cannot send
// the X-API-Key header; if the stream fails, the page polls the status instead.
"use strict";

const root = new URL("../", location.href); // the app's root, also under a route prefix
const $ = (id) => document.getElementById(id);
const TERMINAL = ["completed", "failed", "cancelled"];
const seen = []; // every job view the page received, newest last (tests read it)
window.qwenEditSeen = seen;
let current = null; // { id, abort }

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function key() { return localStorage.getItem("qwenEditKey") || ""; }

async function call(path, options = {}) {
  const headers = { ...(options.headers || {}), "X-API-Key": key() };
  let response;
  try {
    response = await fetch(new URL("api/v1/" + path, root), { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server cannot be reached. Check the connection and try again.");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (response.status === 401) detail += ". Enter your station's API key above.";
    if (response.status === 429) detail += ` (retry in ${response.headers.get("Retry-After") || "a few"} s)`;
    throw new ApiError(response.status, detail);
  }
  return response;
}

function showError(err) {
  if (err && err.name === "AbortError") return;
  const box = $("error");
  box.textContent = err ? (err.message || String(err)) : "";
  box.hidden = !err;
}

const shortId = (id) => id.slice(0, 8);
const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");

function describe(view) {
  switch (view.status) {
    case "queued":
      return `Queued, position ${view.position}` + (view.eta_seconds != null ? ` (about ${Math.round(view.eta_seconds)} s)` : "");
    case "processing":
      return view.total_steps ? `Editing: step ${view.step} of ${view.total_steps}` : "Editing";
    case "completed":
      return `Done in ${view.run_seconds != null ? view.run_seconds.toFixed(1) + " s" : "—"} (seed ${view.result_seed})`;
    case "failed":
      return `Failed: ${view.error || "unknown error"}`;
    default:
      return "Cancelled";
  }
}

// --- following one job ---------------------------------------------------------------------------

function render(view) {
  seen.push(view);
  if (!current || view.job_id !== current.id) return;
  $("job-state").textContent = describe(view);
  $("job-state").dataset.status = view.status;
  $("progress").value = view.status === "completed" ? 1 : view.progress || 0;
  $("cancel").disabled = TERMINAL.includes(view.status);
}

async function followStream(id, signal) {
  const response = await call(`status/${id}/events`, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const lines = block.split("\n");
      const event = (lines.find((l) => l.startsWith("event:")) || "event: status").slice(6).trim();
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue; // a heartbeat comment
      if (event === "preview") { showPreview(id, JSON.parse(data)); continue; }
      const view = JSON.parse(data);
      if (view.detail) throw new ApiError(0, view.detail); // an "error" event
      render(view);
      if (TERMINAL.includes(view.status)) return view;
    }
  }
}

async function follow(id, signal) {
  let view = null;
  try {
    view = await followStream(id, signal);
  } catch (err) {
    if (err.name === "AbortError") return null;
  }
  while (!view || !TERMINAL.includes(view.status)) { // the stream is not there: poll
    if (signal.aborted) return null;
    view = await (await call(`status/${id}`, { signal })).json();
    render(view);
    if (!TERMINAL.includes(view.status)) await new Promise((r) => setTimeout(r, 1000));
  }
  return view;
}

// A live preview (the picture forming, from the latents; small) in the result's place until the result.
function showPreview(id, preview) {
  if (!current || current.id !== id) return;
  const img = $("result");
  img.src = preview.image;
  img.hidden = false;
  img.classList.add("preview");
  $("result-caption").textContent = `Preview, step ${preview.step}`;
}

async function showResult(view) {
  const blob = await (await call(`status/${view.job_id}/result`)).blob();
  const url = URL.createObjectURL(blob);
  const img = $("result");
  img.src = url;
  img.hidden = false;
  img.classList.remove("preview");
  $("result-caption").textContent = "Result";
  const link = $("download");
  link.href = url;
  link.download = view.result_path || `${view.job_id}.png`;
  link.hidden = false;
}

async function watch(id, inputUrl) {
  if (current) current.abort.abort();
  current = { id, abort: new AbortController() };
  $("current").hidden = false;
  $("job-id").textContent = shortId(id);
  $("progress").value = 0;
  $("result").hidden = true;
  $("result-caption").textContent = "Result";
  $("download").hidden = true;
  if (inputUrl) $("input-view").src = inputUrl;
  const view = await follow(id, current.abort.signal);
  if (view && view.status === "completed" && current && current.id === id) await showResult(view);
  refresh();
}

// --- forms, lists ----------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("qwenEditKey", $("key").value.trim());
  showError(null);
  start();
});

$("images").addEventListener("change", () => {
  const files = [...$("images").files];
  $("previews").replaceChildren(...files.slice(0, 3).map((f) => {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f);
    img.alt = f.name;
    return img;
  }));
  showError(files.length > 3 ? new Error("Choose at most three images.") : null);
});

$("edit-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const files = [...$("images").files];
  if (files.length < 1 || files.length > 3) return showError(new Error("Choose one to three images."));
  const form = new FormData();
  files.forEach((f) => form.append("image", f, f.name));
  form.append("instruction", $("instruction").value);
  if ($("preset").value) form.append("preset", $("preset").value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  form.append("previews", "true"); // the picture forming, shown while the job runs
  $("submit").disabled = true;
  try {
    const job = await (await call("submit", {
      method: "POST", body: form, headers: { "Idempotency-Key": crypto.randomUUID() },
    })).json();
    showError(null);
    refresh();
    watch(job.job_id, URL.createObjectURL(files[0])).catch(showError);
  } catch (err) {
    showError(err);
  } finally {
    $("submit").disabled = false;
  }
});

async function cancel(id) {
  try {
    render(await (await call(`status/${id}`, { method: "DELETE" })).json());
    showError(null);
  } catch (err) {
    showError(err);
  }
  refresh();
}

$("cancel").addEventListener("click", () => current && cancel(current.id));

function row(view) {
  const tr = document.createElement("tr");
  tr.dataset.job = view.job_id;
  const cells = [shortId(view.job_id), view.instruction, describe(view), when(view.created_at)];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  const td = document.createElement("td");
  const button = document.createElement("button");
  if (TERMINAL.includes(view.status)) {
    button.textContent = "Show";
    button.disabled = view.status !== "completed";
    button.onclick = () => watch(view.job_id).catch(showError);
  } else {
    button.textContent = "Cancel";
    button.onclick = () => cancel(view.job_id);
  }
  td.append(button);
  tr.append(td);
  return tr;
}

let refreshes = 0; // the latest refresh's number: an older one's answer arriving later is dropped

async function refresh() {
  if (!key()) return;
  const mine = ++refreshes;
  try {
    const [jobs, queue] = await Promise.all([
      call("jobs?limit=20").then((r) => r.json()), call("queue").then((r) => r.json())]);
    // A timer refresh sent before a cancel can answer after the cancel's own refresh; drawing it
    // would put the job back as running until the next tick.
    if (mine !== refreshes) return;
    $("jobs").replaceChildren(...jobs.jobs.map(row));
    $("q-queued").textContent = queue.queued_count;
    $("q-processing").textContent = queue.processing_count;
    $("q-max").textContent = queue.max_queue_size;
    $("q-failed").textContent = `${queue.failed_count} failed, ${queue.completed_count} completed since the start.`;
    const failures = jobs.jobs.filter((j) => j.status === "failed").slice(0, 5);
    $("failures").replaceChildren(...failures.map((j) => {
      const li = document.createElement("li");
      li.textContent = `${shortId(j.job_id)} (${when(j.completed_at)}): ${j.error}`;
      return li;
    }));
  } catch (err) {
    showError(err);
  }
}

async function start() {
  $("key").value = key();
  if (!key()) return showError(new Error("Enter your station's API key above to start."));
  try {
    const models = await (await call("models")).json();
    $("preset").replaceChildren(...Object.values(models.models).map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.estimated_time})` + (m.available ? "" : " — not available");
      option.disabled = !m.available;
      option.selected = m.name === models.default;
      return option;
    }));
    $("who").textContent = "key saved in this browser";
    refresh();
  } catch (err) {
    showError(err);
  }
}

setInterval(refresh, 3000);
start();
