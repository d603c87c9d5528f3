#!/usr/bin/env bash
# Cross-node sends at full speed (method and results: docs/benchmarks.md, "Cross-node sends"):
# two nodes in cluster mode on a real redis-server, the Rust echo upstream; `xnode` writes
# `/to <B> …` lines on socket A (node 1) as fast as the schedule says, the upstream turns each into
# a `send` (with a receipt) to socket B, on node 2 (cross-node: over the Redis bus) or on node 1
# too (same-node: the baseline, which also shows where the generator itself stops). The figure is
# what B received per second, with every run's line kept.
#
# The nodes run with --write-queue $WRITE_QUEUE (16384): the one-thread generator reads B in
# bursts, and at these rates a default queue of 1024 would close B as a slow consumer (the
# receipts arrive in pipelined bursts of up to 512); the benchmark measures the bus, not how
# much a slow reader is allowed.
#
# Settings (environment): RUNS=3 RATE=100000 WARMUP=2s DURATION=10s WRITE_QUEUE=16384 SKIP_BUILD=1
# BIN=target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE=${RATE:-100000}
WRITE_QUEUE=${WRITE_QUEUE:-16384}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-crossnode
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

build_release
REDIS_PORT=$(free_port)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT"
wait_port "$REDIS_PORT"
start_echo_upstream
ports=()
pids=()
for n in 1 2; do
    port=$(free_port)
    start "node-$n" "$BIN/ppp" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --node-id "n$n" \
        --write-queue "$WRITE_QUEUE" --redis "redis://127.0.0.1:$REDIS_PORT" --upstream "http://127.0.0.1:$UP_PORT"
    pids+=("$LAST_PID")
    ports+=("$port")
    wait_echo "$port"
done

declare -A RATES
for run in $(seq "$RUNS"); do
    for target in same-node cross-node; do
        to=${ports[0]}
        [[ $target == cross-node ]] && to=${ports[1]}
        log "run $run/$RUNS: $target"
        before=$(cpu_ticks "${pids[0]}" "${pids[1]}" "$UP_PID" | paste -sd,)
        line=$("$BIN/examples/xnode" --from "127.0.0.1:${ports[0]}" --to "127.0.0.1:$to" --rate "$RATE" \
            --warmup "$WARMUP" --duration "$DURATION" 2>>"$OUT/xnode.log")
        after=$(cpu_ticks "${pids[0]}" "${pids[1]}" "$UP_PID" | paste -sd,)
        line="target=$target $line ticks_before[n1,n2,upstream]=$before ticks_after=$after"
        echo "$line" | tee -a "$RESULTS" >&2
        RATES[$target]+="$(field achieved_rate " $line") "
    done
done

{
    echo "# Cross-node sends — $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "$(nproc) cores; schedule $RATE sends/s; every run's line (CPU ticks of both nodes and the upstream) is in results.txt."
    echo
    echo "| target | sends received/s runs | median |"
    echo "| --- | --- | --- |"
    for target in same-node cross-node; do
        # shellcheck disable=SC2086
        echo "| $target | ${RATES[$target]} | $(median ${RATES[$target]}) |"
    done
    # shellcheck disable=SC2086
    awk -v s="$(median ${RATES[same-node]})" -v c="$(median ${RATES[cross-node]})" \
        'BEGIN {printf "\ncross-node / same-node = %.2f (targets: cross-node >= 50000/s and >= 0.5)\n", c / s}'
} | tee "$OUT/summary.md"
