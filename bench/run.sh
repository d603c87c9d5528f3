#!/usr/bin/env bash
# The node-core benchmark (method and results: docs/benchmarks.md). On loopback, on free ports:
#   (a) throughput through a node (+ the echo upstream) vs through HAProxy (TCP mode, one thread)
#       fronting a plain line-echo server, runs alternating;
#   (b) latency at a fixed rate through a node (and, for reference, through HAProxy);
#   (c) node RSS per idle socket (a fresh node per run).
# Medians of $RUNS runs. Results go to bench-results/<UTC time>/ (summary.md, results.txt, logs).
#
# Settings (environment): RUNS=3 WARMUP=2s DURATION=10s SOCKETS=100 BURST=16 SIZE=64 RATE=10000
# IDLE_SOCKETS=10000 SKIP_BUILD=1 (use the binaries already in target/release).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE=${RATE:-10000}
IDLE_SOCKETS=${IDLE_SOCKETS:-10000}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

# --- setup ---------------------------------------------------------------------------------------

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= IDLE_SOCKETS + 1024)) || die "ulimit -n is $(ulimit -n); need $((IDLE_SOCKETS + 1024))"

if [[ ! -x $HAPROXY ]]; then
    log "installing haproxy"
    apt-get update -qq && apt-get install -y -qq haproxy >/dev/null
fi

build_release

machine_info "$OUT/machine.txt"

start_echo_upstream


LE_PORT=$(free_port)
start line_echo "$BIN/examples/line_echo" --listen "127.0.0.1:$LE_PORT"
LE_PID=$LAST_PID
wait_echo "$LE_PORT"

HA_PORT=$(free_port)
cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend bench
    bind 127.0.0.1:$HA_PORT
    default_backend line_echo

backend line_echo
    server line_echo 127.0.0.1:$LE_PORT
EOF
start haproxy "$HAPROXY" -db -f "$OUT/haproxy.cfg"
HA_PID=$LAST_PID
wait_echo "$HA_PORT"

start_node node
log "node on :$NODE_PORT (upstream :$UP_PORT), haproxy on :$HA_PORT (line_echo :$LE_PORT); results in $OUT"


# --- (a) throughput ------------------------------------------------------------------------------

NODE_TP=()
HA_TP=()
for run in $(seq "$RUNS"); do
    log "throughput run $run/$RUNS"
    SAMPLE=("$NODE_PID" "$UP_PID")
    SAMPLE_NAMES=node,upstream
    line=$(loadgen node "$NODE_PORT" throughput "${TP_ARGS[@]}")
    NODE_TP+=("$(field msgs_per_sec "$line")")
    SAMPLE=("$HA_PID" "$LE_PID")
    SAMPLE_NAMES=haproxy,line_echo
    line=$(loadgen haproxy "$HA_PORT" throughput "${TP_ARGS[@]}")
    HA_TP+=("$(field msgs_per_sec "$line")")
done

# --- (b) latency ---------------------------------------------------------------------------------

LAT_ARGS=(--sockets "$SOCKETS" --rate "$RATE" --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION")
NODE_P50=() NODE_P99=() NODE_P999=() NODE_MAX=() NODE_LOST=()
HA_P50=() HA_P99=()
for run in $(seq "$RUNS"); do
    log "latency run $run/$RUNS"
    SAMPLE=("$NODE_PID" "$UP_PID")
    SAMPLE_NAMES=node,upstream
    line=$(loadgen node "$NODE_PORT" latency "${LAT_ARGS[@]}")
    NODE_P50+=("$(field p50_us "$line")")
    NODE_P99+=("$(field p99_us "$line")")
    NODE_P999+=("$(field p999_us "$line")")
    NODE_MAX+=("$(field max_us "$line")")
    NODE_LOST+=("$(field lost "$line")")
    SAMPLE=("$HA_PID" "$LE_PID")
    SAMPLE_NAMES=haproxy,line_echo
    line=$(loadgen haproxy "$HA_PORT" latency "${LAT_ARGS[@]}")
    HA_P50+=("$(field p50_us "$line")")
    HA_P99+=("$(field p99_us "$line")")
done
stop "$NODE_PID"

# --- (c) RSS per idle socket ---------------------------------------------------------------------

PER_SOCKET=()
for run in $(seq "$RUNS"); do
    log "idle-socket run $run/$RUNS"
    start_node "node-idle-$run"
    per=$(idle_rss "plain-$run" "$IDLE_SOCKETS")
    tail -1 "$RESULTS" >&2
    PER_SOCKET+=("$per")
    stop "$NODE_PID"
done

# --- summary -------------------------------------------------------------------------------------

node_tp=$(median "${NODE_TP[@]}")
ha_tp=$(median "${HA_TP[@]}")
ratio=$(awk -v n="$node_tp" -v h="$ha_tp" 'BEGIN {printf "%.2f", n / h}')
p99=$(median "${NODE_P99[@]}")
per=$(median "${PER_SOCKET[@]}")

{
    summary_head "Node-core benchmark"
    echo "| throughput via node (msgs/s, $SOCKETS sockets, bursts of $BURST x $SIZE B) | ${NODE_TP[*]} | $node_tp | | |"
    echo "| throughput via HAProxy -> line_echo (msgs/s) | ${HA_TP[*]} | $ha_tp | | |"
    echo "| node / HAProxy | | $ratio | >= 0.7 (issue 14) | $(verdict "awk -v r=$ratio 'BEGIN {exit !(r >= 0.7)}'") |"
    echo "| node latency p50 at $RATE msgs/s (us) | ${NODE_P50[*]} | $(median "${NODE_P50[@]}") | | |"
    echo "| node latency p99 at $RATE msgs/s (us) | ${NODE_P99[*]} | $p99 | <= 1500 (issue 14) | $(verdict "((p99 <= 1500))") |"
    echo "| node latency p99.9 at $RATE msgs/s (us) | ${NODE_P999[*]} | $(median "${NODE_P999[@]}") | | |"
    echo "| node latency max at $RATE msgs/s (us) | ${NODE_MAX[*]} | $(median "${NODE_MAX[@]}") | | |"
    echo "| node replies lost | ${NODE_LOST[*]} | $(median "${NODE_LOST[@]}") | 0 | |"
    echo "| HAProxy latency p50 / p99 at $RATE msgs/s (us) | ${HA_P50[*]} / ${HA_P99[*]} | $(median "${HA_P50[@]}") / $(median "${HA_P99[@]}") | | |"
    echo "| node RSS per idle socket (bytes, $IDLE_SOCKETS sockets) | ${PER_SOCKET[*]} | $per | <= 2560 (issue 14) | $(verdict "((per <= 2560))") |"
    summary_tail
} | tee "$OUT/summary.md"
log "done: $OUT"
