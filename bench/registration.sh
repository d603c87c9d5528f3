#!/usr/bin/env bash
# Sockets registered in Redis per second (issue 14's figure; method and results:
# docs/benchmarks.md, "Registration rate"). On loopback, on free ports, with a real redis-server
# (no persistence): one node in cluster mode in front of the echo upstream; each run opens
# $REG_SOCKETS idle sockets to it (loadgen idle) and times the first connect to the moment
# ZCARD K:sockets says every one is registered, then the way back to 0 once they close. The line
# also says when the generator had finished connecting (client_connect_ms) and how long the
# registry took after that (lag_after_connect_ms), and the CPU of the node and of Redis over the
# run: a small lag with both below a core means the generator, not the node, set the pace.
# Medians of $RUNS runs. Results go to bench-results/<UTC time>-registration/.
#
# Settings (environment): RUNS=3 REG_SOCKETS=10000 REG_GENERATORS=4 (loadgen processes connecting
# at once, each a share of the sockets) NODE_RUST_LOG=info SKIP_BUILD=1 (use the
# binaries already in target/release).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REG_SOCKETS=${REG_SOCKETS:-10000}
export REG_GENERATORS=${REG_GENERATORS:-4}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-registration
RESULTS=$OUT/results.txt
K='ppp:{default}:'
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= REG_SOCKETS + 1024)) || die "ulimit -n is $(ulimit -n); need $((REG_SOCKETS + 1024))"
command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER not found (apt-get install redis-server)"

build_release
machine_info "$OUT/machine.txt"

REDIS_PORT=$(free_port)
start redis "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$OUT" --maxclients 1000
REDIS_PID=$LAST_PID
wait_port "$REDIS_PORT"
zcard() { redis-cli -p "$REDIS_PORT" ZCARD "${K}sockets"; }

start_echo_upstream
start_node node-n1 --redis "redis://127.0.0.1:$REDIS_PORT" --node-id n1

RATE=() LAG=() UNREG=()
for run in $(seq "$RUNS"); do
    log "registration run $run/$RUNS"
    wait_for "no sockets registered" 30 eval '(($(zcard) == 0))'
    t0=$(date +%s.%N)
    mapfile -t c0 < <(cpu_ticks "$NODE_PID" "$REDIS_PID")
    line=$(register_run "$run" "$NODE_PORT") || die "registration run $run failed (see $OUT/register-$run.log)"
    mapfile -t c1 < <(cpu_ticks "$NODE_PID" "$REDIS_PID")
    t1=$(date +%s.%N)
    cpu="$(cpu_pct "$t0" "$t1" "${c0[0]}" "${c1[0]}") $(cpu_pct "$t0" "$t1" "${c0[1]}" "${c1[1]}")"
    line="$line run=$run cpu_pct[node,redis]=$cpu"
    echo "$line" | tee -a "$RESULTS" >&2
    RATE+=("$(field sockets_per_sec "$line")")
    LAG+=("$(field lag_after_connect_ms "$line")")
    UNREG+=("$(field unregister_per_sec "$line")")
done

rate=$(median "${RATE[@]}")
{
    summary_head "Registration benchmark"
    echo "| sockets registered per second ($REG_SOCKETS sockets) | ${RATE[*]} | $rate | >= 40000 (issue 14) | $(verdict "((rate >= 40000))") |"
    echo "| registered after the generator's last connect (ms) | ${LAG[*]} | $(median "${LAG[@]}") | | |"
    echo "| sockets unregistered per second after they close | ${UNREG[*]} | $(median "${UNREG[@]}") | | |"
    summary_tail
} | tee "$OUT/summary.md"
log "done: $OUT"
