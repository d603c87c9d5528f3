#!/usr/bin/env bash
# Time from kill -9 of a node to the last `closed` at an upstream (method and results:
# docs/benchmarks.md, "Acknowledged delivery and lifecycle"). On loopback, on free ports: a real
# redis-server, two nodes in cluster mode with --node-ttl $TTL, one echo upstream that logs every
# `closed` it gets (RUST_LOG=ppp::echo=debug). $SOCKETS silent sockets are held on node A; once
# Redis holds all of them, A is killed with SIGKILL, and the time until the upstream has logged a
# `closed` (reason node_lost) for every one of them is measured (the script polls the log every
# 10 ms). Medians of $RUNS runs. Results go to bench-results/<UTC time>-reap/.
#
# Settings (environment): RUNS=3 SOCKETS=1000 TTL=3s BIN=target/release SKIP_BUILD=1
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-3}
SOCKETS=${SOCKETS:-1000}
TTL=${TTL:-3s}
BIN=${BIN:-target/release}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-reap
RESULTS=$OUT/results.txt
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

build_release
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# one_run N: prints `run=N sockets=… ms_to_last_closed=…`.
one_run() {
    local run=$1 redis_port up_port a_port b_port
    redis_port=$(free_port)
    start "redis-$run" "$REDIS_SERVER" --port "$redis_port" --save "" --appendonly no
    local redis=$LAST_PID
    wait_port "$redis_port"
    up_port=$(free_port)
    RUST_LOG=ppp::echo=debug start "upstream-$run" "$BIN/examples/echo_upstream" --listen "127.0.0.1:$up_port"
    local up=$LAST_PID
    wait_port "$up_port"
    local common=(--redis "redis://127.0.0.1:$redis_port" --node-ttl "$TTL" --upstream "http://127.0.0.1:$up_port")
    a_port=$(free_port)
    b_port=$(free_port)
    start "node-a-$run" "$BIN/ppp" "${common[@]}" --node-id a --listen "127.0.0.1:$a_port" --admin-listen 127.0.0.1:0
    local a=$LAST_PID
    start "node-b-$run" "$BIN/ppp" "${common[@]}" --node-id b --listen "127.0.0.1:$b_port" --admin-listen 127.0.0.1:0
    local b=$LAST_PID
    wait_echo "$a_port"
    wait_echo "$b_port"
    start "loadgen-$run" "$BIN/examples/loadgen" idle --target "127.0.0.1:$a_port" --sockets "$SOCKETS" --duration 600s
    local load=$LAST_PID
    registered() { [[ $(redis-cli -p "$redis_port" SCARD ppp:{default}:node:a:sockets) == "$SOCKETS" ]]; }
    wait_for "$SOCKETS sockets registered" 60 registered
    python3 - "$OUT/upstream-$run.log" "$SOCKETS" "$a" "$run" <<'PY'
import os, re, signal, sys, time
log, want, pid, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = os.path.getsize(log)
killed = time.monotonic()
os.kill(pid, signal.SIGKILL)
seen = set()
deadline = killed + 60
while time.monotonic() < deadline:
    with open(log, errors="replace") as f:
        f.seek(start)
        for line in f:
            if "reason=node_lost" in line:
                m = re.search(r"socket=(\S+)", line)
                if m:
                    seen.add(m.group(1))
    if len(seen) >= want:
        print(f"run={run} sockets={want} ms_to_last_closed={(time.monotonic() - killed) * 1000:.0f}")
        sys.exit(0)
    time.sleep(0.01)
sys.exit(f"only {len(seen)} of {want} closed at the upstream within 60 s")
PY
    stop "$load"
    stop "$b"
    stop "$a"
    stop "$up"
    stop "$redis"
}

TIMES=()
for run in $(seq "$RUNS"); do
    log "run $run/$RUNS"
    line=$(one_run "$run")
    echo "$line" | tee -a "$RESULTS" >&2
    TIMES+=("$(field ms_to_last_closed " $line")")
done

{
    echo "# Kill -9 of a node to the last closed at an upstream — $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "$SOCKETS sockets on the killed node, two nodes, --node-ttl $TTL, one echo upstream; $(nproc) cores."
    echo
    echo "| measure | median of $RUNS | runs |"
    echo "| --- | --- | --- |"
    echo "| kill -9 → last closed (node_lost) at the upstream, ms | $(median "${TIMES[@]}") | ${TIMES[*]} |"
} | tee "$OUT/summary.md"
