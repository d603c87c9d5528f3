#!/usr/bin/env bash
# Smoke test of the Go example upstream against a real node, for CI or by hand:
#
#   examples/go/smoke_test.sh
#
# It builds the upstream with build.sh (offline, Debian's Go packages; or takes $PPP_GO_BIN) and
# runs scripts/upstream_smoke.sh with it, which says what is checked.
#
# Needs python3 (the test client) and curl, plus what build.sh needs unless $PPP_GO_BIN is set.
# Environment: PPP_GO_BIN (a built upstream: skips the build), and what scripts/upstream_smoke.sh
# reads (PPP_BIN, PYTHON, PPP_SMOKE_TIMEOUT).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() {
  echo "smoke_test: FAIL: $*" >&2
  exit 1
}

go_bin=${PPP_GO_BIN:-}
if [[ -z $go_bin ]]; then
  go_bin=$root/target/examples-go/ppp-go-upstream
  "$here/build.sh" "$go_bin" || fail "build.sh failed (see above)"
fi
[[ -x $go_bin ]] || fail "no upstream binary at $go_bin"
exec bash "$root/scripts/upstream_smoke.sh" "$go_bin"
