#!/usr/bin/env bash
# What tracing costs the gateway, counted in instructions rather than timed: the machine's
# other work moves req/s by more than the few percent in question, but not the instructions
# the gateway executes per request. Runs build/tollgate (one worker) under callgrind behind
# build/mocknode three times, tracing off, tracing at sample_ratio 1.0 with the collector
# down (a closed port), and with a collector that takes every export (a small Node server),
# each with a fixed number of requests, and once with none for the start-up and shutdown
# cost; prints instructions per request (every thread of the gateway: workers, the span
# sender, health) and the ratios. A benchmark, never part of make test.
#
# Env: TRACE_COST_REQUESTS (default 2000), TRACE_COST_GATEWAY, TRACE_COST_MOCKNODE,
#      TRACE_COST_KEEP=1 keeps the callgrind files (callgrind_annotate shows where it went).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${TRACE_COST_REQUESTS:-2000}"
GATEWAY="${TRACE_COST_GATEWAY:-$ROOT/build/tollgate}"
MOCKNODE="${TRACE_COST_MOCKNODE:-$ROOT/build/mocknode}"
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say hi"}],"max_tokens":16}'
for tool in valgrind curl node; do command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }; done
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-trace-cost.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n "${TRACE_COST_KEEP:-}" ]] || rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_http() { for _ in $(seq 1 300); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

mock_port="$(free_port)"
"$MOCKNODE" --host 127.0.0.1 --port "$mock_port" --name bench --models bench-model --tokens 5 --quiet >"$TMP/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$mock_port/v1/models"
sink_port="$(free_port)"
node -e 'require("http").createServer((q,s)=>{q.resume();q.on("end",()=>{s.writeHead(200,{"content-type":"application/x-protobuf"});s.end()})}).listen(+process.argv[1],"127.0.0.1")' "$sink_port" &
PIDS+=($!)
dead_port="$(free_port)"

# run NAME TRACING_JSON REQUESTS: instructions of a gateway run that answers REQUESTS requests.
run() {
    local name=$1 tracing=$2 n=$3 port conf pid ir
    port="$(free_port)"
    conf="$TMP/$name.json"
    cat >"$conf" <<JSON
{"listen": "127.0.0.1:$port", "workers": 1, "log_level": "warn",
 "health": {"interval_ms": 3600000},
 "backends": [{"name": "n", "url": "http://127.0.0.1:$mock_port/v1",
               "models": [{"name": "bench-model", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}]}]
 $tracing}
JSON
    valgrind --tool=callgrind --callgrind-out-file="$TMP/$name.cg" "$GATEWAY" -c "$conf" \
        >"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_http "http://127.0.0.1:$port/healthz"
    if [[ "$n" -gt 0 ]]; then
        # A request count, not a duration: the same requests every run, four at a time.
        seq "$n" | xargs -P 4 -I{} curl -s -o /dev/null -H 'Content-Type: application/json' \
            --data-binary "$BODY" "http://127.0.0.1:$port/v1/chat/completions"
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    ir="$(awk '/^(summary|totals):/ { print $2; exit }' "$TMP/$name.cg")"
    echo "$ir"
}

echo "callgrind files in $TMP" >&2
base_off=$(run base-off '' 0)
off=$(run off '' "$N")
base_down=$(run base-down ", \"tracing\": {\"otlp_endpoint\": \"http://127.0.0.1:$dead_port/v1/traces\", \"sample_ratio\": 1.0}" 0)
down=$(run down ", \"tracing\": {\"otlp_endpoint\": \"http://127.0.0.1:$dead_port/v1/traces\", \"sample_ratio\": 1.0}" "$N")
base_up=$(run base-up ", \"tracing\": {\"otlp_endpoint\": \"http://127.0.0.1:$sink_port/v1/traces\", \"sample_ratio\": 1.0}" 0)
up=$(run up ", \"tracing\": {\"otlp_endpoint\": \"http://127.0.0.1:$sink_port/v1/traces\", \"sample_ratio\": 1.0}" "$N")
awk -v n="$N" -v bo="$base_off" -v o="$off" -v bd="$base_down" -v d="$down" -v bu="$base_up" -v u="$up" 'BEGIN {
    po = (o - bo) / n; pd = (d - bd) / n; pu = (u - bu) / n
    printf "instructions per request (callgrind, all threads, %d requests, start-up and shutdown subtracted):\n", n
    printf "- tracing off: %.0f\n", po
    printf "- tracing at sample_ratio 1.0, collector down: %.0f (%.3f of off)\n", pd, pd / po
    printf "- tracing at sample_ratio 1.0, collector up (every span exported): %.0f (%.3f of off)\n", pu, pu / po
}'
