// The soak's summary: what was sent and how it ended, memory and fds over the run, the ledger
// against the answered requests, and the verdict. As Markdown (bench/SOAK.md and stdout).

import { censusText } from './procstat.mjs';

const mib = (kb) => (kb / 1024).toFixed(1);
const pct = (x) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`;

export function verdicts(r) {
    const v = [];
    const rss = r.rss;
    const drift = (rss.end_kb - rss.warm_kb) / rss.warm_kb;
    v.push({ name: 'RSS flat', pass: Math.abs(drift) <= 0.10,
        detail: `end ${mib(rss.end_kb)} MiB vs ${mib(rss.warm_kb)} MiB after warm-up: ${pct(drift)} (limit ±10%)` });
    v.push({ name: 'fds equal', pass: r.fds.stable_equal,
        detail: `${r.fds.start.total} at start, ${r.fds.end.total} at end; without client and pooled upstream connections ` +
            `${r.fds.start_stable} and ${r.fds.end_stable}` });
    const l = r.ledger.cmp;
    v.push({ name: 'ledger exact', pass: l.exact && r.ledger.dropped === 0,
        detail: `${l.records} records with a key for ${l.answered} requests answered after authentication` +
            (l.of_unknown ? ` + ${l.of_unknown} of ${l.unknown} the client gave up on` : '') +
            `; missing ${l.missing}, duplicated ${l.dup}, unexplained ${l.extra}, dropped by the gateway ${r.ledger.dropped}` });
    v.push({ name: 'no unexpected answer', pass: r.classes.unexpected === 0, detail: `${r.classes.unexpected} unexpected` });
    v.push({ name: 'no timeout', pass: r.classes.timeout === 0, detail: `${r.classes.timeout} timeouts` });
    if (r.exit) v.push({ name: 'graceful stop', pass: r.exit.code === 0 && r.exit.records_after === r.ledger.total,
        detail: `SIGTERM -> exit ${r.exit.code ?? r.exit.signal}; stream ${r.ledger.total} -> ${r.exit.records_after} entries` });
    return v;
}

export function markdown(r) {
    const L = [];
    const v = verdicts(r);
    const pass = v.every((x) => x.pass);
    L.push(`## ${r.date} — ${r.seconds} s soak: ${pass ? 'PASS' : 'FAIL'}`);
    L.push('');
    L.push(`Commit ${r.commit}${r.dirty ? ` (working tree with uncommitted changes: ${r.dirty})` : ''}; ` +
        `tollgate built ${r.built} UTC; machine ${r.machine}.`);
    L.push(`Gateway: ${r.workers} workers, Redis (AOF), 3 mocknodes, cache deterministic (${r.cache_bytes / 1024} KiB), ` +
        `open-loop load at ${r.rate} req/s (seed ${r.seed}), client timeouts ${r.timeouts}. ` +
        `Machine load average (1 min): ${r.loadavg}.`);
    L.push('');
    L.push('| check | result | |');
    L.push('|---|---|---|');
    for (const x of v) L.push(`| ${x.name} | ${x.pass ? 'pass' : '**FAIL**'} | ${x.detail} |`);
    L.push('');
    const c = r.classes;
    L.push(`Requests: ${r.sent} sent in ${r.load_seconds.toFixed(0)} s (${(r.sent / r.load_seconds).toFixed(1)}/s), ` +
        `ok ${c.ok}, expected errors ${c.expected}, unexpected ${c.unexpected}, timeouts ${c.timeout}; ` +
        `not sent (client at its in-flight cap) ${r.shed}; arrival lag max ${r.lag.max.toFixed(0)} ms, ` +
        `${r.lag.over_50ms} over 50 ms; at most ${r.max_inflight} in flight.`);
    L.push('');
    L.push('| kind | sent | ok | expected | unexpected | timeout |');
    L.push('|---|---:|---:|---:|---:|---:|');
    for (const [k, s] of Object.entries(r.by_kind))
        L.push(`| ${k} | ${s.sent} | ${s.ok} | ${s.expected} | ${s.unexpected} | ${s.timeout} |`);
    L.push('');
    L.push(`Answers: ${Object.entries(r.by_status).map(([s, n]) => `${s}: ${n}`).join(', ')}; ` +
        `cache ${Object.entries(r.by_cache).map(([s, n]) => `${s}: ${n}`).join(', ')}.`);
    L.push('');
    if (r.reasons.length) {
        L.push('Unexpected answers and timeouts, by reason (first request ids; the gateway\'s log line of the first):');
        L.push('');
        for (const x of r.reasons) {
            L.push(`- ${x.count} × ${x.reason} — ${x.ids.join(', ')}`);
            if (x.log) L.push(`  \`${x.log.slice(0, 400)}\``);
        }
        L.push('');
    }
    if (r.expected_reasons.length) {
        L.push('Expected errors during faults: ' + r.expected_reasons.map((x) => `${x.count} × ${x.reason}`).join('; ') + '.');
        L.push('');
    }
    L.push('Faults (seconds from the start of the load):');
    L.push('');
    for (const e of r.events) L.push(`- ${e.t.toFixed(1)} s ${e.what}${e.error ? ` — FAILED: ${e.error}` : ''}`);
    L.push('');
    const m = r.rss;
    L.push(`RSS: ${mib(m.start_kb)} MiB at start (idle, primed), ${mib(m.warm_kb)} MiB after the ${r.warmup} s warm-up, ` +
        `max ${mib(m.max_kb)} MiB (sampled), ${mib(m.end_kb)} MiB at end (idle); peak (VmHWM) ${mib(m.hwm_kb)} MiB. ` +
        `Threads ${r.threads.start} → ${r.threads.end}.`);
    L.push(`fds at start: ${r.fds.start.total} (${censusText(r.fds.start.kinds)})`);
    L.push(`fds at end: ${r.fds.end.total} (${censusText(r.fds.end.kinds)})`);
    L.push(`fds max during the load: ${r.fds.max}.`);
    L.push('');
    const g = r.ledger;
    L.push(`Ledger (tg:usage): ${g.total} entries: ${g.auth_records} with a key name, ${g.unauth} without ` +
        `(${r.answered_401} answers were 401 or 503 key_store_unavailable: recorded or not, as the gateway's version does, ` +
        `they are left out of the comparison). ` +
        `Gateway counters: written ${g.metrics.written}, spooled ${g.metrics.spooled}, replayed ${g.metrics.replayed}, ` +
        `dropped ${g.metrics.dropped}. \`tollgate usage\` sums ${g.cli_requests ?? 'n/a'} requests for named keys; ` +
        `the gateway logged ${g.log_auth} authenticated inference requests. Drained ${g.drain_s.toFixed(1)} s after the load stopped.`);
    L.push('');
    if (r.redis) {
        L.push(`Redis: the gateway counted ${r.redis.timeouts ?? '?'} commands past their deadline and ${r.redis.errors ?? '?'} failed ` +
            `(timeouts, errors, refusals while its breaker was open), and opened its breaker ${r.redis.breaker_opens} times; ` +
            `Redis itself logged ${r.redis.slow} commands slower than 10 ms: ${r.redis.slow_text}.`);
        L.push('');
    }
    if (r.inflight_max) {
        L.push(`Requests in the gateway at once (sampled every 5 s): at most ${r.inflight_max.warm} during the warm-up, ` +
            `${r.inflight_max.after} after it.`);
        L.push('');
    }
    if (r.gateway_events.length) {
        L.push('Gateway warnings and errors (count × event): ' +
            r.gateway_events.map((e) => `${e.count} × ${e.event}`).join(', ') + '.');
        L.push('');
    }
    L.push('| t (s) | RSS MiB | fds | threads | in flight | ledger spool B |');
    L.push('|---:|---:|---:|---:|---:|---:|');
    for (const s of r.samples_table)
        L.push(`| ${s.t.toFixed(0)} | ${mib(s.rss_kb)} | ${s.fds} | ${s.threads} | ${s.inflight ?? ''} | ${s.spool_bytes ?? ''} |`);
    L.push('');
    return { text: L.join('\n'), pass };
}
