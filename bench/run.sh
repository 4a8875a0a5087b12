#!/usr/bin/env bash
# Tollgate benchmark: gateway vs nginx reverse proxy in front of the same upstream.
# Measures throughput (wrk, 64 connections), latency at 1 connection (p50/p99) and the
# gateway's RSS. Prints a table and appends it to bench/RESULTS.md.
# It never fails on the targets it reports against; it fails only when the setup is broken
# (missing binaries, a process that does not start, a preflight request that is not answered).
#
# Env: BENCH_SECONDS (default 10)       length of each measured wrk run
#      BENCH_UPSTREAMS (default "static mock")  which upstreams to run, in order
#      BENCH_KEEP=1                     keep the temp dir (configs, logs, wrk output)
#      BENCH_NO_RESULTS=1               do not append to bench/RESULTS.md
#      BENCH_GATEWAY, BENCH_MOCKNODE    binaries to use instead of build/tollgate, build/mocknode
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${BENCH_SECONDS:-10}"
UPSTREAMS="${BENCH_UPSTREAMS:-static mock}"
WARMUP_SECS=2
GATEWAY="${BENCH_GATEWAY:-$ROOT/build/tollgate}"
MOCKNODE="${BENCH_MOCKNODE:-$ROOT/build/mocknode}"
RESULTS="$ROOT/bench/RESULTS.md"
MODEL="bench-model"
BENCH_KEY="sk-bench-5f1c0e7a9b2d4c68"
REQ_BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say hi"}],"max_tokens":16}'
# Shaped like a real chat.completion answer of about the size mocknode sends.
STATIC_ANSWER='{"id":"chatcmpl-bench0000000000000000","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there lorem ipsum dolor"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}'

die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'bench: %s\n' "$*" >&2; }

[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer (got '$SECS')"
[[ -n "${UPSTREAMS// /}" ]] || die "BENCH_UPSTREAMS is empty"
for u in $UPSTREAMS; do
    [[ "$u" == static || "$u" == mock ]] || die "BENCH_UPSTREAMS: unknown upstream '$u' (static|mock)"
done
for tool in nginx wrk curl ss awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
[[ -x "$GATEWAY" ]] || die "$GATEWAY missing; run make first"
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
# free_port: a loopback TCP port nobody listens on (and that we did not hand out yet).
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if [[ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# wait_http NAME PID URL: wait until URL answers with any HTTP status.
wait_http() {
    local name=$1 pid=$2 url=$3 code
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see above)"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)"
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && return 0
        sleep 0.1
    done
    die "$name did not answer on $url within 10 s"
}

# preflight NAME URL EXPECTED_STATUS [AUTH]: one chat request must get the expected status.
preflight() {
    local name=$1 url=$2 want=$3 auth=${4:-} out code
    local args=(-s -o "$TMP/preflight.out" -w '%{http_code}' --max-time 5
                -H 'Content-Type: application/json' --data-binary "$REQ_BODY")
    if [[ -n "$auth" ]]; then args+=(-H "Authorization: Bearer $auth"); fi
    code="$(curl "${args[@]}" "$url" 2>/dev/null || true)"
    if [[ "$code" != "$want" ]]; then
        out="$(head -c 400 "$TMP/preflight.out" 2>/dev/null || true)"
        die "$name: preflight POST $url got status '$code', want $want; body: $out"
    fi
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
    wait_http "mocknode" "$LAST_PID" "http://127.0.0.1:$port/healthz"
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

# ---------------------------------------------------------------- gateway --------

# start_gateway TAG UPSTREAM_PORT WITH_KEY: the gateway with one backend and one model.
start_gateway() {
    local tag=$1 up=$2 with_key=$3 port conf keys
    port="$(free_port)"
    conf="$TMP/gateway-$tag.json"
    keys='[]'
    if [[ "$with_key" == 1 ]]; then keys="[{\"name\":\"bench\",\"key\":\"$BENCH_KEY\"}]"; fi
    cat >"$conf" <<EOF
{
  "listen": "127.0.0.1:$port",
  "workers": 2,
  "log_level": "warn",
  "drain_timeout_ms": 2000,
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
    wait_http "gateway ($tag)" "$LAST_PID" "http://127.0.0.1:$port/healthz"
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

# measure UPSTREAM TARGET URL LUA: warm-up, throughput at 64 connections, latency at 1.
measure() {
    local up=$1 target=$2 url=$3 lua=$4 tag ok rps p50 p99 snap_before other
    tag="${up}-${target// /_}"
    note "[$up] $target: warm-up ${WARMUP_SECS}s, throughput ${SECS}s @64, latency ${SECS}s @1"
    run_wrk "$up/$target warm-up" "$TMP/wrk-$tag-warm.txt" "$lua" "$url" \
        -t2 -c64 -d"${WARMUP_SECS}s"
    snap_before=$(cpu_snapshot)
    run_wrk "$up/$target throughput" "$TMP/wrk-$tag-c64.txt" "$lua" "$url" \
        -t2 -c64 -d"${SECS}s"
    ok=$W_OK
    rps=$W_RPS
    run_wrk "$up/$target latency" "$TMP/wrk-$tag-c1.txt" "$lua" "$url" \
        -t1 -c1 -d"${SECS}s" --latency
    [[ "$W_OK" == 1 ]] || ok=0
    p50=$W_P50
    p99=$W_P99
    other=$(other_cpu_pct "$snap_before" "$(cpu_snapshot)")
    if ((other > 10)); then
        echo "!!! $up/$target: other processes used ${other}% of the CPUs during the runs" >&2
        NOISY_NOTES+=("$up/$target: other processes used ${other}% of the CPUs during the runs")
    fi
    ROWS+=("$up|$target|$rps|$p50|$p99|$ok|$other")
    note "[$up] $target: $rps req/s, p50 ${p50}us, p99 ${p99}us, other CPU ${other}%$([[ $ok == 1 ]] || echo ' (INVALID)')"
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
    log_from=$(line_count "$TMP/gateway-$up-open.log")

    measure "$up" "direct" "http://127.0.0.1:$up_port/v1/chat/completions" "$TMP/post.lua"
    measure "$up" "nginx proxy" "http://127.0.0.1:$proxy_port/v1/chat/completions" "$TMP/post.lua"
    measure "$up" "gateway" "http://127.0.0.1:$gw_port/v1/chat/completions" "$TMP/post.lua"
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
    local -A direct50 direct99 rpsof add50of okof
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
    echo
    echo "Ratios (targets: rps ratio >= 0.8, added-p50 ratio <= 1.5, idle RSS < 10 MiB):"
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
        if [[ -n "${rpsof["$up/gateway+auth"]:-}" ]]; then
            echo "- $up upstream: gateway+auth rps / gateway rps = $(ratio "${rpsof["$up/gateway+auth"]}" "$gr" "" "")"
        fi
    done
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
