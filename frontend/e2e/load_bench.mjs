// Loading figures of the dashboard in headless Chromium, each from a cold browser context (no cache),
// printed as one JSON line for bench/frontend_load.py:
//   first_js_gz_bytes   JavaScript the first page (sign-in) loads, gzipped as the server sends it
//   first_render_ms     navigation start -> the sign-in form on screen
//   jobs_list_ms        signed in: navigation -> the first page of the jobs list on screen
//   job_interactive_ms  signed in: navigation -> a job page with its loss chart drawn and its actions enabled
//   baseline_ms         navigation -> GET /api/health loaded: this browser's and server's floor in the same run
//
//   BASE_URL=... TOKEN=... USERNAME=... JOB=... ROUNDS=3 node e2e/load_bench.mjs
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const BASE = process.env.BASE_URL;
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const session = JSON.stringify({ token: process.env.TOKEN, username: process.env.USERNAME, expiresAt: Date.now() + 3_600_000 });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"] });

async function cold(signedIn, fn) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, baseURL: BASE });
  if (signedIn) await context.addInitScript((s) => sessionStorage.setItem("llmtuner.session", s), session);
  const page = await context.newPage();
  try {
    return await fn(page);
  } finally {
    await context.close();
  }
}

// Milliseconds from the navigation's start (the page's own clock) until `ready` holds.
async function timed(page, path, ready) {
  await page.goto(path, { waitUntil: "commit" });
  await ready(page);
  if (process.env.TRACE) {
    console.error(path, JSON.stringify(await page.evaluate(() => performance.getEntriesByType("resource")
      .map((e) => `${e.name.replace(location.origin, "")} ${e.startTime.toFixed(0)}-${e.responseEnd.toFixed(0)}`))));
  }
  return page.evaluate(() => performance.now());
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const out = { first_js_gz_bytes: 0, first_js_files: 0, baseline_ms: [], first_render_ms: [], jobs_list_ms: [],
  job_interactive_ms: [] };

for (let i = 0; i < ROUNDS; i++) {
  out.baseline_ms.push(await cold(false, (page) => timed(page, "/api/health", (p) => p.waitForLoadState("load"))));
  out.first_render_ms.push(await cold(false, async (page) => {
    const js = [];
    page.on("response", (r) => r.url().endsWith(".js") && js.push(r));
    const ms = await timed(page, "/", (p) => p.getByRole("button", { name: "Sign in" }).waitFor());
    await page.waitForLoadState("networkidle");
    const bodies = await Promise.all(js.map((r) => r.body()));
    out.first_js_files = bodies.length;
    out.first_js_gz_bytes = bodies.reduce((n, b) => n + gzipSync(b, { level: 9 }).length, 0);
    return ms;
  }));
  out.jobs_list_ms.push(await cold(true, (page) => timed(page, "/jobs",
    (p) => p.locator("tbody tr").first().waitFor())));
  out.job_interactive_ms.push(await cold(true, (page) => timed(page, `/jobs/${process.env.JOB}`, async (p) => {
    await p.locator("figure[aria-label=Loss] canvas").waitFor();
    await p.getByRole("button", { name: "Deploy…" }).and(p.locator(":enabled")).waitFor();
  })));
}
await browser.close();
for (const k of ["baseline_ms", "first_render_ms", "jobs_list_ms", "job_interactive_ms"]) out[k] = { median: median(out[k]), all: out[k] };
console.log(JSON.stringify(out));
