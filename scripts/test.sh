#!/usr/bin/env bash
# Runs every check and test of the project: formatting, clippy, unit, integration and property
# tests (with the interop tests against the stock Python and Go upstreams), schemathesis against
# the admin API's OpenAPI document, promtool on the metrics and the alerting rules, the Kubernetes
# manifests against the API's schemas (deploy/kubernetes/validate.sh), the Python and
# Go example upstreams' own tests, and the docker-compose cluster test (when a Docker engine
# answers). Installs what the tests need when it is missing. Used by `.ci/run` and by developers.
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
# tests/redis_sentinel.rs runs three Sentinels; tests/redis_cluster.rs joins a Redis Cluster with redis-cli.
need redis-sentinel || apt_install redis-sentinel
need redis-cli || apt_install redis-tools
need haproxy || apt_install haproxy
need curl || apt_install curl
need strip || apt_install binutils
# The Go example upstream builds offline from Debian's Go packages (GOPATH mode); the 1.5
# protobuf shim, not the 1.3 one apt would pick by default.
gocode=/usr/share/gocode/src
if ! need go || [[ ! -d $gocode/google.golang.org/grpc/health ]] \
  || ! grep -qs google.golang.org/protobuf "$gocode/github.com/golang/protobuf/proto/proto.go"; then
  apt_install golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
fi
need python3 || apt_install python3
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
need promtool || apt_install prometheus
# One venv for every Python upstream the tests start (tests/interop.rs, the smoke test).
export PPP_PY_VENV=${PPP_PY_VENV:-$PWD/target/interop/venv}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== scripts/structure.py: no import cycle between the modules of src/"
python3 scripts/structure.py
echo "== cargo test"
cargo test --all-targets --locked
echo "== deploy/prometheus: promtool check rules, promtool test rules (promtool check metrics runs in tests/metrics.rs)"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
echo "== deploy/kubernetes: the manifests against the Kubernetes API's schemas, offline (kubernetes-validate)"
bash deploy/kubernetes/validate.sh
echo "== tests/schemathesis: the admin API against its own OpenAPI document"
bash tests/schemathesis/run.sh
echo "== examples/python: the Python upstream against a real node"
bash examples/python/smoke_test.sh
echo "== examples/go: the Go upstream's own tests, and against a real node"
bash examples/go/build.sh --test
bash examples/go/smoke_test.sh
echo "== tests/compose: the docker-compose cluster in real containers (skipped without Docker)"
bash tests/compose/run.sh
