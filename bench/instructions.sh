#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a deterministic A/B measure
# for hot-path changes (wall-clock A/B on a shared VM moves ±5 % between identical runs).
# Usage: bench/instructions.sh [BINARY] [CONNECTIONS]   (default: target/release/tollgate, 16)
# Needs valgrind (apt-get install -y valgrind), wrk and the shared bench backend (../shared/bench/setup.sh builds it).
# Prints: requests counted and instructions per request. Compare builds, not absolute values.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${1:-$root/target/release/tollgate}
conns=${2:-16}
backend=${SHARED_BENCH:-$root/../shared/bench}/backend/target/release/bench-backend
out=$(mktemp -d)
cleanup() { kill "${proxy:-}" "${upstream:-}" 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
"$backend" 127.0.0.1:19000 1 >/dev/null 2>&1 &
upstream=$!
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" "$bin" standalone \
  --manifests "$here/manifests" --listen 127.0.0.1:18090 --admin 127.0.0.1:18099 \
  --workers 1 --access-log off >/dev/null 2>"$out/valgrind.log" &
proxy=$!
for _ in $(seq 1 120); do curl -s -o /dev/null http://127.0.0.1:18090/ && break; sleep 0.5; done
wrk -t1 -c"$conns" -d3 http://127.0.0.1:18090/ >/dev/null   # warm-up: pools, caches
callgrind_control -z "$proxy" >/dev/null 2>&1
requests=$(wrk -t1 -c"$conns" -d6 http://127.0.0.1:18090/ | awk '/requests in/{print $1}')
callgrind_control -d "$proxy" >/dev/null 2>&1
sleep 1
dump=$(ls -t "$out"/callgrind.* | head -1)
instructions=$(awk '/^(summary|totals):/{print $2; exit}' "$dump")
echo "requests=$requests instructions_per_request=$((instructions / requests))"
