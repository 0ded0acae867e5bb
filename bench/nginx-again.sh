#!/usr/bin/env bash
# Starts a second nginx with the shared harness's own nginx peer configuration, for
# `bench/aa.sh`: bench/nginx-again.sh PORT WORKERS BACKEND_HOST:PORT (runs in the foreground).
set -euo pipefail
port=$1 workers=$2 backend=$3
here=$(cd "$(dirname "$0")" && pwd)
shared=${SHARED_BENCH:-$here/../../shared/bench}
dir=${TMPDIR:-/tmp}/tollgate-nginx-again-$port   # reused: one per port, like the harness's run dir
mkdir -p "$dir"
sed -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" -e "s|@RUNDIR@|$dir|g" \
    -e "s|@LISTEN_HOST@|127.0.0.1|g" -e "s|@BACKEND_HOST@|${backend%:*}|g" \
    -e "s|@BACKEND_PORT@|${backend##*:}|g" "$shared/peers/nginx/nginx.conf.tmpl" > "$dir/nginx.conf"
exec "$(command -v nginx || echo /usr/sbin/nginx)" -p "$dir" -c "$dir/nginx.conf"
