#!/usr/bin/env bash
# Builds the tollgate binary the benchmarks measure and prints its path: by default the
# profile-guided release build the container image ships (build/pgo.sh); with
# TOLLGATE_BENCH_BUILD=release, a plain `cargo build --release` (for A/B comparisons).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case ${TOLLGATE_BENCH_BUILD:-pgo} in
  pgo) "$root/build/pgo.sh" | tail -n 1 ;;
  release)
    cargo build --release --locked --manifest-path "$root/Cargo.toml" --bin tollgate >&2
    echo "$root/target/release/tollgate" ;;
  *) echo "TOLLGATE_BENCH_BUILD must be pgo or release" >&2; exit 2 ;;
esac
