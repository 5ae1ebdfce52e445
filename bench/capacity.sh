#!/usr/bin/env bash
# Capacity model: Redis commands and Redis CPU per 1,000 events/s as the
# number of node processes grows, for a single Redis, a Redis Cluster
# (3 masters + 3 replicas) and the same Cluster with replica reads.
#
#   bash bench/capacity.sh                 # all modes, 1 2 4 8 16 nodes
#   MODES=cluster NODES="1 4" bash bench/capacity.sh
#
# Everything runs as local processes: redis-server and redis-cli from the
# host, ssenode and sseload built from this tree. Each node gets a few
# clients (CLIENTS_PER_NODE); sseload publishes TOPICS topics at RATE
# events/s each through node 1's POST /publish (so the same publisher
# works in every mode) and checks every delivery. The Redis figures are
# INFO commandstats and INFO cpu deltas over the publishing time, summed
# over masters and over replicas, divided by the XADDs per second / 1000.
# The table goes to stdout and to bench/results/capacity-<time>.md.
set -euo pipefail

MODES=${MODES:-"standalone cluster replicas"}
NODES=${NODES:-"1 2 4 8 16"}
TOPICS=${TOPICS:-10}
RATE=${RATE:-100}
CLIENTS_PER_NODE=${CLIENTS_PER_NODE:-4}
DURATION=${DURATION:-10s}
REDIS_BASE=${REDIS_BASE:-27100}
NODE_BASE=${NODE_BASE:-28100}

here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
log() { echo "capacity.sh: $*" >&2; }

(cd "$here" && go build -o "$work/bin/" ./cmd/ssenode ./cmd/sseload)

# redis_start PORT [cluster]: a redis-server with the settings of
# docs/redis.md, in its own directory.
redis_start() {
  local port=$1 extra=() dir="$work/$mode-r$1"
  mkdir -p "$dir"
  if [ "${2:-}" = cluster ]; then
    extra=(--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 --cluster-require-full-coverage no)
  fi
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction "${extra[@]}" \
    --logfile "$dir/log" &
  pids+=($!)
  rpids+=($!)
  for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  log "redis on $port did not start"; exit 1
}

# servers: the ports of the Redis processes of the current topology;
# rpids: their process IDs.
servers=()
rpids=()
topology_up() {
  servers=() rpids=()
  case $1 in
  standalone)
    redis_start "$REDIS_BASE"
    servers=("$REDIS_BASE")
    ;;
  cluster | replicas)
    local addrs=()
    for i in 0 1 2 3 4 5; do
      redis_start $((REDIS_BASE + i)) cluster
      servers+=($((REDIS_BASE + i)))
      addrs+=("127.0.0.1:$((REDIS_BASE + i))")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    for _ in $(seq 200); do
      redis-cli -p "$REDIS_BASE" cluster info | grep -q cluster_state:ok && break
      sleep 0.1
    done
    sleep 2 # replicas finish their first sync
    ;;
  esac
}

topology_down() {
  for p in "${servers[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  # Until they exit, not until they stop answering: a master waits for
  # its replicas before it exits, still holding its port, and the next
  # topology starts on the same ports.
  for p in "${rpids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# stats PORT: "calls xadd cpu role" of one server.
stats() {
  local port=$1
  redis-cli -p "$port" info all | tr -d '\r' | awk -F'[:,=]' '
    /^cmdstat_/ { split($0, a, /calls=/); split(a[2], b, ","); calls += b[1] }
    /^cmdstat_xadd:/ { split($0, a, /calls=/); split(a[2], b, ","); xadd = b[1] }
    /^cmdstat_info:/ { split($0, a, /calls=/); split(a[2], b, ","); info = b[1] }
    /^used_cpu_sys:/ { cpu += $2 } /^used_cpu_user:/ { cpu += $2 }
    /^role:/ { role = $2 }
    END { printf "%d %d %d %.3f %s\n", calls, xadd, info, cpu, role }'
}

snapshot() {
  for p in "${servers[@]}"; do echo "$p $(stats "$p")"; done
}

out="$here/bench/results/capacity-$(date -u +%Y%m%d-%H%M%S).md"
mkdir -p "$here/bench/results"
{
  echo "| mode | nodes | clients | events/s | master cmds per 1k events | replica cmds per 1k events | master CPU % at 1k ev/s | replica CPU % at 1k ev/s | XADD-to-client p99 ms | lost/dup |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} | tee "$out"

for mode in $MODES; do
  topology_up "$mode"
  for n in $NODES; do
    env=(SSE_LOG_LEVEL=warn SSE_STREAM_PREFIX="cap$n:")
    case $mode in
    standalone) env+=(SSE_REDIS_URL="redis://127.0.0.1:$REDIS_BASE") ;;
    cluster) env+=(SSE_REDIS_ADDRS="127.0.0.1:$REDIS_BASE") ;;
    replicas) env+=(SSE_REDIS_ADDRS="127.0.0.1:$REDIS_BASE" SSE_REDIS_READ_REPLICAS=true) ;;
    esac
    nodepids=() urls=()
    for i in $(seq 0 $((n - 1))); do
      env "${env[@]}" SSE_LISTEN="127.0.0.1:$((NODE_BASE + i))" SSE_ADMIN_LISTEN="127.0.0.1:$((NODE_BASE + 100 + i))" \
        "$work/bin/ssenode" 2>>"$work/node$i.log" &
      nodepids+=($!)
      pids+=($!)
      urls+=("http://127.0.0.1:$((NODE_BASE + i))/events")
    done
    for i in $(seq 0 $((n - 1))); do
      for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((NODE_BASE + 100 + i))/readyz" >/dev/null && break; sleep 0.1; done
    done
    topics=$(seq -s, -f 't%g' 0 $((TOPICS - 1)))
    clients=$((n * CLIENTS_PER_NODE))
    # Every topic on every node: each client takes all topics.
    before=$(snapshot)
    "$work/bin/sseload" -n "$clients" -url "$(IFS=,; echo "${urls[*]}")" -topics "$topics" -topics-per-conn "$TOPICS" \
      -rate "$RATE" -duration "$DURATION" -drain 3s -publish-url "http://127.0.0.1:$((NODE_BASE + 100))" \
      -prefix "cap$n:" -progress=false -check -out "$work/load.json" 2>>"$work/load.log" || log "sseload reported a failure (see lost/dup)"
    after=$(snapshot)
    read -r lostdup p99 < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%d/%d %.1f" % (r["check"]["lost"], r["check"]["duplicated"], r["latency"]["p99_ms"]))' "$work/load.json")
    # Deltas per role (INFO calls left out), per 1000 XADDs on the
    # masters: commands (a replica's replicated XADDs left out too),
    # and CPU seconds x 100 (the CPU % at 1000 events/s). The window is the
    # whole sseload run, so idle reads and checks count too.
    paste <(echo "$before") <(echo "$after") | awk -v mode="$mode" -v n="$n" -v clients="$clients" -v pub="${DURATION%s}" -v ld="$lostdup" -v p99="${p99:-?}" '
      { calls = $8 - $2; xadd = $9 - $3; info = $10 - $4; cpu = $11 - $5; role = $12
        # A replica runs (and counts) the XADDs it replicates: its own
        # load is the rest.
        if (role == "master") { xadds += xadd; mc += calls - info; mcpu += cpu } else { rc += calls - info - xadd; rcpu += cpu } }
      END {
        k = xadds / 1000
        printf "| %s | %d | %d | %.0f | %.0f | %.0f | %.1f | %.1f | %s | %s |\n", mode, n, clients, xadds / pub, mc / k, rc / k, 100 * mcpu / k, 100 * rcpu / k, p99, ld }'
    for p in "${nodepids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${nodepids[@]}"; do wait "$p" 2>/dev/null || true; done
  done | tee -a "$out"
  topology_down
done
log "table written to $out"
