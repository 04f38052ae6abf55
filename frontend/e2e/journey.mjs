// The whole journey in a real browser (Debian's Chromium driven by playwright-core) against a
// running server with its worker: sign up -> a broken dataset reported line by line -> a good one
// dropped in -> a job started with a preset -> the loss chart draws and the job completes ->
// registered -> evaluated against its base -> deployed -> a chat in the playground -> cost in usage
// -> a bad token sends you back to sign in.
// A screenshot of each page lands in ARTIFACTS. Exit status 0 when every step passed.
//
//   BASE_URL=http://127.0.0.1:8000 node e2e/journey.mjs
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.BASE_URL ?? "http://127.0.0.1:8000";
const OUT = process.env.ARTIFACTS ?? new URL("./artifacts", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const TRAIN_TIMEOUT = Number(process.env.TRAIN_TIMEOUT_MS ?? 300_000);
mkdirSync(OUT, { recursive: true });

const QA = [["How do I reset my password?", "Click Forgot Password on the login page."],
  ["What are your business hours?", "Monday to Friday, 9 AM to 6 PM."],
  ["How do I cancel my subscription?", "Open Account Settings and choose Cancel."]];
const good = Array.from({ length: 30 }, (_, i) => JSON.stringify({ prompt: QA[i % 3][0], response: QA[i % 3][1] })).join("\n");
const BROKEN_LINE = 3;
const broken = [JSON.stringify({ prompt: "Hi", response: "Hello" }), JSON.stringify({ prompt: "Bye", response: "Goodbye" }),
  '{"prompt": "oops", "response": ', JSON.stringify({ prompt: "Thanks", response: "You are welcome" })].join("\n");

const t0 = Date.now();
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"] });
const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, baseURL: BASE });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => m.type() === "error" && !/status of (401|404|409|422)/.test(m.text()) && problems.push(`console: ${m.text()}`));
const shot = async (name, full = true) => {
  await page.screenshot({ path: join(OUT, `${name}.png`), fullPage: full });
  log(`screenshot ${name}.png`);
};

const nav = (name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true });

async function step(name, fn) {
  log(name);
  await fn();
}

try {
  const user = `e2e${Date.now().toString(36)}`;
  await step("sign up", async () => {
    await page.goto("/");
    await page.getByRole("heading", { name: "LLM Tuner" }).waitFor();
    await shot("01-sign-in");
    await page.getByRole("tab", { name: "Create account" }).click();
    await page.getByLabel("Username").fill(user);
    await page.getByLabel("Email").fill(`${user}@example.com`);
    await page.getByLabel("Password").fill("a-long-password-123");
    await page.getByRole("button", { name: "Create account" }).last().click();
    await page.getByRole("navigation", { name: "Main" }).waitFor();
  });

  await step("a dataset with a broken line is reported with its line number", async () => {
    await nav("Datasets").click();
    await page.getByText("No datasets yet").waitFor();
    await page.setInputFiles("[data-testid=dataset-file]", { name: "broken.jsonl", mimeType: "application/jsonl", buffer: Buffer.from(broken) });
    await page.waitForURL(/\/datasets\/[^/]+$/);
    const row = page.locator(".issues tbody tr").first();
    await row.waitFor();
    const cells = await row.locator("td").allInnerTexts();
    if (cells[0].trim() !== String(BROKEN_LINE)) throw new Error(`first issue on line ${cells[0]}, expected ${BROKEN_LINE}: ${cells.join(" | ")}`);
    log(`  reported: ${cells.join(" | ")}`);
    await shot("02-dataset-report");
  });

  await step("a good dataset dropped on the drop zone", async () => {
    await nav("Datasets").click();
    const drop = page.locator(".drop");
    const transfer = await page.evaluateHandle((text) => {
      const dt = new DataTransfer();
      dt.items.add(new File([text], "support.jsonl", { type: "application/jsonl" }));
      return dt;
    }, good);
    await drop.dispatchEvent("drop", { dataTransfer: transfer });
    await page.waitForURL(/\/datasets\/[^/]+$/);
    await page.getByText("No problems found.").waitFor();
    await page.getByText("Mean tokens").waitFor();
    await shot("03-dataset-valid");
    await nav("Datasets").click();
    await page.getByRole("link", { name: "support.jsonl" }).waitFor();
    await shot("04-datasets");
    await page.getByRole("link", { name: "support.jsonl" }).click();
  });

  let jobUrl = "";
  await step("start a job with the quick preset after seeing its cost", async () => {
    await page.getByRole("link", { name: "Fine-tune on it" }).click();
    await page.getByRole("radio", { name: /Quick check/ }).click();
    await page.getByLabel("Base model").selectOption("llmtuner/tiny-llama");
    await page.getByText("Estimated cost").waitFor();
    // A value only the API refuses: its message shows beside the field it names.
    await page.getByLabel("Job name (optional)").fill("not a valid name!");
    await page.getByRole("button", { name: "Start fine-tuning" }).click();
    const nameHelp = page.locator(".field", { has: page.getByLabel("Job name (optional)") }).locator(".field-error");
    await nameHelp.waitFor();
    log(`  the API's error beside the field: ${await nameHelp.innerText()}`);
    await page.getByLabel("Job name (optional)").fill("");
    await page.getByLabel("learning_rate", { exact: true }).fill("5");
    await page.getByText("must be > 0, ≤ 1").waitFor(); // checked as you type, from the schema's bounds
    await page.getByRole("radio", { name: /Quick check/ }).click();
    // EPOCHS=40: a model that has learnt its answers, for screenshots worth showing.
    if (process.env.EPOCHS) await page.getByLabel("epochs", { exact: true }).fill(process.env.EPOCHS);
    await shot("05-new-job");
    await page.getByRole("button", { name: "Start fine-tuning" }).click();
    await page.waitForURL(/\/jobs\/llm-tune-/);
    jobUrl = page.url();
  });

  await step("the loss chart draws while it trains and the job completes", async () => {
    await page.waitForFunction(() => Number(document.querySelector("figure[aria-label=Loss] [data-points]")?.getAttribute("data-points") ?? 0) >= 2
      && document.querySelector("figure[aria-label=Loss] canvas") !== null, null, { timeout: TRAIN_TIMEOUT });
    log("  loss chart has points");
    await page.locator(".chip", { hasText: "Completed" }).first().waitFor({ timeout: TRAIN_TIMEOUT });
    await page.getByRole("button", { name: "Deploy…" }).and(page.locator(":enabled")).waitFor();
    await page.waitForTimeout(500); // the last points and events after the status change
    await shot("06-job");
    await shot("readme-job", false);
    await page.getByRole("link", { name: "← Jobs" }).click();
    await page.locator(".chip", { hasText: "Completed" }).first().waitFor();
    await shot("07-jobs");
  });

  await step("register the model", async () => {
    await page.goto(jobUrl);
    await page.getByRole("button", { name: "Register…" }).click();
    await page.getByRole("form", { name: "Register" }).getByRole("button", { name: "Register" }).click();
    await page.waitForURL(/\/models$/);
    await page.getByText("v1").waitFor();
    await shot("08-models");
  });

  await step("evaluate against the base model, side by side", async () => {
    await page.goto(jobUrl);
    await page.getByRole("button", { name: "Evaluate vs base" }).click();
    await page.waitForURL(/\/evaluations\/[^/]+$/);
    await page.getByRole("heading", { name: "Tuned vs base" }).waitFor({ timeout: TRAIN_TIMEOUT });
    await page.locator("h1 .chip", { hasText: "Completed" }).waitFor({ timeout: TRAIN_TIMEOUT });
    await shot("09-evaluation");
  });

  let endpoint = "";
  await step("deploy and chat in the playground", async () => {
    await page.goto(jobUrl);
    await page.getByRole("button", { name: "Deploy…" }).click();
    await page.getByRole("form", { name: "Deploy" }).getByRole("button", { name: "Deploy" }).click();
    await page.waitForURL(/\/endpoints\/.+-endpoint$/);
    endpoint = decodeURIComponent(page.url().split("/").pop());
    await page.locator("h1 .chip", { hasText: "InService" }).waitFor({ timeout: TRAIN_TIMEOUT });
    await page.getByLabel("Message").fill(QA[0][0]);
    await page.getByLabel("Message").press("Enter");
    const answer = page.locator(".turn-assistant p").last();
    await page.waitForFunction(() => {
      const p = [...document.querySelectorAll(".turn-assistant p")].pop();
      return p && p.textContent && p.textContent !== "…";
    }, null, { timeout: 120_000 });
    await page.getByRole("button", { name: "Send" }).waitFor();
    log(`  answer: ${JSON.stringify((await answer.innerText()).slice(0, 80))} (${await page.locator(".chat-mode").innerText()})`);
    await shot("10-playground");
    await shot("readme-playground", false);
    await nav("Endpoints").click();
    await page.getByRole("link", { name: endpoint }).waitFor();
    await shot("11-endpoints");
  });

  await step("cost shows in usage", async () => {
    await page.waitForTimeout(1500); // let the endpoint accrue a visible cent fraction
    await nav("Usage").click();
    const row = page.locator("tr", { has: page.getByRole("link", { name: endpoint }) });
    await row.waitFor();
    const accrued = (await row.locator("td").nth(4).innerText()).trim();
    if (!/^\$\d/.test(accrued) || Number(accrued.replace(/[$,]/g, "")) <= 0) throw new Error(`endpoint cost ${accrued}`);
    log(`  endpoint accrued ${accrued}`);
    // The evaluation run earlier is listed with its cost too.
    const evals = page.locator("section.card", { has: page.getByRole("heading", { name: "Evaluations", exact: true }) });
    await evals.locator("a[href^='/evaluations/']").first().waitFor();
    await page.locator("figure[aria-label='USD per day'] canvas").waitFor();
    await shot("12-usage");
    await nav("Evaluations").click();
    // The usage page, until it is replaced, also lists the job and the evaluation as Completed.
    await page.getByRole("heading", { level: 1, name: "Evaluations" }).waitFor();
    await page.locator("tbody .chip", { hasText: "Completed" }).waitFor();
    await shot("13-evaluations");
  });

  await step("phone width", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(jobUrl);
    await page.locator("figure[aria-label=Loss] canvas").waitFor();
    await shot("14-phone-job");
    await page.goto(`/endpoints/${endpoint}`);
    await page.getByLabel("Message").waitFor();
    await shot("15-phone-playground", false);
    await page.setViewportSize({ width: 1280, height: 860 });
  });

  await step("an expired or bad token sends you back to sign in", async () => {
    await page.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem("llmtuner.session"));
      sessionStorage.setItem("llmtuner.session", JSON.stringify({ ...s, token: "not-a-valid-token" }));
    });
    await page.goto("/jobs");
    await page.getByText("Your session expired").waitFor();
    await shot("16-session-expired");
  });

  if (problems.length) throw new Error(`the page reported errors:\n${problems.join("\n")}`);
  log(`journey passed; screenshots in ${OUT}`);
} catch (e) {
  await page.screenshot({ path: join(OUT, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`FAILED at ${page.url()}: ${e.stack ?? e}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
