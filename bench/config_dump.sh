#!/usr/bin/env bash
# The memory a /config_dump costs: one proxy in a namespace of its own, on a
# standalone config of N backends (one endpoint each, default 100,000). It
# reports the proxy's RSS once the config is in force, then the size, time,
# RSS after and peak RSS (VmHWM, reset before each dump) of the summary and
# of three full dumps in a row. See bench/README.md.
#
# usage: sudo bench/config_dump.sh [--backends N] [--no-build]
#        REMORA_PROXY=/path/to/remora-proxy measures another build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NS=rb-dump
BACKENDS=100000
BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --backends) BACKENDS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "config_dump.sh: needs root (a network namespace)" >&2; exit 1; }
if [ -e "/run/netns/$NS" ]; then
  echo "config_dump.sh: namespace $NS exists: another run, or a killed one (ip netns del $NS)" >&2
  exit 1
fi

if [ -z "${REMORA_PROXY:-}" ]; then
  [ "$BUILD" = 1 ] && (cd "$ROOT" && cargo build --release --quiet -p remora-proxy --bins)
  REMORA_PROXY=$ROOT/target/release/remora-proxy
fi
TMP=$(mktemp -d /tmp/rb-dump.XXXXXX)
cp "$REMORA_PROXY" "$TMP/remora-proxy"   # a rebuild during the run changes nothing
PID=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 - "$BACKENDS" >"$TMP/mesh.json" <<'PY'
import json, sys
n = int(sys.argv[1])
backends = {f"b-{i:06d}": {"endpoints": [{"address": f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}:8080"}]}
            for i in range(n)}
print(json.dumps({
    "version": f"bench-{n}",
    "outbound": {"services": [{"name": "web", "addresses": ["10.96.0.10"],
                               "ports": [{"port": 80, "backendRefs": [{"name": "b-000000"}]}]}]},
    "backends": backends,
}))
PY
chmod 0755 "$TMP"; chmod 0644 "$TMP/mesh.json"

ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" "$TMP/remora-proxy" --config "$TMP/mesh.json" >"$TMP/proxy.log" 2>&1 &
PID=$!
started=$(date +%s.%N)
for _ in $(seq 600); do
  ip netns exec "$NS" curl -sf -o /dev/null http://127.0.0.1:15020/ready && break
  kill -0 "$PID" 2>/dev/null || { cat "$TMP/proxy.log" >&2; exit 1; }
  sleep 0.1
done
ready=$(date +%s.%N)

kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.0f", kb / 1024 }'; }

echo "proxy: $REMORA_PROXY"
echo "config: $BACKENDS backends, $(stat -c %s "$TMP/mesh.json") bytes; ready after $(awk -v a="$started" -v b="$ready" 'BEGIN { printf "%.1f", b - a }') s"
printf '%-22s %12s %8s %14s %14s\n' "request" "bytes" "seconds" "RSS after MB" "peak RSS MB"
printf '%-22s %12s %8s %14s %14s\n' "(config in force)" "-" "-" "$(mb "$(kb VmRSS)")" "$(mb "$(kb VmHWM)")"
dump() {
  local label=$1 path=$2 out
  echo 5 >"/proc/$PID/clear_refs"   # VmHWM := VmRSS, so the peak is this request's
  out=$(ip netns exec "$NS" curl -s -o /dev/null -w '%{size_download} %{time_total}' "http://127.0.0.1:15020$path")
  printf '%-22s %12s %8s %14s %14s\n' "$label" ${out} "$(mb "$(kb VmRSS)")" "$(mb "$(kb VmHWM)")"
}
dump "summary" "/config_dump"
for i in 1 2 3; do
  # The old proxy has no ?full; it ignores the query and dumps everything.
  dump "full dump $i" "/config_dump?full=1"
done
