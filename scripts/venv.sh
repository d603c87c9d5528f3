#!/usr/bin/env bash
# A Python venv with a requirements file installed, for the test scripts that need one
# (deploy/kubernetes/validate.sh, tests/schemathesis/run.sh, examples/python/smoke_test.sh):
#
#   scripts/venv.sh VENV REQUIREMENTS
#
# Creates VENV when it has no python yet (with $PYTHON, default python3), then installs
# REQUIREMENTS into it (pinned versions; a no-op once installed). Exits non-zero, saying why on
# stderr, when either fails.
set -euo pipefail

venv=$1
requirements=$2
if [[ ! -x $venv/bin/python ]]; then
  echo "venv.sh: creating a venv in $venv"
  "${PYTHON:-python3}" -m venv "$venv" || {
    echo "venv.sh: cannot create a venv in $venv (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" || {
  echo "venv.sh: pip install -r $requirements failed" >&2
  exit 1
}
