// ternary-serve's chat page: streams /v1/chat/completions (server-sent events read through
// fetch + ReadableStream), shows tokens/s per reply. No external resources.
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), form = $("form"), promptBox = $("prompt"), modelSel = $("model"), statusEl = $("status");
let history = [];          // [{role, content}] of this chat
let controller = null;     // AbortController of the reply being streamed
// The server's --api-key, when it has one: the page itself is served without it (as
// llama.cpp's web UI), asks for it on the first 401 and keeps it in this browser.
const keyBox = $("api-key");
const KEY_ITEM = "ternary-api-key";
keyBox.value = localStorage.getItem(KEY_ITEM) || "";
const authHeaders = () => (keyBox.value ? { Authorization: "Bearer " + keyBox.value } : {});
function askForKey(message) {
  keyBox.hidden = false; keyBox.focus();
  setStatus(message, "err");
}
keyBox.addEventListener("change", () => { localStorage.setItem(KEY_ITEM, keyBox.value); loadModels(); });

function setStatus(text, cls) { statusEl.textContent = text; statusEl.className = "status " + (cls || ""); }

for (const id of ["temperature", "top-p"]) {
  const input = $(id), out = $(id + "-out");
  input.addEventListener("input", () => { out.textContent = input.value; });
}

async function loadModels() {
  try {
    const r = await fetch("v1/models", { headers: authHeaders() });
    if (r.status === 401) { askForKey(keyBox.value ? "wrong API key" : "API key needed"); return; }
    const models = r.ok ? (await r.json()).data : [];
    if (!models.length) { setStatus("model loading…"); setTimeout(loadModels, 1000); return; }
    const keep = modelSel.value;
    modelSel.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
    if (models.some((m) => m.id === keep)) modelSel.value = keep;
    const ctx = models[0].context_length;
    if (ctx) { $("max-tokens").max = ctx; if (+$("max-tokens").value > ctx) $("max-tokens").value = ctx; }
    setStatus("ready", "ok");
  } catch (e) {
    setStatus("server unreachable", "err"); setTimeout(loadModels, 2000);
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  log.append(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function busy(on) {
  $("send").disabled = on; $("stop").hidden = !on; promptBox.disabled = on;
}

// Yields the JSON objects of an SSE body, stopping at [DONE].
async function* events(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  history.push({ role: "user", content: text });
  messages.push(...history);
  addMessage("user", text);
  const div = addMessage("assistant", ""), body = div.querySelector(".text");
  const stats = document.createElement("div");
  stats.className = "stats";
  div.append(stats);
  controller = new AbortController();
  busy(true);
  const t0 = performance.now();
  let tFirst = null, chunks = 0, usage = null, reply = "", finish = null;
  const showStats = (final) => {
    const n = usage ? usage.completion_tokens : chunks;
    const secs = tFirst === null ? 0 : (performance.now() - tFirst) / 1000;
    const tps = n > 1 && secs > 0 ? ((n - 1) / secs).toFixed(1) : "–";
    const ttft = tFirst === null ? "–" : ((tFirst - t0) / 1000).toFixed(2) + " s";
    stats.textContent = `${n} tokens · ${tps} tok/s · first token ${ttft}` + (final && finish ? ` · ${finish}` : "");
  };
  try {
    const r = await fetch("v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, signal: controller.signal,
      body: JSON.stringify({
        model: modelSel.value || undefined, messages, stream: true, stream_options: { include_usage: true },
        temperature: +$("temperature").value, top_p: +$("top-p").value, max_tokens: +$("max-tokens").value,
      }),
    });
    if (r.status === 401) askForKey("API key needed");
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    for await (const ev of events(r)) {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.usage) usage = ev.usage;
      const choice = ev.choices && ev.choices[0];
      if (!choice) continue;
      if (choice.finish_reason) finish = choice.finish_reason;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (tFirst === null) tFirst = performance.now();
        chunks += 1;
        reply += piece;
        body.textContent = reply;
        showStats(false);
        log.scrollTop = log.scrollHeight;
      }
    }
    history.push({ role: "assistant", content: reply });
    showStats(true);
  } catch (e) {
    if (e.name === "AbortError") { history.push({ role: "assistant", content: reply }); finish = "stopped"; showStats(true); }
    else { history.pop(); div.classList.add("error"); body.textContent = reply + (reply ? "\n" : "") + "Error: " + e.message; }
  } finally {
    controller = null;
    busy(false);
    promptBox.focus();
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = promptBox.value.trim();
  if (!text || controller) return;
  promptBox.value = "";
  send(text);
});
promptBox.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { if (controller) controller.abort(); history = []; log.replaceChildren(); });

loadModels();
