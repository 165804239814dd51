// Browser test of plugd's dashboard: Debian's Chromium, driven by playwright-core, against a
// real plugd started by the Rust test `operator::the_dashboard_works_in_a_real_browser`, which
// passes what it needs in the environment. Every wait is for a condition, with a deadline.
import { chromium } from "playwright-core";
import { createHash } from "node:crypto";
import { readFileSync, mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run this through cargo test -p plugd --test it operator)`);
  return v;
};
const base = env("PLUGD_URL");
const adminToken = env("ADMIN_TOKEN");
const viewerToken = env("VIEWER_TOKEN");
const bundlePath = env("BUNDLE");
const bundleName = env("BUNDLE_PLUGIN");
const shots = env("SCREENSHOTS");
const WAIT = 15000;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

const problems = [];
async function newPage(viewport) {
  const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 900 } });
  const page = await context.newPage();
  // Nothing but plugd itself: no CDN, no font service, nothing external.
  page.on("request", (r) => { if (!r.url().startsWith(base)) problems.push(`external request: ${r.url()}`); });
  // A Content-Security-Policy violation or a script error shows here.
  page.on("console", (m) => { if (m.type() === "error" && !/status of (400|401|403|404|409)/.test(m.text())) problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  return page;
}

async function signIn(page, token) {
  await page.goto(`${base}/ui/`);
  await page.locator("#token").waitFor({ state: "visible", timeout: WAIT });
  // With the keyboard: type the token, press Enter.
  await page.locator("#token").focus();
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
}

async function api(method, path, token) {
  const res = await fetch(`${base}/admin${path}`, { method, headers: { Authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json().catch(() => null) };
}

const stateOf = (page, plugin) => page.locator(`#plugins tr[data-plugin="${plugin}"] td.state [data-state]`);
async function waitState(page, plugin, wanted) {
  await page.waitForFunction(([p, s]) => {
    const b = document.querySelector(`#plugins tr[data-plugin="${p}"] td.state [data-state]`);
    return b && b.dataset.state === s;
  }, [plugin, wanted], { timeout: WAIT });
}

try {
  // ---- a wrong token is refused with a clear message ----
  let page = await newPage();
  await signIn(page, "not-a-token-at-all");
  await page.locator("#signin-error").filter({ hasText: "not valid" }).waitFor({ timeout: WAIT });

  // ---- sign in as admin: the example plugins are ready ----
  await signIn(page, adminToken);
  await waitState(page, "alpha", "ready");
  await waitState(page, "beta", "ready");
  await page.locator('#live.on').waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => location.href.includes("token")), false, "the token is never in the URL");
  await page.screenshot({ path: `${shots}/plugins.png`, fullPage: true });

  // ---- disable from the page, with confirmation; the state changes live ----
  await page.locator('#plugins tr[data-plugin="alpha"] button[data-action="disable"]').click();
  await page.locator("#confirm[open]").waitFor({ timeout: WAIT });
  await page.locator("#confirm-ok").click();
  await waitState(page, "alpha", "disabled");
  await page.locator("#status").filter({ hasText: "now disabled" }).waitFor({ timeout: WAIT });
  // A change made elsewhere (another admin, the CLI) shows up without touching the page.
  const enabled = await api("POST", "/plugins/alpha/enable", adminToken);
  assert.equal(enabled.status, 200, JSON.stringify(enabled.body));
  await waitState(page, "alpha", "ready");

  // ---- install by drag and drop: the sha256 is shown first ----
  const bytes = readFileSync(bundlePath);
  const sha = createHash("sha256").update(bytes).digest("hex");
  const drop = async (name, data) => {
    const dt = await page.evaluateHandle(([n, b64]) => {
      const dt = new DataTransfer();
      const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      dt.items.add(new File([raw], n));
      return dt;
    }, [name, data.toString("base64")]);
    await page.dispatchEvent("#dropzone", "drop", { dataTransfer: dt });
  };
  await drop("bundle.tar.gz", bytes);
  await page.locator("#bundle-sha").filter({ hasText: sha }).waitFor({ timeout: WAIT });
  await page.locator("#bundle-install").click();
  await page.locator("#install-result").filter({ hasText: `Installed ${bundleName}` }).waitFor({ timeout: WAIT });
  await waitState(page, bundleName, "ready");

  // A refused bundle says why.
  await drop("junk.zip", Buffer.from("this is not a bundle"));
  await page.locator("#bundle-install").click();
  await page.locator("#install-result.error").filter({ hasText: "invalid bundle" }).waitFor({ timeout: WAIT });

  // The drop zone works from the keyboard too: Enter opens the file chooser.
  // Focus and key press in one step, so a live refresh in between cannot move the focus.
  const [chooser] = await Promise.all([page.waitForEvent("filechooser", { timeout: WAIT }), page.locator("#dropzone").press("Enter")]);
  assert.ok(chooser, "Enter on the drop zone opens a file chooser");

  // ---- a plugin's page: routes, limits, live logs, audit history ----
  await page.locator('#plugins a[href="#/plugin/alpha"]').click();
  await page.locator("#p-routes li").filter({ hasText: "/plugins/alpha/echo" }).first().waitFor({ timeout: WAIT });
  await page.locator("#p-events tr").filter({ hasText: "disable" }).first().waitFor({ timeout: WAIT });
  // The settings form, rendered from the plugin's schema: a change is saved and reaches the
  // plugin live; a bad value is named beside its field; a secret is never shown.
  await page.locator("#setting-greeting").waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#setting-greeting").inputValue(), "hello");
  await page.locator("#setting-greeting").fill("from the dashboard");
  await page.locator("#setting-api_key").fill("dashboard-secret");
  await page.locator("#p-settings-save").click();
  await page.locator("#p-settings-result").filter({ hasText: "the running instance took them" }).waitFor({ timeout: WAIT });
  const seen = await (await fetch(`${base}/plugins/alpha/settings`)).json();
  assert.equal(seen.greeting, "from the dashboard");
  assert.equal(seen.api_key, "dashboard-secret");
  assert.equal(await page.locator("#setting-api_key").inputValue(), "", "a secret is never shown");
  assert.equal(await page.locator("#setting-api_key").getAttribute("placeholder"), "(set: type to replace)");
  await page.locator("#setting-retries").fill("99");
  await page.locator("#p-settings-save").click();
  await page.locator("#problem-retries").filter({ hasText: "at most 10" }).waitFor({ timeout: WAIT });
  await page.locator('button[data-reset="greeting"]').click();
  await page.locator("#p-settings-result").filter({ hasText: "greeting" }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#setting-greeting").inputValue(), "hello");
  await page.locator("#p-settings").screenshot({ path: `${shots}/settings.png` });
  // A line the plugin writes now appears in the open page (once its log stream is live).
  await page.locator('#p-logs[data-live="1"]').waitFor({ state: "attached", timeout: WAIT });
  const crash = await fetch(`${base}/plugins/alpha/crash`).catch(() => null);
  assert.ok(crash === null || crash.status >= 500, "the crash route fails");
  await page.locator("#p-logs").filter({ hasText: "crashing on purpose" }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: `${shots}/plugin.png`, fullPage: true });

  // ---- workers: each worker's host ----
  await page.locator('nav a[href="#/workers"]').click();
  await page.locator("#workers tbody tr").first().waitFor({ timeout: WAIT });
  const cpus = await page.locator("#workers tbody tr td").nth(3).textContent();
  assert.ok(Number(cpus) >= 1, `CPU count shown: ${cpus}`);
  await page.screenshot({ path: `${shots}/workers.png`, fullPage: true });

  // ---- the audit log ----
  await page.locator('nav a[href="#/events"]').click();
  await page.locator("#events tr").filter({ hasText: "install" }).first().waitFor({ timeout: WAIT });
  await page.screenshot({ path: `${shots}/events.png`, fullPage: true });

  // ---- a viewer sees no write controls ----
  const viewer = await newPage();
  await signIn(viewer, viewerToken);
  await waitState(viewer, "alpha", "ready");
  assert.equal(await viewer.locator("button[data-action]:visible").count(), 0, "no action buttons for a viewer");
  assert.equal(await viewer.locator("#install").isVisible(), false, "no install for a viewer");
  assert.equal((await api("POST", "/plugins/alpha/disable", viewerToken)).status, 403);
  await viewer.locator('#plugins a[href="#/plugin/alpha"]').click();
  await viewer.locator("#setting-greeting").waitFor({ timeout: WAIT });
  assert.equal(await viewer.locator("#setting-greeting").isDisabled(), true, "a viewer cannot edit settings");
  assert.equal(await viewer.locator("#p-settings-save").isVisible(), false, "no save for a viewer");

  // ---- readable on a phone: nothing wider than the screen but the tables' own scrollers ----
  const phone = await newPage({ width: 390, height: 844 });
  await signIn(phone, adminToken);
  await waitState(phone, "alpha", "ready");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone's screen`);
  await phone.screenshot({ path: `${shots}/phone.png`, fullPage: true });

  assert.deepEqual(problems, [], "no external requests, no CSP violations, no script errors");
  console.log("dashboard: all checks passed");
} catch (e) {
  console.error(`dashboard test failed: ${e.stack || e}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
