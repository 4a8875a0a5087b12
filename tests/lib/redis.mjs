// A throwaway redis-server on a free loopback port, and a tiny RESP client, for the tests that
// need a real Redis next to the gateway (optionally with a password and a non-zero db, so that
// AUTH and SELECT are exercised). Stopped by the caller (stop()).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, makeTempDir, waitFor } from './harness.mjs';


export function respEncode(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.from(String(a));
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

// One RESP2 value at buf[i..]: [value, next index], or null when incomplete.
export function respParse(buf, i = 0) {
  const nl = buf.indexOf('\r\n', i);
  if (nl < 0) return null;
  const type = String.fromCharCode(buf[i]);
  const line = buf.toString('utf8', i + 1, nl);
  switch (type) {
    case '+': return [line, nl + 2];
    case '-': return [new Error(line), nl + 2];
    case ':': return [Number(line), nl + 2];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, nl + 2];
      if (buf.length < nl + 2 + n + 2) return null;
      return [buf.toString('utf8', nl + 2, nl + 2 + n), nl + 4 + n];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, nl + 2];
      const out = [];
      let j = nl + 2;
      for (let k = 0; k < n; k++) {
        const r = respParse(buf, j);
        if (!r) return null;
        out.push(r[0]);
        j = r[1];
      }
      return [out, j];
    }
    default: throw new Error(`bad RESP type ${type}`);
  }
}

export async function redisClient(port, { db = 0, pass } = {}) {
  const sock = net.connect(port, '127.0.0.1');
  await once(sock, 'connect');
  let buf = Buffer.alloc(0);
  const waiters = [];
  const pushes = [];
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const r = respParse(buf);
      if (!r) break;
      buf = buf.subarray(r[1]);
      const w = waiters.shift();
      if (w) w(r[0]); else pushes.push(r[0]);
    }
  });
  sock.on('error', () => {});
  const client = {
    pushes,
    call(...args) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`redis ${args[0]}: no reply in 5 s`)), 5000);
        waiters.push((v) => { clearTimeout(timer); v instanceof Error ? reject(v) : resolve(v); });
        sock.write(respEncode(args));
      });
    },
    close() { sock.destroy(); },
  };
  if (pass) await client.call('AUTH', pass);
  if (db) await client.call('SELECT', db);
  return client;
}

export async function startRedis({ pass, db = 0 } = {}) {
  const dir = await makeTempDir('tollgate-redis-');
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--save', '', '--appendonly', 'no', '--databases', '16', ...(pass ? ['--requirepass', pass] : [])],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = [];
  proc.stdout.on('data', (d) => out.push(String(d)));
  proc.stderr.on('data', (d) => out.push(String(d)));
  const failed = new Promise((_, reject) => {
    proc.once('error', reject);
    proc.once('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out.join('')}`)));
  });
  failed.catch(() => {});
  const client = await Promise.race([failed, waitFor(async () => {
    const c = await redisClient(port, { db, pass });
    return (await c.call('PING')) === 'PONG' ? c : (c.close(), null);
  }, { timeoutMs: 10000, what: 'redis-server to answer PING' })]);
  return {
    port,
    proc,
    client,
    url: `redis://${pass ? `:${pass}@` : ''}127.0.0.1:${port}/${db}`,
    async stop() {
      client.close();
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = once(proc, 'exit');
      proc.kill('SIGKILL');
      await Promise.race([gone, sleep(3000)]);
    },
  };
}
