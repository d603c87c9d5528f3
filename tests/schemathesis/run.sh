#!/usr/bin/env bash
# schemathesis against a real node: the admin API's OpenAPI document must match the server.
#
#   bash tests/schemathesis/run.sh [extra schemathesis options]
#
# Installs schemathesis (pinned in requirements.txt) into a venv (target/venv-schemathesis, or
# $PPP_SCHEMATHESIS_VENV, made when missing and reused after); builds and starts the example echo
# upstream and a standalone node (target/debug/…, under $CARGO_TARGET_DIR when set) with an admin
# token on free loopback ports; keeps eight TCP clients connected to the node, so the socket
# routes have real ids to work on; then runs `schemathesis run --checks all` with the token on all
# of the document but `POST /v1/drain` (which would end the node), twice: the stateful phase alone
# (sequences that follow the document's links: listing → socket → DELETE → the same id), then
# every phase (examples, coverage, fuzzing, stateful). Any finding fails it. Everything it started
# is stopped on exit.
#
# Environment: PPP_SCHEMATHESIS_EXAMPLES (--max-examples per operation, default 200),
# PPP_SCHEMATHESIS_STATEFUL_EXAMPLES (--max-examples of the stateful pass, default 500),
# PPP_SCHEMATHESIS_SEED (a fixed seed; default random, printed), PYTHON (the interpreter that
# makes the venv, default python3), PPP_SMOKE_TIMEOUT (seconds each wait may take, default 30).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
timeout=${PPP_SMOKE_TIMEOUT:-30}
examples=${PPP_SCHEMATHESIS_EXAMPLES:-200}
stateful_examples=${PPP_SCHEMATHESIS_STATEFUL_EXAMPLES:-500}
seed=${PPP_SCHEMATHESIS_SEED:-$RANDOM$RANDOM}
token=schemathesis-$RANDOM$RANDOM
started=$SECONDS

HARNESS=schemathesis
# shellcheck source=scripts/harness.sh
source "$root/scripts/harness.sh"

# --- The venv and the binaries ------------------------------------------------------------------
venv=${PPP_SCHEMATHESIS_VENV:-$target/venv-schemathesis}
bash "$root/scripts/venv.sh" "$venv" "$here/requirements.txt" || fail "no venv with requirements.txt"
python=$venv/bin/python
(cd "$root" && cargo build --quiet --locked --bin ppp --example echo_upstream) || fail "cargo build"

# --- Free ports, the upstream, the node ---------------------------------------------------------
read -r upstream_port node_port admin_port < <("$python" - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
"$target/debug/examples/echo_upstream" --listen "127.0.0.1:$upstream_port" >"$work/upstream.log" 2>&1 &
track $!
(
  for var in $(compgen -e | grep '^PPP_' || true); do unset "$var"; done
  exec "$target/debug/ppp" --listen "127.0.0.1:$node_port" --admin-listen "127.0.0.1:$admin_port" \
    --admin-token "$token" --upstream "http://127.0.0.1:$upstream_port" --health-interval 200ms --drain-timeout 1s
) >"$work/node.log" 2>&1 &
track $!
admin=http://127.0.0.1:$admin_port

upstream_ready() {
  local upstreams
  upstreams=$(curl -s --max-time 1 -H "Authorization: Bearer $token" "$admin/v1/upstreams") || return 1
  [[ $upstreams == *'"ready":true'* && $upstreams == *'"open":true'* ]]
}
wait_for "the node to see the upstream ready" upstream_ready

# --- Sockets to work on -------------------------------------------------------------------------
# Eight TCP clients that stay connected, reading and dropping what they get: whenever the node
# closes one (a DELETE, an idle timeout the fuzzer set, a low max_connections), another connects
# in its place a moment later, so the listing always has ids in it and the stateful phase follows
# them (through the document's links) into the per-socket routes.
"$python" - "$node_port" <<'PY' >"$work/clients.log" 2>&1 &
import selectors, socket, sys, time
port = int(sys.argv[1])
sel = selectors.DefaultSelector()
def connect():
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"hello\n")
            sel.register(s, selectors.EVENT_READ)
            return
        except OSError:
            time.sleep(0.2)
for _ in range(8):
    connect()
while True:
    for key, _ in sel.select():
        try:
            data = key.fileobj.recv(65536)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            time.sleep(0.2)
            connect()
PY
track $!
sockets_open() {
  [[ $(curl -s --max-time 1 -H "Authorization: Bearer $token" "$admin/v1/sockets") == *'"id"'* ]]
}
wait_for "the node to list the sockets" sockets_open

# --- schemathesis -------------------------------------------------------------------------------
# Runs `schemathesis run` with every check and the token, on all of the document but the drain,
# from the temporary folder (so its example database and reports stay out of the checkout).
schemathesis_run() {
  (cd "$work" && "$venv/bin/schemathesis" run "$admin/v1/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $token" \
    --exclude-path /v1/drain \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 15 \
    --output-truncate false \
    "$@")
}
# First the stateful phase alone, while the node still has its start-up settings: the fuzzing
# phase sets an idle timeout of a millisecond or a max_connections of 1 now and then, and then the
# sockets the stateful sequences follow (listing → socket → DELETE → the same id) keep closing.
say "stateful phase against $admin (seed $seed, $stateful_examples examples)"
schemathesis_run --phases stateful --max-examples "$stateful_examples" "$@" \
  || fail "schemathesis (stateful) found differences between the document and the server (seed $seed)"
say "every phase against $admin (seed $seed, $examples examples per operation)"
schemathesis_run --max-examples "$examples" "$@" \
  || fail "schemathesis found differences between the document and the server (seed $seed)"
kill -0 "${pids[1]}" 2>/dev/null || fail "the node exited"
say "passed in $((SECONDS - started))s"
