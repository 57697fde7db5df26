// The charts page: lists what the caller's tenant may chart (GET /api/v1/charts) and draws each
// metric with uPlot as its graph type. Matih metrics are timeseries, read from the Matih query;
// Deeploy metrics are read from /api/v1/charts/deeploy/{id}, folded by the server.
//
// Every drawn chart also writes its numbers into the page: a data table per chart and data-*
// attributes on its card (data-drawn: when its canvas was last drawn), and window.tallydCharts
// maps each card's key to its uPlot instance, so a person (or a browser test) can read exactly
// what was drawn.
//
// Data from the API (names, labels, prediction ids) is only ever set as text, never as HTML.
(function () {
  "use strict";

  const CATALOGUE = "/api/v1/charts";
  const MATIH = "/api/v1/observability/custom-metrics";
  const DEEPLOY = "/api/v1/charts/deeploy";
  const TOKEN_KEY = "tallyd.token";
  // Preset ranges: their span and a step that gives a readable number of bins.
  const RANGES = {
    "1h": { span: 3600, step: 60 },
    "24h": { span: 86400, step: 600 },
    "7d": { span: 7 * 86400, step: 3600 },
  };
  // A custom range takes the smallest of these steps that keeps it under MAX_BINS bins.
  const STEPS = [10, 30, 60, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400, 604800];
  const MAX_BINS = 200;
  const HEIGHT = 260;
  const COLORS = ["#2764c5", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad", "#e67700"];
  const BASELINE_COLOR = "#6b7280";

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // ?token= is for a kiosk: used as given, never stored.
  const kiosk = params.get("token");
  // Without tokens (loopback), ?tenant= chooses the tenant as X-Tenant-ID does.
  const tenant = params.get("tenant");
  let token = kiosk || sessionStorage.getItem(TOKEN_KEY) || "";
  let aggregations = [];

  /** Card key → { entry, card, plot, model }. */
  const charts = new Map();
  window.tallydCharts = charts;

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** GET `path` as JSON; a failure throws an ApiError carrying the problem document's detail. */
  async function api(path, withToken = token) {
    const headers = { Accept: "application/json" };
    if (withToken) headers.Authorization = "Bearer " + withToken;
    else if (tenant) headers["X-Tenant-ID"] = tenant;
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "tallyd did not answer (" + e.message + ")", "unreachable");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON: the status line has to do.
    }
    if (!response.ok) {
      const detail = (body && (body.detail || body.title)) || response.statusText;
      throw new ApiError(response.status, detail + " (HTTP " + response.status + ")",
        body && body.code);
    }
    return body;
  }

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", !!isError);
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // ----- login -------------------------------------------------------------------------------

  function showLogin(message) {
    $("login").hidden = false;
    $("controls").hidden = true;
    $("logout").hidden = true;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = $("token").value.trim();
    if (!candidate) return;
    $("login-error").textContent = "";
    try {
      const catalogue = await api(CATALOGUE, candidate);
      token = candidate;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      $("login").hidden = true;
      show(catalogue);
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  });

  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.replace(location.pathname);
  });

  // ----- the time range ----------------------------------------------------------------------

  /** The bins of the chosen range, in unix seconds, aligned to the step (so bins are stable). */
  function currentRange() {
    const choice = $("range").value;
    let from;
    let to;
    let step;
    if (choice === "custom") {
      from = new Date($("from").value).getTime() / 1000;
      to = new Date($("to").value).getTime() / 1000;
      if (!(from < to)) throw new Error("The custom range needs a start before its end.");
      step = STEPS.find((s) => (to - from) / s <= MAX_BINS) || STEPS[STEPS.length - 1];
    } else {
      const preset = RANGES[choice];
      to = Date.now() / 1000;
      from = to - preset.span;
      step = preset.step;
    }
    const start = Math.floor(from / step) * step;
    const end = Math.max(Math.ceil(to / step) * step, start + step);
    return { start, end, step };
  }

  function localInput(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      "T" + pad(date.getHours()) + ":" + pad(date.getMinutes());
  }

  $("range").addEventListener("change", () => {
    const custom = $("range").value === "custom";
    $("custom").hidden = !custom;
    if (custom) {
      if (!$("from").value) $("from").value = localInput(new Date(Date.now() - 86400e3));
      if (!$("to").value) $("to").value = localInput(new Date());
      return;
    }
    redrawTimeseries();
  });
  $("apply").addEventListener("click", redrawTimeseries);

  function redrawTimeseries() {
    for (const chart of charts.values()) {
      if (chart.entry.graphType === "timeseries") load(chart);
    }
  }

  // ----- the catalogue -----------------------------------------------------------------------

  /** One shape for both sources: what a card and its chart need. */
  function entries(catalogue) {
    const matih = catalogue.matih.map((m) => ({
      key: "matih-" + m.name,
      source: "matih",
      name: m.name,
      graphType: "timeseries",
      description: m.description,
      xTitle: "Time",
      yTitle: m.unit ? m.name + " (" + m.unit + ")" : m.name,
      unit: m.unit,
      aggregation: m.aggregation,
      meta: ["Matih " + m.type].concat(m.labels.length ? ["labels: " + m.labels.join(", ")] : []),
    }));
    const deeploy = catalogue.deeploy.map((d) => ({
      key: "deeploy-" + d.id,
      source: "deeploy",
      id: d.id,
      name: d.name,
      graphType: d.graphType,
      xTitle: d.graphType === "timeseries" ? "Time" : withUnit(d.titleXAxis, d.unitXAxis),
      yTitle: withUnit(d.titleYAxis, d.unitYAxis),
      unit: d.unitYAxis,
      baseline: d.baselineValue,
      baselineDescription: d.baselineDescription,
      aggregation: d.aggregation,
      meta: ["Deeploy deployment " + d.deploymentId].concat(
        d.baselineValue !== null && d.baselineValue !== undefined
          ? ["baseline " + fmt(d.baselineValue) +
             (d.baselineDescription ? " (" + d.baselineDescription + ")" : "")]
          : []),
    }));
    return matih.concat(deeploy);
  }

  function withUnit(title, unit) {
    return unit ? (title || "") + " (" + unit + ")" : title || "";
  }

  function show(catalogue) {
    aggregations = catalogue.aggregations;
    $("who").textContent = "Tenant " + catalogue.tenant + (token ? "" : " (anonymous)");
    $("logout").hidden = !token || !!kiosk;
    $("controls").hidden = false;
    for (const chart of charts.values()) if (chart.plot) chart.plot.destroy();
    charts.clear();
    const list = $("list");
    const main = $("charts");
    list.replaceChildren();
    main.replaceChildren();
    const all = entries(catalogue);
    if (all.length === 0) {
      setStatus("Tenant " + catalogue.tenant + " has no metrics to chart yet: define some " +
        "through the API (Matih custom metrics or Deeploy custom metrics).");
      return;
    }
    setStatus(all.length + (all.length === 1 ? " metric" : " metrics") + " for tenant " +
      catalogue.tenant + ".");
    for (const entry of all) {
      const chart = { entry, card: card(entry), plot: null, model: null };
      charts.set(entry.key, chart);
      list.append(el("a", { href: "#" + chart.card.id, "data-key": entry.key },
        entry.name + " · " + entry.graphType));
      main.append(chart.card);
      chart.card.querySelector("select").addEventListener("change", () => load(chart));
      chart.card.querySelector("details").addEventListener("toggle", () => fillTable(chart));
    }
    for (const chart of charts.values()) load(chart);
  }

  function card(entry) {
    const select = el("select", { "aria-label": "Aggregation of " + entry.name });
    for (const name of aggregations) {
      const option = el("option", { value: name }, name);
      if (name === entry.aggregation) option.selected = true;
      select.append(option);
    }
    const meta = entry.meta.slice();
    if (entry.description) meta.unshift(entry.description);
    return el("article", {
      class: "chart",
      id: "chart-" + entry.key.replace(/[^A-Za-z0-9_-]/g, "_"),
      "data-key": entry.key,
      "data-source": entry.source,
      "data-name": entry.name,
      "data-graph-type": entry.graphType,
      "data-state": "loading",
    },
    el("header", null,
      el("h2", null, entry.name),
      el("span", { class: "badge" }, entry.graphType),
      el("label", null, "Aggregation", select)),
    el("p", { class: "meta" }, meta.join(" · ")),
    el("div", { class: "plot" }, el("div", { class: "message" }, "Loading…")),
    el("details", null, el("summary", null, "Data"),
      el("div", { class: "table-wrap" }, el("table", { class: "data" }))));
  }

  // ----- data --------------------------------------------------------------------------------

  /**
   * The chart's model: x values (unix seconds, or label positions), what each x shows as text,
   * one or more series of y values (null where a series has no bin), prediction ids per x.
   */
  async function fetchModel(entry, aggregation) {
    const query = new URLSearchParams({ aggregation });
    let range = null;
    if (entry.graphType === "timeseries") {
      range = currentRange();
      query.set("start", range.start);
      query.set("end", range.end);
      query.set("step", range.step + "s");
    }
    let model;
    if (entry.source === "matih") {
      model = matihModel(await api(MATIH + "/" + encodeURIComponent(entry.name) + "/query?" + query));
    } else {
      model = deeployModel(entry, await api(DEEPLOY + "/" + encodeURIComponent(entry.id) + "?" + query));
    }
    // A timeseries' x axis spans the range picked, not just the bins that hold points.
    model.range = range;
    return model;
  }

  function matihModel(answer) {
    const times = new Map();
    for (const series of answer.series) {
      for (const point of series.points) times.set(Date.parse(point.timestamp) / 1000, point.timestamp);
    }
    const xs = Array.from(times.keys()).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const series = answer.series.map((s) => {
      const values = xs.map(() => null);
      for (const point of s.points) values[index.get(Date.parse(point.timestamp) / 1000)] = point.value;
      return { label: labelText(answer.metric, s.labels), values };
    });
    return {
      time: true,
      xs,
      texts: xs.map((x) => times.get(x)),
      series,
      ids: null,
      aggregation: answer.aggregation,
    };
  }

  function labelText(name, labels) {
    const pairs = Object.entries(labels || {});
    if (pairs.length === 0) return name;
    return "{" + pairs.map(([k, v]) => k + "=" + JSON.stringify(v)).join(", ") + "}";
  }

  function deeployModel(entry, answer) {
    const time = answer.graphType === "timeseries";
    const xs = answer.points.map((p, i) => (time ? Date.parse(p.x) / 1000 : i));
    const ids = answer.points.map((p) => p.predictionLogIds || []);
    return {
      time,
      xs,
      texts: answer.points.map((p) => String(p.x)),
      series: [{ label: entry.yTitle || entry.name, values: answer.points.map((p) => p.y) }],
      ids: ids.some((list) => list.length > 0) ? ids : null,
      aggregation: answer.aggregation,
    };
  }

  // ----- drawing -----------------------------------------------------------------------------

  async function load(chart) {
    const { entry, card } = chart;
    const aggregation = card.querySelector("select").value;
    const plotBox = card.querySelector(".plot");
    card.dataset.state = "loading";
    delete card.dataset.drawn;
    const ticket = (chart.ticket = (chart.ticket || 0) + 1);
    let model;
    try {
      model = await fetchModel(entry, aggregation);
    } catch (e) {
      if (ticket !== chart.ticket) return;
      if (e.status === 401) {
        showLogin(e.message);
        return;
      }
      discard(chart);
      card.dataset.state = "error";
      card.dataset.error = e.message;
      plotBox.replaceChildren(el("div", { class: "message error", role: "alert" }, e.message));
      fillTable(chart);
      return;
    }
    // A later request (another range or aggregation) may have overtaken this one.
    if (ticket !== chart.ticket) return;
    discard(chart);
    chart.model = model;
    delete card.dataset.error;
    card.dataset.aggregation = model.aggregation;
    card.dataset.points = String(model.xs.length);
    fillTable(chart);
    if (model.xs.length === 0) {
      card.dataset.state = "empty";
      plotBox.replaceChildren(el("div", { class: "message" },
        entry.graphType === "timeseries" ? "No data in this time range." : "No data points yet."));
      return;
    }
    plotBox.replaceChildren(el("div", { class: "tip", hidden: "" }));
    chart.plot = plot(entry, model, plotBox);
    card.dataset.state = "ready";
  }

  function discard(chart) {
    if (chart.plot) chart.plot.destroy();
    chart.plot = null;
    chart.model = null;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "";
    if (Number.isInteger(value)) return String(value);
    return String(Number(value.toPrecision(6)));
  }

  function hasBaseline(entry) {
    return entry.baseline !== null && entry.baseline !== undefined;
  }

  function baselineLabel(entry) {
    return entry.baselineDescription || "Baseline";
  }

  function plot(entry, model, box) {
    const bar = entry.graphType === "bar";
    const unit = entry.unit ? " " + entry.unit : "";
    const series = [{
      label: entry.xTitle || "x",
      value: (u, x, _s, i) => (i === null || i === undefined ? "" : model.texts[i] ?? ""),
    }];
    model.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      series.push({
        label: s.label,
        stroke: color,
        width: 2,
        fill: bar ? color + "b0" : undefined,
        paths: bar ? uPlot.paths.bars({ size: [0.6, 80] }) : undefined,
        points: { show: !bar, size: 6, fill: color },
        spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "–" : fmt(v) + unit),
      });
    });
    const data = [model.xs].concat(model.series.map((s) => s.values));
    if (hasBaseline(entry)) {
      series.push({
        label: baselineLabel(entry),
        stroke: BASELINE_COLOR,
        width: 1.5,
        dash: [6, 4],
        // Drawn across the whole plot by drawBaseline, not from the first point to the last.
        paths: () => null,
        points: { show: false },
        value: () => fmt(entry.baseline) + unit,
      });
      data.push(model.xs.map(() => entry.baseline));
    }
    const labelled = (u, splits) => splits.map((i) => (Number.isInteger(i) ? model.texts[i] ?? "" : ""));
    const xAxis = { label: entry.xTitle, labelSize: 20, stroke: "#5b6475", grid: { stroke: "#eef0f3" } };
    const scales = {};
    if (model.time && model.range) {
      const { start, end } = model.range;
      scales.x = { time: true, range: () => [start, end] };
    }
    if (bar) {
      // Bars are read by their length: the y axis starts at zero.
      scales.y = { range: (u, min, max) => uPlot.rangeNum(Math.min(0, min), Math.max(0, max), 0.1, true) };
    }
    if (!model.time) {
      const last = model.xs.length - 1;
      scales.x = { time: false, range: () => [-0.5, last + 0.5] };
      // Show every label that fits: about one per 70 pixels.
      xAxis.splits = (u) => {
        const every = Math.max(1, Math.ceil(model.xs.length / Math.max(1, u.bbox.width / uPlot.pxRatio / 70)));
        return model.xs.filter((i) => i % every === 0);
      };
      xAxis.values = labelled;
    }
    const yAxis = {
      label: entry.yTitle,
      labelSize: 20,
      size: 56,
      stroke: "#5b6475",
      grid: { stroke: "#eef0f3" },
      values: (u, splits) => splits.map(fmt),
    };
    const options = {
      width: Math.max(200, box.clientWidth),
      height: HEIGHT,
      scales,
      axes: [xAxis, yAxis],
      series,
      cursor: { points: { size: 8 } },
      legend: { live: true },
      hooks: {
        setCursor: [(u) => tip(u, entry, model, box)],
        draw: (hasBaseline(entry) ? [(u) => drawBaseline(u, entry)] : []).concat(
          // When the canvas last got its data drawn, in ms since navigation: a chart is only
          // drawn a microtask after uPlot is made, so "ready" alone does not say it was.
          () => { box.parentElement.dataset.drawn = String(Math.round(performance.now())); }),
      },
    };
    return new uPlot(options, data, box);
  }

  /** The baseline across the plot, its description just above it at the right end. */
  function drawBaseline(u, entry) {
    const ctx = u.ctx;
    const ratio = uPlot.pxRatio;
    const y = u.valToPos(entry.baseline, "y", true);
    ctx.save();
    ctx.strokeStyle = BASELINE_COLOR;
    ctx.lineWidth = 1.5 * ratio;
    ctx.setLineDash([6 * ratio, 4 * ratio]);
    ctx.beginPath();
    ctx.moveTo(u.bbox.left, y);
    ctx.lineTo(u.bbox.left + u.bbox.width, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = BASELINE_COLOR;
    ctx.font = 12 * ratio + "px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText(baselineLabel(entry) + ": " + fmt(entry.baseline), u.bbox.left + u.bbox.width - 4 * ratio, y - 3 * ratio);
    ctx.restore();
  }

  /** The hover box: the x, each series' value and the point's prediction ids, when it has any. */
  function tip(u, entry, model, box) {
    const tipBox = box.querySelector(".tip");
    const i = u.cursor.idx;
    if (!tipBox || i === null || i === undefined || u.cursor.left < 0) {
      if (tipBox) tipBox.hidden = true;
      return;
    }
    const unit = entry.unit ? " " + entry.unit : "";
    const lines = [el("div", null, el("strong", null, model.time ? new Date(model.xs[i] * 1000).toLocaleString() : model.texts[i]))];
    for (const s of model.series) {
      const v = s.values[i];
      lines.push(el("div", null, s.label + ": " + (v === null || v === undefined ? "–" : fmt(v) + unit)));
    }
    if (model.ids && model.ids[i] && model.ids[i].length) {
      lines.push(el("div", { class: "tip-ids" }, "Prediction ids: " + model.ids[i].join(", ")));
    }
    tipBox.replaceChildren(...lines);
    tipBox.hidden = false;
    const over = u.over;
    const left = over.offsetLeft + u.cursor.left + 12;
    const maxLeft = box.clientWidth - tipBox.offsetWidth - 4;
    tipBox.style.left = Math.max(0, Math.min(left, maxLeft)) + "px";
    tipBox.style.top = over.offsetTop + Math.max(0, u.cursor.top - 10) + "px";
  }

  /**
   * The drawn numbers as a table: one row per x, raw values in data-* for machines. Built only
   * while its "Data" is open: ten charts of a thousand labels would otherwise make 30,000
   * elements nobody sees before the first paint.
   */
  function fillTable(chart) {
    const { card, entry, model } = chart;
    const table = card.querySelector("table.data");
    if (!model || !card.querySelector("details").open) {
      table.replaceChildren();
      return;
    }
    const head = el("tr", null, el("th", null, entry.xTitle || "x"));
    for (const s of model.series) head.append(el("th", null, s.label));
    if (hasBaseline(entry)) head.append(el("th", null, baselineLabel(entry)));
    if (model.ids) head.append(el("th", null, "Prediction ids"));
    const rows = model.xs.map((x, i) => {
      const row = el("tr", { "data-x": model.texts[i] }, el("td", null, model.texts[i]));
      for (const s of model.series) {
        const v = s.values[i];
        row.append(el("td", { "data-value": v === null ? "" : String(v) }, fmt(v)));
      }
      if (hasBaseline(entry)) row.append(el("td", { "data-baseline": String(entry.baseline) }, fmt(entry.baseline)));
      if (model.ids) row.append(el("td", { class: "ids", "data-ids": model.ids[i].join(",") }, model.ids[i].join(", ")));
      return row;
    });
    table.replaceChildren(el("thead", null, head), el("tbody", null, ...rows));
  }

  // Charts follow their card's width (a phone turned, a window resized).
  const resizer = new ResizeObserver((records) => {
    for (const record of records) {
      const chart = charts.get(record.target.closest(".chart").dataset.key);
      if (chart && chart.plot) {
        const width = Math.max(200, Math.floor(record.contentRect.width));
        if (width !== chart.plot.width) chart.plot.setSize({ width, height: HEIGHT });
      }
    }
  });
  new MutationObserver(() => {
    for (const box of document.querySelectorAll(".chart .plot")) resizer.observe(box);
  }).observe($("charts"), { childList: true });

  // ----- start -------------------------------------------------------------------------------

  (async function start() {
    setStatus("Loading…");
    try {
      show(await api(CATALOGUE));
    } catch (e) {
      if (e.status === 401) {
        setStatus("");
        // Without a token this is the ordinary way in; with one, say why it was refused.
        showLogin(token ? e.message : "");
        if (!kiosk) sessionStorage.removeItem(TOKEN_KEY);
        token = kiosk ? token : "";
        return;
      }
      setStatus(e.message, true);
    }
  })();
})();
