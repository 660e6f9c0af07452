// mtad inspection page, station part (only with `mtad serve --log`): the drift banner
// (GET /api/monitor), the review queue of REVIEW and NG parts not yet reviewed (POST
// /api/inspections/{id}/review) and the history (GET /api/inspections, counts per class
// and verdict, per class the scores over time against the two thresholds).
// Builds its own DOM; without a log (/health has no "log") it adds nothing.
"use strict";

(() => {
  const REFRESH_MS = 5000, PLOT_POINTS = 200;
  const st = { thresholds: null, cls: "", verdict: "", timer: null };
  const q = (sel) => document.querySelector(sel);
  const mk = el;   // app.js's element builder (loaded first)
  const num = (v, d = 4) => (v == null ? "–" : Number(v).toPrecision(d));
  const pct = (v) => (v == null ? "–" : `${(100 * v).toFixed(1)} %`);
  const json = async (url, opts) => {
    const r = await fetch(url, opts);
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.detail || `${url}: HTTP ${r.status}`);
    return body;
  };

  function build() {
    const main = q("main");
    const banner = mk("div", { id: "drift-banner", class: "drift", role: "alert", hidden: "" });
    main.prepend(banner);
    const section = mk("section", { id: "station", "aria-labelledby": "h-queue" },
      mk("h2", { id: "h-queue", text: "Review queue" }),
      mk("p", { class: "muted small", id: "queue-line", text: "Loading…" }),
      mk("div", { id: "queue", class: "queue" }),
      mk("h2", { id: "h-history", text: "History" }),
      mk("div", { class: "controls" },
        mk("div", { class: "control" }, mk("label", { for: "hist-class", text: "Class" }),
          mk("select", { id: "hist-class" }, mk("option", { value: "", text: "All classes" }))),
        mk("div", { class: "control" }, mk("label", { for: "hist-verdict", text: "Verdict" }),
          mk("select", { id: "hist-verdict" }, ...["", "OK", "REVIEW", "NG", "REVIEW,NG"].map(
            (v) => mk("option", { value: v, text: v || "All verdicts" }))))),
      mk("div", { class: "table-wrap" }, mk("table", { id: "counts" })),
      mk("div", { id: "score-plots" }),
      mk("div", { class: "table-wrap" }, mk("table", { id: "history" },
        mk("caption", { class: "visually-hidden", text: "Recent inspections, newest first" }),
        mk("thead", {}, mk("tr", {}, ...["Time (UTC)", "Class", "Score", "Verdict", "Review",
          "Source"].map((h) => mk("th", { scope: "col", text: h })))),
        mk("tbody"))),
      mk("p", { class: "muted small", id: "history-line" }));
    const model = q("#model");
    model ? main.insertBefore(section, model) : main.append(section);
    q("#hist-class").addEventListener("change", (e) => { st.cls = e.target.value; refresh(); });
    q("#hist-verdict").addEventListener("change", (e) => { st.verdict = e.target.value; refresh(); });
  }

  // ------------------------------------------------------------ drift banner
  async function drift() {
    const m = await json("api/monitor");
    const drifting = m.classes.filter((c) => c.drift);
    const banner = q("#drift-banner");
    banner.hidden = drifting.length === 0;
    banner.textContent = drifting.length === 0 ? "" :
      `Drift: ${drifting.map((c) => `${c.class_name ?? "pooled"} (last ${c.n} parts: ` +
        `${pct(c.not_ok_rate)} not OK, expected ${pct(c.expected_rate)}; ` +
        `p = ${num(c.p_value, 2)})`).join("; ")}. The line may no longer look like the ` +
      `calibration set: check lighting, camera and material.`;
    banner.dataset.classes = drifting.map((c) => c.class_name ?? "").join(",");
  }

  // ------------------------------------------------------------ review queue
  async function queue() {
    const body = await json("api/inspections?verdict=REVIEW,NG&review=none&limit=24");
    const box = q("#queue");
    q("#queue-line").textContent = body.total === 0 ? "Nothing to review." :
      `${body.total} part(s) flagged and not reviewed${body.total > body.items.length ?
        `; the newest ${body.items.length} shown` : ""}.`;
    const shown = new Set(body.items.map((r) => String(r.id)));
    for (const old of [...box.children]) if (!shown.has(old.dataset.id)) old.remove();
    for (const row of body.items) {
      if (box.querySelector(`[data-id="${row.id}"]`)) continue;
      const note = mk("input", { type: "text", placeholder: "note (optional)", maxlength: "2000",
                                 "aria-label": `note for inspection ${row.id}` });
      const status = mk("span", { class: "muted small", "aria-live": "polite" });
      const mark = (review) => async () => {
        status.textContent = "saving…";
        try {
          await json(`api/inspections/${row.id}/review`, {
            method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ review, note: note.value || null }) });
          card.remove();
          refresh();
        } catch (err) { status.textContent = String(err.message || err); }
      };
      const good = mk("button", { type: "button", class: "mark-good", text: "Good" });
      const defect = mk("button", { type: "button", class: "mark-defect", text: "Defect" });
      good.addEventListener("click", mark("good"));
      defect.addEventListener("click", mark("defect"));
      const card = mk("article", { class: "card qcard", "data-id": String(row.id),
                                   "data-verdict": row.verdict },
        mk("h3", { text: row.source || `inspection ${row.id}` }),
        row.image_url ? mk("div", { class: "pair" },
          mk("figure", {}, mk("img", { src: row.image_url, alt: `part ${row.id}` }),
             mk("figcaption", { text: "image" })),
          row.overlay_url ? mk("figure", {}, mk("img", { src: row.overlay_url,
                                                         alt: `heat map of part ${row.id}` }),
                               mk("figcaption", { text: "heat map, outline, verdict" })) : null)
          : mk("p", { class: "muted small", text: "image not kept" }),
        mk("div", { class: "facts-row" },
          mk("span", { class: `verdict ${row.verdict === "OK" ? "ok" : "bad"}`, text: row.verdict }),
          mk("span", { text: `score ${num(row.pred_score)}` }),
          mk("span", { class: "muted", text: `${row.class_name ?? "pooled"} · ${row.time}` })),
        note, mk("div", { class: "facts-row" }, good, defect, status));
      box.append(card);
    }
  }

  // ------------------------------------------------------------ history
  function plot(cls, rows) {
    // scores over time (oldest left) with the class's OK/REVIEW and NG levels
    const t = st.thresholds && (cls ? st.thresholds.classes[cls] : st.thresholds.pooled);
    const values = rows.map((r) => r.pred_score).filter(Number.isFinite);
    if (!values.length) return null;
    // a level far outside the scores (e.g. a --threshold of -1e9) would flatten them
    const vlo = Math.min(...values), span = Math.max(Math.max(...values) - vlo, 1e-6);
    const levels = [[t && t.image_threshold, "REVIEW"], [t && t.ng_threshold, "NG"]]
      .filter(([v]) => v != null && Number.isFinite(v) && Math.abs(v - vlo) < 4 * span);
    const all = values.concat(levels.map(([v]) => v));
    let lo = Math.min(...all), hi = Math.max(...all);
    if (hi <= lo) { hi = lo + 1; }
    const W = 600, H = 140, P = 6, y = (v) => H - P - (v - lo) / (hi - lo) * (H - 2 * P);
    const x = (i) => P + (rows.length < 2 ? 0.5 : i / (rows.length - 1)) * (W - 2 * P);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${cls || "pooled"}: last ${rows.length} scores against the thresholds`);
    for (const [v, name] of levels) {
      const line = document.createElementNS(ns, "line");
      Object.entries({ x1: P, x2: W - P, y1: y(v), y2: y(v), class: `level ${name}` })
        .forEach(([k, val]) => line.setAttribute(k, val));
      svg.append(line);
    }
    rows.forEach((r, i) => {
      if (!Number.isFinite(r.pred_score)) return;
      const dot = document.createElementNS(ns, "circle");
      Object.entries({ cx: x(i), cy: y(r.pred_score), r: 2.5, class: `dot ${r.verdict}` })
        .forEach(([k, val]) => dot.setAttribute(k, val));
      svg.append(dot);
    });
    return mk("figure", { class: "score-plot", "data-class": cls },
      svg, mk("figcaption", { class: "small muted", text: `${cls || "pooled"}: last ${rows.length} ` +
        `scores, oldest left; lines: ${levels.map(([v, n]) => `${n} above ${num(v)}`).join(", ") || "no threshold in range"}` }));
  }

  async function history() {
    const params = new URLSearchParams({ limit: "50" });
    if (st.cls) params.set("class_name", st.cls);
    if (st.verdict) params.set("verdict", st.verdict);
    const [body, counts] = await Promise.all([json(`api/inspections?${params}`),
                                              json("api/inspections/counts")]);
    const tbody = q("#history tbody");
    tbody.replaceChildren(...body.items.map((r) => mk("tr", { "data-id": String(r.id),
                                                              "data-review": r.review || "" },
      mk("td", { text: r.time }), mk("td", { text: r.class_name ?? "pooled" }),
      mk("td", { class: "num", text: num(r.pred_score) }), mk("td", { text: r.verdict }),
      mk("td", { text: r.review ? `${r.review}${r.review_note ? `: ${r.review_note}` : ""}` : "" }),
      mk("td", { text: r.source || "" }))));
    q("#history-line").textContent = `${body.total} inspection(s) match; newest ${body.items.length} shown.`;
    const names = Object.keys(counts.counts).sort();
    const select = q("#hist-class");
    for (const n of names) {
      if (n && !select.querySelector(`option[value="${CSS.escape(n)}"]`)) {
        select.append(mk("option", { value: n, text: n }));
      }
    }
    q("#counts").replaceChildren(
      mk("thead", {}, mk("tr", {}, ...["Class", "OK", "REVIEW", "NG"].map((h) => mk("th", { scope: "col", text: h })))),
      mk("tbody", {}, ...names.map((n) => mk("tr", {}, mk("td", { text: n || "pooled" }),
        ...["OK", "REVIEW", "NG"].map((v) => mk("td", { class: "num", text: String(counts.counts[n][v] || 0) }))))));
    const plots = [];
    for (const n of (st.cls ? [st.cls] : names)) {
      const p = new URLSearchParams({ limit: String(PLOT_POINTS) });
      if (n) p.set("class_name", n);
      const rows = (await json(`api/inspections?${p}`)).items
        .filter((r) => n || r.class_name == null).reverse();
      const fig = plot(n, rows);
      if (fig) plots.push(fig);
    }
    q("#score-plots").replaceChildren(...plots);
  }

  async function refresh() {
    try {
      await Promise.all([queue(), history(), drift()]);
    } catch (err) {
      q("#queue-line").textContent = `Inspection log: ${err.message || err}`;
    }
  }

  async function start() {
    let health;
    try { health = await json("health"); } catch (err) { return; }
    if (!health.log) return;                       // served without --log
    document.head.append(mk("link", { rel: "stylesheet", href: "static/station.css" }));
    build();
    try { st.thresholds = (await json("api/model")).thresholds; } catch (err) { /* plots without lines */ }
    await refresh();
    st.timer = setInterval(refresh, REFRESH_MS);
  }
  start();
})();
