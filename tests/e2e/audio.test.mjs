// Audio uploads with the official openai SDK, unmodified: audio.transcriptions.create and
// audio.translations.create send multipart/form-data (the file before the model), which the
// gateway spools (memory, then an unlinked temporary file), scans, routes by the model and
// sends on from the spool. Billed per second of audio as the node reports it (or tokens at the
// token prices), clamped to what the file can hold; a failing node is failed over with the
// spool replayed; 413 over max_upload_bytes; 400 for a malformed body; the gateway's memory does
// not grow by the file's size while a 20 MiB upload is in flight; every request is in the
// ledger exactly once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import OpenAI, { toFile } from 'openai';
import { startMocknode, startGateway, cleanup, waitFor } from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

const KEY = 'sk-e2e-audio';
const NODE_BYTES_PER_SECOND = 16000; // what the mock hears (tools/mocknode/media.c)
const MIN_BYTES_PER_SECOND = 500; // the gateway's clamp (openai/media.h)
const models = (perSecond, input, output) => [
  { name: 'whisper-1', upstream: 'whisper-node', input_usd_per_mtok: 0, output_usd_per_mtok: 0,
    usd_per_audio_second: perSecond },
  { name: 'gpt-4o-transcribe', input_usd_per_mtok: input, output_usd_per_mtok: output },
];
const nodeModels = ['whisper-node', 'gpt-4o-transcribe'];
let redis;
let cheap;
let dear;
let client;
let liarClient;
let smallCapClient;
let hangGw;
let hangClient;
let hanger;
const requestIds = new Set();

const audio = (bytes, seed = 7) => {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (i * 131 + seed) & 0xff;
  return b;
};
const costOf = (response) => Number(response.headers.get('x-tollgate-cost-usd'));
const near = (a, b) => Math.abs(a - b) <= 1e-9 + 1e-9 * Math.abs(b);

before(async () => {
  redis = await startRedis();
  let liar;
  [cheap, dear, liar, hanger] = await Promise.all([
    startMocknode({ name: 'cheap', models: nodeModels, quiet: true }),
    startMocknode({ name: 'dear', models: nodeModels, quiet: true }),
    startMocknode({ name: 'liar', models: nodeModels, fault: 'inflate-usage', quiet: true }),
    startMocknode({ name: 'hanger', models: nodeModels, fault: 'hang', quiet: true }),
  ]);
  const fetchTracked = async (url, init) => {
    const res = await fetch(url, init);
    if (res.headers.get('x-request-id')) requestIds.add(res.headers.get('x-request-id'));
    return res;
  };
  const gw = await startGateway({
    log_level: 'warn',
    workers: 1,
    redis: { url: redis.url },
    health: { interval_ms: 60000 },
    keys: [{ name: 'e2e-audio', key: KEY }],
    backends: [
      { name: 'cheap', url: cheap.v1, api_key: 'cheap-node-key', models: models(0.0001, 2.5, 10) },
      { name: 'dear', url: dear.v1, models: models(0.0002, 5, 20) },
    ],
  });
  const gwLiar = await startGateway({
    log_level: 'warn',
    keys: [{ name: 'e2e-audio', key: KEY }],
    backends: [{ name: 'liar', url: liar.v1, models: models(0.0001, 2.5, 10) }],
  });
  const gwSmall = await startGateway({
    log_level: 'warn',
    max_upload_bytes: 1 << 20,
    keys: [{ name: 'e2e-audio', key: KEY }],
    backends: [{ name: 'cheap', url: cheap.v1, models: models(0.0001, 2.5, 10) }],
  });
  hangGw = await startGateway({
    log_level: 'warn',
    workers: 1,
    keys: [{ name: 'e2e-audio', key: KEY }],
    backends: [{ name: 'hanger', url: hanger.v1, models: models(0.0001, 2.5, 10) }],
  });
  client = new OpenAI({ apiKey: KEY, baseURL: gw.v1, maxRetries: 0, fetch: fetchTracked });
  liarClient = new OpenAI({ apiKey: KEY, baseURL: gwLiar.v1, maxRetries: 0 });
  smallCapClient = new OpenAI({ apiKey: KEY, baseURL: gwSmall.v1, maxRetries: 0 });
  hangClient = new OpenAI({ apiKey: KEY, baseURL: hangGw.v1, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  await cleanup();
  await redis?.stop();
});

test('transcriptions.create: a small file, billed the seconds the node reported', async () => {
  const bytes = 48000;
  const { data, response } = await client.audio.transcriptions
    .create({ file: await toFile(audio(bytes), 'a.wav'), model: 'whisper-1' }).withResponse();
  assert.equal(data.text, 'Hello from the mock node.');
  assert.equal(data.usage.type, 'duration');
  assert.equal(data.usage.seconds, bytes / NODE_BYTES_PER_SECOND);
  assert.equal(response.headers.get('x-tollgate-backend'), 'cheap');
  assert.equal(response.headers.get('x-tollgate-model'), 'whisper-1');
  assert.ok(near(costOf(response), (bytes / NODE_BYTES_PER_SECOND) * 0.0001), `${costOf(response)}`);
  // The node was sent the file under its own name for the model (it knows no whisper-1), with
  // the caller's boundary and the backend's key.
  const stats = await cheap.stats();
  assert.equal(stats.last.path, '/v1/audio/transcriptions');
  assert.equal(stats.last.authorization, 'Bearer cheap-node-key');
});

test('transcriptions.create: a 3 MiB file (spooled to disk) as verbose_json', async () => {
  const bytes = 3 << 20;
  const { data, response } = await client.audio.transcriptions
    .create({ file: await toFile(audio(bytes, 3), 'long.mp3'), model: 'whisper-1',
      response_format: 'verbose_json', language: 'en' }).withResponse();
  assert.equal(data.duration, bytes / NODE_BYTES_PER_SECOND);
  assert.equal(data.task, 'transcribe');
  assert.ok(near(costOf(response), (bytes / NODE_BYTES_PER_SECOND) * 0.0001), `${costOf(response)}`);
});

test('a text answer is passed through and billed the seconds estimated from the file', async () => {
  const bytes = 32000;
  const { data, response } = await client.audio.transcriptions
    .create({ file: await toFile(audio(bytes), 'a.wav'), model: 'whisper-1', response_format: 'text' })
    .withResponse();
  assert.equal(data.trim(), 'Hello from the mock node.');
  assert.match(response.headers.get('content-type'), /^text\/plain/);
  assert.ok(near(costOf(response), (bytes / 16000) * 0.0001), `${costOf(response)}`);
});

test('usage in tokens is billed at the model token prices; translations too', async () => {
  const bytes = 48000;
  const { data, response } = await client.audio.transcriptions
    .create({ file: await toFile(audio(bytes), 'a.wav'), model: 'gpt-4o-transcribe' }).withResponse();
  assert.equal(data.usage.type, 'tokens');
  assert.equal(response.headers.get('x-tollgate-backend'), 'cheap'); // estimated in tokens too
  const expected = (data.usage.input_tokens * 2.5 + data.usage.output_tokens * 10) / 1e6;
  assert.ok(data.usage.input_tokens > 0);
  assert.ok(near(costOf(response), expected), `${costOf(response)} vs ${expected}`);
  const tr = await client.audio.translations
    .create({ file: await toFile(audio(bytes), 'a.wav'), model: 'whisper-1' }).withResponse();
  assert.equal(tr.data.text, 'Hello from the mock node.');
  assert.ok(near(costOf(tr.response), (bytes / NODE_BYTES_PER_SECOND) * 0.0001));
});

test('a failing node is failed over with the upload sent again, at the serving node price', async () => {
  await cheap.setConfig({ fault: 500 });
  try {
    const bytes = 600000; // past the spool's memory part
    const { data, response } = await client.audio.transcriptions
      .create({ file: await toFile(audio(bytes), 'a.wav'), model: 'whisper-1' }).withResponse();
    assert.equal(response.headers.get('x-tollgate-backend'), 'dear');
    assert.equal(data.usage.seconds, bytes / NODE_BYTES_PER_SECOND);
    assert.ok(near(costOf(response), (bytes / NODE_BYTES_PER_SECOND) * 0.0002));
  } finally {
    await cheap.setConfig({ fault: 'none' });
  }
});

test('a node that reports more seconds than the file can hold is clamped and counted', async () => {
  const bytes = 48000;
  const { data, response } = await liarClient.audio.transcriptions
    .create({ file: await toFile(audio(bytes), 'a.wav'), model: 'whisper-1' }).withResponse();
  assert.equal(data.usage.seconds, 1000 * bytes / NODE_BYTES_PER_SECOND); // passed through as sent
  const bound = Math.floor(bytes / MIN_BYTES_PER_SECOND);
  assert.ok(near(costOf(response), bound * 0.0001), `${costOf(response)}`);
  const metrics = await (await fetch(liarClient.baseURL.replace(/\/v1$/, '') + '/metrics')).text();
  assert.match(metrics, /tollgate_backend_usage_clamped_total\{backend="liar"\} 1/);
  assert.match(metrics, /tollgate_requests_total\{route="audio_transcriptions",model="whisper-1",status="200"\} 1/);
});

test('an upload over max_upload_bytes is refused with 413', async () => {
  await assert.rejects(
    smallCapClient.audio.transcriptions.create({ file: await toFile(audio(2 << 20), 'big.wav'), model: 'whisper-1' }),
    (e) => e.status === 413 && e.code === 'request_too_large');
  // Chunked (no Content-Length): read to its end, spooled no further than the cap, then 413.
  const boundary = 'chunked-upload-boundary';
  const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n`;
  const body = new ReadableStream({
    start(ctrl) {
      ctrl.enqueue(new TextEncoder().encode(head));
      for (let i = 0; i < 32; i++) ctrl.enqueue(audio(64 << 10, i));
      ctrl.enqueue(new TextEncoder().encode(`\r\n--${boundary}--\r\n`));
      ctrl.close();
    },
  });
  const res = await fetch(smallCapClient.baseURL + '/audio/transcriptions', {
    method: 'POST', body, duplex: 'half',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': `multipart/form-data; boundary=${boundary}` },
  });
  assert.equal(res.status, 413);
  assert.equal((await res.json()).error.code, 'request_too_large');
  // The connection is not left broken: the next request is served.
  const ok = await smallCapClient.audio.transcriptions.create({ file: await toFile(audio(1000), 'a.wav'), model: 'whisper-1' });
  assert.equal(ok.text, 'Hello from the mock node.');
});

test('malformed multipart, a missing file or model, stream: 400 OpenAI errors', async () => {
  const url = client.baseURL + '/audio/transcriptions';
  const headers = { authorization: `Bearer ${KEY}` };
  const send = async (body, contentType) => {
    const res = await fetch(url, { method: 'POST', headers: { ...headers, 'content-type': contentType }, body });
    requestIds.add(res.headers.get('x-request-id'));
    return { status: res.status, body: await res.json() };
  };
  let r = await send('--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nxx', 'multipart/form-data; boundary=b');
  assert.equal(r.status, 400);
  assert.match(r.body.error.message, /closing boundary/);
  r = await send('{"model":"whisper-1"}', 'application/json');
  assert.equal(r.status, 400);
  r = await send('--b\r\nno colon here\r\n\r\nxx\r\n--b--', 'multipart/form-data; boundary=b');
  assert.equal(r.status, 400);
  assert.equal(r.body.error.type, 'invalid_request_error');

  await assert.rejects(client.audio.transcriptions.create({ file: await toFile(audio(100), 'a.wav') }),
    (e) => e.status === 400 && e.param === 'model' && e.code === 'missing_required_parameter');
  const form = new FormData();
  form.append('model', 'whisper-1');
  const res = await fetch(url, { method: 'POST', headers, body: form });
  requestIds.add(res.headers.get('x-request-id'));
  const body = await res.json();
  assert.equal(res.status, 400);
  assert.equal(body.error.param, 'file');
  assert.equal(body.error.code, 'missing_required_parameter');
  await assert.rejects(client.audio.transcriptions.create({ file: await toFile(audio(100), 'a.wav'), model: 'whisper-1', stream: true }),
    (e) => e.status === 400 && e.param === 'stream');
  await assert.rejects(client.audio.transcriptions.create({ file: await toFile(audio(100), 'a.wav'), model: 'nope' }),
    (e) => e.status === 404 && e.code === 'model_not_found');
});

const rssKiB = async (pid) => {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
};

test('the gateway memory does not grow by the file size while a 20 MiB upload is in flight', async (t) => {
  const pid = hangGw.proc.pid;
  const before = await rssKiB(pid);
  const bytes = 20 << 20;
  const file = await toFile(audio(bytes, 11), 'big.wav');
  const ctrl = new AbortController();
  const pending = hangClient.audio.transcriptions
    .create({ file, model: 'whisper-1' }, { signal: ctrl.signal })
    .catch((e) => e);
  // The whole upload went through the gateway once the node has it (and parks on it).
  await waitFor(async () => ((await hanger.stats()).by_path?.['/v1/audio/transcriptions'] ?? 0) >= 1,
    { timeoutMs: 30000, what: 'the node to receive the whole upload' });
  const during = await rssKiB(pid);
  ctrl.abort();
  await pending;
  const grownMiB = (during - before) / 1024;
  t.diagnostic(`gateway RSS ${before} KiB before, ${during} KiB with the upload in flight`);
  assert.ok(grownMiB < 8, `RSS grew ${grownMiB.toFixed(1)} MiB for a 20 MiB upload (${before} -> ${during} KiB)`);
});

test('every request is in the ledger exactly once', async () => {
  requestIds.delete(null);
  const byId = await waitFor(async () => {
    const rows = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
    const m = new Map();
    for (const [, f] of rows) {
      const o = {};
      for (let i = 0; i < f.length; i += 2) o[f[i]] = f[i + 1];
      m.set(o.id, [...(m.get(o.id) ?? []), o]);
    }
    return [...requestIds].every((id) => m.has(id)) ? m : null;
  }, { timeoutMs: 15000, what: 'the ledger to hold every request' });
  let billed = 0;
  for (const id of requestIds) {
    assert.equal(byId.get(id).length, 1, id);
    billed += Number(byId.get(id)[0].cost_usd) > 0;
  }
  assert.ok(billed >= 6, `${billed} billed records`);
});
