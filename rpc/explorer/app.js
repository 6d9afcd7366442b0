// Grapevine block explorer. Plain JavaScript, no dependencies, same-origin only.
// Nothing from the chain or the URL is ever inserted as HTML: every piece of text goes
// through textContent (see el()).
"use strict";

const main = document.getElementById("main");
const live = document.getElementById("live");
let rpcId = 0;

// ---- helpers ---------------------------------------------------------------------

/** Builds an element; strings become text nodes, never markup. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "href") e.setAttribute("href", v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}

async function rpc(method, params) {
  const body = JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params: params || [] });
  const r = await fetch("/", { method: "POST", headers: { "content-type": "application/json" }, body });
  const j = await r.json();
  if (j.error) throw new Error(j.error.message);
  return j.result;
}

/** A u64 decimal string with thousands separators (exact: no float conversion). */
function fmtInt(s) {
  const t = String(s);
  return /^\d+$/.test(t) ? t.replace(/\B(?=(\d{3})+(?!\d))/g, ",") : t;
}

function fmtTime(ms) {
  const d = new Date(Number(ms));
  return isNaN(d) ? String(ms) : d.toLocaleString();
}

function link(href, text, cls) {
  return el("a", { href, class: cls || "" }, text);
}

function hashLink(kind, h) {
  return link(`#/${kind}/${encodeURIComponent(h)}`, h, "mono short");
}

function setPage(title, ...nodes) {
  document.title = `${title} · Grapevine explorer`;
  main.replaceChildren(el("h1", {}, title), ...nodes);
}

function dl(rows) {
  const d = el("dl");
  for (const [k, v] of rows) {
    d.appendChild(el("dt", {}, k));
    d.appendChild(el("dd", {}, v));
  }
  return d;
}

function statusBadge(s) {
  return el("span", { class: `status ${s}` }, s);
}

function table(headers, rows) {
  const t = el("table", {},
    el("thead", {}, el("tr", {}, headers.map(([h, num]) => el("th", { class: num ? "num" : "" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map(([v, num]) => el("td", { class: num ? "num" : "" }, v))))));
  return el("div", { class: "scroll" }, t);
}

// ---- pages -----------------------------------------------------------------------

async function overview() {
  const [status, mempool] = await Promise.all([rpc("getStatus"), rpc("getMempool")]);
  const height = Number(status.height);
  const from = Math.max(0, height - 29);
  const blocks = [];
  for (let h = height; h >= from; h--) blocks.push(rpc("getBlock", [h]));
  const recent = await Promise.all(blocks);
  const intervals = [];
  for (let i = 0; i + 1 < recent.length; i++) {
    intervals.push(Number(recent[i].header.timestampMs) - Number(recent[i + 1].header.timestampMs));
  }
  const avgInterval = intervals.length ? Math.round(intervals.reduce((a, b) => a + b, 0) / intervals.length) : null;
  const cards = el("div", { class: "cards" },
    card("Chain id", String(status.chainId)),
    card("Height", fmtInt(status.height)),
    card("Time between final blocks", avgInterval === null ? "—" : `${fmtInt(avgInterval)} ms`),
    card("Peers", fmtInt(status.peerCount)),
    card("Mempool", `${fmtInt(mempool.pending)} pending, ${fmtInt(mempool.queued)} queued`),
    card("Version", status.version));
  setPage("Overview", cards,
    el("h2", {}, "Throughput (transactions per 10 s, last 5 minutes)"), throughputChart(recent),
    el("h2", {}, "Validators"),
    el("ul", {}, (status.validators || []).map((v) => el("li", {}, link(`#/account/${v}`, v, "mono")))),
    el("h2", {}, "Recent blocks"), blockTable(recent));
}

function card(k, v) {
  return el("div", { class: "card" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v));
}

function throughputChart(blocks) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const now = Date.now();
  const buckets = new Array(30).fill(0);
  for (const b of blocks) {
    const age = now - Number(b.header.timestampMs);
    const i = 29 - Math.floor(age / 10000);
    if (i >= 0 && i < 30) buckets[i] += Number(b.header.txCount);
  }
  const max = Math.max(1, ...buckets);
  buckets.forEach((n, i) => {
    const r = document.createElementNS(ns, "rect");
    const h = (n / max) * 95;
    r.setAttribute("x", String(i * 10 + 1));
    r.setAttribute("y", String(100 - h));
    r.setAttribute("width", "8");
    r.setAttribute("height", String(h));
    svg.appendChild(r);
  });
  const total = buckets.reduce((a, b) => a + b, 0);
  svg.setAttribute("aria-label", `${total} transactions in the last 5 minutes of recent blocks`);
  return svg;
}

function blockTable(blocks) {
  return table([["Height", true], ["Hash"], ["Txs", true], ["Proposer"], ["Time"]],
    blocks.map((b) => [
      [link(`#/block/${b.header.height}`, fmtInt(b.header.height)), true],
      [hashLink("block", b.hash)],
      [fmtInt(b.header.txCount), true],
      [link(`#/account/${b.header.proposer}`, b.header.proposer, "mono short")],
      [fmtTime(b.header.timestampMs)],
    ]));
}

async function blocksPage() {
  const status = await rpc("getStatus");
  const height = Number(status.height);
  const reqs = [];
  for (let h = height; h >= Math.max(0, height - 49); h--) reqs.push(rpc("getBlock", [h]));
  setPage("Blocks", blockTable(await Promise.all(reqs)));
}

async function blockPage(which) {
  const b = await rpc("getBlock", [/^\d+$/.test(which) ? Number(which) : which, true]);
  const h = b.header;
  const txs = b.transactions || [];
  setPage(`Block ${fmtInt(h.height)}`,
    dl([
      ["Hash", el("span", { class: "mono" }, b.hash)],
      ["Height", fmtInt(h.height)],
      ["Round", fmtInt(h.round)],
      ["Parent", Number(h.height) > 0 ? hashLink("block", h.parentHash) : el("span", { class: "mono" }, `${h.parentHash} (genesis hash)`)],
      ["Proposer", link(`#/account/${h.proposer}`, h.proposer, "mono")],
      ["Time", fmtTime(h.timestampMs)],
      ["Transactions", fmtInt(h.txCount)],
      ["Tx root", el("span", { class: "mono" }, h.txRoot)],
      ["State root", el("span", { class: "mono" }, h.stateRoot)],
      ["Certificate", b.certificate ? el("span", { class: "mono" }, b.certificate) : "none: a single-validator dev block is final when written"],
    ]),
    el("h2", {}, "Transactions"),
    txs.length ? txTable(txs.map((t, i) => ({ hash: b.txHashes[i], transaction: t }))) : el("p", { class: "muted" }, "No transactions."));
}

function txTable(items) {
  return table([["Hash"], ["From"], ["To"], ["Amount", true], ["Fee", true], ["Status"]],
    items.map((it) => [
      [hashLink("tx", it.hash)],
      [link(`#/account/${it.transaction.from}`, it.transaction.from, "mono short")],
      [link(`#/account/${it.transaction.to}`, it.transaction.to, "mono short")],
      [fmtInt(it.transaction.amount), true],
      [fmtInt(it.transaction.fee), true],
      [it.status ? statusBadge(it.receipt ? it.receipt.status : it.status) : ""],
    ]));
}

async function txPage(hash) {
  const t = await rpc("getTransaction", [hash]);
  const rows = [["Hash", el("span", { class: "mono" }, t.hash)], ["Status", statusBadge(t.status)]];
  if (t.status === "queued") rows.push(["Waiting for nonce", fmtInt(t.waitingForNonce)]);
  if (t.reason) rows.push(["Reason", `${t.reason.message} (${t.reason.code})`]);
  if (t.status === "finalized") {
    rows.push(["Block", link(`#/block/${t.height}`, fmtInt(t.height))]);
    rows.push(["Position", fmtInt(t.index)]);
    rows.push(["Receipt", el("span", {}, statusBadge(t.receipt.status),
      t.receipt.reason ? ` — ${t.receipt.reason.message}` : "")]);
  }
  if (t.transaction) {
    const x = t.transaction;
    rows.push(["From", link(`#/account/${x.from}`, x.from, "mono")]);
    rows.push(["To", link(`#/account/${x.to}`, x.to, "mono")]);
    rows.push(["Amount", fmtInt(x.amount)]);
    rows.push(["Fee", fmtInt(x.fee)]);
    rows.push(["Nonce", fmtInt(x.nonce)]);
    rows.push(["Chain id", String(x.chainId)]);
    rows.push(["Signature", el("span", { class: "mono" }, x.signature)]);
  }
  setPage("Transaction", dl(rows));
  if (!["finalized", "rejected", "evicted", "expired"].includes(t.status)) watchTx(t.hash);
}

async function accountPage(addr, before) {
  const params = { address: addr, limit: 25 };
  if (before) params.before = before;
  const [a, page] = await Promise.all([rpc("getAccount", [addr]), rpc("getAccountTransactions", params)]);
  const nodes = [
    dl([
      ["Address", el("span", { class: "mono" }, a.address)],
      ["Balance", fmtInt(a.balance)],
      ["Nonce", fmtInt(a.nonce)],
      ["Pending nonce", fmtInt(a.pendingNonce)],
    ]),
    el("h2", {}, before ? "Older transactions" : "Recent transactions"),
    page.transactions.length ? txTable(page.transactions) : el("p", { class: "muted" }, "No transactions."),
  ];
  if (page.next) nodes.push(el("p", {}, link(`#/account/${encodeURIComponent(addr)}/${encodeURIComponent(page.next)}`, "Older →")));
  setPage("Account", ...nodes);
}

async function search(q) {
  const s = q.trim();
  if (/^\d+$/.test(s)) return go(`#/block/${s}`);
  if (/^gv[0-9a-fA-F]{72}$/.test(s)) return go(`#/account/${s}`);
  if (/^(0x)?[0-9a-fA-F]{64}$/.test(s)) {
    const t = await rpc("getTransaction", [s]);
    if (t.status !== "unknown") return go(`#/tx/${t.hash}`);
    try {
      const b = await rpc("getBlock", [s]);
      return go(`#/block/${b.header.height}`);
    } catch (_) { /* not a block either */ }
  }
  setPage("Not found", el("p", {}, "Nothing matches "), el("p", { class: "mono" }, s),
    el("p", { class: "muted" }, "Search takes a block height, a block hash, a transaction hash or an address (gv…)."));
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---- routing and live updates ------------------------------------------------------

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((p) => {
    try { return decodeURIComponent(p); } catch (_) { return p; }
  });
  try {
    switch (parts[0]) {
      case "": case undefined: await overview(); break;
      case "blocks": await blocksPage(); break;
      case "block": await blockPage(parts[1]); break;
      case "tx": await txPage(parts[1]); break;
      case "account": await accountPage(parts[1], parts[2]); break;
      case "search": await search(parts.slice(1).join("/")); break;
      default: setPage("Not found", el("p", {}, "No page at "), el("p", { class: "mono" }, location.hash));
    }
  } catch (e) {
    setPage("Error", el("p", {}, String(e.message || e)));
  }
}

let ws = null;
let refreshTimer = null;
let watched = null;

function watchTx(hash) {
  watched = hash;
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method: "subscribeTransaction", params: [hash] }));
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/ws`);
  ws.onopen = () => {
    live.textContent = "live";
    ws.send(JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method: "subscribeHeads" }));
    if (watched) watchTx(watched);
  };
  ws.onmessage = (m) => {
    let v;
    try { v = JSON.parse(m.data); } catch (_) { return; }
    if (v.method !== "subscription") return;
    const r = v.params.result;
    if (r.header) {
      live.textContent = `live · height ${fmtInt(r.header.height)}`;
      const page = location.hash.replace(/^#\/?/, "").split("/")[0];
      if (page === "" || page === "blocks") {
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(route, 300); // coalesce bursts of blocks
      }
    } else if (r.hash && location.hash === `#/tx/${r.hash}`) {
      route();
    }
  };
  ws.onclose = () => {
    live.textContent = "disconnected; retrying…";
    setTimeout(connect, 2000);
  };
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = document.getElementById("q").value;
  go(`#/search/${encodeURIComponent(q)}`);
});
window.addEventListener("hashchange", () => { watched = null; route(); main.focus(); });
route();
connect();
