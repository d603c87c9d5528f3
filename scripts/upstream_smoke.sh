#!/usr/bin/env bash
# The smoke test of an example upstream against a real node, whatever its language:
#
#   scripts/upstream_smoke.sh UPSTREAM_COMMAND...      # run by examples/{python,go}/smoke_test.sh
#
# It starts the upstream (the command, plus `--listen 127.0.0.1:PORT --name smoke --grace 2`) and
# a standalone node (target/debug/ppp, or $PPP_BIN) on free loopback ports, waits until the node
# sees the upstream ready with its stream open, and then, as a TCP client of the node, checks the
# echo, `/whoami` (answered with the upstream's name, "(smoke)"), `/label user=ada` (a STATUS_OK
# receipt) and the label in a later `/whoami`. Then it checks that the node still sees the upstream
# ready and open, and that the upstream logged exactly one `hello` (the stream was never reset).
# Last it stops the upstream with SIGTERM and checks that the node sees it answer NOT_SERVING and
# that it exits 0. Everything it started is stopped on exit; it exits 0 when every check passed,
# non-zero with a "FAIL:" line (and the logs) otherwise.
#
# Needs python3 (the test client; $PYTHON) and curl. Environment: PPP_BIN (the node binary),
# PPP_SMOKE_TIMEOUT (seconds each wait may take, default 30).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
ppp_bin=${PPP_BIN:-$root/target/debug/ppp}
timeout=${PPP_SMOKE_TIMEOUT:-30}
started=$SECONDS
python=${PYTHON:-python3}

HARNESS=smoke_test
# shellcheck source=scripts/harness.sh
source "$root/scripts/harness.sh"

(($# > 0)) || fail "usage: scripts/upstream_smoke.sh UPSTREAM_COMMAND..."
[[ -x $ppp_bin ]] || fail "no node binary at $ppp_bin (run \`cargo build\` first, or set PPP_BIN)"
command -v "$python" >/dev/null || fail "no python3 (the test client)"

# --- Free ports ---------------------------------------------------------------------------------
# Bound all at once so that they differ; free again when the snippet exits, and taken by our
# servers right after.
read -r upstream_port node_port admin_port < <("$python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

# --- Start the upstream and the node ------------------------------------------------------------
# A short grace: long enough for the node to see NOT_SERVING (below), short for the test. The
# name shows in `/whoami` answers.
"$@" --listen "127.0.0.1:$upstream_port" --name smoke --grace 2 >"$work/upstream.log" 2>&1 &
upstream_pid=$!
track "$upstream_pid"

# A standalone node on loopback, whatever PPP_* settings the caller's environment holds (a token
# or a Redis URL there would change what this test sees). A short health interval makes the node
# notice the upstream, and its leaving, sooner.
(
  for var in $(compgen -e | grep '^PPP_' || true); do unset "$var"; done
  exec "$ppp_bin" --listen "127.0.0.1:$node_port" --admin-listen "127.0.0.1:$admin_port" \
    --upstream "http://127.0.0.1:$upstream_port" --health-interval 200ms
) >"$work/node.log" 2>&1 &
node_pid=$!
track "$node_pid"

# `"ready":true` in the node's view of its (only) upstream: the health service answered SERVING.
# `"open":true`: its Connect stream is open, so the first message goes straight to it.
upstream_ready() {
  alive "$upstream_pid" || fail "the upstream exited"
  alive "$node_pid" || fail "the node exited"
  local upstreams
  upstreams=$(curl -s --max-time 1 "http://127.0.0.1:$admin_port/v1/upstreams") || return 1
  [[ $upstreams == *'"ready":true'* && $upstreams == *'"open":true'* ]]
}
wait_for "the node to see the upstream ready" upstream_ready
say "ok: the node sees the upstream ready (upstream :$upstream_port, node :$node_port, admin :$admin_port)"

# --- A client session ---------------------------------------------------------------------------
"$python" - "$node_port" "$timeout" <<'EOF' || fail "the client session (see above)"
"""A TCP client of the node: each step sends one line and checks the line that comes back."""
import re
import socket
import sys

port, timeout = int(sys.argv[1]), float(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
lines = sock.makefile("rb")


def ask(line: str, check, what: str) -> str:
    """Sends `line`, reads one line back and exits non-zero unless `check(answer)` holds."""
    sock.sendall(line.encode() + b"\n")
    try:
        raw = lines.readline()
    except TimeoutError:
        sys.exit(f"smoke_test: {what}: no answer to {line!r} within {timeout}s")
    answer = raw.decode(errors="replace").rstrip("\n")
    if not raw.endswith(b"\n") or not check(answer):
        sys.exit(f"smoke_test: {what}: sent {line!r}, got {answer!r}")
    print(f"smoke_test: ok: {what}: {answer}")
    return answer


ask("hello smoke", lambda a: a == "hello smoke", "echo")
ask("/whoami", lambda a: a.startswith("you are ") and a.endswith("(smoke)"), "/whoami (smoke)")
ask("/label user=ada", lambda a: re.fullmatch(r"receipt \S+: STATUS_OK ?", a), "/label receipt")
ask("/whoami", lambda a: "labels [user=ada]" in a and a.endswith("(smoke)"), "/whoami label")
sock.close()
EOF

# The upstream logs the protocol's events (stderr).
grep -q 'opened ' "$work/upstream.log" || fail "the upstream did not log the socket opening"
# One stream all along: every (re)opened stream starts with a `hello`, so a second one means the
# stream was reset (by a ping policy, a message size limit, a missing response header, ...).
hellos=$(grep -c 'hello from node' "$work/upstream.log" || true)
((hellos == 1)) || fail "the upstream logged $hellos hellos from the node, not 1 (the stream was reset?)"
say "ok: the upstream logged one hello (the stream was never reset) and the socket opening"

# The node still sees it ready, its stream open.
upstreams=$(curl -s --max-time 2 "http://127.0.0.1:$admin_port/v1/upstreams") || fail "no answer from the node's /v1/upstreams"
[[ $upstreams == *'"ready":true'* && $upstreams == *'"open":true'* ]] \
  || fail "the node's /v1/upstreams does not show the upstream ready and open: $upstreams"
say "ok: the node's /v1/upstreams shows the upstream ready and open"

# --- SIGTERM: NOT_SERVING, then a clean exit ----------------------------------------------------
kill -TERM "$upstream_pid"
# Not ready because health answered NOT_SERVING (2), not because the upstream is already gone.
upstream_not_serving() {
  local upstreams
  upstreams=$(curl -s --max-time 1 "http://127.0.0.1:$admin_port/v1/upstreams") || return 1
  [[ $upstreams == *'"ready":false'* && $upstreams == *'"last_error":"health status 2"'* ]]
}
wait_for "the node to see the upstream NOT_SERVING after SIGTERM" upstream_not_serving
upstream_exited() { ! alive "$upstream_pid"; }
wait_for "the upstream to exit after SIGTERM" upstream_exited
status=0
wait "$upstream_pid" || status=$?
untrack "$upstream_pid"
((status == 0)) || fail "the upstream exited with status $status after SIGTERM"
say "ok: after SIGTERM the node saw the upstream NOT_SERVING, and it exited 0"

say "passed in $((SECONDS - started))s"
