// A simulated inference node: an OpenAI-compatible HTTP server on a free loopback port, in the
// simulator's own process. It serves
//   POST /v1/chat/completions   whole or streamed (SSE; a usage chunk when include_usage)
//   GET  /v1/models             the gateway's health probe
//   GET  /api/v1/models         its price feed, OpenRouter's shape (ETag, 304 on If-None-Match)
// with its own capacity (more concurrent requests than that are answered 429 with
// retry-after), its latency model, its prices over time and its outages (world.mjs), and it
// keeps a record of every inference request it received: arrival, outcome, true and claimed
// usage, and the price in force when the request arrived.

import http from 'node:http';
import { countPromptTokens, requestIndex, priceAt, outageAt, serviceTime } from './world.mjs';

// Stream events are written at most this often; tokens due in between go out together, so a
// node's per-token pace holds on average without one write per token.
const MIN_TICK_MS = 20;
const MAX_BODY_BYTES = 1 << 20;
const TOKEN_TEXT = ' tok'; // 4 bytes a token, as in the prompts

// USD per million tokens → USD per token as a plain decimal string ("0.0000000537").
export function perTokenDecimal(usdPerMtok) {
    if (!(usdPerMtok > 0)) return '0';
    const [mant, exp] = usdPerMtok.toExponential(9).split('e');
    const digits = mant.replace('.', '').replace('-', '').replace(/0+$/, '') || '0';
    const e = Number(exp) - 6; // value = d.ddd × 10^e
    if (e >= 0) return String(usdPerMtok / 1e6);
    return '0.' + '0'.repeat(-e - 1) + digits;
}

export class SimNode {
    // clock.now(): ms since the start of the load (negative before it).
    constructor(world, node, clock) {
        this.world = world;
        this.node = node;
        this.clock = clock;
        this.records = []; // inference requests, see record() below
        this.probes = []; // [t, status] of every GET /v1/models
        this.feeds = []; // [t, status, price version] of every price feed read
        this.inService = 0;
        this.maxInService = 0;
        this.sockets = new Set();
        this.live = new Set(); // requests not finished: {finish(outcome)}
        this.crashed = false;
        this.timers = [];
        this.server = http.createServer({ requestTimeout: 0, headersTimeout: 120000 }, (req, res) => this.handle(req, res));
        this.server.keepAliveTimeout = 120000;
        this.server.on('connection', (s) => {
            if (this.crashed || this.stateNow() === 'reset') {
                s.resetAndDestroy();
                return;
            }
            this.sockets.add(s);
            s.on('close', () => this.sockets.delete(s));
        });
        this.server.on('clientError', (err, s) => s.destroy());
        // price_feeds "separate": the feed is published elsewhere and stays up in outages.
        if (world.price_feeds === 'separate') {
            this.feedServer = http.createServer((req, res) => {
                const t = this.clock.now();
                if (req.method === 'GET' && req.url.split('?')[0] === '/api/v1/models') return this.feed(req, res, t, false);
                req.resume();
                sendJson(res, 404, errorBody('unknown url', 'invalid_request_error', 'unknown_url'));
            });
            this.feedServer.keepAliveTimeout = 120000;
        }
    }

    async start() {
        await new Promise((ok, ko) => {
            this.server.once('error', ko);
            this.server.listen(0, '127.0.0.1', () => {
                this.server.off('error', ko);
                ok();
            });
        });
        this.port = this.server.address().port;
        if (this.feedServer) {
            await new Promise((ok) => this.feedServer.listen(0, '127.0.0.1', ok));
            this.feedPort = this.feedServer.address().port;
        }
        return this.port;
    }

    get url() {
        return `http://127.0.0.1:${this.port}/v1`;
    }

    get feedUrl() {
        return `http://127.0.0.1:${this.feedPort || this.port}/api/v1/models`;
    }

    stateNow() {
        const o = outageAt(this.node, this.clock.now());
        return o ? o.kind : null;
    }

    // Once the load's start is known: crash windows close the port and open it again.
    arm() {
        for (const o of this.node.outages) {
            if (o.kind !== 'crash') continue;
            this.timers.push(setTimeout(() => this.crash(), Math.max(0, this.clock.untilMs(o.start))));
            this.timers.push(setTimeout(() => this.restore(), Math.max(0, this.clock.untilMs(o.end))));
        }
    }

    crash() {
        if (this.crashed || this.stopped) return;
        this.crashed = true;
        this.server.close();
        for (const l of [...this.live]) l.finish('cut');
        for (const s of this.sockets) s.destroy();
        this.sockets.clear();
    }

    restore(attempt = 0) {
        if (!this.crashed || this.stopped) return;
        const onError = () => {
            // Not closed yet, or the port taken by someone else for a moment: try again, for at
            // most two seconds.
            if (attempt < 20) this.timers.push(setTimeout(() => this.restore(attempt + 1), 100));
        };
        this.server.once('error', onError);
        this.server.listen(this.port, '127.0.0.1', () => {
            this.server.off('error', onError);
            this.crashed = false;
        });
    }

    async stop() {
        this.stopped = true;
        for (const t of this.timers) clearTimeout(t);
        for (const l of [...this.live]) l.finish('cancelled');
        for (const s of this.sockets) s.destroy();
        this.sockets.clear();
        await new Promise((ok) => (this.server.listening ? this.server.close(() => ok()) : ok()));
        if (this.feedServer) {
            this.feedServer.closeAllConnections();
            await new Promise((ok) => this.feedServer.close(() => ok()));
        }
    }

    handle(req, res) {
        const t = this.clock.now();
        const path = req.url.split('?')[0];
        if (req.method === 'POST' && path === '/v1/chat/completions') return this.chat(req, res, t);
        if (req.method === 'GET' && path === '/v1/models') return this.models(req, res, t);
        if (req.method === 'GET' && path === '/api/v1/models') return this.feed(req, res, t);
        req.resume();
        sendJson(res, 404, errorBody('unknown url', 'invalid_request_error', 'unknown_url'));
    }

    // What an outage does to a request arriving at t; true when it has been answered (or not,
    // for a hang). onHung(endTime) is called when a hung request's client goes away.
    gate(req, res, t, onOutcome) {
        const o = outageAt(this.node, t);
        if (!o || o.kind === 'slow' || o.kind === 'stall') return false;
        if (o.kind === 'crash' || o.kind === 'reset') {
            // A request that slipped in on a connection accepted just before: cut it.
            onOutcome('refused', t);
            req.socket.resetAndDestroy();
        } else if (o.kind === 'hang') {
            const l = { finish: () => res.destroy() };
            this.live.add(l);
            res.on('close', () => {
                this.live.delete(l);
                onOutcome('hung', this.clock.now());
            });
        } else if (o.kind === '500') {
            onOutcome('500', t);
            sendJson(res, 500, errorBody('internal error (simulated outage)', 'server_error', null));
        } else {
            onOutcome('429', t);
            sendJson(res, 429, errorBody('rate limited (simulated outage)', 'rate_limit_error', 'rate_limit_exceeded'),
                { 'retry-after': String(this.node.retry_after_s) });
        }
        return true;
    }

    models(req, res, t) {
        req.resume();
        if (this.gate(req, res, t, (outcome) => this.probes.push([t, outcome]))) return;
        this.probes.push([t, 200]);
        sendJson(res, 200, {
            object: 'list',
            data: [{ id: this.node.upstream, object: 'model', created: 0, owned_by: this.node.name }],
        });
    }

    feed(req, res, t, gated = true) {
        req.resume();
        if (gated && this.gate(req, res, t, (outcome) => this.feeds.push([t, outcome, -1]))) return;
        const p = priceAt(this.node, t);
        const etag = `"p${p.version}"`;
        if (req.headers['if-none-match'] === etag) {
            this.feeds.push([t, 304, p.version]);
            res.writeHead(304, { etag });
            res.end();
            return;
        }
        this.feeds.push([t, 200, p.version]);
        sendJson(res, 200, {
            data: [{
                id: this.node.upstream,
                name: `${this.node.upstream} on ${this.node.name}`,
                pricing: { prompt: perTokenDecimal(p.input), completion: perTokenDecimal(p.output) },
            }],
        }, { etag });
    }

    chat(req, res, t) {
        const chunks = [];
        let size = 0;
        req.on('data', (c) => {
            size += c.length;
            if (size <= MAX_BODY_BYTES) chunks.push(c);
        });
        req.on('end', () => this.chatBody(req, res, t, Buffer.concat(chunks), size));
    }

    chatBody(req, res, t, raw, size) {
        const rid = req.headers['x-request-id'] || '';
        const rec = { node: this.node.idx, rid, idx: -1, t, end: t, outcome: '', stream: false,
            prompt: 0, completion: 0, delivered: 0, first_byte: null, price_in: 0, price_out: 0,
            claimed_prompt: 0, claimed_completion: 0, in_service: this.inService, slot: false };
        this.records.push(rec);
        let body;
        try {
            body = size <= MAX_BODY_BYTES ? JSON.parse(raw.toString('utf8')) : null;
        } catch {
            body = null;
        }
        if (!body || typeof body !== 'object' || !Array.isArray(body.messages)) {
            rec.outcome = 'bad_request';
            sendJson(res, 400, errorBody('bad request', 'invalid_request_error', 'invalid_json'));
            return;
        }
        rec.stream = body.stream === true;
        rec.idx = requestIndex(body.messages);
        rec.prompt = countPromptTokens(body.messages);
        const price = priceAt(this.node, t);
        rec.price_in = price.input;
        rec.price_out = price.output;
        const outcome = (o, end) => {
            rec.outcome = o;
            rec.end = end;
        };
        if (this.gate(req, res, t, outcome)) return;
        if (this.inService >= this.node.capacity) {
            outcome('429', t);
            sendJson(res, 429, errorBody('node at capacity', 'rate_limit_error', 'rate_limit_exceeded'),
                { 'retry-after': String(this.node.retry_after_s) });
            return;
        }
        rec.slot = true;
        this.inService++;
        if (this.inService > this.maxInService) this.maxInService = this.inService;
        if (outageAt(this.node, t)?.kind === 'stall') {
            // The front end is alive (probes and the feed answer, full means 429) but nothing
            // comes out: the request holds its slot until the gateway gives up on it.
            const l = { finish: () => res.destroy() };
            this.live.add(l);
            res.on('close', () => {
                this.live.delete(l);
                this.inService--;
                outcome('stalled', this.clock.now());
            });
            return;
        }
        const maxTokens = Number.isInteger(body.max_completion_tokens) ? body.max_completion_tokens
                        : Number.isInteger(body.max_tokens) ? body.max_tokens : 256;
        const plan = serviceTime(this.world, this.node, { idx: rec.idx, max_tokens: Math.max(1, maxTokens) }, t);
        rec.completion = plan.tokens;
        rec.claimed_prompt = Math.round(rec.prompt * this.node.liar);
        rec.claimed_completion = Math.round(plan.tokens * this.node.liar);
        rec.ttfb_ms = plan.ttfb;
        rec.token_ms = plan.tokenMs;
        this.serve(req, res, rec, body, plan);
    }

    serve(req, res, rec, body, plan) {
        const clock = this.clock;
        const id = `chatcmpl-${rec.node}-${rec.idx}-${this.records.length}`;
        const created = Math.floor(Date.now() / 1000);
        const model = JSON.stringify(typeof body.model === 'string' ? body.model : this.node.upstream);
        const usage = `{"prompt_tokens":${rec.claimed_prompt},"completion_tokens":${rec.claimed_completion},` +
                      `"total_tokens":${rec.claimed_prompt + rec.claimed_completion}}`;
        const finishReason = plan.tokens >= (body.max_completion_tokens ?? body.max_tokens ?? Infinity) ? 'length' : 'stop';
        let timer = null, done = false;
        const live = {
            finish: (outcome) => {
                if (done) return;
                done = true;
                clearTimeout(timer);
                this.live.delete(live);
                this.inService--;
                rec.outcome = outcome;
                rec.end = clock.now();
                if (outcome !== 'served') res.destroy();
            },
        };
        this.live.add(live);
        res.on('close', () => live.finish(res.writableFinished ? 'served' : 'cancelled'));
        if (!rec.stream) {
            timer = setTimeout(() => {
                rec.first_byte = clock.now();
                rec.delivered = plan.tokens;
                const text = JSON.stringify(TOKEN_TEXT.repeat(plan.tokens));
                const out = `{"id":"${id}","object":"chat.completion","created":${created},"model":${model},` +
                            `"choices":[{"index":0,"message":{"role":"assistant","content":${text}},` +
                            `"finish_reason":"${finishReason}"}],"usage":${usage}}`;
                res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
                res.end(out, () => live.finish('served'));
            }, Math.max(0, clock.untilMs(rec.t + plan.total)));
            return;
        }
        const head = `data: {"id":"${id}","object":"chat.completion.chunk","created":${created},"model":${model},"choices":`;
        const wantUsage = body.stream_options && body.stream_options.include_usage === true;
        const tick = () => {
            if (done) return;
            const now = clock.now();
            if (rec.first_byte === null) {
                rec.first_byte = now;
                res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
                res.write(`${head}[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n`);
            }
            // Token k (1-based) is due at ttfb + k × per-token time.
            const due = now >= rec.t + plan.total ? plan.tokens
                      : Math.min(plan.tokens, Math.floor((now - rec.t - plan.ttfb) / Math.max(plan.tokenMs, 1e-6)));
            if (due > rec.delivered) {
                const text = TOKEN_TEXT.repeat(due - rec.delivered);
                rec.delivered = due;
                res.write(`${head}[{"index":0,"delta":{"content":"${text}"},"finish_reason":null}]}\n\n`);
            }
            if (rec.delivered >= plan.tokens) {
                let tail = `${head}[{"index":0,"delta":{},"finish_reason":"${finishReason}"}]}\n\n`;
                if (wantUsage) tail += `${head}[],"usage":${usage}}\n\n`;
                res.end(tail + 'data: [DONE]\n\n', () => live.finish('served'));
                return;
            }
            // The next token, no sooner than MIN_TICK_MS, but never later than the last one.
            const next = rec.t + plan.ttfb + (rec.delivered + 1) * plan.tokenMs;
            const wait = Math.min(Math.max(MIN_TICK_MS, clock.untilMs(next)), clock.untilMs(rec.t + plan.total));
            timer = setTimeout(tick, Math.max(0, wait));
        };
        timer = setTimeout(tick, Math.max(0, clock.untilMs(rec.t + plan.ttfb)));
    }
}

function errorBody(message, type, code) {
    return { error: { message, type, param: null, code } };
}

function sendJson(res, status, obj, headers = {}) {
    const out = JSON.stringify(obj);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out), ...headers });
    res.end(out);
}
