// The gateway's memory before and after bursts of connections (issue 13 item 6): steady
// keep-alive traffic, then BURST (2000) streamed and whole chats at once, each on a connection
// of its own, ROUNDS (2) times, with smaps_rollup read after each quiet period; steady traffic
// again at the end. TRIM=1 also calls malloc_trim(0) in the gateway through gdb after each
// burst (what the heap could give back); LOGLEVEL=debug prints the gateway's memory_trimmed
// lines. RESTART=1 SIGKILLs Redis during the first burst.
//   TOLLGATE_BUILD=build node tools/soak/burst.mjs
import fs from 'node:fs';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { startMocknode, startGateway, backendFor, cleanup, post } from '../../tests/lib/harness.mjs';
import { startRedis } from '../../tests/lib/redis.mjs';

let PID = 0;
const N = Number(process.env.BURST ?? 2000);
const RESTART = process.env.RESTART === '1';
function rollup(pid) {
  const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const g = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0);
  return { rss: g('Rss'), anon: g('Anonymous'), pd: g('Private_Dirty') };
}
const fmt = (r) => `fds ${fs.readdirSync(`/proc/${PID}/fd`).length} Rss ${(r.rss/1024).toFixed(1)} MiB anon ${(r.anon/1024).toFixed(1)} MiB`;
function one(port, i, stream, close) {
  return new Promise((resolve) => {
    const body = JSON.stringify({ model: 'llama', stream, temperature: 0.7, messages: [{ role: 'user', content: 'hello ' + i }] });
    const req = http.request({ host: '127.0.0.1', port, path: '/v1/chat/completions', method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-burst-key-0123456789', connection: close ? 'close' : 'keep-alive', 'content-length': Buffer.byteLength(body) } },
      (res) => { res.on('data', () => {}); res.on('end', () => resolve(res.statusCode)); res.on('error', () => resolve(-1)); });
    req.on('error', () => resolve(-2));
    req.setTimeout(30000, () => { req.destroy(); resolve(-3); });
    req.end(body);
  });
}
try {
  const redis = await startRedis();
  const nodes = [];
  for (const n of ['a', 'b']) nodes.push(await startMocknode({ name: 'node-' + n, models: ['llama'], tokens: 12, tokenMs: 15, ttfbMs: 10 }));
  const gw = await startGateway({ workers: 2, log_level: process.env.LOGLEVEL ?? 'warn', redis: { url: redis.url },
    keys: [{ name: 'burst', key: 'sk-burst-key-0123456789' }],
    backends: nodes.map((m) => backendFor(m)), cache: { mode: 'deterministic', max_bytes: 262144 } });
  const pid = gw.proc.pid; PID = pid;
  // steady warm-up
  for (let k = 0; k < 10; k++) await Promise.all(Array.from({ length: 50 }, (_, i) => one(gw.port, k * 50 + i, i % 2 === 0, false)));
  await sleep(2000);
  const r0 = rollup(pid); console.log('after warm-up   ', fmt(r0));
  for (let round = 1; round <= Number(process.env.ROUNDS ?? 2); round++) {
    const t0 = Date.now();
    const ps = Array.from({ length: N }, (_, i) => one(gw.port, 100000 + round * N + i, i % 2 === 0, true));
    if (RESTART) { await sleep(200); await redis.proc.kill('SIGKILL'); }
    const peak = rollup(pid);
    const st = await Promise.all(ps);
    const hist = {}; for (const s of st) hist[s] = (hist[s] ?? 0) + 1;
    console.log(`burst ${round}: ${N} in ${Date.now() - t0} ms`, JSON.stringify(hist), 'during:', fmt(peak));
    if (RESTART) { console.log('(redis was killed; not restarted in this experiment)'); }
    await sleep(Number(process.env.QUIET_MS ?? 3000));
    console.log(`after burst ${round} + quiet`, fmt(rollup(pid)));
    await sleep(Number(process.env.QUIET2_MS ?? 12000));
    console.log(`after burst ${round} + longer quiet`, fmt(rollup(pid)));
    if (process.env.TRIM === '1') {
      const { execFileSync } = await import('node:child_process');
      execFileSync('gdb', ['-p', String(pid), '-batch', '-ex', 'call (int)malloc_trim(0)'], { stdio: 'ignore' });
      console.log(`after burst ${round} + malloc_trim`, fmt(rollup(pid)));
    }
  }
  // steady again
  for (let k = 0; k < 10; k++) await Promise.all(Array.from({ length: 50 }, (_, i) => one(gw.port, 900000 + k * 50 + i, i % 2 === 0, false)));
  await sleep(2000);
  console.log('after steady    ', fmt(rollup(pid)));
  if (process.env.LOGLEVEL) for (const l of gw.logs.stdout) if (l.includes('memory_trimmed')) console.log(l);
} finally { await cleanup(); }
