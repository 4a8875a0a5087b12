// The load generator: open-loop arrivals (a request goes out at its time in the trace whether or
// not earlier ones were answered) against the gateway, each with a client timeout. It runs in
// its own worker thread, so what the nodes do never delays an arrival or a latency reading.
// Per request it records the status, latency, time to first byte, the gateway's backend and
// cost headers, the usage the answer carried and whether a stream ended properly.

import http from 'node:http';
import { parentPort, workerData } from 'node:worker_threads';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { makeClock } from './clock.mjs';
import { buildBody } from './trace.mjs';

// Sends the trace; resolves with the records when every request has ended, or when the last
// one has had its client timeout plus `graceMs` (those still open are cut and say "aborted").
export function runLoad({ world, trace, port, key, clock, graceMs = 5000 }) {
    const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, keepAliveMsecs: 1000 });
    const timeoutMs = world.load.client_timeout_ms;
    const records = new Array(trace.length);
    const open = new Set();
    let sent = 0, ended = 0;
    return new Promise((resolve) => {
        let finished = false;
        const done = () => {
            if (finished) return;
            finished = true;
            clearTimeout(hardStop);
            for (const o of [...open]) o.abort();
            agent.destroy();
            resolve(records);
        };
        const lastT = trace.length ? trace[trace.length - 1].t : 0;
        const hardStop = setTimeout(done, Math.max(0, clock.untilMs(lastT + timeoutMs + graceMs)));
        const send = (req) => {
            const rec = { idx: req.idx, sched: req.t, sent: clock.now(), first: null, end: null, status: 0,
                ok: false, code: null, backend: null, cost: null, usage_cost: null, prompt_tokens: null,
                completion_tokens: null, error: null, stream: req.stream, done: false, stream_error: false };
            records[req.idx] = rec;
            const body = buildBody(world, req);
            let finishedOne = false;
            const finish = (error) => {
                if (finishedOne) return;
                finishedOne = true;
                clearTimeout(timer);
                open.delete(handle);
                rec.end = clock.now();
                if (error) rec.error = error;
                rec.ok = !rec.error && rec.status === 200 && (!req.stream || (rec.done && !rec.stream_error));
                if (++ended === trace.length) done();
            };
            const r = http.request({
                host: '127.0.0.1', port, path: '/v1/chat/completions', method: 'POST', agent,
                headers: {
                    'content-type': 'application/json',
                    'content-length': Buffer.byteLength(body),
                    authorization: `Bearer ${key}`,
                    'x-request-id': `m-${req.idx}`,
                },
            });
            const handle = { abort: () => { r.destroy(); finish('aborted'); } };
            open.add(handle);
            const timer = setTimeout(() => {
                r.destroy();
                finish('timeout');
            }, timeoutMs);
            r.on('error', (e) => finish(e.code || e.message));
            r.on('response', (res) => {
                rec.status = res.statusCode;
                rec.backend = res.headers['x-tollgate-backend'] || null;
                const c = res.headers['x-tollgate-cost-usd'];
                rec.cost = c !== undefined ? Number(c) : null;
                const sse = req.stream && res.statusCode === 200 &&
                            String(res.headers['content-type'] || '').startsWith('text/event-stream');
                let buf = '';
                res.setEncoding('utf8');
                res.on('data', (chunk) => {
                    if (rec.first === null) rec.first = clock.now();
                    if (!sse) {
                        buf += chunk;
                        return;
                    }
                    buf += chunk;
                    let cut;
                    while ((cut = buf.indexOf('\n\n')) >= 0) {
                        scanEvent(buf.slice(0, cut), rec);
                        buf = buf.slice(cut + 2);
                    }
                });
                res.on('end', () => {
                    if (!sse) scanWhole(buf, rec);
                    finish(null);
                });
                res.on('error', (e) => finish(e.code || e.message));
                res.on('aborted', () => finish('aborted'));
            });
            r.end(body);
            sent++;
        };
        let i = 0;
        const pump = () => {
            const now = clock.now();
            while (i < trace.length && trace[i].t <= now) send(trace[i++]);
            if (i < trace.length) setTimeout(pump, Math.max(0, trace[i].t - clock.now()));
        };
        if (!trace.length) return done();
        setTimeout(pump, Math.max(0, clock.untilMs(trace[0].t)));
    });
}

// One SSE event of a streamed answer. Only events that may carry usage or an error are parsed.
function scanEvent(ev, rec) {
    for (const line of ev.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') {
            rec.done = true;
            continue;
        }
        if (!data.includes('"usage"') && !data.includes('"error"')) continue;
        try {
            const o = JSON.parse(data);
            if (o.error) {
                rec.stream_error = true;
                rec.code = o.error.code || 'stream_error';
            }
            if (o.usage) {
                rec.prompt_tokens = o.usage.prompt_tokens ?? null;
                rec.completion_tokens = o.usage.completion_tokens ?? null;
                if (typeof o.usage.cost === 'number') rec.usage_cost = o.usage.cost;
                else if (typeof o.cost === 'number') rec.usage_cost = o.cost;
            }
        } catch {
            rec.stream_error = true;
            rec.code = 'unparsable_event';
        }
    }
}

function scanWhole(text, rec) {
    try {
        const o = JSON.parse(text);
        if (rec.status === 200) {
            if (!Array.isArray(o.choices) || !o.choices.length) {
                rec.error = 'no_choices';
                return;
            }
            if (o.usage) {
                rec.prompt_tokens = o.usage.prompt_tokens ?? null;
                rec.completion_tokens = o.usage.completion_tokens ?? null;
            }
        } else if (o && o.error) {
            rec.code = o.error.code || o.error.type || null;
        }
    } catch {
        if (rec.status === 200) rec.error = 'unparsable_answer';
    }
}

// As a worker thread: workerData {world, trace, port, key, t0}; posts {records, loopDelay}.
if (parentPort && workerData && workerData.kind === 'market-load') {
    const clock = makeClock(workerData.t0);
    const delay = monitorEventLoopDelay({ resolution: 10 }); // market.mjs subtracts the 10 ms
    delay.enable();
    runLoad({ ...workerData, clock }).then((records) => {
        delay.disable();
        parentPort.postMessage({
            records,
            loopDelay: { p99_ms: delay.percentile(99) / 1e6, max_ms: delay.max / 1e6, mean_ms: delay.mean / 1e6 },
        });
    });
}
