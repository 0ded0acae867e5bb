#!/usr/bin/env bash
# Runs the shared side-by-side benchmark (../shared/bench) with Tollgate added, on the
# profile-guided release build the container image ships (bench/binary.sh;
# TOLLGATE_BENCH_BUILD=release measures a plain release build instead).
# Usage: bench/run.sh [extra run.sh arguments, e.g. --peers direct,nginx,haproxy]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
source "$here/project.sh"
bin=$("$here/binary.sh")
tollgate_project "$bin" tollgate 18090 18099 --access-log off
quiet=("${project[@]}")
tollgate_project "$bin" tollgate-log 18092 18098
exec bash "$shared/run.sh" "${quiet[@]}" "${project[@]}" "$@"
