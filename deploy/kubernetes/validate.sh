#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: every manifest against the Kubernetes API's schemas
# (kubernetes-validate, strict: an unknown field is an error) for the oldest and the newest
# Kubernetes versions it is meant for, kustomization.yaml against the folder (every manifest
# listed, every listed file there), the ConfigMaps' shell scripts (`sh -n`), and the rules that
# tie the files together (the grace period outlasts the drain, the probes ask /readyz and
# /healthz, the preStop hook drains, the upstreams come from the headless Service).
#
#   bash deploy/kubernetes/validate.sh
#
# Installs kubernetes-validate (pinned in requirements.txt, the only network it needs: PyPI)
# into a venv (target/venv-kubernetes-validate, or $PPP_K8S_VENV; made when missing, reused
# after). Environment: PPP_K8S_VERSIONS (default "1.29.0 1.37.0"), PYTHON (the interpreter that
# makes the venv, default python3).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
versions=${PPP_K8S_VERSIONS:-1.29.0 1.37.0}
say() { echo "validate.sh: $*"; }
fail() {
  echo "validate.sh: FAIL: $*" >&2
  exit 1
}

venv=${PPP_K8S_VENV:-$target/venv-kubernetes-validate}
bash "$root/scripts/venv.sh" "$venv" "$here/requirements.txt" || fail "no venv with requirements.txt"
python=$venv/bin/python

# The manifests kustomization.yaml lists, checked against the folder.
mapfile -t manifests < <("$python" - "$here" <<'PY' || fail "kustomization.yaml does not match the folder"
import pathlib, sys, yaml
here = pathlib.Path(sys.argv[1])
k = yaml.safe_load((here / "kustomization.yaml").read_text())
listed = k["resources"]
present = sorted(p.name for p in here.glob("*.yaml") if p.name != "kustomization.yaml")
missing = [f for f in listed if not (here / f).is_file()]
unlisted = [f for f in present if f not in listed]
if missing or unlisted or len(set(listed)) != len(listed):
    sys.exit(f"kustomization.yaml: missing files {missing}, files not listed {unlisted}")
print("\n".join(listed))
PY
)
say "${#manifests[@]} manifests listed in kustomization.yaml"

for version in $versions; do
  say "kubernetes-validate --strict against Kubernetes $version"
  (cd "$here" && "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}") \
    || fail "a manifest is not valid for Kubernetes $version"
done

say "the ConfigMaps' scripts (sh -n) and the rules between the files"
"$python" - "$here" <<'PY' || fail "the manifests do not hold together"
import pathlib, re, subprocess, sys, yaml

here = pathlib.Path(sys.argv[1])
docs = {}
for path in sorted(here.glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and "kind" in doc and doc["kind"] != "Kustomization":
            docs[(doc["kind"], doc["metadata"]["name"])] = doc

problems = []
def check(ok, what):
    if not ok:
        problems.append(what)

for (kind, name), doc in docs.items():
    if kind != "ConfigMap":
        continue
    for key, text in doc.get("data", {}).items():
        if key.endswith(".sh"):
            r = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True)
            check(r.returncode == 0, f"ConfigMap {name}: {key}: {r.stderr.strip()}")

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    return int(m[1]) / {"ms": 1000, "s": 1, "m": 1 / 60}[m[2]]

node = docs[("Deployment", "ppp-node")]
pod = node["spec"]["template"]["spec"]
ppp = next(c for c in pod["containers"] if c["name"] == "ppp")
env = {e["name"]: e for e in ppp["env"]}
drain = seconds(env["PPP_DRAIN_TIMEOUT"]["value"])
check(pod["terminationGracePeriodSeconds"] > drain, "terminationGracePeriodSeconds must outlast PPP_DRAIN_TIMEOUT")
check(ppp["readinessProbe"]["httpGet"]["path"] == "/readyz", "the readiness probe asks /readyz")
check(ppp["livenessProbe"]["httpGet"]["path"] == "/healthz", "the liveness probe asks /healthz")
check(ppp["lifecycle"]["preStop"]["exec"]["command"] == ["ppp", "drain"], "the preStop hook runs `ppp drain`")
check(env["PPP_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] in {n for k, n in docs if k == "Secret"},
      "PPP_ADMIN_TOKEN comes from a Secret of the folder")
rolling = node["spec"]["strategy"]["rollingUpdate"]
check(rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1, "a rollout surges before it stops a node")

upstream = docs[("Service", "upstream")]
namespace = node["metadata"]["namespace"]
check(upstream["spec"].get("clusterIP") == "None", "the upstreams' Service is headless")
check(env["PPP_UPSTREAM"]["value"] == f"dns:///upstream.{namespace}.svc.cluster.local:{upstream['spec']['ports'][0]['port']}",
      "PPP_UPSTREAM is dns:/// of the headless Service")
check(env["PPP_REDIS_MODE"]["value"] == "sentinel", "the nodes follow the Sentinels")
redis = docs[("StatefulSet", "redis")]
sentinels = [ppp["args"][i + 1] for i, a in enumerate(ppp["args"]) if a == "--redis"]
expected = [f"redis://redis-{i}.redis.{namespace}.svc.cluster.local:26379" for i in range(redis["spec"]["replicas"])]
check(sentinels == expected, f"--redis lists every Sentinel: {sentinels}")
clients = docs[("Service", "ppp")]
check(clients["spec"]["type"] == "LoadBalancer" and clients["spec"].get("externalTrafficPolicy") == "Local",
      "the clients' Service is a LoadBalancer keeping client addresses")
pdb = docs[("PodDisruptionBudget", "ppp-node")]
check(pdb["spec"]["selector"]["matchLabels"] == node["spec"]["selector"]["matchLabels"], "the PDB selects the nodes")
for (kind, name), doc in docs.items():
    if kind != "Namespace":
        check(doc["metadata"].get("namespace") == namespace, f"{kind} {name} is in namespace {namespace}")

if problems:
    sys.exit("\n".join(problems))
PY
say "ok"
