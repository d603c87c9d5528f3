#!/usr/bin/env bash
# What each operation costs Redis (docs/redis.md, "What each operation costs"). On loopback, on
# free ports: a real redis-server (no persistence), one echo upstream, two nodes n1 and n2. Each
# phase reads `INFO commandstats` (calls, time) and `INFO memory` before and after, takes off what
# the nodes cost idle over the same time (heartbeats, the reaper's scan), and divides by the
# phase's operations:
#   idle      both nodes, $IDLE seconds (reported per node and second)
#   connect   $SOCKETS sockets opened on n1 (until ZCARD K:sockets says so)
#   close     the $SOCKETS sockets closed (until ZCARD says 0)
#   message   $MESSAGES lines through n1 (echoed; the leased round-robin counter)
#   xsend     $XSENDS `/to <B> …` from A on n1 to B on n2, one at a time (a cross-node send and
#             its receipt)
#   broadcast $BROADCASTS `/broadcast …` from A
# then redis-benchmark on this machine (the plain command rate of one Redis core). The nodes run
# with --idle-after 1h and --resync-interval 1h so that neither the last_seen refresh nor the
# resync lands in a phase (their costs are in docs/redis.md, by construction). Results go to
# bench-results/<UTC time>-redis-costs/ (results.txt, summary.md, logs).
#
# Settings (environment): SOCKETS=2000 MESSAGES=32000 XSENDS=1000 BROADCASTS=1000 IDLE=10
# BIN=target/release (target/debug works: Redis's share does not depend on it) SKIP_BUILD=1
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SOCKETS=${SOCKETS:-2000}
MESSAGES=${MESSAGES:-32000}
XSENDS=${XSENDS:-1000}
BROADCASTS=${BROADCASTS:-1000}
IDLE=${IDLE:-10}
BIN=${BIN:-target/release}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-redis-costs
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

build_release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v redis-benchmark >/dev/null || die "redis-benchmark not found (apt-get install redis-tools)"

redis_port=$(free_port)
start redis "$REDIS_SERVER" --port "$redis_port" --save "" --appendonly no
wait_port "$redis_port"
up_port=$(free_port)
start upstream "$BIN/examples/echo_upstream" --listen "127.0.0.1:$up_port"
wait_port "$up_port"
common=(--redis "redis://127.0.0.1:$redis_port" --upstream "http://127.0.0.1:$up_port" --idle-after 1h
    --resync-interval 1h --admin-listen 127.0.0.1:0)
n1_port=$(free_port)
n2_port=$(free_port)
start n1 "$BIN/ppp" "${common[@]}" --node-id n1 --listen "127.0.0.1:$n1_port"
start n2 "$BIN/ppp" "${common[@]}" --node-id n2 --listen "127.0.0.1:$n2_port"
wait_echo "$n1_port"
wait_echo "$n2_port"

log "phases"
python3 - "$redis_port" "$n1_port" "$n2_port" "$SOCKETS" "$MESSAGES" "$XSENDS" "$BROADCASTS" "$IDLE" \
    >"$OUT/results.txt" <<'PY'
import socket, subprocess, sys, time

rport, n1, n2 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sockets, messages, xsends, broadcasts, idle = map(int, sys.argv[4:9])
K = "ppp:{default}:"

def cli(*args):
    return subprocess.run(["redis-cli", "-p", str(rport), *args], capture_output=True, text=True).stdout

def snapshot():
    calls, usec = {}, {}
    for line in cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.strip().split(","))
            calls[name], usec[name] = int(fields["calls"]), int(fields["usec"])
    mem = dict(l.strip().split(":", 1) for l in cli("INFO", "memory").splitlines() if ":" in l)
    return {"t": time.monotonic(), "calls": calls, "usec": usec, "mem": int(mem["used_memory"])}

# Commands that run only inside redis/records.lua in the connect and close phases: their time is
# part of the EVALSHA's, their calls are not round trips.
INNER = {"hset", "hsetnx", "sadd", "srem", "zadd", "zrem", "xadd", "del", "hmget", "exists", "hkeys", "hdel"}

def delta(a, b, key):
    # The snapshot's own INFO calls (2 per snapshot) are not the nodes'.
    d = {k: b[key].get(k, 0) - a[key].get(k, 0) for k in b[key]}
    if key == "calls":
        d["info"] = d.get("info", 0) - 2
    return d

def zcard():
    return int(cli("ZCARD", K + "sockets").strip() or 0)

def wait(cond, what, limit=120):
    deadline = time.monotonic() + limit
    polls = 0
    while not cond():
        polls += 1
        if time.monotonic() > deadline:
            sys.exit(f"timed out: {what}")
        time.sleep(0.02)
    return polls

def line_reader(s):
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        head, buf = buf.split(b"\n", 1)
        yield head.decode()

idle_rate = {}
def report(phase, ops, a, b, polls=0, unit="op", inner=()):
    calls, usec, secs, mem = delta(a, b, "calls"), delta(a, b, "usec"), b["t"] - a["t"], b["mem"] - a["mem"]
    calls["zcard"] = calls.get("zcard", 0) - polls
    if phase == "idle":
        idle_rate.update({k: (v / secs, usec.get(k, 0) / secs) for k, v in calls.items()})
    else:
        calls = {k: v - idle_rate.get(k, (0, 0))[0] * secs for k, v in calls.items()}
        usec = {k: v - idle_rate.get(k, (0, 0))[1] * secs for k, v in usec.items()}
    per = " ".join(f"{k}={v / ops:.4f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v / ops >= 0.0005)
    trips = sum(v for k, v in calls.items() if k not in inner and k not in ("zcard",)) / ops
    busy = sum(v for k, v in usec.items() if k not in inner and k not in ("zcard",)) / ops
    print(f"{phase} ops={ops} per_{unit}: {per} commands={trips:.4f} redis_usec={busy:.2f} "
          f"memory_bytes={mem / ops:.0f} seconds={secs:.2f}", flush=True)

a = snapshot(); time.sleep(idle); b = snapshot()
report("idle", 2 * idle, a, b, unit="node_second")

a = snapshot()
conns = [socket.create_connection(("127.0.0.1", n1)) for _ in range(sockets)]
polls = wait(lambda: zcard() == sockets, "sockets registered")
report("connect", sockets, a, snapshot(), polls, inner=INNER)

a = snapshot()
for c in conns:
    c.close()
polls = wait(lambda: zcard() == 0, "sockets removed")
report("close", sockets, a, snapshot(), polls, inner=INNER)

A = socket.create_connection(("127.0.0.1", n1)); ra = line_reader(A)
B = socket.create_connection(("127.0.0.1", n2)); rb = line_reader(B)
B.sendall(b"/whoami\n"); b_id = next(rb).split()[2].rstrip(",")
wait(lambda: zcard() == 2, "A and B registered")

a = snapshot()
chunk = b"".join(b"m%d\n" % i for i in range(1000))
for _ in range(messages // 1000):
    A.sendall(chunk)
    for _ in range(1000):
        next(ra)
report("message", messages, a, snapshot())

a = snapshot()
for i in range(xsends):
    A.sendall(b"/to %s x%d\n" % (b_id.encode(), i))
    next(rb)
    receipt = next(ra)
    assert "OK" in receipt.upper(), receipt
report("xsend", xsends, a, snapshot())

a = snapshot()
for i in range(broadcasts):
    A.sendall(b"/broadcast b%d\n" % i)
    next(rb)
    next(ra)
report("broadcast", broadcasts, a, snapshot())
PY
cat "$OUT/results.txt" >&2

log "redis-benchmark"
redis-benchmark -p "$redis_port" -q -n 200000 -c 50 -t ping,incr,hset,zadd,publish >"$OUT/benchmark.txt" 2>&1
redis-benchmark -p "$redis_port" -q -n 1000000 -c 50 -P 16 -t incr,hset,zadd >>"$OUT/benchmark.txt" 2>&1
# The last_seen refresh, one redis/touch.lua per socket that talked, per --idle-after/4, pipelined.
touch_sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$(cat redis/touch.lua)")
redis-cli -p "$redis_port" HSET 'ppp:{default}:socket:bench' node n1 last_seen 1 >/dev/null
redis-benchmark -p "$redis_port" -q -n 1000000 -c 50 -P 16 EVALSHA "$touch_sha" 1 'ppp:{default}:socket:bench' \
    last_seen 2 messages_in 3 bytes_in 4 messages_out 5 bytes_out 6 >>"$OUT/benchmark.txt" 2>&1
tr '\r' '\n' <"$OUT/benchmark.txt" | grep -v '^$' | grep 'requests per second' | tee "$OUT/benchmark-summary.txt" >&2

{
    echo "# Redis costs per operation — $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $BIN"
    echo
    echo '```'
    cat "$OUT/results.txt"
    echo
    cat "$OUT/benchmark-summary.txt"
    echo '```'
} >"$OUT/summary.md"
log "results in $OUT"
