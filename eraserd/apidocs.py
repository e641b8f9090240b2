"""``GET /docs``: the control API's reference, one self-contained page that works offline.

FastAPI's own ``/docs`` loads Swagger UI from a CDN. This page loads nothing but
``openapi.json`` from the daemon itself: its script and style are inline, allowed by their
hashes in its Content-Security-Policy, which lets it connect only to the daemon. It lists
every operation (parameters, request body, responses, whether it needs the token) and the
schemas, and sends requests with the bearer token typed into it. The token stays in the page:
it is not stored.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 980px; padding: 1em;
  color: #1d1d1f; }
h1 { margin-bottom: 0.2em; } code, pre, textarea, input { font-family: ui-monospace, monospace; }
header label { display: block; margin: 1em 0 0.3em; font-weight: 600; }
#token { width: 100%; box-sizing: border-box; padding: 0.4em; }
details.op { border: 1px solid #ccd; border-radius: 6px; margin: 0.6em 0; }
details.op > summary { cursor: pointer; padding: 0.5em 0.7em; }
details.op > div { padding: 0 0.9em 0.8em; }
.method { display: inline-block; min-width: 4.5em; font-weight: 700; text-transform: uppercase; }
.get { color: #0b6bcb; } .post { color: #18794e; } .put, .patch { color: #a35200; }
.delete { color: #c62828; }
.lock { color: #6e6e73; font-size: 0.9em; margin-left: 0.6em; }
.text { white-space: pre-wrap; }
table { border-collapse: collapse; width: 100%; margin: 0.3em 0 0.8em; }
th, td { border-bottom: 1px solid #e3e3ea; padding: 0.25em 0.5em; text-align: left;
  vertical-align: top; }
textarea { width: 100%; box-sizing: border-box; min-height: 6em; }
pre.out { background: #f5f5f7; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
.error { color: #c62828; }
"""

SCRIPT = """
"use strict";
const METHODS = ["get", "put", "post", "delete", "patch", "head", "options"];
let spec = null;

function el(tag, cls, ...kids) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function refName(ref) { return ref.split("/").pop(); }

function typeOf(s) {
  if (!s) return "";
  if (s.$ref) {
    const target = ((spec.components || {}).schemas || {})[refName(s.$ref)] || {};
    return refName(s.$ref) + (target.enum ? " (" + target.enum.join(" | ") + ")" : "");
  }
  if (s.anyOf) return s.anyOf.map(typeOf).join(" | ");
  if (s.enum) return s.enum.join(" | ");
  if (s.type === "array") return typeOf(s.items) + "[]";
  return (s.type || "any") + (s.format ? " (" + s.format + ")" : "");
}

function table(head, rows) {
  const t = el("table");
  t.append(el("tr", null, ...head.map((h) => el("th", null, h))));
  for (const r of rows) t.append(el("tr", null, ...r.map((c) => el("td", "text", c))));
  return t;
}

function operation(path, method, op) {
  const params = op.parameters || [];
  const needsToken = (op.security || spec.security || []).length > 0;
  const head = el("summary", null, el("span", "method " + method, method),
    el("code", null, path), op.summary ? " " + op.summary : null,
    needsToken ? el("span", "lock", "needs the token") : null);
  const body = el("div");
  if (op.description) body.append(el("p", "text", op.description));
  if (params.length) {
    body.append(el("h4", null, "Parameters"), table(["name", "in", "type", "description"],
      params.map((p) => [p.name + (p.required ? " (required)" : ""), p.in, typeOf(p.schema),
        p.description || ""])));
  }
  const rb = op.requestBody;
  if (rb) {
    body.append(el("h4", null, "Request body" + (rb.required ? " (required)" : "")));
    if (rb.description) body.append(el("p", "text", rb.description));
    body.append(table(["content type", "schema"],
      Object.entries(rb.content || {}).map(([ct, c]) => [ct, typeOf(c.schema)])));
  }
  body.append(el("h4", null, "Responses"), table(["status", "description", "body"],
    Object.entries(op.responses || {}).map(([code, r]) => [code,
      (r.description || "") + (r.headers ? "\\nheaders: " + Object.keys(r.headers).join(", ") : ""),
      Object.values(r.content || {}).map((c) => typeOf(c.schema)).join(", ")])));
  body.append(tryIt(path, method, params, rb));
  return el("details", "op", head, body);
}

function tryIt(path, method, params, rb) {
  const form = el("form");
  const inputs = {};
  for (const p of params) {
    const input = el("input");
    input.name = p.name;
    inputs[p.name] = input;
    form.append(el("label", null, p.name + " (" + p.in + ") ", input), el("br"));
  }
  const content = rb ? Object.keys(rb.content || {}) : [];
  let text = null;
  let file = null;
  if (content.includes("application/json")) {
    text = el("textarea");
    text.value = "{}";
    form.append(el("label", null, "JSON body", text));
  } else if (content.length) {
    file = el("input");
    file.type = "file";
    form.append(el("label", null, "file (" + content.join(", ") + ") ", file));
  }
  const out = el("pre", "out");
  const send = el("button", null, "Send");
  send.type = "submit";
  form.append(el("p", null, send), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const p of params) {
      const v = inputs[p.name].value;
      if (p.in === "path") url = url.replace("{" + p.name + "}", encodeURIComponent(v));
      else if (p.in === "query" && v !== "") query.append(p.name, v);
    }
    const headers = {};
    const token = document.getElementById("token").value.trim();
    if (token) headers["Authorization"] = "Bearer " + token;
    const init = { method: method.toUpperCase(), headers };
    if (text) { headers["Content-Type"] = "application/json"; init.body = text.value; }
    if (file && file.files.length) {
      headers["Content-Type"] = file.files[0].type || "application/octet-stream";
      init.body = file.files[0];
    }
    const qs = query.toString();
    const target = new URL(url.slice(1) + (qs ? "?" + qs : ""), document.baseURI);
    out.textContent = "...";
    try {
      const r = await fetch(target, init);
      const raw = await r.text();
      let shown = raw;
      try { shown = JSON.stringify(JSON.parse(raw), null, 2); } catch (e) { /* not JSON */ }
      out.textContent = r.status + " " + r.statusText + "\\n" + shown;
    } catch (e) {
      out.textContent = "request failed: " + e;
    }
  });
  return el("details", null, el("summary", null, "Try it"), form);
}

function schemas() {
  const all = Object.entries((spec.components || {}).schemas || {});
  const box = el("section", null, el("h2", null, "Schemas"));
  for (const [name, s] of all) {
    box.append(el("h3", null, name));
    if (s.description) box.append(el("p", "text", s.description));
    if (s.enum) box.append(el("p", null, "one of: " + s.enum.join(", ")));
    const required = s.required || [];
    const props = Object.entries(s.properties || {});
    if (props.length) {
      box.append(table(["field", "type", "description"], props.map(([f, p]) =>
        [f + (required.includes(f) ? " (required)" : ""), typeOf(p), p.description || ""])));
    }
  }
  return box;
}

async function main() {
  const ops = document.getElementById("ops");
  try {
    const r = await fetch(new URL("openapi.json", document.baseURI));
    spec = await r.json();
  } catch (e) {
    ops.replaceChildren(el("p", "error", "cannot load openapi.json: " + e));
    return;
  }
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("about").textContent = spec.info.description || "";
  const list = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const m of METHODS) if (item[m]) list.push(operation(path, m, item[m]));
  }
  ops.replaceChildren(...list, schemas());
}

main();
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>eraserd API</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<header>
<h1 id="title">eraserd API</h1>
<p id="about"></p>
<label for="token">Bearer token (every route but /healthz, /metrics and these docs)</label>
<input id="token" type="password" autocomplete="off" spellcheck="false"
  placeholder="the contents of the token file (default state_dir/api-token)">
<p>Each <em>Send</em> passes it as <code>Authorization: Bearer &lt;token&gt;</code>; it is not
stored. The schema itself: <a href="openapi.json">openapi.json</a>.</p>
</header>
<main id="ops"><p>Loading openapi.json...</p></main>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_hash(SCRIPT)}",
        f"style-src {_hash(STYLE)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""The page's Content-Security-Policy: its own inline script and style, requests to the
daemon, nothing else."""
