#!/usr/bin/env bash
# `make run`: a working demo on loopback. Three simulated nodes with different prices, the
# gateway in front of them, and how to call it. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${TOLLGATE_BUILD:-build}
PORT=${TOLLGATE_PORT:-8080}
KEY=${TOLLGATE_DEMO_KEY:-sk-tollgate-demo}
dir=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-demo.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# Starts a mocknode on a free port (in this shell, so the trap can stop it).
start_node() {
    local name=$1 ttfb=$2
    "$BUILD/mocknode" --port 0 --name "$name" --models llama-3.1-8b,meta-llama/Llama-3.1-8B-Instruct,qwen-2.5-7b,text-embed \
        --ttfb-ms "$ttfb" --token-ms 15 --tokens 24 --quiet >"$dir/$name.out" 2>&1 &
    pids+=($!)
}

# The port a started mocknode printed.
node_port() {
    local name=$1
    for _ in $(seq 50); do
        if grep -q "listening on" "$dir/$name.out"; then
            sed -n 's/.*listening on .*:\([0-9]*\).*/\1/p' "$dir/$name.out" | head -1
            return
        fi
        sleep 0.1
    done
    echo "mocknode $name did not start" >&2
    exit 1
}

start_node node-cheap 40
start_node node-mid 20
start_node node-premium 5
a=$(node_port node-cheap)
b=$(node_port node-mid)
c=$(node_port node-premium)

# A free loopback port (the kernel's ephemeral range, skipping ones in use).
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 30000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    return 1
}

# Redis when it is installed: keys can then be created at run time through the admin API.
redis_yaml=""
admin_port=$(free_port)
ADMIN_KEY=${TOLLGATE_ADMIN_KEY:-admin-demo-key-0123456789}
if command -v redis-server >/dev/null 2>&1; then
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" >"$dir/redis.log" 2>&1 &
    pids+=($!)
    redis_yaml="redis: { url: \"redis://127.0.0.1:$redis_port/0\" }"
fi

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is busy; picking a free one (set TOLLGATE_PORT to choose)" >&2
    PORT=0
fi

cat >"$dir/tollgate.yaml" <<YAML
listen: "127.0.0.1:$PORT"
workers: 0
log_level: info
admin_listen: "127.0.0.1:$admin_port"
admin_key: "\${TOLLGATE_ADMIN_KEY}"
$redis_yaml
keys:
  - name: demo
    key: "\${TOLLGATE_DEMO_KEY}"
backends:
  - name: node-cheap
    url: "http://127.0.0.1:$a/v1"
    models:
      - { name: llama-3.1-8b, upstream: "meta-llama/Llama-3.1-8B-Instruct", input_usd_per_mtok: 0.03, output_usd_per_mtok: 0.06 }
      - { name: qwen-2.5-7b, input_usd_per_mtok: 0.04, output_usd_per_mtok: 0.09 }
      - { name: text-embed, input_usd_per_mtok: 0.01, output_usd_per_mtok: 0 }
  - name: node-mid
    url: "http://127.0.0.1:$b/v1"
    models:
      - { name: llama-3.1-8b, input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.08 }
      - { name: qwen-2.5-7b, input_usd_per_mtok: 0.03, output_usd_per_mtok: 0.05 }
  - name: node-premium
    url: "http://127.0.0.1:$c/v1"
    models:
      - { name: llama-3.1-8b, input_usd_per_mtok: 0.20, output_usd_per_mtok: 0.40 }
      - { name: qwen-2.5-7b, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.30 }
      - { name: text-embed, input_usd_per_mtok: 0.02, output_usd_per_mtok: 0 }
YAML
TOLLGATE_DEMO_KEY=$KEY TOLLGATE_ADMIN_KEY=$ADMIN_KEY "$BUILD/tollgate" -c "$dir/tollgate.yaml" >"$dir/gateway.log" 2>&1 &
gw=$!
pids+=($gw)
for _ in $(seq 50); do
    port=$(sed -n 's/.*"event":"listening".*"port":\([0-9]*\).*/\1/p' "$dir/gateway.log" | head -1)
    [ -n "$port" ] && break
    kill -0 "$gw" 2>/dev/null || { cat "$dir/gateway.log"; exit 1; }
    sleep 0.1
done
[ -n "${port:-}" ] || { echo "gateway did not start" >&2; cat "$dir/gateway.log"; exit 1; }
url="http://127.0.0.1:$port"
for _ in $(seq 50); do curl -fs "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

cat <<MSG

Tollgate is running at $url  (API key: $KEY)
Backends: node-cheap :$a, node-mid :$b, node-premium :$c (simulated, different prices)

  curl $url/v1/chat/completions -H "Authorization: Bearer $KEY" \\
       -H "Content-Type: application/json" \\
       -d '{"model":"llama-3.1-8b","messages":[{"role":"user","content":"Hello"}]}'

  # streaming
  curl -N $url/v1/chat/completions -H "Authorization: Bearer $KEY" \\
       -d '{"model":"qwen-2.5-7b","stream":true,"messages":[{"role":"user","content":"Hi"}]}'

  # the OpenAI SDK (Python or Node): base_url="$url/v1", api_key="$KEY"

The answer's x-tollgate-backend header names the node that served it (the cheapest).
Admin (Bearer $ADMIN_KEY): http://127.0.0.1:$admin_port/admin/backends
Metrics (same key):       http://127.0.0.1:$admin_port/metrics
MSG
if [ -n "$redis_yaml" ]; then
    cat <<MSG
Redis is running for this demo, so keys can be made at run time:
  curl -X POST http://127.0.0.1:$admin_port/admin/keys -H "Authorization: Bearer $ADMIN_KEY" \\
       -d '{"name":"team-a","models":["llama-3.1-8b"]}'
MSG
fi
cat <<MSG
Gateway log (one JSON line per request): $dir/gateway.log   Ctrl-C stops.

MSG
curl -s "$url/v1/chat/completions" -H "Authorization: Bearer $KEY" \
    -H "Content-Type: application/json" -D "$dir/first.headers" \
    -d '{"model":"llama-3.1-8b","messages":[{"role":"user","content":"Hello"}]}' && echo
grep -i '^x-tollgate-backend' "$dir/first.headers" || true
echo
if [ -n "${TOLLGATE_DEMO_ONESHOT:-}" ]; then exit 0; fi
wait "$gw"
