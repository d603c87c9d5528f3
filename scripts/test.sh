#!/usr/bin/env bash
# Runs every check and test of the project: formatting, clippy, unit, integration and property
# tests, schemathesis against the admin API's OpenAPI document, promtool on the metrics and the
# alerting rules, the Python example upstream's smoke test, and the docker-compose cluster test
# (when a Docker engine answers). Installs what the tests need when it is missing. Used by `.ci/run` and
# by developers.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if need apt-get; then
    echo "installing $*"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null
  else
    echo "missing: $* (install it and run again)" >&2
    exit 1
  fi
}
need cargo || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
need cc || apt_install gcc
need redis-server || apt_install redis-server
need curl || apt_install curl
need strip || apt_install binutils
need python3 || apt_install python3
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
need promtool || apt_install prometheus

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
echo "== deploy/prometheus: promtool check rules, promtool test rules (promtool check metrics runs in tests/metrics.rs)"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
echo "== tests/schemathesis: the admin API against its own OpenAPI document"
bash tests/schemathesis/run.sh
echo "== examples/python: the Python upstream against a real node"
bash examples/python/smoke_test.sh
echo "== tests/compose: the docker-compose cluster in real containers (skipped without Docker)"
bash tests/compose/run.sh
