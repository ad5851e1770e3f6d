#!/usr/bin/env bash
# Instructions per request through one proxy (or the two sidecars of the
# mesh scenarios, added together), counted by valgrind's callgrind: the
# same count for the same binary and load whatever else the machine is
# doing, so it can compare two builds on a noisy machine where CPU time per
# request cannot. It measures user-space work only (no kernel,
# no cache misses); bench/run.sh remains the measure of speed.
#
# usage: sudo bench/instructions.sh [--requests N] [--proto h1|h2] [--no-build]
#            [--config http|plugins|mesh-plain|mesh-mtls] (--config and
#            --proto take a space-separated list; default: http plugins, h1 h2)
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
        -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# The same mesh configs as bench/run.sh's remora-http, remora-plugins,
# mesh-plain and mesh-mtls.
write_remora_http_config
write_remora_plugins_config plugins 0
write_mesh_configs
cfg_file() { echo "$T/remora-$1/mesh.yaml"; }    # cfg_file http|plugins

load() {                  # load CONFIG PROTO COUNT
    local url flags=(-c 4 -t 1 -n "$3") h2_port="$H2_PORT"
    # The mesh configs have one HTTP port, which takes both protocols.
    case "$1" in mesh-*) h2_port="$HTTP_PORT" ;; esac
    case "$2" in
        h1) url="http://$IP_S:$HTTP_PORT/?apikey=$BENCH_KEY"; flags+=(--h1) ;;
        h2) url="http://$IP_S:$h2_port/?apikey=$BENCH_KEY"; flags+=(-m 4) ;;
    esac
    in_c h2load "${flags[@]}" "$url" >"$OUT/h2load.last" 2>&1 || true
    local ok
    ok=$(awk '/^status codes:/{gsub(/,/,""); print $3}' "$OUT/h2load.last")
    [ "${ok:-0}" = "$3" ] || die "h2load: $ok of $3 answered 2xx; see $OUT/h2load.last"
}

# A proxy under callgrind, as uid 1337 in namespace NS (in_c or in_s):
# cg_start IN CG LOG ARGS... sets BG_PID once its /ready answers.
cg_start() {
    local in="$1" cg="$2" proxy_log="$3" n=300; shift 3
    local ns="$NS_C"; [ "$in" = in_s ] && ns="$NS_S"
    start_bg "$proxy_log" ip netns exec "$ns" setpriv --reuid=1337 --regid=1337 --clear-groups -- \
        valgrind --tool=callgrind --vgdb=no --callgrind-out-file="$cg" "$PROXY_BIN" --workers 1 "$@"
    until "$in" curl -sf -o /dev/null http://127.0.0.1:15020/ready; do
        kill -0 "$BG_PID" 2>/dev/null || die "proxy exited; see $proxy_log"
        n=$((n - 1)); [ $n -gt 0 ] || die "proxy not ready after 30 s; see $proxy_log"
        sleep 0.1
    done
}
cg_stop() {               # cg_stop PID CG: SIGTERM, then prints the total instructions
    local n
    kill -TERM "$1"
    for n in $(seq 300); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$1" 2>/dev/null && die "proxy did not exit within 30 s of SIGTERM"
    wait "$1" 2>/dev/null || true
    awk '/^summary:|^totals:/{print $2; exit}' "$2"
}

# One measurement: the proxy (or, for mesh-*, both sidecars) under
# callgrind, warmed with 500 requests, then given N more (or none), then
# stopped so that callgrind writes its totals. Instructions per request =
# (with N - without) / N: startup, certificates, config load and shutdown
# cancel out.
run_one() {               # run_one CONFIG PROTO COUNT: prints the total instructions
    local cfg="$1" proto="$2" count="$3" tag="$1.$2.$3" a b
    case "$cfg" in
        mesh-*)
            # B first (it captures the origin's inbound; the CA's port stays
            # out), then A, each with its certificate from remora-cp.
            in_s "$INIT_BIN" --exclude-inbound-ports 15012 >>"$OUT/init.log" 2>&1 || die "remora-init (server ns) failed"
            # shellcheck disable=SC2046
            cg_start in_s "$OUT/callgrind.$tag.b" "$OUT/proxy.$tag.b.log" \
                --config "$T/mesh/server.yaml" $(mesh_identity_args "$T/mesh/token-b" 127.0.0.1)
            b=$BG_PID
            in_c "$INIT_BIN" >>"$OUT/init.log" 2>&1 || die "remora-init failed"
            # shellcheck disable=SC2046
            cg_start in_c "$OUT/callgrind.$tag.a" "$OUT/proxy.$tag.a.log" \
                --config "$T/mesh/client-${cfg#mesh-}.yaml" $(mesh_identity_args "$T/mesh/token-a" "$IP_S")
            a=$BG_PID
            ;;
        *)
            in_c "$INIT_BIN" >>"$OUT/init.log" 2>&1 || die "remora-init failed"
            cg_start in_c "$OUT/callgrind.$tag" "$OUT/proxy.$tag.log" --config "$(cfg_file "$cfg")"
            a=$BG_PID
            ;;
    esac
    load "$cfg" "$proto" 500
    [ "$count" -gt 0 ] && load "$cfg" "$proto" "$count"
    case "$cfg" in
        mesh-*)
            a=$(cg_stop "$a" "$OUT/callgrind.$tag.a")
            b=$(cg_stop "$b" "$OUT/callgrind.$tag.b")
            in_c "$INIT_BIN" --cleanup >>"$OUT/init.log" 2>&1 || true
            in_s "$INIT_BIN" --cleanup >>"$OUT/init.log" 2>&1 || true
            echo $((a + b))
            ;;
        *)
            a=$(cg_stop "$a" "$OUT/callgrind.$tag")
            in_c "$INIT_BIN" --cleanup >>"$OUT/init.log" 2>&1 || true
            echo "$a"
            ;;
    esac
}

# remora-cp for the mesh configs, started here: run_one runs in a subshell.
case " $CONFIGS " in *" mesh-"*) mesh_ca_up ;; esac
printf '%-10s %-5s %10s %14s\n' config proto requests "instr/request"
for cfg in $CONFIGS; do
    case "$cfg" in
        mesh-plain|mesh-mtls) ;;
        *) [ -f "$(cfg_file "$cfg")" ] || die "no config $cfg (http, plugins, mesh-plain, mesh-mtls)" ;;
    esac
    for proto in $PROTOS; do
        # The mesh's origin speaks HTTP/1.1 only, and its sidecar speaks to
        # it what the client spoke.
        case "$cfg.$proto" in mesh-*.h2) log "$cfg: h1 only (skipping h2)"; continue ;; esac
        base=$(run_one "$cfg" "$proto" 0)
        full=$(run_one "$cfg" "$proto" "$N")
        printf '%-10s %-5s %10s %14s\n' "$cfg" "$proto" "$N" "$(( (full - base) / N ))"
    done
done
echo "profiles: $OUT/callgrind.<config>.<proto>.<requests> (callgrind_annotate --inclusive=yes FILE)"
