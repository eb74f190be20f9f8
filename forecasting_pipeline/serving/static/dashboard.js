// The dashboard: reads /showcase/* only (no database credentials reach the page) and draws with uPlot.
"use strict";

const COLORS = { "kronos-base": "#e8590c", "chronos-2": "#1c7ed6", "ensemble": "#2f9e44" };
const FALLBACK_COLORS = ["#9c36b5", "#0ca678", "#f08c00"];
const TOGGLE = ["kronos-base", "chronos-2", "ensemble"];
const BARS = 90;
let known = { models: [] };
let chart = null;

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

async function init() {
  const info = await getJSON("/showcase/instruments");
  known = info;
  for (const i of info.instruments) $("symbol").add(new Option(`${i.symbol} (${i.asset_class}, ${i.calendar})`, i.symbol));
  for (const t of ["1d", "1h"].filter((t) => info.timeframes.includes(t))) $("timeframe").add(new Option(t, t));
  // ensemble only once it has rows; kronos-base and chronos-2 always, as the gateway knows them.
  const choices = TOGGLE.filter((m) => m !== "ensemble" || info.models.includes(m)).concat(["all"]);
  for (const model of choices) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="radio" name="model" id="model-${model}" value="${model}"> ${model === "all" ? "all overlaid" : model}`;
    $("models").append(label);
  }
  $(`model-${info.default_model}`).checked = true;
  $("controls").addEventListener("change", refresh);
  window.addEventListener("resize", () => chart && chart.setSize({ width: chartWidth(), height: 440 }));
  await refresh();
}

function selectedModels() {
  const choice = document.querySelector("input[name=model]:checked").value;
  if (choice !== "all") return [choice];
  return TOGGLE.filter((m) => known.models.includes(m)).concat(known.models.filter((m) => !TOGGLE.includes(m) && !m.startsWith("baseline")));
}

async function latest(model, symbol, timeframe) {
  const q = new URLSearchParams({ symbol, timeframe, model });
  try {
    const rows = await getJSON(`/showcase/ml-prediction?${q}`);
    return { model, row: rows[0] || null };
  } catch (error) {
    if (error.status === 400) return { model, row: null, note: error.message };
    throw error;
  }
}

async function refresh() {
  document.body.dataset.state = "loading";
  $("error").textContent = "";
  const symbol = $("symbol").value, timeframe = $("timeframe").value, models = selectedModels();
  try {
    const q = new URLSearchParams({ symbol, timeframe });
    const [bars, forecasts, scores] = await Promise.all([
      getJSON(`/showcase/bars?${q}&limit=${BARS}`),
      Promise.all(models.map((m) => latest(m, symbol, timeframe))),
      getJSON(`/showcase/scores?${q}`),
    ]);
    draw(bars, forecasts);
    showScores(scores, models);
    document.body.dataset.models = models.join(",");
    document.body.dataset.state = "ready";
  } catch (error) {
    $("error").textContent = `Could not load: ${error.message}`;
    document.body.dataset.state = "error";
  }
}

function num(value) {
  const x = Number(value);
  return value === null || value === undefined || !Number.isFinite(x) ? null : x;
}

function seconds(ts) {
  return Date.parse(ts) / 1000;
}

function forecastSeries(forecast, last) {
  const steps = Array.isArray(forecast.row.predictions) ? forecast.row.predictions.filter((s) => s && s.ts) : [];
  const color = colorOf(forecast.model);
  const banded = steps.length > 0 && steps.every((s) => num(s.p10) !== null && num(s.p90) !== null);
  // Each line starts at the last close, so a forecast reads as a continuation of the bars.
  const points = (pick) => [[last.t, last.close], ...steps.map((s) => [seconds(s.ts), num(pick(s))])];
  const out = [{ label: banded ? `${forecast.model} p50` : forecast.model, color, width: 2, points: points((s) => s.p50 ?? s.close) }];
  if (banded) {
    out.push({ label: `${forecast.model} p10`, color: alpha(color, 0.6), base: color, width: 1, dash: [4, 4], points: points((s) => s.p10) });
    out.push({ label: `${forecast.model} p90`, color: alpha(color, 0.6), base: color, width: 1, dash: [4, 4], points: points((s) => s.p90), band: true });
  }
  return out;
}

function draw(bars, forecasts) {
  const history = bars.bars.map((b) => [seconds(b.ts), b.close]);
  const last = { t: history[history.length - 1][0], close: history[history.length - 1][1] };
  const lines = [{ label: `${bars.symbol} close`, color: "#343a40", width: 1.5, points: history }];
  const notes = [];
  for (const forecast of forecasts) {
    if (!forecast.row) {
      notes.push(`${forecast.model}: no stored forecast for ${bars.symbol} ${bars.timeframe}${forecast.note ? ` (${forecast.note})` : ""}`);
      continue;
    }
    lines.push(...forecastSeries(forecast, last));
    const r = forecast.row;
    notes.push(`${forecast.model}: made ${r.as_of ? `from the bar closed ${r.as_of}` : `at ${r.created_at}`}, ${r.model_version || "version not recorded"}`);
  }
  const xs = [...new Set(lines.flatMap((l) => l.points.map((p) => p[0])))].sort((a, b) => a - b);
  const data = [xs, ...lines.map((l) => {
    const at = new Map(l.points);
    return xs.map((x) => (at.has(x) ? at.get(x) : null));
  })];
  const bands = [];
  // uPlot's series 0 is x: line i is series i + 1, and each p90 line follows its p10 line.
  lines.forEach((l, i) => {
    if (l.band) bands.push({ series: [i + 1, i], fill: alpha(l.base, 0.15) });
  });
  const options = {
    width: chartWidth(), height: 440,
    scales: { x: { time: true } },
    series: [{ label: "bar close (UTC)" }, ...lines.map((l) => ({
      label: l.label, stroke: l.color, width: l.width, dash: l.dash, spanGaps: true, points: { show: false },
      value: (u, v) => (v === null ? "–" : v.toPrecision(6)),
    }))],
    bands,
    axes: [{}, { size: 70 }],
    legend: { live: true },
  };
  if (chart) chart.destroy();
  chart = new uPlot(options, data, $("chart"));
  document.body.dataset.series = String(lines.length);
  $("chart-title").textContent = `${bars.symbol} ${bars.timeframe}: the last ${history.length} bars and the latest forecasts`;
  $("forecast-notes").replaceChildren(...notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
}

function chartWidth() {
  return Math.max(600, $("chart-panel").clientWidth - 8);
}

function showScores(scores, selected) {
  $("scores-scope").textContent = `${scores.symbol} ${scores.timeframe}`;
  const rows = scores.models;
  const candidates = rows.filter((r) => !r.model_name.startsWith("baseline"));
  const best = {
    mean_pinball: minBy(candidates.filter((r) => r.levels === 3), (r) => r.mean_pinball),
    coverage_p10_p90: minBy(candidates.filter((r) => r.coverage_p10_p90 !== null), (r) => Math.abs(r.coverage_p10_p90 - 0.8)),
    relative_mae: minBy(candidates, (r) => r.relative_mae),
  };
  const body = $("scores").tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 5;
    cell.textContent = "no scores stored yet for this instrument and timeframe";
    return;
  }
  for (const r of rows) {
    const tr = body.insertRow();
    tr.dataset.model = r.model_name;
    tr.className = [r.model_name.startsWith("baseline") ? "baseline" : "", selected.includes(r.model_name) ? "selected" : ""].join(" ").trim();
    const name = tr.insertCell();
    name.innerHTML = `<span class="swatch" style="background:${colorOf(r.model_name)}"></span>`;
    name.append(r.model_name + (r.levels === 1 ? " †" : ""));
    tr.insertCell().textContent = r.forecasts;
    for (const key of ["mean_pinball", "coverage_p10_p90", "relative_mae"]) {
      const cell = tr.insertCell();
      cell.textContent = r[key] === null ? "–" : r[key].toFixed(3);
      if (best[key] === r) { cell.classList.add("best"); cell.textContent += " ★"; }
    }
  }
}

function minBy(rows, key) {
  let found = null;
  for (const r of rows) if (key(r) !== null && !Number.isNaN(key(r)) && (found === null || key(r) < key(found))) found = r;
  return found;
}

init().catch((error) => {
  $("error").textContent = `Could not start: ${error.message}`;
  document.body.dataset.state = "error";
});
