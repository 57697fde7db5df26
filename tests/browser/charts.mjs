// Drives the charts page of a running tallyd in headless Chromium (Debian's, through
// playwright-core) and reports what a person would have seen, as JSON on stdout; tests/charts.rs
// starts the daemon with known data, runs this and judges the report. This script only acts and
// reads: it fails (exit 1) only when the page cannot be driven at all.
//
// Environment: TALLYD_URL (http://127.0.0.1:PORT), TALLYD_TOKEN (a read token),
// ARTIFACTS (where screenshots go), CUSTOM_FROM / CUSTOM_TO (datetime-local values for the
// custom range), CHROMIUM (default /usr/bin/chromium).
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, executablePath, FLAGS, watchErrors } from "./chromium.mjs";

const base = process.env.TALLYD_URL;
const token = process.env.TALLYD_TOKEN;
const artifacts = process.env.ARTIFACTS;
const TIMEOUT = 20000;
mkdirSync(artifacts, { recursive: true });

const report = { phases: {} };

/** A fresh browser profile; console errors, page errors, failed requests and HTTP errors logged. */
async function browser(options) {
  const profile = mkdtempSync(join(tmpdir(), "tallyd-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: FLAGS,
    timeout: TIMEOUT,
    ...options,
  });
  const log = watchErrors(context);
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  return {
    page,
    log,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Waits until no chart is loading. */
async function settled(page) {
  await page.waitForFunction(() => {
    const cards = document.querySelectorAll(".chart");
    return cards.length > 0 && [...cards].every((c) => c.dataset.state !== "loading");
  });
}

/** Everything the page shows about its charts, read from the DOM and the uPlot instances. */
async function snapshot(page) {
  // The data tables are built when their "Data" is opened: open them as a person would, and
  // close them again after reading so that screenshots show the charts alone.
  await page.evaluate(() => Promise.all([...document.querySelectorAll(".chart details:not([open])")].map((d) =>
    new Promise((opened) => {
      d.dataset.openedBySnapshot = "";
      d.addEventListener("toggle", opened, { once: true });
      d.open = true;
    }))));
  const seen = await page.evaluate(() => {
    const cards = [...document.querySelectorAll(".chart")].map((card) => {
      const chart = window.tallydCharts.get(card.dataset.key);
      const plot = chart && chart.plot;
      const rows = [...card.querySelectorAll("table.data tbody tr")].map((tr) => ({
        x: tr.dataset.x,
        values: [...tr.querySelectorAll("td[data-value]")].map((td) =>
          td.dataset.value === "" ? null : Number(td.dataset.value)),
        baseline: tr.querySelector("td[data-baseline]") ? Number(tr.querySelector("td[data-baseline]").dataset.baseline) : null,
        ids: tr.querySelector("td[data-ids]") ? tr.querySelector("td[data-ids]").dataset.ids : null,
      }));
      return {
        key: card.dataset.key,
        name: card.dataset.name,
        source: card.dataset.source,
        graphType: card.dataset.graphType,
        state: card.dataset.state,
        error: card.dataset.error || null,
        aggregation: card.dataset.aggregation || null,
        rows,
        plot: plot ? {
          data: plot.data.map((column) => Array.from(column)),
          series: plot.series.map((s) => s.label),
          axes: plot.axes.map((a) => a.label || null),
          width: plot.width,
        } : null,
      };
    });
    return {
      list: [...document.querySelectorAll("#list a")].map((a) => a.textContent),
      who: document.getElementById("who").textContent,
      status: document.getElementById("status").textContent,
      cards,
    };
  });
  await page.evaluate(() => {
    for (const d of document.querySelectorAll(".chart details[data-opened-by-snapshot]")) {
      delete d.dataset.openedBySnapshot;
      d.open = false;
    }
  });
  return seen;
}

async function pickAggregation(page, key, aggregation) {
  const card = page.locator(`.chart[data-key="${key}"]`);
  await card.locator("select").selectOption(aggregation);
  await page.waitForFunction(([k, a]) => {
    const c = document.querySelector(`.chart[data-key="${k}"]`);
    return c.dataset.state !== "loading" && c.dataset.aggregation === a;
  }, [key, aggregation]);
}

// ----- desktop: login, charts, aggregations, ranges, hover, screenshots ------------------------
{
  const { page, log, close } = await browser({ viewport: { width: 1280, height: 900 } });
  await page.goto(base + "/charts");
  await page.waitForSelector("#login:not([hidden])");
  report.phases.anonymous = { loginShown: true, log: structuredClone(log) };

  await page.fill("#token", "not-the-token");
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => document.getElementById("login-error").textContent !== "");
  report.phases.wrongToken = {
    error: await page.textContent("#login-error"),
    stored: await page.evaluate(() => sessionStorage.getItem("tallyd.token")),
  };

  log.console.length = 0; log.pageErrors.length = 0; log.failedRequests.length = 0; log.httpErrors.length = 0;
  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  await settled(page);
  const loggedIn = await snapshot(page);
  loggedIn.stored = await page.evaluate(() => sessionStorage.getItem("tallyd.token"));
  loggedIn.loginHidden = await page.evaluate(() => document.getElementById("login").hidden);

  // Every aggregation on every chart.
  const byAggregation = {};
  for (const card of loggedIn.cards) {
    byAggregation[card.key] = {};
    for (const aggregation of ["sum", "min", "max", "count", "last", "average"]) {
      await pickAggregation(page, card.key, aggregation);
      const after = (await snapshot(page)).cards.find((c) => c.key === card.key);
      byAggregation[card.key][aggregation] = { rows: after.rows, plot: after.plot && after.plot.data };
    }
    // Back to the metric's own, for the screenshots.
    await pickAggregation(page, card.key, card.aggregation);
  }

  // Hover the line chart's first point (it has prediction ids) and the timeseries' last bin.
  const hovers = {};
  for (const card of loggedIn.cards.filter((c) => c.plot)) {
    const index = card.graphType === "line" ? 0 : card.plot.data[0].length - 1;
    await page.locator(`.chart[data-key="${card.key}"]`).scrollIntoViewIfNeeded();
    const at = await page.evaluate(([key, i]) => {
      const plot = window.tallydCharts.get(key).plot;
      const rect = plot.over.getBoundingClientRect();
      return {
        x: rect.left + plot.valToPos(plot.data[0][i], "x"),
        y: rect.top + plot.valToPos(plot.data[1][i] ?? 0, "y"),
      };
    }, [card.key, index]);
    // One pixel in: a point on the plot's edge would be outside it.
    await page.mouse.move(at.x - 20, at.y - 20);
    await page.mouse.move(at.x - 1, at.y, { steps: 5 });
    const shown = await page
      .waitForFunction((key) => !document.querySelector(`.chart[data-key="${key}"] .tip`).hidden, card.key, { timeout: 3000 })
      .then(() => true, () => false);
    if (!shown) {
      hovers[card.key] = {
        failed: await page.evaluate(([key, p]) => {
          const plot = window.tallydCharts.get(key).plot;
          const top = document.elementFromPoint(p.x, p.y);
          return { cursor: plot.cursor, at: p, top: top && top.className, rect: plot.over.getBoundingClientRect().toJSON() };
        }, [card.key, at]),
      };
      continue;
    }
    hovers[card.key] = {
      tip: await page.textContent(`.chart[data-key="${card.key}"] .tip`),
      legend: await page.locator(`.chart[data-key="${card.key}"] .u-legend`).innerText(),
    };
    // timeseries.png is Deeploy's; the Matih one is timeseries-matih.png.
    const file = card.graphType + (card.source === "matih" ? "-matih" : "") + ".png";
    await page.locator(`.chart[data-key="${card.key}"]`).screenshot({ path: join(artifacts, file) });
  }
  await page.mouse.move(0, 0);
  await page.screenshot({ path: join(artifacts, "page.png"), fullPage: true });

  // The range picker: last 24 hours, then a custom range.
  await page.selectOption("#range", "24h");
  await page.waitForTimeout(50);
  await settled(page);
  const day = await snapshot(page);
  await page.selectOption("#range", "custom");
  await page.fill("#from", process.env.CUSTOM_FROM);
  await page.fill("#to", process.env.CUSTOM_TO);
  await page.click("#apply");
  await page.waitForTimeout(50);
  await settled(page);
  const custom = await snapshot(page);

  // A reload keeps the session's token.
  await page.reload();
  await settled(page);
  const reloaded = await snapshot(page);
  reloaded.loginHidden = await page.evaluate(() => document.getElementById("login").hidden);

  report.phases.loggedIn = { ...loggedIn, byAggregation, hovers, day, custom, reloaded, log };
  await close();
}

// ----- a phone, as a kiosk with ?token= ------------------------------------------------------
{
  const { page, log, close } = await browser({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  await page.goto(base + "/charts?token=" + encodeURIComponent(token));
  await settled(page);
  const phone = await snapshot(page);
  phone.scroll = await page.evaluate(() => {
    // An element sticks out unless a scrolling box (a data table's) holds it.
    const clipped = (e) => {
      for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
        if (getComputedStyle(p).overflowX !== "visible") return true;
      }
      return false;
    };
    const width = document.documentElement.clientWidth;
    const free = [...document.querySelectorAll("body *")].filter((e) => !clipped(e));
    return {
      scrollWidth: document.documentElement.scrollWidth,
      clientWidth: width,
      widest: Math.max(...free.map((e) => e.getBoundingClientRect().right)),
      outside: free
        .filter((e) => e.getBoundingClientRect().right > width + 0.5)
        .slice(0, 5)
        .map((e) => e.tagName.toLowerCase() + "." + e.className + " right=" + e.getBoundingClientRect().right),
    };
  });
  phone.stored = await page.evaluate(() => sessionStorage.getItem("tallyd.token"));
  await page.screenshot({ path: join(artifacts, "phone.png"), fullPage: true });
  report.phases.phone = { ...phone, log };
  await close();
}

process.stdout.write(JSON.stringify(report));
