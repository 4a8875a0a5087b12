// The usage ledger as Redis holds it (redis/keyspace.h: the stream tg:usage, one entry per
// record with fields uid, id, key, model, backend, cache, status, ...), read in pages, and the
// comparison with what the soak's client saw.
//
// What the gateway records (gateway/phase_settle.c, request_settle): one record for every
// request to an inference endpoint (POST /v1/chat/completions, /v1/completions,
// /v1/embeddings: the endpoints with an upstream path), whatever its status: 200, a 4xx of
// validation, limits or budget, a 5xx, 499 when the client left. Nothing for other paths
// (unknown URLs, /v1/models, /healthz). The record's `key` is the key's name once the key was
// recognised. Until 3f0f9db (issue 13, item 8) a request refused with 401 (no key, an unknown,
// expired or revoked key) was recorded too, with key ""; since then a request the gateway did
// not authenticate (401, or 503 key_store_unavailable while Redis is away) leaves no record
// (phase_settle.c: r->adm.authenticated). Either way the comparison counts only records with
// a key name, the requests the gateway answered after authenticating them, and reports the
// others apart.

const STREAM = 'tg:usage';

// Reads every entry of the stream through client (tests/lib/redis.mjs redisClient), pageSize
// at a time, calling onEntry(fields) with an object of the entry's fields. Returns the count.
export async function readStream(client, onEntry, { pageSize = 1000, maxPages = 1000000 } = {}) {
    let start = '-';
    let n = 0;
    for (let page = 0; page < maxPages; page++) {
        const rows = await client.call('XRANGE', STREAM, start, '+', 'COUNT', String(pageSize));
        if (!rows || !rows.length) break;
        for (const [sid, kv] of rows) {
            const f = {};
            for (let i = 0; i + 1 < kv.length; i += 2) f[kv[i]] = kv[i + 1];
            f._sid = sid;
            onEntry(f);
            n++;
        }
        if (rows.length < pageSize) break;
        start = '(' + rows[rows.length - 1][0];
    }
    return n;
}

// Summarises the stream: {total, auth: Map id -> count (records with a key name),
// unauth (records with key ""), by_status, by_cache, foreign (authenticated records whose id
// the soak did not make: another client's)}.
export async function ledgerCensus(client, idPrefix) {
    const auth = new Map();
    const by_status = {};
    const by_cache = {};
    let unauth = 0;
    let foreign = 0;
    const total = await readStream(client, (f) => {
        by_status[f.status] = (by_status[f.status] ?? 0) + 1;
        if (!f.key) {
            unauth++;
            return;
        }
        by_cache[f.cache] = (by_cache[f.cache] ?? 0) + 1;
        if (!String(f.id).startsWith(idPrefix + '-')) foreign++;
        auth.set(f.id, (auth.get(f.id) ?? 0) + 1);
    });
    return { total, auth, unauth, by_status, by_cache, foreign };
}

// Compares the client's view with the ledger's.
//   answered: Set of ids the gateway answered after authentication (client saw a status, not 401)
//   unknown:  Set of ids with a valid key whose fate the client does not know (timeout,
//             connection error): the gateway may or may not have answered them
//   census:   ledgerCensus()
// exact: every answered request has exactly one record, and every record is of an answered
// request or of one of the unknown ones.
export function compareLedger(answered, unknown, census) {
    let missing = 0;
    const missing_ids = [];
    for (const id of answered) {
        if (!census.auth.has(id)) {
            missing++;
            if (missing_ids.length < 10) missing_ids.push(id);
        }
    }
    let dup = 0;
    const dup_ids = [];
    let extra = 0;
    const extra_ids = [];
    let of_unknown = 0;
    let records = 0;
    for (const [id, n] of census.auth) {
        records += n;
        if (n > 1) {
            dup += n - 1;
            if (dup_ids.length < 10) dup_ids.push(`${id}×${n}`);
        }
        if (answered.has(id)) continue;
        if (unknown.has(id)) of_unknown++;
        else {
            extra++;
            if (extra_ids.length < 10) extra_ids.push(id);
        }
    }
    return {
        answered: answered.size,
        unknown: unknown.size,
        records,
        of_unknown,
        missing, missing_ids,
        dup, dup_ids,
        extra, extra_ids,
        exact: missing === 0 && dup === 0 && extra === 0,
    };
}
