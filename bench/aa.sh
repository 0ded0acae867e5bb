#!/usr/bin/env bash
# How often does a proxy miss issue 2's goal against *itself*? Runs the shared harness with a
# second nginx (the harness's own nginx configuration, on port 18093) as a project named
# `nginx-again`, next to Tollgate, so one run judges both against the fastest peer:
#
#   bench/aa.sh [extra run.sh arguments]        # AA_TOLLGATE_FIRST=1: Tollgate before nginx-again
#   # then:
#   python3 bench/verdict.py --project nginx-again RUN_IDS
#   python3 bench/verdict.py RUN_IDS
#
# nginx-again is nginx, so it is exactly as fast as the peer `nginx`: the runs in which it
# "misses" the goal are the harness's run-to-run noise, the rate at which a single run fails a
# proxy that is no worse than the peer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
source "$here/project.sh"
bin=$("$here/binary.sh")
again=(--project "bash $here/nginx-again.sh {port} {workers} {backend}" 18093 --project-name nginx-again)
tollgate_project "$bin" tollgate 18090 18099 --access-log off
tollgate=("${project[@]}")
# The harness runs the projects in the order given, after the peers.
if [[ ${AA_TOLLGATE_FIRST:-0} == 1 ]]; then projects=("${tollgate[@]}" "${again[@]}"); else projects=("${again[@]}" "${tollgate[@]}"); fi
exec bash "$shared/run.sh" --peers direct,nginx,haproxy "${projects[@]}" "$@"
