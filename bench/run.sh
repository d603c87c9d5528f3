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

RUNS=${RUNS:-3}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-10s}
SOCKETS=${SOCKETS:-100}
BURST=${BURST:-16}
SIZE=${SIZE:-64}
RATE=${RATE:-10000}
IDLE_SOCKETS=${IDLE_SOCKETS:-10000}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
BIN=${BIN:-target/release}
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

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "cpu: $(nproc) x $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "memory: $(awk '/^MemTotal/ {print $2 " kB"}' /proc/meminfo)"
    echo "rustc: $(rustc --version)"
    echo "haproxy: $("$HAPROXY" -v | head -1)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

UP_PORT=$(free_port)
start upstream "$BIN/examples/echo_upstream" --listen "127.0.0.1:$UP_PORT"
UP_PID=$LAST_PID
wait_port "$UP_PORT"

NODE_PID=
NODE_PORT=
# start_node NAME: a fresh node in front of the echo upstream, forwarding.
start_node() {
    NODE_PORT=$(free_port)
    local admin
    admin=$(free_port)
    start "$1" env RUST_LOG="${NODE_RUST_LOG:-info}" "$BIN/ppp" --listen "127.0.0.1:$NODE_PORT" \
        --admin-listen "127.0.0.1:$admin" --upstream "http://127.0.0.1:$UP_PORT"
    NODE_PID=$LAST_PID
    wait_echo "$NODE_PORT"
}

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

# loadgen LABEL PORT MODE ARGS... (pids to sample CPU of in $SAMPLE): one loadgen run; its result
# line, with the CPU share of each sampled process over the run, goes to results.txt and stdout.
SAMPLE=()
SAMPLE_NAMES=
loadgen() {
    local label=$1 port=$2 mode=$3
    shift 3
    local hz t0 t1 c0 c1 line cpu="" i
    hz=$(getconf CLK_TCK)
    t0=$(date +%s.%N)
    mapfile -t c0 < <(cpu_ticks "${SAMPLE[@]}")
    line=$("$BIN/examples/loadgen" "$mode" --target "127.0.0.1:$port" "$@" 2>>"$OUT/loadgen.log") ||
        die "loadgen $mode against $label failed (see $OUT/loadgen.log)"
    mapfile -t c1 < <(cpu_ticks "${SAMPLE[@]}")
    t1=$(date +%s.%N)
    for i in "${!SAMPLE[@]}"; do
        cpu+=" $(awk -v a="${c0[i]}" -v b="${c1[i]}" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
            'BEGIN {printf "%.0f", (b - a) / hz / (t1 - t0) * 100}')"
    done
    line="$label $line cpu_pct[$SAMPLE_NAMES]=${cpu# }"
    echo "$line" >>"$RESULTS"
    echo "$line" >&2
    echo "$line"
}

# --- (a) throughput ------------------------------------------------------------------------------

TP_ARGS=(--sockets "$SOCKETS" --burst "$BURST" --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION")
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
    sleep 1 # let the start-up settle (the readiness probe's socket is gone)
    fds0=$(fd_count "$NODE_PID")
    rss0=$(rss_kb "$NODE_PID")
    start "loadgen-idle-$run" "$BIN/examples/loadgen" idle --target "127.0.0.1:$NODE_PORT" \
        --sockets "$IDLE_SOCKETS" --duration 120s
    lg=$LAST_PID
    wait_for "$IDLE_SOCKETS idle sockets connected" 60 grep -q '^idle connected=' "$OUT/loadgen-idle-$run.log"
    wait_for "the node to hold $IDLE_SOCKETS sockets" 60 \
        eval '(($(fd_count "$NODE_PID") >= fds0 + IDLE_SOCKETS))'
    # Until RSS stops moving: two readings 0.5 s apart within 16 kB.
    prev=$(rss_kb "$NODE_PID")
    for _ in $(seq 40); do
        sleep 0.5
        rss1=$(rss_kb "$NODE_PID")
        ((rss1 - prev < 16 && prev - rss1 < 16)) && break
        prev=$rss1
    done
    fds1=$(fd_count "$NODE_PID")
    per=$(((rss1 - rss0) * 1024 / IDLE_SOCKETS))
    echo "idle-rss run=$run sockets=$IDLE_SOCKETS rss_before_kb=$rss0 rss_after_kb=$rss1 fds_before=$fds0 fds_after=$fds1 bytes_per_socket=$per" |
        tee -a "$RESULTS"
    PER_SOCKET+=("$per")
    stop "$lg"
    stop "$NODE_PID"
done

# --- summary -------------------------------------------------------------------------------------

node_tp=$(median "${NODE_TP[@]}")
ha_tp=$(median "${HA_TP[@]}")
ratio=$(awk -v n="$node_tp" -v h="$ha_tp" 'BEGIN {printf "%.2f", n / h}')
p99=$(median "${NODE_P99[@]}")
per=$(median "${PER_SOCKET[@]}")
verdict() { if eval "$1"; then echo met; else echo "NOT met"; fi; }

{
    echo "# Node-core benchmark, $(date -u +%F)"
    echo
    echo '```'
    cat "$OUT/machine.txt"
    echo '```'
    echo
    echo "| measure | runs | median | target | |"
    echo "| --- | --- | --- | --- | --- |"
    echo "| throughput via node (msgs/s, $SOCKETS sockets, bursts of $BURST x $SIZE B) | ${NODE_TP[*]} | $node_tp | | |"
    echo "| throughput via HAProxy -> line_echo (msgs/s) | ${HA_TP[*]} | $ha_tp | | |"
    echo "| node / HAProxy | | $ratio | >= 0.5 | $(verdict "awk -v r=$ratio 'BEGIN {exit !(r >= 0.5)}'") |"
    echo "| node latency p50 at $RATE msgs/s (us) | ${NODE_P50[*]} | $(median "${NODE_P50[@]}") | | |"
    echo "| node latency p99 at $RATE msgs/s (us) | ${NODE_P99[*]} | $p99 | < 5000 | $(verdict "((p99 < 5000))") |"
    echo "| node latency p99.9 at $RATE msgs/s (us) | ${NODE_P999[*]} | $(median "${NODE_P999[@]}") | | |"
    echo "| node latency max at $RATE msgs/s (us) | ${NODE_MAX[*]} | $(median "${NODE_MAX[@]}") | | |"
    echo "| node replies lost | ${NODE_LOST[*]} | $(median "${NODE_LOST[@]}") | 0 | |"
    echo "| HAProxy latency p50 / p99 at $RATE msgs/s (us) | ${HA_P50[*]} / ${HA_P99[*]} | $(median "${HA_P50[@]}") / $(median "${HA_P99[@]}") | | |"
    echo "| node RSS per idle socket (bytes, $IDLE_SOCKETS sockets) | ${PER_SOCKET[*]} | $per | <= 4096 | $(verdict "((per <= 4096))") |"
    echo
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "Every run (cpu_pct: share of one core over the whole loadgen run, connect and warm-up included):"
    echo
    echo '```'
    cat "$RESULTS"
    echo '```'
} | tee "$OUT/summary.md"
log "done: $OUT"
