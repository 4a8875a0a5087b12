// The soak's traffic: an open-loop mix of requests (each leaves at its time whether or not the
// earlier ones were answered), each with a client timeout, each classified when it ends:
//   ok        the answer a correct gateway gives (200 with a well-formed body or stream, or a
//             429 for the keys made to hit their rate limit or budget)
//   expected  an error the request asked for (bad JSON, unknown model, bad key...) with the
//             right status and code, or a 5xx / a broken stream while a node was faulted
//   unexpected anything else (with a reason; these are what the soak is for)
//   timeout   no complete answer within the client timeout
// For the ledger comparison each request also says whether the gateway authenticated it
// (a valid key, an inference endpoint, an answer other than 401 or 503 key_store_unavailable)
// or whether that is unknown (the client gave up, or the connection failed).

import http from 'node:http';

// Deterministic generator (mulberry32), so a seed gives the same sequence of requests.
export function rng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

// The mix, by weight. `auth`: sent with a valid key to an inference endpoint (so the gateway
// records it in its ledger once it has authenticated it).
export const KINDS = {
    chat: { weight: 20, auth: true },              // whole chat completion, not cacheable
    chat_stream: { weight: 20, auth: true },       // streamed, include_usage
    completion: { weight: 4, auth: true },         // /v1/completions, whole or streamed
    embeddings: { weight: 8, auth: true },
    cache_hot: { weight: 14, auth: true },         // temperature 0 over a few prompts: hits
    cache_fill: { weight: 8, auth: true },         // temperature 0, unique: misses that fill the cache (LRU)
    stream_abort: { weight: 3, auth: true },       // the client leaves after the first event
    bad_json: { weight: 2, auth: true },           // 400 invalid_json
    bad_param: { weight: 2, auth: true },          // 400 (messages missing)
    bad_model: { weight: 2, auth: true },          // 404 model_not_found
    rpm_key: { weight: 6, auth: true },            // a key with rpm: 200 or 429 rate_limit_exceeded
    budget_key: { weight: 4, auth: true },         // a key with a budget: 200 or 429 insufficient_quota
    bad_key: { weight: 3, auth: false },           // 401 (an unknown key: looked up in Redis)
    no_key: { weight: 1, auth: false },            // 401 (no Authorization)
    unknown_url: { weight: 1, auth: false },       // 404 unknown_url (not an inference endpoint)
    models: { weight: 2, auth: false },            // GET /v1/models (not an inference endpoint)
};

const HOT_PROMPTS = 16;
const WORDS = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india', 'juliet'];

// One request's description from the kind and the generator. ctx: {keys: {static, redis, rpm,
// budget}, model, embed_model, seq}.
export function makeRequest(kind, rand, ctx) {
    const pick = (a) => a[Math.floor(rand() * a.length)];
    const static_key = rand() < 0.5;
    const normal_key = static_key ? ctx.keys.static : ctx.keys.redis;
    const words = (n) => Array.from({ length: n }, () => pick(WORDS)).join(' ');
    const chat = (extra = {}) => ({
        model: ctx.model,
        max_tokens: 16,
        temperature: 0.7,
        messages: [{ role: 'user', content: `${words(4 + Math.floor(rand() * 12))} #${ctx.seq}` }],
        ...extra,
    });
    const stream_opts = { stream: true, stream_options: { include_usage: true } };
    const req = { kind, method: 'POST', path: '/v1/chat/completions', key: normal_key, key_name: static_key ? 'static key' : 'Redis key', stream: false };
    switch (kind) {
    case 'chat':
        req.body = chat();
        break;
    case 'chat_stream':
        req.body = chat(stream_opts);
        req.stream = true;
        break;
    case 'completion':
        req.path = '/v1/completions';
        req.stream = rand() < 0.5;
        req.body = { model: ctx.model, max_tokens: 16, prompt: `${words(6)} #${ctx.seq}`, ...(req.stream ? stream_opts : {}) };
        break;
    case 'embeddings':
        req.path = '/v1/embeddings';
        req.body = { model: ctx.embed_model, input: rand() < 0.5 ? words(8) : [words(3), words(5)] };
        break;
    case 'cache_hot': {
        // Same body, same key -> the same cache entry: a hit once it is stored.
        const n = Math.floor(rand() * HOT_PROMPTS);
        req.stream = rand() < 0.5;
        req.key = n % 2 ? ctx.keys.static : ctx.keys.redis;
        req.key_name = n % 2 ? 'static key' : 'Redis key';
        req.body = {
            model: ctx.model, max_tokens: 16, temperature: 0,
            messages: [{ role: 'user', content: `hot question number ${n}: ${WORDS[n % WORDS.length]}` }],
            ...(req.stream ? stream_opts : {}),
        };
        break;
    }
    case 'cache_fill':
        req.body = chat({ temperature: 0 });
        break;
    case 'stream_abort':
        req.body = chat(stream_opts);
        req.stream = true;
        req.abort_after_first_event = true;
        break;
    case 'bad_json':
        req.raw = '{"model": "' + ctx.model + '", "messages": [';
        req.expect = { status: 400, code: 'invalid_json' };
        break;
    case 'bad_param':
        req.body = { model: ctx.model, max_tokens: 4 };
        req.expect = { status: 400 };
        break;
    case 'bad_model':
        req.body = chat({ model: 'no-such-model' });
        req.expect = { status: 404, code: 'model_not_found' };
        break;
    case 'rpm_key':
        req.key = ctx.keys.rpm;
        req.key_name = 'Redis key with rpm';
        req.body = chat();
        req.allow429 = 'rate_limit_exceeded';
        break;
    case 'budget_key':
        req.key = ctx.keys.budget;
        req.key_name = 'Redis key with a budget';
        req.body = chat();
        req.allow429 = 'insufficient_quota';
        break;
    case 'bad_key':
        req.key = `sk-soak-wrong-${Math.floor(rand() * 1e12).toString(36)}`;
        req.body = chat();
        req.expect = { status: 401, code: 'invalid_api_key' };
        break;
    case 'no_key':
        req.key = null;
        req.body = chat();
        req.expect = { status: 401, code: 'invalid_api_key' };
        break;
    case 'unknown_url':
        req.path = '/v1/nope';
        req.body = chat();
        req.expect = { status: 404, code: 'unknown_url' };
        break;
    case 'models':
        req.method = 'GET';
        req.path = '/v1/models';
        break;
    default:
        throw new Error(`unknown kind ${kind}`);
    }
    return req;
}

// Parses SSE text into event data strings.
export function sseEvents(text) {
    const out = [];
    for (const block of text.split(/\r?\n\r?\n/)) {
        const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, ''));
        if (data.length) out.push(data.join('\n'));
    }
    return out;
}

// What is wrong with a 200 answer's body, or null. kind/path say what it should be.
export function bodyProblem(req, text, content_type) {
    if (req.stream) {
        if (!/text\/event-stream/.test(content_type ?? '')) return `stream answered as ${content_type}`;
        const ev = sseEvents(text);
        if (!ev.length) return 'empty stream';
        let chunks = 0;
        for (const d of ev) {
            if (d === '[DONE]') continue;
            let j;
            try {
                j = JSON.parse(d);
            } catch {
                return 'stream event is not JSON';
            }
            if (j.error) return `stream error event: ${j.error.code ?? ''} ${String(j.error.message ?? '').slice(0, 80)}`;
            chunks++;
        }
        if (ev[ev.length - 1] !== '[DONE]') return 'stream without [DONE]';
        if (!chunks) return 'stream without chunks';
        return null;
    }
    let j;
    try {
        j = JSON.parse(text);
    } catch {
        return 'body is not JSON';
    }
    if (req.method === 'GET') return Array.isArray(j.data) ? null : 'models list without data';
    if (req.path === '/v1/embeddings')
        return Array.isArray(j.data?.[0]?.embedding) ? null : 'embeddings without data[0].embedding';
    if (req.path === '/v1/completions')
        return typeof j.choices?.[0]?.text === 'string' ? null : 'completion without choices[0].text';
    if (typeof j.choices?.[0]?.message?.content !== 'string') return 'chat without choices[0].message.content';
    if (typeof j.usage?.prompt_tokens !== 'number') return 'chat without usage';
    return null;
}

// Sends one request over node:http. Resolves (never rejects) with
// {status, headers, text, error, timed_out, aborted_by_us, t0, t1}.
export function sendRequest(req, { host, port, agent, timeoutMs, id }) {
    return new Promise((resolve) => {
        const t0 = Date.now();
        const headers = { 'x-request-id': id };
        if (req.key) headers.authorization = `Bearer ${req.key}`;
        let payload = null;
        if (req.method === 'POST') {
            payload = Buffer.from(req.raw ?? JSON.stringify(req.body));
            headers['content-type'] = 'application/json';
            headers['content-length'] = payload.length;
        }
        if (req.route) headers['x-tollgate-route'] = req.route;
        if (req.close) headers.connection = 'close';
        let done = false;
        const out = { status: 0, headers: {}, text: '', error: null, timed_out: false, aborted_by_us: false, t0, t1: 0 };
        const finish = () => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            out.t1 = Date.now();
            resolve(out);
        };
        const r = http.request({ host, port, method: req.method, path: req.path, headers, agent: req.close ? false : agent });
        const timer = setTimeout(() => {
            out.timed_out = true;
            r.destroy(new Error('client timeout'));
        }, timeoutMs);
        r.on('response', (res) => {
            out.status = res.statusCode;
            out.headers = res.headers;
            const parts = [];
            res.on('data', (c) => {
                parts.push(c);
                if (req.abort_after_first_event && !out.aborted_by_us && res.statusCode === 200 &&
                    Buffer.concat(parts).includes('\n\n')) {
                    out.aborted_by_us = true;
                    out.text = Buffer.concat(parts).toString('utf8');
                    r.destroy();
                    finish();
                }
            });
            res.on('end', () => {
                if (!out.aborted_by_us) out.text = Buffer.concat(parts).toString('utf8');
                finish();
            });
            res.on('error', (e) => {
                if (!out.aborted_by_us) out.error = out.timed_out ? 'timeout' : (e.code ?? e.message);
                finish();
            });
            res.on('aborted', () => {
                if (!out.aborted_by_us && !out.error) out.error = out.timed_out ? 'timeout' : 'response aborted';
            });
        });
        r.on('error', (e) => {
            if (!out.aborted_by_us) out.error = out.timed_out ? 'timeout' : (e.code ?? e.message);
            finish();
        });
        r.on('close', () => {
            if (!done) {
                if (!out.aborted_by_us && !out.error) out.error = out.timed_out ? 'timeout' : 'closed';
                finish();
            }
        });
        r.end(payload ?? undefined);
    });
}

// Classifies a finished request. faulted(t0, t1, backend) says whether a node fault could
// explain a failure in that interval (backend: the x-tollgate-backend that answered, or null);
// redisDown(t0, t1) whether Redis was away (or just back) then.
// Returns {cls, reason, auth: 'yes'|'no'|'unknown'}.
export function classify(req, out, faulted, redisDown = () => false) {
    const auth_kind = KINDS[req.kind].auth;
    const code = (() => {
        try {
            return JSON.parse(out.text)?.error?.code ?? null;
        } catch {
            return null;
        }
    })();
    if (out.timed_out) return { cls: 'timeout', reason: `${req.kind}: no answer within the client timeout${out.status ? ` (status ${out.status} came)` : ''}`, auth: auth_kind ? 'unknown' : 'no' };
    if (out.error && !out.status)
        return { cls: 'unexpected', reason: `${req.kind}: connection error ${out.error}`, auth: auth_kind ? 'unknown' : 'no' };
    // An answer came (its status line at least). The gateway did not authenticate a 401, nor a
    // 503 key_store_unavailable (a key it could not check with Redis away).
    const key_unchecked = out.status === 503 && code === 'key_store_unavailable';
    const auth = !auth_kind || out.status === 401 || key_unchecked ? 'no' : 'yes';
    const backend = out.headers['x-tollgate-backend'] ?? null;
    const in_fault = faulted(out.t0, out.t1, backend);
    if (out.headers['x-request-id'] !== undefined && out.headers['x-request-id'] !== out.id_sent)
        return { cls: 'unexpected', reason: `${req.kind}: x-request-id not echoed`, auth };
    if (key_unchecked && out.headers['retry-after'] === undefined)
        return { cls: 'unexpected', reason: `${req.kind}: 503 key_store_unavailable without retry-after`, auth };
    // An unknown key while Redis is away: the gateway cannot tell it from a valid one.
    if (key_unchecked && req.kind === 'bad_key' && redisDown(out.t0, out.t1))
        return { cls: 'expected', reason: `${req.kind}: 503 key_store_unavailable while Redis was away`, auth };
    if (req.expect) {
        const ok = out.status === req.expect.status && (!req.expect.code || code === req.expect.code);
        return ok ? { cls: 'expected', reason: `${req.kind}: ${out.status} ${code ?? ''}`.trim(), auth }
            : { cls: 'unexpected', reason: `${req.kind}: ${out.status} ${code ?? ''} (wanted ${req.expect.status} ${req.expect.code ?? ''}${KINDS[req.kind].auth ? `; ${req.key_name}` : ''})`.replace(/ +\)/, ')'), auth };
    }
    if (out.status === 200) {
        if (req.abort_after_first_event && out.aborted_by_us) return { cls: 'ok', reason: null, auth };
        if (out.error) {
            // The body broke after the status line.
            return in_fault ? { cls: 'expected', reason: `${req.kind}: body cut (${out.error}) while ${in_fault} was faulted`, auth }
                : { cls: 'unexpected', reason: `${req.kind}: body cut (${out.error})`, auth };
        }
        const problem = bodyProblem(req, out.text, out.headers['content-type']);
        if (!problem) return { cls: 'ok', reason: null, auth };
        return in_fault ? { cls: 'expected', reason: `${req.kind}: ${problem.replace(/:.*/, '')} while ${in_fault} was faulted`, auth }
            : { cls: 'unexpected', reason: `${req.kind}: 200 but ${problem}`, auth };
    }
    if (out.status === 429 && req.allow429 && code === req.allow429) return { cls: 'ok', reason: null, auth };
    if (out.status >= 500 && in_fault)
        return { cls: 'expected', reason: `${req.kind}: ${out.status} ${code ?? ''} while ${in_fault} was faulted`, auth };
    return { cls: 'unexpected', reason: `${req.kind}: ${out.status} ${code ?? ''}${out.status === 401 ? ` for a valid key (${req.key_name})` : ''}`.trim(), auth };
}

// Weighted choice of a kind.
export function kindPicker(rand, kinds = KINDS) {
    const names = Object.keys(kinds);
    const total = names.reduce((s, k) => s + kinds[k].weight, 0);
    return () => {
        let x = rand() * total;
        for (const k of names) {
            x -= kinds[k].weight;
            if (x < 0) return k;
        }
        return names[names.length - 1];
    };
}

// The open-loop driver. opts: {host, port, rate (req/s), seed, timeoutMs, streamTimeoutMs,
// maxInflight, keys (object, may be changed while running), model, embed_model, idPrefix,
// faulted(t0, t1, backend), redisDown(t0, t1), onResult(id, req, out, verdict)}. start() begins; stop() stops
// sending and resolves when every request in flight has ended.
export class Load {
    constructor(opts) {
        this.o = opts;
        this.rand = rng(opts.seed ?? 1);
        this.pick = kindPicker(this.rand);
        this.agent = new http.Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64 });
        this.seq = 0;
        this.inflight = 0;
        this.max_inflight_seen = 0;
        this.shed = 0;
        this.lag = { max: 0, over_50ms: 0 };
        this.stopped = true;
        this.pending = new Set();
    }

    start() {
        this.stopped = false;
        this.t_start = Date.now();
        this.next = this.t_start;
        this.timer = setInterval(() => this.tick(), 5);
    }

    tick() {
        const now = Date.now();
        let bound = 1000; // at most this many launches per tick (a stalled loop catches up gradually)
        while (!this.stopped && this.next <= now && bound-- > 0) {
            const lag = now - this.next;
            if (lag > this.lag.max) this.lag.max = lag;
            if (lag > 50) this.lag.over_50ms++;
            this.next += -Math.log(1 - this.rand()) * 1000 / this.o.rate;
            if (this.inflight >= this.o.maxInflight) {
                this.shed++;
                continue;
            }
            this.launch();
        }
    }

    // One request of the given kind (or a drawn one); resolves when it has ended.
    one(kind) {
        return this.launch(kind);
    }

    launch(kind = this.pick()) {
        const seq = ++this.seq;
        const req = makeRequest(kind, this.rand, { keys: this.o.keys, model: this.o.model, embed_model: this.o.embed_model, seq });
        req.close = this.rand() < 0.1; // a tenth on a connection of their own (accept/close churn)
        if ((kind === 'chat' || kind === 'chat_stream') && this.rand() < 0.2) req.route = 'price-weighted';
        const id = `${this.o.idPrefix}-${seq}`;
        this.inflight++;
        if (this.inflight > this.max_inflight_seen) this.max_inflight_seen = this.inflight;
        const p = sendRequest(req, {
            host: this.o.host, port: this.o.port, agent: this.agent, id,
            timeoutMs: req.stream ? this.o.streamTimeoutMs : this.o.timeoutMs,
        }).then((out) => {
            out.id_sent = id;
            const verdict = classify(req, out, this.o.faulted, this.o.redisDown);
            this.inflight--;
            this.pending.delete(p);
            this.o.onResult(id, req, out, verdict);
        });
        this.pending.add(p);
        return p;
    }

    async stop() {
        this.stopped = true;
        clearInterval(this.timer);
        this.t_stop = Date.now();
        while (this.pending.size) await Promise.all([...this.pending]);
    }

    // Closes the keep-alive connections (the end census counts no client socket).
    close() {
        this.agent.destroy();
    }

    // A fresh agent after close().
    reopen() {
        this.agent = new http.Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64 });
    }
}
