/* sockgate console: Live stream, pause/resume, row links, charts. Every journal value is put
   in the page with textContent, never as markup. No eval, no inline handlers (CSP). */
"use strict";

(function () {
  const COLS = ["seq", "time", "type", "outcome", "user", "program", "local", "remote", "rule", "host"];
  const MAX_ROWS = 500;

  function rowsClickable(root) {
    root.addEventListener("click", function (ev) {
      const tr = ev.target.closest("tr[data-seq]");
      if (!tr || ev.target.closest("a")) return;
      window.location.href = "/entry/" + encodeURIComponent(tr.dataset.seq);
    });
  }

  function makeRow(r) {
    const tr = document.createElement("tr");
    tr.className = "o-" + (r.outcome || "none") + " fresh";
    tr.dataset.seq = String(r.seq);
    COLS.forEach(function (c) {
      const td = document.createElement("td");
      if (c === "seq") {
        const a = document.createElement("a");
        a.href = "/entry/" + encodeURIComponent(r.seq);
        a.textContent = String(r.seq);
        td.appendChild(a);
      } else {
        td.textContent = r[c] == null ? "" : String(r[c]);
        if (c === "type") td.title = r.type_name || "";
      }
      tr.appendChild(td);
    });
    return tr;
  }

  function live() {
    const table = document.getElementById("entries");
    if (!table || !table.dataset.stream) return;
    const body = table.tBodies[0];
    const status = document.getElementById("status");
    const held = document.getElementById("held");
    const pause = document.getElementById("pause");
    let paused = false;
    let waiting = [];
    const seen = window.sgSeen = {};
    rowsClickable(table);

    function show(rows) {
      const empty = document.getElementById("entries-empty");
      if (empty && rows.length) empty.remove();
      for (const r of rows) body.insertBefore(makeRow(r), body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    }
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.textContent = paused ? "resume" : "pause";
      pause.setAttribute("aria-pressed", String(paused));
      if (!paused) { show(waiting); waiting = []; held.textContent = ""; }
    });
    const es = new EventSource(table.dataset.stream);
    es.addEventListener("open", function () { status.textContent = "live"; status.className = "ok"; });
    es.addEventListener("error", function () { status.textContent = "reconnecting…"; status.className = "warn"; });
    es.addEventListener("rows", function (ev) {
      const msg = JSON.parse(ev.data);
      if (paused) {
        waiting = waiting.concat(msg.rows).slice(-MAX_ROWS);
        held.textContent = waiting.length + " new while paused";
      } else {
        show(msg.rows);
      }
      // when each entry reached the page, and when the server sent it (bench/console.py reads
      // both to split journal-to-browser latency into server and browser parts)
      const now = Date.now();
      if (Object.keys(seen).length > 10000) for (const k in seen) delete seen[k];   // bounded
      for (const r of msg.rows) seen[r.seq] = [now, msg.at / 1e6];
    });
  }

  const PALETTE = { allowed: "#2e7d32", rejected: "#c62828", "audit-rejected": "#ef8f00", failed: "#6a1b9a" };
  const MORE = ["#1565c0", "#00838f", "#ad1457", "#4e342e", "#558b2f", "#283593", "#f9a825", "#37474f"];

  function chart(el, sync) {
    fetch(el.dataset.src, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : r.text().then(function (t) { throw new Error(t); }); })
      .then(function (c) {
        const names = Object.keys(c.series);
        const data = [c.t].concat(names.map(function (n) { return c.series[n]; }));
        let points = 0;
        names.forEach(function (n) { c.series[n].forEach(function (v) { if (v > 0) points++; }); });
        el.dataset.series = String(names.length);
        el.dataset.points = String(points);
        el.dataset.serverMs = String(c.server_ms);
        if (!names.length) {
          const p = document.createElement("p");
          p.className = "empty";
          p.textContent = "no entries in this window";
          el.appendChild(p);
          return;
        }
        const opts = {
          width: Math.max(320, el.clientWidth || 900), height: 260,
          cursor: { sync: { key: sync.key, setSeries: true }, drag: { x: true, y: false } },
          scales: { x: { time: true } },
          axes: [{}, { label: "per second", size: 60 }],
          series: [{}].concat(names.map(function (n, i) {
            const color = PALETTE[n] || MORE[i % MORE.length];
            return { label: n, stroke: color, fill: color + "22", width: 1.5, points: { show: false } };
          })),
        };
        new uPlot(opts, data, el);
      })
      .catch(function (e) {
        const p = document.createElement("p");
        p.className = "bad";
        p.textContent = "chart failed: " + e.message;
        el.appendChild(p);
      });
  }

  function charts() {
    const els = document.querySelectorAll(".chart[data-src]");
    if (!els.length || typeof uPlot === "undefined") return;
    const sync = uPlot.sync("sockgate");
    els.forEach(function (el) { chart(el, sync); });
  }

  function tables() {
    document.querySelectorAll("table.entries").forEach(function (t) {
      if (!t.dataset.stream) rowsClickable(t);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { live(); charts(); tables(); });
})();
