#!/usr/bin/env bash
# The downstream TLS benchmark (method and results: docs/benchmarks.md, "Downstream TLS"). On
# loopback, on free ports, with an ECDSA P-256 certificate made by openssl for the run:
#   (a) TLS handshakes per second on one node (loadgen handshakes: connect, handshake, close);
#   (b) throughput through a node with TLS and without, the load shape of bench/run.sh, runs
#       alternating;
#   (c) node RSS per idle TLS socket, right after its handshake and after $IDLE_MESSAGES echoed
#       lines, and per idle plain socket for reference (a fresh node per measurement).
# Medians of $RUNS runs. Results go to bench-results/tls-<UTC time>/ (summary.md, results.txt, logs).
#
# Settings (environment): RUNS=3 WARMUP=2s DURATION=10s SOCKETS=100 BURST=16 SIZE=64
# CONCURRENCY=32 IDLE_SOCKETS=10000 IDLE_MESSAGES=3 SKIP_BUILD=1 (use the binaries already in $BIN).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONCURRENCY=${CONCURRENCY:-32}
IDLE_SOCKETS=${IDLE_SOCKETS:-10000}
IDLE_MESSAGES=${IDLE_MESSAGES:-3}
OUT=bench-results/tls-$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= IDLE_SOCKETS + 1024)) || die "ulimit -n is $(ulimit -n); need $((IDLE_SOCKETS + 1024))"

build_release
machine_info "$OUT/machine.txt"
echo "openssl: $(openssl version)" >>"$OUT/machine.txt"

# --- a CA and the node's certificate (ECDSA P-256, SAN localhost) --------------------------------

CERTS=$OUT/certs
make_certs "$CERTS"

start_echo_upstream
NODE_TLS_CA=$CERTS/ca.pem start_node node-tls "${TLS_FLAGS[@]}"
TLS_PID=$NODE_PID TLS_PORT=$NODE_PORT
start_node node-plain
PLAIN_PID=$NODE_PID PLAIN_PORT=$NODE_PORT
log "TLS node on :$TLS_PORT, plain node on :$PLAIN_PORT (upstream :$UP_PORT); results in $OUT"

# --- (a) handshakes per second -------------------------------------------------------------------

HS=()
for run in $(seq "$RUNS"); do
    log "handshake run $run/$RUNS"
    SAMPLE=("$TLS_PID" "$UP_PID")
    SAMPLE_NAMES=node,upstream
    line=$(loadgen tls "$TLS_PORT" handshakes --concurrency "$CONCURRENCY" --warmup "$WARMUP" \
        --duration "$DURATION" "${CLIENT_TLS[@]}")
    HS+=("$(field per_sec "$line")")
done

# --- (b) throughput, TLS and plain ----------------------------------------------------------------

TLS_TP=()
PLAIN_TP=()
for run in $(seq "$RUNS"); do
    log "throughput run $run/$RUNS"
    SAMPLE=("$PLAIN_PID" "$UP_PID")
    SAMPLE_NAMES=node,upstream
    line=$(loadgen plain "$PLAIN_PORT" throughput "${TP_ARGS[@]}")
    PLAIN_TP+=("$(field msgs_per_sec "$line")")
    SAMPLE=("$TLS_PID" "$UP_PID")
    line=$(loadgen tls "$TLS_PORT" throughput "${TP_ARGS[@]}" "${CLIENT_TLS[@]}")
    TLS_TP+=("$(field msgs_per_sec "$line")")
done
stop "$TLS_PID"
stop "$PLAIN_PID"

# --- (c) RSS per idle socket, TLS and plain ------------------------------------------------------

TLS_IDLE=()
TLS_USED=()
PLAIN_IDLE=()
for run in $(seq "$RUNS"); do
    log "idle-socket run $run/$RUNS"
    NODE_TLS_CA=$CERTS/ca.pem start_node "node-idle-tls-$run" "${TLS_FLAGS[@]}"
    TLS_IDLE+=("$(idle_rss "tls-$run" "$IDLE_SOCKETS" "${CLIENT_TLS[@]}")")
    tail -1 "$RESULTS" >&2
    stop "$NODE_PID"
    NODE_TLS_CA=$CERTS/ca.pem start_node "node-idle-tls-used-$run" "${TLS_FLAGS[@]}"
    TLS_USED+=("$(idle_rss "tls-used-$run" "$IDLE_SOCKETS" "${CLIENT_TLS[@]}" --messages "$IDLE_MESSAGES")")
    tail -1 "$RESULTS" >&2
    stop "$NODE_PID"
    start_node "node-idle-plain-$run"
    PLAIN_IDLE+=("$(idle_rss "plain-$run" "$IDLE_SOCKETS")")
    tail -1 "$RESULTS" >&2
    stop "$NODE_PID"
done

# --- summary -------------------------------------------------------------------------------------

tls_tp=$(median "${TLS_TP[@]}")
plain_tp=$(median "${PLAIN_TP[@]}")
ratio=$(awk -v t="$tls_tp" -v p="$plain_tp" 'BEGIN {printf "%.2f", t / p}')
tls_idle=$(median "${TLS_IDLE[@]}")
tls_used=$(median "${TLS_USED[@]}")

{
    summary_head "Downstream TLS benchmark"
    echo "| TLS handshakes per second, one node ($CONCURRENCY in flight, ECDSA P-256) | ${HS[*]} | $(median "${HS[@]}") | | |"
    echo "| throughput without TLS (msgs/s, $SOCKETS sockets, bursts of $BURST x $SIZE B) | ${PLAIN_TP[*]} | $plain_tp | | |"
    echo "| throughput with TLS (msgs/s, same load) | ${TLS_TP[*]} | $tls_tp | | |"
    echo "| TLS / plain | | $ratio | | |"
    echo "| node RSS per idle TLS socket (bytes, $IDLE_SOCKETS sockets, right after the handshake) | ${TLS_IDLE[*]} | $tls_idle | <= 8192 | $(verdict "((tls_idle <= 8192))") |"
    echo "| node RSS per idle TLS socket (bytes, $IDLE_SOCKETS sockets, after $IDLE_MESSAGES echoed lines each) | ${TLS_USED[*]} | $tls_used | <= 8192 | $(verdict "((tls_used <= 8192))") |"
    echo "| node RSS per idle plain socket (bytes, same run) | ${PLAIN_IDLE[*]} | $(median "${PLAIN_IDLE[@]}") | | |"
    summary_tail
} | tee "$OUT/summary.md"
log "done: $OUT"
