#!/usr/bin/env bash
# Smoke test of the Python example upstream against a real node, for CI or by hand:
#
#   examples/python/smoke_test.sh
#
# It installs requirements.txt into a venv ($PPP_PY_VENV, or target/interop/venv, the one the
# interop tests use; created when missing, reused after) and runs scripts/upstream_smoke.sh with
# upstream.py, which says what is checked.
#
# Needs python3 with its venv module (Debian: python3-venv), curl, and PyPI or a pip cache.
# Environment: PPP_PY_VENV (a venv to use), PYTHON (the interpreter that makes the venv, default
# python3), and what scripts/upstream_smoke.sh reads (PPP_BIN, PPP_SMOKE_TIMEOUT).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() {
  echo "smoke_test: FAIL: $*" >&2
  exit 1
}

venv=${PPP_PY_VENV:-$root/target/interop/venv}
bash "$root/scripts/venv.sh" "$venv" "$here/requirements.txt" || fail "no venv with requirements.txt"
PYTHON=$venv/bin/python exec bash "$root/scripts/upstream_smoke.sh" "$venv/bin/python" "$here/upstream.py"
