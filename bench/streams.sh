#!/usr/bin/env bash
# Tollgate stream benchmark: N concurrent token streams through nginx (proxy_buffering off),
# through the MHD+curl floor (bench/floor.c in stream mode) and through the gateway, all in
# front of the same build/mocknode (100 tokens at 50 ms by default), driven by the same load
# generator (bench/streamgen.c), and straight to the node for the time-to-first-token baseline.
#
# Per target and round: streams completed and errors, the proxy's CPU time (utime + stime of
# all its processes, from /proc) per stream and per event, its peak RSS (sampled every 0.2 s)
# and RSS per stream over its idle RSS, time to first token p50/p99 and what the proxy adds to
# the direct figure of the same round, and the generator's own CPU share (to see it was not
# the bottleneck). Targets alternate within a round (direct, nginx, floor, gateway) and rounds
# repeat, so drift on the machine hits all of them alike; the rows are medians over rounds.
# CPU time per stream is much less moved by other work on the machine than streams per second.
#
# Env: STREAMS_CONNS (default "2000 8000")  concurrent streams, one level after the other
#      STREAMS_SECONDS (default 20)         new streams start for this long; those under way
#                                           then run to their end, so every stream counts whole
#      STREAMS_ROUNDS (default 2)           alternated rounds per level
#      STREAMS_TOKENS (100), STREAMS_TOKEN_MS (50)   the node's stream
#      STREAMS_TARGETS (default "direct nginx floor gateway", plus "baseline" with STREAMS_BASELINE)
#      STREAMS_BASELINE=BINARY              another tollgate (e.g. a build of an earlier commit) run
#                                           with the same config as the "baseline" target, in the
#                                           same rounds: a before/after measured side by side
#      STREAMS_NO_RESULTS=1                 do not append to bench/RESULTS.md
#      STREAMS_KEEP=1                       keep the temp dir (configs, logs, raw figures)
#      BENCH_BUILD (default build)          where tollgate, mocknode, floor, streamgen are
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BENCH_BUILD:-build}"
[[ "$BUILD_DIR" == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
CONNS_LIST="${STREAMS_CONNS:-2000 8000}"
SECS="${STREAMS_SECONDS:-20}"
ROUNDS="${STREAMS_ROUNDS:-2}"
TOKENS="${STREAMS_TOKENS:-100}"
TOKEN_MS="${STREAMS_TOKEN_MS:-50}"
BASELINE="${STREAMS_BASELINE:-}"
TARGETS="${STREAMS_TARGETS:-direct nginx floor gateway${BASELINE:+ baseline}}"
MODEL="bench-model"
BENCH_KEY="sk-bench-5f1c0e7a9b2d4c68"
RESULTS="$ROOT/bench/RESULTS.md"
BODY="{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hi\"}],\"max_tokens\":$TOKENS,\"stream\":true}"

die() { printf 'streams: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'streams: %s\n' "$*" >&2; }

for v in "$SECS" "$ROUNDS" "$TOKENS" "$TOKEN_MS"; do
    [[ "$v" =~ ^[0-9]+$ ]] || die "STREAMS_SECONDS, _ROUNDS, _TOKENS and _TOKEN_MS must be integers"
done
for tool in nginx curl ss awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
for b in tollgate mocknode floor streamgen; do
    [[ -x "$BUILD_DIR/$b" ]] || die "$BUILD_DIR/$b missing; run make bench-streams"
done
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)
for n in $CONNS_LIST; do
    # direct: the generator and the node hold n each; a proxy holds 2n (caller and node)
    if ((2 * n + 256 > FDS)); then die "STREAMS_CONNS $n: needs $((2 * n + 256)) file descriptors, ulimit -n is $FDS"; fi
done
NGINX="$(command -v nginx)"
HZ=$(getconf CLK_TCK)

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-streams.XXXXXX")"
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${STREAMS_KEEP:-0}" == 1 ]]; then note "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=" "
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { EPH_LO=32768; EPH_HI=60999; }
if ((EPH_LO > 12000)); then PORT_LO=10000 PORT_N=$((EPH_LO - 10000)); else PORT_LO=$((EPH_HI + 1)) PORT_N=$((65535 - EPH_HI)); fi
((PORT_N >= 1000)) || { PORT_LO=20000 PORT_N=40000; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((PORT_LO + (RANDOM * 32768 + RANDOM) % PORT_N))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if [[ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

wait_http() {
    local name=$1 pid=$2 url=$3 log=${4:-} code
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            [[ -n "$log" ]] && tail -n 20 "$log" >&2
            die "$name exited during start-up"
        fi
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)"
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && return 0
        sleep 0.1
    done
    die "$name did not answer on $url within 10 s"
}

# ---- the node, the proxies ---------------------------------------------------------------

# One node per target: a node takes at most 10,000 connections, and at 8,000 streams the idle
# keep-alive pools a proxy keeps to its node after its turn would otherwise use up the next
# target's share of the same node (it then resets connections).
declare -A NODE_PORT NODE_PID
start_node() {
    local t=$1 port
    port=$(free_port)
    "$BUILD_DIR/mocknode" --port "$port" --host 127.0.0.1 --name "bench-$t" --models "$MODEL" \
        --ttfb-ms 0 --token-ms "$TOKEN_MS" --tokens "$TOKENS" --threads 2 --quiet >"$TMP/mocknode-$t.log" 2>&1 &
    NODE_PID[$t]=$!
    PIDS+=("${NODE_PID[$t]}")
    wait_http "mocknode ($t)" "${NODE_PID[$t]}" "http://127.0.0.1:$port/healthz" "$TMP/mocknode-$t.log"
    NODE_PORT[$t]=$port
}
for t in direct nginx floor gateway baseline; do start_node "$t"; done
UP_PORT=${NODE_PORT[direct]}
MOCK_PID=${NODE_PID[direct]}

NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    upstream node {
        server 127.0.0.1:${NODE_PORT[nginx]};
        keepalive 4096;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://node;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
"$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" || die "nginx -t failed"
"$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/healthz"

FLOOR_PORT=$(free_port)
"$BUILD_DIR/floor" "$FLOOR_PORT" "http://127.0.0.1:${NODE_PORT[floor]}/v1/chat/completions" 2 stream >"$TMP/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_http floor "$FLOOR_PID" "http://127.0.0.1:$FLOOR_PORT/" "$TMP/floor.log"

GW_PORT=$(free_port)
# One static key, one backend; the node's learned concurrency limit and the connection pool
# start above the load, so the routing's slow start does not queue the first streams. No
# stuck-node detection: on a loaded 2-CPU machine the node's first bytes come seconds late
# under thousands of streams, and the one node would be failed and ejected (errors that
# measure the machine, not the relay).
cat >"$TMP/gateway.json" <<EOF
{
  "listen": "127.0.0.1:$GW_PORT",
  "workers": 2,
  "log_level": "warn",
  "drain_timeout_ms": 2000,
  "max_connections": 20000,
  "upstream": {"max_connections_per_backend": 20000},
  "routing": {"limit_initial": 20000, "limit_max": 20000},
  "health": {"stuck_factor": 0},
  "keys": [{"name": "bench", "key": "$BENCH_KEY"}],
  "backends": [
    {"name": "bench-upstream", "url": "http://127.0.0.1:${NODE_PORT[gateway]}/v1",
     "models": [{"name": "$MODEL", "input_usd_per_mtok": 0.05, "output_usd_per_mtok": 0.08}]}
  ]
}
EOF
"$BUILD_DIR/tollgate" -c "$TMP/gateway.json" --check-config >"$TMP/gateway.check" 2>&1 \
    || { cat "$TMP/gateway.check" >&2; die "gateway rejected its config"; }
"$BUILD_DIR/tollgate" -c "$TMP/gateway.json" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http gateway "$GW_PID" "http://127.0.0.1:$GW_PORT/healthz" "$TMP/gateway.log"
if [[ -n "$BASELINE" ]]; then
    [[ -x "$BASELINE" ]] || die "STREAMS_BASELINE: $BASELINE is not an executable"
    BL_PORT=$(free_port)
    sed "s/127.0.0.1:$GW_PORT/127.0.0.1:$BL_PORT/; s/127.0.0.1:${NODE_PORT[gateway]}/127.0.0.1:${NODE_PORT[baseline]}/" \
        "$TMP/gateway.json" >"$TMP/baseline.json"
    "$BASELINE" -c "$TMP/baseline.json" >"$TMP/baseline.log" 2>&1 &
    BL_PID=$!
    PIDS+=("$BL_PID")
    wait_http baseline "$BL_PID" "http://127.0.0.1:$BL_PORT/healthz" "$TMP/baseline.log"
fi

# Every target answers one stream before the load.
preflight() {
    local name=$1 url=$2 out
    out="$("$BUILD_DIR/streamgen" -c 1 -d 1 -r 0 -H "Authorization: Bearer $BENCH_KEY" -b "$BODY" "$url")"
    [[ "$out" == *" errors=0 "* && "$out" != "streams=0 "* ]] || die "$name: preflight stream failed: $out"
}

url_of() {
    case $1 in
    direct) echo "http://127.0.0.1:$UP_PORT/v1/chat/completions" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" ;;
    floor) echo "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions" ;;
    gateway) echo "http://127.0.0.1:$GW_PORT/v1/chat/completions" ;;
    baseline) echo "http://127.0.0.1:$BL_PORT/v1/chat/completions" ;;
    esac
}
# pids_of TARGET: the processes whose CPU and memory count (nginx: master and workers).
pids_of() {
    case $1 in
    direct) echo "$MOCK_PID" ;;
    nginx) echo "$NGINX_PID $(cat /proc/"$NGINX_PID"/task/*/children 2>/dev/null)" ;;
    floor) echo "$FLOOR_PID" ;;
    gateway) echo "$GW_PID" ;;
    baseline) echo "$BL_PID" ;;
    esac
}
cpu_ticks() {
    local p t=0
    for p in "$@"; do
        t=$((t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
    done
    echo "$t"
}
rss_kib() {
    local p
    for p in "$@"; do cat "/proc/$p/status" 2>/dev/null || true; done | awk '/^VmRSS:/ { r += $2 } END { print r + 0 }'
}

# Each target's RSS after its preflight, before any load: RSS per stream is the peak over it.
declare -A IDLE_RSS
for t in $TARGETS; do
    [[ "$t" =~ ^(direct|nginx|floor|gateway|baseline)$ ]] || die "STREAMS_TARGETS: unknown target '$t'"
    preflight "$t" "$(url_of "$t")"
    # shellcheck disable=SC2046
    IDLE_RSS[$t]=$(rss_kib $(pids_of "$t"))
done
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
note "load average before the runs: $LOAD_START ($(nproc) CPUs)"

# ---- the runs ----------------------------------------------------------------------------

# One run: TARGET CONNS ROUND -> a line in $TMP/runs: "conns target round streams errors events
# ttft_p50 ttft_p99 cpu_us_per_stream cpu_us_per_event peak_rss_kib rss_per_stream_kib gen_cpu_pct"
run_one() {
    local t=$1 n=$2 round=$3 pids t0 t1 idle out sampler peak ramp
    pids=$(pids_of "$t")
    idle=${IDLE_RSS[$t]}
    # The connections open over a second per 2,000 (a storm of connects measures the
    # listen queue, not the relay).
    ramp=$(awk -v n="$n" 'BEGIN { print n / 2000 }')
    echo 0 >"$TMP/peak"
    # shellcheck disable=SC2086
    (peak=0; while :; do r=$(rss_kib $pids); ((r > peak)) && peak=$r && echo "$peak" >"$TMP/peak"; sleep 0.2; done) &
    sampler=$!
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids)
    out="$("$BUILD_DIR/streamgen" -c "$n" -d "$SECS" -r "$ramp" -H "Authorization: Bearer $BENCH_KEY" -b "$BODY" "$(url_of "$t")")"
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(cat "$TMP/peak")
    echo "$out" >>"$TMP/raw"
    awk -v n="$n" -v t="$t" -v r="$round" -v ticks=$((t1 - t0)) -v hz="$HZ" -v peak="$peak" -v idle="$idle" -v line="$out" '
        BEGIN {
            k = split(line, kv, " ")
            for (i = 1; i <= k; i++) { split(kv[i], p, "="); f[p[1]] = p[2] }
            cpu = ticks / hz
            s = f["streams"] > 0 ? f["streams"] : 1
            e = f["events"] > 0 ? f["events"] : 1
            printf "%d %s %d %d %d %d %d %d %.0f %.2f %d %.1f %.0f\n", n, t, r, f["streams"], f["errors"],
                f["events"], f["ttft_p50_us"], f["ttft_p99_us"], cpu / s * 1e6, cpu / e * 1e6, peak,
                (peak - idle) / n, f["cpu_s"] / f["wall_s"] * 100
        }' >>"$TMP/runs"
    note "$(tail -n 1 "$TMP/runs" | awk '{ printf "%s @%d round %d: %d streams, %d errors, CPU %s us/stream %s us/event, peak RSS %.1f MiB (%.1f KiB/stream), TTFT p50 %.2f ms p99 %.2f ms, generator CPU %s%%", $2, $1, $3, $4, $5, $9, $10, $11 / 1024, $12, $7 / 1000, $8 / 1000, $13 }')"
}

: >"$TMP/runs"
for n in $CONNS_LIST; do
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in $TARGETS; do
            run_one "$t" "$n" "$round"
            # the node's and the proxy's sockets in TIME_WAIT and their memory settle
            sleep 2
        done
    done
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
GW_PROBLEMS=$(grep -c . "$TMP/gateway.log" || true)

# ---- the report --------------------------------------------------------------------------

# Medians over rounds, per (conns, target); added TTFT against the direct median of the level.
report() {
    echo
    echo "### Streams: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "\`bench/streams.sh\` (STREAMS_CONNS=\"$CONNS_LIST\" STREAMS_SECONDS=$SECS STREAMS_ROUNDS=$ROUNDS):" \
        "each stream $TOKENS tokens at $TOKEN_MS ms from build/mocknode (2 threads); streams start for ${SECS} s," \
        "then those under way end. $(nproc) CPUs shared with the generator and the node;" \
        "load average $LOAD_START before, $LOAD_END after. Medians of $ROUNDS alternated rounds."
    echo
    echo "| streams | target | completed | errors | CPU/stream | CPU/event | peak RSS | RSS/stream | TTFT p50 | TTFT p99 | added TTFT p99 | generator CPU |"
    echo "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    awk '
        function med(key,   n, i, j, v, tmp) {
            n = split(vals[key], v, " ")
            for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { tmp = v[j]; v[j] = v[j - 1]; v[j - 1] = tmp }
            return n ? (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) : 0
        }
        {
            k = $1 SUBSEP $2
            if (!(k in seen)) { seen[k] = 1; order[++no] = k }
            for (f = 4; f <= 13; f++) vals[k SUBSEP f] = vals[k SUBSEP f] " " $f
            errs[k] += $5
        }
        END {
            for (i = 1; i <= no; i++) {
                k = order[i]; split(k, kk, SUBSEP)
                d = kk[1] SUBSEP "direct"
                p99 = med(k SUBSEP 8); dp99 = (d in seen) ? med(d SUBSEP 8) : ""
                added = (kk[2] != "direct" && dp99 != "") ? sprintf("%.2f ms", (p99 - dp99) / 1000) : "-"
                printf "| %d | %s | %d | %d | %s | %s | %.1f MiB | %.1f KiB | %.2f ms | %.2f ms | %s | %.0f%% |\n",
                    kk[1], kk[2], med(k SUBSEP 4), errs[k], (kk[2] == "direct" ? "(node) " : "") sprintf("%.0f us", med(k SUBSEP 9)),
                    sprintf("%.1f us", med(k SUBSEP 10)), med(k SUBSEP 11) / 1024, med(k SUBSEP 12),
                    med(k SUBSEP 7) / 1000, p99 / 1000, added, med(k SUBSEP 13)
                cpu[kk[1], kk[2]] = med(k SUBSEP 9); rss[kk[1], kk[2]] = med(k SUBSEP 11)
                lv[kk[1]] = 1
            }
            print ""
            for (n in lv) {
                if (cpu[n, "nginx"] > 0 && cpu[n, "gateway"] > 0)
                    printf "- %d streams: gateway ÷ nginx CPU per stream %.2f× (target ≤ 1.2×), peak RSS %.2f× (target ≤ 1.2×)", n,
                        cpu[n, "gateway"] / cpu[n, "nginx"], rss[n, "gateway"] / rss[n, "nginx"]
                if (cpu[n, "floor"] > 0 && cpu[n, "nginx"] > 0)
                    printf "; floor ÷ nginx CPU %.2f×, RSS %.2f×", cpu[n, "floor"] / cpu[n, "nginx"], rss[n, "floor"] / rss[n, "nginx"]
                if (cpu[n, "floor"] > 0 && cpu[n, "gateway"] > 0)
                    printf "; gateway ÷ floor CPU %.2f×", cpu[n, "gateway"] / cpu[n, "floor"]
                if (cpu[n, "baseline"] > 0 && cpu[n, "gateway"] > 0)
                    printf "; gateway ÷ baseline CPU %.2f×, RSS %.2f×", cpu[n, "gateway"] / cpu[n, "baseline"], rss[n, "gateway"] / rss[n, "baseline"]
                print ""
            }
        }' "$TMP/runs"
    echo
    echo "CPU is the proxy's own (all its processes and threads, user + system, from /proc), divided by"
    echo "the streams (events) its callers received whole; the direct row's is the node's. RSS per stream:"
    echo "(peak RSS - RSS before any load) / streams. Added TTFT: the proxy's p99 minus the direct p99 of"
    echo "the same level."
    if [[ "$GW_PROBLEMS" -gt 0 ]]; then
        echo
        echo "The gateway logged $GW_PROBLEMS line(s) at warn level or above during the runs; the first:"
        echo
        echo '```'
        head -n 3 "$TMP/gateway.log" | cut -c1-300
        echo '```'
    fi
}

report >"$TMP/report.md"
cat "$TMP/report.md"
if [[ "${STREAMS_NO_RESULTS:-0}" != 1 ]]; then
    cat "$TMP/report.md" >>"$RESULTS"
    note "appended to bench/RESULTS.md"
fi
