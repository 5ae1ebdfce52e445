#!/usr/bin/env bash
# make bench: the whole-system scenarios S1-S8 of issue 5 and the memory-budget
# scenarios M1-M4 of issue 11, with Redis and the nodes as local processes (no
# containers). See bench/README.md.
#
#   bash bench/run.sh                      full run (10k clients, ~16 minutes on 2 cores)
#   BENCH_SCALE=small bash bench/run.sh    quick run (1k/2k clients, ~3 minutes)
#
# Knobs (env): BENCH_SCALE (full|small), BENCH_COMMIT (commit to build and
# measure, default HEAD, built from `git archive` so uncommitted edits in the
# work tree are not measured), BENCH_WORKTREE=1 (build the work tree instead;
# the commit is then recorded with a "-dirty" suffix), BENCH_OUT (results
# directory, default bench/results), BENCH_ONLY (space-separated scenarios,
# e.g. "S1 S2" or "M1 M2 M3 M4"), BENCH_KEEP=1 (keep the scratch directory),
# BENCH_NODE_RSS_MAX_MIB (M1-M4 end a run whose node passes this RSS; default
# half the memory available at start, at most 16 GiB: the machine is shared).
#
# Writes <out>/<date>-<commit>.{json,md,png} and the node's pprof profiles
# for S2 and S3 as <date>-<commit>-<scenario>.{cpu,heap}.pb.gz with a
# `go tool pprof -top` summary of each (.top.txt).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scale=${BENCH_SCALE:-full}
out=${BENCH_OUT:-$root/bench/results}
only=${BENCH_ONLY:-S1 S2 S3 S4 S5 S6 S7 S8 M1 M2 M3 M4}
commit_ref=${BENCH_COMMIT:-HEAD}

case "$scale" in
full)
  S1_N="1000 5000 10000"; S1_HOLD=5s
  S2_N=10000; S2_DUR=30s; PROF_S=15
  S3_N1=1000; S3_RATES1="100 200 400 800 1600"
  S3_N2=10000; S3_RATES2="10 20 40 80"
  S3_DUR=10s
  S4_N=5000; S4_ROUNDS=10; S4_HOLD=2s
  S5_N=10000
  S6_N=5000; S6_DUR=20s; S6_KILL_AFTER=8
  RAMP=5000
  M1_N=200; M2_N=200; M3_TOPICS=1000; M4_N=20
  ;;
small)
  S1_N="1000 2000"; S1_HOLD=3s
  S2_N=2000; S2_DUR=10s; PROF_S=5
  S3_N1=1000; S3_RATES1="200 800"
  S3_N2=2000; S3_RATES2="50 200"
  S3_DUR=5s
  S4_N=1000; S4_ROUNDS=10; S4_HOLD=1s
  S5_N=2000
  S6_N=1000; S6_DUR=8s; S6_KILL_AFTER=3
  RAMP=5000
  M1_N=50; M2_N=20; M3_TOPICS=200; M4_N=5
  ;;
*) echo "BENCH_SCALE must be full or small" >&2; exit 2 ;;
esac
# Connections per source address stay well under the ~28k ephemeral ports.
SRC=${BENCH_SRC:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4}

need() { command -v "$1" >/dev/null || { echo "bench: $1 not found ($2)" >&2; exit 1; }; }
need go "https://go.dev/dl"
need redis-server "apt-get install redis-server"
need redis-cli "apt-get install redis-tools"
need curl "apt-get install curl"

# File descriptors: the load generator holds one per client and each node one
# per stream (plus a few). Go raises the soft limit to the hard one at start,
# so the hard limit is what counts.
maxn=$S2_N
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((maxn + 1000)) ]; then
  echo "bench: ulimit -Hn is $hard; need at least $((maxn + 1000)) for $maxn clients (raise it, or BENCH_SCALE=small)" >&2
  exit 1
fi
ulimit -n "$hard" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/ssebench.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  sleep 0.5
  for p in "${pids[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP:-}" = 1 ] || [ $rc -ne 0 ]; then
    echo "bench: scratch directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- build -----------------------------------------------------------------
if [ "${BENCH_WORKTREE:-}" = 1 ]; then
  commit=$(git rev-parse --short=12 HEAD)-dirty
  src=$root
else
  commit=$(git rev-parse --short=12 "$commit_ref")
  src=$work/src
  mkdir -p "$src"
  git archive "$commit_ref" | tar -x -C "$src"
fi
full_commit=$(git rev-parse "$commit_ref")
log "building ssenode and sseload at $commit"
(cd "$src" && go build -o "$work/bin/" ./cmd/ssenode ./cmd/sseload)
(cd "$root" && go build -o "$work/bin/" ./bench/chart ./bench/floor)
node_bin=$work/bin/ssenode
load_bin=$work/bin/sseload
stem=$(date -u +%Y%m%d-%H%M%S)-$commit
mkdir -p "$out"

# --- helpers ---------------------------------------------------------------
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "bench: no free port" >&2; return 1
}

redis_port=$(free_port)
redis_url=redis://127.0.0.1:$redis_port/0
redis_cmd=(redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log")
"${redis_cmd[@]}" &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" ping >/dev/null
log "redis on 127.0.0.1:$redis_port (pid $redis_pid, no persistence)"

# Node settings used for every node (recorded in the report).
node_env=(SSE_REDIS_URL="$redis_url" SSE_LOG_FORMAT=text SSE_LOG_LEVEL=warn SSE_SHUTDOWN_TIMEOUT=3s GODEBUG=gctrace=1)

# start_node NAME [VAR=value...]: starts a node on free ports, with extra
# settings if given; sets NODE_PID NODE_URL NODE_ADMIN NODE_LOG NODE_START
# (unix seconds, for the gctrace window).
start_node() {
  local name=$1 port admin
  shift
  port=$(free_port); admin=$(free_port)
  NODE_LOG=$work/$name.node.log
  NODE_START=$(date +%s.%N)
  env "${node_env[@]}" "$@" SSE_LISTEN=127.0.0.1:$port SSE_ADMIN_LISTEN=127.0.0.1:$admin \
    "$node_bin" >"$NODE_LOG" 2>&1 &
  NODE_PID=$!
  pids+=("$NODE_PID")
  NODE_URL=http://127.0.0.1:$port
  NODE_ADMIN=http://127.0.0.1:$admin
  for _ in $(seq 100); do curl -fs "$NODE_ADMIN/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "bench: node $name not ready; see $NODE_LOG" >&2; return 1
}

stop_node() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# wait_conns ADMIN N SECONDS: until the node reports N open streams.
wait_conns() {
  local admin=$1 n=$2 end=$((SECONDS + $3)) c
  while [ $SECONDS -lt $end ]; do
    c=$(curl -fs "$admin/metrics" 2>/dev/null | awk '$1=="sse_connections"{printf "%d", $2}')
    [ "${c:-0}" -ge "$n" ] && return 0
    sleep 0.2
  done
  return 1
}

# profile ADMIN NAME SECONDS: CPU profile then heap profile of the node, in the
# background (waited for by the caller through PROF_PID).
profile() {
  local admin=$1 name=$2 secs=$3
  (
    curl -fs -o "$out/$stem-$name.cpu.pb.gz" "$admin/debug/pprof/profile?seconds=$secs" &&
      curl -fs -o "$out/$stem-$name.heap.pb.gz" "$admin/debug/pprof/heap" &&
      go tool pprof -top -nodecount=25 "$out/$stem-$name.cpu.pb.gz" >"$out/$stem-$name.cpu.top.txt" 2>/dev/null &&
      go tool pprof -top -nodecount=25 -sample_index=inuse_space "$out/$stem-$name.heap.pb.gz" >"$out/$stem-$name.heap.top.txt" 2>/dev/null
  ) || echo "bench: profile $name failed" >&2
}

manifest=$work/manifest.tsv
: >"$manifest"

# load SCENARIO LABEL NODE_LOG NODE_START -- sseload args...: runs sseload,
# records its command and report in the manifest. Never fails the script: a
# failed check is a result.
load() {
  local sc=$1 label=$2 nlog=$3 nstart=$4; shift 5
  local name=${sc}-${label} rc=0
  local cmd=("$load_bin" "$@" -progress=false -out "$work/$name.json")
  log "$sc $label: sseload $*"
  "${cmd[@]}" 2>"$work/$name.stderr" || rc=$?
  # The command as a user would type it, with the binary's name.
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$label" "$work/$name.json" "$nlog" "$nstart" "$rc" \
    "sseload $(printf '%q ' "$@")" >>"$manifest"
  if [ -f "$work/$name.json" ]; then
    "$work/bin/chart" -brief "$work/$name.json" >&2 || true
  else
    log "$sc $label: no report (rc $rc); stderr: $(tail -3 "$work/$name.stderr")"
  fi
}

runs() { case " $only " in *" $1 "*) return 0 ;; esac; return 1; }

# flush Redis between scenarios so stream lengths do not carry over.
flush() { redis-cli -p "$redis_port" flushall >/dev/null; }

common=(-redis "$redis_url" -src "$SRC" -ramp "$RAMP" -size 100)

# --- S1: idle streams --------------------------------------------------------
if runs S1; then
  for n in $S1_N; do
    flush
    start_node s1-$n
    load S1 "$n" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${common[@]}" -n "$n" -idle -duration "$S1_HOLD" \
      -topics s1 -node-pid "$NODE_PID" -scrape "$NODE_ADMIN"
    stop_node "$NODE_PID"
  done
fi

# --- S2 (and S8): 10k clients, one topic, 10 events/s ------------------------
# node_lag ADMIN PREFIX: p50 and p99 of the node's sse_delivery_lag_seconds
# (entry ID time to the end of the write to a client), interpolated in
# their buckets as PromQL's histogram_quantile does, as PREFIX_p50_ms= and
# PREFIX_p99_ms= lines: the node's share of the latency the load generator
# reports, without the reading.
node_lag() {
  curl -fs "$1/metrics" | awk -v pre="$2" '
    /^sse_delivery_lag_seconds_bucket/ {
      match($0, /le="[^"]*"/); n++
      le[n] = substr($0, RSTART + 4, RLENGTH - 5); cum[n] = $NF + 0
    }
    END {
      if (n == 0 || cum[n] == 0) exit
      nq = split("50 99", qs, " ")
      for (k = 1; k <= nq; k++) {
        rank = qs[k] / 100 * cum[n]; lo = 0; below = 0
        for (i = 1; i <= n; i++) {
          if (cum[i] >= rank) {
            v = (le[i] == "+Inf") ? lo : lo + (le[i] - lo) * (rank - below) / (cum[i] - below)
            printf "%s_p%s_ms=%.1f\n", pre, qs[k], v * 1000
            break
          }
          lo = le[i]; below = cum[i]
        }
      }
    }'
}

steady() { # steady SCENARIO LABEL N RATE DURATION PROFNAME EXTRA...
  local sc=$1 label=$2 n=$3 rate=$4 dur=$5 prof=$6; shift 6
  flush
  start_node "$sc-$label"
  local npid=$NODE_PID nadmin=$NODE_ADMIN
  load "$sc" "$label" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${common[@]}" -n "$n" -rate "$rate" -duration "$dur" \
    -drain 10s -topics "$sc-$label" -node-pid "$npid" -scrape "$nadmin" -check "$@"
  if [ "$sc" = S2 ]; then node_lag "$nadmin" s2_node_lag >"$work/s2.lag.txt" || true; fi
  stop_node "$npid"
  [ -n "$prof" ] && profile_pass "$sc-$label" "$n" "$rate" "$prof" "$@"
  return 0
}

# profile_pass NAME N RATE PROFNAME EXTRA...: the node's CPU and heap
# profiles come from a second run at the same load, on a fresh node, whose
# figures are not reported. Taken during the measured run, the profiler
# and the tools that read its output competed for the two cores: S2-shaped
# runs on 2026-12-01, alternated, gave p99 90-94 ms without (four runs) and
# 99-138 ms with (four runs).
profile_pass() {
  local name=$1 n=$2 rate=$3 prof=$4; shift 4
  flush
  start_node "$name-profile"
  local npid=$NODE_PID nadmin=$NODE_ADMIN
  ( wait_conns "$nadmin" "$n" 60 && sleep 1 && profile "$nadmin" "$prof" "$PROF_S" ) &
  local ppid=$!
  log "$name: profile run (${PROF_S}s profile)"
  "$load_bin" -url "$NODE_URL" "${common[@]}" -n "$n" -rate "$rate" -duration "$((PROF_S + 3))s" -drain 2s \
    -topics "$name-profile" -progress=false -out "$work/$name-profile.json" "$@" 2>"$work/$name-profile.stderr" ||
    log "$name: profile run's load ended with $? (not a result; see $work/$name-profile.stderr)"
  wait "$ppid" 2>/dev/null || true
  stop_node "$npid"
}

if runs S2; then
  # What the kernel and the simplest possible fan-out cost here, for scale.
  log "floor: bare loopback fan-out to $S2_N connections (bench/floor)"
  "$work/bin/floor" -n "$S2_N" -src "$SRC" >"$work/floor.txt" || log "floor failed (see above)"
  steady S2 "${S2_N}c-10eps" "$S2_N" 10 "$S2_DUR" s2
  # The floor again, for how much it moved during the run (its 30 rounds
  # swing by tens of ms); S2's ratio stays against the one before.
  log "floor again, after S2"
  "$work/bin/floor" -n "$S2_N" -src "$SRC" | sed 's/^floor_/floor_after_/' >"$work/floor-after.txt" || log "floor failed (see above)"
fi

# --- S3 (and S7): raise the rate until p99 > 250 ms or loss ------------------
s3_ladder() { # N RATES
  local n=$1 rates=$2 r
  for r in $rates; do
    local dur=${S3_DUR%s}
    PROF_S=$((dur > 4 ? dur - 3 : 2)) steady S3 "${n}c-${r}eps" "$n" "$r" "$S3_DUR" "s3-${n}c-${r}eps"
    local prc=0
    "$work/bin/chart" -pass "$work/S3-${n}c-${r}eps.json" || prc=$?
    case $prc in
    0) ;;
    2) log "S3 ${n} clients: stop at $r events/s: the publisher fell short of the rate (one XADD in flight per topic)"; break ;;
    *) log "S3 ${n} clients: stop at $r events/s (p99 > 250 ms or loss)"; break ;;
    esac
  done
}
if runs S3 || runs S7; then
  s3_ladder "$S3_N1" "$S3_RATES1"
  s3_ladder "$S3_N2" "$S3_RATES2"
fi

# --- S4: connect/disconnect rounds while publishing -----------------------------
if runs S4; then
  flush
  start_node s4
  load S4 "${S4_N}c-${S4_ROUNDS}rounds" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${common[@]}" -n "$S4_N" -rate 10 \
    -churn "$S4_ROUNDS" -churn-hold "$S4_HOLD" -topics s4 -node-pid "$NODE_PID" -scrape "$NODE_ADMIN"
  stop_node "$NODE_PID"
fi

# --- S5: reconnect storm -----------------------------------------------------
if runs S5; then
  flush
  start_node s5
  # A CPU profile from when all are connected, over the storm.
  ( wait_conns "$NODE_ADMIN" "$S5_N" 60 && profile "$NODE_ADMIN" s5 8 ) &
  s5prof=$!
  load S5 "${S5_N}c-50ev" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${common[@]}" -n "$S5_N" -rate 10 -duration 3s \
    -storm-events 50 -storm-timeout 30s -topics s5 -node-pid "$NODE_PID" -scrape "$NODE_ADMIN" -check
  wait "$s5prof" 2>/dev/null || true
  stop_node "$NODE_PID"
fi

# --- S6: two nodes, one SIGKILLed ----------------------------------------------
if runs S6; then
  flush
  start_node s6-a; a_pid=$NODE_PID a_url=$NODE_URL a_admin=$NODE_ADMIN a_log=$NODE_LOG a_start=$NODE_START
  start_node s6-b; b_pid=$NODE_PID b_url=$NODE_URL b_admin=$NODE_ADMIN
  # Kill node a S6_KILL_AFTER seconds after all clients are connected.
  ( wait_conns "$a_admin" $((S6_N / 2)) 60 && wait_conns "$b_admin" $((S6_N / 2)) 60 &&
    sleep "$S6_KILL_AFTER" && kill -KILL "$a_pid" && date +%s.%N >"$work/s6.killed" ) &
  killer=$!
  load S6 "${S6_N}c-kill" "$a_log" "$a_start" -- -url "$a_url,$b_url" "${common[@]}" -n "$S6_N" -rate 10 -duration "$S6_DUR" \
    -drain 15s -topics s6 -node-pid "$b_pid" -scrape "$b_admin" -check
  wait "$killer" 2>/dev/null || true
  stop_node "$b_pid"
fi

# --- S8: 10% slow readers during S2 ---------------------------------------------
if runs S8; then
  steady S8 "${S2_N}c-10eps-slow10" "$S2_N" 10 "$S2_DUR" "" -slow-frac 0.1
fi

# --- M1-M4: memory budgets (issue 11) -----------------------------------------------
# Each: a fresh node, its RSS sampled every 100 ms from /proc (sseload
# -node-pid, -rss-every), peak growth over the baseline before any client.
# A node passing BENCH_NODE_RSS_MAX_MIB ends the run (reported, check failed).
avail_mib=$(awk '/MemAvailable/{printf "%d", $2/1024}' /proc/meminfo)
rss_max=${BENCH_NODE_RSS_MAX_MIB:-$((avail_mib / 2 < 16384 ? avail_mib / 2 : 16384))}
mem_common=(-redis "$redis_url" -src "$SRC" -ramp "$RAMP" -node-rss-max-mib "$rss_max")

# bigevent SCENARIO CLIENTS MIB: one event of MIB MiB to CLIENTS clients, every
# copy checked whole (size and CRC-32C).
bigevent() {
  local sc=$1 n=$2 mib=$3
  flush
  start_node "$sc"
  load "$sc" "${n}c-${mib}MiB" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${mem_common[@]}" -n "$n" -topics "$sc" \
    -size $((mib << 20)) -count 1 -rate 1 -duration 10s -drain 180s -buf 65536 -verify -check \
    -node-pid "$NODE_PID" -scrape "$NODE_ADMIN"
  stop_node "$NODE_PID"
}
runs M1 && bigevent M1 "$M1_N" 10
runs M2 && bigevent M2 "$M2_N" 50

if runs M3; then
  # 1,024 entries of 1 KiB in each topic, written by Redis itself: one EVAL
  # (a loop of XADDs) per topic, the EVALs pipelined with redis-cli --pipe.
  flush
  log "M3: preloading $M3_TOPICS topics with 1024 x 1 KiB entries"
  m3_script="local d=string.rep('x',tonumber(ARGV[2])) for i=1,tonumber(ARGV[1]) do redis.call('XADD',KEYS[1],'*','data',d) end return 0"
  for ((i = 0; i < M3_TOPICS; i++)); do
    printf 'EVAL "%s" 1 sse:m3-%d 1024 1024\r\n' "$m3_script" "$i"
  done | redis-cli -p "$redis_port" --pipe >"$work/m3-preload.txt" 2>&1 || log "M3 preload: $(tail -2 "$work/m3-preload.txt")"
  log "M3: $(tail -1 "$work/m3-preload.txt"); XLEN of the first and last topic: $(redis-cli -p "$redis_port" xlen sse:m3-0) $(redis-cli -p "$redis_port" xlen "sse:m3-$((M3_TOPICS - 1))")"
  start_node m3
  load M3 "${M3_TOPICS}c-${M3_TOPICS}topics" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${mem_common[@]}" -n "$M3_TOPICS" \
    -topics m3 -topics-n "$M3_TOPICS" -idle -duration 10s -node-pid "$NODE_PID" -scrape "$NODE_ADMIN"
  stop_node "$NODE_PID"
fi

if runs M4; then
  # A stream of 100 x 1 MiB, then clients that resume from 0 at once, with a
  # hot ring of 16 entries: most of the replay comes from Redis.
  flush
  start_node m4 SSE_RING_SIZE=16
  load M4 "${M4_N}c-100x1MiB-ring16" "$NODE_LOG" "$NODE_START" -- -url "$NODE_URL" "${mem_common[@]}" -n "$M4_N" -topics m4 \
    -size $((1 << 20)) -preload 100 -from-start -duration 0s -drain 180s -buf 65536 -verify -check \
    -node-pid "$NODE_PID" -scrape "$NODE_ADMIN"
  stop_node "$NODE_PID"
fi

# --- report ---------------------------------------------------------------------
{
  echo "commit=$full_commit"
  echo "commit_short=$commit"
  echo "scale=$scale"
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "go=$(go version)"
  echo "kernel=$(uname -sr)"
  echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "cpus=$(nproc)"
  echo "mem_kb=$(awk '/MemTotal/{print $2}' /proc/meminfo)"
  echo "ulimit_n=$(ulimit -n)"
  echo "redis=$(redis-server --version)"
  echo "redis_cmd=${redis_cmd[*]}"
  echo "node_cmd=$(printf '%q ' "${node_env[@]}") SSE_LISTEN=127.0.0.1:<port> SSE_ADMIN_LISTEN=127.0.0.1:<port> ssenode"
  echo "bench_cmd=BENCH_SCALE=$scale bash bench/run.sh"
  [ -n "${rss_max:-}" ] && echo "node_rss_max_mib=$rss_max"
  [ -f "$work/s6.killed" ] && echo "s6_killed_at=$(cat "$work/s6.killed")"
  [ -f "$work/floor.txt" ] && cat "$work/floor.txt"
  [ -f "$work/floor-after.txt" ] && cat "$work/floor-after.txt"
  [ -f "$work/s2.lag.txt" ] && cat "$work/s2.lag.txt"
} >"$work/meta.txt"
"$work/bin/chart" -manifest "$manifest" -meta "$work/meta.txt" \
  -json "$out/$stem.json" -md "$out/$stem.md" -png "$out/$stem.png"
log "wrote $out/$stem.json $out/$stem.md $out/$stem.png"
cat "$out/$stem.md"
