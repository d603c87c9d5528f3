#!/usr/bin/env bash
# Throughput of two builds of the node, before and after a change, runs alternating (method:
# docs/benchmarks.md): each run starts a standalone node of one build with that build's echo
# upstream and measures `loadgen throughput` (closed loop, 100 sockets, bursts of 16 lines of
# 64 bytes, 2 s warm-up, 10 s) with one generator, the same for both.
#
#   bench/compare.sh BEFORE_BIN AFTER_BIN      # e.g. ../before/target/release target/release
#
# With TLS=1 the nodes serve TLS (a certificate made for the run, as in bench/tls.sh) and loadgen
# speaks it; with MODE=handshakes (TLS only) each run measures `loadgen handshakes` (32 in flight)
# instead of throughput.
#
# Medians of $RUNS runs of each. Results go to bench-results/<UTC time>-compare/.
# Settings (environment): RUNS=5 SOCKETS=100 BURST=16 SIZE=64 WARMUP=2s DURATION=10s TLS=
# MODE=throughput LOADGEN=<AFTER_BIN>/examples/loadgen
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BEFORE=${1:?usage: bench/compare.sh BEFORE_BIN AFTER_BIN}
AFTER=${2:?usage: bench/compare.sh BEFORE_BIN AFTER_BIN}
RUNS=${RUNS:-5}
SOCKETS=${SOCKETS:-100}
BURST=${BURST:-16}
SIZE=${SIZE:-64}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-10s}
LOADGEN=${LOADGEN:-$AFTER/examples/loadgen}
MODE=${MODE:-throughput}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-compare
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

CA=
if [[ -n ${TLS:-} ]]; then
    make_certs "$OUT/certs"
    CA=$OUT/certs/ca.pem
elif [[ $MODE != throughput ]]; then
    die "MODE=$MODE needs TLS=1"
fi
if [[ $MODE == throughput ]]; then
    LOAD=(throughput --sockets "$SOCKETS" --burst "$BURST" --size "$SIZE")
    RATE=msgs_per_sec
else
    LOAD=(handshakes --concurrency 32)
    RATE=per_sec
fi

# one_run NAME BIN: prints `build=NAME <loadgen's line> cpu_pct[node,upstream]=…`.
one_run() {
    local name=$1 bin=$2 up_port node_port
    up_port=$(free_port)
    node_port=$(free_port)
    start "upstream-$name" "$bin/examples/echo_upstream" --listen "127.0.0.1:$up_port"
    local up=$LAST_PID
    wait_port "$up_port"
    start "node-$name" "$bin/ppp" --listen "127.0.0.1:$node_port" --admin-listen 127.0.0.1:0 \
        --upstream "http://127.0.0.1:$up_port" "${TLS_FLAGS[@]}"
    local node=$LAST_PID
    wait_echo "$node_port" "$CA"
    local before_ticks after_ticks line
    before_ticks=$(cpu_ticks "$node" "$up" | paste -sd' ')
    line=$("$LOADGEN" "${LOAD[@]}" --target "127.0.0.1:$node_port" --warmup "$WARMUP" --duration "$DURATION" \
        "${CLIENT_TLS[@]}" 2>>"$OUT/loadgen.log")
    after_ticks=$(cpu_ticks "$node" "$up" | paste -sd' ')
    echo "build=$name $line ticks_before=${before_ticks// /,} ticks_after=${after_ticks// /,}"
    stop "$node"
    stop "$up"
}

B=() A=()
for run in $(seq "$RUNS"); do
    for name in before after; do
        log "run $run/$RUNS: $name"
        if [[ $name == before ]]; then bin=$BEFORE; else bin=$AFTER; fi
        line=$(one_run "$name" "$bin")
        echo "$line" | tee -a "$RESULTS" >&2
        if [[ $name == before ]]; then B+=("$(field "$RATE" " $line")"); else A+=("$(field "$RATE" " $line")"); fi
    done
done

{
    echo "# Before / after — $(date -u +%FT%TZ); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "before: $BEFORE; after: $AFTER; $(nproc) cores; loadgen: $LOADGEN; ${TLS:+TLS, }$MODE." \
        "Every run's line is in results.txt."
    echo
    echo "| build | $RATE runs | median |"
    echo "| --- | --- | --- |"
    echo "| before | ${B[*]} | $(median "${B[@]}") |"
    echo "| after | ${A[*]} | $(median "${A[@]}") |"
    echo
    awk -v b="$(median "${B[@]}")" -v a="$(median "${A[@]}")" 'BEGIN {printf "after / before: %.3f\n", a / b}'
} | tee "$OUT/summary.md"
