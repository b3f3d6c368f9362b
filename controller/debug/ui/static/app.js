// vethguard ui: plain JavaScript over the JSON API of controller/debug/ui/server.py (no framework,
// nothing fetched from elsewhere). Pages are sections shown by the URL's hash.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// One error banner: an API error (unreachable lab, bad input ...) is shown, never a trace.
const errors = new Map();
function setError(where, message) {
  if (message) errors.set(where, message); else errors.delete(where);
  const box = $("#error");
  box.textContent = [...errors].map(([w, m]) => `${w}: ${m}`).join("\n");
  box.hidden = errors.size === 0;
}

async function api(path, where) {
  try {
    const resp = await fetch(path, { cache: "no-store" });
    const doc = await resp.json();
    if (!resp.ok || doc.error && resp.status >= 400) throw new Error(doc.error || resp.statusText);
    setError(where, null);
    return doc;
  } catch (exc) {
    setError(where, exc.message === "Failed to fetch" ? "vethguard ui does not answer (stopped?)" : exc.message);
    return null;
  }
}

function query(form) {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (String(v).trim() !== "") params.set(k, String(v).trim());
  return params;
}

// -- header and pages -----------------------------------------------------------------------------

let pods = [];

async function loadInfo() {
  const info = await api("/api/info", "status");
  if (!info) return;
  $("#target").textContent = info.target;
  $("#nodes").replaceChildren(...info.nodes.map(n =>
    el("span", { class: "node" + (n.ready ? "" : " down"), title: n.behind.length ? `realized other ${n.behind.join(", ")} objects than listed: not caught up yet` : "realized the listed state" },
      `${n.name}: ${n.agent ? (n.ready ? "agent ready" : "agent not ready") : "no agent"}`)));
  $("#probe-label").hidden = !info.probe;
  if (info.pods.join() !== pods.join()) {
    pods = info.pods;
    $("#pod-list").replaceChildren(...pods.map(p => el("option", { value: p })));
  }
  setError("flows", info.flows.error);
}

const pages = {
  policies: loadPolicies, heatmap: loadHeatmap, flows: startFlows, graph: loadGraph,
  explain: showExplainFromHash, whatif: () => {},
};

function route() {
  const [name] = (location.hash.slice(1) || "policies").split("?");
  const page = pages[name] ? name : "policies";
  for (const s of document.querySelectorAll(".page")) s.classList.toggle("shown", s.id === `page-${page}`);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  pages[page]();
}

function explainLink(from, to, port, protocol) {
  const params = new URLSearchParams({ from, to, port: port ?? 80, protocol: protocol || "TCP" });
  location.hash = `explain?${params}`;
}

// -- policies -------------------------------------------------------------------------------------

async function loadPolicies() {
  const doc = await api("/api/policies", "policies");
  if (!doc) return;
  const rows = doc.items.map(p => el("tr", { "data-kind": p.kind, "data-key": p.key },
    el("td", {}, p.kind),
    el("td", { class: "link", onclick: () => describe(p.kind, p.key) }, p.key),
    el("td", {}, p.tier ?? ""),
    el("td", {}, p.order ?? ""),
    el("td", {}, p.selector),
    el("td", {}, p.types.join(",")),
    el("td", { class: "selected" }, Object.entries(p.selected_by_node).filter(([, ps]) => ps.length)
      .map(([n, ps]) => el("div", {}, `${n}: ${ps.join(", ")}`)), p.selected.length ? "" : "<none>"),
    el("td", { class: "realized" }, Object.entries(p.realized).map(([n, ok]) =>
      el("div", { class: ok ? "ok" : "bad" }, `${n}: ${ok ? "yes" : "no"}`))),
    el("td", {}, p.mode),
    el("td", { class: p.errors ? "bad" : "" }, String(p.errors))));
  $("#policies-table tbody").replaceChildren(...rows);
  if (!rows.length) $("#policies-table tbody").append(el("tr", {}, el("td", { colspan: 10 }, "No policies.")));
  setError("policy warnings", doc.warnings.join("; ") || null);
}

async function describe(kind, key) {
  const doc = await api(`/api/policy?${new URLSearchParams({ kind, key })}`, "describe");
  const pre = $("#policy-detail");
  pre.hidden = !doc;
  if (doc) pre.textContent = doc.text;
}

// -- reachability heatmap -------------------------------------------------------------------------

let heatmapAsked = 0;  // only the latest request is drawn (a probe takes longer than a plain load)

async function loadHeatmap() {
  const params = query($("#heatmap-form"));
  if ($("#heatmap-form").probe.checked) params.set("probe", "1"); else params.delete("probe");
  const asked = ++heatmapAsked;
  const doc = await api(`/api/heatmap?${params}`, "reachability");
  if (!doc || asked !== heatmapAsked) return;
  const nsCells = new Map(doc.namespace_cells.map(c => [`${c.from}>${c.to}`, c]));
  $("#heatmap-ns").replaceChildren(
    el("tr", {}, el("th", {}, "from \\ to"), doc.namespaces.map(n => el("th", { class: "col" }, n))),
    ...doc.namespaces.map(src => el("tr", {}, el("th", {}, src), doc.namespaces.map(dst => {
      const c = nsCells.get(`${src}>${dst}`);
      const cls = c.allowed === c.cells ? "allowed" : c.allowed === 0 ? "denied" : "partial";
      return el("td", { class: `cell ${cls}${c.disagree ? " disagree" : ""}`, title: `${c.allowed} of ${c.cells} pod pairs allowed` },
        `${c.allowed}/${c.cells}`);
    }))));
  const cells = new Map(doc.cells.map(c => [`${c.from}>${c.to}`, c]));
  $("#heatmap-pods").replaceChildren(
    el("tr", {}, el("th", {}, `${doc.protocol}/${doc.port}`), doc.pods.map(p => el("th", { class: "col" }, p))),
    ...doc.pods.map(src => el("tr", {}, el("th", {}, src), doc.pods.map(dst => {
      const c = cells.get(`${src}>${dst}`);
      const disagree = c.agrees === false;
      const shown = disagree ? c.probed : c.allowed;
      const by = c.policy ? `${c.tier} ${c.rule || c.policy}` : c.reason;
      return el("td", {
        class: `cell ${shown ? "allowed" : "denied"}${disagree ? " disagree" : ""}`,
        "data-from": src, "data-to": dst,
        title: `${src} -> ${dst}: ${c.allowed ? "allowed" : "denied"} (${c.direction}: ${by})` +
          (c.probed === undefined || c.probed === null ? "" : `; probe ${c.probed ? "connected" : "did not connect"}`),
        onclick: () => explainLink(src, dst, doc.port, doc.protocol),
      }, disagree ? "!" : shown ? "." : "X");
    }))));
}

// -- live flows -----------------------------------------------------------------------------------

const flows = { last: 0, timer: null, generation: 0, rows: 0 };
const MAX_ROWS = 500;

function flowRow(r, fresh) {
  const tr = el("tr", { class: `${r.verdict}${fresh ? " fresh" : ""}`, "data-verdict": r.verdict, "data-from": r.from, "data-to": r.to, onclick: () => explainLink(r.from, r.to, r.port, r.protocol) },
    el("td", {}, (r.time || "").slice(11, 23)),
    el("td", {}, r.node),
    el("td", {}, r.from),
    // an address the pod learned from DNS (domainNames): the name it asked for
    el("td", { title: r.domain ? `${r.domain.domain}, ${r.domain.expired ? "expired" : "until " + r.domain.expires}` : "" },
      r.domain ? `${r.to} (${r.domain.name ?? r.domain.domain})` : r.to),
    el("td", {}, r.port ?? ""),
    el("td", {}, r.protocol),
    el("td", { class: r.verdict === "denied" ? "bad" : "ok" }, r.verdict),
    el("td", {}, r.reason),
    el("td", {}, r.tier ?? ""),
    el("td", {}, r.policy ?? (r.policies || []).join(", ")),
    el("td", {}, r.rule_name ? `${r.rule} (${r.rule_name})` : r.rule ?? ""));
  return tr;
}

async function pollFlows() {
  const generation = flows.generation;
  const params = query($("#flow-filters"));
  params.set("after", flows.last);
  const doc = await api(`/api/flows?${params}`, "flows");
  if (doc && generation === flows.generation) {
    const body = $("#flows-table tbody");
    const fresh = flows.last > 0;
    for (const r of doc.records) body.prepend(flowRow(r, fresh));
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
    flows.last = doc.last;
    $("#flow-state").textContent = doc.following ? "Following the agents." : "Not following (see the error above).";
    setError("flows", doc.error);
  }
  if ($("#page-flows").classList.contains("shown")) flows.timer = setTimeout(pollFlows, 500);
  else flows.timer = null;
}

function startFlows() {
  if (flows.timer === null) pollFlows();
}

function restartFlows() {
  flows.generation += 1;
  flows.last = 0;
  $("#flows-table tbody").replaceChildren();
  clearTimeout(flows.timer);
  flows.timer = null;
  startFlows();
}

// -- graph ----------------------------------------------------------------------------------------

let graphAsked = 0;

async function loadGraph() {
  const seconds = $("#graph-seconds").value || 300;
  const asked = ++graphAsked;
  const doc = await api(`/api/graph?seconds=${seconds}`, "graph");
  if (!doc || asked !== graphAsked) return;
  const root = $("#graph-svg");
  const W = 900, H = 640, R = Math.min(W, H) / 2 - 110;
  const defs = svg("defs");
  for (const kind of ["allowed", "denied"]) {
    const m = svg("marker", { id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 16, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    m.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: kind === "allowed" ? "#2d9a4e" : "#c92a2a" }));
    defs.append(m);
  }
  const groups = doc.namespaces.map(ns => ({ ns, pods: doc.nodes.filter(n => n.namespace === ns) }));
  const pos = new Map();
  const layer = svg("g"), edges = svg("g"), labels = svg("g");
  groups.forEach((g, i) => {
    const a = 2 * Math.PI * i / groups.length - Math.PI / 2;
    const cx = W / 2 + (groups.length > 1 ? R * Math.cos(a) : 0), cy = H / 2 + (groups.length > 1 ? R * Math.sin(a) : 0);
    const r = 28 + 12 * g.pods.length;
    layer.append(svg("circle", { class: "ns", cx, cy, r: r + 18 }));
    const t = svg("text", { class: "ns-label", x: cx, y: cy - r - 24, "text-anchor": "middle" });
    t.textContent = g.ns || "(outside)";
    labels.append(t);
    g.pods.forEach((p, j) => {
      const b = 2 * Math.PI * j / g.pods.length;
      const x = cx + (g.pods.length > 1 ? r * Math.cos(b) : 0), y = cy + (g.pods.length > 1 ? r * Math.sin(b) : 0);
      pos.set(p.id, [x, y]);
      layer.append(svg("circle", { class: "pod", cx: x, cy: y, r: 7, "data-pod": p.id }));
      const l = svg("text", { class: "pod-label", x: x + 9, y: y - 9 });
      l.textContent = g.ns ? p.id.slice(g.ns.length + 1) : p.id;
      labels.append(l);
    });
  });
  for (const e of doc.edges) {
    const [x1, y1] = pos.get(e.from), [x2, y2] = pos.get(e.to);
    for (const kind of ["allowed", "denied"]) {
      if (!e[kind]) continue;
      const bend = kind === "allowed" ? 0.15 : -0.15;  // both kinds of one pair stay apart
      const mx = (x1 + x2) / 2 - (y2 - y1) * bend, my = (y1 + y2) / 2 + (x2 - x1) * bend;
      const path = svg("path", { class: `edge ${kind}`, d: `M${x1},${y1} Q${mx},${my} ${x2},${y2}`, "data-from": e.from, "data-to": e.to });
      const title = svg("title");
      title.textContent = `${e.from} -> ${e.to}: ${e[kind]} ${kind} (ports ${e.ports.join(",")})${e.policy ? ", " + e.policy : ""}`;
      path.append(title);
      path.addEventListener("click", () => explainLink(e.from, e.to, e.ports[0], "TCP"));
      edges.append(path);
    }
  }
  root.replaceChildren(defs, layer, edges, labels);
}

// -- explain --------------------------------------------------------------------------------------

function showExplainFromHash() {
  const [, qs] = location.hash.slice(1).split("?");
  if (!qs) return;
  const params = new URLSearchParams(qs);
  const form = $("#explain-form");
  for (const name of ["from", "to", "port", "protocol"]) if (params.has(name)) form[name].value = params.get(name);
  runExplain();
}

async function runExplain() {
  const params = query($("#explain-form"));
  params.set("kernel", $("#explain-form").kernel.checked ? "1" : "0");
  const doc = await api(`/api/explain?${params}`, "explain");
  const box = $("#explain-result");
  if (!doc) { box.replaceChildren(); return; }
  const halves = [doc.egress, doc.ingress, ...doc.host_endpoints];
  box.replaceChildren(
    el("div", { class: `verdict ${doc.allowed ? "allowed" : "denied"}` },
      `${doc.from} -> ${doc.to} ${doc.protocol}/${doc.port}: ${doc.allowed ? "ALLOWED" : "DENIED"}`),
    el("table", { id: "explain-halves" },
      el("tr", {}, ["Hook", "Endpoint", "Node", "Verdict", "Reason", "Tier", "Deciding policy", "Rule", "Kernel"].map(h => el("th", {}, h))),
      halves.map(h => el("tr", {},
        el("td", {}, h.direction ?? h.kind ?? ""),
        el("td", {}, h.endpoint ?? h.host_endpoint ?? ""),
        el("td", {}, h.node ?? ""),
        el("td", { class: h.allowed ? "ok" : "bad" }, h.allowed ? "allowed" : "denied"),
        el("td", {}, h.reason ?? ""),
        el("td", {}, h.tier ?? ""),
        el("td", { class: "policy" }, h.policy ?? (h.policies || []).join(", ")),
        el("td", {}, h.rule ?? ""),
        el("td", { class: h.mismatch ? "bad" : "" }, h.mismatch ? h.mismatch : h.kernel ? "agrees" : h.kernel_error ?? "not checked")))),
    doc.notes.length ? el("ul", {}, doc.notes.map(n => el("li", {}, n))) : "",
    el("pre", { id: "explain-text" }, doc.text));
}

// -- what-if --------------------------------------------------------------------------------------

async function runWhatif() {
  const form = $("#whatif-form");
  const box = $("#whatif-result");
  const request = { yaml: form.yaml.value, delete: form.delete.value.split(/\s+/).filter(Boolean) };
  let doc;
  try {
    const resp = await fetch("/api/whatif", { method: "POST", body: JSON.stringify(request), cache: "no-store" });
    doc = await resp.json();
    if (!resp.ok) {
      setError("what-if", null);
      box.replaceChildren(el("div", { class: "verdict denied" }, "The change is not valid"),
        el("ul", { id: "whatif-problems" }, (doc.problems || [doc.error]).map(p => el("li", {}, p))));
      return;
    }
    setError("what-if", null);
  } catch (exc) {
    setError("what-if", "vethguard ui does not answer (stopped?)");
    return;
  }
  const side = d => `${d.verdict}: ${d.rule}`;
  box.replaceChildren(
    el("ul", {}, doc.objects.map(o => el("li", {}, `${o.kind} ${o.namespace ? o.namespace + "/" : ""}${o.name}: ${o.action} (not applied)`))),
    el("p", { id: "whatif-count" }, `${doc.changed.length} of ${doc.flows} flows would change their verdict`),
    el("table", { id: "whatif-table" },
      el("tr", {}, ["From", "To", "Port", "Proto", "Before", "After"].map(h => el("th", {}, h))),
      doc.changed.map(c => el("tr", { class: c.after.verdict === "denied" ? "denied" : "allowed" },
        el("td", {}, c.from), el("td", {}, c.to), el("td", {}, c.port ?? "-"), el("td", {}, c.protocol),
        el("td", {}, side(c.before)), el("td", {}, side(c.after))))),
    el("table", { id: "whatif-summary" },
      el("tr", {}, ["Namespace", "Newly denied", "Newly allowed", "Other"].map(h => el("th", {}, h))),
      Object.entries(doc.summary).map(([ns, c]) => el("tr", {},
        el("td", {}, ns), el("td", {}, c.newly_denied), el("td", {}, c.newly_allowed), el("td", {}, c.other)))));
}

// -- wiring ---------------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
$("#heatmap-form").addEventListener("submit", ev => { ev.preventDefault(); loadHeatmap(); });
$("#explain-form").addEventListener("submit", ev => {
  ev.preventDefault();
  const hash = `#explain?${query($("#explain-form"))}`;
  if (location.hash === hash) runExplain(); else location.hash = hash;
});
$("#whatif-form").addEventListener("submit", ev => { ev.preventDefault(); runWhatif(); });
$("#flow-filters").addEventListener("input", restartFlows);
$("#flow-filters").addEventListener("reset", () => setTimeout(restartFlows, 0));
$("#graph-seconds").addEventListener("change", loadGraph);
setInterval(() => { if ($("#page-graph").classList.contains("shown")) loadGraph(); }, 3000);
setInterval(loadInfo, 5000);

(async () => {
  await loadInfo();
  route();
})();
