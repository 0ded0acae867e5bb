#!/usr/bin/env bash
# Governed vs plain proxying, same pinning as ../shared/bench/run.sh (--cores 1): wrk and the
# bench backend on CPU 0, Tollgate alone on CPU 1 with one worker.
#
#   plain     : bench/manifests (one catch-all route to the backend)
#   governed  : JWT authorizer (RS256, JWKS from a Secret) + API key + usage plan (throttle and
#               quota, counted on disk under --state-dir) + a stage throttle + 1,000 other routes
#
# The shared run.sh can only send an Authorization header, and a usage plan needs x-api-key too,
# so this script drives wrk itself; the JWT-only case also runs through run.sh (see
# docs/benchmarks.md). Usage: bench/governed.sh [seconds]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
secs=${1:-10}
backend=$shared/backend/target/release/bench-backend
[[ -x $backend ]] || { echo "build $backend first (bash $shared/setup.sh)" >&2; exit 2; }
bin=$("$here/binary.sh")
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
token=$(tr -d '\n' < "$shared/fixtures/jwt/token.jwt")
key=bench-key-0123456789abcdef

mkdir -p "$work/governed" "$work/state"
{
  cat <<YAML
apiVersion: tollgate.dev/v1alpha1
kind: GatewayAPI
metadata: {name: bench, namespace: bench}
spec:
  defaultAuthorizer: {name: idp}
  stages:
  - name: prod
    throttle: {rate: 10000000, burst: 10000000}
---
apiVersion: tollgate.dev/v1alpha1
kind: Authorizer
metadata: {name: idp, namespace: bench}
spec:
  jwt: {issuer: bench-issuer, audiences: [bench-audience], jwksSecretRef: {name: jwks}}
---
apiVersion: v1
kind: Secret
metadata: {name: jwks, namespace: bench}
stringData:
  jwks.json: '$(tr -d '\n' < "$shared/fixtures/jwt/jwks.json")'
---
apiVersion: tollgate.dev/v1alpha1
kind: UsagePlan
metadata: {name: gold, namespace: bench}
spec:
  apiStages: [{api: bench, stage: prod}]
  throttle: {rate: 10000000, burst: 10000000}
  quota: {limit: 1000000000000, period: DAY}
  keySelector: {matchLabels: {plan: gold}}
---
apiVersion: v1
kind: Secret
metadata: {name: bench-key, namespace: bench, labels: {plan: gold}}
type: tollgate.dev/api-key
stringData: {key: $key}
---
apiVersion: tollgate.dev/v1alpha1
kind: Route
metadata: {name: root, namespace: bench}
spec:
  apiRef: {name: bench}
  match: {path: /}
  apiKeyRequired: true
  integration: {service: {name: backend, port: 80}}
YAML
  for i in $(seq 1 1000); do
    printf -- "---\napiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {name: r%d, namespace: bench}\nspec:\n  apiRef: {name: bench}\n  match: {methods: [GET], path: '/r%d/items/{id}'}\n  apiKeyRequired: true\n  integration: {service: {name: backend, port: 80}}\n" "$i" "$i"
  done
  sed -n '/^kind: Service/,$p' "$here/manifests/bench.yaml" | sed '1s/^/---\napiVersion: v1\n/'
} > "$work/governed/all.yaml"
"$bin" validate "$work/governed" >&2 || { echo "governed manifests do not validate" >&2; exit 1; }

taskset -c 0 "$backend" >/dev/null 2>&1 &
sleep 0.5
measure() { # name manifests [wrk headers...]
  local name=$1 dir=$2; shift 2
  taskset -c 1 "$bin" standalone --manifests "$dir" --listen 127.0.0.1:18090 --admin 127.0.0.1:18099 \
    --access-log off --workers 1 --state-dir "$work/state" 2>/dev/null &
  local pid=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:18099/readyz >/dev/null && break; sleep 0.1; done
  local status; status=$(curl -s -o /dev/null -w '%{http_code}' "$@" http://127.0.0.1:18090/)
  [[ $status == 200 ]] || { echo "$name: probe answered $status" >&2; kill $pid; exit 1; }
  taskset -c 0 wrk -t1 -c64 -d2s "$@" http://127.0.0.1:18090/ >/dev/null
  local t0; t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local out; out=$(taskset -c 0 wrk -t1 -c64 -d"${secs}"s --latency "$@" http://127.0.0.1:18090/)
  local t1; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null || true
  local reqs rps p99
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  local cpu; cpu=$(python3 -c "print(round(($t1-$t0)*1e6/$(getconf CLK_TCK)/$reqs,1))")
  local non2xx; non2xx=$(echo "$out" | awk '/Non-2xx/{print $5}')
  printf '%s\trps=%s\tp99=%s\tcpu_us_per_req=%s\tnon2xx=%s\n' "$name" "$rps" "$p99" "$cpu" "${non2xx:-0}"
}
measure plain "$here/manifests"
measure governed "$work/governed" -H "Authorization: Bearer $token" -H "x-api-key: $key"
measure plain-again "$here/manifests"
