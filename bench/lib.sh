# Shell helpers shared by the benchmarks (bench/run.sh, bench/tls.sh, bench/cluster.sh,
# bench/redelivery.sh): logging, the processes a benchmark starts (all stopped on exit, newest
# first), free ports, waits, CPU and memory readings of a process, the fields and medians of result
# lines, and the pieces of a node benchmark (the machine, the echo upstream, a node, a loadgen run
# with the CPU of the processes under load, RSS per idle socket). Sourced after the script has set
# OUT (where each process's log goes); the node-benchmark pieces also use BIN (the binaries) and
# RESULTS (where result lines go).

# The load the benchmarks share, unless the script or the environment sets it (each script's
# header says which it uses): RUNS, WARMUP, DURATION, SOCKETS, BURST, SIZE, and BIN, where the
# release binaries are.
: "${RUNS:=3}" "${WARMUP:=2s}" "${DURATION:=10s}" "${SOCKETS:=100}" "${BURST:=16}" "${SIZE:=64}"
: "${BIN:=target/release}"
# `loadgen throughput`'s flags for that load.
TP_ARGS=(--sockets "$SOCKETS" --burst "$BURST" --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION")

# verdict CONDITION: `met` or `NOT met`, for a summary's table.
verdict() { if eval "$1"; then echo met; else echo "NOT met"; fi; }

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

# wait_echo PORT [CA]: until a line sent to PORT comes back (a node: its upstream is ready); with
# CA (a PEM file), over TLS to the name `localhost`, trusting that CA.
wait_echo() {
    python3 - "$1" "${2:-}" <<'PY' || die "no echo from 127.0.0.1:$1 after 30 s"
import socket, ssl, sys, time
port, ca, deadline = int(sys.argv[1]), sys.argv[2], time.time() + 30
tls = ssl.create_default_context(cafile=ca) if ca else None
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            s = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
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

# cpu_pct T0 T1 TICKS0 TICKS1: a process's CPU share (%) from T0 to T1 (seconds, `date +%s.%N`),
# given its cpu_ticks at each.
cpu_pct() {
    awk -v t0="$1" -v t1="$2" -v a="$3" -v b="$4" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.0f", (b - a) / hz / (t1 - t0) * 100}'
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

# --- node benchmarks ---------------------------------------------------------------------------

# machine_info FILE: what the results were measured on.
machine_info() {
    {
        echo "date: $(date -u +%FT%TZ)"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
        echo "cpu: $(nproc) x $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
        echo "kernel: $(uname -r)"
        echo "memory: $(awk '/^MemTotal/ {print $2 " kB"}' /proc/meminfo)"
        echo "rustc: $(rustc --version)"
        [[ -n ${HAPROXY:-} && -x ${HAPROXY:-} ]] && echo "haproxy: $("$HAPROXY" -v | head -1)"
        echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$1"
}

# summary_tail: the end of a summary: the load average after, and every run's line.
# summary_head TITLE: a summary's start: its title with the date, the machine ($OUT/machine.txt)
# and the header of its table of measures.
summary_head() {
    echo "# $1, $(date -u +%F)"
    echo
    echo '```'
    cat "$OUT/machine.txt"
    echo '```'
    echo
    echo "| measure | runs | median | target | |"
    echo "| --- | --- | --- | --- | --- |"
}

summary_tail() {
    echo
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "Every run (cpu_pct: share of one core over the whole loadgen run, connect and warm-up included):"
    echo
    echo '```'
    cat "$RESULTS"
    echo '```'
}

TLS_FLAGS=()
CLIENT_TLS=()
# make_certs DIR: a CA and the node's certificate (ECDSA P-256, SAN localhost), made by openssl in
# DIR; sets TLS_FLAGS (the node's --tls-cert and --tls-key) and CLIENT_TLS (loadgen's --tls-ca).
make_certs() {
    local dir=$1 ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    command -v openssl >/dev/null || die "openssl is needed to make the certificates (apt-get install openssl)"
    mkdir -p "$dir"
    openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj /CN=ppp-bench-ca 2>/dev/null
    openssl req "${ec[@]}" -keyout "$dir/node.key" -out "$dir/node.csr" -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$dir/ext"
    openssl x509 -req -in "$dir/node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -out "$dir/node.pem" -days 2 -extfile "$dir/ext" 2>/dev/null
    TLS_FLAGS=(--tls-cert "$dir/node.pem" --tls-key "$dir/node.key")
    CLIENT_TLS=(--tls-ca "$dir/ca.pem")
}

UP_PORT=
UP_PID=
# start_echo_upstream: the example echo upstream, on a free port.
start_echo_upstream() {
    UP_PORT=$(free_port)
    start upstream "$BIN/examples/echo_upstream" --listen "127.0.0.1:$UP_PORT"
    UP_PID=$LAST_PID
    wait_port "$UP_PORT"
}

NODE_PID=
NODE_PORT=
# start_node NAME [FLAG...]: a fresh node in front of the echo upstream, forwarding (with
# NODE_TLS_CA set, waited for over TLS: pass the TLS flags).
start_node() {
    local name=$1 admin
    shift
    NODE_PORT=$(free_port)
    admin=$(free_port)
    start "$name" env RUST_LOG="${NODE_RUST_LOG:-info}" "$BIN/ppp" --listen "127.0.0.1:$NODE_PORT" \
        --admin-listen "127.0.0.1:$admin" --upstream "http://127.0.0.1:$UP_PORT" "$@"
    NODE_PID=$LAST_PID
    wait_echo "$NODE_PORT" "${NODE_TLS_CA:-}"
}

# loadgen LABEL PORT MODE ARGS... (pids to sample CPU of in $SAMPLE, named in $SAMPLE_NAMES): one
# loadgen run; its result line, with the CPU share of each sampled process over the run, goes to
# $RESULTS and stdout.
SAMPLE=()
SAMPLE_NAMES=
loadgen() {
    local label=$1 port=$2 mode=$3
    shift 3
    local t0 t1 c0 c1 line cpu="" i
    t0=$(date +%s.%N)
    mapfile -t c0 < <(cpu_ticks "${SAMPLE[@]}")
    line=$("$BIN/examples/loadgen" "$mode" --target "127.0.0.1:$port" "$@" 2>>"$OUT/loadgen.log") ||
        die "loadgen $mode against $label failed (see $OUT/loadgen.log)"
    mapfile -t c1 < <(cpu_ticks "${SAMPLE[@]}")
    t1=$(date +%s.%N)
    for i in "${!SAMPLE[@]}"; do
        cpu+=" $(cpu_pct "$t0" "$t1" "${c0[i]}" "${c1[i]}")"
    done
    line="$label $line cpu_pct[$SAMPLE_NAMES]=${cpu# }"
    echo "$line" >>"$RESULTS"
    echo "$line" >&2
    echo "$line"
}

# idle_rss LABEL SOCKETS [LOADGEN FLAG...]: RSS per idle socket of the node running now
# ($NODE_PID, $NODE_PORT): `loadgen idle` opens SOCKETS silent sockets; once the node holds them
# (fd count) and its RSS stops moving (two readings 0.5 s apart within 16 kB), (after - before) /
# SOCKETS. Prints the bytes per socket; the result line goes to $RESULTS.
idle_rss() {
    local label=$1 sockets=$2 fds0 rss0 rss1 prev fds1 per lg
    shift 2
    sleep 1 # let the start-up settle (the readiness probe's socket is gone)
    fds0=$(fd_count "$NODE_PID")
    rss0=$(rss_kb "$NODE_PID")
    start "loadgen-$label" "$BIN/examples/loadgen" idle --target "127.0.0.1:$NODE_PORT" \
        --sockets "$sockets" --duration 300s "$@"
    lg=$LAST_PID
    wait_for "$sockets idle sockets connected" 120 grep -q '^idle connected=' "$OUT/loadgen-$label.log"
    wait_for "the node to hold $sockets sockets" 60 eval '(($(fd_count "$NODE_PID") >= fds0 + sockets))'
    prev=$(rss_kb "$NODE_PID")
    for _ in $(seq 40); do
        sleep 0.5
        rss1=$(rss_kb "$NODE_PID")
        ((rss1 - prev < 16 && prev - rss1 < 16)) && break
        prev=$rss1
    done
    fds1=$(fd_count "$NODE_PID")
    per=$(((rss1 - rss0) * 1024 / sockets))
    echo "idle-rss $label sockets=$sockets rss_before_kb=$rss0 rss_after_kb=$rss1 fds_before=$fds0 fds_after=$fds1 bytes_per_socket=$per" >>"$RESULTS"
    stop "$lg"
    echo "$per"
}

# --- cluster-mode pieces --------------------------------------------------------------------------

# register_run RUN PORT: opens $REG_SOCKETS sockets to the node on PORT (in cluster mode on the Redis
# on $REDIS_PORT; key prefix $K) from $REG_GENERATORS (default 1) loadgen idle processes at once (64
# connects in flight each), and
# polls ZCARD K:sockets every 10 ms on one connection until it reaches $REG_SOCKETS; then closes
# them and times the way back to 0. Prints the result line.
register_run() {
    python3 - "$REDIS_PORT" "$2" "$REG_SOCKETS" "$BIN/examples/loadgen" "$OUT/register-$1.log" "$K" \
        "${REG_GENERATORS:-1}" <<'PY'
import signal, socket, subprocess, sys, time

redis_port, node_port, n, loadgen, log, prefix, generators = sys.argv[1:]
n, key, generators = int(n), prefix + "sockets", int(generators)

def zcard(conn):
    conn.sendall(b"*2\r\n$5\r\nZCARD\r\n$%d\r\n%s\r\n" % (len(key), key.encode()))
    data = b""
    while not data.endswith(b"\r\n"):
        data += conn.recv(64)
    return int(data[1:])

def poll_until(conn, done, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        count = zcard(conn)
        if done(count):
            return count, time.monotonic()
        time.sleep(0.01)
    sys.exit(f"ZCARD {key} is {count} after {limit} s")

conn = socket.create_connection(("127.0.0.1", int(redis_port)))
assert zcard(conn) == 0, "sockets still registered before the run"
with open(log, "w") as err:
    t0 = time.monotonic()
    shares = [n // generators + (i < n % generators) for i in range(generators)]
    gens = [subprocess.Popen([loadgen, "idle", "--target", f"127.0.0.1:{node_port}", "--sockets", str(k),
                              "--duration", "120s"], stdout=subprocess.PIPE, stderr=err, text=True)
            for k in shares]
    _, t_reg = poll_until(conn, lambda c: c >= n, 60)
    # `idle connected=N connect_ms=T`, printed by each generator once all its sockets are in.
    lines = [gen.stdout.readline().split() for gen in gens]
    connect_ms = max(int(dict(kv.split("=") for kv in line[1:])["connect_ms"]) for line in lines)
    t_close = time.monotonic()
    for gen in gens:
        gen.send_signal(signal.SIGTERM)
    for gen in gens:
        gen.wait()
    _, t_gone = poll_until(conn, lambda c: c == 0, 60)
reg_ms = (t_reg - t0) * 1000
print(f"register sockets={n} generators={generators} register_ms={reg_ms:.0f} sockets_per_sec={n / (t_reg - t0):.0f} "
      f"client_connect_ms={connect_ms} lag_after_connect_ms={reg_ms - connect_ms:.0f} "
      f"unregister_ms={(t_gone - t_close) * 1000:.0f} unregister_per_sec={n / (t_gone - t_close):.0f}")
PY
}
