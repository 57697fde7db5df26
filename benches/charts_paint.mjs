// Times the first paint of the charts page of a running tallyd in headless Chromium (Debian's,
// through playwright-core): benches/charts.rs starts the daemon with its metrics, runs this and
// makes the table. One warm-up load, then RUNS loads, each in a fresh browser context (empty
// cache, no session); per load, as JSON on stdout:
// - fcp: first contentful paint (the paint timeline), ms since navigation;
// - drawn: the last chart canvas drawn with its data (the cards' data-drawn), ms since navigation,
//   read once every card is ready and nothing has been drawn for QUIET ms;
// - firstDrawn: the last card's first draw; fetched: the last response's end; longTasks: the
//   main thread's tasks over 50 ms, [start, ms];
// - bytes: what the page transferred (the document and every resource, headers included);
// - the slowest requests, to see where the time went.
//
// Environment: TALLYD_URL, TALLYD_TOKEN (a read token, given as ?token=), CHARTS (how many
// charts the page must draw), RUNS (default 10), CHROMIUM (default /usr/bin/chromium).
import { chromium, executablePath, FLAGS, watchErrors } from "../tests/browser/chromium.mjs";

const url = process.env.TALLYD_URL + "/charts?token=" + encodeURIComponent(process.env.TALLYD_TOKEN);
const charts = Number(process.env.CHARTS);
const runs = Number(process.env.RUNS || 10);
const QUIET = 300;
const TIMEOUT = 30000;

const browser = await chromium.launch({ executablePath, headless: true, args: FLAGS, timeout: TIMEOUT });

async function load() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const log = watchErrors(context);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  // Where the time goes: each card's first draw (a later resize redraws it again) and the
  // main thread's long tasks.
  await page.addInitScript(() => {
    window.benchFirstDrawn = new Map();
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.target.dataset.drawn && !window.benchFirstDrawn.has(r.target)) {
          window.benchFirstDrawn.set(r.target, Number(r.target.dataset.drawn));
        }
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-drawn"] });
    window.benchLongTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.benchLongTasks.push([Math.round(e.startTime), Math.round(e.duration)]);
    }).observe({ type: "longtask" });
  });
  await page.goto(url);
  await page.waitForFunction((n) => {
    const cards = [...document.querySelectorAll(".chart")];
    return cards.length === n && cards.every((c) => c.dataset.state === "ready" && c.dataset.drawn);
  }, charts);
  // A late layout (a scroll bar appearing) resizes and redraws charts: wait until it is over.
  const result = await page.evaluate(async (quiet) => {
    const last = () => Math.max(...[...document.querySelectorAll(".chart")].map((c) => Number(c.dataset.drawn)));
    let seen = last();
    for (;;) {
      await new Promise((done) => setTimeout(done, quiet));
      if (last() === seen) break;
      seen = last();
    }
    const nav = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    const fcp = performance.getEntriesByType("paint").find((p) => p.name === "first-contentful-paint");
    return {
      fcp: fcp ? fcp.startTime : null,
      drawn: seen,
      firstDrawn: Math.max(...window.benchFirstDrawn.values()),
      fetched: Math.round(Math.max(...resources.map((r) => r.responseEnd))),
      longTasks: window.benchLongTasks,
      points: [...document.querySelectorAll(".chart")].reduce((n, c) => n + Number(c.dataset.points), 0),
      bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
      requests: resources.length + 1,
      slowest: resources
        .map((r) => ({ path: new URL(r.name).pathname, start: Math.round(r.startTime), ms: Math.round(r.duration), bytes: r.transferSize }))
        .sort((a, b) => b.ms - a.ms)
        .slice(0, 3),
    };
  }, QUIET);
  result.errors = [].concat(log.console, log.pageErrors, log.failedRequests, log.httpErrors);
  await context.close();
  return result;
}

await load();
const loads = [];
for (let i = 0; i < runs; i++) loads.push(await load());
await browser.close();
process.stdout.write(JSON.stringify({ loads }));
