#!/usr/bin/env bash
# Tollgate benchmark: gateway vs nginx reverse proxy in front of the same upstream.
# Measures throughput (wrk, 64 connections), latency at 1 connection (p50/p99) and the
# gateway's RSS. Prints a table and appends it to bench/RESULTS.md.
# On the static upstream it also measures the cost of the gateway's metrics (the gateway
# with metrics on and with `metrics.enabled: false`, alternated) and the gateway answering
# from its response cache (every request a hit), against nginx serving the static answer,
# and the cost of tracing (sample_ratio 1.0 with the OTLP collector down, alternated with
# the gateway without tracing).
# The "MHD+curl floor" row is bench/floor.c: the gateway's engine (libev, libmicrohttpd with
# suspend/resume, a curl multi) relaying bodies and nothing else, the most any proxy built
# on these libraries this way can do.
# It never fails on the targets it reports against; it fails only when the setup is broken
# (missing binaries, a process that does not start, a preflight request that is not answered).
#
# Env: BENCH_SECONDS (default 10)       length of each measured wrk run
#      BENCH_UPSTREAMS (default "static mock")  which upstreams to run, in order
#      BENCH_AB_ROUNDS (default 2)      metrics on/off, tracing on/off: alternated throughput
#                                       runs of each
#      BENCH_KEEP=1                     keep the temp dir (configs, logs, wrk output)
#      BENCH_NO_RESULTS=1               do not append to bench/RESULTS.md
#      BENCH_GATEWAY, BENCH_MOCKNODE, BENCH_FLOOR   binaries to use instead of build/tollgate,
#                                       build/mocknode, build/floor
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${BENCH_SECONDS:-10}"
UPSTREAMS="${BENCH_UPSTREAMS:-static mock}"
WARMUP_SECS=2
GATEWAY="${BENCH_GATEWAY:-$ROOT/build/tollgate}"
MOCKNODE="${BENCH_MOCKNODE:-$ROOT/build/mocknode}"
FLOOR="${BENCH_FLOOR:-$ROOT/build/floor}"
RESULTS="$ROOT/bench/RESULTS.md"
MODEL="bench-model"
BENCH_KEY="sk-bench-5f1c0e7a9b2d4c68"
REQ_BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say hi"}],"max_tokens":16}'
# Shaped like a real chat.completion answer of about the size mocknode sends.
STATIC_ANSWER='{"id":"chatcmpl-bench0000000000000000","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there lorem ipsum dolor"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}'

die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'bench: %s\n' "$*" >&2; }

[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer (got '$SECS')"
AB_ROUNDS="${BENCH_AB_ROUNDS:-2}"
[[ "$AB_ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_AB_ROUNDS must be a positive integer (got '$AB_ROUNDS')"
[[ -n "${UPSTREAMS// /}" ]] || die "BENCH_UPSTREAMS is empty"
for u in $UPSTREAMS; do
    [[ "$u" == static || "$u" == mock ]] || die "BENCH_UPSTREAMS: unknown upstream '$u' (static|mock)"
done
for tool in nginx wrk curl ss awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
[[ -x "$GATEWAY" ]] || die "$GATEWAY missing; run make first"
[[ -x "$FLOOR" ]] || die "$FLOOR missing; run make bench"
if [[ " $UPSTREAMS " == *" mock "* ]]; then
    [[ -x "$MOCKNODE" ]] || die "$MOCKNODE missing; run make first"
fi
NGINX="$(command -v nginx)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")"
# nginx workers may run as another user when started as root; they must reach the conf dir.
chmod 755 "$TMP"
PIDS=()

cleanup() {
    local rc=$?
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # A process that ignores SIGTERM for 5 s gets SIGKILL.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        note "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_pid PID: stop one process we started and forget it.
stop_pid() {
    local pid=$1 i keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in "${PIDS[@]}"; do
        [[ "$i" == "$pid" ]] || keep+=("$i")
    done
    PIDS=("${keep[@]}")
}

USED_PORTS=" "
# Ports are picked outside the kernel's ephemeral range: a port there may be taken by an
# outgoing connection (wrk's, nginx's keep-alive pool, ...) between the check and the bind.
read -r EPH_LO EPH_HI < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { EPH_LO=32768; EPH_HI=60999; }
if ((EPH_LO > 12000)); then
    PORT_LO=10000 PORT_N=$((EPH_LO - 10000))
else
    PORT_LO=$((EPH_HI + 1)) PORT_N=$((65535 - EPH_HI))
fi
((PORT_N >= 1000)) || { PORT_LO=20000 PORT_N=40000; }
# free_port: a loopback TCP port no socket uses (and that we did not hand out yet).
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

# wait_http NAME PID URL [LOG]: wait until URL answers with any HTTP status. LOG: the file the
# process logs to, shown when it exits.
wait_http() {
    local name=$1 pid=$2 url=$3 log=${4:-} code
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            if [[ -n "$log" ]]; then tail -n 20 "$log" >&2 2>/dev/null || true; fi
            die "$name exited during start-up (see above)"
        fi
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)"
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && return 0
        sleep 0.1
    done
    die "$name did not answer on $url within 10 s"
}

# cache_header FILE: the x-tollgate-cache value of the last response whose headers are in FILE.
cache_header() {
    awk 'tolower($1) == "x-tollgate-cache:" { v = $2 } END { sub(/\r$/, "", v); print v }' "$1"
}

# preflight NAME URL EXPECTED_STATUS [AUTH]: one chat request must get the expected status.
# Sets PF_CACHE to the answer's x-tollgate-cache header (empty when there is none).
preflight() {
    local name=$1 url=$2 want=$3 auth=${4:-} out code
    local args=(-s -o "$TMP/preflight.out" -D "$TMP/preflight.hdr" -w '%{http_code}'
                --max-time 5 -H 'Content-Type: application/json' --data-binary "$REQ_BODY")
    if [[ -n "$auth" ]]; then args+=(-H "Authorization: Bearer $auth"); fi
    rm -f "$TMP/preflight.hdr"
    code="$(curl "${args[@]}" "$url" 2>/dev/null || true)"
    if [[ "$code" != "$want" ]]; then
        out="$(head -c 400 "$TMP/preflight.out" 2>/dev/null || true)"
        die "$name: preflight POST $url got status '$code', want $want; body: $out"
    fi
    PF_CACHE="$(cache_header "$TMP/preflight.hdr" 2>/dev/null || true)"
}

# preflight_cache_hit NAME URL: two identical chat requests on one connection (the cache is
# per gateway worker, and one connection stays on one worker): both must get 200 and the
# second must be answered from the cache (x-tollgate-cache: hit), with the upstream's body.
preflight_cache_hit() {
    local name=$1 url=$2 codes first second
    rm -f "$TMP/preflight-hit.hdr"
    codes="$(curl -s -D "$TMP/preflight-hit.hdr" -o "$TMP/preflight-1.out" -o "$TMP/preflight-2.out" \
        -w '%{http_code} ' --max-time 5 -H 'Content-Type: application/json' \
        --data-binary "$REQ_BODY" "$url" "$url" 2>/dev/null || true)"
    [[ "$codes" == "200 200 " ]] \
        || die "$name: preflight POST $url twice got statuses '$codes', want 200 200; body: $(head -c 400 "$TMP/preflight-2.out" 2>/dev/null || true)"
    first="$(awk 'tolower($1) == "x-tollgate-cache:" { sub(/\r$/, "", $2); print $2; exit }' "$TMP/preflight-hit.hdr")"
    second="$(cache_header "$TMP/preflight-hit.hdr")"
    [[ "$second" == hit ]] \
        || die "$name: preflight: the second identical request got x-tollgate-cache '$second' (first '$first'), want hit"
    cmp -s "$TMP/preflight-1.out" "$TMP/preflight-2.out" \
        || die "$name: preflight: the cached answer differs from the upstream's"
}

# metric_sum PORT NAME [LABELS]: the sum of a gateway's /metrics samples of NAME whose labels
# contain LABELS (a substring, e.g. 'result="hit"'); 0 when there are none.
metric_sum() {
    local port=$1 name=$2 labels=${3:-} text
    text="$(curl -s --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null)" \
        || die "gateway on port $port: GET /metrics failed"
    awk -v n="$name" -v l="$labels" '
        index($1, n "{") == 1 || $1 == n { if (l == "" || index($1, l)) s += $NF }
        END { printf "%.0f\n", s }' <<<"$text"
}

# ---------------------------------------------------------------- nginx ----------

# nginx_common DIR: the top of an nginx.conf whose files all live under DIR.
nginx_common() {
    local dir=$1 workers=$2
    cat <<EOF
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
EOF
}

nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
EOF
}

# start_nginx DIR NAME: run nginx in the foreground (in background of this shell).
start_nginx() {
    local dir=$1 name=$2
    "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
        || { cat "$dir/error.log" >&2 2>/dev/null || true; die "$name: nginx -t failed"; }
    "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

start_static_upstream() {
    local dir="$TMP/nginx-static" port
    port="$(free_port)"
    mkdir -p "$dir"
    {
        nginx_common "$dir" 1
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type application/json;
            return 200 '$STATIC_ANSWER';
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_nginx "$dir" "nginx static upstream"
    wait_http "nginx static upstream" "$LAST_PID" "http://127.0.0.1:$port/"
    UP_PORT=$port
}

start_mock_upstream() {
    local port
    port="$(free_port)"
    "$MOCKNODE" --port "$port" --host 127.0.0.1 --name bench --models "$MODEL" \
        --ttfb-ms 0 --token-ms 0 --threads 1 --quiet >"$TMP/mocknode.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_http "mocknode" "$LAST_PID" "http://127.0.0.1:$port/healthz" "$TMP/mocknode.log"
    UP_PORT=$port
}

# start_nginx_proxy UPSTREAM_PORT: nginx reverse proxy with a keep-alive pool to the upstream.
start_nginx_proxy() {
    local up=$1 dir="$TMP/nginx-proxy-$1" port
    port="$(free_port)"
    mkdir -p "$dir"
    {
        nginx_common "$dir" 2
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    upstream bench_upstream {
        server 127.0.0.1:$up;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_nginx "$dir" "nginx proxy"
    wait_http "nginx proxy" "$LAST_PID" "http://127.0.0.1:$port/"
    PROXY_PORT=$port
}

# start_floor UPSTREAM_PORT: bench/floor.c (two workers, like the gateway) in front of the upstream.
start_floor() {
    local up=$1 port
    port="$(free_port)"
    "$FLOOR" "$port" "http://127.0.0.1:$up/v1/chat/completions" 2 >"$TMP/floor-$up.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_http "MHD+curl floor" "$LAST_PID" "http://127.0.0.1:$port/" "$TMP/floor-$up.log"
    FLOOR_PORT=$port
}

# ---------------------------------------------------------------- gateway --------

# start_gateway TAG UPSTREAM_PORT WITH_KEY [EXTRA]: the gateway with one backend and one
# model. EXTRA: more top-level config members, JSON without the braces, e.g.
# '"metrics": {"enabled": false}'.
start_gateway() {
    local tag=$1 up=$2 with_key=$3 extra=${4:-} port conf keys
    port="$(free_port)"
    conf="$TMP/gateway-$tag.json"
    keys='[]'
    if [[ "$with_key" == 1 ]]; then keys="[{\"name\":\"bench\",\"key\":\"$BENCH_KEY\"}]"; fi
    if [[ -n "$extra" ]]; then extra="$extra,"; fi
    cat >"$conf" <<EOF
{
  "listen": "127.0.0.1:$port",
  "workers": 2,
  "log_level": "warn",
  "drain_timeout_ms": 2000,
  $extra
  "keys": $keys,
  "backends": [
    {"name": "bench-upstream", "url": "http://127.0.0.1:$up/v1",
     "models": [{"name": "$MODEL",
                 "input_usd_per_mtok": 0.05, "output_usd_per_mtok": 0.08}]}
  ]
}
EOF
    "$GATEWAY" -c "$conf" --check-config >"$TMP/gateway-$tag.check" 2>&1 \
        || { cat "$TMP/gateway-$tag.check" >&2; die "gateway rejected its config $conf"; }
    "$GATEWAY" -c "$conf" >"$TMP/gateway-$tag.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_http "gateway ($tag)" "$LAST_PID" "http://127.0.0.1:$port/healthz" "$TMP/gateway-$tag.log"
    GW_PORT=$port
}

# rss_kib PID: "VmRSS RssAnon" in KiB of PID plus its child processes (workers, if any).
# RssAnon is the process's own memory; the rest of VmRSS is mostly shared library pages.
rss_kib() {
    local pid=$1 c pids
    pids="$pid $(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
    for c in $pids; do
        cat "/proc/$c/status" 2>/dev/null || true
    done | awk '/^VmRSS:/ { r += $2 } /^RssAnon:/ { a += $2 } END { print r + 0, a + 0 }'
}

kib_to_mib() { awk -v k="$1" 'BEGIN { if (k + 0 <= 0) print "n/a"; else printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- wrk ------------

make_lua() {
    local file=$1 auth=${2:-}
    {
        echo 'wrk.method = "POST"'
        printf 'wrk.body = [[%s]]\n' "$REQ_BODY"
        echo 'wrk.headers["Content-Type"] = "application/json"'
        if [[ -n "$auth" ]]; then printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$auth"; fi
    } >"$file"
}
make_lua "$TMP/post.lua"
make_lua "$TMP/post-auth.lua" "$BENCH_KEY"

# wrk_parse FILE: prints "rps p50_us p99_us non2xx sockerr" (fields "-" when absent).
# Latency units from wrk: us, ms, s, m, h; request counts may carry k/M suffixes elsewhere,
# but "Requests/sec:" is always a plain number.
wrk_parse() {
    awk '
    function to_us(s,    n, u) {
        n = s; sub(/[a-z]+$/, "", n); u = s; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n + 0
        if (u == "ms") return n * 1000
        if (u == "s")  return n * 1000000
        if (u == "m")  return n * 60000000
        if (u == "h")  return n * 3600000000
        return -1
    }
    BEGIN { rps = "-"; p50 = "-"; p99 = "-"; non2xx = 0; sockerr = 0 }
    /^Requests\/sec:/ { rps = $2 }
    /^[ \t]+50%[ \t]/ { p50 = to_us($2) }
    /^[ \t]+99%[ \t]/ { p99 = to_us($2) }
    /Non-2xx or 3xx responses:/ { non2xx = $NF + 0 }
    /Socket errors:/ {
        line = $0; sub(/.*Socket errors:/, "", line)
        n = split(line, parts, ",")
        for (i = 1; i <= n; i++) { split(parts[i], kv, " "); sockerr += kv[2] + 0 }
    }
    END { print rps, p50, p99, non2xx, sockerr }
    ' "$1"
}

# CPU time used by processes other than ours (this script and everything it started), so a
# row measured while the machine was busy with something else can be flagged.
# cpu_snapshot: "busy_jiffies total_jiffies our_jiffies"; busy is user+nice+system, which
# is also what our processes' utime/stime/cutime/cstime add up to (irq time is apart).
cpu_snapshot() {
    local sys ours
    sys="$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3 + $4, t }' /proc/stat)"
    ours="$(ps -e -o pid= -o ppid= | awk -v root=$$ '
        { parent[$1] = $2 }
        END {
            print root
            for (p in parent) {
                q = p
                while ((q in parent) && q != root && q > 1) q = parent[q]
                if (q == root && p != root) print p
            }
        }' | while read -r p; do cat "/proc/$p/stat" 2>/dev/null || true; echo; done \
        | awk 'NF { sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }')"
    echo "$sys $ours"
}

# other_cpu_pct SNAP_BEFORE SNAP_AFTER: share of all CPU time used by other processes.
other_cpu_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        total = y[2] - x[2]; other = (y[1] - x[1]) - (y[3] - x[3])
        if (total <= 0 || other < 0) other = 0
        printf "%.0f", (total > 0) ? 100 * other / total : 0 }'
}

INVALID_NOTES=()
NOISY_NOTES=()

# run_wrk LABEL OUTFILE LUA URL wrk-args...: run wrk, report errors loudly.
# Sets W_RPS W_P50 W_P99 W_OK (1 when no non-2xx and no socket errors).
run_wrk() {
    local label=$1 out=$2 lua=$3 url=$4
    shift 4
    if ! wrk "$@" -s "$lua" "$url" >"$out" 2>&1; then
        cat "$out" >&2
        die "wrk failed for $label"
    fi
    read -r W_RPS W_P50 W_P99 W_NON2XX W_SOCKERR < <(wrk_parse "$out")
    W_OK=1
    if [[ "$W_NON2XX" != 0 || "$W_SOCKERR" != 0 || "$W_RPS" == "-" ]]; then
        W_OK=0
        {
            echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
            echo "!!! INVALID RUN: $label ($*)"
            echo "!!! non-2xx responses: $W_NON2XX, socket errors: $W_SOCKERR"
            grep -E 'Socket errors|Non-2xx|requests in' "$out" | sed 's/^/!!!   /'
            echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        } >&2
        INVALID_NOTES+=("$label: non-2xx $W_NON2XX, socket errors $W_SOCKERR ($*)")
    fi
}

# Rows of the result table: "upstream|target|rps|p50_us|p99_us|valid(1/0)|other_cpu_pct".
ROWS=()

# What the measured runs of each row ("UP/TARGET") gave so far: the CPU time (cpu_snapshot
# deltas summed), validity, every throughput run's req/s and the latency run's p50/p99.
declare -A M_CPU M_OK M_RUNS M_P50 M_P99

# wrk_file UP TARGET KIND: where a run's wrk output goes.
wrk_file() {
    local t="${1}-${2// /_}"
    t=${t//[()]/}
    echo "$TMP/wrk-$t-$3.txt"
}

# snap_add ACC BEFORE AFTER: ACC plus the CPU time between two cpu_snapshots.
snap_add() {
    awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN {
        split(a, x, " "); split(b, y, " "); split(c, z, " ")
        printf "%.0f %.0f %.0f\n", x[1] + z[1] - y[1], x[2] + z[2] - y[2], x[3] + z[3] - y[3] }'
}

# warm_up UP TARGET URL LUA: 64 connections for WARMUP_SECS, not reported.
warm_up() {
    run_wrk "$1/$2 warm-up" "$(wrk_file "$1" "$2" warm)" "$4" "$3" -t2 -c64 -d"${WARMUP_SECS}s"
}

# throughput_run UP TARGET URL LUA [N]: one throughput run (the Nth of the row); the row
# reports the median of its runs.
throughput_run() {
    local up=$1 target=$2 url=$3 lua=$4 n=${5:-} key="$1/$2" before rps
    before=$(cpu_snapshot)
    run_wrk "$key throughput${n:+ #$n}" "$(wrk_file "$up" "$target" "c64${n:+-$n}")" "$lua" "$url" \
        -t2 -c64 -d"${SECS}s"
    M_CPU[$key]=$(snap_add "${M_CPU[$key]:-0 0 0}" "$before" "$(cpu_snapshot)")
    [[ "$W_OK" == 1 ]] || M_OK[$key]=0
    M_RUNS[$key]="${M_RUNS[$key]:+${M_RUNS[$key]} }$W_RPS"
    [[ -z "$n" ]] || note "[$up] $target: throughput run $n: $W_RPS req/s"
}

# median WORDS...: the median of numbers ("-" ones are left out; "-" when none is left).
median() {
    printf '%s\n' "$@" | awk '$1 != "-" { v[++n] = $1 + 0 }
        END {
            if (!n) { print "-"; exit }
            for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) {
                t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
            printf "%.2f\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }'
}

# latency_run UP TARGET URL LUA: one latency run at 1 connection.
latency_run() {
    local up=$1 target=$2 url=$3 lua=$4 key="$1/$2" before
    before=$(cpu_snapshot)
    run_wrk "$key latency" "$(wrk_file "$up" "$target" c1)" "$lua" "$url" \
        -t1 -c1 -d"${SECS}s" --latency
    M_CPU[$key]=$(snap_add "${M_CPU[$key]:-0 0 0}" "$before" "$(cpu_snapshot)")
    [[ "$W_OK" == 1 ]] || M_OK[$key]=0
    M_P50[$key]=$W_P50
    M_P99[$key]=$W_P99
}

# add_row UP TARGET: the row from its runs, flagged when other processes used the CPUs.
add_row() {
    local up=$1 target=$2 key="$1/$2" ok rps p50 p99 other
    ok=${M_OK[$key]:-1}
    # shellcheck disable=SC2086 # the runs are words
    rps=$(median ${M_RUNS[$key]:--})
    p50=${M_P50[$key]:--}
    p99=${M_P99[$key]:--}
    other=$(other_cpu_pct "0 0 0" "${M_CPU[$key]:-0 0 0}")
    if ((other > 10)); then
        echo "!!! $key: other processes used ${other}% of the CPUs during the runs" >&2
        NOISY_NOTES+=("$key: other processes used ${other}% of the CPUs during the runs")
    fi
    ROWS+=("$up|$target|$rps|$p50|$p99|$ok|$other")
    note "[$up] $target: $rps req/s, p50 ${p50}us, p99 ${p99}us, other CPU ${other}%$([[ $ok == 1 ]] || echo ' (INVALID)')"
}

# measure UP TARGET URL LUA: warm-up, throughput at 64 connections, latency at 1.
measure() {
    local up=$1 target=$2 url=$3 lua=$4
    note "[$up] $target: warm-up ${WARMUP_SECS}s, throughput ${SECS}s @64, latency ${SECS}s @1"
    warm_up "$up" "$target" "$url" "$lua"
    throughput_run "$up" "$target" "$url" "$lua"
    latency_run "$up" "$target" "$url" "$lua"
    add_row "$up" "$target"
}

# measure_ab UP TARGET_A URL_A TARGET_B URL_B LUA: two targets whose throughputs are
# compared closely: both warmed up, then AB_ROUNDS throughput runs of each, alternated
# (A, B, A, B, ...), each row reporting the median of its runs; then one latency run of
# each.
measure_ab() {
    local up=$1 ta=$2 ua=$3 tb=$4 ub=$5 lua=$6 i
    note "[$up] $ta / $tb: warm-up ${WARMUP_SECS}s each, $AB_ROUNDS alternated throughput runs of ${SECS}s @64 each, latency ${SECS}s @1 each"
    warm_up "$up" "$ta" "$ua" "$lua"
    warm_up "$up" "$tb" "$ub" "$lua"
    for ((i = 1; i <= AB_ROUNDS; i++)); do
        throughput_run "$up" "$ta" "$ua" "$lua" "$i"
        throughput_run "$up" "$tb" "$ub" "$lua" "$i"
    done
    latency_run "$up" "$ta" "$ua" "$lua"
    latency_run "$up" "$tb" "$ub" "$lua"
    add_row "$up" "$ta"
    add_row "$up" "$tb"
}

# proc_cpu_ticks PID: the CPU time (user + system, in clock ticks) a process has used.
proc_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# measure_ab_cpu UP TARGET_A URL_A PID_A TARGET_B URL_B PID_B LUA: measure_ab, and each
# target's own CPU time per answered request over its throughput runs (less moved by other
# work on the machine than req/s), in AB_CPU_US[UP/TARGET].
declare -A AB_CPU_US
measure_ab_cpu() {
    local up=$1 ta=$2 ua=$3 pa=$4 tb=$5 ub=$6 pb=$7 lua=$8 i t0 hz
    local ticks_a=0 ticks_b=0 reqs_a=0 reqs_b=0
    hz=$(getconf CLK_TCK)
    note "[$up] $ta / $tb: warm-up ${WARMUP_SECS}s each, $AB_ROUNDS alternated throughput runs of ${SECS}s @64 each (with their CPU time), latency ${SECS}s @1 each"
    warm_up "$up" "$ta" "$ua" "$lua"
    warm_up "$up" "$tb" "$ub" "$lua"
    for ((i = 1; i <= AB_ROUNDS; i++)); do
        t0=$(proc_cpu_ticks "$pa")
        throughput_run "$up" "$ta" "$ua" "$lua" "$i"
        ticks_a=$((ticks_a + $(proc_cpu_ticks "$pa") - t0))
        reqs_a=$(awk -v n="$reqs_a" -v r="$W_RPS" -v s="$SECS" 'BEGIN { printf "%.0f", n + r * s }')
        t0=$(proc_cpu_ticks "$pb")
        throughput_run "$up" "$tb" "$ub" "$lua" "$i"
        ticks_b=$((ticks_b + $(proc_cpu_ticks "$pb") - t0))
        reqs_b=$(awk -v n="$reqs_b" -v r="$W_RPS" -v s="$SECS" 'BEGIN { printf "%.0f", n + r * s }')
    done
    AB_CPU_US["$up/$ta"]=$(awk -v t="$ticks_a" -v n="$reqs_a" -v hz="$hz" 'BEGIN { printf "%.1f", (n > 0 ? t / hz / n * 1e6 : 0) }')
    AB_CPU_US["$up/$tb"]=$(awk -v t="$ticks_b" -v n="$reqs_b" -v hz="$hz" 'BEGIN { printf "%.1f", (n > 0 ? t / hz / n * 1e6 : 0) }')
    note "[$up] CPU per request: $ta ${AB_CPU_US["$up/$ta"]} us ($ticks_a ticks, $reqs_a requests), $tb ${AB_CPU_US["$up/$tb"]} us ($ticks_b ticks, $reqs_b requests)"
    latency_run "$up" "$ta" "$ua" "$lua"
    latency_run "$up" "$tb" "$ub" "$lua"
    add_row "$up" "$ta"
    add_row "$up" "$tb"
}

# gateway_log_problems TAG FROM_LINE: the gateway runs at log_level warn, so any line it
# logs after FROM_LINE (i.e. under load) is a warning or an error worth reporting.
GW_LOG_NOTES=()
gateway_log_problems() {
    local tag=$1 from=$2 log="$TMP/gateway-$1.log" n first
    [[ -f "$log" ]] || return 0
    n=$(awk -v from="$from" 'NR > from { n++ } END { print n + 0 }' "$log")
    [[ "$n" -gt 0 ]] || return 0
    first=$(awk -v from="$from" 'NR > from { print substr($0, 1, 300); exit }' "$log")
    {
        echo "!!! gateway ($tag) logged $n line(s) under load; most frequent (ts, request_id left out):"
        awk -v from="$from" 'NR > from {
                l = $0; gsub(/"(ts|request_id)":"[^"]*",?/, "", l); c[substr(l, 1, 300)]++ }
            END { for (l in c) printf "%8d  %s\n", c[l], l }' "$log" \
            | sort -rn | awk 'NR <= 10 { print "!!!   " $0 }'
    } >&2
    GW_LOG_NOTES+=("gateway ($tag): $n log line(s) under load, first: $first")
}

# check_alive PID TAG: a gateway that died under load is a finding, not a setup problem.
check_alive() {
    local pid=$1 tag=$2 rc=0
    kill -0 "$pid" 2>/dev/null && return 0
    wait "$pid" 2>/dev/null || rc=$?
    {
        echo "!!! gateway ($tag) DIED under load (wait status $rc); last log lines:"
        tail -n 20 "$TMP/gateway-$tag.log" | sed 's/^/!!!   /'
    } >&2
    GW_LOG_NOTES+=("gateway ($tag) died under load, wait status $rc")
}

line_count() { awk 'END { print NR }' "$1"; }

# ---------------------------------------------------------------- main -----------

# cpu_busy_pct: how busy the CPUs are over one second, before we start anything; other
# work on the machine skews every figure, so it is reported with them.
cpu_busy_pct() {
    local a b
    a="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)"
    sleep 1
    b="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)"
    awk -v a="$a" -v b="$b" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]
        printf "%.0f", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}
BUSY_PCT=$(cpu_busy_pct)
if ((BUSY_PCT > 10)); then
    {
        echo "!!! WARNING: the CPUs were ${BUSY_PCT}% busy before the bench started;"
        echo "!!! something else is running and will skew the figures."
    } >&2
fi

RSS_IDLE_KIB=""
RSS_LOAD_KIB=""
START_TS=$(date +%s)

for up in $UPSTREAMS; do
    if [[ "$up" == static ]]; then
        start_static_upstream
    else
        start_mock_upstream
    fi
    upstream_pid=$LAST_PID
    up_port=$UP_PORT
    preflight "$up upstream" "http://127.0.0.1:$up_port/v1/chat/completions" 200

    start_nginx_proxy "$up_port"
    proxy_pid=$LAST_PID
    proxy_port=$PROXY_PORT
    preflight "nginx proxy" "http://127.0.0.1:$proxy_port/v1/chat/completions" 200

    start_gateway "$up-open" "$up_port" 0
    gw_pid=$LAST_PID
    gw_port=$GW_PORT
    sleep 0.5
    read -r idle idle_anon < <(rss_kib "$gw_pid")
    preflight "gateway" "http://127.0.0.1:$gw_port/v1/chat/completions" 200
    # The gateway rows measure proxying: their requests must all reach the upstream.
    [[ "$PF_CACHE" != hit ]] || die "gateway: preflight answered from the cache; the gateway rows must reach the upstream"
    log_from=$(line_count "$TMP/gateway-$up-open.log")

    measure "$up" "direct" "http://127.0.0.1:$up_port/v1/chat/completions" "$TMP/post.lua"
    measure "$up" "nginx proxy" "http://127.0.0.1:$proxy_port/v1/chat/completions" "$TMP/post.lua"
    start_floor "$up_port"
    floor_pid=$LAST_PID
    preflight "MHD+curl floor" "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions" 200
    measure "$up" "MHD+curl floor" "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions" "$TMP/post.lua"
    kill -0 "$floor_pid" 2>/dev/null || die "MHD+curl floor died under load"
    stop_pid "$floor_pid"
    if [[ "$up" == static ]]; then
        # Metrics cost: the same gateway with metrics off, runs alternated with the one on.
        start_gateway "$up-nometrics" "$up_port" 0 '"metrics": {"enabled": false}'
        nm_pid=$LAST_PID
        nm_port=$GW_PORT
        preflight "gateway (metrics off)" "http://127.0.0.1:$nm_port/v1/chat/completions" 200
        [[ "$PF_CACHE" != hit ]] || die "gateway (metrics off): preflight answered from the cache; its row must reach the upstream"
        # The switch must have taken: after their preflights, only the gateway with metrics
        # on counts requests.
        [[ "$(metric_sum "$gw_port" tollgate_requests_total)" -gt 0 ]] \
            || die "gateway: /metrics counts no request after the preflight"
        [[ "$(metric_sum "$nm_port" tollgate_requests_total)" == 0 ]] \
            || die "gateway (metrics off): /metrics counts requests although metrics.enabled is false"
        nm_log_from=$(line_count "$TMP/gateway-$up-nometrics.log")
        measure_ab "$up" "gateway" "http://127.0.0.1:$gw_port/v1/chat/completions" \
            "gateway (metrics off)" "http://127.0.0.1:$nm_port/v1/chat/completions" "$TMP/post.lua"
        check_alive "$nm_pid" "$up-nometrics"
        gateway_log_problems "$up-nometrics" "$nm_log_from"
        stop_pid "$nm_pid"
        # Tracing cost: every request traced (sample_ratio 1.0) to a collector that is down
        # (a port nothing listens on), runs alternated with the gateway without tracing.
        dead_port="$(free_port)"
        start_gateway "$up-tracing" "$up_port" 0 "\"tracing\": {\"otlp_endpoint\": \"http://127.0.0.1:$dead_port/v1/traces\", \"sample_ratio\": 1.0}"
        tr_pid=$LAST_PID
        tr_port=$GW_PORT
        preflight "gateway (tracing, collector down)" "http://127.0.0.1:$tr_port/v1/chat/completions" 200
        tr_log_from=$(line_count "$TMP/gateway-$up-tracing.log")
        measure_ab_cpu "$up" "gateway (tracing off)" "http://127.0.0.1:$gw_port/v1/chat/completions" "$gw_pid" \
            "gateway (tracing, collector down)" "http://127.0.0.1:$tr_port/v1/chat/completions" "$tr_pid" "$TMP/post.lua"
        # The spans were made and given up on: the exporter counted them.
        tr_lost=$(($(metric_sum "$tr_port" tollgate_trace_spans_dropped_total) + $(metric_sum "$tr_port" tollgate_trace_spans_failed_total)))
        [[ "$tr_lost" -gt 0 ]] || die "gateway (tracing, collector down): no span counted as dropped or failed"
        TRACING_LOST=$tr_lost
        check_alive "$tr_pid" "$up-tracing"
        gateway_log_problems "$up-tracing" "$tr_log_from"
        stop_pid "$tr_pid"
    else
        measure "$up" "gateway" "http://127.0.0.1:$gw_port/v1/chat/completions" "$TMP/post.lua"
    fi
    read -r loaded loaded_anon < <(rss_kib "$gw_pid")
    check_alive "$gw_pid" "$up-open"
    if [[ -z "$RSS_IDLE_KIB" ]]; then
        RSS_IDLE_KIB=$idle
        RSS_IDLE_ANON_KIB=$idle_anon
        RSS_LOAD_KIB=$loaded
        RSS_LOAD_ANON_KIB=$loaded_anon
        RSS_UPSTREAM=$up
    fi
    note "[$up] gateway RSS: idle $(kib_to_mib "$idle") MiB (anon $(kib_to_mib "$idle_anon")), after load $(kib_to_mib "$loaded") MiB (anon $(kib_to_mib "$loaded_anon"))"
    gateway_log_problems "$up-open" "$log_from"
    stop_pid "$gw_pid"
    stop_pid "$proxy_pid"

    # Cache hits: every request is the same, so after the first one per worker (each
    # worker has its own cache) the gateway answers from its cache without the upstream.
    if [[ "$up" == static ]]; then
        start_gateway "$up-cache" "$up_port" 0 '"cache": {"mode": "all"}'
        gw_pid=$LAST_PID
        gw_port=$GW_PORT
        preflight_cache_hit "gateway cache hit" "http://127.0.0.1:$gw_port/v1/chat/completions"
        log_from=$(line_count "$TMP/gateway-$up-cache.log")
        url="http://127.0.0.1:$gw_port/v1/chat/completions"
        note "[$up] gateway cache hit: warm-up ${WARMUP_SECS}s, throughput ${SECS}s @64, latency ${SECS}s @1"
        warm_up "$up" "gateway cache hit" "$url" "$TMP/post.lua"
        throughput_run "$up" "gateway cache hit" "$url" "$TMP/post.lua"
        latency_run "$up" "gateway cache hit" "$url" "$TMP/post.lua"
        # The row counts only if (nearly) every answer came from the cache: the first request
        # on each worker misses, the rest must hit.
        if kill -0 "$gw_pid" 2>/dev/null; then
            hits=$(metric_sum "$gw_port" tollgate_cache_requests_total 'result="hit"')
            total=$(metric_sum "$gw_port" tollgate_cache_requests_total)
            note "[$up] gateway cache hit: $hits of $total answers were cache hits"
            if ((total == 0 || hits * 100 < total * 99)); then
                M_OK["$up/gateway cache hit"]=0
                echo "!!! INVALID RUN: $up/gateway cache hit: only $hits of $total answers were cache hits" >&2
                INVALID_NOTES+=("$up/gateway cache hit: only $hits of $total answers were cache hits")
            fi
        fi
        add_row "$up" "gateway cache hit"
        check_alive "$gw_pid" "$up-cache"
        gateway_log_problems "$up-cache" "$log_from"
        stop_pid "$gw_pid"
    fi

    # Auth costs the same whatever the upstream, so it is measured on the first one only.
    if [[ "$up" == "${UPSTREAMS%% *}" ]]; then
        start_gateway "$up-auth" "$up_port" 1
        gw_pid=$LAST_PID
        gw_port=$GW_PORT
        preflight "gateway (auth, no key)" "http://127.0.0.1:$gw_port/v1/chat/completions" 401
        preflight "gateway (auth)" "http://127.0.0.1:$gw_port/v1/chat/completions" 200 "$BENCH_KEY"
        log_from=$(line_count "$TMP/gateway-$up-auth.log")
        measure "$up" "gateway+auth" "http://127.0.0.1:$gw_port/v1/chat/completions" \
            "$TMP/post-auth.lua"
        check_alive "$gw_pid" "$up-auth"
        gateway_log_problems "$up-auth" "$log_from"
        stop_pid "$gw_pid"
    fi
    stop_pid "$upstream_pid"
done

ELAPSED=$(( $(date +%s) - START_TS ))

# ---------------------------------------------------------------- report ---------

# The table, the ratios and the notes, as Markdown (also fine on a terminal).
report() {
    local row up target rps p50 p99 ok other d50 d99 a50 a99 valid
    local -A direct50 direct99 rpsof add50of okof p50of
    for row in "${ROWS[@]}"; do
        IFS='|' read -r up target rps p50 p99 ok other <<<"$row"
        if [[ "$target" == direct ]]; then
            direct50[$up]=$p50
            direct99[$up]=$p99
        fi
    done
    echo "| upstream | target | req/s @64 conn | p50 @1 conn | p99 @1 conn | added p50 | added p99 | other CPU | valid |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r up target rps p50 p99 ok other <<<"$row"
        d50=${direct50[$up]:--}
        d99=${direct99[$up]:--}
        a50="-"
        a99="-"
        if [[ "$target" != direct && "$d50" != - && "$p50" != - ]]; then
            a50=$(awk -v a="$p50" -v b="$d50" 'BEGIN { printf "%.0f", a - b }')
            a99=$(awk -v a="$p99" -v b="$d99" 'BEGIN { printf "%.0f", a - b }')
        fi
        rpsof["$up/$target"]=$rps
        p50of["$up/$target"]=$p50
        add50of["$up/$target"]=$a50
        okof["$up/$target"]=$ok
        valid=yes
        [[ "$ok" == 1 ]] || valid="**NO**"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s%% | %s |\n' "$up" "$target" \
            "$(awk -v r="$rps" 'BEGIN { if (r == "-") print "-"; else printf "%.0f", r }')" \
            "$(fmt_us "$p50")" "$(fmt_us "$p99")" "$(fmt_us "$a50")" "$(fmt_us "$a99")" \
            "$other" "$valid"
    done
    echo
    echo "Latencies in microseconds; added = proxy minus direct on the same upstream. p99 at one"
    echo "connection is noisy on shared or virtual CPUs: a negative added p99 means the direct run"
    echo "had the worse tail. Other CPU: share of the CPUs used by processes other than the bench's"
    echo "during the measured runs; above 10% the row is skewed by other work on the machine."
    if [[ -n "${rpsof["static/gateway (metrics off)"]:-}" ]]; then
        echo "Static upstream: \"gateway\" and \"gateway (metrics off)\" (\`metrics.enabled: false\`) run"
        echo "side by side, their throughput runs alternated (on, off, on, off, ...); their req/s is"
        echo "the median of $AB_ROUNDS runs each, their latency from one run each."
    fi
    if [[ -n "${rpsof["static/gateway (tracing, collector down)"]:-}" ]]; then
        echo "\"gateway (tracing off)\" is the \"gateway\" process measured again beside \"gateway (tracing,"
        echo "collector down)\" (\`tracing: {otlp_endpoint: <a closed port>, sample_ratio: 1.0}\`), their"
        echo "throughput runs alternated; req/s the median of $AB_ROUNDS runs each."
    fi
    if [[ -n "${rpsof["static/gateway cache hit"]:-}" ]]; then
        echo "\"gateway cache hit\": \`cache.mode: all\` and always the same request, so every answer comes"
        echo "from the gateway's cache; its added latency is over nginx returning the same answer"
        echo "(the direct row: one nginx worker, \`return 200\`; the gateway has two workers)."
    fi
    echo
    echo "Ratios (targets: rps ratio >= 0.8, added-p50 ratio <= 1.5, metrics on/off >= 0.95, idle RSS < 10 MiB):"
    echo
    local seen=" "
    for row in "${ROWS[@]}"; do
        IFS='|' read -r up _ <<<"$row"
        [[ "$seen" == *" $up "* ]] && continue
        seen+="$up "
        local gr=${rpsof["$up/gateway"]:--} nr=${rpsof["$up/nginx proxy"]:--}
        local ga=${add50of["$up/gateway"]:--} na=${add50of["$up/nginx proxy"]:--}
        local inval=""
        [[ "${okof["$up/gateway"]:-0}" == 1 && "${okof["$up/nginx proxy"]:-0}" == 1 \
            && "${okof["$up/direct"]:-0}" == 1 ]] || inval=" (from an INVALID run)"
        echo "- $up upstream: gateway rps / nginx-proxy rps = $(ratio "$gr" "$nr" ">=" 0.8)$inval"
        echo "- $up upstream: gateway added p50 / nginx added p50 = $(ratio "$ga" "$na" "<=" 1.5)$inval"
        if [[ -n "${rpsof["$up/MHD+curl floor"]:-}" ]]; then
            echo "- $up upstream: MHD+curl floor rps / nginx-proxy rps = $(ratio "${rpsof["$up/MHD+curl floor"]}" "$nr" "" ""), added p50 / nginx added p50 = $(ratio "${add50of["$up/MHD+curl floor"]:--}" "$na" "" ""); gateway rps / floor rps = $(ratio "$gr" "${rpsof["$up/MHD+curl floor"]}" "" "")"
        fi
        if [[ -n "${rpsof["$up/gateway+auth"]:-}" ]]; then
            echo "- $up upstream: gateway+auth rps / gateway rps = $(ratio "${rpsof["$up/gateway+auth"]}" "$gr" "" "")"
        fi
        if [[ -n "${rpsof["$up/gateway (tracing, collector down)"]:-}" ]]; then
            local toff=${rpsof["$up/gateway (tracing off)"]:--} ton=${rpsof["$up/gateway (tracing, collector down)"]}
            inval=""
            [[ "${okof["$up/gateway (tracing off)"]:-0}" == 1 && "${okof["$up/gateway (tracing, collector down)"]:-0}" == 1 ]] \
                || inval=" (from an INVALID run)"
            echo "- $up upstream: gateway rps with tracing (sample_ratio 1.0, collector down) / tracing off = $(ratio "$ton" "$toff" ">=" 0.95)$inval"
            echo "  (medians of $AB_ROUNDS alternated runs each; req/s with: $(fmt_runs "${M_RUNS["$up/gateway (tracing, collector down)"]:-}"), without: $(fmt_runs "${M_RUNS["$up/gateway (tracing off)"]:-}"); ${TRACING_LOST:-0} spans counted dropped or failed)"
            echo "  gateway CPU time per request over those runs: with tracing ${AB_CPU_US["$up/gateway (tracing, collector down)"]:--} us, without ${AB_CPU_US["$up/gateway (tracing off)"]:--} us (ratio $(ratio "${AB_CPU_US["$up/gateway (tracing, collector down)"]:--}" "${AB_CPU_US["$up/gateway (tracing off)"]:--}" "" ""))"
        fi
        if [[ -n "${rpsof["$up/gateway (metrics off)"]:-}" ]]; then
            inval=""
            [[ "${okof["$up/gateway"]:-0}" == 1 && "${okof["$up/gateway (metrics off)"]:-0}" == 1 ]] \
                || inval=" (from an INVALID run)"
            echo "- $up upstream: gateway rps with metrics / without = $(ratio "$gr" "${rpsof["$up/gateway (metrics off)"]}" ">=" 0.95)$inval"
            echo "  (medians of $AB_ROUNDS alternated runs each; req/s with: $(fmt_runs "${M_RUNS["$up/gateway"]:-}"), without: $(fmt_runs "${M_RUNS["$up/gateway (metrics off)"]:-}"))"
        fi
    done
    if [[ -n "${rpsof["static/gateway cache hit"]:-}" ]]; then
        local hit50=${p50of["static/gateway cache hit"]} miss50=${p50of["static/gateway"]:--}
        inval=""
        [[ "${okof["static/gateway cache hit"]:-0}" == 1 && "${okof["static/direct"]:-0}" == 1 ]] \
            || inval=" (from an INVALID run)"
        local hinval=""
        [[ "${okof["static/gateway cache hit"]:-0}" == 1 && "${okof["static/gateway"]:-0}" == 1 ]] \
            || hinval=" (from an INVALID run)"
        echo "- cache hit: gateway rps / nginx static rps = $(ratio "${rpsof["static/gateway cache hit"]}" "${rpsof["static/direct"]:--}" "" "")$inval"
        echo "- cache hit: gateway p50 @1 conn, hit = $(fmt_us "$hit50") us, miss (gateway row, static upstream) = $(fmt_us "$miss50") us: $(awk -v h="$hit50" -v m="$miss50" 'BEGIN {
                if (h == "-" || m == "-") print "n/a"
                else if (h + 0 < m + 0) print "the hit is faster"
                else print "the hit is NOT faster" }')$hinval"
    fi
    local idle_mib load_mib idle_ok
    idle_mib=$(kib_to_mib "$RSS_IDLE_KIB")
    load_mib=$(kib_to_mib "$RSS_LOAD_KIB")
    idle_ok=$(awk -v m="$idle_mib" 'BEGIN { print (m == "n/a") ? "n/a" : (m < 10) ? "meets target" : "MISSES target" }')
    echo "- gateway idle RSS = $idle_mib MiB ($idle_ok < 10); after load ($RSS_UPSTREAM upstream) = $load_mib MiB"
    echo "  (of which anonymous, i.e. not shared library pages: idle $(kib_to_mib "$RSS_IDLE_ANON_KIB") MiB, after load $(kib_to_mib "$RSS_LOAD_ANON_KIB") MiB)"
    if ((${#INVALID_NOTES[@]} + ${#GW_LOG_NOTES[@]} + ${#NOISY_NOTES[@]} > 0)); then
        echo
        echo "Problems:"
        echo
        local n
        for n in "${INVALID_NOTES[@]}" "${GW_LOG_NOTES[@]}" "${NOISY_NOTES[@]}"; do
            echo "- $n"
        done
    fi
}

fmt_us() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.0f", v }'; }

# fmt_runs "RPS...": the runs' req/s, rounded, comma-separated.
fmt_runs() {
    awk -v r="$1" 'BEGIN { n = split(r, v, " "); s = ""
        for (i = 1; i <= n; i++) s = s (i > 1 ? ", " : "") (v[i] == "-" ? "-" : sprintf("%.0f", v[i]))
        print (n ? s : "-") }'
}

# ratio A B OP TARGET: "A/B" to two decimals with a verdict against the target.
ratio() {
    awk -v a="$1" -v b="$2" -v op="$3" -v t="$4" 'BEGIN {
        if (a == "-" || b == "-" || b + 0 <= 0) { print "n/a"; exit }
        r = a / b
        v = ""
        if (op == ">=") v = (r >= t) ? " (meets >= " t ")" : " (MISSES >= " t ")"
        if (op == "<=") v = (r <= t) ? " (meets <= " t ")" : " (MISSES <= " t ")"
        printf "%.2f%s\n", r, v
    }'
}

REPORT="$(report)"
echo
echo "================ Tollgate bench (${SECS}s runs, ${ELAPSED}s total, CPUs ${BUSY_PCT}% busy at start) ================"
echo "$REPORT"
echo

if [[ "${BENCH_NO_RESULTS:-0}" != 1 ]]; then
    if [[ -n "${MAKELEVEL:-}" ]]; then
        cmd="make bench"
    else
        cmd="bench/run.sh"
    fi
    env_prefix="BENCH_SECONDS=$SECS"
    if [[ "$UPSTREAMS" != "static mock" ]]; then env_prefix+=" BENCH_UPSTREAMS=\"$UPSTREAMS\""; fi
    if [[ "$AB_ROUNDS" != 2 ]]; then env_prefix+=" BENCH_AB_ROUNDS=$AB_ROUNDS"; fi
    cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    gw_version="$("$GATEWAY" --version 2>/dev/null | head -n 1 || true)"
    git_rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")"
    dirty=""
    if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -n 1)" ]]; then dirty="+dirty"; fi
    if [[ ! -s "$RESULTS" ]]; then
        printf '%s\n\n%s\n' '# Tollgate benchmark results' \
            'Appended by `make bench` (bench/run.sh); see bench/README.md.' >"$RESULTS"
    fi
    {
        echo
        echo "## $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "- machine: ${cpu_model:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r); CPUs ${BUSY_PCT}% busy before the start"
        echo "- gateway: ${gw_version:-unknown version}, commit $git_rev$dirty; $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk " $2}')"
        echo "- command: \`$env_prefix $cmd\`"
        echo
        echo "$REPORT"
    } >>"$RESULTS"
    note "appended to bench/RESULTS.md"
fi
