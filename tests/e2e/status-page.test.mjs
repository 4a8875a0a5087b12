// The status page of the admin listener (GET /) in a real browser: Debian's chromium, headless,
// driven by puppeteer-core, against a running gateway with mock nodes. The page shows nothing but
// the key prompt without a valid admin key, renders every backend the gateway serves (names from
// the config as text, never as HTML), updates when a node goes down, keeps the key for the tab
// only, and fits a laptop and a phone (screenshots of both are saved: the path is printed).
//
// Chromium is required: without it this test fails (make deps installs it).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, adminListener, waitFor,
} from '../lib/harness.mjs';

const KEYS = [
  { name: 'team-alpha', key: 'sk-status-alpha-0123456789abcdef' },
  { name: 'team-beta', key: 'sk-status-beta-0123456789abcdef' },
];
// A backend name is config text: the page must show it as text, not run it.
// (Backend names have no spaces or quotes.)
const EVIL = '<img/src=x/onerror=document.title=1>node-c';

function chromiumPath() {
  const candidates = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser']
    .filter(Boolean);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new Error(`no Chromium at ${candidates.join(', ')}: install Debian's chromium package ` +
      '(make deps) or set CHROMIUM_PATH');
  }
  return found;
}

// Screenshots go to STATUS_PAGE_OUTPUT when set, else to a new temporary directory; kept after
// the run either way (the test prints where).
async function outputDir() {
  const dir = process.env.STATUS_PAGE_OUTPUT
    ? path.resolve(process.env.STATUS_PAGE_OUTPUT)
    : await fsp.mkdtemp(path.join(os.tmpdir(), 'tollgate-status-page-'));
  await fsp.mkdir(dir, { recursive: true });
  return dir;
}

let browser;
after(async () => {
  await browser?.close().catch(() => {});
  await cleanup();
});

describe('the status page in headless Chromium', () => {
  let gw;
  let admin;
  let nodes;
  let out;
  let traffic;
  let stopTraffic = false;

  // A page in a context of its own (its own sessionStorage), recording what would be a
  // problem: CSP violations, uncaught errors, requests that leave the admin listener.
  async function openPage(context, viewport = { width: 1366, height: 900 }) {
    const page = await context.newPage();
    await page.setViewport(viewport);
    const problems = [];
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('request', (req) => {
      if (!req.url().startsWith(admin.url + '/')) problems.push(`request off the listener: ${req.url()}`);
    });
    await page.evaluateOnNewDocument(() => {
      document.addEventListener('securitypolicyviolation', (e) => {
        (window.__csp ||= []).push(`${e.violatedDirective}: ${e.blockedURI}`);
      });
    });
    await page.goto(admin.url + '/', { waitUntil: 'load' });
    page.problems = async () => problems.concat(await page.evaluate(() => window.__csp || []));
    return page;
  }

  const visible = (page, sel) => page.$eval(sel, (el) => !el.hidden && el.offsetParent !== null);
  const dashText = (page) => page.$eval('#dash', (el) => el.textContent);

  async function logIn(page, key) {
    await page.waitForSelector('#key', { visible: true });
    await page.type('#key', key);
    await page.click('#open');
  }

  async function rows(page) {
    return page.$$eval('#backends tr[data-backend]', (trs) => trs.map((tr) => ({
      name: tr.getAttribute('data-backend'),
      health: tr.getAttribute('data-health'),
      shown: tr.querySelector('.name').textContent,
      text: tr.textContent,
      reason: tr.querySelector('.reason').textContent,
    })));
  }

  before(async () => {
    out = await outputDir();
    browser = await puppeteer.launch({
      executablePath: chromiumPath(),
      headless: true, // --headless=new
      args: [
        ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
        '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check',
      ],
    });
    nodes = await Promise.all([
      startMocknode({ name: 'node-a', models: ['llama-3.1-8b', 'qwen-2.5-7b'], ttfbMs: 20, tokens: 24, quiet: true }),
      startMocknode({ name: 'node-b', models: ['llama-3.1-8b'], ttfbMs: 60, tokens: 24, quiet: true }),
      startMocknode({ name: 'node-c', models: ['qwen-2.5-7b'], ttfbMs: 35, tokens: 24, quiet: true }),
    ]);
    admin = await adminListener();
    gw = await startGateway({
      keys: KEYS,
      ...admin.config,
      health: { interval_ms: 250 },
      backends: [
        { ...backendFor(nodes[0], { models: [
          { name: 'llama-3.1-8b', input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.08 },
          { name: 'qwen-2.5-7b', input_usd_per_mtok: 0.2, output_usd_per_mtok: 0.3 },
        ] }), max_inflight: 2 },
        backendFor(nodes[1], { models: [
          { name: 'llama-3.1-8b', input_usd_per_mtok: 0.12, output_usd_per_mtok: 0.2 },
        ] }),
        backendFor(nodes[2], { name: EVIL, models: [
          { name: 'qwen-2.5-7b', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.15 },
        ] }),
      ],
    });
    const chat = (key, model, i) => post(gw.v1 + '/chat/completions', {
      model, max_tokens: 24, messages: [{ role: 'user', content: `status page ${model} ${i} ${Math.random()}` }],
    }, { key: key.key });
    // Some spend before the page opens: alpha spends more than beta.
    for (let i = 0; i < 6; i++) {
      const r = await chat(KEYS[i % 3 === 2 ? 1 : 0], i % 2 ? 'qwen-2.5-7b' : 'llama-3.1-8b', i);
      assert.equal(r.status, 200, r.text);
    }
    // Then a steady trickle (three llama requests at a time: node-a's cap of 2 sends some to
    // node-b), so the
    // rates on the page have something to show.
    traffic = (async () => {
      for (let i = 0; !stopTraffic; i++) {
        await Promise.all([0, 1, 2, 3].map((j) => chat(KEYS[j === 3 ? 1 : 0],
          j === 1 ? 'qwen-2.5-7b' : 'llama-3.1-8b', `${i}.${j}`).catch(() => {})));
        await new Promise((r) => setTimeout(r, 150));
      }
    })();
  });

  after(async () => {
    stopTraffic = true;
    await traffic;
  });

  test('GET / is the page, with a strict Content-Security-Policy and no caching; its data needs the key', async () => {
    const r = await get(admin.url + '/');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type'), /^text\/html/);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    const csp = r.headers.get('content-security-policy');
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/]{43}='/);
    assert.match(csp, /style-src 'sha256-[A-Za-z0-9+/]{43}='/);
    assert.match(csp, /connect-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /require-trusted-types-for 'script'/);
    assert.doesNotMatch(csp, /unsafe|\*/);
    assert.ok(!r.text.includes('node-a'), 'the page itself holds no data');
    assert.doesNotMatch(r.text, /https?:\/\//, 'nothing is loaded from elsewhere');
    assert.equal((await post(admin.url + '/', {})).status, 405);

    for (const headers of [{}, { authorization: 'Bearer wrong-key' }]) {
      const s = await get(admin.url + '/admin/status', { headers });
      assert.equal(s.status, 401, s.text);
      assert.ok(!s.text.includes('node-a'));
    }
    const s = await admin.get('/admin/status');
    assert.equal(s.status, 200, s.text);
    assert.equal(s.headers.get('cache-control'), 'no-store');
    assert.ok(s.json.totals.requests >= 6, s.text);
    assert.ok(s.json.totals.spend_usd > 0, s.text);
    assert.deepEqual(s.json.backends.map((b) => b.name), ['node-a', 'node-b', EVIL]);
    assert.equal(s.json.top_keys[0].name, 'team-alpha', s.text);
    assert.ok(s.json.top_keys[0].spend_usd > s.json.top_keys[1].spend_usd, s.text);
    for (const k of KEYS) assert.ok(!s.text.includes(k.key), 'key names, never keys');
  });

  test('without a valid key it shows the prompt and nothing else, also after a wrong key', async () => {
    const context = await browser.createBrowserContext();
    try {
      const page = await openPage(context);
      await page.waitForSelector('#login', { visible: true });
      assert.equal(await visible(page, '#dash'), false);
      assert.equal(await dashText(page), '');
      assert.ok(!(await page.evaluate(() => document.body.innerText)).includes('node-a'));

      await logIn(page, 'not-the-admin-key');
      await page.waitForFunction(() => /refused/.test(document.getElementById('login-error').textContent));
      assert.equal(await visible(page, '#login'), true);
      assert.equal(await visible(page, '#dash'), false);
      assert.equal(await dashText(page), '');
      assert.ok(!(await page.evaluate(() => document.body.innerText)).includes('node-a'));
      assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused key is not kept');
      assert.deepEqual(await page.problems(), []);
    } finally {
      await context.close();
    }
  });

  test('with the key it renders every backend, its models and prices, the totals and top keys; laptop and phone', async (t) => {
    const context = await browser.createBrowserContext();
    try {
      const page = await openPage(context);
      await logIn(page, admin.key);
      await page.waitForFunction(() => document.querySelectorAll('#backends tr[data-backend]').length === 3);
      assert.equal(await visible(page, '#login'), false);
      const shown = await rows(page);
      assert.deepEqual(shown.map((r) => r.name), ['node-a', 'node-b', EVIL]);
      assert.deepEqual(shown.map((r) => r.shown), ['node-a', 'node-b', EVIL], 'names shown as text');
      assert.deepEqual(shown.map((r) => r.health), ['up', 'up', 'up']);
      assert.match(shown[0].text, /llama-3\.1-8b.*\$0\.05 \/ \$0\.08.*qwen-2\.5-7b.*\$0\.2 \/ \$0\.3/);
      assert.match(shown[1].text, /llama-3\.1-8b.*\$0\.12 \/ \$0\.2/);
      assert.match(shown[2].text, /qwen-2\.5-7b.*\$0\.1 \/ \$0\.15/);
      assert.equal(await page.$$eval('#dash img', (imgs) => imgs.length), 0, 'no markup from a name');
      assert.equal(await page.title(), 'Tollgate status');

      // Rates need two samples: wait for the second poll.
      await page.waitForFunction(() => /req\/s/.test(document.querySelector('[data-card=requests]').textContent));
      const cards = await page.$$eval('#totals [data-card]', (cs) => Object.fromEntries(
        cs.map((c) => [c.getAttribute('data-card'), c.querySelector('.value').textContent])));
      assert.ok(Number(cards.requests.replace(/k$/, '')) >= 6, JSON.stringify(cards));
      assert.match(cards.spend, /^\$0\.0/, JSON.stringify(cards));
      assert.ok('savings' in cards && 'cache' in cards, JSON.stringify(cards));
      const keys = await page.$$eval('#keys [data-key]', (ks) => ks.map((k) => k.getAttribute('data-key')));
      assert.deepEqual(keys, ['team-alpha', 'team-beta']);
      const html = await page.content();
      for (const k of KEYS) assert.ok(!html.includes(k.key));
      assert.ok(!html.includes(admin.key), 'the admin key is not in the page');

      // Laptop: a table. No horizontal scrolling.
      assert.equal(await visible(page, '#backends thead'), true);
      assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));
      const laptop = path.join(out, 'status-page-laptop.png');
      await page.screenshot({ path: laptop, fullPage: true });

      // Phone, in dark mode: the rows become cards, still no horizontal scrolling. (A change to
      // isMobile reloads the page: the key is still there, the rates start over.)
      await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'dark' }]);
      await page.setViewport({ width: 390, height: 844, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
      await page.waitForFunction(() => /req\/s/.test(document.querySelector('[data-card=requests]')?.textContent));
      assert.equal(await visible(page, '#login'), false);
      assert.equal(await page.$eval('#backends thead', (el) => getComputedStyle(el).display), 'none');
      assert.ok(await page.$eval('header', (el) => el.getBoundingClientRect().height < 70), 'a one-line header');
      assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth),
        'no horizontal scroll on a phone');
      const phone = path.join(out, 'status-page-phone.png');
      await page.screenshot({ path: phone, fullPage: true });
      for (const f of [laptop, phone]) assert.ok((await fsp.stat(f)).size > 10000, f);
      t.diagnostic(`screenshots: ${laptop} ${phone}`);
      console.log(`status page screenshots: ${laptop} ${phone}`);
      assert.deepEqual(await page.problems(), []);
    } finally {
      await context.close();
    }
  });

  test('a node that goes down shows as unhealthy, with why, without reloading the page', async () => {
    const context = await browser.createBrowserContext();
    try {
      const page = await openPage(context);
      await logIn(page, admin.key);
      await page.waitForFunction(() => document.querySelectorAll('#backends tr[data-backend]').length === 3);
      assert.equal((await rows(page)).find((r) => r.name === 'node-b').health, 'up');
      const loads = [];
      page.on('framenavigated', (f) => { if (f === page.mainFrame()) loads.push(f.url()); });

      await nodes[1].kill('SIGKILL');
      await page.waitForFunction(() => {
        const tr = document.querySelector('#backends tr[data-backend="node-b"]');
        return tr && tr.getAttribute('data-health') !== 'up';
      }, { timeout: 30000, polling: 200 });
      const b = (await rows(page)).find((r) => r.name === 'node-b');
      assert.ok(['down', 'ejected'].includes(b.health), JSON.stringify(b));
      assert.match(b.reason, /probes failing|unreachable|failures/, JSON.stringify(b));
      assert.ok(await page.$eval('#backends tr[data-backend="node-b"]', (tr) => tr.classList.contains('unhealthy')));
      assert.match(await dashText(page), /Backends · 3 \(2 healthy\)/);
      assert.deepEqual((await rows(page)).filter((r) => r.name !== 'node-b').map((r) => r.health), ['up', 'up']);
      assert.deepEqual(loads, [], 'updated in place');
      assert.deepEqual(await page.problems(), []);
      await page.screenshot({ path: path.join(out, 'status-page-node-down.png'), fullPage: true });
    } finally {
      await context.close();
    }
  });

  test('the key is kept for the tab only; "Forget key" and a key the gateway stops accepting bring the prompt back', async () => {
    const context = await browser.createBrowserContext();
    try {
      const page = await openPage(context);
      await logIn(page, admin.key);
      await page.waitForSelector('#backends tr[data-backend]');
      // A reload of the tab keeps it (sessionStorage)...
      await page.reload({ waitUntil: 'load' });
      await page.waitForSelector('#backends tr[data-backend]');
      assert.equal(await visible(page, '#login'), false);
      // ...another tab does not have it.
      const other = await openPage(context);
      await other.waitForSelector('#login', { visible: true });
      assert.equal(await dashText(other), '');
      await other.close();

      await page.click('#forget');
      await page.waitForSelector('#login', { visible: true });
      assert.equal(await dashText(page), '');
      assert.equal(await page.evaluate(() => sessionStorage.length), 0);

      // The operator changes the admin key (SIGHUP): the open page drops what it showed.
      await logIn(page, admin.key);
      await page.waitForSelector('#backends tr[data-backend]');
      const cfg = JSON.parse(await fsp.readFile(gw.configPath, 'utf8'));
      cfg.admin_key = 'a-new-admin-key-0123456789abcdef';
      await fsp.writeFile(gw.configPath, JSON.stringify(cfg));
      gw.proc.kill('SIGHUP');
      await waitFor(async () => (await get(admin.url + '/admin/status', { key: cfg.admin_key })).status === 200,
        { timeoutMs: 10000, what: 'the new admin key' });
      await page.waitForFunction(() => /no longer accepts/.test(document.getElementById('login-error').textContent),
        { timeout: 15000 });
      assert.equal(await dashText(page), '');
      assert.equal(await visible(page, '#dash'), false);
      assert.equal(await page.evaluate(() => sessionStorage.length), 0);
      assert.deepEqual(await page.problems(), []);
    } finally {
      await context.close();
    }
  });
});
