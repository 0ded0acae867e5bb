#!/usr/bin/env bash
# The end-to-end suite on a throwaway kind cluster: create the cluster, build the image and load
# it, install the chart, run the suite, delete the cluster (also on failure; KEEP=1 keeps it).
#
#   e2e/kind.sh                      # cluster mode: controller and proxies in the cluster
#   E2E_MODE=local e2e/kind.sh       # also run the suite with local processes (needs root)
#
# Needs docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman), kind, helm 3, kubectl and a
# Rust toolchain. Nothing here runs on machines without a container engine.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-tollgate-e2e}
IMAGE=${IMAGE:-tollgate:e2e}
GATEWAY_PORT=${GATEWAY_PORT:-18080} # host port mapped to the proxy Service's node port
NODE_PORT=30080
export KUBECONFIG=${KUBECONFIG_OUT:-$PWD/target/e2e-kubeconfig}
HELM=${HELM:-helm}

for tool in docker kind kubectl cargo "$HELM"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e/kind.sh needs $tool on PATH" >&2; exit 2; }
done

cleanup() {
  if [[ ${KEEP:-} == 1 ]]; then
    echo "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG); delete with: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

mkdir -p "$(dirname "$KUBECONFIG")"
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s --config - <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
  extraPortMappings:
  - {containerPort: $NODE_PORT, hostPort: $GATEWAY_PORT, listenAddress: 127.0.0.1}
- role: worker
- role: worker
YAML

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

# Two proxies on the two workers (hard anti-affinity), reachable on a fixed node port.
"$HELM" install tollgate charts/tollgate --namespace tollgate-system --create-namespace --wait --timeout 5m \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set proxy.service.type=NodePort --set proxy.service.httpNodePort=$NODE_PORT \
  --set proxy.antiAffinity=hard --set proxy.replicas=2
kubectl -n tollgate-system rollout status deploy/tollgate-controller --timeout 3m
kubectl -n tollgate-system rollout status deploy/tollgate-proxy-default --timeout 3m

export E2E_IMAGE=$IMAGE E2E_GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT
E2E_MODE=cluster cargo test --locked -p tollgate-e2e --test cluster -- --ignored --test-threads 1
if [[ ${E2E_MODE:-cluster} == local ]]; then
  # Only one controller may write the test objects' status: remove the in-cluster one (the CRDs
  # stay; the suite applies them again).
  "$HELM" uninstall tollgate --namespace tollgate-system --wait
  cargo build --locked --bin tollgate
  E2E_MODE=local cargo test --locked -p tollgate-e2e --test cluster -- --ignored --test-threads 1
fi
