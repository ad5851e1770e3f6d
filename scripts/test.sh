#!/usr/bin/env bash
# Runs Remora's whole test suite: formatting, lints, unit tests and the
# end-to-end tests in which pods are network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_root "$@"
ensure_deps
ensure_chart_deps

# 1,000 concurrent connections through one proxy need descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real binaries.
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The Helm chart: rendered offline, every object validated strictly.
"$CHART_VENV/bin/python" charts/remora/tests/test_chart.py
# Each fuzz target for a bounded time (FUZZ_SECONDS, default 60); a crash fails.
scripts/fuzz.sh
