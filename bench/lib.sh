# Shell helpers shared by the benchmarks (bench/run.sh, bench/cluster.sh, bench/redelivery.sh):
# logging, the processes a benchmark starts (all stopped on exit, newest first), free ports, waits,
# CPU and memory readings of a process, and the fields and medians of result lines. Sourced after
# the script has set OUT (where each process's log goes).

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- processes ---------------------------------------------------------------------------------

PIDS=()   # every process started, stopped on exit
LAST_PID= # the one `start` just started

# start NAME CMD...: runs CMD in the background, output in $OUT/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

running() {
    [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# stop PID: SIGTERM, then SIGKILL after 2 s (a node drains for up to --drain-timeout otherwise).
stop() {
    local pid=$1 p kept=()
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}") # a stopped process's pid may be reused: never signal it again
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do
        running "$pid" || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local i
    # Newest first: the nodes leave the cluster while Redis is still up.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop "${PIDS[i]}"
    done
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
    local port=$1
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$port after 30 s"
}

# wait_echo PORT: until a line sent to PORT comes back (a node: its upstream is ready).
wait_echo() {
    python3 - "$1" <<'PY' || die "no echo from 127.0.0.1:$1 after 30 s"
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + 30
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"bench-ready\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data == b"bench-ready\n":
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
}

# wait_for WHAT SECONDS CMD...: until CMD succeeds.
wait_for() {
    local what=$1 tries=$(($2 * 10))
    shift 2
    for _ in $(seq "$tries"); do
        "$@" && return 0
        sleep 0.1
    done
    die "timed out waiting for $what"
}

# cpu_ticks PID...: utime+stime of each, in clock ticks.
cpu_ticks() {
    local pid
    for pid in "$@"; do
        awk '{print $14 + $15}' "/proc/$pid/stat"
    done
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# field KEY LINE: the value of KEY=value in a result line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

now() { date +%s.%N; }

# build_release: the release binaries, unless SKIP_BUILD is set (then $BIN's are used as they are).
build_release() {
    if [[ -z ${SKIP_BUILD:-} ]]; then
        log "building (release)"
        cargo build --release --examples --bins
    fi
}
