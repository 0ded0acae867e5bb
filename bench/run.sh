#!/usr/bin/env bash
# Runs the shared side-by-side benchmark (../shared/bench) with Tollgate added, on the
# profile-guided release build the container image ships (bench/binary.sh;
# TOLLGATE_BENCH_BUILD=release measures a plain release build instead).
# Usage: bench/run.sh [extra run.sh arguments, e.g. --peers direct,nginx,haproxy]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
bin=$("$here/binary.sh")
exec bash "$shared/run.sh" \
  --project "$bin standalone --manifests $here/manifests --listen 127.0.0.1:{port} --admin 127.0.0.1:18099 --access-log off --workers {workers}" 18090 \
  --project-name tollgate \
  --project "$bin standalone --manifests $here/manifests --listen 127.0.0.1:{port} --admin 127.0.0.1:18098 --workers {workers}" 18092 \
  --project-name tollgate-log \
  "$@"
