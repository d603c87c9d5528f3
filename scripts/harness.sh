# Shell helpers for the test scripts that start processes (examples/python/smoke_test.sh,
# examples/go/smoke_test.sh, tests/schemathesis/run.sh). Source it after setting:
#   HARNESS   the name messages start with ("smoke_test", "schemathesis")
#   timeout   seconds each wait_for may take
# It makes a temporary folder, $work, where the processes' logs go (each *.log is shown when the
# script fails), and stops every process given to `track`, last started first (SIGTERM, then
# SIGKILL after 5 s), and removes $work, whichever way the script ends.

work=$(mktemp -d)
pids=()

say() { echo "$HARNESS: $*"; }

# Prints the last lines of every log, so a failure in CI can be understood from its output alone.
show_logs() {
  local log
  for log in "$work"/*.log; do
    [[ -s $log ]] || continue
    echo "----- $(basename "$log") (last 40 lines) -----"
    tail -n 40 "$log"
  done
}

fail() {
  echo "$HARNESS: FAIL: $*" >&2
  show_logs >&2
  exit 1
}

# track PID: stop it when the script ends. untrack PID: it was waited for already.
track() { pids+=("$1"); }
untrack() {
  local kept=() p
  for p in "${pids[@]}"; do
    [[ $p == "$1" ]] || kept+=("$p")
  done
  pids=("${kept[@]}")
}

alive() { kill -0 "$1" 2>/dev/null; }

harness_cleanup() {
  local pid i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      alive "$pid" || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap harness_cleanup EXIT

# wait_for WHAT CMD...: polls CMD every 100 ms until it succeeds; fails with WHAT after $timeout s.
wait_for() {
  local what=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || fail "$what: not within ${timeout}s"
    sleep 0.1
  done
}
