#!/usr/bin/env bash
# Redelivery per upstream kill (method and results: docs/benchmarks.md, "Acknowledged delivery").
# On loopback, on free ports: one node, two echo upstreams, an open-loop load of RATE messages/s
# over SOCKETS sockets for DURATION; KILL_AT into it one upstream is killed with SIGKILL. What the
# node hands out again (`ppp_events_replayed_total`) bounds the duplicates the upstreams processed
# (only events not acknowledged, or not confirmed by a health check, go out again). Runs
# alternate between acking upstreams (the default of src/echo.rs: an ack per 256 events or 50 ms)
# and upstreams started with --no-ack (the fallback: confirmed by health checks, every
# --health-interval, default 2 s). Medians of $RUNS runs each. Results go to
# bench-results/<UTC time>-redelivery/ (summary.md, results.txt, logs).
#
# Settings (environment): RUNS=3 RATE=100000 SOCKETS=100 SIZE=64 WARMUP=2s DURATION=10s KILL_AT=6
# HEALTH_INTERVAL=2s BIN=target/release SKIP_BUILD=1 (use the binaries already in $BIN).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE=${RATE:-100000}
KILL_AT=${KILL_AT:-6}
HEALTH_INTERVAL=${HEALTH_INTERVAL:-2s}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-redelivery
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

build_release

# replayed ADMIN_PORT: the node's ppp_events_replayed_total, summed over upstreams.
replayed() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^ppp_events_replayed_total/ {s += $2} END {print s + 0}'
}

# one_run MODE (ack | no-ack): prints `mode=… replayed=… <loadgen's line>`.
one_run() {
    local mode=$1 flag=() ports=() pids=() i node_port admin_port
    [[ $mode == no-ack ]] && flag=(--no-ack)
    for i in 1 2; do
        ports+=("$(free_port)")
        start "upstream-$mode-$i" "$BIN/examples/echo_upstream" --listen "127.0.0.1:${ports[-1]}" "${flag[@]}"
        pids+=("$LAST_PID")
    done
    node_port=$(free_port)
    admin_port=$(free_port)
    start "node-$mode" "$BIN/ppp" --listen "127.0.0.1:$node_port" --admin-listen "127.0.0.1:$admin_port" \
        --upstream "http://127.0.0.1:${ports[0]}" --upstream "http://127.0.0.1:${ports[1]}" \
        --health-interval "$HEALTH_INTERVAL"
    local node=$LAST_PID
    wait_port "${ports[0]}"
    wait_port "${ports[1]}"
    wait_echo "$node_port"
    "$BIN/examples/loadgen" latency --target "127.0.0.1:$node_port" --sockets "$SOCKETS" --rate "$RATE" \
        --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION" >"$OUT/loadgen-$mode.out" 2>>"$OUT/loadgen.log" &
    local load=$!
    sleep "$KILL_AT" # the fault's time in the run, not a wait for a condition
    kill -KILL "${pids[0]}"
    wait "$load" || die "loadgen failed (see $OUT/loadgen.log)"
    local line
    line=$(cat "$OUT/loadgen-$mode.out")
    echo "mode=$mode replayed=$(replayed "$admin_port") $line"
    stop "$node"
    stop "${pids[1]}"
    stop "${pids[0]}"
}

# Echoes the clients got twice: replies beyond what was sent (each line is echoed once).
dups() { echo $(($(field received " $1") - $(field sent " $1"))); }

ACK=() NOACK=() ACK_DUPS=() NOACK_DUPS=()
for run in $(seq "$RUNS"); do
    for mode in ack no-ack; do
        log "run $run/$RUNS: $mode"
        line=$(one_run "$mode")
        echo "$line" | tee -a "$RESULTS" >&2
        if [[ $mode == ack ]]; then
            ACK+=("$(field replayed " $line")")
            ACK_DUPS+=("$(dups "$line")")
        else
            NOACK+=("$(field replayed " $line")")
            NOACK_DUPS+=("$(dups "$line")")
        fi
    done
done

{
    echo "# Redelivery per upstream kill — $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "$RATE msgs/s open loop over $SOCKETS sockets, two echo upstreams, one killed with SIGKILL ${KILL_AT}s into"
    echo "the run; --health-interval $HEALTH_INTERVAL; $(nproc) cores. Every run's line is in results.txt."
    echo
    echo "| upstreams | events handed out again per kill (median of $RUNS) | runs | share of one second's traffic | echoes clients got twice (median) | runs |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for mode in ack no-ack; do
        if [[ $mode == ack ]]; then
            values=("${ACK[@]}") twice=("${ACK_DUPS[@]}")
        else
            values=("${NOACK[@]}") twice=("${NOACK_DUPS[@]}")
        fi
        m=$(median "${values[@]}")
        share=$(awk -v m="$m" -v r="$RATE" 'BEGIN {printf "%.2f%%", 100 * m / r}')
        echo "| $mode | $m | ${values[*]} | $share | $(median "${twice[@]}") | ${twice[*]} |"
    done
} | tee "$OUT/summary.md"
