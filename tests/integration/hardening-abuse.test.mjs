// Abuse from callers (issue 13, items 6 and 10): slowloris, thousands of idle connections,
// the connection cap and the process's fd limit. What must hold: legitimate callers keep
// being answered, idle and dripping connections are the ones shed, and an idle connection
// costs bounded memory. Caps and limits are small here so that every case runs in seconds.
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  startMocknode, startGateway, backendFor, cleanup, post, rawHttp, errorShapeProblems, waitFor,
} from '../lib/harness.mjs';

after(cleanup);

const HOST = '127.0.0.1';
const KEY = 'sk-abuse-test-key';

// A socket the test holds open; `shed` becomes true when the gateway closes it.
function holdSocket(port, { onConnect } = {}) {
  const s = net.connect(port, HOST);
  s.shed = false;
  s.received = '';
  s.setNoDelay(true);
  s.on('error', () => { s.shed = true; });
  s.on('data', (d) => { s.received += d.toString('latin1'); });
  s.on('end', () => { s.shed = true; });
  s.on('close', () => { s.shed = true; });
  s.ready = new Promise((resolve) => s.once('connect', () => { onConnect?.(s); resolve(); }));
  return s;
}

// Sends `first`, then one byte of `drip` every `everyMs` (slowloris: the header, or a body,
// never ends in reasonable time; each byte would reset an idle timer).
function dripper(port, first, { everyMs = 250, drip = 'X-Slow: 1' } = {}) {
  let i = 0;
  let timer;
  const s = holdSocket(port, {
    onConnect: (sock) => {
      sock.write(first);
      timer = setInterval(() => {
        if (sock.shed || sock.destroyed) { clearInterval(timer); return; }
        sock.write(drip[i++ % drip.length]);
      }, everyMs);
    },
  });
  s.on('close', () => clearInterval(timer));
  s.stop = () => { clearInterval(timer); s.destroy(); };
  return s;
}

// A legitimate caller on a fresh connection: the answer's status.
async function healthz(port, timeoutMs = 8000) {
  const res = await rawHttp(port, `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, { timeoutMs });
  return res.status;
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

async function openIdle(port, n) {
  const socks = [];
  for (let i = 0; i < n; i++) socks.push(holdSocket(port));
  await Promise.all(socks.map((s) => s.ready));
  return socks;
}

const closeAll = (socks) => { for (const s of socks) s.stop ? s.stop() : s.destroy(); };

describe('slowloris', () => {
  test('at the connection cap, legitimate callers are answered and dripping connections are shed', async () => {
    const node = await startMocknode({ name: 'abuse-node', models: ['m1'], tokens: 2 });
    // One worker, 16 connections; the header deadline stays at its default (60 s), so only
    // shedding at the cap can make room.
    const gw = await startGateway({
      workers: 1, max_connections: 16, keys: [{ name: 'k', key: KEY }], backends: [backendFor(node)],
    });
    const drippers = [];
    for (let i = 0; i < 40; i++)
      drippers.push(dripper(gw.port, `POST /v1/chat/completions HTTP/1.1\r\nHost: ${HOST}\r\n`));
    await Promise.all(drippers.map((d) => d.ready));
    await sleep(1500); // the accepted ones have waited long enough to be shed for room
    try {
      for (let i = 0; i < 8; i++)
        assert.equal(await healthz(gw.port), 200, `legitimate request ${i} while 40 sockets drip`);
      const chat = await post(gw.v1 + '/chat/completions',
        { model: 'm1', messages: [{ role: 'user', content: 'hi' }] }, { key: KEY, timeoutMs: 8000 });
      assert.equal(chat.status, 200, chat.text);
      const shed = drippers.filter((d) => d.shed).length;
      assert.ok(shed >= 8, `dripping connections shed to make room: ${shed}`);
    } finally {
      closeAll(drippers);
    }
  });

  test('a header or a body that drips in is cut at its deadline (408 for a body), bytes notwithstanding', async () => {
    const node = await startMocknode({ name: 'abuse-node2', models: ['m1'], tokens: 2 });
    const gw = await startGateway({
      workers: 1, client_header_timeout_ms: 1000, client_body_timeout_ms: 1000,
      keys: [{ name: 'k', key: KEY }], backends: [backendFor(node)],
    });
    const heads = [];
    for (let i = 0; i < 5; i++)
      heads.push(dripper(gw.port, `POST /v1/chat/completions HTTP/1.1\r\nHost: ${HOST}\r\n`, { everyMs: 100 }));
    const body = dripper(gw.port, `POST /v1/chat/completions HTTP/1.1\r\nHost: ${HOST}\r\n` +
      `Authorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`,
    { everyMs: 100, drip: ' ' });
    try {
      await waitFor(() => heads.every((d) => d.shed) && body.shed,
        { timeoutMs: 6000, what: 'the dripping connections to be cut' });
      assert.equal(heads.filter((d) => d.received.length).length, 0, 'a header that never ended gets no answer');
      const m = /^HTTP\/1\.1 408 [^\r]*\r\n[\s\S]*?\r\n\r\n([\s\S]*)$/.exec(body.received);
      assert.ok(m, `a 408 for the body: ${JSON.stringify(body.received.slice(0, 300))}`);
      const err = JSON.parse(m[1]);
      assert.deepEqual(errorShapeProblems(err), []);
      assert.equal(err.error.code, 'request_timeout');
      // Callers that send their request at once are unaffected.
      assert.equal(await healthz(gw.port), 200);
    } finally {
      closeAll([...heads, body]);
    }
  });
});

describe('many idle connections', () => {
  test('thousands of idle connections cost bounded memory, and past the cap the idle ones make room', async (t) => {
    const gw = await startGateway({ workers: 2, max_connections: 2000, backends: [{
      name: 'none', url: 'http://127.0.0.1:9/v1', models: [{ name: 'm1', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }],
    }] });
    // Warm up (first connections allocate the workers' pools), then measure.
    for (let i = 0; i < 20; i++) assert.equal(await healthz(gw.port), 200);
    const before = rssKiB(gw.proc.pid);
    const idle = await openIdle(gw.port, 1500);
    try {
      await waitFor(() => healthz(gw.port).then((s) => s === 200), { timeoutMs: 5000, what: 'the gateway to take 1500 idle connections' });
      const during = rssKiB(gw.proc.pid);
      const perConn = ((during - before) * 1024) / idle.length;
      // The connection's buffer (16 KiB, touched only as far as used) and our bookkeeping.
      t.diagnostic(`RSS per idle connection: ${Math.round(perConn)} bytes (${before} -> ${during} KiB for ${idle.length})`);
      assert.ok(perConn < 64 * 1024, `RSS per idle connection: ${Math.round(perConn)} bytes (${before} -> ${during} KiB)`);
      assert.equal(idle.filter((s) => s.shed).length, 0, 'below the cap nothing is shed');
      // 1,000 more: past the cap of 2,000. Once they waited a second the oldest idle ones
      // are shed for room: newcomers and legitimate callers get in.
      const more = await openIdle(gw.port, 1000);
      idle.push(...more);
      await sleep(1200);
      for (let i = 0; i < 10; i++) assert.equal(await healthz(gw.port), 200, `legitimate request ${i} past the cap`);
      const shed = idle.filter((s) => s.shed).length;
      assert.ok(shed >= 500, `idle connections shed past the cap: ${shed}`);
    } finally {
      closeAll(idle);
    }
  });
});

describe('the process fd limit', () => {
  test('at EMFILE idle connections are shed for legitimate ones, and every worker accepts again after', async () => {
    const gw = await startGateway({ workers: 2, backends: [{
      name: 'none', url: 'http://127.0.0.1:9/v1', models: [{ name: 'm1', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }],
    }] });
    // The gateway runs with ~30 descriptors of its own: 160 leaves room for ~130 clients.
    execFileSync('prlimit', ['--pid', String(gw.proc.pid), '--nofile=160:160']);
    const idle = await openIdle(gw.port, 300);
    try {
      await sleep(1500); // accepted ones are old enough to be shed; the rest wait in the backlogs
      for (let i = 0; i < 8; i++) assert.equal(await healthz(gw.port), 200, `legitimate request ${i} at the fd limit`);
      assert.ok(idle.some((s) => s.shed), 'idle connections were shed to free descriptors');
      // Every idle socket goes at once while the gateway cannot run, so each worker handles
      // all its closes in one turn: libmicrohttpd's own accept then never resumed (its
      // listener was left out of its epoll set at the limit, and nothing ran it again).
      process.kill(gw.proc.pid, 'SIGSTOP');
      closeAll(idle);
      await sleep(300);
      process.kill(gw.proc.pid, 'SIGCONT');
      const results = await Promise.all(Array.from({ length: 40 }, () => healthz(gw.port, 5000).catch((e) => e.message)));
      assert.deepEqual(results.filter((r) => r !== 200), [], 'every new connection is answered (both listeners accept)');
    } finally {
      try { process.kill(gw.proc.pid, 'SIGCONT'); } catch { /* gone */ }
      closeAll(idle);
    }
  });
});
