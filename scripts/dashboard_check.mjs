// The dashboard in a real headless Chromium (Debian's), driven by playwright-core: login,
// figures following traffic within seconds, no request to another origin, actions through the
// admin API, CSRF refused without its token, screenshots of every view (laptop and phone).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, token, shots, mock] = process.argv.slice(2);
const origin = new URL(base).origin;
mkdirSync(shots, { recursive: true });
let failed = 0;
let passed = 0;
const check = (ok, what) => {
  if (ok) passed++;
  else {
    failed++;
    console.error("FAIL: " + what);
  }
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
const page = await context.newPage();
const foreign = [];
const problems = [];
page.on("request", (r) => {
  if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) foreign.push(r.url());
});
page.on("console", (m) => {
  // The 401s and the 403 this check provokes on purpose are logged as failed loads.
  if (m.type() === "error" && !/^Failed to load resource: .* (401|403)/.test(m.text())) problems.push(m.text());
});
page.on("pageerror", (e) => problems.push(String(e)));

// Wrong token: refused on the page.
await page.goto(base + "/dashboard");
await page.fill("#token", "not-the-token");
await page.click("#login-form button[type=submit]");
await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("401"));
check(await page.isVisible("#login"), "a wrong token does not log in");

await page.fill("#token", token);
await page.click("#login-form button[type=submit]");
await page.waitForSelector("#nav:not([hidden])");
await page.waitForFunction(() => document.getElementById("v-requests_total").textContent !== "–");
const cookies = await context.cookies();
const session = cookies.find((c) => c.name === "pylon_session");
check(session && session.httpOnly && session.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");

// Traffic → the number on screen, timed.
const total = async () => Number((await page.textContent("#v-requests_total")).replace(/,/g, ""));
const before = await total();
const sent = Date.now();
await Promise.all(
  Array.from({ length: 20 }, () =>
    fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "chat", messages: [{ role: "user", content: "hi" }] }),
    }),
  ),
);
await page.waitForFunction((b) => Number(document.getElementById("v-requests_total").textContent.replace(/,/g, "")) >= b + 20, before, { timeout: 10000 });
const delay = Date.now() - sent;
console.log("traffic to number on screen: " + delay + " ms");
check(delay <= 5000, "numbers follow traffic within 5 s (" + delay + " ms)");
await page.waitForFunction(() => document.querySelectorAll("#models tbody tr").length > 0);
await page.screenshot({ path: shots + "/overview.png", fullPage: true });

// CSRF: a change without the token is refused; with it, accepted.
const refused = await page.evaluate(async () => (await fetch("/admin/v1/rollouts/chat-v2/pause", { method: "POST" })).status);
check(refused === 403, "a change without the CSRF token is refused (" + refused + ")");
const read = await page.evaluate(async () => (await fetch("/admin/v1/rollouts")).status);
check(read === 200, "reads with the session cookie (" + read + ")");

// Actions: pause the rollout, disable a flag, from their buttons.
await page.click("nav button[data-view=delivery]");
await page.waitForFunction(() => document.querySelectorAll("#arms tbody tr").length === 2, null, { timeout: 10000 });
check(true, "a rollout's arms side by side");
await page.click("[data-testid='rollout-chat-v2-pause']");
await page.waitForFunction(() => [...document.querySelectorAll("#rollouts td")].some((td) => td.textContent === "paused"), null, { timeout: 10000 });
check(true, "pause from the dashboard");
await page.click("[data-testid='flag-new-checkout']");
await page.waitForFunction(() => [...document.querySelectorAll("#flags td")].some((td) => td.textContent === "DISABLED"), null, { timeout: 10000 });
check(true, "disable a flag from the dashboard");
// A two-way split set to 80 % from the page, typed slowly across pushes (focus and text stay).
await page.click("[data-testid='flag-pct-input-coin']");
await page.keyboard.press("Control+A");
await page.keyboard.type("8");
await page.waitForTimeout(1500);
await page.keyboard.type("0");
check((await page.inputValue("[data-testid='flag-pct-input-coin']")) === "80", "typing survives the pushes");
await page.click("[data-testid='flag-pct-coin']");
await page.waitForFunction(() => [...document.querySelectorAll("#flags td")].some((td) => td.textContent === "heads 80 % / tails 20 %"), null, { timeout: 10000 });
check(true, "set a flag's percentage from the dashboard");
await page.screenshot({ path: shots + "/delivery.png", fullPage: true });

// The provider fails: the alert fires on screen, and is acknowledged from it.
const behave = (b) => fetch(mock + "/mock/behaviour", { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(b) });
await behave({ error_status: 500, error_rate: 1.0 });
await page.click("nav button[data-view=alerts]");
const failing = setInterval(() => {
  fetch(base + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "chat", messages: [{ role: "user", content: "hi" }] }),
  }).catch(() => {});
}, 50);
await page.waitForSelector("[data-testid='ack-chat-errors']", { timeout: 15000 });
await page.click("[data-testid='ack-chat-errors']");
await page.waitForFunction(() => [...document.querySelectorAll("#alert-list td")].some((td) => td.textContent === "by admin"), null, { timeout: 10000 });
check(true, "acknowledge a firing alert from the dashboard");
clearInterval(failing);
await behave({});
await page.waitForFunction(() => document.querySelectorAll("#alert-history li").length > 0, null, { timeout: 10000 });
await page.screenshot({ path: shots + "/alerts.png", fullPage: true });
await page.click("nav button[data-view=executive]");
await page.waitForFunction(() => document.getElementById("x-spent").textContent !== "–", null, { timeout: 15000 });
await page.waitForFunction(() => [...document.querySelectorAll("#slos td")].some((td) => td.textContent.endsWith("%")), null, { timeout: 15000 });
check(true, "an SLO's error budget left");
await page.screenshot({ path: shots + "/executive.png", fullPage: true });
await page.click("nav button[data-view=requests]");
await page.waitForFunction(() => document.querySelectorAll("#request-log tbody tr").length > 0, null, { timeout: 15000 });
await page.screenshot({ path: shots + "/requests.png", fullPage: true });

// Keyboard: the views are reachable by Tab and Enter.
await page.focus("nav button[data-view=overview]");
await page.keyboard.press("Enter");
check(!(await page.isHidden("#overview")), "keyboard navigation");

const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
await phone.addCookies(cookies);
const small = await phone.newPage();
await small.goto(base + "/dashboard");
await small.waitForFunction(() => document.getElementById("v-requests_total").textContent !== "–");
await small.screenshot({ path: shots + "/phone.png", fullPage: true });

check(foreign.length === 0, "no request leaves for another origin: " + foreign.join(", "));
check(problems.length === 0, "no console errors (CSP violations included): " + problems.join(" | "));
const bytes = await page.evaluate(() =>
  performance.getEntriesByType("resource").reduce((n, e) => n + (e.transferSize || 0), 0) +
  (performance.getEntriesByType("navigation")[0]?.transferSize || 0),
);
console.log("page weight: " + bytes + " bytes transferred");
await browser.close();
console.log("dashboard: " + passed + " checks passed, " + failed + " failed");
process.exit(failed ? 1 : 0);
