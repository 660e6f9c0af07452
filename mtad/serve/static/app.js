// mtad inspection page: upload images to /api/predict, draw each result, and
// re-decide verdicts (OK / REVIEW / NG: the image and NG levels) and outlines
// (pixel threshold) in the browser when the sliders move, by the rules of
// mtad.postprocess.verdict_of and decide. The drawing follows mtad/report/drawing.py's
// draw_overlay: same colour ramp (sent by /api/model), same scale (the map's
// minimum at 0, the pixel threshold mid-ramp), same outline and banner.
"use strict";

const $ = (sel) => document.querySelector(sel);
const MAX_DISPLAY = 640, MIN_DISPLAY = 360;   // long side of the drawn overlays, px
const CONCURRENT = 2;        // requests in flight from this page
const state = {
  model: null, items: [], nextId: 1, queue: [], running: 0,
  cls: "", imageThr: 0.5, pixelThr: 0.5, imageSrc: "", pixelSrc: "", redrawQueued: false,
  ngThr: null, rule: ">=", ngLinked: true, pixelLinked: false,
};

// ---------------------------------------------------------------- helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}
const fmt = (v, digits = 4) => (v == null || Number.isNaN(v) ? "–" : Number(v).toPrecision(digits));

// The bilinear resize of mtad.postprocess.resize_map (half-pixel centres, clamped edges).
function resizeAxis(nIn, nOut) {
  const lo = new Int32Array(nOut), hi = new Int32Array(nOut), t = new Float32Array(nOut);
  for (let i = 0; i < nOut; i++) {
    const x = Math.max((i + 0.5) * (nIn / nOut) - 0.5, 0);
    lo[i] = Math.min(Math.floor(x), nIn - 1);
    hi[i] = Math.min(lo[i] + 1, nIn - 1);
    t[i] = x - lo[i];
  }
  return { lo, hi, t };
}
function resizeMap(src, inH, inW, outH, outW) {
  const ya = resizeAxis(inH, outH), xa = resizeAxis(inW, outW);
  const rows = new Float32Array(outH * inW);
  for (let y = 0; y < outH; y++) {
    const a = ya.lo[y] * inW, b = ya.hi[y] * inW, t = ya.t[y];
    for (let x = 0; x < inW; x++) rows[y * inW + x] = src[a + x] * (1 - t) + src[b + x] * t;
  }
  const out = new Float32Array(outH * outW);
  for (let y = 0; y < outH; y++) {
    const r = y * inW;
    for (let x = 0; x < outW; x++) {
      const t = xa.t[x];
      out[y * outW + x] = rows[r + xa.lo[x]] * (1 - t) + rows[r + xa.hi[x]] * t;
    }
  }
  return out;
}
// overlay.py: outline_width, banner_font_size, defect_outline.
const outlineWidth = (h, w) => Math.max(1, Math.round(Math.min(h, w) / 300));
const bannerFontSize = (h, w) => Math.min(64, Math.max(11, Math.round(Math.min(w, 2 * h) / 18)));
function outline(mask, h, w, width) {
  let inner = mask;
  for (let k = 0; k < width; k++) {
    const next = new Uint8Array(h * w);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const i = y * w + x;
      next[i] = inner[i] && y > 0 && inner[i - w] && y < h - 1 && inner[i + w]
        && x > 0 && inner[i - 1] && x < w - 1 && inner[i + 1] ? 1 : 0;
    }
    inner = next;
  }
  const edge = new Uint8Array(h * w);
  for (let i = 0; i < h * w; i++) edge[i] = mask[i] && !inner[i] ? 1 : 0;
  return edge;
}
// mtad.postprocess.verdict_of: rule ">=" (F1) or ">" (good parts); ng null: never NG.
function passes(score, thr) { return state.rule === ">" ? score > thr : score >= thr; }
function verdictOf(score) {
  if (Number.isNaN(score)) return "NG";
  if (!passes(score, state.imageThr)) return "OK";
  return state.ngThr != null && passes(score, state.ngThr) ? "NG" : "REVIEW";
}
// mtad.report.drawing.verdict_text
function verdictText(score) {
  const verdict = verdictOf(score), rule = state.rule, thr = state.imageThr, ng = state.ngThr;
  const g = (v) => Number(v).toPrecision(4).replace(/\.?0+$/, "").replace(/\.?0+e/, "e");
  if (verdict === "OK") return { verdict, bad: false, text: `OK  score ${g(score)} ${rule === ">=" ? "<" : "<="} ${g(thr)}` };
  const level = verdict === "NG" && ng != null && ng !== thr ? ng : thr;
  let text = `${verdict}  score ${g(score)} ${rule} ${g(level)}`;
  if (verdict === "REVIEW" && ng != null) text += ` (NG ${rule} ${g(ng)})`;
  return { verdict, bad: true, text };
}
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

// ---------------------------------------------------------------- model panel
async function loadModel() {
  const res = await fetch("api/model");
  const m = await res.json();
  state.model = m;
  $("#model-line").textContent = `${m.kind || "model"} · ${m.class_names.length} classes · ` +
    `${m.image_size} px input · ${m.source}`;
  const lim = m.limits;
  $("#limits-line").textContent = `Up to ${Math.round(lim.max_file_bytes / 1048576)} MB and ` +
    `${(lim.max_pixels / 1e6).toFixed(0)} megapixels per image; PNG, JPEG, BMP, TIFF, WebP.`;
  const sel = $("#class-select");
  sel.append(el("option", { value: "", text: "All classes (pooled thresholds)" }));
  for (const c of m.class_names) sel.append(el("option", { value: c, text: c }));
  sel.value = m.default_class || "";
  sel.disabled = m.class_names.length === 0;
  facts(m);
  thresholdTable(m);
  metricsTable(m.metrics);
  lossPlot(m.loss);
  setClass(sel.value);
}
function facts(m) {
  const dl = $("#model-facts");
  const add = (k, v) => dl.append(el("dt", { text: k }), el("dd", { text: v }));
  add("Model", `${m.kind || "?"}: ${m.source}`);
  if (m.epoch != null) add("Trained epochs", String(m.epoch));
  add("Input size", `${m.image_size} × ${m.image_size} px`);
  add("Classes", m.class_names.length ? m.class_names.join(", ") : "(not recorded)");
  const cal = m.calibration || {};
  if (cal.version != null) add("Calibration", `version ${cal.version} (${cal.method}, ${cal.created})`);
  add("Thresholds calibrated on", cal.source ? `${cal.source}${cal.epoch != null ? `, epoch ${cal.epoch}` : ""}` : "(none: given on the command line)");
  for (const [k, why] of Object.entries(cal.missing || {})) add(`No ${k} threshold`, why);
  const ex = m.export;
  if (ex) {
    add("Export", `${ex.format || "?"} (${ex.runtime || "?"}), precision ${ex.precision || "fp32"}`);
    const q = ex.quantization;
    if (q) add("Quantization", `${q.tool}; ${q.scope}` + (q.images ? `; statistics from ${q.images.count} images (${q.images.source})` : ""));
    const a = ex.accuracy_check;
    if (a) {
      const p = a.precision, d = (k) => a.mean[k] && a.mean[k].drop != null ?
        `${k} ${fmt(a.mean[k].fp32)} → ${fmt(a.mean[k][p])} (drop ${a.mean[k].drop.toFixed(4)})` : `${k} n/a`;
      const big = a.largest_class_drop;
      add(`${p} vs fp32 (${a.passed ? "passed" : "failed"})`, `on ${a.on}: ${d("image_auroc")}, ${d("pixel_auroc")}, ${d("pixel_aupro")}` +
        (big ? `; largest class drop ${big.drop.toFixed(4)} (${big.class} ${big.metric})` : "") +
        (a.verdicts_flipped_share != null ? `; verdicts flipped ${(100 * a.verdicts_flipped_share).toFixed(1)} %` : "") +
        `; thresholds ${a.thresholds}`);
    }
  }
}
function thresholdTable(m) {
  const t = $("#thr-table");
  t.append(el("thead", {}, el("tr", {}, ...["Class", "Image", "NG", "Rule", "Source", "Pixel", "Source"].map(
    (h) => el("th", { scope: "col", text: h })))));
  const body = el("tbody");
  const row = (name, c) => body.append(el("tr", {}, el("th", { scope: "row", text: name }),
    ...(c.error ? [el("td", { colspan: "6", text: c.error })] : [
      el("td", { class: "num", text: fmt(c.image_threshold) }),
      el("td", { class: "num", text: c.ng_threshold == null ? "none" : fmt(c.ng_threshold) }),
      el("td", { text: `score ${c.threshold_rule}` }), el("td", { text: c.image_threshold_source }),
      el("td", { class: "num", text: fmt(c.pixel_threshold) }), el("td", { text: c.pixel_threshold_source })])));
  row("all (pooled)", m.thresholds.pooled);
  for (const [name, c] of Object.entries(m.thresholds.classes)) row(name, c);
  t.append(body);
}
function metricsTable(results) {
  const box = $("#metrics");
  if (!results || !results.classes) { box.append(el("p", { class: "muted", text: "No evaluation results recorded with this model." })); return; }
  const rows = Object.entries(results.classes);
  if (results.mean) rows.push(["mean", results.mean]);
  const keys = [...new Set(rows.flatMap(([, r]) => Object.keys(r)))].filter((k) => rows.some(([, r]) => typeof r[k] === "number"));
  const t = el("table", {}, el("caption", { class: "visually-hidden", text: "Test metrics per class" }));
  t.append(el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Class" }),
    ...keys.map((k) => el("th", { scope: "col", class: "num", text: k })))));
  const body = el("tbody");
  for (const [name, r] of rows) body.append(el("tr", {}, el("th", { scope: "row", text: name }),
    ...keys.map((k) => el("td", { class: "num", text: typeof r[k] === "number" ? r[k].toFixed(3) : "–" }))));
  t.append(body);
  box.append(t);
  if (results.epoch != null) box.append(el("p", { class: "muted small", text: `Evaluated at epoch ${results.epoch}.` }));
}
function lossPlot(loss) {
  const box = $("#loss");
  if (!loss || !loss.points.length) { box.append(el("p", { class: "muted", text: "No training-loss record found for this model." })); return; }
  const pts = loss.points, W = 640, H = 260, L = 60, R = 14, T = 14, B = 40;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), py = (y) => T + (y1 - y) / (y1 - y0) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text != null) n.textContent = text; return n; };
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "loss-title" });
  svg.append(s("title", { id: "loss-title" }, `Training loss by ${loss.x}: from ${fmt(ys[0])} to ${fmt(ys[ys.length - 1])} over ${pts.length} points (${loss.source})`));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: py(y), y2: py(y), stroke: "#e3e7ec" }));
    svg.append(s("text", { x: L - 6, y: py(y) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6470" }, fmt(y, 3)));
  }
  const ticks = [...new Set([0, 1, 2, 3, 4].map((i) => Math.round(x0 + (x1 - x0) * i / 4)))];
  for (const x of ticks) {
    svg.append(s("line", { x1: px(x), x2: px(x), y1: H - B, y2: H - B + 4, stroke: "#5b6470" }));
    svg.append(s("text", { x: px(x), y: H - B + 16, "text-anchor": "middle", "font-size": 11, fill: "#5b6470" }, String(x)));
  }
  svg.append(s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12, fill: "#1b1f24" }, loss.x));
  svg.append(s("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", "font-size": 12, fill: "#1b1f24", transform: `rotate(-90 14 ${(T + H - B) / 2})` }, "loss"));
  svg.append(s("polyline", { points: pts.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" "), fill: "none", stroke: "#1f5fbf", "stroke-width": 1.6 }));
  box.append(svg, el("p", { class: "muted small", text: `Source: ${loss.source}.` }));
}

// ---------------------------------------------------------------- thresholds and sliders
function calibrated(cls) {
  const t = cls ? state.model.thresholds.classes[cls] : state.model.thresholds.pooled;
  return t && !t.error ? t : state.model.thresholds.pooled;
}
function setClass(cls) {
  state.cls = cls;
  const t = calibrated(cls);
  if (t.error) { $("#image-thr-source").textContent = t.error; return; }
  state.imageThr = t.image_threshold; state.pixelThr = t.pixel_threshold;
  state.imageSrc = t.image_threshold_source; state.pixelSrc = t.pixel_threshold_source;
  state.ngThr = t.ng_threshold; state.rule = t.threshold_rule || ">=";
  state.ngLinked = t.ng_threshold === t.image_threshold;      // one threshold: both move together
  state.pixelLinked = t.pixel_threshold === t.image_threshold && state.rule === ">";
  updateSliders();
  redrawAll();
}
function sliderRange() {
  const vals = [state.imageThr, state.pixelThr];
  const th = state.model.thresholds;
  for (const t of [th.pooled, ...Object.values(th.classes)]) if (!t.error) vals.push(t.image_threshold, t.pixel_threshold);
  if (state.ngThr != null) vals.push(state.ngThr);
  for (const it of state.items) if (it.result) vals.push(it.result.pred_score, it.result.anomaly_map.min);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  const span = hi - lo || Math.abs(hi) || 1;
  return [lo - 0.1 * span, hi + 0.1 * span];
}
function updateSliders() {
  const [lo, hi] = sliderRange();
  const ngSrc = state.ngThr == null ? "no NG level: a flagged part goes to review" :
    state.ngLinked ? "one threshold: a flagged part is NG" : state.imageSrc;
  for (const [id, v, src] of [["image", state.imageThr, state.imageSrc], ["ng", state.ngThr, ngSrc],
                              ["pixel", state.pixelThr, state.pixelSrc]]) {
    const s = $(`#${id}-thr`);
    s.min = lo; s.max = hi; s.step = (hi - lo) / 1000; s.value = v == null ? hi : v;
    $(`#${id}-thr-value`).textContent = v == null ? "none" : fmt(v);
    s.setAttribute("aria-valuetext", v == null ? "none" : fmt(v));
    $(`#${id}-thr-source`).textContent = src;
  }
}
function onSlider(kind) {
  const s = $(`#${kind}-thr`), v = Number(s.value);
  const set = (k, value) => {
    $(`#${k}-thr`).value = value;
    $(`#${k}-thr-value`).textContent = fmt(value);
    $(`#${k}-thr`).setAttribute("aria-valuetext", fmt(value));
    $(`#${k}-thr-source`).textContent = "set on this page";
  };
  if (kind === "image") {
    state.imageThr = v; state.imageSrc = "set on this page";
    if (state.ngLinked) { state.ngThr = v; set("ng", v); }
    if (state.pixelLinked) { state.pixelThr = v; state.pixelSrc = "set on this page"; set("pixel", v); }
  } else if (kind === "ng") { state.ngThr = v; state.ngLinked = false; }
  else { state.pixelThr = v; state.pixelSrc = "set on this page"; state.pixelLinked = false; }
  set(kind, v);
  redrawAll();
}

// ---------------------------------------------------------------- uploads
function addFiles(files) {
  for (const file of files) {
    const item = { id: state.nextId++, file, name: file.name, status: "pending", result: null, error: null };
    item.card = buildCard(item);
    state.items.push(item);
    state.queue.push(item);
  }
  $("#clear").disabled = state.items.length === 0;
  pump();
  renderTable();
}
function pump() {
  while (state.running < CONCURRENT && state.queue.length) {
    const item = state.queue.shift();
    state.running++;
    send(item).finally(() => { state.running--; pump(); });
  }
}
async function send(item, attempt = 0) {
  const form = new FormData();
  form.append("files", item.file, item.file.name);
  form.append("class_name", state.cls);
  const t0 = performance.now();
  let res, body;
  try {
    res = await fetch("api/predict", { method: "POST", body: form });
    body = await res.json().catch(() => ({}));
  } catch (err) {
    return fail(item, `network error: ${err.message}`);
  }
  if (res.status === 503 && attempt < 6) {
    const wait = Number(res.headers.get("Retry-After") || 1);
    setPending(item, `server busy, retrying in ${wait} s…`);
    await new Promise((r) => setTimeout(r, wait * 1000));
    return send(item, attempt + 1);
  }
  const r = body.results && body.results[0];
  if (!r || r.status !== 200) return fail(item, (r && r.detail) || body.detail || `HTTP ${res.status}`);
  item.roundTripMs = performance.now() - t0;
  try {
    await prepareItem(item, r);
  } catch (err) {
    return fail(item, `${item.name}: ${err.message}`);
  }
  item.status = "done";
  item.result = r;
  updateSliders();
  redrawItem(item);
  renderTable();
}
function fail(item, message) {
  item.status = "error";
  item.error = message;
  const c = item.card;
  c.root.classList.add("failed");
  c.body.replaceChildren(el("p", { class: "error", role: "alert", text: message }));
  c.root.dataset.status = "error";
  renderTable();
}
function setPending(item, text) { item.card.body.replaceChildren(el("p", { class: "pending", text })); }

async function prepareItem(item, r) {
  // The photo (as the browser shows it: upright) and the map decoded once.
  item.url = URL.createObjectURL(item.file);
  item.photo = await loadImage(item.url);
  const m = r.anomaly_map;
  const mapImg = await loadImage(`data:image/png;base64,${m.data}`);
  const c = document.createElement("canvas");
  c.width = m.width; c.height = m.height;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(mapImg, 0, 0);
  const px = ctx.getImageData(0, 0, m.width, m.height).data;
  const raw = new Float32Array(m.width * m.height);
  for (let i = 0; i < raw.length; i++) raw[i] = m.min + (px[4 * i] / 255) * (m.max - m.min);
  // Drawn with its long side in MIN_DISPLAY..MAX_DISPLAY px (small photos enlarged, so
  // the banner is legible; large ones shrunk, so redrawing on every slider step is quick).
  const long = Math.max(r.width, r.height);
  const scale = long > MAX_DISPLAY ? MAX_DISPLAY / long : long < MIN_DISPLAY ? MIN_DISPLAY / long : 1;
  item.dw = Math.max(1, Math.round(r.width * scale));
  item.dh = Math.max(1, Math.round(r.height * scale));
  item.map = resizeMap(raw, m.height, m.width, item.dh, item.dw);
  let low = Infinity;
  for (const v of item.map) if (v < low) low = v;
  item.low = low;
  const base = document.createElement("canvas");
  base.width = item.dw; base.height = item.dh;
  const bctx = base.getContext("2d", { willReadFrequently: true });
  bctx.drawImage(item.photo, 0, 0, item.dw, item.dh);
  item.rgb = bctx.getImageData(0, 0, item.dw, item.dh);
  item.canvas = base;
}

// ---------------------------------------------------------------- drawing
function draw(item) {
  const d = state.model.drawing, lut = d.ramp, alpha = d.alpha;
  const { dw: w, dh: h, map, low } = item;
  const thr = state.pixelThr, denom = 2 * Math.max(thr - low, 1e-12);
  const out = new ImageData(w, h), src = item.rgb.data, dst = out.data;
  const mask = new Uint8Array(w * h);
  const v = verdictText(item.result.pred_score);
  const flagged = v.verdict !== "OK";   // mtad.postprocess.decide: an OK part has no outline
  let area = 0, top = -Infinity;
  for (let i = 0; i < w * h; i++) {
    const x = Math.min(Math.max((map[i] - low) / denom, 0), 1);
    const c = lut[Math.round(x * (lut.length - 1))];
    for (let k = 0; k < 3; k++) dst[4 * i + k] = Math.round((1 - alpha) * src[4 * i + k] + alpha * c[k]);
    dst[4 * i + 3] = 255;
    if (map[i] > top) top = map[i];
    if (flagged && (state.rule === ">" ? map[i] > thr : map[i] >= thr)) { mask[i] = 1; area++; }
  }
  if (flagged && area === 0) for (let i = 0; i < w * h; i++) if (map[i] >= top) { mask[i] = 1; area++; }   // its peak
  const edge = outline(mask, h, w, outlineWidth(h, w));
  for (let i = 0; i < w * h; i++) if (edge[i]) for (let k = 0; k < 3; k++) dst[4 * i + k] = d.outline_rgb[k];
  const ctx = item.canvas.getContext("2d");
  let size = bannerFontSize(h, w);
  const font = (px) => `${px}px Arial, Helvetica, sans-serif`;
  ctx.font = font(size);
  const room = w - 2 * Math.max(2, Math.floor(size / 4)), length = ctx.measureText(v.text).width;
  if (length > room) size = Math.max(8, Math.floor(size * room / length));   // as draw_overlay
  const pad = Math.max(2, Math.floor(size / 4)), band = Math.min(h, size + 2 * pad);
  for (let i = 0; i < w * band; i++) for (let k = 0; k < 3; k++) dst[4 * i + k] = Math.round(dst[4 * i + k] * (1 - d.banner_alpha));
  ctx.putImageData(out, 0, 0);
  ctx.font = font(size);
  ctx.textBaseline = "top";
  const colour = { OK: d.ok_rgb, REVIEW: d.review_rgb, NG: d.defective_rgb }[v.verdict];
  ctx.fillStyle = `rgb(${colour.join(",")})`;
  ctx.fillText(v.text, pad, pad);
  item.area = area / (w * h);
  item.bad = v.bad;
  item.verdict = v.verdict;
}
function redrawItem(item) {
  if (!item.result) return;
  draw(item);
  const c = item.card, r = item.result;
  c.root.dataset.status = "done";
  c.root.dataset.verdict = item.verdict;
  c.root.dataset.score = String(r.pred_score);
  if (!c.photoImg) {
    c.photoImg = el("img", { alt: `${item.name} as uploaded`, class: "photo" });
    c.photoImg.src = item.url;
    c.overlayImg = el("img", { alt: `${item.name}: heat map and predicted defect outline`, class: "overlay" });
    c.verdict = el("span", { class: "verdict" });
    c.score = el("span");
    c.time = el("span", { class: "muted" });
    c.area = el("span", { class: "muted" });
    c.body.replaceChildren(
      el("div", { class: "pair" },
        el("figure", {}, c.photoImg, el("figcaption", { text: "image" })),
        el("figure", {}, c.overlayImg, el("figcaption", { text: "heat map, outline, verdict" }))),
      el("div", { class: "facts-row" }, c.verdict, c.score, c.area, c.time));
  }
  c.verdict.textContent = item.verdict;
  c.verdict.className = `verdict ${{ OK: "ok", REVIEW: "review", NG: "bad" }[item.verdict]}`;
  c.score.textContent = `score ${fmt(r.pred_score)} (threshold ${fmt(state.imageThr)}` +
    (state.ngThr != null && state.ngThr !== state.imageThr ? `, NG ${fmt(state.ngThr)})` : ")");
  c.area.textContent = `defect area ${(100 * item.area).toFixed(1)}%`;
  c.time.textContent = `${Math.round(r.timing_ms.total)} ms on the server, ${Math.round(item.roundTripMs)} ms in all`;
  item.canvas.toBlob((blob) => {
    if (item.overlayUrl) URL.revokeObjectURL(item.overlayUrl);
    item.overlayUrl = URL.createObjectURL(blob);
    c.overlayImg.src = item.overlayUrl;
  });
}
function redrawAll() {
  if (state.redrawQueued) return;
  state.redrawQueued = true;
  requestAnimationFrame(() => {
    state.redrawQueued = false;
    for (const it of state.items) redrawItem(it);
    renderTable();
  });
}
function buildCard(item) {
  const root = el("article", { class: "card", "aria-label": item.name, "data-name": item.name, "data-status": "pending" });
  const body = el("div", {}, el("p", { class: "pending", text: "waiting for the model…" }));
  root.append(el("h3", { text: item.name }), body);
  $("#cards").append(root);
  return { root, body };
}

// ---------------------------------------------------------------- table and CSV
function rowsOf() {
  return state.items.map((it) => {
    const r = it.result;
    return {
      image_path: it.name, class_name: state.cls || "(pooled)",
      pred_score: r ? r.pred_score : "", pred_label: r ? (it.bad ? 1 : 0) : "",
      verdict: r ? it.verdict : "",
      image_threshold: r ? state.imageThr : "", ng_threshold: r && state.ngThr != null ? state.ngThr : "",
      image_threshold_source: r ? state.imageSrc : "",
      pixel_threshold: r ? state.pixelThr : "", pixel_threshold_source: r ? state.pixelSrc : "",
      defect_area_percent: r ? (100 * it.area).toFixed(2) : "",
      time_ms: r ? Math.round(r.timing_ms.total) : "",
      status: it.status, error: it.error || "",
    };
  });
}
function renderTable() {
  const body = $("#results-table tbody");
  body.replaceChildren(...rowsOf().map((r, i) => el("tr", { "data-status": state.items[i].status },
    el("td", { text: r.image_path }), el("td", { text: r.class_name }),
    el("td", { class: "num", text: r.pred_score === "" ? "" : fmt(r.pred_score) }),
    el("td", { text: r.error ? `error: ${r.error}` : r.verdict || "…" }),
    el("td", { class: "num", text: r.image_threshold === "" ? "" : fmt(r.image_threshold) }),
    el("td", { class: "num", text: r.pixel_threshold === "" ? "" : fmt(r.pixel_threshold) }),
    el("td", { class: "num", text: r.defect_area_percent === "" ? "" : `${r.defect_area_percent}%` }),
    el("td", { class: "num", text: r.time_ms === "" ? "" : `${r.time_ms} ms` }))));
  const done = state.items.filter((i) => i.status === "done");
  const count = (v) => done.filter((i) => i.verdict === v).length;
  const errors = state.items.filter((i) => i.status === "error").length;
  const waiting = state.items.filter((i) => i.status === "pending").length;
  $("#summary").textContent = state.items.length ? `${done.length} scored: ${count("NG")} NG, ${count("REVIEW")} review, ${count("OK")} OK` +
    (errors ? `; ${errors} failed` : "") + (waiting ? `; ${waiting} waiting` : "") : "";
  $("#download-csv").disabled = state.items.length === 0;
}
// A CSV cell a spreadsheet will not run as a formula: text starting with = + - @ tab or CR
// gets a leading apostrophe unless it is a plain number; the rule of mtad/report/cells.py's
// csv_cell, which tests/test_serve.py checks this function against. Then CSV quoting.
function csvCell(v) {
  let s = String(v);
  if (/^[=+\-@\t\r]/.test(s) && !/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) s = "'" + s;
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
function downloadCsv() {
  const rows = rowsOf();
  const cols = Object.keys(rows[0]);
  const text = [cols.join(","), ...rows.map((r) => cols.map((c) => csvCell(r[c])).join(","))].join("\n") + "\n";
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "mtad-results.csv" });
  document.body.append(a); a.click(); a.remove();
}

// ---------------------------------------------------------------- wiring
function wire() {
  const input = $("#file-input"), drop = $("#drop");
  $("#pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles([...e.dataTransfer.files]); });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => { e.preventDefault(); if (!drop.contains(e.target)) addFiles([...e.dataTransfer.files]); });
  $("#class-select").addEventListener("change", (e) => setClass(e.target.value));
  $("#image-thr").addEventListener("input", () => onSlider("image"));
  $("#ng-thr").addEventListener("input", () => onSlider("ng"));
  $("#pixel-thr").addEventListener("input", () => onSlider("pixel"));
  $("#reset-thr").addEventListener("click", () => setClass(state.cls));
  $("#download-csv").addEventListener("click", downloadCsv);
  $("#clear").addEventListener("click", () => {
    for (const it of state.items) { if (it.url) URL.revokeObjectURL(it.url); if (it.overlayUrl) URL.revokeObjectURL(it.overlayUrl); }
    state.items = state.items.filter((it) => it.status === "pending");
    $("#cards").replaceChildren(...state.items.map((it) => it.card.root));
    $("#clear").disabled = state.items.length === 0;
    renderTable();
  });
}
wire();
loadModel().catch((err) => { $("#model-line").textContent = `Cannot read the model: ${err.message}`; });
