#!/usr/bin/env bash
# Runs Redis and three ssenode processes on this machine, no containers:
#   deploy/local-cluster.sh up     start (Redis on 127.0.0.1:6390, nodes on :8081-8083,
#                                  admin on 127.0.0.1:9091-9093), logs in bin/cluster/
#   deploy/local-cluster.sh down   stop them
# Needs redis-server on PATH (apt-get install redis-server).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/bin/cluster
port=${SSE_CLUSTER_REDIS_PORT:-6390}

case "${1:-}" in
up)
  mkdir -p "$dir"
  command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
  (cd "$root" && go build -o "$dir/ssenode" ./cmd/ssenode)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for i in 1 2 3; do
    SSE_LISTEN=127.0.0.1:808$i SSE_ADMIN_LISTEN=127.0.0.1:909$i \
      SSE_REDIS_URL=redis://127.0.0.1:$port SSE_LOG_FORMAT=text \
      nohup "$dir/ssenode" >"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
  done
  for i in 1 2 3; do
    for _ in $(seq 100); do
      curl -fs "http://127.0.0.1:909$i/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:909$i/readyz" >/dev/null || { echo "node$i not ready; see $dir/node$i.log" >&2; exit 1; }
  done
  echo "cluster up: Redis 127.0.0.1:$port; nodes http://127.0.0.1:8081..8083; admin 127.0.0.1:9091..9093"
  ;;
down)
  for i in 1 2 3; do
    [ -f "$dir/node$i.pid" ] && kill "$(cat "$dir/node$i.pid")" 2>/dev/null || true
    rm -f "$dir/node$i.pid"
  done
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  echo "cluster down"
  ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
