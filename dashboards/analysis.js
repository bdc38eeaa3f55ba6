// The analysis views of a sweep, drawn from the coordinator's analysis API (nothing here is
// computed that the API does not also give): which parameter mattered (/importance), the metric
// against each parameter (/slice), over two (/contour), every run's curve (/runs), and jobs side
// by side (/api/compare). Loaded before app.js, whose helpers (esc, api, COLORS) these call.
"use strict";

// A number to 4 significant digits; very large or small ones in exponent form (a blow-up reads
// 7.652e18, never nineteen digits); non-finite ones by name.
function fmtNum(x) {
  if (x == null) return "";
  if (typeof x !== "number") return String(x);
  if (!isFinite(x)) return Number.isNaN(x) ? "NaN" : x > 0 ? "∞" : "-∞";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e6 || a < 1e-3) return x.toExponential(3).replace(/\.?0+e/, "e").replace("e+", "e");
  return String(+x.toPrecision(4));
}

// A metric's value as shown: a fraction as a percentage (one unit for accuracy everywhere).
const metricText = (m, v) => (v == null || !isFinite(v) ? fmtNum(v) : m && m.percent ? (100 * v).toFixed(2) + "%" : fmtNum(v));

// A colour from bad (red) to good (green); grey without a value.
const ramp = (t) => (t == null || !isFinite(t) ? "#9aa3ad" : `hsl(${Math.round(10 + 110 * Math.max(0, Math.min(1, t)))} 70% 42%)`);

// Values to colours, lowest to highest (`good`: "max" or "min" says which end is green; "order"
// paints in blues), and its legend: a gradient bar with its two ends labelled.
// An order that is neither good nor bad (trial numbers): light to dark blue.
const blues = (t) => (t == null || !isFinite(t) ? "#9aa3ad" : `hsl(212 75% ${Math.round(78 - 48 * Math.max(0, Math.min(1, t)))}%)`);

function colourScale(values, good, label, fmt = fmtNum) {
  const vs = values.filter((v) => v != null && isFinite(v));
  const lo = vs.length ? Math.min(...vs) : 0, hi = vs.length ? Math.max(...vs) : 1;
  const t = (v) => (v == null || !isFinite(v) ? null : hi > lo ? (v - lo) / (hi - lo) : 1);
  const paint = good === "order" ? blues : ramp;
  const colour = (v) => { const x = t(v); return paint(x == null ? null : good === "min" ? 1 - x : x); };
  const id = `g${Math.random().toString(36).slice(2, 8)}`;
  const [c0, c1] = good === "min" ? [paint(1), paint(0)] : [paint(0), paint(1)];
  const legend = `<svg class="legend" width="220" height="30" role="img" aria-label="colour scale: ${esc(label)} from ${esc(fmt(lo))} to ${esc(fmt(hi))}">
    <defs><linearGradient id="${id}"><stop offset="0" stop-color="${c0}"/><stop offset="1" stop-color="${c1}"/></linearGradient></defs>
    <rect x="0" y="2" width="140" height="10" fill="url(#${id})"/><text x="0" y="26">${esc(fmt(lo))}</text><text x="140" y="26" text-anchor="end">${esc(fmt(hi))}</text>
    <text x="148" y="11">${esc(label)}</text></svg>`;
  return { colour, legend };
}

// Where a value sits on an axis, in [0, 1]: log for a log scale, one slot per choice for
// categories, linear otherwise; with its tick labels.
function scaleOf(axis, values) {
  if (axis.scale === "choice" || values.some((v) => v != null && typeof v !== "number")) {
    const cats = (axis.choices || [...new Set(values.map((v) => JSON.stringify(v)))].map((c) => JSON.parse(c))).map((c) => JSON.stringify(c));
    const at = (c) => (cats.length > 1 ? cats.indexOf(c) / (cats.length - 1) : 0.5);
    return { label: axis.name, pos: (v) => at(JSON.stringify(v)), ticks: cats.map((c) => [at(c), typeof JSON.parse(c) === "string" ? JSON.parse(c) : c]) };
  }
  const nums = values.filter((v) => typeof v === "number" && isFinite(v));
  const lo = axis.low ?? Math.min(...nums), hi = axis.high ?? Math.max(...nums);
  const log = axis.scale === "log" && lo > 0;
  const f = log ? Math.log10 : (x) => x;
  const pos = (v) => (f(hi) > f(lo) ? (f(v) - f(lo)) / (f(hi) - f(lo)) : 0.5);
  const ticks = log
    ? Array.from({ length: Math.floor(Math.log10(hi)) - Math.ceil(Math.log10(lo)) + 1 }, (_, i) => 10 ** (Math.ceil(Math.log10(lo)) + i)).map((v) => [pos(v), fmtNum(v)])
    : [[0, fmtNum(lo)], [0.5, fmtNum((lo + hi) / 2)], [1, fmtNum(hi)]];
  return { label: log ? `${axis.name} (log)` : axis.name, pos, ticks: ticks.length >= 2 ? ticks : [[0, fmtNum(lo)], [1, fmtNum(hi)]] };
}

// A value axis over the data (never a fixed 0-100%): log when positive values span three
// decades or more.
function valueScale(values, percent) {
  const vs = values.filter((v) => v != null && isFinite(v));
  let lo = Math.min(...vs), hi = Math.max(...vs);
  const log = lo > 0 && hi / lo >= 1000;
  if (hi === lo) { hi = lo + (Math.abs(lo) || 1) * 0.1; }
  const f = log ? Math.log10 : (x) => x;
  const pos = (v) => (f(v) - f(lo)) / (f(hi) - f(lo));
  const show = (v) => (percent ? (100 * v).toFixed(1) + "%" : fmtNum(v));
  const ticks = log
    ? Array.from({ length: Math.floor(Math.log10(hi)) - Math.ceil(Math.log10(lo)) + 1 }, (_, i) => 10 ** (Math.ceil(Math.log10(lo)) + i)).map((v) => [pos(v), show(v)])
    : [0, 0.25, 0.5, 0.75, 1].map((t) => [t, show(lo + t * (hi - lo))]);
  return { pos, ticks, log, lo, hi };
}

// The metric picker the analysis views share.
function metricPicker(shape, chosen) {
  if (!shape.metrics.length) return "";
  return `<label>Metric <select id="metric" aria-label="metric">${shape.metrics.map((m) => `<option value="${esc(m.name)}"${m.name === chosen ? " selected" : ""}>${esc(m.label)} (${esc(m.mode)})</option>`).join("")}</select></label>`;
}

// ---------- importance ----------

function importanceBars(imp) {
  const W = 320;
  const rows = Object.entries(imp.importances).map(([k, v]) => `<tr><td>${esc(k)}</td>
    <td><svg width="${W}" height="14" role="img" aria-label="${esc(k)} ${(100 * v).toFixed(1)}%"><rect width="${Math.max(1, Math.round(W * v))}" height="14" fill="#0969da"></rect></svg></td>
    <td class="num">${(100 * v).toFixed(1)}%</td></tr>`).join("");
  const left = imp.left_out.diverged + imp.left_out.pruned + imp.left_out.no_value;
  const note = `PED-ANOVA over ${imp.trials} completed jobs, judged on ${esc(imp.metric)} (${esc(imp.mode)})${left ? `; ${left} left out (diverged, pruned or without a value)` : ""}.${imp.warning ? ` ${esc(imp.warning)}.` : ""}`;
  return `<h3>Which parameter mattered</h3><p class="muted">${note}</p><table id="importance">${rows}</table>`;
}

// ---------- slice: the metric against each parameter ----------

function slicePlots(sl, metric) {
  const W = 360, H = 260, L = 58, R = 12, T = 26, B = 46;
  const y = valueScale(sl.points.map((p) => p.value), metric && metric.percent);
  const trials = sl.points.map((p) => p.trial);
  const { colour, legend } = colourScale(trials, "order", "trial number", (v) => String(Math.round(v)));
  const sx = (t) => L + 8 + t * (W - L - R - 16), sy = (t) => H - B - 6 - t * (H - T - B - 12);
  const plots = sl.axes.map((axis) => {
    const xs = sl.points.map((p) => p.params[axis.name]);
    const x = scaleOf(axis, xs);
    let g = `<text x="${L}" y="16" font-weight="600">${esc(sl.metric)} against ${esc(axis.name)}</text>`;
    g += `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`;
    for (const [t, label] of x.ticks) g += `<text x="${sx(t)}" y="${H - B + 15}" text-anchor="middle">${esc(label)}</text>`;
    for (const [t, label] of y.ticks) g += `<text x="${L - 5}" y="${sy(t) + 4}" text-anchor="end">${esc(label)}</text>`;
    g += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">${esc(x.label)}</text>`;
    sl.points.forEach((p, i) => {
      const v = xs[i];
      if (v == null) return;
      g += `<circle cx="${sx(x.pos(v)).toFixed(1)}" cy="${sy(y.pos(p.value)).toFixed(1)}" r="3.5" fill="${colour(p.trial)}" fill-opacity=".85"><title>job #${p.job} (trial ${p.trial}): ${esc(axis.name)}=${esc(typeof v === "string" ? v : fmtNum(v))}, ${esc(sl.metric)} ${esc(metricText(metric, p.value))}</title></circle>`;
    });
    return `<svg class="chart slice" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(sl.metric)} against ${esc(axis.name)}" data-axis="${esc(axis.name)}">${g}</svg>`;
  }).join("");
  const kept = sl.kept < sl.trials ? `the best ${sl.kept} of ${sl.trials} completed jobs` : `${sl.trials} completed jobs`;
  return `<h3>Slice: ${esc(sl.metric)} against each parameter</h3><div class="grid3" id="slice">${plots}</div>
    <p class="muted">${kept}${y.log ? "; the metric on a log scale" : ""}. ${legend}</p>`;
}

// ---------- contour: the metric over two parameters ----------

function contourPlot(c, metric, shape) {
  const W = 520, H = 360, L = 70, R = 16, T = 26, B = 50;
  const nx = c.xs.length, ny = c.ys.length;
  const cw = (W - L - R) / nx, ch = (H - T - B) / ny;
  const flat = c.z.flat();
  const { colour, legend } = colourScale(flat, c.mode, c.metric, (v) => metricText(metric, v));
  let g = `<text x="${L}" y="16" font-weight="600">${esc(c.metric)} over ${esc(c.x.name)} × ${esc(c.y.name)}</text>`;
  c.z.forEach((row, j) => row.forEach((v, i) => {
    const measured = c.counts[j][i] > 0;
    g += `<rect x="${(L + i * cw).toFixed(1)}" y="${(H - B - (j + 1) * ch).toFixed(1)}" width="${(cw + 0.3).toFixed(1)}" height="${(ch + 0.3).toFixed(1)}" fill="${colour(v)}"${measured ? ` class="measured"` : ""}><title>${esc(c.x.name)} ${esc(fmtNum(c.xs[i]))}, ${esc(c.y.name)} ${esc(fmtNum(c.ys[j]))}: ${esc(metricText(metric, v))}${measured ? ` (${c.counts[j][i]} job${c.counts[j][i] > 1 ? "s" : ""})` : " (interpolated)"}</title></rect>`;
  }));
  const cell = (axis, values, v) => {
    if (axis.choices) { const k = axis.choices.findIndex((x) => JSON.stringify(x) === JSON.stringify(v)); return k < 0 ? null : k + 0.5; }
    const log = axis.scale === "log", f = log ? Math.log10 : (x) => x;
    const a = f(values[0]), b = f(values[values.length - 1]), n = values.length;
    return ((f(v) - a) / (b - a)) * (n - 1) + 0.5;
  };
  for (const p of c.points) {
    const i = cell(c.x, c.xs, p.params[c.x.name]), j = cell(c.y, c.ys, p.params[c.y.name]);
    if (i == null || j == null || !isFinite(i) || !isFinite(j)) continue;
    g += `<circle cx="${(L + i * cw).toFixed(1)}" cy="${(H - B - j * ch).toFixed(1)}" r="2.5" fill="#fff" stroke="#222" stroke-width=".8"><title>job #${p.job}: ${esc(metricText(metric, p.value))}</title></circle>`;
  }
  const label = (v) => (typeof v === "string" ? v : fmtNum(v));
  const every = (n) => Math.max(1, Math.ceil(n / 6));
  c.xs.forEach((v, i) => { if (i % every(nx) === 0 || i === nx - 1) g += `<text x="${(L + (i + 0.5) * cw).toFixed(1)}" y="${H - B + 15}" text-anchor="middle">${esc(label(v))}</text>`; });
  c.ys.forEach((v, j) => { if (j % every(ny) === 0 || j === ny - 1) g += `<text x="${L - 5}" y="${(H - B - (j + 0.5) * ch + 4).toFixed(1)}" text-anchor="end">${esc(label(v))}</text>`; });
  g += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(c.x.name)}${c.x.scale === "log" ? " (log)" : ""}</text>`;
  g += `<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(c.y.name)}${c.y.scale === "log" ? " (log)" : ""}</text>`;
  const names = shape.axes.map((a) => a.name);
  const pick = (id, chosen) => `<select id="${id}" aria-label="${id}" data-was="${esc(chosen)}">${names.map((n) => `<option${n === chosen ? " selected" : ""}>${esc(n)}</option>`).join("")}</select>`;
  return `<h3>Contour: ${pick("contour-x", c.x.name)} × ${pick("contour-y", c.y.name)}</h3>
    <div class="single"><figure><svg class="chart" id="contour" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(c.metric)} over ${esc(c.x.name)} and ${esc(c.y.name)}">${g}</svg>
    <figcaption class="muted">${esc(c.method)}; dots: the ${c.kept} best of ${c.trials} completed jobs. ${legend}</figcaption></figure></div>`;
}

// ---------- every run's curve, overlaid ----------

function runsChart(runs, metric, shape, by) {
  const W = 560, H = 320, L = 62, R = 12, T = 28, B = 44;
  const title = `${runs.metric} by epoch, ${runs.lines.length} of ${runs.total} runs (the best)`;
  const pts = runs.lines.flatMap((l) => l.value.filter((v) => v != null));
  if (!pts.length) return `<figure><svg class="chart" id="runs" viewBox="0 0 ${W} 80" role="img" aria-label="${esc(title)}: no data yet"><text x="12" y="20" font-weight="600">${esc(title)}</text><text x="12" y="50">no data yet</text></svg></figure>`;
  const y = valueScale(pts, metric && metric.percent);
  const x1 = Math.max(2, ...runs.lines.flatMap((l) => l.epoch));
  const sx = (e) => L + ((e - 1) / (x1 - 1)) * (W - L - R), sy = (t) => H - B - t * (H - T - B);
  const axis = shape.axes.find((a) => a.name === by);
  const key = (l) => (axis ? l.params[axis.name] : l.last);
  let colour, legend;
  if (axis && axis.scale === "choice") {
    const cats = axis.choices.map((c) => JSON.stringify(c));
    colour = (l) => COLORS[Math.max(0, cats.indexOf(JSON.stringify(key(l)))) % COLORS.length];
    legend = cats.map((c, i) => `<span><svg width="18" height="8" aria-hidden="true"><rect width="18" height="8" fill="${COLORS[i % COLORS.length]}"/></svg> ${esc(JSON.parse(c))}</span>`).join(" ");
  } else {
    const vals = runs.lines.map(key);
    const logKey = axis && axis.scale === "log";
    const s = colourScale(vals.map((v) => (logKey && v > 0 ? Math.log10(v) : v)), axis ? "max" : runs.mode, axis ? `${by}${logKey ? " (log10)" : ""}` : runs.metric, axis ? fmtNum : (v) => metricText(metric, v));
    colour = (l) => s.colour(logKey && key(l) > 0 ? Math.log10(key(l)) : key(l));
    legend = s.legend;
  }
  let g = `<text x="${L}" y="18" font-weight="600">${esc(title)}</text>`;
  for (const [t, label] of y.ticks) g += `<line x1="${L}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/><text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${esc(label)}</text>`;
  for (const e of ticks(1, x1).filter(Number.isInteger)) g += `<text x="${sx(e)}" y="${H - B + 16}" text-anchor="middle">${e}</text>`;
  g += `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`;
  g += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">epoch</text>`;
  for (const l of runs.lines) {
    let d = "", pen = false;
    l.epoch.forEach((e, i) => {
      const v = l.value[i];
      if (v == null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${sx(e).toFixed(1)},${sy(y.pos(v)).toFixed(1)}`;
      pen = true;
    });
    const tip = `<title>job #${l.job} (${esc(l.status)}): ${esc(metricText(metric, l.last))}</title>`;
    if (d.includes("L")) g += `<path d="${d}" fill="none" stroke="${colour(l)}" stroke-width="1.5" stroke-opacity=".85"${l.status === "running" ? ` stroke-dasharray="5 3"` : ""}>${tip}</path>`;
    // A run with one epoch so far is a dot, not an invisible line.
    else if (d) { const [cx, cy] = d.slice(1).split(","); g += `<circle cx="${cx}" cy="${cy}" r="3.5" fill="${colour(l)}">${tip}</circle>`; }
  }
  const options = [["", `${runs.metric} (its value)`]].concat(shape.axes.map((a) => [a.name, a.name]));
  return `<figure><svg class="chart" id="runs" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg>
    <figcaption class="muted">Colour by <select id="colour-by" aria-label="colour by">${options.map(([v, t]) => `<option value="${esc(v)}"${v === (by || "") ? " selected" : ""}>${esc(t)}</option>`).join("")}</select>; dashed: running. ${legend}</figcaption></figure>`;
}

// ---------- compare: 2 to 5 jobs side by side (#/compare?jobs=1,2,3) ----------

async function compareView(ids, metricName) {
  const c = await api(`/api/compare?jobs=${ids.join(",")}`);
  const jobs = c.jobs;
  const names = [...new Set(jobs.flatMap((j) => Object.keys(j.params)))];
  const own = [...new Set(jobs.flatMap((j) => j.metrics.flatMap((m) => Object.keys(m.extra || {}))))].sort();
  const named = ["accuracy", "test_loss", "train_loss", "precision", "recall", "f1", "images_per_sec", "seconds", "lr"].filter((k) => jobs.some((j) => j.metrics.some((m) => m[k] != null)));
  const metrics = named.concat(own);
  const chosen = metrics.includes(metricName) ? metricName : metrics[0];
  const valueOf = (m, k) => (k in m ? m[k] : (m.extra || {})[k]);
  const percent = ["accuracy", "precision", "recall", "f1"].includes(chosen);
  const series = jobs.map((j) => ({ name: `#${j.id} ${j.sweep_name}`, xs: j.metrics.map((m) => m.epoch), ys: j.metrics.map((m) => { const v = valueOf(m, chosen); return v == null ? NaN : percent ? 100 * v : v; }) }));
  const differs = new Set(c.differing);
  const cellOf = (v) => (v === undefined ? "–" : typeof v === "string" ? esc(v) : esc(typeof v === "number" ? fmtNum(v) : JSON.stringify(v)));
  const params = names.map((k) => `<tr${differs.has(k) ? ` class="differs"` : ""}><th scope="row">${esc(k)}${differs.has(k) ? " ≠" : ""}</th>${jobs.map((j) => `<td>${cellOf(j.params[k])}</td>`).join("")}</tr>`).join("");
  const last = (j) => j.latest || {};
  const summary = [
    ["status", (j) => esc(j.status)], ["epoch", (j) => esc(epochOf(j))], ["attempt", (j) => `${j.attempt}/${j.max_attempts}`],
    ...metrics.map((k) => [k, (j) => esc(metricText({ percent: ["accuracy", "precision", "recall", "f1"].includes(k) }, valueOf(last(j), k)))]),
    ["wall time", (j) => esc(dur(j.started_at && j.finished_at ? (j.finished_at - j.started_at) / 1000 : null))],
  ].map(([k, f]) => `<tr><th scope="row">${esc(k)}</th>${jobs.map((j) => `<td>${f(j)}</td>`).join("")}</tr>`).join("");
  const head = `<tr><th></th>${jobs.map((j) => `<th scope="col"><a href="#/jobs/${j.id}">#${j.id}</a> <span class="muted">${esc(j.sweep_name)}</span></th>`).join("")}</tr>`;
  return `<p><a href="#/sweeps/${jobs[0].sweep_id}">← sweep ${esc(jobs[0].sweep_name)}</a></p>
    <h1>Comparing ${jobs.length} jobs</h1>
    <p class="muted">Link to this comparison: <code>${esc(location.href)}</code></p>
    <p><label>Metric <select id="compare-metric" aria-label="metric">${metrics.map((k) => `<option${k === chosen ? " selected" : ""}>${esc(k)}</option>`).join("")}</select></label></p>
    <div class="single" id="compare-curves">${chosen ? lineChart(`${chosen}${percent ? " (%)" : ""} by epoch`, "epoch", chosen, series) : "<p class=\"muted\">No metrics recorded yet.</p>"}</div>
    <h2>Parameters <span class="muted">(≠: differs)</span></h2>
    <div class="scroll"><table id="compare-params">${head}${params}</table></div>
    <h2>Summary</h2>
    <div class="scroll"><table id="compare-summary">${head}${summary}</table></div>`;
}

// ---------- the front: several objectives (/pareto?all=true) ----------

// Every trial that reported each objective, on two of them: the front gold and joined (two
// objectives; with more, the front's points on this pair), infeasible trials grey; a point links
// to its job.
function paretoPlot(p, xi, yi, shape) {
  const W = 560, H = 380, L = 66, R = 14, T = 28, B = 50;
  const ox = p.objectives[xi], oy = p.objectives[yi];
  const percent = (o) => ((shape.metrics.find((m) => m.name === o.metric) || {}).percent);
  const xs = p.trials.map((t) => t.values[xi]), ys = p.trials.map((t) => t.values[yi]);
  const x = valueScale(xs, percent(ox)), y = valueScale(ys, percent(oy));
  const sx = (v) => L + 8 + x.pos(v) * (W - L - R - 16), sy = (v) => H - B - 8 - y.pos(v) * (H - T - B - 16);
  const title = `${oy.metric} (${oy.mode}) against ${ox.metric} (${ox.mode})`;
  let g = `<text x="${L}" y="18" font-weight="600">${esc(title)}</text>`;
  g += `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`;
  for (const [t, label] of x.ticks) g += `<text x="${L + 8 + t * (W - L - R - 16)}" y="${H - B + 16}" text-anchor="middle">${esc(label)}</text>`;
  for (const [t, label] of y.ticks) g += `<text x="${L - 6}" y="${H - B - 8 - t * (H - T - B - 16) + 4}" text-anchor="end">${esc(label)}</text>`;
  g += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(ox.metric)} (${esc(ox.mode)})</text>`;
  const front = p.trials.filter((t) => t.front).sort((a, b) => a.values[xi] - b.values[xi]);
  if (p.objectives.length === 2 && front.length > 1) {
    const d = front.map((t, i) => `${i ? "L" : "M"}${sx(t.values[xi]).toFixed(1)},${sy(t.values[yi]).toFixed(1)}`).join("");
    g += `<path class="front-line" d="${d}" fill="none" stroke="#b07d00" stroke-width="1.6"/>`;
  }
  // The front drawn last, so no other point hides it.
  const order = p.trials.filter((t) => !t.front).concat(front);
  for (const t of order) {
    const [fill, r, cls] = t.front ? ["#f2b705", 6, "front"] : t.feasible ? ["#5b6b7b", 4, "trial"] : ["#c4c9cf", 4, "infeasible"];
    const why = t.feasible ? "" : t.violation == null ? "; infeasible (a constraint's metric never reported)" : `; infeasible by ${fmtNum(t.violation)}`;
    const vals = p.objectives.map((o, i) => `${o.metric} ${fmtNum(t.values[i])}`).join(", ");
    g += `<a href="#/jobs/${t.job_id}"><circle class="${cls}" data-job="${t.job_id}" cx="${sx(t.values[xi]).toFixed(1)}" cy="${sy(t.values[yi]).toFixed(1)}" r="${r}" fill="${fill}" stroke="#222" stroke-width="${t.front ? 1.5 : 0.4}"><title>job #${t.job_id} (trial ${t.trial}): ${esc(vals)}${why}</title></circle></a>`;
  }
  return `<svg class="chart" id="pareto" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}: the front of ${p.front_size} trials">${g}</svg>`;
}

// The front's section: the plot, an axis picker with three or four objectives, and what it shows.
function paretoView(p, shape, xi, yi) {
  const pick = (id, chosen) => `<select id="${id}" aria-label="${id}">${p.objectives.map((o, i) => `<option value="${i}"${i === chosen ? " selected" : ""}>${esc(o.metric)} (${esc(o.mode)})</option>`).join("")}</select>`;
  const picker = p.objectives.length > 2 ? `<label>x ${pick("pareto-x", xi)}</label> <label>y ${pick("pareto-y", yi)}</label>` : "";
  const cons = p.constraints.length ? `; feasible when ${p.constraints.map(esc).join(" and ")} (grey: infeasible)` : "";
  const shown = p.trials.length < p.judged ? ` (the best ${p.trials.length} shown)` : "";
  return `<figure>${picker ? `<div class="toolbar">${picker}</div>` : ""}${paretoPlot(p, xi, yi, shape)}
    <figcaption class="muted" id="pareto-caption">Gold: the front, ${p.front_size} of ${p.judged} completed trials${shown}${cons}. Click a point to open its job.</figcaption></figure>`;
}
