#!/usr/bin/env bash
# The control plane at scale (issue 9's benchmark): the real remora-cp over
# a generated store of 10,000 Services and 100,000 endpoints with 1,000
# simulated proxy discovery streams on loopback (mesh-cp/examples/cp_scale.rs),
# then one real sidecar's RSS in a mesh of 10 and of 10,000 Services
# (tests/examples/proxy_mesh_rss.rs, pods as network namespaces: needs root).
# Prints two markdown tables; record them in bench/RESULTS.md.
#
# usage: sudo bench/cp_scale.sh [cp_scale flags, e.g. --changes 20]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_root "$@"
ensure_deps
# 1,000 streams and their server side need descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --bins
cargo build --release --locked -p remora-cp --example cp_scale
cargo build --release --locked -p remora-e2e --example proxy_mesh_rss
echo "## remora-cp at scale"
target/release/examples/cp_scale --cp target/release/remora-cp "$@"
echo
echo "## one sidecar's RSS against the mesh size"
REMORA_BIN_DIR="$PWD/target/release" target/release/examples/proxy_mesh_rss
