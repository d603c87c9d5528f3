#!/usr/bin/env bash
# Runs the soak (issue 6; `soak` in tests/chaos.rs): a 3-node cluster with 2 upstreams under
# continuous load for MINUTES (default 30) with a random fault schedule, then the checker's
# verdict, memory drift, open file descriptors and Redis's memory. docs/reliability.md reads it.
#
#   scripts/soak.sh [MINUTES]          PPP_SOAK_SEED=<seed> replays a schedule
#
# It clones the repository at HEAD into a temporary directory and builds there, in release, so
# that edits and rebuilds in the working tree during a long run cannot swap the binaries under
# it (uncommitted changes are not part of the run: commit them first). To save a full rebuild,
# the clone's target directory starts as a copy of this tree's target/release when there is one.
# SOAK_OVERLAY="tests/chaos.rs tests/chaos" copies those paths from the working tree over
# the clone: to soak uncommitted test changes against committed code.
# The whole output goes to bench-results/soak-<time>.log (named at the end); the script exits
# with the test's status.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
minutes=${1:-30}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench-results
log="$repo/bench-results/soak-$stamp.log"
work=$(mktemp -d "${TMPDIR:-/tmp}/ppp-soak.XXXXXX")
trap 'rm -rf "$work"' EXIT

command -v redis-server >/dev/null || { echo "redis-server is required (scripts/test.sh installs it)" >&2; exit 1; }
commit=$(git rev-parse HEAD)
{
  echo "soak: $minutes min, commit $commit ($(git log -1 --format=%s HEAD | cut -c1-80)), started $(date -u +%FT%TZ)"
  git status --porcelain | grep -q . && echo "soak: note: the working tree has uncommitted changes; they are not in this run"
  echo "soak: host $(uname -srm), $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
} | tee "$log"

git clone --quiet --no-hardlinks "$repo" "$work/src"
git -C "$work/src" checkout --quiet "$commit"
for path in ${SOAK_OVERLAY:-}; do
  echo "soak: overlay from the working tree: $path" | tee -a "$log"
  rm -rf "${work:?}/src/$path"
  cp -a "$path" "$work/src/$path"
done
if [ -d target/release ]; then
  mkdir -p "$work/src/target"
  cp -a target/release "$work/src/target/release"
fi

status=0
(
  cd "$work/src"
  echo "soak: building in $work/src (cargo test --release --test chaos --no-run)"
  cargo test --release --locked --test chaos --no-run 2>&1 | tail -n 3
  PPP_SOAK_MINUTES=$minutes cargo test --release --locked --test chaos soak -- --ignored --nocapture --exact 2>&1
) 2>&1 | tee -a "$log" || status=$?
echo "soak: finished $(date -u +%FT%TZ), exit status $status; the whole output is in $log" | tee -a "$log"
exit "$status"
