// A misbehaving inference node for the hardening tests: a raw loopback TCP server that reads
// one HTTP request per connection and answers it the way the current behaviour says, however
// broken that is (huge or endless bodies, drips, garbage SSE, redirects, gzip bombs, enormous
// headers, cuts). Health probes (GET …/models) get a normal answer unless the behaviour takes
// them too, so the gateway keeps the node in rotation and the test decides what it sees.
//
//   const node = await startHostile({ name: 'h1', models: ['m'] });
//   node.behave(behaviours.hugeAnswer({ bytes: 32 << 20 }));
//   ... node.calls (inference requests seen: method, path, headers, body, t when it came,
//   tClosed when its connection closed), node.connections, node.close()
//
// And a trap: a listener that must never be reached (a redirect's target, say).
//
//   const trap = await startTrap();  ... assert.equal(trap.connections, 0)
import net from 'node:net';
import { once } from 'node:events';
import zlib from 'node:zlib';

const HOST = '127.0.0.1';
const live = new Set();

// Closes every hostile node and trap still open (safe to call many times).
export async function closeHostiles() {
  await Promise.all([...live].map((s) => s.close()));
}

function parse_head(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const [method, target] = lines[0].split(' ');
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { end, method, path: target, headers };
}

// Writes as fast as the socket takes it, from a generator of Buffers, until it is done or
// the socket goes away; resolves true when everything was written.
export async function pump(sock, gen) {
  for (const piece of gen) {
    if (sock.destroyed) return false;
    if (!sock.write(piece)) {
      const ok = await new Promise((resolve) => {
        const done = (v) => () => { sock.off('drain', on_drain); sock.off('close', on_close); resolve(v); };
        const on_drain = done(true);
        const on_close = done(false);
        sock.on('drain', on_drain);
        sock.on('close', on_close);
      });
      if (!ok) return false;
    }
  }
  return !sock.destroyed;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- wire helpers -------------------------------------------------------------------------

export function head(status, headers = {}, reason = 'X') {
  let h = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (const [k, v] of Object.entries(headers)) h += `${k}: ${v}\r\n`;
  return Buffer.from(h + '\r\n', 'latin1');
}

export function chunk(b) {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b);
  return Buffer.concat([Buffer.from(buf.length.toString(16) + '\r\n'), buf, Buffer.from('\r\n')]);
}

export const LAST_CHUNK = Buffer.from('0\r\n\r\n');

export function sendJson(sock, status, doc, extra = {}) {
  const body = Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc));
  sock.write(head(status, { 'content-type': 'application/json', 'content-length': body.length,
    connection: 'close', ...extra }));
  sock.end(body);
}

// A plausible chat answer (the model the request named, unless `model` says otherwise).
export function chatAnswer(req, { content = 'hello', model, usage, choices } = {}) {
  return {
    id: 'chatcmpl-hostile', object: 'chat.completion', created: 1, model: model ?? req.body?.model ?? 'x',
    choices: choices ?? [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: usage ?? { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
  };
}

export function chatChunk(req, delta, { finish = null, model } = {}) {
  return { id: 'chatcmpl-hostile', object: 'chat.completion.chunk', created: 1,
    model: model ?? req.body?.model ?? 'x', choices: [{ index: 0, delta, finish_reason: finish }] };
}

export const sse = (doc) => `data: ${typeof doc === 'string' ? doc : JSON.stringify(doc)}\n\n`;

export function sseHead(extra = {}) {
  return head(200, { 'content-type': 'text/event-stream', 'transfer-encoding': 'chunked',
    connection: 'close', ...extra });
}

// ---- behaviours: each is (sock, req, node) => void, writing whatever it likes ----------------

export const behaviours = {
  // A well-behaved node (whole or streamed, from the request's "stream").
  ok({ content = 'hello', usage } = {}) {
    return (sock, req) => {
      if (!req.body?.stream) return sendJson(sock, 200, chatAnswer(req, { content, usage }));
      sock.write(sseHead());
      sock.write(chunk(sse(chatChunk(req, { role: 'assistant', content }))));
      sock.write(chunk(sse(chatChunk(req, {}, { finish: 'stop' }))));
      if (req.body?.stream_options?.include_usage)
        sock.write(chunk(sse({ id: 'c', object: 'chat.completion.chunk', choices: [],
          usage: usage ?? { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } })));
      sock.write(chunk(sse('[DONE]')));
      sock.end(LAST_CHUNK);
    };
  },

  // A whole answer `bytes` long (Content-Length set) with the usage the node claims: its one
  // content string takes the bytes, or (numbers: true) a side array of small integers does,
  // the shape that costs a JSON tree most memory per byte.
  hugeAnswer({ bytes, usage, numbers = false } = {}) {
    return (sock, req) => {
      const doc = chatAnswer(req, { content: numbers ? 'hi' : '@@FILL@@', usage });
      if (numbers) doc.logprobs_junk = '@@FILL@@';
      const [pre, post] = JSON.stringify(doc).split(numbers ? '"@@FILL@@"' : '@@FILL@@');
      let before = Buffer.from(numbers ? pre + '[1' : pre);
      const after = Buffer.from(numbers ? ']' + post : post);
      let fill = bytes - before.length - after.length;
      if (numbers && fill % 2) { // whole ",1" pairs only
        before = Buffer.concat([before, Buffer.from(' ')]);
        fill--;
      }
      const total = before.length + fill + after.length;
      sock.write(head(200, { 'content-type': 'application/json', 'content-length': total, connection: 'close' }));
      const piece = numbers ? Buffer.from(',1'.repeat(32 << 10)) : Buffer.alloc(64 << 10, 'a');
      pump(sock, (function* () {
        yield before;
        for (let left = fill; left > 0; left -= piece.length)
          yield left >= piece.length ? piece : piece.subarray(0, left);
        yield after;
      })()).then((ok) => ok && sock.end());
    };
  },

  // A body that never ends: chunked JSON bytes (whole) or SSE content events (streams), as
  // fast as the gateway takes them.
  endless() {
    return (sock, req) => {
      if (req.body?.stream) {
        sock.write(sseHead());
        const ev = chunk(sse(chatChunk(req, { content: 'x'.repeat(200) })));
        const many = Buffer.concat(Array(64).fill(ev));
        pump(sock, (function* () { for (;;) yield many; })());
      } else {
        sock.write(head(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked', connection: 'close' }));
        const piece = chunk(Buffer.alloc(64 << 10, ' '));
        pump(sock, (function* () { yield chunk('{"a":'); for (;;) yield piece; })());
      }
    };
  },

  // One byte every `ms`, of a proper answer (whole or streamed), forever or until done.
  drip({ ms = 1000 } = {}) {
    return async (sock, req) => {
      const body = req.body?.stream
        ? Buffer.from(': x\n\n' + sse(chatChunk(req, { content: 'hi' })) + sse('[DONE]'))
        : Buffer.from(JSON.stringify(chatAnswer(req)));
      sock.write(head(200, { 'content-type': req.body?.stream ? 'text/event-stream' : 'application/json',
        'content-length': body.length, connection: 'close' }));
      for (const b of body) {
        if (sock.destroyed) return;
        sock.write(Buffer.from([b]));
        await sleep(ms);
      }
      sock.end();
    };
  },

  // A stream whose first event is not JSON (or not SSE at all).
  garbageSse({ text = 'data: {"choices": [nope\n\n' } = {}) {
    return (sock) => {
      sock.write(sseHead());
      sock.write(chunk(text));
      sock.end(LAST_CHUNK);
    };
  },

  // A stream that is one line with no end, `bytes` long (or endless with bytes: Infinity).
  giantLine({ bytes = Infinity } = {}) {
    return (sock) => {
      sock.write(sseHead());
      const piece = chunk(Buffer.alloc(64 << 10, 'a'));
      pump(sock, (function* () {
        yield chunk('data: ');
        for (let sent = 0; sent < bytes; sent += 64 << 10) yield piece;
      })()).then((ok) => ok && sock.end(LAST_CHUNK));
    };
  },

  // A redirect to somewhere else (which must never be followed).
  redirect({ location, status = 307 } = {}) {
    return (sock) => {
      const body = Buffer.from('{"moved":true}');
      sock.write(head(status, { location, 'content-type': 'application/json',
        'content-length': body.length, connection: 'close' }));
      sock.end(body);
    };
  },

  // A small gzip body that inflates to `inflated` bytes (must never be decompressed).
  gzipBomb({ inflated = 256 << 20 } = {}) {
    const bomb = zlib.gzipSync(Buffer.alloc(inflated, 0), { level: 9 });
    return (sock, req) => {
      if (req.body?.stream) {
        sock.write(sseHead({ 'content-encoding': 'gzip' }));
        sock.write(chunk(bomb));
        sock.end(LAST_CHUNK);
        return;
      }
      sock.write(head(200, { 'content-type': 'application/json', 'content-encoding': 'gzip',
        'content-length': bomb.length, connection: 'close' }));
      sock.end(bomb);
    };
  },

  // `count` headers of `size` bytes each, then a proper answer.
  hugeHeaders({ count = 1, size = 1 << 20 } = {}) {
    return (sock, req) => {
      const body = Buffer.from(JSON.stringify(chatAnswer(req)));
      let h = 'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n';
      for (let i = 0; i < count; i++) h += `x-junk-${i}: ${'j'.repeat(size)}\r\n`;
      h += `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
      pump(sock, [Buffer.from(h), body][Symbol.iterator]()).then((ok) => ok && sock.end());
    };
  },

  // Headers, then the connection is cut (no body, or part of one).
  closeAfterHeaders({ stream = false, length = 1000 } = {}) {
    return (sock) => {
      sock.write(stream ? sseHead()
        : head(200, { 'content-type': 'application/json', 'content-length': length, connection: 'close' }));
      setTimeout(() => sock.destroy(), 20);
    };
  },

  // An SSE comment (a keep-alive ping), then the connection dies.
  commentThenDie({ comment = ': ping\n\n', afterMs = 50 } = {}) {
    return (sock) => {
      sock.write(sseHead());
      sock.write(chunk(comment));
      setTimeout(() => sock.destroy(), afterMs);
    };
  },

  // A whole answer with the usage the node claims (absurd, negative, not numbers ...).
  usage({ usage, content = 'hi' } = {}) {
    return (sock, req) => {
      if (!req.body?.stream) return sendJson(sock, 200, chatAnswer(req, { content, usage }));
      sock.write(sseHead());
      sock.write(chunk(sse(chatChunk(req, { role: 'assistant', content }, { finish: 'stop' }))));
      sock.write(chunk(sse({ id: 'c', object: 'chat.completion.chunk', choices: [], usage })));
      sock.write(chunk(sse('[DONE]')));
      sock.end(LAST_CHUNK);
    };
  },

  // A proper answer that names another model.
  otherModel({ model = 'some-other-model' } = {}) {
    return (sock, req) => {
      if (!req.body?.stream) return sendJson(sock, 200, chatAnswer(req, { model }));
      sock.write(sseHead());
      sock.write(chunk(sse(chatChunk(req, { content: 'hi' }, { finish: 'stop', model }))));
      sock.write(chunk(sse('[DONE]')));
      sock.end(LAST_CHUNK);
    };
  },

  // Nothing at all for `ms` (headers included), then behaviour `then`.
  slowFirstByte({ ms, then = behaviours.ok() } = {}) {
    return (sock, req, node) => {
      const t = setTimeout(() => { if (!sock.destroyed) then(sock, req, node); }, ms);
      sock.on('close', () => clearTimeout(t));
    };
  },

  // A whole answer with "choices": [] (nothing generated), or a stream of only [DONE].
  noChoices() {
    return (sock, req) => {
      if (!req.body?.stream) return sendJson(sock, 200, chatAnswer(req, { choices: [] }));
      sock.write(sseHead());
      sock.write(chunk(sse('[DONE]')));
      sock.end(LAST_CHUNK);
    };
  },

  // Raw bytes as they are.
  raw(bytes) {
    return (sock) => sock.end(bytes);
  },
};

// ---- the node -------------------------------------------------------------------------------

export async function startHostile({ name = 'hostile', models = ['m'], behaviour = behaviours.ok() } = {}) {
  let current = behaviour;
  const sockets = new Set();
  const node = {
    name, calls: [], probes: 0, connections: 0, bytesIn: 0,
    behave(b) { current = b; },
  };
  const srv = net.createServer((sock) => {
    node.connections++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let handled = false;
    sock.on('data', (d) => {
      node.bytesIn += d.length;
      if (handled) return;
      buf = Buffer.concat([buf, d]);
      const h = parse_head(buf);
      if (!h) return;
      const len = Number(h.headers['content-length'] ?? 0);
      if (buf.length < h.end + 4 + len) return;
      handled = true;
      const text = buf.subarray(h.end + 4, h.end + 4 + len).toString('utf8');
      let body = null;
      try { body = JSON.parse(text); } catch { /* keep null */ }
      const req = { method: h.method, path: h.path, headers: h.headers, body, t: performance.now(), tClosed: null };
      sock.on('close', () => { req.tClosed = performance.now(); });
      if (h.method === 'GET' && /\/models$/.test(h.path)) {
        node.probes++;
        return sendJson(sock, 200, { object: 'list',
          data: models.map((id) => ({ id, object: 'model', created: 1, owned_by: name })) });
      }
      node.calls.push(req);
      try { current(sock, req, node); } catch { sock.destroy(); }
    });
  });
  srv.listen(0, HOST);
  await once(srv, 'listening');
  const { port } = srv.address();
  Object.assign(node, {
    port, url: `http://${HOST}:${port}`, v1: `http://${HOST}:${port}/v1`,
    close() {
      live.delete(node);
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => srv.close(() => resolve()));
    },
  });
  live.add(node);
  return node;
}

// A listener nothing should ever reach: counts connections and answers none.
export async function startTrap() {
  const sockets = new Set();
  const trap = { connections: 0 };
  const srv = net.createServer((sock) => {
    trap.connections++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    sock.destroy();
  });
  srv.listen(0, HOST);
  await once(srv, 'listening');
  const { port } = srv.address();
  Object.assign(trap, {
    port, url: `http://${HOST}:${port}`,
    close() {
      live.delete(trap);
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => srv.close(() => resolve()));
    },
  });
  live.add(trap);
  return trap;
}

// The resident set of a process, in bytes (Linux /proc).
export async function rssBytes(pid) {
  const { readFile } = await import('node:fs/promises');
  const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

// CPU seconds (user + system) a process has used so far (Linux /proc).
export async function cpuSeconds(pid) {
  const { readFile } = await import('node:fs/promises');
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}
