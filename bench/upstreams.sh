#!/usr/bin/env bash
# Messages per second through one node to one upstream stream, by upstream and RPC (method and
# results: docs/benchmarks.md, "ConnectBatch"): the Rust echo upstream (`ppp::echo`) and the


# `--no-batch`, which answers ConnectBatch UNIMPLEMENTED so that the node falls back).
# Closed loop, `loadgen throughput` (SOCKETS sockets, bursts of BURST lines of SIZE bytes), runs
# alternating; the CPU share of each process is recorded, to show which side is the limit.
#
# Settings (environment): RUNS=3 WARMUP=2s DURATION=10s SOCKETS=100 BURST=16 SIZE=64
# PY=target/interop/venv/bin/python SKIP_BUILD=1 BIN=target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-target/interop/venv/bin/python}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-upstreams
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

build_release
[[ -x $PY ]] || die "no Python with grpcio at $PY (bash scripts/test.sh makes one)"

# upstream_cmd KIND RPC PORT: the command line of an upstream.
upstream_cmd() {
    local kind=$1 rpc=$2 port=$3 flags=()
    [[ $rpc == connect ]] && flags=(--no-batch)
    case $kind in
    rust) echo "$BIN/examples/echo_upstream --listen 127.0.0.1:$port ${flags[*]}" ;;
    python) echo "$PY examples/python/upstream.py --listen 127.0.0.1:$port ${flags[*]}" ;;
    esac
}

# one_run KIND RPC: prints `upstream=KIND rpc=RPC <loadgen's line> cpu=<node,upstream,loadgen ticks>`.
one_run() {
    local kind=$1 rpc=$2 up_port node_port
    up_port=$(free_port)
    node_port=$(free_port)
    # shellcheck disable=SC2046
    start "upstream-$kind-$rpc" $(upstream_cmd "$kind" "$rpc" "$up_port")
    local up=$LAST_PID
    wait_port "$up_port"
    start "node-$kind-$rpc" "$BIN/ppp" --listen "127.0.0.1:$node_port" --admin-listen 127.0.0.1:0 \
        --upstream "http://127.0.0.1:$up_port"
    local node=$LAST_PID
    wait_echo "$node_port"
    local before after line
    before=$(cpu_ticks "$node" "$up" | paste -sd,)
    line=$("$BIN/examples/loadgen" throughput --target "127.0.0.1:$node_port" --sockets "$SOCKETS" \
        --burst "$BURST" --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION" 2>>"$OUT/loadgen.log")
    after=$(cpu_ticks "$node" "$up" | paste -sd,)
    echo "upstream=$kind rpc=$rpc $line ticks_before=$before ticks_after=$after"
    stop "$node"
    stop "$up"
}

declare -A RATES
for run in $(seq "$RUNS"); do
    for kind in rust python; do
        for rpc in batch connect; do
            log "run $run/$RUNS: $kind over $rpc"
            line=$(one_run "$kind" "$rpc")
            echo "$line" | tee -a "$RESULTS" >&2
            RATES[$kind-$rpc]+="$(field msgs_per_sec " $line") "
        done
    done
done

{
    echo "# Upstream RPCs — $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "$(nproc) cores; every run's line (with CPU ticks of node and upstream) is in results.txt."
    echo
    echo "| upstream | RPC | msgs/s runs | median |"
    echo "| --- | --- | --- | --- |"
    for kind in rust python; do
        for rpc in batch connect; do
            # shellcheck disable=SC2086
            echo "| $kind | $rpc | ${RATES[$kind-$rpc]} | $(median ${RATES[$kind-$rpc]}) |"
        done
    done
    # shellcheck disable=SC2086
    awk -v b="$(median ${RATES[python-batch]})" -v c="$(median ${RATES[python-connect]})" \
        'BEGIN {printf "\npython: ConnectBatch / Connect = %.2f (target >= 5)\n", b / c}'
} | tee "$OUT/summary.md"
