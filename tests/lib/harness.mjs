// Test harness for Tollgate: spawns the real gateway and mock inference nodes on
// loopback, with free ports, bounded waits, and a cleanup registry so no process
// outlives the test file (even when an assertion throws mid-test).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

// Paths are derived from this file's location so the suite runs from any checkout.
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
// TOLLGATE_BUILD selects another build tree (e.g. `make asan` uses build-asan).
export const BUILD_DIR = path.resolve(REPO_ROOT, process.env.TOLLGATE_BUILD || 'build');
export const TOLLGATE_BIN = path.join(BUILD_DIR, 'tollgate');
export const MOCKNODE_BIN = path.join(BUILD_DIR, 'mocknode');

const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------
// Cleanup registry
// ---------------------------------------------------------------------------

const live_procs = new Set();
const temp_dirs = new Set();

function track(proc) {
  live_procs.add(proc);
  proc.once('exit', () => live_procs.delete(proc));
  return proc;
}

function exited(proc) {
  return proc.exitCode !== null || proc.signalCode !== null;
}

// Kills every process still running and removes temp dirs. Safe to call many times.
export async function cleanup() {
  await closeRawBackends();
  const waits = [];
  for (const proc of live_procs) {
    if (exited(proc)) continue;
    const done = once(proc, 'exit').catch(() => {});
    try { proc.kill('SIGKILL'); } catch { /* already gone */ }
    waits.push(Promise.race([done, sleep(3000)]));
  }
  await Promise.all(waits);
  for (const dir of temp_dirs) {
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => {});
    temp_dirs.delete(dir);
  }
}

// Last-resort kill when the test process itself goes away (exit handlers must be sync).
function kill_all_sync() {
  for (const proc of live_procs) {
    if (!exited(proc)) {
      try { proc.kill('SIGKILL'); } catch { /* ignore */ }
    }
  }
  for (const dir of temp_dirs) {
    try { fs.rmSync(dir, { recursive: true, force: true }); } catch { /* ignore */ }
  }
}
process.on('exit', kill_all_sync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    kill_all_sync();
    process.exit(128 + (os.constants.signals[sig] ?? 1));
  });
}

export async function makeTempDir(prefix = 'tollgate-test-') {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  temp_dirs.add(dir);
  return dir;
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

export async function freePort() {
  const srv = net.createServer();
  srv.unref();
  srv.listen(0, HOST);
  await once(srv, 'listening');
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last_err;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last_err = err;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` +
    (last_err ? ` (last error: ${last_err.message})` : ''));
}

function line_reader(stream, sink, on_line) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    buf += chunk;
    let idx;
    while ((idx = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, idx).replace(/\r$/, '');
      buf = buf.slice(idx + 1);
      sink.push(line);
      on_line?.(line);
    }
  });
  stream.on('end', () => {
    if (buf.length) {
      sink.push(buf);
      on_line?.(buf);
      buf = '';
    }
  });
}

function wait_exit(proc, timeoutMs) {
  if (exited(proc)) return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.off('exit', on_exit);
      reject(new Error(`process ${proc.pid} did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
    function on_exit(code, signal) {
      clearTimeout(timer);
      resolve({ code, signal });
    }
    proc.once('exit', on_exit);
  });
}

function kebab(key) {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()).replace(/_/g, '-');
}

// ---------------------------------------------------------------------------
// Mock inference node
// ---------------------------------------------------------------------------

// startMocknode({name, models, tokenMs: 50, tokens: 10, ttfbMs, fault, ...})
// Any extra key becomes a flag: camelCase/snake_case -> --kebab-case; `true` -> bare flag.
// `port` picks the port (e.g. to restart a killed node where the gateway expects it).
export async function startMocknode({ name = 'mock', models = ['m1'], port: want_port = 0, ...flags } = {}) {
  const args = ['--host', HOST, '--port', String(want_port), '--name', name, '--models', models.join(',')];
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined || v === false || v === null) continue;
    args.push('--' + kebab(k));
    if (v !== true) args.push(String(v));
  }
  const proc = track(spawn(MOCKNODE_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  const stdout = [];
  const stderr = [];
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(
      `mocknode ${name} did not print "listening on" within 10 s\nstdout: ${stdout.join('\n')}\nstderr: ${stderr.join('\n')}`)), 10000);
    line_reader(proc.stdout, stdout, (line) => {
      const m = /listening on (\S+):(\d+)/.exec(line);
      if (m) { clearTimeout(timer); resolve({ host: m[1], port: Number(m[2]) }); }
    });
    line_reader(proc.stderr, stderr);
    proc.once('error', (err) => { clearTimeout(timer); reject(err); });
    proc.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`mocknode ${name} exited early (code ${code}, signal ${sig})\nstderr: ${stderr.join('\n')}`));
    });
  });
  const { port } = await listening;
  if (!port) throw new Error(`mocknode ${name} reported port 0`);
  const url = `http://${HOST}:${port}`;

  async function control(method, p, body) {
    const res = await fetch(url + p, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`mocknode ${name} ${method} ${p} -> ${res.status}: ${text}`);
    return JSON.parse(text);
  }

  return {
    name,
    models,
    port,
    url,
    v1: url + '/v1',
    proc,
    flags: { ...flags },
    stdout,
    stderr,
    setConfig: (obj) => control('POST', '/_mock/config', obj),
    stats: () => control('GET', '/_mock/stats'),
    reset: () => control('POST', '/_mock/reset', {}),
    async kill(signal = 'SIGTERM') {
      if (!exited(proc)) proc.kill(signal);
      return wait_exit(proc, 5000);
    },
  };
}

// ---------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------

// Builds a gateway backend entry for a mocknode. Prices default to 1/1 USD per Mtok.
export function backendFor(mock, { name = mock.name, api_key, models, prices } = {}) {
  const b = {
    name,
    url: mock.v1,
    models: (models ?? mock.models).map((m) => (typeof m === 'string'
      ? { name: m, input_usd_per_mtok: prices?.[0] ?? 1, output_usd_per_mtok: prices?.[1] ?? 1 }
      : m)),
  };
  if (api_key !== undefined) b.api_key = api_key;
  return b;
}

async function wait_healthy(url, proc, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited(proc)) return false;
    try {
      const res = await fetch(url + '/healthz', { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return true;
    } catch { /* not up yet */ }
    await sleep(50);
  }
  throw new Error(`gateway did not answer GET /healthz 200 within ${timeoutMs} ms`);
}

// Any HTTP answer at all: the listener is open.
async function wait_answering(url, proc, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited(proc)) return false;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return true;
    } catch { /* not up yet */ }
    await sleep(50);
  }
  throw new Error(`nothing answered ${url} within ${timeoutMs} ms`);
}

// startGateway(config, {env, raw, ext, port, args, useEnvConfig})
// - config: object written as JSON; `listen` is filled with a free loopback port when absent.
// - raw: write this text instead (e.g. YAML); then pass `port` so the harness knows where to look.
// - useEnvConfig: pass the file through TOLLGATE_CONFIG instead of -c.
export async function startGateway(config, opts = {}) {
  let last_err;
  // A free port can be taken between freePort() and the gateway's bind(); retry a few times.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await start_gateway_once(config, opts);
    } catch (err) {
      last_err = err;
      if (!err.bind_race) throw err;
    }
  }
  throw last_err;
}

async function start_gateway_once(config, opts) {
  const dir = await makeTempDir('tollgate-gw-');
  let port = opts.port;
  let text;
  let ext = opts.ext ?? '.json';
  if (opts.raw !== undefined) {
    text = opts.raw;
    if (!port) throw new Error('startGateway: raw config needs opts.port');
  } else {
    const cfg = { ...config };
    // Usage spools go to the test's own directory, not the machine's /var/tmp.
    if (cfg.redis && cfg.spool_dir === undefined) cfg.spool_dir = dir;
    if (!cfg.listen) {
      port = port ?? await freePort();
      cfg.listen = `${HOST}:${port}`;
    } else if (!port) {
      port = Number(String(cfg.listen).split(':').pop());
    }
    text = JSON.stringify(cfg, null, 2);
  }
  const configPath = path.join(dir, 'tollgate' + ext);
  await fsp.writeFile(configPath, text);

  const env = { ...process.env, ...(opts.env ?? {}) };
  const args = [...(opts.args ?? [])];
  if (opts.useEnvConfig) env.TOLLGATE_CONFIG = configPath;
  else args.unshift('-c', configPath);

  const proc = track(spawn(TOLLGATE_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env }));
  const logs = { stdout: [], stderr: [] };
  logs.text = () => [...logs.stdout, ...logs.stderr].join('\n');
  // stdout carries one JSON object per event (contract); parse what parses.
  logs.json = () => logs.stdout.flatMap((l) => { try { return [JSON.parse(l)]; } catch { return []; } });
  line_reader(proc.stdout, logs.stdout);
  line_reader(proc.stderr, logs.stderr);
  const spawn_err = new Promise((_, reject) => proc.once('error', reject));
  spawn_err.catch(() => {});

  const url = `http://${HOST}:${port}`;
  let healthy = await Promise.race([wait_healthy(url, proc, opts.startTimeoutMs ?? 10000), spawn_err]);
  // The admin listener opens after the workers: wait for it too, or a test's first admin
  // call can race it (seen under ThreadSanitizer, which slows start-up).
  const admin_listen = opts.raw === undefined ? config?.admin_listen : undefined;
  if (healthy && admin_listen)
    healthy = await wait_answering(`http://${admin_listen}/`, proc, opts.startTimeoutMs ?? 10000);
  if (!healthy) {
    const { code, signal } = await wait_exit(proc, 2000).catch(() => ({}));
    const err = new Error(`gateway exited during startup (code ${code}, signal ${signal})\n${logs.text()}`);
    err.bind_race = /in use|EADDRINUSE|bind/i.test(logs.text()) && opts.raw === undefined && !config?.listen;
    throw err;
  }
  return {
    url,
    v1: url + '/v1',
    port,
    proc,
    logs,
    dir,
    configPath,
    stop(signal = 'SIGTERM', timeoutMs = 15000) {
      if (!exited(proc)) proc.kill(signal);
      return wait_exit(proc, timeoutMs);
    },
    waitExit: (timeoutMs = 15000) => wait_exit(proc, timeoutMs),
  };
}

// Runs build/tollgate to completion (e.g. --check-config); returns {code, signal, stdout, stderr}.
export async function runTollgate(args, { env, timeoutMs = 10000 } = {}) {
  const proc = track(spawn(TOLLGATE_BIN, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(env ?? {}) },
  }));
  const out = [];
  const err = [];
  line_reader(proc.stdout, out);
  line_reader(proc.stderr, err);
  const res = await wait_exit(proc, timeoutMs).catch((e) => {
    proc.kill('SIGKILL');
    throw e;
  });
  // Let the pipes drain after exit.
  await Promise.all([
    proc.stdout.readableEnded ? null : Promise.race([once(proc.stdout, 'end'), sleep(1000)]),
    proc.stderr.readableEnded ? null : Promise.race([once(proc.stderr, 'end'), sleep(1000)]),
  ]);
  return { ...res, stdout: out.join('\n'), stderr: err.join('\n') };
}

export async function writeTempFile(name, content) {
  const dir = await makeTempDir('tollgate-cfg-');
  const p = path.join(dir, name);
  await fsp.writeFile(p, content);
  return p;
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

// POST JSON (or a raw string body) with fetch; returns {status, headers, text, json}.
export async function post(url, body, { key, headers = {}, timeoutMs = 10000 } = {}) {
  const h = { 'content-type': 'application/json', ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  const res = await fetch(url, {
    method: 'POST',
    headers: h,
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return finish(res);
}

export async function get(url, { key, headers = {}, timeoutMs = 10000, method = 'GET' } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  const res = await fetch(url, { method, headers: h, signal: AbortSignal.timeout(timeoutMs) });
  return finish(res);
}

async function finish(res) {
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

// Streams a POST with node:http and records each SSE event with its arrival time.
// Resolves with {status, headers, events:[{data, t}], raw, ended, error, tStart, tHeaders}
// where ended is 'end' when the body terminated properly and 'aborted' when the
// connection was cut without the chunked terminator.
// onEvent(event, out) is called as each event arrives (used to synchronise on "stream started").
export function streamPost(url, body, { key, headers = {}, timeoutMs = 20000, onEvent } = {}) {
  return new Promise((resolve, reject) => {
    const payload = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const h = { 'content-type': 'application/json', 'content-length': payload.length, ...headers };
    if (key) h.authorization = `Bearer ${key}`;
    const tStart = performance.now();
    const req = http.request(url, { method: 'POST', headers: h, agent: false });
    const timer = setTimeout(() => {
      req.destroy(new Error(`streamPost timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('error', (err) => { clearTimeout(timer); reject(err); });
    req.on('response', (res) => {
      const out = { status: res.statusCode, headers: res.headers, events: [], raw: '',
        ended: null, error: null, tStart, tHeaders: performance.now() };
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        const t = performance.now();
        out.raw += chunk;
        buf += chunk;
        let idx;
        while ((idx = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, idx);
          buf = buf.slice(idx + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
          const ev = { data, block, t };
          out.events.push(ev);
          onEvent?.(ev, out);
        }
      });
      const done = (how, err) => {
        if (out.ended) return;
        clearTimeout(timer);
        out.ended = how;
        out.error = err ?? null;
        out.rest = buf;
        resolve(out);
      };
      res.on('end', () => done(res.complete ? 'end' : 'aborted'));
      res.on('aborted', () => done('aborted'));
      res.on('error', (err) => done('aborted', err));
      res.on('close', () => done(res.complete ? 'end' : 'aborted'));
    });
    req.end(payload);
  });
}

// Sends raw bytes over a TCP connection and parses one HTTP/1.1 response.
// keepOpen: do not half-close our side after writing (used to prove the server
// answered without waiting for the rest of a body).
export function rawHttp(port, data, { timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, HOST);
    let buf = Buffer.alloc(0);
    let settled = false;
    const finish_ok = (v) => { if (!settled) { settled = true; clearTimeout(timer); sock.destroy(); resolve(v); } };
    const finish_err = (e) => { if (!settled) { settled = true; clearTimeout(timer); sock.destroy(); reject(e); } };
    const timer = setTimeout(() => finish_err(new Error(
      `no complete HTTP response within ${timeoutMs} ms; got: ${JSON.stringify(buf.toString('latin1').slice(0, 500))}`)), timeoutMs);
    sock.on('error', (err) => {
      // The server may reset the connection after answering (it did not read the body);
      // what matters is whether a full response arrived first.
      const parsed = parse_response(buf, true);
      if (parsed) finish_ok(parsed); else finish_err(err);
    });
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      const parsed = parse_response(buf, false);
      if (parsed) finish_ok(parsed);
    });
    sock.on('end', () => {
      const parsed = parse_response(buf, true);
      if (parsed) finish_ok(parsed);
      else finish_err(new Error(`connection closed before a full response: ${JSON.stringify(buf.toString('latin1').slice(0, 500))}`));
    });
    sock.on('connect', () => sock.write(data));
  });
}

function parse_response(buf, at_eof) {
  const head_end = buf.indexOf('\r\n\r\n');
  if (head_end < 0) return null;
  const head = buf.subarray(0, head_end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
  if (!m) return null;
  const headers = {};
  for (const line of head.slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = buf.subarray(head_end + 4);
  if (headers['content-length'] !== undefined) {
    const n = Number(headers['content-length']);
    if (body.length < n) return null;
    body = body.subarray(0, n);
  } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const out = [];
    let off = 0;
    for (;;) {
      const eol = body.indexOf('\r\n', off);
      if (eol < 0) return null;
      const size = parseInt(body.subarray(off, eol).toString('latin1'), 16);
      if (Number.isNaN(size)) return null;
      if (size === 0) break;
      if (body.length < eol + 2 + size + 2) return null;
      out.push(body.subarray(eol + 2, eol + 2 + size));
      off = eol + 2 + size + 2;
    }
    body = Buffer.concat(out);
  } else if (!at_eof) {
    return null;
  }
  const text = body.toString('utf8');
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: Number(m[1]), headers, text, json };
}

// Resolves 'refused' when a TCP connect is refused, 'accepted' when it connects.
export function tryConnect(port, { timeoutMs = 1000 } = {}) {
  return new Promise((resolve) => {
    const sock = net.connect(port, HOST);
    const timer = setTimeout(() => { sock.destroy(); resolve('timeout'); }, timeoutMs);
    sock.once('connect', () => { clearTimeout(timer); sock.destroy(); resolve('accepted'); });
    sock.once('error', (err) => {
      clearTimeout(timer);
      resolve(err.code === 'ECONNREFUSED' ? 'refused' : `error:${err.code}`);
    });
  });
}

// ---------------------------------------------------------------------------
// Scripted raw backend
// ---------------------------------------------------------------------------

// A loopback TCP server that reads one HTTP request per connection and hands the socket
// to handler(sock, req) to write whatever raw bytes (and breakage) a test needs.
// Resolves with {url, v1, port, requests, close()}.
export async function startRawBackend(handler) {
  const requests = [];
  const sockets = new Set();
  const srv = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let handled = false;
    sock.on('data', (chunk) => {
      if (handled) return;
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
      const [method, target] = lines[0].split(' ');
      const headers = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      const len = Number(headers['content-length'] ?? 0);
      if (buf.length < end + 4 + len) return;
      handled = true;
      const text = buf.subarray(end + 4, end + 4 + len).toString('utf8');
      let body = null;
      try { body = JSON.parse(text); } catch { /* keep null */ }
      const req = { method, path: target, headers, body };
      requests.push(req);
      handler(sock, req);
    });
  });
  srv.listen(0, HOST);
  await once(srv, 'listening');
  const { port } = srv.address();
  const url = `http://${HOST}:${port}`;
  const server = {
    url, v1: url + '/v1', port, requests,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => srv.close(() => resolve()));
    },
  };
  raw_servers.add(server);
  return server;
}

const raw_servers = new Set();
export async function closeRawBackends() {
  await Promise.all([...raw_servers].map((s) => s.close()));
  raw_servers.clear();
}

// Formats one HTTP/1.1 chunk.
export function chunk(text) {
  const b = Buffer.from(text);
  return Buffer.concat([Buffer.from(b.length.toString(16) + '\r\n'), b, Buffer.from('\r\n')]);
}

// ---------------------------------------------------------------------------
// Assertions shared by the suites
// ---------------------------------------------------------------------------

// The OpenAI error shape, exactly: {"error":{"message":str,"type":str,"param":str|null,"code":str|null}}
export function errorShapeProblems(body) {
  const problems = [];
  if (!body || typeof body !== 'object' || Array.isArray(body)) return ['body is not a JSON object'];
  const top = Object.keys(body).sort();
  if (top.join(',') !== 'error') problems.push(`top-level keys are [${top}] not [error]`);
  const e = body.error;
  if (!e || typeof e !== 'object' || Array.isArray(e)) return [...problems, 'error is not an object'];
  const keys = Object.keys(e).sort();
  if (keys.join(',') !== 'code,message,param,type') problems.push(`error keys are [${keys}] not [code,message,param,type]`);
  if (typeof e.message !== 'string' || e.message.length === 0) problems.push('message is not a non-empty string');
  if (typeof e.type !== 'string' || e.type.length === 0) problems.push('type is not a non-empty string');
  if (!(e.param === null || typeof e.param === 'string')) problems.push('param is not string|null');
  if (!(e.code === null || typeof e.code === 'string')) problems.push('code is not string|null');
  return problems;
}

// Expected mocknode text for C tokens: "[NAME]", " lorem", " ipsum", " dolor", ...
// Only the first four tokens are spelled out by the contract, so callers keep C <= 4
// when they need the exact text.
export function mockText(name, count) {
  const words = [`[${name}]`, ' lorem', ' ipsum', ' dolor'];
  if (count > words.length) throw new Error('mockText: only the first 4 tokens are specified');
  return words.slice(0, count).join('');
}

// P = ceil(chars of all message contents / 4) + 3 * number of messages (at least 1)
export function mockPromptTokens(messages) {
  const chars = messages.reduce((n, m) => n + String(m.content).length, 0);
  return Math.max(1, Math.ceil(chars / 4) + 3 * messages.length);
}

// Parses SSE event data as JSON where possible.
export function parseEvents(events) {
  return events.map((e) => {
    if (e.data === '[DONE]') return { done: true, t: e.t, data: e.data };
    try { return { json: JSON.parse(e.data), t: e.t, data: e.data }; } catch { return { bad: true, t: e.t, data: e.data }; }
  });
}

// Inference calls a node received (chat + completions + embeddings), from /_mock/stats.
// Counting these rather than `requests` keeps assertions true if the gateway also
// probes the node (e.g. GET /v1/models health checks).
export function apiCalls(stats) {
  const p = stats?.by_path ?? {};
  return (p['/v1/chat/completions'] ?? 0) + (p['/v1/completions'] ?? 0) + (p['/v1/embeddings'] ?? 0);
}

// Chat completion calls a node received, from /_mock/stats (probes are GET /v1/models).
export function chatCalls(stats) {
  return stats?.by_path?.['/v1/chat/completions'] ?? 0;
}

// ---------------------------------------------------------------------------
// Admin listener
// ---------------------------------------------------------------------------

// Settings for a gateway's admin listener on a free loopback port, and a client for it:
//   const admin = await adminListener();
//   const gw = await startGateway({ ...admin.config, backends });
//   await admin.backends()            -> the "backends" array of GET /admin/backends
//   await admin.backend('node-a')     -> one entry (throws when absent)
export async function adminListener({ key = 'admin-key-for-tests-0123456789' } = {}) {
  const port = await freePort();
  const url = `http://${HOST}:${port}`;
  const admin = {
    url,
    key,
    config: { admin_listen: `${HOST}:${port}`, admin_key: key },
    get: (p, opts = {}) => get(url + p, { key, ...opts }),
    async backends() {
      const r = await get(url + '/admin/backends', { key });
      if (r.status !== 200) throw new Error(`GET /admin/backends -> ${r.status}: ${r.text}`);
      return r.json.backends;
    },
    async backend(name) {
      const b = (await admin.backends()).find((x) => x.name === name);
      if (!b) throw new Error(`backend ${name} is not in /admin/backends`);
      return b;
    },
  };
  return admin;
}

// ---------------------------------------------------------------------------
// A tiny JSON document server (e.g. a prices feed) whose document can be swapped
// ---------------------------------------------------------------------------

// `doc` is an object (sent as JSON), a string (sent as is), or a function of the request
// path returning either. Resolves with {url, port, hits, hitsFor(path), set(doc)}; closed by cleanup().
export async function startJsonServer(doc) {
  let current = doc;
  const state = { hits: 0, by_path: new Map(), auth: [] };
  const srv = http.createServer((req, res) => {
    state.hits++;
    state.auth.push({ path: req.url, authorization: req.headers.authorization ?? null });
    state.by_path.set(req.url, (state.by_path.get(req.url) ?? 0) + 1);
    const d = typeof current === 'function' ? current(req.url) : current;
    const body = typeof d === 'string' ? d : JSON.stringify(d);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  srv.keepAliveTimeout = 1000;
  srv.listen(0, HOST);
  await once(srv, 'listening');
  const { port } = srv.address();
  const server = {
    url: `http://${HOST}:${port}`,
    port,
    get hits() { return state.hits; },
    hitsFor: (p) => state.by_path.get(p) ?? 0,
    // The Authorization header of every request to path p (null where there was none).
    authorizationsFor: (p) => state.auth.filter((a) => a.path === p).map((a) => a.authorization),
    set(next) { current = next; },
    close() {
      srv.closeAllConnections?.();
      return new Promise((resolve) => srv.close(() => resolve()));
    },
  };
  raw_servers.add(server);
  return server;
}
