// End-to-end tests of muster's web status page in a real headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core; no browser is ever downloaded).
//
// Started by tests/tests/ui.rs, which runs the agents and passes them in as JSON:
//   node ui_suite.js cluster '{"a":"IP:PORT","b":"IP:PORT","nodeA":..,"nodeB":..,"pidB":N,"token":"..","shots":"DIR"}'
//   node ui_suite.js load    '{"a":"IP:PORT","services":1000,"shots":"DIR"}'
//   node ui_suite.js protect '{"a":"IP:PORT","pids":[N,..],"shots":"DIR"}'
// Each step prints what it checked and, where a delay matters, how long it took (timings
// are printed, never asserted: the machine is shared). Exits non-zero on the first failure,
// after saving a screenshot of the page as failure-<mode>.png in DIR.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [mode, json] = process.argv.slice(2);
const cfg = JSON.parse(json || '{}');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

function log(message) {
  process.stdout.write(`[ui ${mode}] ${message}\n`);
}

// A write to an agent's API, with the write token when the agents have one.
async function api(addr, method, p, body) {
  const headers = {};
  if (cfg.token) headers['X-Consul-Token'] = cfg.token;
  const r = await fetch(`http://${addr}${p}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
  return text;
}

// Node loads its HTTP client on the first fetch (some 100 ms): do that before anything timed.
async function warmUp() {
  await (await fetch(`http://${cfg.a}/v1/agent/self`)).text();
}

async function launch() {
  await warmUp();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'muster-ui-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

// A page that records every dialog, page error, CSP violation and full load.
async function watchedPage(context) {
  const page = context.pages()[0] || await context.newPage();
  const seen = { dialogs: [], errors: [], loads: 0 };
  page.on('dialog', (d) => { seen.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => seen.errors.push(e.message));
  page.on('load', () => { seen.loads += 1; });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation',
      (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  return { page, seen };
}

async function shoot(page, name) {
  const file = path.join(cfg.shots, name);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

const rowOf = (page, service) => page.locator(`tr[data-service="${service}"]`);

// Delays are measured in the page: `arm` installs an observer that notes the wall-clock
// time at which `selector` first matches (or, with `gone`, stops matching); `seenAfter`
// waits for it and returns how long after `t0` (Date.now() here, before the action) that
// was. Browser and test run on the same machine, so their wall clocks agree.
async function arm(page, selector, gone = false) {
  await page.evaluate(([sel, whenGone]) => {
    window.__when = null;
    const check = () => {
      if (window.__when === null && (document.querySelector(sel) === null) === whenGone) {
        window.__when = performance.timeOrigin + performance.now();
      }
    };
    window.__observer = new MutationObserver(check);
    window.__observer.observe(document.documentElement, { subtree: true, childList: true, attributes: true });
    check();
  }, [selector, gone]);
}

async function seenAfter(page, t0, timeout = 15000) {
  await page.waitForFunction(() => window.__when !== null, null, { timeout });
  const when = await page.evaluate(() => { window.__observer.disconnect(); return window.__when; });
  return Math.round(when - t0);
}

// Waits until a service row's health reads all of `wants` (e.g. ['1 passing', '1 critical']).
async function waitHealth(page, service, wants, timeout = 15000) {
  await page.waitForFunction(([name, ws]) => {
    const cell = document.querySelector(`tr[data-service="${name}"] td.health`);
    return cell !== null && ws.every((w) => cell.textContent.includes(w));
  }, [service, wants], { timeout });
}

// No part of the page is wider than the window (usable on a phone).
async function fitsWidth(page, what) {
  const { scroll, inner } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
  assert(scroll <= inner + 1, `${what}: page is ${scroll}px wide in a ${inner}px window`);
}

async function cluster() {
  const { context, close } = await launch();
  try {
    const { page, seen } = await watchedPage(context);

    // GET / is sent on to /ui/.
    await page.goto(`http://${cfg.a}/`);
    assert(new URL(page.url()).pathname === '/ui/', `/ redirects to /ui/ (got ${page.url()})`);
    await page.locator('tr[data-service]').first().waitFor();
    log('GET / redirected to /ui/ and the services page rendered');

    // The services page lists both agents' services with the right counts.
    await waitHealth(page, 'web', ['2 passing']);
    assert((await rowOf(page, 'web').locator('td.num').first().innerText()).trim() === '2', 'web: 2 instances');
    await waitHealth(page, 'api', ['1 passing']);
    await waitHealth(page, 'db', ['1 passing']);
    assert(await page.locator('tr[data-service]').count() === 3, 'three services listed');
    assert((await rowOf(page, 'web').innerText()).includes('v1'), 'tags shown');
    log('services page: web 2 passing (2 instances on 2 nodes), api 1 passing, db 1 passing');
    await shoot(page, 'ui-services.png');

    // The filter box narrows the list as one types; tags match too.
    await page.fill('input.filter', 'DB');
    assert(await rowOf(page, 'web').isHidden() && await rowOf(page, 'db').isVisible(), 'filter "DB" shows db only');
    await page.fill('input.filter', 'canary');
    assert(await rowOf(page, 'api').isVisible() && await rowOf(page, 'db').isHidden(), 'filter by tag');
    await page.fill('input.filter', '');
    log('filter box: by name (case-insensitive) and by tag');

    // One service: every instance with node, address:port, tags, meta, weights, checks.
    await page.evaluate(() => { window.__sameDocument = true; });
    const loadsBefore = seen.loads;
    await rowOf(page, 'web').locator('a').click();
    const cardB = page.locator(`section.card[data-node="${cfg.nodeB}"][data-id="web-b"]`);
    await cardB.waitFor();
    assert(await page.locator('section.card').count() === 2, 'two web instances');
    const text = await cardB.innerText();
    for (const want of [cfg.nodeB, `${cfg.b.split(':')[0]}:8081`, 'v1', 'zone', 'eu-1', 'passing 5 · warning 2', 'web-b-ttl', 'serfHealth']) {
      assert(text.includes(want), `instance card shows ${JSON.stringify(want)}:\n${text}`);
    }
    assert(await cardB.getAttribute('data-health') === 'passing', 'web-b passing to start with');
    log('service page: both instances with node, address:port, tags, meta, weights and checks');

    // A TTL check failed through the API turns the instance critical on the open page.
    await arm(page, `section.card[data-node="${cfg.nodeB}"][data-id="web-b"][data-health="critical"]`);
    let t0 = Date.now();
    await api(cfg.b, 'PUT', '/v1/agent/check/fail/web-b-ttl?note=' + encodeURIComponent('connection refused on :8081'));
    log(`failed TTL check shown critical ${await seenAfter(page, t0)} ms after the API call (a write on the other agent, gossip, then the page's blocking read)`);
    const check = cardB.locator('tr[data-check="web-b-ttl"]');
    assert(await check.getAttribute('data-status') === 'critical', 'check row critical');
    const checkText = await check.innerText();
    assert(checkText.includes('critical') && checkText.includes('connection refused on :8081'), `check row shows status and output: ${checkText}`);
    assert(/\d+ s ago/.test(checkText), `check row shows when it changed: ${checkText}`);
    assert(seen.loads === loadsBefore && await page.evaluate(() => window.__sameDocument === true), 'no full reload');
    await page.waitForTimeout(1500); // let "changed … ago" tick once, for the screenshot
    await shoot(page, 'ui-service-failing.png');

    // Back on the services page, the counts follow.
    await page.locator('a', { hasText: '← Services' }).click();
    await waitHealth(page, 'web', ['1 passing', '1 critical']);
    log('services page: web now 1 passing, 1 critical');

    // A deregistered service disappears from the open page.
    await arm(page, 'tr[data-service="api"]', true);
    t0 = Date.now();
    await api(cfg.a, 'PUT', '/v1/agent/service/deregister/api-1');
    log(`deregistered service gone from the page ${await seenAfter(page, t0)} ms after the API call`);

    // Catalog values are text: a meta of <script>alert(1)</script> and a check output of
    // <img onerror=…> show as those characters and run nothing.
    await rowOf(page, 'db').locator('a').click();
    const db = page.locator('section.card[data-id="db-1"]');
    await db.waitFor();
    const metaValue = await db.locator('dl.meta dd').first().textContent();
    assert(metaValue === '<script>alert(1)</script>', `meta shown as text: ${metaValue}`);
    const output = await db.locator('tr[data-check="db-ttl"] pre.output').textContent();
    assert(output === '<img src=x onerror="window.__pwned=1">', `output shown as text: ${output}`);
    const injected = await page.evaluate(() => ({
      pwned: window.__pwned,
      scripts: document.querySelectorAll('main script').length,
      imgs: document.querySelectorAll('main img').length,
      csp: window.__csp,
    }));
    assert(injected.pwned === undefined && injected.scripts === 0 && injected.imgs === 0, `nothing injected: ${JSON.stringify(injected)}`);
    assert(injected.csp.length === 0, `no CSP violation: ${injected.csp}`);
    assert(seen.dialogs.length === 0, `no dialog opened: ${seen.dialogs}`);
    log('<script> meta and <img onerror> output rendered as text; no dialog, no script ran');

    // Phone width: nothing wider than the window.
    await page.setViewportSize({ width: 390, height: 844 });
    await fitsWidth(page, 'service page at 390px');
    await shoot(page, 'ui-phone.png');
    await page.goto(`http://${cfg.a}/ui/#/services`);
    await rowOf(page, 'web').waitFor();
    await fitsWidth(page, 'services page at 390px');
    await page.setViewportSize({ width: 1280, height: 800 });
    log('phone width (390px): services and service pages fit');

    // The nodes page shows a kill -9'd agent as failed, once SWIM declares it.
    await page.goto(`http://${cfg.a}/ui/#/nodes`);
    await page.locator(`tr[data-node="${cfg.nodeB}"][data-status="alive"]`).waitFor();
    const rowA = await page.locator(`tr[data-node="${cfg.nodeA}"]`).innerText();
    assert(rowA.includes('alive') && rowA.includes(cfg.a.split(':')[0]) && rowA.includes('rack') && rowA.includes('r1'), `node row: ${rowA}`);
    await arm(page, `tr[data-node="${cfg.nodeB}"][data-status="failed"]`);
    t0 = Date.now();
    process.kill(cfg.pidB, 'SIGKILL');
    const failedAfter = await seenAfter(page, t0, 60000);
    const rowB = await page.locator(`tr[data-node="${cfg.nodeB}"]`).innerText();
    assert(rowB.includes('failed') && /ago/.test(rowB), `failed row: ${rowB}`);
    log(`killed agent shown failed on the nodes page ${failedAfter} ms after kill -9 (SWIM detection included)`);
    await page.setViewportSize({ width: 390, height: 844 });
    await fitsWidth(page, 'nodes page at 390px');

    assert(seen.errors.length === 0, `no page errors: ${seen.errors}`);
    assert(seen.dialogs.length === 0, `no dialogs: ${seen.dialogs}`);
    log('ok');
  } catch (e) {
    await failure(context, e);
  } finally {
    await close();
  }
}

async function load() {
  const { context, close } = await launch();
  try {
    const { page, seen } = await watchedPage(context);
    const t0 = performance.now();
    await page.goto(`http://${cfg.a}/ui/`);
    await page.waitForFunction((n) => document.querySelectorAll('tr[data-service]').length === n,
      cfg.services, { timeout: 30000, polling: 'raf' });
    const wall = Math.round(performance.now() - t0);
    const timing = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const api = performance.getEntriesByType('resource').find((r) => r.name.includes('/v1/internal/ui/services'));
      return {
        rendered: Math.round(window.musterRendered.ms),
        domContentLoaded: Math.round(nav.domContentLoadedEventEnd),
        apiMs: api ? Math.round(api.duration) : null,
        apiBytes: api ? api.transferSize : null,
      };
    });
    log(`${cfg.services} services: first render at ${timing.rendered} ms after navigation start ` +
      `(DOMContentLoaded ${timing.domContentLoaded} ms; services read ${timing.apiMs} ms, ${timing.apiBytes} bytes); ` +
      `${wall} ms from goto() to ${cfg.services} rows, as seen by the test`);
    const f0 = performance.now();
    await page.fill('input.filter', 'svc-0999');
    const visible = await page.locator('tr[data-service]:visible').count();
    assert(visible === 1, `filter leaves one row (got ${visible})`);
    log(`filter over ${cfg.services} rows: ${Math.round(performance.now() - f0)} ms including the test's round trips`);
    await page.fill('input.filter', '');
    // A change of one service re-renders one row, not the list.
    await page.evaluate(() => { window.__firstRow = document.querySelector('tr[data-service="svc-0001"]'); });
    await arm(page, 'tr[data-service="svc-0500"] .pill.critical');
    const u0 = Date.now();
    await api(cfg.a, 'PUT', '/v1/agent/check/fail/ttl-0500');
    const shownAfter = await seenAfter(page, u0);
    const kept = await page.evaluate(() => window.__firstRow === document.querySelector('tr[data-service="svc-0001"]'));
    assert(kept, 'unchanged rows are kept, not rebuilt');
    log(`one check failed among ${cfg.services} services: shown ${shownAfter} ms after the API call; other rows untouched`);
    assert(seen.errors.length === 0, `no page errors: ${seen.errors}`);
    log('ok');
  } catch (e) {
    await failure(context, e);
  } finally {
    await close();
  }
}

async function protect() {
  const { context, close } = await launch();
  try {
    const { page } = await watchedPage(context);
    await page.goto(`http://${cfg.a}/ui/#/service/web`);
    await page.locator('section.card').nth(cfg.pids.length - 1).waitFor();
    assert(await page.locator('#protect').isHidden(), 'no banner while the cluster is whole');
    await arm(page, '#protect:not([hidden])');
    const t0 = Date.now();
    for (const pid of cfg.pids) process.kill(pid, 'SIGKILL');
    const bannerAfter = await seenAfter(page, t0, 60000);
    const banner = await page.locator('#protect').innerText();
    assert(banner.includes('Protect mode'), `banner: ${banner}`);
    await page.locator('section.card .pill.stale').first().waitFor({ timeout: 15000 });
    const stale = await page.locator('section.card .pill.stale').count();
    log(`protect-mode banner shown ${bannerAfter} ms after ${cfg.pids.length} peers were killed; ${stale} instances marked stale`);
    await page.goto(`http://${cfg.a}/ui/#/services`);
    await page.locator('#protect').waitFor({ state: 'visible', timeout: 15000 });
    await page.locator('tr[data-service="web"] .pill.stale').waitFor({ timeout: 15000 });
    log('services page: banner and stale count shown');
    log('ok');
  } catch (e) {
    await failure(context, e);
  } finally {
    await close();
  }
}

async function failure(context, e) {
  const page = context.pages()[0];
  if (page) {
    await page.screenshot({ path: path.join(cfg.shots, `failure-${mode}.png`), fullPage: true }).catch(() => {});
    const body = await page.locator('body').innerText().catch(() => '');
    process.stderr.write(`page text at failure:\n${body.slice(0, 4000)}\n`);
  }
  process.stderr.write(`${e.stack || e}\n`);
  process.exitCode = 1;
}

const modes = { cluster, load, protect };
if (!modes[mode]) {
  process.stderr.write(`usage: node ui_suite.js (${Object.keys(modes).join('|')}) JSON\n`);
  process.exit(2);
}
modes[mode]().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
