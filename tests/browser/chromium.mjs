// What the scripts that drive Debian's Chromium through playwright-core share
// (tests/browser/charts.mjs, benches/charts_paint.mjs): loading playwright-core from target/node
// (scripts/setup-test-deps), the headless flags, and a log of what went wrong on a page.
import { createRequire } from "node:module";

// NODE_PATH does not reach ESM: PLAYWRIGHT_FROM names target/node/package.json.
const require = createRequire(process.env.PLAYWRIGHT_FROM || import.meta.url);
export const { chromium } = require("playwright-core");

export const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
export const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** A log of console errors and warnings, page errors, failed requests and HTTP errors of every
 *  page of `context`. */
export function watchErrors(context) {
  const log = { console: [], pageErrors: [], failedRequests: [], httpErrors: [] };
  const watch = (page) => {
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") log.console.push(m.type() + ": " + m.text());
    });
    page.on("pageerror", (e) => log.pageErrors.push(String(e)));
    page.on("requestfailed", (r) => log.failedRequests.push(r.url() + " " + (r.failure() || {}).errorText));
    page.on("response", (r) => {
      if (r.status() >= 400) log.httpErrors.push(r.status() + " " + new URL(r.url()).pathname);
    });
  };
  context.on("page", watch);
  for (const page of context.pages()) watch(page);
  return log;
}
