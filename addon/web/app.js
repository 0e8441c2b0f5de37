// butter's web view: plain JavaScript, no libraries, no build step.
// Talks to the JSON API in addon/webview.py; draws each workflow as an SVG
// tree laid out left to right (depth in columns, one row per leaf).
"use strict";

const BOOT = JSON.parse(document.getElementById("boot").textContent || "{}");
const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const CARD_W = 214, CARD_H = 58, COL_W = 262, ROW_H = 72, PAD = 20;
const PAGE = 8;           // children fetched per node and per "more"
const POLL_MS = 1500;     // live update: how often the generation counter is read

const state = {
  workflows: new Map(),   // root id -> workflow row
  nodes: new Map(),       // id -> card (with .kids: ids in display order)
  collapsed: new Set(),   // ids the user folded
  root: null,             // the open workflow's root id
  selected: null,
  zoom: 1,
  generation: null,
  requestsSeen: 0,
};

// -- helpers -------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const short = (id) => (id || "").slice(0, 12);
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const clip = (text, n) => (text.length > n ? text.slice(0, n - 1) + "…" : text);
const pretty = (value) => (typeof value === "string" ? value : JSON.stringify(value, null, 2));

function when(ts) {
  if (!ts) return "never";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString(undefined, { hour12: false });
}

function toast(text, bad = false) {
  const t = $("toast");
  t.textContent = text;
  t.className = "toast" + (bad ? " bad" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

function roleClass(card) {
  if (card.kind === "root") return "root";
  if (card.kind === "template") return "template " + safeRole(card.role);
  return safeRole(card.role);
}

function safeRole(role) {
  const r = String(role || "").toLowerCase();
  if (["system", "developer"].includes(r)) return "system";
  if (["user", "human"].includes(r)) return "user";
  if (["assistant", "model", "function_call", "reasoning"].includes(r)) return "assistant";
  if (["tool", "function", "function_call_output"].includes(r)) return "tool";
  return "other";
}

// -- workflows (left) -----------------------------------------------------------------

async function loadOverview() {
  const data = await api("api/overview");
  state.generation = data.generation;
  state.workflows.clear();
  const box = $("workflows");
  box.replaceChildren();
  if (!data.namespaces.length) {
    box.append(el("p", { class: "muted" }, "Nothing recorded yet. Send an agent through the proxy and its workflows appear here."));
    return;
  }
  for (const ns of data.namespaces) {
    const group = el("div", { class: "ns" },
      el("div", { class: "ns-name", title: "namespace (a credential's hash or a shared name)" }, ns.namespace || "(none)"));
    for (const wf of ns.workflows) {
      state.workflows.set(wf.id, wf);
      group.append(el("button", {
        class: "wf" + (wf.id === state.root ? " active" : ""), "data-root": wf.id,
        onclick: () => openWorkflow(wf.id),
      },
      el("div", { class: "wf-line" }, el("span", { class: "api" }, wf.api), el("span", { class: "model" }, wf.model)),
      wf.tools.length ? el("div", { class: "chips" }, wf.tools.slice(0, 6).map((t) => el("span", { class: "chip tool" }, t)),
        wf.tools.length > 6 ? el("span", { class: "chip" }, `+${wf.tools.length - 6}`) : null) : null,
      el("div", { class: "wf-meta muted" }, `${plural(wf.branches, "first message")} · since ${when(wf.created)}`,
        wf.params ? el("div", { class: "params" }, wf.params) : null)));
    }
    box.append(group);
  }
}

// -- the graph ----------------------------------------------------------------------------

function ingest(card) {
  // Cards arrive nested; keep them flat with child ids, merging with what is loaded.
  const old = state.nodes.get(card.id);
  const kids = card.children.map((c) => ingest(c));
  let order = kids;
  if (old && old.kids) order = old.kids.concat(kids.filter((k) => !old.kids.includes(k)));
  const flat = Object.assign({}, card, { kids: order });
  delete flat.children;
  state.nodes.set(card.id, flat);
  return card.id;
}

async function openWorkflow(rootId, reveal = null) {
  const fresh = state.root !== rootId;
  if (fresh) {
    state.nodes.clear();
    state.collapsed.clear();
    state.zoom = 1;
  }
  state.root = rootId;
  for (const b of document.querySelectorAll(".wf")) b.classList.toggle("active", b.dataset.root === rootId);
  const wf = state.workflows.get(rootId);
  $("wf-title").replaceChildren(wf ? el("span", {}, el("strong", {}, `${wf.api} · ${wf.model}`),
    el("span", { class: "muted" }, `  ${wf.namespace}`)) : short(rootId));
  $("wf-title").classList.remove("muted");
  await refreshTree(reveal);
  if (fresh && !reveal) fit(0.8, 1);  // a whole run in view when it fits at a readable size
}

async function refreshTree(reveal = null) {
  if (!state.root) return;
  const params = new URLSearchParams({ depth: "12", limit: String(Math.max(PAGE, widestPage())) });
  for (const id of [reveal, state.selected]) if (id) params.append("reveal", id);
  const tree = await api(`api/tree/${state.root}?${params}`);
  ingest(tree);
  draw();
}

function widestPage() {
  let widest = 0;
  for (const card of state.nodes.values()) widest = Math.max(widest, card.kids.length);
  return Math.min(widest, 200);
}

async function expand(id) {
  const card = state.nodes.get(id);
  if (!card) return;
  if (state.collapsed.has(id)) { state.collapsed.delete(id); draw(); return; }
  if (card.kids.length) { state.collapsed.add(id); draw(); return; }
  const sub = await api(`api/tree/${id}?depth=12&limit=${PAGE}`);
  ingest(sub);
  draw();
}

async function more(id) {
  const card = state.nodes.get(id);
  const page = await api(`api/children/${id}?offset=${card.kids.length}&limit=${PAGE}&depth=12`);
  for (const child of page.children) {
    const cid = ingest(child);
    if (!card.kids.includes(cid)) card.kids.push(cid);
  }
  card.children_total = page.total;
  draw();
}

function layout() {
  // Depth in columns; leaves take rows in order; a parent sits level with its first child
  // (single-child chains read as straight lines).
  const placed = [];
  let row = 0;
  const place = (id, col) => {
    const card = state.nodes.get(id);
    if (!card) return null;
    const open = !state.collapsed.has(id);
    const kids = open ? card.kids.filter((k) => state.nodes.has(k)) : [];
    const hidden = card.children_total - (open ? kids.length : 0);
    const entry = { card, col, kids: [], hidden, open };
    if (!kids.length) {
      entry.row = row++;
    } else {
      for (const k of kids) entry.kids.push(place(k, col + 1));
      entry.row = entry.kids[0].row;
    }
    if (open && kids.length && hidden > 0) {
      entry.moreRow = row++;  // the "+ N more" pill under the last child
    }
    placed.push(entry);
    return entry;
  };
  const top = place(state.root, 0);
  return { top, placed, rows: row };
}

function draw() {
  const root = state.nodes.get(state.root);
  const box = $("svg");
  if (!root) return;
  $("graph-empty").hidden = true;
  box.removeAttribute("hidden");  // an SVG element has no .hidden property
  const { placed, rows } = layout();
  const cols = Math.max(...placed.map((p) => p.col)) + 1;
  const width = PAD * 2 + cols * COL_W, height = PAD * 2 + Math.max(rows, 1) * ROW_H;
  box.setAttribute("width", Math.ceil(width * state.zoom));
  box.setAttribute("height", Math.ceil(height * state.zoom));
  box.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const edges = svg("g", { class: "edges" }), cards = svg("g", { class: "cards" });
  const onPath = pathToSelected();
  const at = (p) => [PAD + p.col * COL_W, PAD + p.row * ROW_H];
  for (const p of placed) {
    const [x, y] = at(p);
    for (const k of p.kids) {
      const [cx, cy] = at(k);
      const sx = x + CARD_W, sy = y + CARD_H / 2, ty = cy + CARD_H / 2, mid = (sx + cx) / 2;
      edges.append(svg("path", { d: `M${sx},${sy} C${mid},${sy} ${mid},${ty} ${cx},${ty}`,
        class: "edge" + (k.card.kind === "template" ? " tpl" : "") + (onPath.has(k.card.id) ? " on-path" : "") }));
    }
    if (p.moreRow !== undefined) {
      const mx = x + COL_W, my = PAD + p.moreRow * ROW_H;
      edges.append(svg("path", { d: `M${x + CARD_W},${y + CARD_H / 2} C${x + CARD_W + 27},${y + CARD_H / 2} ${x + CARD_W + 27},${my + 17} ${mx},${my + 17}`, class: "edge faint" }));
      cards.append(morePill(p, mx, my));
    }
    cards.append(cardNode(p, x, y));
  }
  box.replaceChildren(svg("g", { class: "scene" }, edges, cards));
}

function pathToSelected() {
  // The selected node and its ancestors: their edges are drawn bold.
  const ids = new Set();
  let card = state.nodes.get(state.selected);
  while (card) { ids.add(card.id); card = state.nodes.get(card.parent); }
  return ids;
}

function morePill(p, x, y) {
  const label = `+ ${p.hidden} more branch${p.hidden === 1 ? "" : "es"}`;
  return svg("g", { class: "more", transform: `translate(${x},${y})`, role: "button", tabindex: "0",
    "data-more": p.card.id, onclick: () => more(p.card.id).catch((e) => toast(e.message, true)) },
  svg("rect", { width: 170, height: 34, rx: 17 }),
  text(label, 85, 22, "more-label", "middle"));
}

function text(content, x, y, cls, anchor = "start") {
  const t = svg("text", { x, y, class: cls, "text-anchor": anchor });
  t.textContent = content;
  return t;
}

function cardNode(p, x, y) {
  const c = p.card;
  const g = svg("g", {
    class: `card ${roleClass(c)}${c.id === state.selected ? " selected" : ""}${c.bad ? " is-bad" : ""}`,
    transform: `translate(${x},${y})`, "data-id": c.id, "data-kind": c.kind, "data-children": p.kids.length, "data-depth": c.depth,
    role: "button", tabindex: "0",
  });
  g.addEventListener("click", () => select(c.id));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(c.id); });
  const title = svg("title");
  title.textContent = c.summary;
  g.append(title, svg("rect", { class: "box", width: CARD_W, height: CARD_H, rx: 9 }),
    svg("rect", { class: "stripe", width: 6, height: CARD_H, rx: 3 }));
  const label = c.kind === "root" ? "workflow" : (c.kind === "template" ? `${c.role} · template` : c.role);
  g.append(text(label, 16, 18, "role"));
  let line = c.kind === "root" ? `${c.tools.length ? plural(c.tools.length, "tool") : "no tools"}` : (c.text || "");
  if (c.tools && c.tools.length && c.kind !== "root") line = "→ " + c.tools.join(", ") + (c.text ? "  " + c.text : "");
  g.append(text(clip(line.replace(/\s+/g, " "), 33), 16, 37, "line"));
  // Badges along the bottom: replies, hits, bad marks, trust.
  const badges = [];
  if (c.reply) {
    badges.push([c.hits ? `${c.hits} hit${c.hits === 1 ? "" : "s"}` : "reply", c.hits ? "b-hit" : "b-reply"]);
    if (c.reply.tokens_saved) badges.push([`${c.reply.tokens_saved} tok saved`, "b-tok"]);
    if (c.reply.reputation) badges.push([`rep ${c.reply.reputation > 0 ? "+" : ""}${c.reply.reputation}`, "b-rep"]);
  }
  if (c.bad) badges.push(["bad", "b-bad"]);
  const trust = c.trust || (c.reply && c.reply.trust);
  if (trust) badges.push([String(trust), "b-trust"]);
  if (c.slots && c.slots.length) badges.push([plural(c.slots.length, "slot"), "b-slot"]);
  let bx = 16;
  for (const [label, cls] of badges.slice(0, 4)) {
    const w = 8 + label.length * 6.1;
    g.append(svg("rect", { class: `badge ${cls}`, x: bx, y: 43, width: w, height: 12, rx: 6 }),
      text(label, bx + w / 2, 52.5, `badge-text ${cls}`, "middle"));
    bx += w + 4;
  }
  if (c.children_total > 0) {
    const open = p.open && p.kids.length > 0;
    const toggle = svg("g", { class: "toggle", transform: `translate(${CARD_W + 6},${CARD_H / 2 - 10})`,
      role: "button", "data-toggle": c.id, "aria-label": open ? "fold" : "unfold" });
    toggle.addEventListener("click", (e) => { e.stopPropagation(); expand(c.id).catch((err) => toast(err.message, true)); });
    toggle.append(svg("rect", { width: open ? 20 : 34, height: 20, rx: 10 }),
      text(open ? "−" : `+${c.children_total}`, open ? 10 : 17, 14, "toggle-text", "middle"));
    g.append(toggle);
  }
  return g;
}

function setZoom(z) {
  state.zoom = Math.min(2.5, Math.max(0.2, z));
  draw();
}

function fit(least = 0.2, most = 1.5) {
  const box = $("svg"), area = $("graph");
  if (box.hasAttribute("hidden")) return;
  const vb = box.viewBox.baseVal;
  const wanted = Math.min(most, (area.clientWidth - 16) / vb.width, (area.clientHeight - 16) / vb.height);
  setZoom(Math.max(least, wanted));
}

// -- one node (right) -----------------------------------------------------------------------

async function select(id) {
  state.selected = id;
  if (state.nodes.has(id)) draw();  // the path to it drawn bold
  const pane = $("detail");
  pane.replaceChildren(el("p", { class: "muted pad" }, "Loading…"));
  try {
    renderDetail(await api(`api/node/${id}`));
  } catch (e) {
    pane.replaceChildren(el("p", { class: "error pad" }, e.message));
  }
}

function renderBlocks(blocks) {
  return blocks.map((b) => {
    if (b.type === "text") return longText(b.text);
    if (b.type === "thinking") {
      return el("details", { class: "blk thinking" }, el("summary", {}, "thinking"), el("div", { class: "think-text" }, b.text));
    }
    if (b.type === "tool_call") {
      return el("div", { class: "blk call" }, el("div", { class: "call-head" }, "→ ", el("strong", {}, b.name)),
        el("pre", { class: "json" }, pretty(b.arguments)));
    }
    if (b.type === "tool_result") {
      const head = ["tool result", b.name ? ` · ${b.name}` : "", b.ref !== undefined && b.ref !== null ? ` · call ${b.ref}` : ""].join("");
      return el("div", { class: "blk result" }, el("div", { class: "call-head" }, head), el("pre", { class: "json" }, pretty(b.result)));
    }
    return el("details", { class: "blk data" }, el("summary", {}, b.label || "data"), el("pre", { class: "json" }, pretty(b.value)));
  });
}

function longText(textValue) {
  // Long prompts are folded to a few lines; a click shows them whole.
  const box = el("div", { class: "blk text" }, textValue);
  if (textValue.length <= 500) return box;
  box.classList.add("folded");
  const toggle = el("button", { class: "unfold" }, "show all");
  toggle.addEventListener("click", () => {
    const folded = box.classList.toggle("folded");
    toggle.textContent = folded ? "show all" : "show less";
  });
  return el("div", {}, box, toggle);
}

function renderDetail(d) {
  const pane = $("detail");
  const stats = d.stats || {};
  const head = el("div", { class: "d-head" },
    el("div", { class: "d-title" }, el("span", { class: `pill ${d.kind === "template" ? "template" : safeRole(d.path.length ? d.path[d.path.length - 1].role : "root")}` },
      d.kind === "root" ? "workflow" : `${d.path.length ? d.path[d.path.length - 1].role : ""}${d.kind === "template" ? " · template" : ""}`),
    el("code", { class: "nid", title: "node id (click to copy)", onclick: () => navigator.clipboard && navigator.clipboard.writeText(d.id) }, d.id)),
    el("div", { class: "d-stats" },
      stat("hits", stats.hits || 0), stat("tokens saved", stats.tokens_saved || 0), stat("depth", d.depth),
      stat("replies", d.replies.length), stat("children", d.children.length),
      d.trust ? stat("trust", d.trust) : null),
    el("div", { class: "muted small" }, `created ${when(d.created)} · last hit ${when(stats.last_hit)}`));
  const actions = el("div", { class: "actions" },
    el("button", { class: "danger-outline", disabled: !BOOT.writes, title: BOOT.writes ? "Forget this node, everything below it and their replies" : readOnlyHint(),
      onclick: () => confirmForget(d) }, "Forget subtree"));
  const convo = el("section", { class: "convo" }, el("h3", {}, plural(d.path.length, "message"), " on this path"));
  d.path.forEach((m, i) => {
    const last = i === d.path.length - 1;
    convo.append(el("div", { class: `msg ${safeRole(m.role)}${last ? " here" : ""}${m.kind === "template" ? " tpl" : ""}` },
      el("div", { class: "msg-head" }, el("span", { class: "msg-role" }, m.role), el("span", { class: "muted small" }, `#${m.depth}`),
        m.kind === "template" ? el("span", { class: "chip slot" }, "template") : null,
        el("a", { href: "#", class: "small idlink", onclick: (e) => { e.preventDefault(); select(m.id); } }, short(m.id))),
      m.slots && m.slots.length ? el("div", { class: "chips" }, m.slots.map((s) => el("span", { class: "chip slot" }, `{{${s}}}`, m.shapes && m.shapes[s] ? el("em", {}, ` ${m.shapes[s]}`) : null))) : null,
      renderBlocks(m.blocks)));
  });
  const replies = el("section", { class: "replies" }, el("h3", {}, d.replies.length ? plural(d.replies.length, "reply") : "No reply here"));
  if (!d.replies.length) replies.append(el("p", { class: "muted small" }, "An inner node: the conversation goes on below."));
  for (const r of d.replies) {
    replies.append(el("div", { class: `reply${r.bad ? " bad" : ""}${r.served ? " served" : ""}`, "data-reply": r.id },
      el("div", { class: "reply-head" },
        el("span", { class: "pill " + (r.bad ? "bad" : r.served ? "served" : "idle") }, r.bad ? "marked bad" : r.served ? "served" : "not served"),
        r.trust ? el("span", { class: "pill trust" }, r.trust) : null,
        el("span", { class: "small muted" }, `seen ${r.count}× · reputation ${r.score} · ${r.tokens} tokens${r.streamed ? " · streamed" : ""}`)),
      renderBlocks(r.blocks),
      el("div", { class: "reply-actions" },
        el("button", { class: "good", disabled: !BOOT.writes, title: BOOT.writes ? "Mark this reply good" : readOnlyHint(), onclick: () => confirmVote(d, r, "good") }, "Mark good"),
        el("button", { class: "bad", disabled: !BOOT.writes, title: BOOT.writes ? "Mark this reply bad: it is no longer served" : readOnlyHint(), onclick: () => confirmVote(d, r, "bad") }, "Mark bad")),
      el("details", { class: "blk data" }, el("summary", {}, "raw reply"), el("pre", { class: "json" }, pretty(r.reply)))));
  }
  const context = d.context ? el("details", { class: "blk data ctx" }, el("summary", {}, "workflow context (api, model, tools, parameters)"),
    el("pre", { class: "json" }, pretty(d.context))) : null;
  pane.replaceChildren(...[head, BOOT.writes ? null : el("p", { class: "ro small" }, readOnlyHint()), actions, replies, convo, context]
    .filter(Boolean));
}

function stat(label, value) {
  return el("div", { class: "stat" }, el("div", { class: "v" }, String(value)), el("div", { class: "k" }, label));
}

function readOnlyHint() {
  return BOOT.where === "ui" ? "Read-only: start with `butter ui --allow-writes` to mark or forget."
    : "Read-only: run the proxy with --set butter_ui_writes=true to mark or forget.";
}

// -- writes, each after a confirmation ------------------------------------------------------------

function confirmDialog(title, body, okLabel) {
  return new Promise((resolve) => {
    $("modal-title").textContent = title;
    $("modal-text").textContent = body;
    $("modal-ok").textContent = okLabel;
    $("modal").hidden = false;
    $("modal-ok").focus();
    const done = (answer) => {
      $("modal").hidden = true;
      $("modal-ok").onclick = $("modal-cancel").onclick = null;
      resolve(answer);
    };
    $("modal-ok").onclick = () => done(true);
    $("modal-cancel").onclick = () => done(false);
  });
}

async function write(path, payload) {
  return api(path, { method: "POST", headers: { "content-type": "application/json", "butter-token": BOOT.token || "" },
    body: JSON.stringify(payload) });
}

async function confirmVote(d, r, score) {
  const ok = await confirmDialog(score === "bad" ? "Mark this reply bad?" : "Mark this reply good?",
    score === "bad" ? "butter stops serving it: the next request here goes to the provider and its new answer is served from then on."
      : "Raises its reputation; a reply marked bad once is lifted by one good vote.", score === "bad" ? "Mark bad" : "Mark good");
  if (!ok) return;
  try {
    const result = await write("api/vote", { node: d.id, reply: r.id, score });
    toast(`Marked ${score}. ${result.servable ? "The node still serves a reply." : "Nothing is served here now."}`);
    await select(d.id);
    await refreshTree();
  } catch (e) { toast(e.message, true); }
}

async function confirmForget(d) {
  const ok = await confirmDialog("Forget this subtree?",
    `Node ${short(d.id)}, everything below it (${plural(d.children.length, "direct child", )}) and their replies are deleted. Proxies keep serving; a request that walks here again records afresh.`, "Forget");
  if (!ok) return;
  try {
    const result = await write("api/forget", { node: d.id });
    toast(`Forgot ${plural(result.nodes, "node")} and ${plural(result.replies, "reply")}.`);
    state.nodes.delete(d.id);
    for (const card of state.nodes.values()) card.kids = card.kids.filter((k) => k !== d.id);
    state.selected = null;
    $("detail").replaceChildren(el("p", { class: "muted pad" }, "Forgotten."));
    if (d.id === state.root) { state.root = null; $("svg").setAttribute("hidden", ""); $("graph-empty").hidden = false; }
    await loadOverview();
    if (state.root) await refreshTree();
  } catch (e) { toast(e.message, true); }
}

// -- navigation to any node (search, request list) ---------------------------------------------------

async function reveal(id) {
  const d = await api(`api/node/${id}`);
  if (!d.root) { renderDetail(d); return; }
  if (!state.workflows.has(d.root)) await loadOverview();
  for (const p of d.path) state.collapsed.delete(p.id);
  state.selected = id;
  await openWorkflow(d.root, id);
  renderDetail(d);
  const card = document.querySelector(`.card[data-id="${id}"]`);
  if (card) card.scrollIntoView({ block: "center", inline: "center" });
}

// -- search ----------------------------------------------------------------------------------------------

let searchTimer = null;
function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 250);
}

async function runSearch() {
  const q = $("search").value.trim();
  const box = $("results");
  if (!q) { box.hidden = true; return; }
  const data = await api(`api/search?q=${encodeURIComponent(q)}`);
  box.replaceChildren();
  if (!data.results.length) box.append(el("div", { class: "res muted" }, `Nothing matches “${q}”.`));
  for (const r of data.results) {
    box.append(el("button", { class: "res", "data-id": r.id, onclick: () => { box.hidden = true; reveal(r.id).catch((e) => toast(e.message, true)); } },
      el("span", { class: `pill ${r.kind === "template" ? "template" : safeRole(r.role)}` }, r.kind === "root" ? "workflow" : r.role),
      el("span", { class: "res-text" }, clip(r.summary, 90)),
      el("span", { class: "res-wf muted small" }, `${short(r.id)} · ${r.workflow}`)));
  }
  if (data.more) box.append(el("div", { class: "res muted small" }, "More matches: refine the search."));
  box.hidden = false;
}

// -- recent requests (bottom) ------------------------------------------------------------------------------

async function loadRequests() {
  const data = await api("api/recent?limit=200");
  const body = $("requests").querySelector("tbody");
  body.replaceChildren();
  $("requests-empty").hidden = data.requests.length > 0;
  const counts = {};
  for (const r of data.requests) {
    const kind = String(r.status).split(" ")[0];
    counts[kind] = (counts[kind] || 0) + 1;
    const where = [];
    if (r.node && kind === "hit") where.push(el("a", { href: "#", class: "idlink", onclick: (e) => { e.preventDefault(); reveal(r.node); } }, `served ${short(r.node)}`));
    if (r.detail) {
      const prefix = r.matched !== undefined && r.matched >= 0 ? `left the tree at message ${r.matched}: ` : "";
      where.push(el("span", { class: "why" }, prefix + r.detail));
    }
    if (r.deepest) where.push(" ", el("a", { href: "#", class: "idlink", title: "the last node it matched", onclick: (e) => { e.preventDefault(); reveal(r.deepest); } }, `after ${short(r.deepest)}`));
    else if (r.node && kind !== "hit") where.push(" ", el("a", { href: "#", class: "idlink", title: "where its reply is recorded", onclick: (e) => { e.preventDefault(); reveal(r.node).catch(() => toast("not recorded (yet)", true)); } }, `recorded at ${short(r.node)}`));
    const target = kind === "hit" ? r.node : (r.deepest || null);
    body.append(el("tr", { class: `st-${kind}${target ? " go" : ""}`, title: target ? "show this node in its workflow" : null,
      onclick: (e) => { if (target && !e.target.closest("a")) reveal(target).catch((err) => toast(err.message, true)); } },
      el("td", { class: "mono" }, clock(r.t)),
      el("td", {}, el("span", { class: `pill st ${kind}` }, r.status)),
      el("td", {}, `${r.api} · ${r.model || "?"}`),
      el("td", { class: "num" }, r.messages ?? ""),
      el("td", { class: "num" }, r.ms !== undefined ? Math.round(r.ms) : ""),
      el("td", { class: "where" }, where)));
  }
  const summary = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(" · ");
  $("req-count").textContent = data.requests.length ? `last ${data.requests.length}: ${summary}` : "";
}

// -- live update ------------------------------------------------------------------------------------------------

let lastOk = 0;
async function poll() {
  try {
    const { generation } = await api("api/generation");
    lastOk = Date.now();
    $("live").classList.remove("down");
    if (generation !== state.generation) {
      state.generation = generation;
      await Promise.all([loadRequests(), loadOverview()]);
      if (state.root && state.workflows.has(state.root)) await refreshTree();
      $("live").classList.add("pulse");
      setTimeout(() => $("live").classList.remove("pulse"), 600);
    }
    $("live-text").textContent = "live";
  } catch (e) {
    $("live").classList.add("down");
    $("live-text").textContent = "offline";
  }
  setTimeout(poll, POLL_MS);
}

// -- start -----------------------------------------------------------------------------------------------------

function start() {
  $("where").replaceChildren(
    el("span", { class: "db", title: BOOT.db }, BOOT.db ? clip(BOOT.db, 60) : ""),
    el("span", { class: "mode " + (BOOT.writes ? "rw" : "ro") }, BOOT.writes ? "writes allowed" : "read-only"),
    el("span", { class: "muted small" }, BOOT.where === "proxy" ? "via the proxy" : "butter ui"));
  $("search").addEventListener("input", onSearchInput);
  $("search").addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(searchTimer); runSearch(); } if (e.key === "Escape") $("results").hidden = true; });
  document.addEventListener("click", (e) => { if (!e.target.closest(".searchbox")) $("results").hidden = true; });
  $("zoom-in").onclick = () => setZoom(state.zoom * 1.25);
  $("zoom-out").onclick = () => setZoom(state.zoom / 1.25);
  $("zoom-fit").onclick = () => fit();
  $("graph").addEventListener("wheel", (e) => { if (e.ctrlKey) { e.preventDefault(); setZoom(state.zoom * (e.deltaY < 0 ? 1.1 : 0.9)); } }, { passive: false });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("modal").hidden) $("modal-cancel").click(); });
  Promise.all([loadOverview(), loadRequests()]).then(() => {
    const first = state.workflows.keys().next();
    if (!first.done && state.workflows.size === 1) openWorkflow(first.value);
  }).catch((e) => toast(e.message, true)).finally(() => setTimeout(poll, POLL_MS));
}

start();
