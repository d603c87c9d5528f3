#!/usr/bin/env bash
# The docker-compose cluster, for real: builds local images from this machine's binaries (FROM
# scratch, with their shared libraries: no registry needed), brings up the top-level
# docker-compose.yml with only the images overridden (docker-compose.local.yml), and checks it
# through real containers:
#   - round-robin DNS (`balancer`) spreads 30 clients over all three nodes;
#   - echo from each upstream (Rust, Python, Go), cross-node send and broadcast work;
#   - node 1's admin API lists the sockets node 3 holds;
#   - `docker kill` of a node gets it reaped within --node-ttl + 2 s;
#   - a node cut off from Redis (`docker network disconnect`) for 20 s loses no socket and re-syncs;
#   - then, with docker-compose.ha.yml (a replica and three Sentinels, the nodes in sentinel mode):
#     `docker kill` of the Redis primary loses no socket, the Sentinels promote the replica, the
#     nodes follow it (cross-node send and broadcast work again), every socket is registered on
#     the new primary and nobody is reaped;
#   - `docker compose down` leaves no container, network or volume behind.
# Skipped, with the reason printed, when no Docker engine answers.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

log() { printf '[compose %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

if ! docker info >/dev/null 2>&1; then
    echo "compose test skipped: no Docker engine answers (docker info failed)"
    exit 0
fi
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    echo "compose test skipped: neither 'docker compose' nor 'docker-compose' is installed"
    exit 0
fi

export COMPOSE_PROJECT_NAME=ppptest$$
PROJECT=$COMPOSE_PROJECT_NAME
WORK=$(mktemp -d)
HOLD=
# The compose files in use: the main one with the local images, and in the HA phase also
# docker-compose.ha.yml with its local override.
FILES=(-f docker-compose.yml -f tests/compose/docker-compose.local.yml)
compose() { "${COMPOSE[@]}" "${FILES[@]}" "$@"; }
cleanup() {
    local rc=$?
    [[ -n $HOLD ]] && docker rm -f "$HOLD" >/dev/null 2>&1
    if ((rc != 0)); then
        compose ps >&2 || true
        compose logs --no-color --tail 40 >&2 || true
    fi
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# --- images from this machine --------------------------------------------------------------------

# libs ROOTFS FILE...: copies the shared libraries each FILE loads into ROOTFS, at their paths.
libs() {
    local rootfs=$1 f lib
    shift
    for f in "$@"; do
        for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
            [[ -e $rootfs$lib ]] && continue
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
}

# add ROOTFS FILE...: copies each FILE (an absolute path) and its libraries into ROOTFS.
add() {
    local rootfs=$1 f
    shift
    for f in "$@"; do
        mkdir -p "$rootfs$(dirname "$f")"
        cp -L "$f" "$rootfs$f"
    done
    libs "$rootfs" "$@"
}

# image TAG DIR: builds DIR/Dockerfile (FROM scratch) as TAG.
image() {
    docker build -q -t "$1" "$2" >/dev/null || fail "docker build $1"
    log "built $1 ($(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# The debug build that `cargo test` made already will do (this checks behaviour, not speed);
# PROFILE=release for the real thing.
PROFILE=${PROFILE:-debug}
BIN=target/$PROFILE
log "building the $PROFILE binaries"
if [[ $PROFILE == release ]]; then
    cargo build --release --locked --bin ppp --example echo_upstream >&2
else
    cargo build --locked --bin ppp --example echo_upstream >&2
fi

log "building images"
mkdir -p "$WORK/ppp/rootfs/usr/local/bin" "$WORK/redis/rootfs" "$WORK/python/rootfs/app"
cp "$BIN/ppp" "$BIN/examples/echo_upstream" "$WORK/ppp/rootfs/usr/local/bin/"
strip "$WORK/ppp/rootfs/usr/local/bin/"*
libs "$WORK/ppp/rootfs" "$BIN/ppp" "$BIN/examples/echo_upstream"
# The same runtime settings as the top-level Dockerfile's final stage.
cat >"$WORK/ppp/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin PPP_LISTEN=0.0.0.0:7999 PPP_ADMIN_LISTEN=0.0.0.0:8000 PPP_LOG_FORMAT=json
USER 65532
EXPOSE 7999 8000
HEALTHCHECK --interval=2s --timeout=4s --start-period=10s --retries=3 CMD ["ppp", "ready"]
ENTRYPOINT ["ppp"]
DOCKERFILE
image ppp-test/ppp:local "$WORK/ppp"

add "$WORK/redis/rootfs" /usr/bin/redis-server /usr/bin/redis-cli
# The Sentinels' starting config (empty; each container rewrites its own copy): there is no shell
# in the image to make one (tests/compose/docker-compose.ha.local.yml).
mkdir -p "$WORK/redis/rootfs/etc"
: >"$WORK/redis/rootfs/etc/sentinel.conf"
cat >"$WORK/redis/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin
EXPOSE 6379
CMD ["redis-server"]
DOCKERFILE
image ppp-test/redis:local "$WORK/redis"

# Python: Debian's interpreter and standard library, grpcio from PyPI into /app/deps.
PY=/usr/bin/python3.11
add "$WORK/python/rootfs" "$PY"
mkdir -p "$WORK/python/rootfs/usr/lib"
cp -a /usr/lib/python3.11 "$WORK/python/rootfs/usr/lib/"
rm -rf "$WORK/python/rootfs/usr/lib/python3.11/test" "$WORK/python/rootfs/usr/lib/python3.11/"*/__pycache__
ln -sf python3.11 "$WORK/python/rootfs/usr/bin/python3"
python3 -m pip install --quiet --disable-pip-version-check --target "$WORK/python/rootfs/app/deps" \
    -r examples/python/requirements.txt >&2
mapfile -t SHARED < <(find "$WORK/python/rootfs" -name '*.so*' -type f)
libs "$WORK/python/rootfs" "${SHARED[@]}"
cp -r examples/python/upstream.py examples/python/ppp "$WORK/python/rootfs/app/"
cp tests/compose/client.py "$WORK/python/rootfs/app/"
cat >"$WORK/python/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin PYTHONPATH=/app/deps:/app PYTHONUNBUFFERED=1
USER 65532
WORKDIR /app
EXPOSE 50052
ENTRYPOINT ["python3", "/app/upstream.py"]
DOCKERFILE
image ppp-test/python:local "$WORK/python"

# Go: the static binary examples/go/build.sh makes from Debian's Go packages.
mkdir -p "$WORK/go"
bash examples/go/build.sh "$WORK/go/ppp-go-upstream" >&2
cat >"$WORK/go/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY ppp-go-upstream /ppp-go-upstream
USER 65532
EXPOSE 50053
ENTRYPOINT ["/ppp-go-upstream"]
DOCKERFILE
image ppp-test/go:local "$WORK/go"

# --- the cluster ---------------------------------------------------------------------------------

TOKEN=$(sed -n 's/^PPP_ADMIN_TOKEN=//p' ppp.env)
admin() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1$2"; }
rcli() { docker exec "$(container redis)" redis-cli "$@"; }
container() { compose ps -q "$1"; }
# until SECONDS WHAT CMD...: retries CMD every 0.5 s until it succeeds or SECONDS pass.
until_ok() {
    local limit=$1 what=$2 end
    shift 2
    end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || fail "timed out after ${limit}s waiting for: $what"
        sleep 0.5
    done
}
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$(container "$1")") == healthy ]]; }
node_id() { admin 8001 /v1/nodes | python3 -c "import json,sys; print(next(n['id'] for n in json.load(sys.stdin)['nodes'] if n['id'].startswith('$1-')))"; }

log "docker compose up"
compose up -d --no-build >&2
for n in node1 node2 node3; do until_ok 60 "$n healthy" healthy "$n"; done
upstreams_ready() { [[ $(admin 8001 /v1/upstreams | grep -o '"ready":true' | wc -l) == 3 ]]; }
until_ok 30 "all three upstreams ready on node1" upstreams_ready
log "cluster up: $(admin 8001 /v1/nodes | python3 -c 'import json,sys; print(", ".join(n["id"] for n in json.load(sys.stdin)["nodes"]))')"

# 30 clients through the round-robin name, held open (and pinged every second) from a container.
HOLD=$(docker run -d --network "${PROJECT}_edge" --entrypoint python3 ppp-test/python:local /app/client.py hold balancer:7999 30)
held() { docker logs "$HOLD" 2>&1 | grep -q READY; }
until_ok 60 "30 sockets held" held
mapfile -t HELD < <(docker logs "$HOLD" 2>&1 | sed -n 's/^SOCKET //p')
((${#HELD[@]} == 30)) || fail "the client holds ${#HELD[@]} sockets, not 30"
in_redis() { (($(admin 8001 '/v1/sockets?limit=1000' | grep -o '"id"' | wc -l) >= 30)); }
until_ok 15 "all 30 in Redis" in_redis
SPREAD=$(admin 8001 '/v1/sockets?limit=1000' | python3 -c '
import collections, json, sys
nodes = collections.Counter(s["node"].rsplit("-", 1)[0] for s in json.load(sys.stdin)["sockets"])
print(" ".join(f"{n}={c}" for n, c in sorted(nodes.items())))')
log "round-robin DNS spread 30 clients: $SPREAD"
[[ $SPREAD == node1=*" node2="*" node3="* ]] || fail "30 clients did not reach all three nodes: $SPREAD"

# Echo, cross-node send and broadcast, through the published ports of nodes 1 and 2.
python3 tests/compose/client.py cross 127.0.0.1:7001 127.0.0.1:7002 >&2 || fail "cross-node send/broadcast"

# Node 1's admin API lists the sockets node 3 holds.
NODE3=$(node_id node3)
ON3=$(admin 8001 "/v1/sockets?node=$NODE3&limit=1000" | grep -o '"id"' | wc -l)
((ON3 > 0)) || fail "node1's admin API lists no socket of $NODE3"
log "node1's admin API lists $ON3 sockets held by $NODE3"

# A node cut off from Redis for 20 s keeps every socket, and re-syncs when it is back.
NODE2=$(node_id node2)
ON2=$(admin 8002 "/v1/sockets?node=$NODE2&limit=1000" | python3 -c 'import json,sys; print(" ".join(sorted(s["id"] for s in json.load(sys.stdin)["sockets"])))')
log "cutting $NODE2 ($(wc -w <<<"$ON2") sockets) off Redis for 20 s"
docker network disconnect "${PROJECT}_redis" "$(container node2)"
sleep 20 # the fault's duration, not a wait for a condition
docker network connect "${PROJECT}_redis" "$(container node2)"
resynced() {
    local members
    members=$(rcli SMEMBERS "ppp:{default}:node:$NODE2:sockets" | sort | tr '\n' ' ' | sed 's/ $//')
    [[ $members == "$ON2" ]]
}
until_ok 40 "$NODE2's sockets re-synced into Redis" resynced
until_ok 20 "$NODE2 ready again" healthy node2
# It was cut off longer than --node-ttl: the others reaped it, and it registered again, and it
# announced its sockets again (`opened` with `resumed`). The events are read with a script in
# Redis, which returns `type` for each entry of this node, whatever fields an entry has.
node_events() {
    rcli EVAL "local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local f, kind, node, resumed = e[2], '', '', ''
  for i = 1, #f, 2 do
    if f[i] == 'type' then kind = f[i + 1] elseif f[i] == 'node' then node = f[i + 1] elseif f[i] == 'resumed' then resumed = f[i + 1] end
  end
  if node == ARGV[1] then out[#out + 1] = kind .. (resumed == '1' and ':resumed' or '') end
end
return out" 1 ppp:{default}:events "$1"
}
NODE2_EVENTS=$(node_events "$NODE2" | tr '\n' ' ')
python3 - "$NODE2_EVENTS" <<'PY' || fail "$NODE2 was not reaped, re-registered and its sockets announced again while cut off: $NODE2_EVENTS"
import sys
kinds = sys.argv[1].split()
down = kinds.index("node_down") if "node_down" in kinds else None
sys.exit(0 if down is not None and "node_up" in kinds[down:] and "opened:resumed" in kinds[down:] else 1)
PY
if docker logs "$HOLD" 2>&1 | grep LOST; then fail "sockets were lost while a node was cut off from Redis"; fi
log "no socket lost; $NODE2 re-synced its sockets"

# docker kill: the node is reaped (by a live node) within --node-ttl (10 s) + 2 s.
log "docker kill node3 ($NODE3)"
docker kill "$(container node3)" >/dev/null
KILLED=$SECONDS
reaped() { [[ -z $(rcli ZSCORE ppp:{default}:nodes "$NODE3") ]]; }
until_ok 30 "$NODE3 reaped" reaped
REAPED=$((SECONDS - KILLED))
log "$NODE3 reaped after ~${REAPED}s"
((REAPED <= 12)) || fail "reaping took ${REAPED}s, more than --node-ttl + 2 s"
[[ $(rcli EXISTS "ppp:{default}:node:$NODE3:sockets") == 0 ]] || fail "the dead node's socket set is still there"
[[ $(rcli XRANGE ppp:{default}:events - + | grep -c node_lost) -ge 1 ]] || fail "no node_lost event recorded"

# --- Redis HA: the same cluster on a primary, a replica and three Sentinels -----------------------

docker rm -f "$HOLD" >/dev/null
HOLD=
compose down -v --remove-orphans >&2
FILES+=(-f docker-compose.ha.yml -f tests/compose/docker-compose.ha.local.yml)
log "docker compose up, with docker-compose.ha.yml"
compose up -d --no-build >&2
for n in sentinel1 sentinel2 sentinel3 node1 node2 node3; do until_ok 60 "$n healthy" healthy "$n"; done
until_ok 30 "all three upstreams ready on node1" upstreams_ready
rcli_on() { docker exec "$(container "$1")" redis-cli "${@:2}"; }
in_sync() { rcli_on redis-replica INFO replication | grep -q master_link_status:up; }
until_ok 30 "the replica in sync" in_sync
# Sentinels learn of a replica only from the primary's INFO, every 10 s: until each one knows it
# (and the other two), a kill leaves the leader with no replica to promote
# (`-failover-abort-no-good-slave`). tests/common/redis_sentinel.rs waits the same way.
sentinel_field() { rcli_on "$1" -p 26379 SENTINEL MASTER mymaster | grep -A1 -x "$2" | tail -1; }
sentinels_know() {
    local s
    for s in sentinel1 sentinel2 sentinel3; do
        [[ $(sentinel_field "$s" num-slaves) == 1 && $(sentinel_field "$s" num-other-sentinels) == 2 ]] || return 1
    done
}
until_ok 30 "every Sentinel knows the replica and the other Sentinels" sentinels_know
HOLD=$(docker run -d --network "${PROJECT}_edge" --entrypoint python3 ppp-test/python:local /app/client.py hold balancer:7999 30)
until_ok 60 "30 sockets held" held
until_ok 15 "all 30 in Redis" in_redis
python3 tests/compose/client.py cross 127.0.0.1:7001 127.0.0.1:7002 >&2 || fail "cross-node send/broadcast over Sentinel"

log "docker kill redis (the primary)"
docker kill "$(container redis)" >/dev/null
KILLED=$SECONDS
promoted() { rcli_on redis-replica ROLE | head -1 | grep -qx master; }
until_ok 30 "the Sentinels promote the replica" promoted
log "replica promoted after ~$((SECONDS - KILLED))s"
# A short read deadline: a try that meets the gap fails in a second and is retried.
cross() { PPP_CLIENT_DEADLINE=1 python3 tests/compose/client.py cross 127.0.0.1:7001 127.0.0.1:7003; }
until_ok 30 "cross-node send and broadcast again" cross
log "cross-node send and broadcast work again after ~$((SECONDS - KILLED))s"
on_new_primary() {
    local n=0 node
    for node in $(rcli_on redis-replica ZRANGE 'ppp:{default}:nodes' 0 -1); do
        n=$((n + $(rcli_on redis-replica SCARD "ppp:{default}:node:$node:sockets")))
    done
    ((n >= 30))
}
until_ok 30 "every socket registered on the new primary" on_new_primary
if docker logs "$HOLD" 2>&1 | grep LOST; then fail "sockets were lost in the Redis failover"; fi
[[ $(rcli_on redis-replica ZCARD 'ppp:{default}:nodes') == 3 ]] || fail "a node is missing from the new primary"
if rcli_on redis-replica XRANGE 'ppp:{default}:events' - + | grep -qx node_down; then
    fail "a node was reaped because of the Redis failover"
fi
log "Redis failover: no socket lost, nobody reaped, every socket on the new primary"

# docker compose down leaves nothing behind.
docker rm -f "$HOLD" >/dev/null
HOLD=
compose down -v --remove-orphans >&2
left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
left+=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
left+=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
[[ -z $left ]] || fail "docker compose down left: $left"
log "compose down left nothing behind"
log "all compose checks passed"
