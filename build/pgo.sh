#!/usr/bin/env bash
# Profile-guided release build of `tollgate` — the build the container image ships and the
# benchmark measures.
#
#   build/pgo.sh            # prints the path of the optimized binary on its last line
#
# 1. builds an instrumented binary (-Cprofile-generate) into target/pgo-gen;
# 2. trains it: `tollgate echo` as the backend and `tollgate standalone` on build/pgo/training.yaml
#    (service and url integrations with path parameters and a rewrite, a stage throttle, an API key
#    with a usage plan, the response cache, a mock, 404 and 405 answers, the access log on), driven
#    by curl over HTTP/1.1 keep-alive and h2c;
# 3. merges the profile (llvm-profdata) and builds the optimized binary into target/pgo.
# Step 2 is skipped while the profile is newer than the instrumented binary and the training
# manifests (nothing changed since the last training); step 3 is then cargo's no-op build.
# Paths the training does not run (TLS, JWT and other authorizers, WebSocket) are compiled as in a
# plain release build or, where the profile marks them cold, for size; docs/benchmarks.md measures
# the JWT path (no slower than in a plain build).
#
# Needs: cargo, curl, and llvm-profdata from `rustup component add llvm-tools`. Training listens on
# 127.0.0.1:19190-19192 (PGO_PORT_BASE moves them) for some 73,000 requests (6 s on a 2-core VM).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
gen=${PGO_GEN_DIR:-$root/target/pgo-gen}
out=${PGO_TARGET_DIR:-$root/target/pgo}
base=${PGO_PORT_BASE:-19190}
echo_addr=127.0.0.1:$base gateway=127.0.0.1:$((base + 1)) admin=127.0.0.1:$((base + 2))
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
[[ -x $profdata ]] || { echo "build/pgo.sh: llvm-profdata not found; run: rustup component add llvm-tools" >&2; exit 2; }
command -v curl >/dev/null || { echo "build/pgo.sh: curl is needed for the training run" >&2; exit 2; }
log() { printf '[pgo] %s\n' "$*" >&2; }

# --target: the flags then apply to the binary and its dependencies only, not to build scripts
# and proc macros (which would be instrumented and write profiles of their own).
profiles=$gen/profiles
profile=$gen/tollgate.profdata
log "instrumented build ($gen)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" CARGO_TARGET_DIR=$gen \
  cargo build --release --locked --bin tollgate --target "$host" >&2
trainee=$gen/$host/release/tollgate

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

load() { # parallel-connections curl-arguments... (URLs with [from-to] ranges)
  local connections=$1
  shift
  curl -s --no-progress-meter -Z --parallel-max "$connections" "$@" >/dev/null || true
}

train() {
  rm -rf "$profiles"
  mkdir -p "$profiles"
  log "training on build/pgo/training.yaml"
  "$trainee" echo --listen "$echo_addr" >/dev/null 2>&1 &
  pids+=($!)
  # The backend port in the manifests follows PGO_PORT_BASE.
  local manifests
  manifests=$(mktemp -d)
  sed "s/19190/$base/g" "$root/build/pgo/training.yaml" > "$manifests/training.yaml"
  "$trainee" standalone --manifests "$manifests" --listen "$gateway" --admin "$admin" --workers 1 \
    >/dev/null 2>&1 &
  local gateway_pid=$!
  pids+=("$gateway_pid")
  for _ in $(seq 1 100); do curl -sf "http://$admin/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://$admin/readyz" >/dev/null || { log "the trainee never became ready"; exit 1; }
  local key=pgo-training-key-0123456789 u="http://$gateway"
  # Weighted like a gateway's day: plain proxying over keep-alive first and most.
  load 16 "$u/orders/[1-40000]"
  load 16 "$u/items/[1-8000]?page=2"
  load 8 -X POST -H 'content-type: application/json' -d '{"sku":"a-1","count":2}' "$u/items/[1-4000]"
  load 4 --http2-prior-knowledge "$u/orders/[1-8000]"
  load 8 -H "x-api-key: $key" "$u/keyed/[1-6000]"
  load 4 "$u/keyed/[1-500]"
  for _ in 1 2 3 4 5 6 7 8; do load 4 "$u/cached/[1-200]"; done
  load 8 "$u/health?n=[1-3000]"
  load 4 "$u/?n=[1-1000]"
  load 4 -X DELETE "$u/health?n=[1-1000]"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' "$u/orders/check")
  [[ $status == 200 ]] || { log "the trainee answered $status through the echo backend"; exit 1; }
  # A graceful stop writes the profile (SIGTERM drains, then the process exits normally).
  kill -TERM "$gateway_pid"
  wait "$gateway_pid" || true
  rm -rf "$manifests"
  ls "$profiles"/*.profraw >/dev/null 2>&1 || { log "the training wrote no profile"; exit 1; }
  log "merging $(ls "$profiles" | wc -l) profile(s)"
  "$profdata" merge -o "$profile" "$profiles"
}

if [[ -f $profile && $profile -nt $trainee && $profile -nt $root/build/pgo/training.yaml ]]; then
  log "profile up to date ($profile)"
else
  train
fi
log "optimized build ($out)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" CARGO_TARGET_DIR=$out \
  cargo build --release --locked --bin tollgate --target "$host" >&2
echo "$out/$host/release/tollgate"
