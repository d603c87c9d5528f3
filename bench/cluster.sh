#!/usr/bin/env bash
# The cluster-mode benchmark (issue 3; method and results: docs/benchmarks.md, "Cluster mode").
# On loopback, on free ports, with a real redis-server (no persistence):
#   (1) throughput through one node in cluster mode vs HAProxy (TCP mode, one thread) fronting a
#       plain line-echo server (and, for reference, the same node standalone), runs alternating;
#   (2) Redis commands per forwarded message during those cluster runs (INFO commandstats, and
#       the share of messages numbered from the shared counter K:rr);
#   (3) sockets registered per second: 10,000 connects to one node until ZCARD K:sockets says so;
#   (4) cross-node send latency (examples/xnode.rs), on a fresh pair of nodes n1, n2 that log
#       why each socket closed: A on n1 types `/to <B> ...`, B on n2 reads it; the same with both
#       sockets on n1 as the baseline; Redis calls per send; then, once each, the same
#       at a low rate (the cost of one send), and at a high rate with an echo "bystander" on
#       node 1 (what a burst of cross-node sends does to everyone else on that node).
# Medians of $RUNS runs. Results go to bench-results/<UTC time>-cluster/ (summary.md, results.txt,
# logs).
#
# Settings (environment): RUNS=3 WARMUP=2s DURATION=10s SOCKETS=100 BURST=16 SIZE=64
# REG_SOCKETS=10000 XRATE=1000 XWARMUP=2s XDURATION=10s XLOW_RATE=200 XHIGH_RATE=2500
# NODE_RUST_LOG=info XNODE_RUST_LOG=info,ppp::downstream::connection=debug (the nodes' log filters
# before and in step 4) SKIP_BUILD=1 (use the binaries already in target/release).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REG_SOCKETS=${REG_SOCKETS:-10000}
XRATE=${XRATE:-1000}
XWARMUP=${XWARMUP:-2s}
XDURATION=${XDURATION:-10s}
XLOW_RATE=${XLOW_RATE:-200}
XHIGH_RATE=${XHIGH_RATE:-2500}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)-cluster
RESULTS=$OUT/results.txt
K='ppp:{default}:' # key prefix: --redis-prefix and --cluster are left at their defaults
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh


# --- Redis -------------------------------------------------------------------------------------

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

zcard() { rcli ZCARD "${K}sockets"; }

# snapshot FILE: every command's call count (`name calls` lines), then K:rr as `=rr value`. The
# INFO is read before the GET, so between two snapshots the benchmark itself adds exactly one
# INFO and one GET (the first snapshot's); `calls_between` takes them off.
snapshot() {
    rcli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p' >"$1"
    echo "=rr $(rcli GET "${K}rr")" >>"$1"
}

# calls_between BEFORE AFTER: `name delta` for every command called in between, busiest first.
calls_between() {
    awk 'NR == FNR {a[$1] = $2; next}
        $1 == "=rr" {next}
        {d = $2 - a[$1]; if ($1 == "info" || $1 == "get") d -= 1; if (d > 0) print $1, d}' "$1" "$2" |
        sort -k2,2nr
}

rr_of() { sed -n 's/^=rr //p' "$1"; }

# --- setup ---------------------------------------------------------------------------------------

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= REG_SOCKETS + 1024)) || die "ulimit -n is $(ulimit -n); need $((REG_SOCKETS + 1024))"
command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER not found (apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli not found (apt-get install redis-tools)"

if [[ ! -x $HAPROXY ]]; then
    log "installing haproxy"
    apt-get update -qq && apt-get install -y -qq haproxy >/dev/null
fi

build_release

machine_info "$OUT/machine.txt"
{
    echo "redis: $("$REDIS_SERVER" --version)"
    echo "ulimit -n: $(ulimit -n)"
} >>"$OUT/machine.txt"

REDIS_PORT=$(free_port)
start redis "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$OUT" --maxclients 1000
REDIS_PID=$LAST_PID
wait_port "$REDIS_PORT"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

start_echo_upstream

# start_node NAME [NODE_ID]: a node in front of the echo upstream; in cluster mode (on the
# benchmark's Redis, with that node id) when NODE_ID is given, standalone otherwise. Sets
# NODE_PID and NODE_PORT.
NODE_PID=
NODE_PORT=
start_node() {
    local name=$1 admin cluster=()
    [[ -n ${2:-} ]] && cluster=(--redis "$REDIS_URL" --node-id "$2")
    NODE_PORT=$(free_port)
    admin=$(free_port)
    start "$name" env RUST_LOG="${NODE_RUST_LOG:-info}" "$BIN/ppp" --listen "127.0.0.1:$NODE_PORT" \
        --admin-listen "127.0.0.1:$admin" --upstream "http://127.0.0.1:$UP_PORT" "${cluster[@]}"
    NODE_PID=$LAST_PID
    wait_echo "$NODE_PORT"
}

LE_PORT=$(free_port)
start line_echo "$BIN/examples/line_echo" --listen "127.0.0.1:$LE_PORT"
LE_PID=$LAST_PID
wait_echo "$LE_PORT"

HA_PORT=$(free_port)
cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend bench
    bind 127.0.0.1:$HA_PORT
    default_backend line_echo

backend line_echo
    server line_echo 127.0.0.1:$LE_PORT
EOF
start haproxy "$HAPROXY" -db -f "$OUT/haproxy.cfg"
HA_PID=$LAST_PID
wait_echo "$HA_PORT"

start_node node-n1 n1
N1_PID=$NODE_PID
N1_PORT=$NODE_PORT
start_node node-standalone
SA_PID=$NODE_PID
SA_PORT=$NODE_PORT
log "redis :$REDIS_PORT, node n1 :$N1_PORT, standalone node :$SA_PORT (upstream :$UP_PORT)," \
    "haproxy :$HA_PORT (line_echo :$LE_PORT); results in $OUT"

# loadgen LABEL PORT MODE ARGS... (pids to sample CPU of in $SAMPLE): one loadgen run in the
# background; `loadgen_wait` collects it.
SAMPLE=()
SAMPLE_NAMES=
LG_PID=
LG_LABEL=
LG_T0=
LG_C0=()
loadgen_start() {
    LG_LABEL=$1
    local port=$2 mode=$3
    shift 3
    LG_T0=$(now)
    mapfile -t LG_C0 < <(cpu_ticks "${SAMPLE[@]}")
    "$BIN/examples/loadgen" "$mode" --target "127.0.0.1:$port" "$@" >"$OUT/loadgen.out" 2>>"$OUT/loadgen.log" &
    LG_PID=$!
}

# loadgen_wait: waits for the run (in this shell: a subshell cannot wait for it); its result line,
# with the CPU share of each sampled process over the run, goes to results.txt and into LG_LINE.
LG_LINE=
loadgen_wait() {
    local t1 c1 line cpu="" i
    wait "$LG_PID" || die "loadgen against $LG_LABEL failed (see $OUT/loadgen.log)"
    mapfile -t c1 < <(cpu_ticks "${SAMPLE[@]}")
    t1=$(now)
    for i in "${!SAMPLE[@]}"; do
        cpu+=" $(cpu_pct "$LG_T0" "$t1" "${LG_C0[i]}" "${c1[i]}")"
    done
    LG_LINE="$LG_LABEL $(cat "$OUT/loadgen.out") cpu_pct[$SAMPLE_NAMES]=${cpu# }"
    echo "$LG_LINE" >>"$RESULTS"
    echo "$LG_LINE" >&2
}

# secs DURATION: `10s` → 10, `500ms` → 0.5 (for sleep); other forms are refused.
secs() {
    case $1 in
    *ms) awk -v v="${1%ms}" 'BEGIN {print v / 1000}' ;;
    *s) echo "${1%s}" ;;
    *) die "write durations in s or ms (got $1)" ;;
    esac
}

# --- (1) + (2) throughput, and Redis commands per message ---------------------------------------

TP_ARGS=(--sockets "$SOCKETS" --burst "$BURST" --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION")
CL_TP=() SA_TP=() HA_TP=()
CALLS_PER_MSG=() INCRBY_PER_MSG=() SHARED_SHARE=() CALLS_PER_SEC=()
for run in $(seq "$RUNS"); do
    log "throughput run $run/$RUNS"
    wait_for "no sockets registered" 30 eval '(($(zcard) == 0))'
    # Cluster node: Redis is sampled over the measured window, less its last 0.5 s (the sockets
    # close right at its end): [warm-up, warm-up + duration - 0.5 s].
    SAMPLE=("$N1_PID" "$UP_PID" "$REDIS_PID")
    SAMPLE_NAMES=node,upstream,redis
    loadgen_start cluster "$N1_PORT" throughput "${TP_ARGS[@]}"
    sleep "$(secs "$WARMUP")"
    snapshot "$OUT/cmdstats-$run-before.txt"
    ta=$(now)
    sleep "$(awk -v d="$(secs "$DURATION")" 'BEGIN {print d - 0.5}')"
    snapshot "$OUT/cmdstats-$run-after.txt"
    tb=$(now)
    calls_between "$OUT/cmdstats-$run-before.txt" "$OUT/cmdstats-$run-after.txt" >"$OUT/cmdstats-$run.txt"
    total=$(awk '{s += $2} END {print s + 0}' "$OUT/cmdstats-$run.txt")
    incrby=$(awk '$1 == "incrby" {print $2}' "$OUT/cmdstats-$run.txt")
    incrby=${incrby:-0}
    rr=$(($(rr_of "$OUT/cmdstats-$run-after.txt") - $(rr_of "$OUT/cmdstats-$run-before.txt")))
    per_type=$(awk '{printf "%s%s=%s", (NR > 1 ? "," : ""), $1, $2}' "$OUT/cmdstats-$run.txt")
    # The result line is known only once loadgen is done: rates over the window, per message.
    loadgen_wait
    tp=$(field msgs_per_sec "$LG_LINE")
    read -r cps per inc share < <(awk -v c="$total" -v i="$incrby" -v rr="$rr" -v tp="$tp" -v ta="$ta" -v tb="$tb" \
        'BEGIN {w = tb - ta; m = tp * w; printf "%.1f %.6f %.6f %.4f\n", c / w, c / m, i / m, rr / m}')
    redis_line="redis run=$run window_s=$(awk -v a="$ta" -v b="$tb" 'BEGIN {printf "%.2f", b - a}') calls=$total calls_per_sec=$cps msgs_per_sec=$tp calls_per_msg=$per incrby=$incrby incrby_per_msg=$inc rr_advance=$rr shared_counter_share=$share per_type=$per_type"
    echo "$redis_line" | tee -a "$RESULTS" >&2
    CL_TP+=("$tp")
    CALLS_PER_MSG+=("$per")
    INCRBY_PER_MSG+=("$inc")
    SHARED_SHARE+=("$share")
    CALLS_PER_SEC+=("$cps")

    SAMPLE=("$SA_PID" "$UP_PID")
    SAMPLE_NAMES=node,upstream
    loadgen_start standalone "$SA_PORT" throughput "${TP_ARGS[@]}"
    loadgen_wait
    SA_TP+=("$(field msgs_per_sec "$LG_LINE")")

    SAMPLE=("$HA_PID" "$LE_PID")
    SAMPLE_NAMES=haproxy,line_echo
    loadgen_start haproxy "$HA_PORT" throughput "${TP_ARGS[@]}"
    loadgen_wait
    HA_TP+=("$(field msgs_per_sec "$LG_LINE")")
done
stop "$SA_PID"
stop "$HA_PID"
stop "$LE_PID"

# --- (3) sockets registered per second -----------------------------------------------------------

REG_RATE=() REG_MS=() REG_CONNECT=() REG_LAG=() UNREG_RATE=()
for run in $(seq "$RUNS"); do
    log "registration run $run/$RUNS"
    wait_for "no sockets registered" 30 eval '(($(zcard) == 0))'
    line=$(register_run "$run" "$N1_PORT") || die "registration run $run failed (see $OUT/register-$run.log)"
    line="$line run=$run"
    echo "$line" | tee -a "$RESULTS" >&2
    REG_RATE+=("$(field sockets_per_sec "$line")")
    REG_MS+=("$(field register_ms "$line")")
    REG_CONNECT+=("$(field client_connect_ms "$line")")
    REG_LAG+=("$(field lag_after_connect_ms "$line")")
    UNREG_RATE+=("$(field unregister_per_sec "$line")")
done

# --- (4) cross-node send latency -----------------------------------------------------------------

# A fresh pair of nodes, n1 and n2, that log why each socket closed (a debug line per socket,
# nothing per message), so a socket the node closes during these runs is explained.
stop "$N1_PID"
NODE_RUST_LOG=${XNODE_RUST_LOG:-info,ppp::downstream::connection=debug}
start_node node-n1-xnode n1
N1_PID=$NODE_PID
N1_PORT=$NODE_PORT
start_node node-n2-xnode n2
N2_PID=$NODE_PID
N2_PORT=$NODE_PORT

# xnode LABEL TO_PORT RATE WARMUP DURATION: A on n1, B on TO_PORT. Prints the result line; a
# failed run is fatal, but for the saturating ones (LABEL *-high-*), where it is recorded.
xnode() {
    local label=$1 to=$2 rate=$3 warmup=$4 duration=$5 line
    if ! line=$("$BIN/examples/xnode" --from "127.0.0.1:$N1_PORT" --to "127.0.0.1:$to" --rate "$rate" \
        --warmup "$warmup" --duration "$duration" 2>>"$OUT/xnode.log"); then
        [[ $label == *-high-* ]] || die "xnode $label failed (see $OUT/xnode.log)"
        line="xnode failed: $(grep '^Error: ' "$OUT/xnode.log" | tail -1)"
    fi
    line="$label $line"
    echo "$line" >>"$RESULTS"
    echo "$line" >&2
    echo "$line"
}

X_P50=() X_P99=() X_MAX=() X_LOST=() S_P50=() S_P99=() S_MAX=() S_LOST=() X_CALLS=()
for run in $(seq "$RUNS"); do
    log "cross-node latency run $run/$RUNS"
    snapshot "$OUT/cmdstats-xnode-$run-before.txt"
    line=$(xnode cross-node "$N2_PORT" "$XRATE" "$XWARMUP" "$XDURATION")
    snapshot "$OUT/cmdstats-xnode-$run-after.txt"
    # Redis calls per cross-node send, over the whole xnode run (its warm-up and its readiness
    # probes included, and the two nodes' heartbeats).
    calls_between "$OUT/cmdstats-xnode-$run-before.txt" "$OUT/cmdstats-xnode-$run-after.txt" >"$OUT/cmdstats-xnode-$run.txt"
    xcalls=$(awk -v n="$(field sent_total "$line")" '{s += $2; t = t sprintf("%s%s=%.3f", (NR > 1 ? "," : ""), $1, $2 / n)}
        END {printf "%.3f %s", s / n, t}' "$OUT/cmdstats-xnode-$run.txt")
    echo "redis-xnode run=$run sends=$(field sent_total "$line") calls_per_send=${xcalls%% *} per_type_per_send=${xcalls#* }" |
        tee -a "$RESULTS" >&2
    X_CALLS+=("${xcalls%% *}")
    X_P50+=("$(field p50_us "$line")") X_P99+=("$(field p99_us "$line")")
    X_MAX+=("$(field max_us "$line")") X_LOST+=("$(field lost "$line")")
    line=$(xnode one-node "$N1_PORT" "$XRATE" "$XWARMUP" "$XDURATION")
    S_P50+=("$(field p50_us "$line")") S_P99+=("$(field p99_us "$line")")
    S_MAX+=("$(field max_us "$line")") S_LOST+=("$(field lost "$line")")
done

# Once each: at a low rate (the cost of one send, without queueing), and at a high rate with a
# "bystander": 100 echo msgs/s on 10 other sockets of node 1, timed by `loadgen latency`, while
# the sends run.
log "cross-node latency at $XLOW_RATE msgs/s"
LOW_X=$(xnode cross-node-low "$N2_PORT" "$XLOW_RATE" 1s 5s)
LOW_S=$(xnode one-node-low "$N1_PORT" "$XLOW_RATE" 1s 5s)
BYSTANDER=() HIGH=()
for target in one-node cross-node; do # the cross-node run last: it leaves a backlog on n1
    log "bystander echo latency on n1 during $target sends"
    port=$N2_PORT
    [[ $target == one-node ]] && port=$N1_PORT
    SAMPLE=("$N1_PID")
    SAMPLE_NAMES=n1
    loadgen_start "bystander-during-$target" "$N1_PORT" latency --sockets 10 --rate 100 --warmup 2s --duration 6s
    HIGH+=("$(xnode "$target-high-with-bystander" "$port" "$XHIGH_RATE" 1s 9s)")
    loadgen_wait
    BYSTANDER+=("$LG_LINE")
done

# --- summary -------------------------------------------------------------------------------------

cl_tp=$(median "${CL_TP[@]}")
sa_tp=$(median "${SA_TP[@]}")
ha_tp=$(median "${HA_TP[@]}")
ratio=$(awk -v n="$cl_tp" -v h="$ha_tp" 'BEGIN {printf "%.3f", n / h}')
sa_ratio=$(awk -v n="$sa_tp" -v h="$ha_tp" 'BEGIN {printf "%.2f", n / h}')
cl_sa=$(awk -v n="$cl_tp" -v h="$sa_tp" 'BEGIN {printf "%.2f", n / h}')
calls=$(median "${CALLS_PER_MSG[@]}")
incr=$(median "${INCRBY_PER_MSG[@]}")
reg=$(median "${REG_RATE[@]}")
verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo "NOT met"; fi; }
row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }

{
    summary_head "Cluster-mode benchmark"
    row "throughput via one cluster-mode node (msgs/s, $SOCKETS sockets, bursts of $BURST x $SIZE B)" "${CL_TP[*]}" "$cl_tp" "" ""
    row "throughput via a standalone node (msgs/s)" "${SA_TP[*]}" "$sa_tp" "" ""
    row "throughput via HAProxy -> line_echo (msgs/s)" "${HA_TP[*]}" "$ha_tp" "" ""
    row "cluster node / HAProxy" "" "$ratio" ">= 0.4" "$(verdict "$ratio >= 0.4")"
    row "standalone node / HAProxy; cluster / standalone" "" "$sa_ratio; $cl_sa" "" ""
    row "Redis calls per forwarded message (all commands)" "${CALLS_PER_MSG[*]}" "$calls" "<= 0.03125" "$(verdict "$calls <= 0.03125")"
    row "Redis calls per second during the cluster runs" "${CALLS_PER_SEC[*]}" "$(median "${CALLS_PER_SEC[@]}")" "" ""
    row "INCRBY per forwarded message" "${INCRBY_PER_MSG[*]}" "$incr" "<= 0.03125" "$(verdict "$incr <= 0.03125")"
    row "share of messages numbered from K:rr (advance of K:rr / messages)" "${SHARED_SHARE[*]}" "$(median "${SHARED_SHARE[@]}")" "" ""
    row "sockets registered per second ($REG_SOCKETS sockets, first connect to ZCARD = $REG_SOCKETS)" "${REG_RATE[*]}" "$reg" ">= 10000" "$(verdict "$reg >= 10000")"
    row "  time to ZCARD = $REG_SOCKETS (ms)" "${REG_MS[*]}" "$(median "${REG_MS[@]}")" "" ""
    row "  client's own connect time (ms)" "${REG_CONNECT[*]}" "$(median "${REG_CONNECT[@]}")" "" ""
    row "  registered after the last connect (ms)" "${REG_LAG[*]}" "$(median "${REG_LAG[@]}")" "" ""
    row "  sockets unregistered per second after they close" "${UNREG_RATE[*]}" "$(median "${UNREG_RATE[@]}")" "" ""
    row "cross-node send latency p50 at $XRATE msgs/s (us)" "${X_P50[*]}" "$(median "${X_P50[@]}")" "" ""
    row "cross-node send latency p99 at $XRATE msgs/s (us)" "${X_P99[*]}" "$(median "${X_P99[@]}")" "" ""
    row "cross-node send latency max at $XRATE msgs/s (us)" "${X_MAX[*]}" "$(median "${X_MAX[@]}")" "" ""
    row "cross-node sends lost (not at B by the 2 s drain)" "${X_LOST[*]}" "$(median "${X_LOST[@]}")" "" ""
    row "Redis calls per cross-node send (both nodes, heartbeats included)" "${X_CALLS[*]}" "$(median "${X_CALLS[@]}")" "" ""
    row "one-node send latency p50 at $XRATE msgs/s (us)" "${S_P50[*]}" "$(median "${S_P50[@]}")" "" ""
    row "one-node send latency p99 at $XRATE msgs/s (us)" "${S_P99[*]}" "$(median "${S_P99[@]}")" "" ""
    row "one-node send latency max at $XRATE msgs/s (us)" "${S_MAX[*]}" "$(median "${S_MAX[@]}")" "" ""
    row "one-node sends lost" "${S_LOST[*]}" "$(median "${S_LOST[@]}")" "" ""
    row "at $XLOW_RATE msgs/s, 1 run: cross-node p50 / p99 / max (us)" "" "$(field p50_us "$LOW_X") / $(field p99_us "$LOW_X") / $(field max_us "$LOW_X")" "" ""
    row "at $XLOW_RATE msgs/s, 1 run: one-node p50 / p99 / max (us)" "" "$(field p50_us "$LOW_S") / $(field p99_us "$LOW_S") / $(field max_us "$LOW_S")" "" ""
    for line in "${HIGH[@]}"; do
        if [[ $line == *"xnode failed"* ]]; then
            row "at $XHIGH_RATE msgs/s, 1 run: ${line%%-high*}" "" "${line#*xnode }" "" ""
            continue
        fi
        row "at $XHIGH_RATE msgs/s, 1 run: ${line%%-high*} achieved msgs/s; p50 / p99 (us); lost (not in by the drain)" "" "$(field achieved_rate "$line"); $(field p50_us "$line") / $(field p99_us "$line"); $(field lost "$line")" "" ""
    done
    for line in "${BYSTANDER[@]}"; do
        row "${line%% *} sends at $XHIGH_RATE msgs/s: echo p50 / p99 / max (us), 100 msgs/s on n1" "" "$(field p50_us "$line") / $(field p99_us "$line") / $(field max_us "$line")" "" ""
    done
    echo
    echo "Redis calls during each cluster run's window, by command:"
    echo
    echo '```'
    for run in $(seq "$RUNS"); do
        echo "run $run: $(tr '\n' ' ' <"$OUT/cmdstats-$run.txt")"
    done
    echo '```'
    echo
    echo "Redis calls during each cross-node latency run (whole xnode run), by command:"
    echo
    echo '```'
    for run in $(seq "$RUNS"); do
        echo "run $run: $(tr '\n' ' ' <"$OUT/cmdstats-xnode-$run.txt")"
    done
    echo '```'
    echo
    echo "Sockets the nodes closed themselves during the cross-node runs (reason other than client_closed):"
    echo
    echo '```'
    sed 's/\x1b\[[0-9;]*m//g' "$OUT/node-n1-xnode.log" "$OUT/node-n2-xnode.log" |
        sed -n 's/.*socket closed reason=//p' | grep -v '^client_closed$' | sort | uniq -c || echo none
    echo '```'
    summary_tail
} | tee "$OUT/summary.md"
log "done: $OUT"
