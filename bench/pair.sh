#!/usr/bin/env bash
# bench/pair.sh: one load step, run alternately against the nodes of two
# commits (or with the load generators of two commits), so that two
# versions are compared in the same minutes and with the rest unchanged. On a shared 2-core machine a step such as S3's
# top one swings by a third between runs of the same code; only pairs taken
# side by side say which version is faster.
#
#   bash bench/pair.sh OLD NEW [ROUNDS]
#
# Each round runs OLD's node, then NEW's, each with a fresh Redis, under one
# sseload built at PAIR_FIXED (default NEW). With PAIR_SIDE=sseload it runs
# OLD's sseload, then NEW's, against one node built at PAIR_FIXED: a step
# whose figures move may owe it to the load generator, which shares the two
# cores and publishes (S3's top step moved so, see bench/README.md). The
# default step is S3's top step at 1k clients (PAIR_ARGS overrides the
# sseload flags). Prints one line per run:
# published events/s, p99, node and load generator CPU-s per million
# deliveries, the node's write syscalls per second (/proc/PID/io syscw) and
# Redis's CPU share, both sampled over 5 s of the publishing phase.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: bash bench/pair.sh OLD NEW [ROUNDS]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
old=$(git rev-parse --short=12 "$1")
new=$(git rev-parse --short=12 "$2")
rounds=${3:-5}
fixed=$(git rev-parse --short=12 "${PAIR_FIXED:-$2}")
side=${PAIR_SIDE:-node}
case $side in
node) other=sseload ;;
sseload) other=ssenode ;;
*) echo "pair: PAIR_SIDE is node or sseload, not $side" >&2; exit 2 ;;
esac
[ "$side" = node ] && side=ssenode
args=${PAIR_ARGS:--n 1000 -rate 1600 -duration 10s -drain 10s -size 100 -ramp 5000}
src=${BENCH_SRC:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4}

work=$(mktemp -d "${TMPDIR:-/tmp}/ssepair.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for c in "$old" "$new" "$fixed"; do
  [ -d "$work/src-$c" ] && continue
  mkdir -p "$work/src-$c"
  git archive "$c" | tar -x -C "$work/src-$c"
done
# bin-C holds the compared binary built at C and the fixed one.
for c in "$old" "$new"; do
  (cd "$work/src-$c" && go build -o "$work/bin-$c/" "./cmd/$side")
  (cd "$work/src-$fixed" && go build -o "$work/bin-$c/" "./cmd/$other")
done

free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "pair: no free port" >&2; return 1
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user+system clock ticks
syscw() { awk '/^syscw/{print $2}' "/proc/$1/io"; }

run() { # run COMMIT ROUND
  local c=$1 round=$2 rport nport aport rpid npid
  rport=$(free_port); nport=$(free_port); aport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
  rpid=$!; pids+=("$rpid")
  for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  env SSE_REDIS_URL="redis://127.0.0.1:$rport" SSE_LOG_LEVEL=warn SSE_SHUTDOWN_TIMEOUT=3s \
    SSE_LISTEN="127.0.0.1:$nport" SSE_ADMIN_LISTEN="127.0.0.1:$aport" "$work/bin-$c/ssenode" 2>"$work/node.log" &
  npid=$!; pids+=("$npid")
  for _ in $(seq 100); do curl -fs "127.0.0.1:$aport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  # Sampled from 3 s to 8 s: after the ramp, inside the publishing phase.
  (
    sleep 3
    local w0 n0 r0 w1 n1 r1
    w0=$(syscw "$npid"); n0=$(ticks "$npid"); r0=$(ticks "$rpid")
    sleep 5
    w1=$(syscw "$npid"); n1=$(ticks "$npid"); r1=$(ticks "$rpid")
    echo "$(((w1 - w0) / 5)) $(((r1 - r0) / 5))" >"$work/sample"
  ) &
  local spid=$!
  # shellcheck disable=SC2086 # args is a list of flags
  "$work/bin-$c/sseload" -url "http://127.0.0.1:$nport" -redis "redis://127.0.0.1:$rport/0" -src "$src" $args \
    -topics pair -node-pid "$npid" -check -progress=false -out "$work/report.json" 2>"$work/load.log" || true
  wait "$spid" || true
  kill -TERM "$npid" "$rpid" 2>/dev/null || true
  wait "$npid" "$rpid" 2>/dev/null || true
  python3 - "$work/report.json" "$work/sample" "$round" "$c" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
writes, redis_pct = open(sys.argv[2]).read().split()
pp = r["publish_phase"]
node = pp["node_cpu_s_per_million"]
node = node[0] if isinstance(node, list) else node
print("| %s | %s | %.0f | %.1f | %.3f | %.3f | %s | %s | %s |" % (sys.argv[3], sys.argv[4],
      r["published"]["per_s"], r["latency"]["p99_ms"], node, pp["loadgen_cpu_s_per_million"],
      writes, redis_pct, r["check"]["passed"]))
PY
}

echo "sseload $args; compared: $side at $old and $new; $other built at $fixed"
echo
echo "| round | $side | published ev/s | p99 ms | node CPU-s/M | loadgen CPU-s/M | node writes/s | redis CPU % | check |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for r in $(seq "$rounds"); do
  run "$old" "$r"
  run "$new" "$r"
done
