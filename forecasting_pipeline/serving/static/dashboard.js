// The dashboard: reads /showcase/* only (no database credentials reach the page) and draws with uPlot.
// Every panel fetches and fails on its own, and says in its own words why it is empty.
"use strict";

const COLORS = {
  "kronos-base": "#e8590c", "chronos-2": "#1c7ed6", "ensemble": "#2f9e44",
  "baseline-random-walk": "#495057", "baseline-rw-vol": "#adb5bd",
};
const FALLBACK_COLORS = ["#9c36b5", "#0ca678", "#f08c00", "#d6336c", "#3b5bdb"];
const BARS = 90;
const params = new URLSearchParams(location.search);
// Seconds between refreshes (`?refresh=`; 0 turns it off).
const REFRESH_S = Number.isFinite(Number(params.get("refresh") ?? 60)) ? Math.max(0, Number(params.get("refresh") ?? 60)) : 60;
let universe = [];
let catalog = { models: [], default_model: "kronos-base" };
let generation = 0;
let inFlight = 0;
let modelsProblem = "";
const charts = {};

const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const answer = await fetch(url);
  const body = await answer.json();
  if (!answer.ok) {
    const problem = (body.errors && body.errors[0]) || {};
    const error = new Error(problem.reason || answer.statusText);
    error.status = answer.status;
    throw error;
  }
  return body;
}

function colorOf(model) {
  if (COLORS[model]) return COLORS[model];
  return FALLBACK_COLORS[[...model].reduce((a, c) => a + c.charCodeAt(0), 0) % FALLBACK_COLORS.length];
}

function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

const seconds = (ts) => Date.parse(ts) / 1000;
const when = (ts) => new Date(ts).toISOString().slice(0, 16).replace("T", " ") + " UTC";
const num = (v) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? null : Number(v));
const fixed = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const isBaseline = (model) => model.startsWith("baseline");

function element(tag, text, props = {}) {
  return Object.assign(document.createElement(tag), { textContent: text ?? "" }, props);
}

// ---- controls ---------------------------------------------------------------------------------

async function init() {
  const [info, models] = await Promise.all([getJSON("/showcase/instruments"), getJSON("/showcase/models")]);
  universe = info.instruments;
  catalog = models;
  for (const i of universe) $("symbol").add(new Option(i.symbol, i.symbol));
  for (const t of ["1d", "1h"].filter((t) => info.timeframes.includes(t))) $("timeframe").add(new Option(t, t));
  const view = startingView();
  buildModelToggle(view.model);
  $("symbol").value = view.symbol;
  $("timeframe").value = view.timeframe;
  if (["1", "3", "5", "10", "20"].includes(params.get("origins"))) $("origins").value = params.get("origins");
  showEmptyView();
  markInstruments();
  $("controls").addEventListener("change", () => { markInstruments(); refresh(); });
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(refresh, 300); });
  if (REFRESH_S > 0) setInterval(tick, REFRESH_S * 1000);
  await refresh();
}

// The URL's view where it names known things; else the API's first view (a model and instrument with rows).
function startingView() {
  const first = catalog.first_view || { model_name: catalog.default_model, timeframe: "1d", symbol: universe[0].symbol };
  const known = (v, list) => (v && list.includes(v) ? v : null);
  return {
    symbol: known(params.get("symbol"), universe.map((i) => i.symbol)) || first.symbol,
    timeframe: known(params.get("timeframe"), ["1d", "1h"]) || first.timeframe,
    model: known(params.get("model"), [...offered(), "all"]) || first.model_name,
  };
}

// Every model with rows except the baselines, which have none of their own in ml_predictions.
function offered() {
  const names = catalog.models.filter((m) => m.kind !== "baseline").map((m) => m.model_name);
  return names.length ? names : [catalog.default_model];
}

function buildModelToggle(choice) {
  const names = [...offered(), "all"];
  const current = $("models").dataset.names;
  if (current === names.join(",")) return;
  $("models").dataset.names = names.join(",");
  $("models").replaceChildren(element("legend", "Model"));
  for (const name of names) {
    const entry = catalog.models.find((m) => m.model_name === name);
    const input = element("input", "", { type: "radio", name: "model", id: `model-${name}`, value: name });
    const label = element("label", "");
    label.append(input, ` ${name === "all" ? "all overlaid" : name} `);
    if (entry) label.append(element("span", entry.kind, { className: "kind" }));
    label.title = entry ? `${entry.label} (${entry.kind})` : "every model above, overlaid";
    $("models").append(label);
  }
  ($(`model-${choice}`) || $(`model-${names[0]}`)).checked = true;
}

function selection() {
  const choice = document.querySelector("input[name=model]:checked").value;
  return {
    symbol: $("symbol").value, timeframe: $("timeframe").value, choice, origins: $("origins").value,
    models: choice === "all" ? offered() : [choice],
  };
}

// Instruments without rows of the selected model(s) at this timeframe say so in the picker.
function markInstruments() {
  const { timeframe, models } = selection();
  const have = new Set(catalog.models.filter((m) => models.includes(m.model_name))
    .flatMap((m) => m.series.filter((s) => s.timeframe === timeframe).map((s) => s.symbol)));
  for (const option of $("symbol").options) {
    const i = universe.find((u) => u.symbol === option.value);
    option.text = `${i.symbol} (${i.asset_class}, ${i.calendar})${have.has(i.symbol) ? "" : " · no forecasts"}`;
  }
}

function showEmptyView() {
  $("empty-view").textContent = catalog.empty_reason || "";
  $("empty-view").hidden = !catalog.empty_reason;
}

// ---- refresh ----------------------------------------------------------------------------------

async function tick() {
  if (inFlight > 0) return; // a refresh is under way: this tick would repeat it
  try {
    catalog = await getJSON("/showcase/models");
    buildModelToggle(selection().choice);
    markInstruments();
    showEmptyView();
    modelsProblem = "";
  } catch (error) {
    modelsProblem = `Could not refresh the models (showing the last list): ${error.message}`;
  }
  await refresh();
}

async function refresh() {
  inFlight += 1;
  try {
    await load(++generation);
  } finally {
    inFlight -= 1;
  }
}

async function load(mine) {
  document.body.dataset.state = "loading";
  const s = selection();
  history.replaceState(null, "", `?${new URLSearchParams({ symbol: s.symbol, timeframe: s.timeframe, model: s.choice,
    origins: s.origins, ...(params.has("refresh") ? { refresh: params.get("refresh") } : {}) })}`);
  const q = new URLSearchParams({ symbol: s.symbol, timeframe: s.timeframe });
  const answers = await Promise.allSettled([
    getJSON(`/showcase/bars?${q}&limit=${BARS}`),
    Promise.all(s.models.map((m) => latest(m, s.symbol, s.timeframe))),
    getJSON(`/showcase/scores?${q}`),
    Promise.all(s.models.map((m) => getJSON(`/showcase/past-forecasts?${q}&model=${encodeURIComponent(m)}&origins=${s.origins}`))),
    getJSON(`/showcase/rolling-scores?${q}`),
    getJSON(`/showcase/ensemble-weights?${q}`),
  ]);
  if (mine !== generation) return; // a newer refresh started: its answers win
  const [bars, forecasts, scores, past, rolling, weights] = answers;
  $("error").textContent = modelsProblem;
  panel("chart-panel", () => drawLatest(s, bars, forecasts));
  panel("scores-panel", () => showScores(settled(scores), s.models));
  panel("outcomes-panel", () => drawOutcomes(s, settled(past)));
  panel("rolling-panel", () => drawRolling(settled(rolling), s.models));
  panel("weights-panel", () => drawWeights(settled(weights)));
  document.body.dataset.models = s.models.join(",");
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
  document.body.dataset.state = "ready";
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}` + (REFRESH_S > 0 ? ` · every ${REFRESH_S} s` : "");
}

function settled(result) {
  if (result.status === "rejected") throw result.reason;
  return result.value;
}

// Runs one panel's drawing; what it returns ("ready" or "empty") or its failure becomes the panel's state.
function panel(id, draw) {
  const node = $(id);
  try {
    node.dataset.state = draw();
  } catch (error) {
    node.dataset.state = "error";
    node.querySelector(".empty").textContent = `Could not load: ${error.message}`;
  }
}

async function latest(model, symbol, timeframe) {
  const q = new URLSearchParams({ symbol, timeframe, model });
  try {
    const rows = await getJSON(`/showcase/ml-prediction?${q}`);
    return { model, row: rows[0] || null };
  } catch (error) {
    if (error.status === 422 || error.status === 404) return { model, row: null, note: error.message };
    throw error;
  }
}

function plot(key, container, options, data) {
  if (charts[key]) charts[key].destroy();
  charts[key] = new uPlot(options, data, $(container));
}

function clear(key) {
  if (charts[key]) charts[key].destroy();
  delete charts[key];
}

function widthOf(id, fallback) {
  return Math.max(fallback, $(id).clientWidth - 8);
}

// One shared x axis from every line's [t, y] points, as uPlot wants it.
function aligned(lines) {
  const xs = [...new Set(lines.flatMap((l) => l.points.map((p) => p[0])))].sort((a, b) => a - b);
  return [xs, ...lines.map((l) => {
    const at = new Map(l.points);
    return xs.map((x) => (at.has(x) ? at.get(x) : null));
  })];
}

function seriesOf(lines) {
  return [{ label: "time (UTC)" }, ...lines.map((l) => ({
    label: l.label, stroke: l.color, width: l.width ?? 1.5, dash: l.dash, spanGaps: true, points: { show: !!l.dots, size: 4 },
    value: (u, v) => (v === null ? "–" : v.toPrecision(4)),
  }))];
}

// Bands between a p10 line and the p90 line right after it (uPlot's series 0 is x: line i is series i + 1).
function bandsOf(lines) {
  return lines.flatMap((l, i) => (l.band ? [{ series: [i + 1, i], fill: l.band }] : []));
}

// ---- latest forecasts -------------------------------------------------------------------------

function drawLatest(s, barsResult, forecastsResult) {
  const forecasts = settled(forecastsResult);
  const bars = barsResult.status === "fulfilled" ? barsResult.value.bars : [];
  const barsWhy = barsResult.status === "rejected" ? barsResult.reason.message : (bars.length ? null : "no bars");
  const history = bars.map((b) => [seconds(b.ts), b.close]);
  const last = history.length ? { t: history[history.length - 1][0], close: history[history.length - 1][1] } : null;
  const lines = history.length ? [{ label: `${s.symbol} close`, color: "#343a40", points: history }] : [];
  const notes = barsWhy ? [`No bars of ${s.symbol} ${s.timeframe}: ${barsWhy}`] : [];
  for (const f of forecasts) {
    if (!f.row) {
      notes.push(`${f.model}: no stored forecast for ${s.symbol} ${s.timeframe}${f.note ? ` (${f.note})` : ""}`);
      continue;
    }
    lines.push(...latestLines(f, last));
    const r = f.row;
    notes.push(`${f.model}: made ${r.as_of ? `from the bar closed ${when(r.as_of)}` : `at ${when(r.created_at)}`}, ${r.model_version || "version not recorded"}`);
  }
  $("forecast-notes").replaceChildren(...notes.map((n) => element("li", n)));
  document.body.dataset.series = String(lines.length);
  if (!lines.length) {
    clear("latest");
    $("chart-title").textContent = `${s.symbol} ${s.timeframe}: nothing to draw`;
    $("chart-empty").textContent = `Nothing to draw for ${s.symbol} ${s.timeframe}: no bars and no stored forecast of ${s.models.join(", ")}.`;
    return "empty";
  }
  $("chart-empty").textContent = "";
  $("chart-title").textContent = `${s.symbol} ${s.timeframe}: ` + (history.length ? `the last ${history.length} bars and the latest forecasts` : "the latest forecasts (no bars)");
  plot("latest", "chart", {
    width: widthOf("chart-panel", 600), height: 400, scales: { x: { time: true } },
    series: seriesOf(lines), bands: bandsOf(lines), axes: [{}, { size: 70 }], legend: { live: true },
  }, aligned(lines));
  return "ready";
}

function latestLines(forecast, last) {
  const steps = Array.isArray(forecast.row.predictions) ? forecast.row.predictions.filter((s) => s && s.ts) : [];
  const color = colorOf(forecast.model);
  const banded = steps.length > 0 && steps.every((s) => num(s.p10) !== null && num(s.p90) !== null);
  // Each line starts at the last close, so a forecast reads as a continuation of the bars.
  const start = last ? [[last.t, last.close]] : [];
  const points = (pick) => [...start, ...steps.map((s) => [seconds(s.ts), num(pick(s))])];
  const out = [{ label: banded ? `${forecast.model} p50` : forecast.model, color, width: 2, points: points((s) => s.p50 ?? s.close) }];
  if (banded) {
    out.push({ label: `${forecast.model} p10`, color: alpha(color, 0.6), width: 1, dash: [4, 4], points: points((s) => s.p10) });
    out.push({ label: `${forecast.model} p90`, color: alpha(color, 0.6), width: 1, dash: [4, 4], points: points((s) => s.p90), band: alpha(color, 0.15) });
  }
  return out;
}

// ---- scores table -----------------------------------------------------------------------------

function showScores(scores, selected) {
  $("scores-scope").textContent = `${scores.symbol} ${scores.timeframe}`;
  const rows = scores.models;
  const body = $("scores").tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 5;
    cell.textContent = "no scores stored yet for this instrument and timeframe";
    return "ready";
  }
  const candidates = rows.filter((r) => !isBaseline(r.model_name));
  const best = {
    mean_pinball: minBy(candidates.filter((r) => r.levels === 3), (r) => r.mean_pinball),
    coverage_p10_p90: minBy(candidates.filter((r) => r.coverage_p10_p90 !== null), (r) => Math.abs(r.coverage_p10_p90 - 0.8)),
    relative_mae: minBy(candidates, (r) => r.relative_mae),
  };
  for (const r of rows) {
    const tr = body.insertRow();
    tr.dataset.model = r.model_name;
    tr.className = [isBaseline(r.model_name) ? "baseline" : "", selected.includes(r.model_name) ? "selected" : ""].join(" ").trim();
    tr.insertCell().append(element("span", "", { className: "swatch", style: `background:${colorOf(r.model_name)}` }),
      r.model_name + (r.levels === 1 ? " †" : ""));
    tr.insertCell().textContent = r.forecasts;
    for (const key of ["mean_pinball", "coverage_p10_p90", "relative_mae"]) {
      const cell = tr.insertCell();
      cell.textContent = fixed(r[key]);
      if (best[key] === r) { cell.classList.add("best"); cell.textContent += " ★"; }
    }
  }
  return "ready";
}

function minBy(rows, key) {
  let found = null;
  for (const r of rows) if (key(r) !== null && !Number.isNaN(key(r)) && (found === null || key(r) < key(found))) found = r;
  return found;
}

// ---- past forecasts against outcomes ----------------------------------------------------------

function drawOutcomes(s, answers) {
  const drawn = answers.filter((a) => a.forecasts.length);
  const bars = answers.map((a) => a.bars).sort((a, b) => b.length - a.length)[0] || [];
  $("outcomes-title").textContent = `${s.symbol} ${s.timeframe}: the last ${s.origins} forecasts of ${s.models.join(", ")} against what happened`;
  const unreadable = answers.flatMap((a) => a.unreadable_rows.map((r) => `${a.model_name}: ${r}`));
  if (!drawn.length) {
    clear("outcomes");
    $("outcomes-notes").replaceChildren(...unreadable.map((n) => element("li", n)));
    $("outcomes-empty").textContent = answers.map((a) => a.empty_reason).join("; ") + ".";
    return "empty";
  }
  const single = drawn.length === 1 && s.models.length === 1;
  const lines = bars.length ? [{ label: `${s.symbol} close`, color: "#343a40", width: 2, points: bars.map((b) => [seconds(b.ts), b.close]), dots: true }] : [];
  for (const a of drawn) lines.push(...a.forecasts.flatMap((f, i) => pastLines(a.model_name, f, (i + 1) / a.forecasts.length, single)));
  const notes = drawn.map(outcomeNote);
  if (!bars.length) notes.unshift(answers.find((a) => a.bars_note)?.bars_note || "no bars");
  for (const a of answers.filter((x) => !x.forecasts.length)) notes.push(`${a.model_name}: ${a.empty_reason}`);
  $("outcomes-notes").replaceChildren(...[...notes, ...unreadable].map((n) => element("li", n)));
  $("outcomes-empty").textContent = "";
  $("outcomes-panel").dataset.series = String(lines.length);
  plot("outcomes", "outcomes-chart", {
    width: widthOf("outcomes-panel", 600), height: 320, scales: { x: { time: true } },
    series: seriesOf(lines), bands: bandsOf(lines), axes: [{}, { size: 70 }], legend: { show: false },
  }, aligned(lines));
  return "ready";
}

// A past forecast's p50 (and, for one model alone, its band), fainter the older it is.
function pastLines(model, forecast, recency, withBand) {
  const color = colorOf(model);
  const origin = forecast.as_of ? when(forecast.as_of) : `written ${when(forecast.created_at)}`;
  const points = (key) => forecast.steps.map((st) => [seconds(st.ts), num(st[key])]);
  const out = [{ label: `${model} ${origin} p50`, color: alpha(color, 0.35 + 0.65 * recency), width: 1.5, points: points("p50") }];
  if (withBand && forecast.inside_band !== null) {
    out.push({ label: `${model} ${origin} p10`, color: alpha(color, 0.25), width: 0.5, points: points("p10") });
    out.push({ label: `${model} ${origin} p90`, color: alpha(color, 0.25), width: 0.5, points: points("p90"), band: alpha(color, 0.04 + 0.08 * recency) });
  }
  return out;
}

function outcomeNote(answer) {
  const realised = answer.forecasts.reduce((n, f) => n + f.realised_steps, 0);
  const steps = answer.forecasts.reduce((n, f) => n + f.steps.length, 0);
  const banded = answer.forecasts.filter((f) => f.inside_band !== null);
  const inside = banded.reduce((n, f) => n + f.inside_band, 0);
  const bandedRealised = banded.reduce((n, f) => n + f.realised_steps, 0);
  const band = banded.length && bandedRealised ? `, ${inside} of them inside p10–p90 (${fixed(inside / bandedRealised, 2)})` : "";
  return `${answer.model_name}: ${answer.forecasts.length} forecasts, ${realised} of ${steps} steps realised${band}`;
}

// ---- rolling scores ---------------------------------------------------------------------------

function drawRolling(answer, selected) {
  $("rolling-scope").textContent = `${answer.symbol} ${answer.timeframe}`;
  if (!answer.models.length) {
    clear("coverage");
    clear("error");
    $("rolling-empty").textContent = answer.empty_reason + ".";
    $("rolling-hint").textContent = "";
    return "empty";
  }
  $("rolling-empty").textContent = "";
  $("rolling-hint").textContent = `Each point pools a model's last ${answer.window} scored forecast dates of this instrument.` +
    " Grey lines are the baselines: the random walk (dark) and the random walk with a volatility band (light).";
  const style = (m) => ({ color: colorOf(m.model_name), width: selected.includes(m.model_name) ? 2.2 : 1.2,
    dash: isBaseline(m.model_name) ? [5, 3] : undefined });
  const banded = answer.models.filter((m) => m.points.some((p) => p.coverage_p10_p90 !== null));
  const coverage = banded.map((m) => ({ label: m.model_name, ...style(m), points: m.points.map((p) => [seconds(p.as_of), p.coverage_p10_p90]) }));
  const xs = answer.models.flatMap((m) => m.points.map((p) => seconds(p.as_of)));
  coverage.push({ label: "0.80", color: "#868e96", width: 1, dash: [2, 4], points: [[Math.min(...xs), 0.8], [Math.max(...xs), 0.8]] });
  const errors = answer.models.map((m) => ({ label: m.model_name, ...style(m), points: m.points.map((p) => [seconds(p.as_of), p.scaled_mae]) }));
  const small = (lines) => ({ width: widthOf("rolling-panel", 380), height: 170, scales: { x: { time: true } },
    series: seriesOf(lines), axes: [{}, { size: 50 }], legend: { live: false } });
  plot("coverage", "coverage-chart", { ...small(coverage), scales: { x: { time: true }, y: { range: [0, 1] } } }, aligned(coverage));
  plot("error", "error-chart", small(errors), aligned(errors));
  return "ready";
}

// ---- ensemble weights -------------------------------------------------------------------------

function drawWeights(answer) {
  $("weights-title").textContent = `Ensemble weights over time: ${answer.symbol} ${answer.timeframe}`;
  const body = $("weights-latest").tBodies[0];
  if (!answer.points.length) {
    clear("weights");
    body.replaceChildren();
    $("weights-caption").textContent = "";
    $("weights-empty").textContent = answer.empty_reason + ".";
    return "empty";
  }
  $("weights-empty").textContent = "";
  const lines = answer.members.flatMap((m) => [
    { label: `${m} location`, color: colorOf(m), width: 2, points: answer.points.map((p) => [seconds(p.as_of), p.location[m] ?? null]) },
    { label: `${m} band`, color: colorOf(m), width: 1.2, dash: [5, 4], points: answer.points.map((p) => [seconds(p.as_of), p.band[m] ?? null]) },
  ]).filter((l) => l.points.some((p) => p[1] !== null));
  plot("weights", "weights-chart", {
    width: widthOf("weights-chart", 560), height: 260, scales: { x: { time: true }, y: { range: [0, 1] } },
    series: seriesOf(lines), axes: [{}, { size: 50 }], legend: { live: false },
  }, aligned(lines));
  const newest = answer.points[answer.points.length - 1];
  $("weights-caption").textContent = `Newest forecast, from the bar closed ${when(newest.as_of)}: ` +
    (newest.warm_up ? `warm-up (${newest.scored_forecasts ?? 0} scored forecasts), equal weights` :
      `${newest.scored_forecasts} scored forecasts, own share ${fixed(newest.own_share, 2)}`);
  body.replaceChildren();
  for (const m of answer.members) {
    const tr = body.insertRow();
    tr.dataset.member = m;
    tr.insertCell().append(element("span", "", { className: "swatch", style: `background:${colorOf(m)}` }), m);
    if (m in newest.missing) {
      const why = tr.insertCell();
      why.colSpan = 2;
      why.className = "why";
      why.textContent = `left out: ${newest.missing[m]}`;
      continue;
    }
    tr.insertCell().textContent = fixed(newest.location[m], 2);
    tr.insertCell().textContent = newest.band[m] === null || newest.band[m] === undefined ? "– (no band)" : fixed(newest.band[m], 2);
  }
  return "ready";
}

init().catch((error) => {
  $("error").textContent = `Could not start: ${error.message}`;
  document.body.dataset.state = "error";
});
