#!/usr/bin/env bash
# The local mesh demo: builds the binaries and runs `remora demo` (docs/demo.md):
# remora-cp with its CA, three pods as network namespaces with sidecars
# injected by the injector's own function, and traffic showing capture, mTLS
# identities, a 90/10 split and a rate limit. It leaves nothing behind.
# REMORA_BIN_DIR=DIR uses the binaries in DIR instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_root "$@"
ensure_deps

if [ -n "${REMORA_BIN_DIR:-}" ]; then
  BIN=$REMORA_BIN_DIR
else
  cargo build --bins --quiet -p remora-proxy -p remora-iptables -p remora-cp
  BIN=${CARGO_TARGET_DIR:-target}/debug
fi
exec "$BIN/remora" demo --bin-dir "$BIN" "$@"
