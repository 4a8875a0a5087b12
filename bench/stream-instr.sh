#!/usr/bin/env bash
# Instructions per relayed stream event, counted by callgrind: a figure that does not move
# with the machine's load (CPU time on a shared machine spreads by +-10% between runs).
#
# The gateway (BENCH_BUILD/tollgate, 2 workers, one static key, one backend) runs under
# valgrind --tool=callgrind in front of build/mocknode (100 tokens at 50 ms); after a warm-up
# stream its counters are zeroed, bench/streamgen.c runs STREAMS_CONNS concurrent streams for
# STREAMS_SECONDS, the counters are dumped, and the gateway's instructions are divided by the
# events its callers received. Prints the total, the per-event figure and the functions with
# the most instructions per event (inclusive), e.g. request_scan_stream_event.
#
# The load is light on purpose (20 streams at 20 events a second each): the gateway, slowed
# down some 50x by callgrind, stays far from busy, so each event is read and sent on its own.
# Under a load it cannot keep up with, events arrive together and share the reads, sends and
# wake-ups, which lowers the per-event figure by an amount that depends on the machine (the
# scan's own share does not move).
#
# Env: BENCH_BUILD (default build)   where tollgate, mocknode, streamgen are
#      INSTR_GATEWAY                 another tollgate binary to count (e.g. an earlier build)
#      STREAMS_CONNS (20), STREAMS_SECONDS (10), STREAMS_TOKENS (100), STREAMS_TOKEN_MS (50)
#      STREAMS_API (chat)            chat: /v1/chat/completions; responses: /v1/responses (typed
#                                    events, the whole response in the first and last ones)
#      INSTR_KEEP=1                  keep the temp dir (the callgrind dump, logs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BENCH_BUILD:-build}"
[[ "$BUILD_DIR" == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
GATEWAY="${INSTR_GATEWAY:-$BUILD_DIR/tollgate}"
CONNS="${STREAMS_CONNS:-20}"
SECS="${STREAMS_SECONDS:-10}"
TOKENS="${STREAMS_TOKENS:-100}"
TOKEN_MS="${STREAMS_TOKEN_MS:-50}"
MODEL="bench-model"
BENCH_KEY="sk-bench-5f1c0e7a9b2d4c68"
API="${STREAMS_API:-chat}"
case "$API" in
chat)
    API_PATH=/v1/chat/completions
    BODY="{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hi\"}],\"max_tokens\":$TOKENS,\"stream\":true}"
    ;;
responses)
    API_PATH=/v1/responses
    BODY="{\"model\":\"$MODEL\",\"input\":\"Say hi\",\"max_output_tokens\":$TOKENS,\"stream\":true}"
    ;;
*) printf 'stream-instr: error: STREAMS_API is chat or responses\n' >&2; exit 1 ;;
esac

die() { printf 'stream-instr: error: %s\n' "$*" >&2; exit 1; }
note() { printf 'stream-instr: %s\n' "$*" >&2; }

for tool in valgrind callgrind_control callgrind_annotate curl ss; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
[[ -x "$GATEWAY" ]] || die "$GATEWAY missing"
for b in mocknode streamgen; do
    [[ -x "$BUILD_DIR/$b" ]] || die "$BUILD_DIR/$b missing; run make BUILD=... all $BUILD_DIR/streamgen"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-instr.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${INSTR_KEEP:-0}" == 1 ]]; then note "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 10000))
        if [[ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]]; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}
wait_http() {
    local name=$1 pid=$2 url=$3 code
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null || true)"
        [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && return 0
        sleep 0.1
    done
    die "$name did not answer on $url"
}

NODE_PORT=$(free_port)
"$BUILD_DIR/mocknode" --port "$NODE_PORT" --host 127.0.0.1 --name instr --models "$MODEL" \
    --ttfb-ms 0 --token-ms "$TOKEN_MS" --tokens "$TOKENS" --threads 1 --quiet >"$TMP/mocknode.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
wait_http mocknode "$NODE_PID" "http://127.0.0.1:$NODE_PORT/healthz"

GW_PORT=$(free_port)
cat >"$TMP/gateway.json" <<EOF
{
  "listen": "127.0.0.1:$GW_PORT",
  "workers": 2,
  "log_level": "warn",
  "drain_timeout_ms": 2000,
  "routing": {"limit_initial": 1000, "limit_max": 1000},
  "health": {"stuck_factor": 0},
  "keys": [{"name": "bench", "key": "$BENCH_KEY"}],
  "backends": [
    {"name": "instr-upstream", "url": "http://127.0.0.1:$NODE_PORT/v1",
     "models": [{"name": "$MODEL", "input_usd_per_mtok": 0.05, "output_usd_per_mtok": 0.08}]}
  ]
}
EOF
valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out.%p" \
    "$GATEWAY" -c "$TMP/gateway.json" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http gateway "$GW_PID" "http://127.0.0.1:$GW_PORT/healthz"

URL="http://127.0.0.1:$GW_PORT$API_PATH"
gen() { "$BUILD_DIR/streamgen" -c "$1" -d "$2" -r 0.5 -H "Authorization: Bearer $BENCH_KEY" -b "$BODY" "$URL"; }
warm="$(gen 5 1)"
[[ "$warm" == *" errors=0 "* && "$warm" != "streams=0 "* ]] || die "warm-up failed: $warm"
callgrind_control -z "$GW_PID" >/dev/null
out="$(gen "$CONNS" "$SECS")"
callgrind_control -d "$GW_PID" >/dev/null
note "streamgen: $out"
[[ "$out" == *" errors=0 "* ]] || note "WARNING: errors in the measured run"
events=$(sed -n 's/.* events=\([0-9]*\) .*/\1/p' <<<"$out")
dump=$(ls -t "$TMP"/callgrind.out.*.* 2>/dev/null | head -n 1)
[[ -n "$dump" && "$events" -gt 0 ]] || die "no callgrind dump or no events"
total=$(sed -n 's/^summary: *//p; s/^totals: *//p' "$dump" | head -n 1 | awk '{ print $1 }')
echo "gateway: $GATEWAY"
echo "streams: $out"
awk -v t="$total" -v e="$events" 'BEGIN { printf "instructions: %d over %d events = %.0f per event\n", t, e, t / e }'
echo "inclusive instructions per event, top functions:"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
    awk -v e="$events" '/^ *[0-9,]+ *\(/ && n < 40 { c = $1; gsub(",", "", c); sub(/^[^)]*\) */, ""); printf "%8.0f %s\n", c / e, $0; n++ }'
