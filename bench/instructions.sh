#!/usr/bin/env bash
# Instructions per request through one proxy, counted by valgrind's
# callgrind: the same count for the same binary and load whatever else the
# machine is doing, so it can compare two builds on a noisy machine where
# CPU time per request cannot. It measures user-space work only (no kernel,
# no cache misses); bench/run.sh remains the measure of speed.
#
# usage: sudo bench/instructions.sh [--requests N] [--config http|plugins]
#                                   [--proto h1|h2] [--no-build]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NS_C=ri-client; NS_S=ri-server
IP_C=10.96.0.1; IP_S=10.96.0.2
VETH_C=ri-c0; VETH_S=ri-s0
HTTP_PORT=80; H2_PORT=81
BENCH_TAG=instructions
N=5000; CONFIGS="http plugins"; PROTOS="h1 h2"; BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) N="$2"; shift ;;
        --config) CONFIGS="$2"; shift ;;
        --proto) PROTOS="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case "$N" in ''|*[!0-9]*) echo "--requests needs a whole number" >&2; exit 2 ;; esac
[ "$N" -ge 100 ] && [ "$N" -le 200000 ] || { echo "--requests: 100 to 200000" >&2; exit 2; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables)"
for tool in valgrind callgrind_annotate h2load curl nginx; do
    command -v "$tool" >/dev/null || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind nghttp2-client curl nginx >/dev/null
        break
    }
done
stage_binaries
OUT="${OUT:-$ROOT/bench/out/instructions-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"; chmod 777 "$OUT"
setup_topology
start_origin_nginx

# The same mesh configs as bench/run.sh's remora-http and remora-plugins.
write_remora_http_config
write_remora_plugins_config plugins 0
cfg_file() { echo "$T/remora-$1/mesh.yaml"; }    # cfg_file http|plugins

load() {                  # load PROTO COUNT
    local url flags=(-c 4 -t 1 -n "$2")
    case "$1" in
        h1) url="http://$IP_S:$HTTP_PORT/?apikey=$BENCH_KEY"; flags+=(--h1) ;;
        h2) url="http://$IP_S:$H2_PORT/?apikey=$BENCH_KEY"; flags+=(-m 4) ;;
    esac
    in_c h2load "${flags[@]}" "$url" >"$OUT/h2load.last" 2>&1 || true
    local ok
    ok=$(awk '/^status codes:/{gsub(/,/,""); print $3}' "$OUT/h2load.last")
    [ "${ok:-0}" = "$2" ] || die "h2load: $ok of $2 answered 2xx; see $OUT/h2load.last"
}

# One proxy under callgrind per measurement: warmed with 500 requests, then
# given N more (or none), then stopped so that callgrind writes its totals.
# Instructions per request = (with N - without) / N: startup, config load
# and shutdown cancel out.
run_one() {               # run_one CONFIG PROTO COUNT: prints the total instructions
    local cfg="$1" proto="$2" count="$3" cg="$OUT/callgrind.$1.$2.$3" pid n
    in_c "$INIT_BIN" >>"$OUT/init.log" 2>&1 || die "remora-init failed"
    start_bg "$OUT/proxy.$cfg.$proto.$count.log" ip netns exec "$NS_C" setpriv --reuid=1337 --regid=1337 --clear-groups -- \
        valgrind --tool=callgrind --vgdb=no --callgrind-out-file="$cg" "$PROXY_BIN" --workers 1 --config "$(cfg_file "$cfg")"
    pid=$BG_PID
    n=300
    until in_c curl -sf -o /dev/null http://127.0.0.1:15020/ready; do
        kill -0 "$pid" 2>/dev/null || die "proxy exited; see $OUT/proxy.$cfg.$proto.$count.log"
        n=$((n - 1)); [ $n -gt 0 ] || die "proxy not ready after 30 s"
        sleep 0.1
    done
    load "$proto" 500
    [ "$count" -gt 0 ] && load "$proto" "$count"
    kill -TERM "$pid"
    for n in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "proxy did not exit within 30 s of SIGTERM"
    wait "$pid" 2>/dev/null || true
    in_c "$INIT_BIN" --cleanup >>"$OUT/init.log" 2>&1 || true
    awk '/^summary:|^totals:/{print $2; exit}' "$cg"
}

printf '%-8s %-5s %10s %14s\n' config proto requests "instr/request"
for cfg in $CONFIGS; do
    [ -f "$(cfg_file "$cfg")" ] || die "no config $cfg (http, plugins)"
    for proto in $PROTOS; do
        base=$(run_one "$cfg" "$proto" 0)
        full=$(run_one "$cfg" "$proto" "$N")
        printf '%-8s %-5s %10s %14s\n' "$cfg" "$proto" "$N" "$(( (full - base) / N ))"
    done
done
echo "profiles: $OUT/callgrind.<config>.<proto>.<requests> (callgrind_annotate --inclusive=yes FILE)"
