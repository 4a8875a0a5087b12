// What a process holds, from /proc (Linux): resident memory, threads, and its open file
// descriptors by kind. Sockets are matched against /proc/net/tcp{,6} by inode, so a TCP fd is
// named by its role: a listener, a client connection (local port = one of the gateway's
// ports), or a connection to a known peer (remote port = a backend's or Redis's port), with
// its TCP state (CLOSE_WAIT sockets are peers that left and were never closed).

import fs from 'node:fs';

// /proc/<pid>/status fields, in kB: VmRSS, VmHWM (peak RSS), RssAnon; Threads.
export function memStatus(pid) {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name) => {
        const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text);
        return m ? Number(m[1]) : null;
    };
    return {
        rss_kb: field('VmRSS'),
        hwm_kb: field('VmHWM'),
        anon_kb: field('RssAnon'),
        threads: field('Threads'),
    };
}

const TCP_STATES = {
    '01': 'ESTABLISHED', '02': 'SYN_SENT', '03': 'SYN_RECV', '04': 'FIN_WAIT1', '05': 'FIN_WAIT2',
    '06': 'TIME_WAIT', '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN', '0B': 'CLOSING',
};

// inode -> {local_port, remote_port, state} for every TCP socket of the machine (the
// process's own net namespace).
export function tcpTable(pid) {
    const out = new Map();
    for (const f of ['tcp', 'tcp6']) {
        let text;
        try {
            text = fs.readFileSync(`/proc/${pid}/net/${f}`, 'utf8');
        } catch {
            continue;
        }
        for (const line of text.split('\n').slice(1)) {
            const cols = line.trim().split(/\s+/);
            if (cols.length < 10) continue;
            const local_port = parseInt(cols[1].split(':').pop(), 16);
            const remote_port = parseInt(cols[2].split(':').pop(), 16);
            out.set(cols[9], { local_port, remote_port, state: TCP_STATES[cols[3]] ?? cols[3] });
        }
    }
    return out;
}

// Counts the open fds of pid by kind. roles: {listen_ports: [..], peers: {name: port}}.
// Returns {total, kinds: {name: n}} where kinds are e.g. "file", "pipe", "eventfd",
// "eventpoll", "tcp:listen", "tcp:client", "tcp:node-a:ESTABLISHED", "tcp:redis:CLOSE_WAIT",
// "unix", "other-socket".
export function fdCensus(pid, roles = {}) {
    const dir = `/proc/${pid}/fd`;
    const names = fs.readdirSync(dir);
    const tcp = tcpTable(pid);
    const listen = new Set(roles.listen_ports ?? []);
    const peer_by_port = new Map(Object.entries(roles.peers ?? {}).map(([name, port]) => [port, name]));
    const kinds = {};
    const add = (k) => { kinds[k] = (kinds[k] ?? 0) + 1; };
    let total = 0;
    for (const n of names) {
        let target;
        try {
            target = fs.readlinkSync(`${dir}/${n}`);
        } catch {
            continue; // closed while we looked
        }
        total++;
        let m;
        if ((m = /^socket:\[(\d+)\]$/.exec(target))) {
            const t = tcp.get(m[1]);
            if (!t) add('socket:other');
            else if (t.state === 'LISTEN') add('tcp:listen');
            else if (listen.has(t.local_port)) add(`tcp:client:${t.state}`);
            else if (peer_by_port.has(t.remote_port)) add(`tcp:${peer_by_port.get(t.remote_port)}:${t.state}`);
            else add(`tcp:other:${t.state}`);
        } else if ((m = /^anon_inode:\[?([a-z_]+)\]?/.exec(target))) {
            add(m[1]);
        } else if (target.startsWith('pipe:')) {
            add('pipe');
        } else if (target.startsWith('/')) {
            add('file');
        } else {
            add('other');
        }
    }
    return { total, kinds };
}

// Sorted "kind=n" text of a census, for logs and the report.
export function censusText(kinds) {
    return Object.entries(kinds).sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k}=${n}`).join(' ');
}

// A census without the sockets that come and go with traffic: client connections (the soak's
// own keep-alive agent, closed before the end sample) and upstream keep-alive connections
// (curl's pool to each backend, bounded by max_connections_per_backend: its size is how many
// transfers overlapped at the busiest moment, not a leak).
export function stableKinds(kinds, pooled_peers) {
    const out = {};
    for (const [k, n] of Object.entries(kinds)) {
        if (k.startsWith('tcp:client:')) continue;
        const peer = /^tcp:([^:]+):ESTABLISHED$/.exec(k);
        if (peer && pooled_peers.includes(peer[1])) continue;
        out[k] = n;
    }
    return out;
}
