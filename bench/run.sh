#!/usr/bin/env bash
# Remora benchmark harness: the proxy against a direct connection and against
# nginx and haproxy, all measured in one run, on network namespaces this
# script creates and deletes. See bench/README.md.
#
# usage: sudo bench/run.sh [--quick] [--rounds N] [--only a,b,c] [--out DIR]
#                          [--proxy-args "ARGS"] [--variant NAME="ARGS"]...
#                          [--rate-moderate N] [--no-build] [--no-install]
set -euo pipefail

# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
CMDLINE="${REMORA_PROXY:+REMORA_PROXY=$REMORA_PROXY }${REMORA_INIT:+REMORA_INIT=$REMORA_INIT }bench/run.sh${*:+ $*}"

NS_C=rb-client            # the meshed "pod": load generators and proxies
NS_S=rb-server            # the origins
IP_C=10.98.0.1
IP_S=10.98.0.2
VETH_C=rb-c0
VETH_S=rb-s0
IPERF_PORT=5201
HTTP_PORT=80
H2_PORT=81                # the origin's h2c (prior knowledge) port

QUICK=0
ROUNDS=""
ONLY=""
OUT=""
BUILD=1
INSTALL=1
REMORA_PROXY_ARGS="${REMORA_PROXY_ARGS:-}"
VARIANTS=()               # "name=args": extra remora scenarios
RATE_MOD=10000            # the moderate fixed rate (req/s) for open-loop latency

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

  --quick              ~1 minute: 1 round, short durations
  --rounds N           measure every scenario N times, interleaved; report medians (default 2)
  --only LIST          comma-separated scenarios (direct is always run):
                       direct,remora,remora-http,remora-plugins,remora-jwt,mesh-plain,mesh-mtls,
                       nginx-stream,haproxy-tcp,nginx-http,haproxy-http
  --out DIR            where logs and results.md go (default bench/out/<utc-time>)
  --proxy-args ARGS    extra flags for remora-proxy in the "remora" scenario
  --variant N=ARGS     add a scenario "remora-N": remora-proxy --workers 1 ARGS
  --rate-moderate N    the moderate fixed rate for open-loop latency, req/s (default 10000)
  --no-build           do not build; use target/release binaries as they are
  --no-install         do not apt-get install missing tools
Env: REMORA_PROXY, REMORA_INIT override the binaries (default target/release/).
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --proxy-args) REMORA_PROXY_ARGS="$2"; shift ;;
        --variant) VARIANTS+=("$2"); shift ;;
        --rate-moderate) RATE_MOD="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --no-install) INSTALL=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    : "${ROUNDS:=1}"
    IPERF_T=2; WRK_D=3; CLOSE_D=2; WARM_D=1; IDLE_N=1000; H2L_D=3
else
    : "${ROUNDS:=2}"
    IPERF_T=5; WRK_D=10; CLOSE_D=5; WARM_D=1; IDLE_N=1000; H2L_D=10
fi
WRK_T=1; WRK_C=16
H2L_C=16; H2L_M=10        # h2load: connections; streams per connection (HTTP/2)

BENCH_TAG=bench
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"   # log, die, cleanup trap, topology, binaries, remora_up/down
case "$RATE_MOD" in ''|*[!0-9]*) die "--rate-moderate needs a whole number of req/s" ;; esac

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables): sudo bench/run.sh"

# --------------------------------------------------------------------------
# Tools (idempotent install)
# --------------------------------------------------------------------------
NGX_STREAM_SO=""
find_stream_module() {
    local d
    for d in /usr/lib/nginx/modules /usr/lib64/nginx/modules /usr/share/nginx/modules; do
        if [ -f "$d/ngx_stream_module.so" ]; then NGX_STREAM_SO="$d/ngx_stream_module.so"; return 0; fi
    done
    # A build with the stream module compiled in needs no load_module.
    nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)' && return 0
    return 1
}

ensure_tools() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v iperf3 >/dev/null || pkgs+=(iperf3)
    command -v nginx >/dev/null || pkgs+=(nginx)
    find_stream_module 2>/dev/null || pkgs+=(libnginx-mod-stream)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v h2load >/dev/null || pkgs+=(nghttp2-client)
    command -v ip >/dev/null || pkgs+=(iproute2)
    command -v ss >/dev/null || pkgs+=(iproute2)
    command -v iptables >/dev/null || pkgs+=(iptables)
    command -v setpriv >/dev/null || pkgs+=(util-linux)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v python3 >/dev/null || pkgs+=(python3)
    if [ ${#pkgs[@]} -gt 0 ]; then
        [ "$INSTALL" = 1 ] || die "missing tools (${pkgs[*]}) and --no-install given"
        command -v apt-get >/dev/null || die "missing tools (${pkgs[*]}) and no apt-get"
        log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
        # A fresh nginx/haproxy package may start its own service on the host;
        # it does not matter here (ours run inside the namespaces).
    fi
    find_stream_module || die "nginx stream module not found (libnginx-mod-stream)"
}
ensure_tools

# --------------------------------------------------------------------------
# Binaries (built once, then copied), work dirs
# --------------------------------------------------------------------------
stage_binaries
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-$BENCH/out/$STAMP}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

rss_sampler() {           # rss_sampler OUTFILE PID...: max RSS until killed
    local out="$1" max=0 v; shift
    while :; do
        v=$(rss_kb "$@")
        [ "$v" -gt "$max" ] && { max=$v; echo "$max" >"$out"; }
        sleep 0.2
    done
}

# --------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------
start_origins() {
    start_bg "$OUT/iperf3-server.log" ip netns exec "$NS_S" iperf3 -s -B "$IP_S" -p "$IPERF_PORT"
    wait_listen "$NS_S" "$IPERF_PORT" "$BG_PID" || die "iperf3 server did not start"
    start_origin_nginx
}

# --------------------------------------------------------------------------
# Scenarios. Each has a start function (sets PROXY_PIDS: the proxy's PIDs,
# empty for none) and a stop function, and the targets the client uses.
# To add a remora configuration, use --variant or add a line to SCENARIOS.
# --------------------------------------------------------------------------
PROXY_PIDS=""
CUR_LOG=""

none_start() { PROXY_PIDS=""; }
none_stop() { :; }

# remora_start NAME [PROXY ARGS...]: capture the client namespace and run the
# proxy as uid 1337, as the sidecar would.
remora_start() {
    local name="$1"; shift
    CUR_LOG="$OUT/$name-proxy.r$ROUND.log"
    remora_up "$OUT/$name-init.log" "$CUR_LOG" "$@"
}
remora_stop() { remora_down "$OUT/$1-init.log" "$OUT/$1-metrics.r$ROUND.txt"; }

nginx_start() {           # nginx_start NAME stream|http
    local name="$1" mode="$2" d="$T/ngx/$1"
    mkdir -p "$d"
    {
        [ "$mode" = stream ] && [ -n "$NGX_STREAM_SO" ] && echo "load_module $NGX_STREAM_SO;"
        cat <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $OUT/$name.err warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
EOF
        if [ "$mode" = stream ]; then
            cat <<EOF
stream {
  server { listen 127.0.0.1:8201; proxy_pass $IP_S:$IPERF_PORT; }
  server { listen 127.0.0.1:8080; proxy_pass $IP_S:$HTTP_PORT; }
}
EOF
        else
            cat <<EOF
http {
$(nginx_temp_paths "$d")
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream origin { server $IP_S:$HTTP_PORT; keepalive 256; }   # >= 16 conns x 10 h2 streams: no upstream churn
  server {
    listen 127.0.0.1:8081;
    # h2c from the client; nginx cannot proxy to an HTTP/2 upstream, so
    # upstream stays HTTP/1.1 (reported as "nginx-http (h2 to h1)").
    listen 127.0.0.1:8082 http2;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
        fi
    } >"$d/nginx.conf"
    start_bg "$OUT/$name.log" ip netns exec "$NS_C" nginx -e "$OUT/$name.err" -c "$d/nginx.conf"
    PROXY_PIDS="$BG_PID"
    if [ "$mode" = stream ]; then wait_listen "$NS_C" 8080 "$BG_PID" || die "$name did not start; see $OUT/$name.log"
    else wait_listen "$NS_C" 8081 "$BG_PID" || die "$name did not start; see $OUT/$name.log"; fi
}
nginx_stop() { stop_pid "$PROXY_PIDS"; }

haproxy_start() {         # haproxy_start NAME tcp|http
    local name="$1" mode="$2" cfg="$T/$1.cfg"
    {
        cat <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode $mode
  timeout connect 5s
  timeout client 300s
  timeout server 300s
EOF
        if [ "$mode" = tcp ]; then
            cat <<EOF
frontend iperf
  bind 127.0.0.1:9201
  default_backend iperf
backend iperf
  server origin $IP_S:$IPERF_PORT
frontend web
  bind 127.0.0.1:9080
  default_backend web
backend web
  server origin $IP_S:$HTTP_PORT
EOF
        else
            cat <<EOF
  option http-keep-alive
  http-reuse always
frontend web
  bind 127.0.0.1:9081
  default_backend web
backend web
  server origin $IP_S:$HTTP_PORT
# HTTP/2 end to end: h2c from the client, h2c to the origin's :$H2_PORT
frontend web-h2
  bind 127.0.0.1:9082 proto h2
  default_backend web-h2
backend web-h2
  server origin-h2 $IP_S:$H2_PORT proto h2
EOF
        fi
    } >"$cfg"
    start_bg "$OUT/$name.log" ip netns exec "$NS_C" haproxy -db -f "$cfg"
    PROXY_PIDS="$BG_PID"
    if [ "$mode" = tcp ]; then wait_listen "$NS_C" 9080 "$BG_PID" || die "$name did not start; see $OUT/$name.log"
    else wait_listen "$NS_C" 9081 "$BG_PID" || die "$name did not start; see $OUT/$name.log"; fi
}
haproxy_stop() { stop_pid "$PROXY_PIDS"; }

write_remora_http_config

write_remora_plugins_config plugins 0
write_remora_plugins_config jwt 1
BENCH_JWT=$(bench_jwt)

write_mesh_configs
MESH_A_PID=""
MESH_B_PID=""
mesh_start() {            # mesh_start plain|mtls: B (server ns), then A (client ns)
    local kind="$1" name="mesh-$1" n=100
    mesh_ca_up
    CUR_LOG="$OUT/$name-proxy.r$ROUND.log"
    # B: capture the server ns (not the CA's port), proxy as uid 1337.
    in_s "$INIT_BIN" --exclude-inbound-ports 15012 >>"$OUT/$name-init-b.log" 2>&1 || die "remora-init (server ns) failed"
    # shellcheck disable=SC2046
    start_bg "$OUT/$name-proxy-b.r$ROUND.log" env RUST_LOG="${RUST_LOG:-info}" ip netns exec "$NS_S" \
        setpriv --reuid=1337 --regid=1337 --clear-groups -- "$PROXY_BIN" --workers 1 \
        --config "$T/mesh/server.yaml" $(mesh_identity_args "$T/mesh/token-b" 127.0.0.1)
    MESH_B_PID=$BG_PID
    until in_s curl -sf -o /dev/null http://127.0.0.1:15020/ready; do
        kill -0 "$MESH_B_PID" 2>/dev/null || die "server sidecar exited; see $OUT/$name-proxy-b.r$ROUND.log"
        n=$((n - 1)); [ $n -gt 0 ] || die "server sidecar not ready after 10 s"
        sleep 0.1
    done
    # shellcheck disable=SC2046
    remora_up "$OUT/$name-init.log" "$CUR_LOG" --config "$T/mesh/client-$kind.yaml" \
        $(mesh_identity_args "$T/mesh/token-a" "$IP_S") $REMORA_PROXY_ARGS
    MESH_A_PID=$PROXY_PIDS
    PROXY_PIDS="$MESH_A_PID $MESH_B_PID"
    sleep 0.5
    record "$name" rss_idle_a_kb "$(rss_kb "$MESH_A_PID")"
    record "$name" rss_idle_b_kb "$(rss_kb "$MESH_B_PID")"
}
mesh_stop() {
    local name="mesh-$1"
    in_s curl -sf http://127.0.0.1:15020/metrics >"$OUT/$name-metrics-b.r$ROUND.txt" 2>/dev/null || true
    PROXY_PIDS="$MESH_A_PID"
    remora_down "$OUT/$name-init.log" "$OUT/$name-metrics.r$ROUND.txt"
    stop_pid "$MESH_B_PID"
    in_s "$INIT_BIN" --cleanup >>"$OUT/$name-init-b.log" 2>&1 || die "remora-init --cleanup (server ns) failed"
}
# Two-sidecar extras: each sidecar's RSS idle and under load, and new
# connections per second through a `tcp` service (each one a new
# connection, and for mesh-mtls a new mTLS handshake, between the sidecars).
measure_mesh() {          # measure_mesh SCENARIO
    local sc="$1" f="$OUT/$1-wrk-rss.r$ROUND.txt" a=0 b=0 v i
    timeout 25 ip netns exec "$NS_C" wrk -t"$WRK_T" -c"$WRK_C" -d5s "http://$IP_S:$HTTP_PORT/" >"$f" 2>&1 &
    local wrk=$!
    for i in $(seq 20); do
        sleep 0.2
        v=$(rss_kb "$MESH_A_PID"); [ "$v" -gt "$a" ] && a=$v
        v=$(rss_kb "$MESH_B_PID"); [ "$v" -gt "$b" ] && b=$v
    done
    wait "$wrk" 2>/dev/null || true
    record "$sc" rss_load_a_kb "$a"
    record "$sc" rss_load_b_kb "$b"
    local cf="$OUT/$sc-tcp-close.r$ROUND.txt" hs0 hs1
    local cmd=(wrk -t"$WRK_T" -c"$WRK_C" -d"${CLOSE_D}s" -H "Connection: close" "http://$IP_S:8080/")
    shcmd "${cmd[@]}" >"$OUT/$sc-tcp-close.cmd"
    hs0=$(in_s curl -sf http://127.0.0.1:15020/metrics | awk '/^remora_tls_handshakes_total\{direction="inbound",result="ok"\}/{print $2}')
    timeout $((CLOSE_D + 20)) ip netns exec "$NS_C" "${cmd[@]}" >"$cf" 2>&1 || true
    hs1=$(in_s curl -sf http://127.0.0.1:15020/metrics | awk '/^remora_tls_handshakes_total\{direction="inbound",result="ok"\}/{print $2}')
    record "$sc" newconn_rps "$(awk '/^Requests\/sec:/{print $2}' "$cf")"
    record "$sc" newconn_errors "$(wrk_errors "$cf")"
    record "$sc" mtls_handshakes "$(awk -v a="${hs0:-0}" -v b="${hs1:-0}" 'BEGIN{print b - a}')"
}

# name | TCP target (- for none) | HTTP host:port | fixed-rate latency (1: yes) |
#   HTTP/2 h2c host:port (- for none) | start command | stop command | label
SCENARIOS=(
    "direct|$IP_S:$IPERF_PORT|$IP_S:$HTTP_PORT|1|$IP_S:$H2_PORT|none_start|none_stop|no proxy"
    "remora|$IP_S:$IPERF_PORT|$IP_S:$HTTP_PORT|0|-|remora_start remora $REMORA_PROXY_ARGS|remora_stop remora|remora-proxy --workers 1${REMORA_PROXY_ARGS:+ $REMORA_PROXY_ARGS}, iptables capture, no mesh config: the origin is an unknown destination, passed through as bytes (L4)"
    "remora-http|-|$IP_S:$HTTP_PORT|1|$IP_S:$H2_PORT|remora_start remora-http --config $T/remora-http/mesh.yaml $REMORA_PROXY_ARGS|remora_stop remora-http|remora-proxy --workers 1 --config mesh.yaml${REMORA_PROXY_ARGS:+ $REMORA_PROXY_ARGS}, iptables capture; the origin is a mesh service on an HTTP port, so requests go through the HTTP data plane: backend, balanced endpoint, pooled upstream connections (L7); HTTP/2: a second service port ($H2_PORT) whose backend is the origin's h2c port, h2 on both legs"
)
SCENARIOS+=(
    "remora-plugins|-|$IP_S:$HTTP_PORT?apikey=$BENCH_KEY|1|$IP_S:$H2_PORT?apikey=$BENCH_KEY|remora_start remora-plugins --config $T/remora-plugins/mesh.yaml $REMORA_PROXY_ARGS|remora_stop remora-plugins|remora-http's config with key-auth + limit-count (local, limit never reached) + prometheus + request-id on the service"
    "remora-jwt|-|$IP_S:$HTTP_PORT?apikey=$BENCH_KEY&jwt=$BENCH_JWT|1|$IP_S:$H2_PORT?apikey=$BENCH_KEY&jwt=$BENCH_JWT|remora_start remora-jwt --config $T/remora-jwt/mesh.yaml $REMORA_PROXY_ARGS|remora_stop remora-jwt|remora-plugins with jwt-auth (RS256, one token: verified once, then remembered)"
)
SCENARIOS+=(
    "mesh-plain|-|$IP_S:$HTTP_PORT|1|-|mesh_start plain|mesh_stop plain|two sidecars (client's and server's, each --workers 1), plaintext between them; CPU and RSS are both sidecars together"
    "mesh-mtls|-|$IP_S:$HTTP_PORT|1|-|mesh_start mtls|mesh_stop mtls|two sidecars, mesh mTLS between them (TLS 1.3, HTTP/2 hop, certificates from remora-cp); CPU and RSS are both sidecars together"
)
for v in "${VARIANTS[@]}"; do
    vn="remora-${v%%=*}"; va="${v#*=}"
    SCENARIOS+=("$vn|$IP_S:$IPERF_PORT|$IP_S:$HTTP_PORT|0|-|remora_start $vn $va|remora_stop $vn|remora-proxy --workers 1 $va, iptables capture")
done
SCENARIOS+=(
    "nginx-stream|127.0.0.1:8201|127.0.0.1:8080|0|-|nginx_start nginx-stream stream|nginx_stop|nginx stream{} (L4), 1 worker"
    "haproxy-tcp|127.0.0.1:9201|127.0.0.1:9080|0|-|haproxy_start haproxy-tcp tcp|haproxy_stop|haproxy mode tcp (L4), nbthread 1"
    "nginx-http|-|127.0.0.1:8081|1|127.0.0.1:8082|nginx_start nginx-http http|nginx_stop|nginx http proxy (L7), upstream keepalive, 1 worker; HTTP/2: h2c listener on :8082, HTTP/1.1 upstream (nginx cannot proxy to an h2 upstream)"
    "haproxy-http|-|127.0.0.1:9081|1|127.0.0.1:9082|haproxy_start haproxy-http http|haproxy_stop|haproxy mode http (L7), http-reuse always, nbthread 1; HTTP/2: bind :9082 proto h2, server proto h2 to the origin's h2c port"
)

selected() {
    [ -z "$ONLY" ] && return 0
    [ "$1" = direct ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

# --------------------------------------------------------------------------
# Measurements. Results go to $OUT/raw.tsv: scenario round metric value.
# --------------------------------------------------------------------------
RAW="$OUT/raw.tsv"
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$ROUND" "$2" "$3" >>"$RAW"; }

measure_iperf() {         # measure_iperf SCENARIO HOST:PORT
    local sc="$1" host="${2%:*}" port="${2##*:}" f="$OUT/$1-iperf.r$ROUND.json" g
    local cmd=(iperf3 -c "$host" -p "$port" -t "$IPERF_T" -P 1 -J --connect-timeout 3000)
    shcmd "${cmd[@]}" >"$OUT/$sc-iperf.cmd"
    timeout $((IPERF_T + 20)) ip netns exec "$NS_C" "${cmd[@]}" >"$f" 2>&1 || true
    g=$(python3 - "$f" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception:
    print("NA")
EOF
)
    [ "$g" = NA ] && log "  $sc: iperf3 failed; see $f"
    record "$sc" tcp_gbps "$g"
}

# A scenario's HTTP target is HOST:PORT, optionally followed by ?QUERY (the
# plugin scenarios authenticate with query parameters): the URL its load uses.
url_of() { local hp="${1%%\?*}"; echo "http://$hp/${1#"$hp"}"; }

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000} printf "%.3f", v}'; }

wrk_errors() {            # socket errors + non-2xx/3xx responses in a wrk output
    awk '/Socket errors:/{gsub(/,/,""); s+=$4+$6+$8+$10} /Non-2xx or 3xx/{s+=$NF} END{print s+0}' "$1"
}

measure_http() {          # measure_http SCENARIO HOST:PORT
    local sc="$1" url; url=$(url_of "$2"); local f="$OUT/$1-wrk.r$ROUND.txt" sampler c0 c1
    local cmd=(wrk -t"$WRK_T" -c"$WRK_C" -d"${WRK_D}s" --latency "$url")
    shcmd "${cmd[@]}" >"$OUT/$sc-wrk.cmd"
    timeout $((WARM_D + 15)) ip netns exec "$NS_C" wrk -t1 -c"$WRK_C" -d"${WARM_D}s" "$url" >/dev/null 2>&1 || true
    if [ -n "$PROXY_PIDS" ]; then
        rm -f "$T/rss.max"
        rss_sampler "$T/rss.max" $PROXY_PIDS &
        sampler=$!
        c0=$(cpu_ticks $PROXY_PIDS)
    fi
    timeout $((WRK_D + 20)) ip netns exec "$NS_C" "${cmd[@]}" >"$f" 2>&1 || true
    if [ -n "$PROXY_PIDS" ]; then
        c1=$(cpu_ticks $PROXY_PIDS)
        kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
        record "$sc" rss_load_kb "$(cat "$T/rss.max" 2>/dev/null || echo NA)"
    fi
    local rps reqs p50 p99
    rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
    reqs=$(awk '/requests in/{print $1}' "$f")
    p50=$(awk '/^ +50%/{print $2}' "$f" | to_ms)
    p99=$(awk '/^ +99%/{print $2}' "$f" | to_ms)
    [ -n "$rps" ] || { log "  $sc: wrk failed; see $f"; rps=NA; p50=NA; p99=NA; }
    record "$sc" http_rps "$rps"
    record "$sc" p50_ms "${p50:-NA}"
    record "$sc" p99_ms "${p99:-NA}"
    record "$sc" http_errors "$(wrk_errors "$f")"
    if [ -n "$PROXY_PIDS" ] && [ -n "${reqs:-}" ] && [ "${reqs:-0}" -gt 0 ]; then
        # proxy CPU time per request, in microseconds
        record "$sc" cpu_us_per_req "$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN{printf "%.2f", c / hz * 1e6 / n}')"
    fi
}

measure_close() {         # new connection per request: wrk with Connection: close
    local sc="$1" url; url=$(url_of "$2"); local f="$OUT/$1-wrk-close.r$ROUND.txt"
    local cmd=(wrk -t"$WRK_T" -c"$WRK_C" -d"${CLOSE_D}s" -H "Connection: close" "$url")
    shcmd "${cmd[@]}" >"$OUT/$sc-wrk-close.cmd"
    timeout $((CLOSE_D + 20)) ip netns exec "$NS_C" "${cmd[@]}" >"$f" 2>&1 || true
    local rps
    rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
    record "$sc" close_rps "${rps:-NA}"
    record "$sc" close_errors "$(wrk_errors "$f")"
}

# h2load: per-request times from --log-file (start µs, status, duration µs);
# h2load itself prints only min/max/mean/sd. Prints "n bad p50_ms p99_ms".
h2load_pcts() {
    python3 - "$1" <<'EOF'
import sys
d = []; bad = 0
try:
    for line in open(sys.argv[1]):
        f = line.split("\t")
        if len(f) < 3: continue
        if not f[1].startswith("2"): bad += 1
        d.append(int(f[2]))
except OSError:
    pass
if not d:
    print("0 0 NA NA"); sys.exit()
d.sort()
pct = lambda p: d[min(len(d) - 1, max(0, int(-(-p * len(d) // 100)) - 1))] / 1000.0   # nearest rank
print("%d %d %.3f %.3f" % (len(d), bad, pct(50), pct(99)))
EOF
}
# Open loop: h2load --rps sends each connection's requests on a timer, at a
# fixed rate, whether or not earlier responses came back. HTTP/1.1 allows one
# request in flight per connection, so a request that falls due while its
# connection is busy waits in h2load, and its time is measured from when it
# is sent, not from when it fell due: when a proxy cannot sustain the rate the
# achieved rate falls short and the latency is that of a saturated proxy (see
# README). The achieved rate is recorded next to the target.
measure_fixed() {         # measure_fixed SCENARIO HOST:PORT RATE TAG
    local sc="$1" url; url=$(url_of "$2"); local rate="$3" tag="$4" per f="$OUT/$1-h1rate-$4.r$ROUND.txt" st pc
    local rps errs n bad p50 p99
    per=$(( (rate + H2L_C - 1) / H2L_C ))   # --rps is per connection
    local cmd=(h2load --h1 -c "$H2L_C" -t 1 --rps="$per" -D "$H2L_D" --warm-up-time=1 "$url")
    shcmd "${cmd[@]}" >"$OUT/$sc-h1rate-$tag.cmd"
    rm -f "$T/h2load.log"
    timeout $((H2L_D + 25)) ip netns exec "$NS_C" "${cmd[@]}" --log-file="$T/h2load.log" >"$f" 2>&1 || true
    st=$(h2load_summary "$f"); pc=$(h2load_pcts "$T/h2load.log")
    rm -f "$T/h2load.log"
    read -r rps errs <<<"$st"
    read -r n bad p50 p99 <<<"$pc"
    [ "$rps" = NA ] && log "  $sc: h2load (fixed rate $tag) failed; see $f"
    record "$sc" "fr_${tag}_target" $((per * H2L_C))
    record "$sc" "fr_${tag}_rps" "$rps"
    record "$sc" "fr_${tag}_p50_ms" "$p50"
    record "$sc" "fr_${tag}_p99_ms" "$p99"
    record "$sc" "fr_${tag}_errors" "$((errs + bad))"
}

measure_h2() {            # measure_h2 SCENARIO HOST:PORT: closed-loop HTTP/2 (h2c prior knowledge)
    local sc="$1" url; url=$(url_of "$2"); local f="$OUT/$1-h2.r$ROUND.txt" st pc c0 c1
    local rps errs n bad p50 p99
    local cmd=(h2load -c "$H2L_C" -m "$H2L_M" -t 1 -D "$H2L_D" --warm-up-time=1 "$url")
    shcmd "${cmd[@]}" >"$OUT/$sc-h2.cmd"
    rm -f "$T/h2load.log"
    [ -n "$PROXY_PIDS" ] && c0=$(cpu_ticks $PROXY_PIDS)
    timeout $((H2L_D + 25)) ip netns exec "$NS_C" "${cmd[@]}" --log-file="$T/h2load.log" >"$f" 2>&1 || true
    [ -n "$PROXY_PIDS" ] && c1=$(cpu_ticks $PROXY_PIDS)
    st=$(h2load_summary "$f"); pc=$(h2load_pcts "$T/h2load.log")
    rm -f "$T/h2load.log"
    read -r rps errs <<<"$st"
    read -r n bad p50 p99 <<<"$pc"
    if ! grep -q '^Application protocol: h2c' "$f"; then
        log "  $sc: h2load did not speak h2c; see $f"; rps=NA; p50=NA; p99=NA; errs=$((errs + 1))
    fi
    [ "$rps" = NA ] && log "  $sc: h2load (HTTP/2) failed; see $f"
    record "$sc" h2_rps "$rps"
    record "$sc" h2_p50_ms "$p50"
    record "$sc" h2_p99_ms "$p99"
    record "$sc" h2_errors "$((errs + bad))"
    record "$sc" h2_logged "$n"
    if [ -n "$PROXY_PIDS" ] && [ "$rps" != NA ]; then
        # h2load counts (and logs) the main-duration requests only, but the CPU
        # window also holds the 1 s warm-up: requests = req/s * (D + 1).
        record "$sc" h2_cpu_us_per_req "$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v r="$rps" -v d="$H2L_D" 'BEGIN{printf "%.2f", c / hz * 1e6 / (r * (d + 1))}')"
    fi
}

# The rate at half of direct's closed-loop capacity, from direct's wrk run in
# this round (direct always runs first in a round).
half_direct_rate() {
    awk -F'\t' -v r="$ROUND" '$1=="direct" && $2==r && $3=="http_rps" && $4!="NA" {printf "%d\n", $4 / 2}' "$RAW" | tail -1
}

measure_idle_conns() {    # RSS with IDLE_N idle keep-alive connections through the proxy
    local sc="$1" hp="${2%%\?*}"; local host="${hp%:*}" port="${hp##*:}" f="$OUT/$1-idle.r$ROUND.log" pid n=300 max=0 v i
    local path="/"; [ "$hp" = "$2" ] || path="/?${2#*\?}"   # the scenario's query (e.g. its apikey)
    start_bg "$f" ip netns exec "$NS_C" python3 "$BENCH/idle_conns.py" "$host" "$port" "$IDLE_N" --hold 60 --path "$path"
    pid=$BG_PID
    until grep -q '^READY' "$f" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || break
        n=$((n - 1)); [ $n -gt 0 ] || break
        sleep 0.1
    done
    if grep -q '^READY' "$f"; then
        sleep 1
        for i in 1 2 3 4 5; do v=$(rss_kb $PROXY_PIDS); [ "$v" -gt "$max" ] && max=$v; sleep 0.2; done
        record "$sc" rss_idle_conns_kb "$max"
        record "$sc" idle_conns_open "$(awk '/^READY/{print $2}' "$f")"
        record "$sc" idle_conns_failed "$(awk '/^READY/{print $4}' "$f")"
    else
        log "  $sc: idle connections did not open; see $f"
        record "$sc" rss_idle_conns_kb NA
    fi
    stop_pid "$pid"
}

run_scenario() {          # run_scenario "name|tcp|http|start|stop|label"
    local sc tcp http start stop label
    IFS='|' read -r sc tcp http fr h2 start stop label <<<"$1"
    selected "$sc" || return 0
    log "round $ROUND: $sc"
    # shellcheck disable=SC2086
    $start
    sleep 0.5
    [ -n "$PROXY_PIDS" ] && record "$sc" rss_idle_kb "$(rss_kb $PROXY_PIDS)"
    [ "$tcp" != - ] && measure_iperf "$sc" "$tcp"
    measure_http "$sc" "$http"
    measure_close "$sc" "$http"
    if [ "$fr" = 1 ]; then
        local half; half=$(half_direct_rate)
        if [ -n "$half" ] && [ "$half" -gt 0 ]; then measure_fixed "$sc" "$http" "$half" half
        else log "  $sc: no direct capacity in this round; skipping the half-capacity rate"; fi
        measure_fixed "$sc" "$http" "$RATE_MOD" mod
    fi
    [ "$h2" != - ] && measure_h2 "$sc" "$h2"
    # Before the idle connections, which leave memory allocated.
    case "$sc" in mesh-*) measure_mesh "$sc" ;; esac
    [ -n "$PROXY_PIDS" ] && measure_idle_conns "$sc" "$http"
    # shellcheck disable=SC2086
    if [ -n "$PROXY_PIDS" ] && ! kill -0 $PROXY_PIDS 2>/dev/null; then
        die "$sc: the proxy died during the run"
    fi
    # shellcheck disable=SC2086
    $stop
    PROXY_PIDS=""
}

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
median() {                # median SCENARIO METRIC -> value or NA
    awk -F'\t' -v s="$1" -v m="$2" '$1==s && $3==m && $4!="NA" {print $4}' "$RAW" | sort -g |
        awk '{v[NR]=$1} END{if (NR==0) print "NA"; else if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2}'
}
total() { awk -F'\t' -v s="$1" -v m="$2" '$1==s && $3==m && $4!="NA" {t+=$4} END{print t+0}' "$RAW"; }
ratio() {                 # ratio VALUE BASE
    awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA" || b=="NA" || b+0==0 || a=="") print "-"; else printf "%.2fx", a/b }'
}
fmt() {                   # fmt VALUE DECIMALS
    awk -v a="$1" -v d="$2" 'BEGIN{ if (a=="NA" || a=="") print "-"; else printf "%." d "f", a }'
}
diffms() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA" || b=="NA" || a=="" || b=="") print "-"; else printf "%+.3f", a-b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA" || b=="NA" || a=="" || b+0==0) print "-"; else printf "%.0f %%", 100*a/b }'; }
mib() { awk -v a="$1" 'BEGIN{ if (a=="NA" || a=="") print "-"; else printf "%.1f", a/1024 }'; }

mesh_report() {           # the two-sidecar table, when both mesh scenarios ran
    selected mesh-plain && selected mesh-mtls || return 0
    local p m
    p=$(median mesh-plain http_rps); m=$(median mesh-mtls http_rps)
    echo
    echo "**Two sidecars, plaintext vs mTLS** (client → client's sidecar → server's sidecar → origin; wrk keep-alive as above). \"mTLS/plain\" is mesh-mtls's req/s over mesh-plain's in the same run (target ≥ 0.85); CPU is both sidecars together per request; RSS per sidecar (A: client's, B: server's): idle right after start, and the most seen under a 5 s wrk load. New connections: wrk with \`Connection: close\` to a \`tcp\` service port, so each request is a new connection from A to B (for mesh-mtls, a new mTLS handshake; handshakes counted by B's \`remora_tls_handshakes_total\`)."
    echo
    echo "| scenario | req/s | mTLS/plain | p50 ms | p99 ms | fixed rate (mod): p50 / p99 ms | CPU µs/req (both) | RSS idle A / B MiB | RSS load A / B MiB | new conn/s | mTLS handshakes | errors |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    local sc
    for sc in mesh-plain mesh-mtls; do
        local r; r=$(median "$sc" http_rps)
        echo "| $sc | $(fmt "$r" 0) | $(ratio "$r" "$p") | $(fmt "$(median "$sc" p50_ms)" 3) | $(fmt "$(median "$sc" p99_ms)" 3) | $(fmt "$(median "$sc" fr_mod_p50_ms)" 3) / $(fmt "$(median "$sc" fr_mod_p99_ms)" 3) | $(fmt "$(median "$sc" cpu_us_per_req)" 1) | $(mib "$(median "$sc" rss_idle_a_kb)") / $(mib "$(median "$sc" rss_idle_b_kb)") | $(mib "$(median "$sc" rss_load_a_kb)") / $(mib "$(median "$sc" rss_load_b_kb)") | $(fmt "$(median "$sc" newconn_rps)" 0) | $(total "$sc" mtls_handshakes) | $(( $(total "$sc" http_errors) + $(total "$sc" newconn_errors) )) |"
    done
    echo
    echo "mTLS keeps $(pct "$m" "$p") of plaintext req/s."
}

report() {
    local md="$OUT/results.md" s sc tcp http start stop label
    local d_tcp d_rps d_p50 d_p99 d_close
    d_tcp=$(median direct tcp_gbps); d_rps=$(median direct http_rps)
    d_p50=$(median direct p50_ms); d_p99=$(median direct p99_ms); d_close=$(median direct close_rps)
    {
        echo "### Run $STAMP"
        echo
        header_lines
        echo "- rounds: $ROUNDS (scenarios interleaved per round; figures are medians); run took $(( $(date +%s) - T0 )) s; load average before the run: $LOAD0"
        echo "- tools: $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(iperf3 -v 2>&1 | head -1 | awk '{print $1, $2}'), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>&1 | head -1 | awk '{print $1, $2, $3}')"
        echo "- TCP: \`$(cat "$OUT/direct-iperf.cmd")\` (client ns → server ns; target differs per scenario)"
        echo "- HTTP keep-alive: \`$(cat "$OUT/direct-wrk.cmd")\` (closed loop: wrk sends the next request when the last one returns)"
        echo "- HTTP new connection per request: \`$(cat "$OUT/direct-wrk-close.cmd")\`"
        echo "- idle: $IDLE_N keep-alive connections (one GET each, then idle) via \`bench/idle_conns.py\`"
        [ -f "$OUT/direct-h1rate-mod.cmd" ] && echo "- HTTP/1.1 fixed rate (open loop): \`$(cat "$OUT/direct-h1rate-mod.cmd")\` (--rps is per connection: ×$H2L_C = $(( (RATE_MOD + H2L_C - 1) / H2L_C * H2L_C )) req/s), and the same at half of direct's wrk req/s in that round; p50/p99 from h2load's --log-file"
        [ -f "$OUT/direct-h2.cmd" ] && echo "- HTTP/2 (h2c, prior knowledge): \`$(cat "$OUT/direct-h2.cmd")\` (closed loop, $H2L_M streams per connection); p50/p99 from --log-file"
        echo
        echo "Ratios are against **direct** in the same run. Throughput and req/s: higher is better. Latency: lower is better."
        echo
        echo "| scenario | TCP Gbit/s | HTTP req/s | p50 ms | p99 ms | conn-per-req req/s | proxy CPU µs/req | RSS idle MiB | RSS under load MiB | RSS $IDLE_N idle conns MiB | errors |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        for s in "${SCENARIOS[@]}"; do
            IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
            selected "$sc" || continue
            local v_tcp v_rps v_p50 v_p99 v_close errs
            v_tcp=$(median "$sc" tcp_gbps); v_rps=$(median "$sc" http_rps)
            v_p50=$(median "$sc" p50_ms); v_p99=$(median "$sc" p99_ms); v_close=$(median "$sc" close_rps)
            errs=$(( $(total "$sc" http_errors) + $(total "$sc" close_errors) + $(total "$sc" idle_conns_failed) ))
            local c_tcp="-" c_rps c_p50 c_p99 c_close
            if [ "$tcp" != - ]; then c_tcp="$(fmt "$v_tcp" 2) ($(ratio "$v_tcp" "$d_tcp"))"; fi
            c_rps="$(fmt "$v_rps" 0) ($(ratio "$v_rps" "$d_rps"))"
            c_p50="$(fmt "$v_p50" 3) ($(ratio "$v_p50" "$d_p50"))"
            c_p99="$(fmt "$v_p99" 3) ($(ratio "$v_p99" "$d_p99"))"
            c_close="$(fmt "$v_close" 0) ($(ratio "$v_close" "$d_close"))"
            if [ "$sc" = direct ]; then
                echo "| direct | $(fmt "$v_tcp" 2) | $(fmt "$v_rps" 0) | $(fmt "$v_p50" 3) | $(fmt "$v_p99" 3) | $(fmt "$v_close" 0) | - | - | - | - | $errs |"
            else
                echo "| $sc | $c_tcp | $c_rps | $c_p50 | $c_p99 | $c_close | $(fmt "$(median "$sc" cpu_us_per_req)" 1) | $(mib "$(median "$sc" rss_idle_kb)") | $(mib "$(median "$sc" rss_load_kb)") | $(mib "$(median "$sc" rss_idle_conns_kb)") | $errs |"
            fi
        done
        local any_fr=0 any_h2=0
        for s in "${SCENARIOS[@]}"; do
            IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
            selected "$sc" || continue
            [ "$fr" = 1 ] && any_fr=1
            [ "$h2" != - ] && any_h2=1
        done
        if [ "$any_fr" = 1 ]; then
            local dh99 dm99
            dh99=$(median direct fr_half_p99_ms); dm99=$(median direct fr_mod_p99_ms)
            echo
            echo "**HTTP/1.1 keep-alive at a fixed rate (open loop, h2load --h1 -c$H2L_C --rps).** \"half\": half of direct's wrk req/s in the same round (the issue's target rate); \"moderate\": $RATE_MOD req/s, which every peer sustains. \"achieved\" below ~97 % of the target means the proxy could not keep up: its latency is then that of a saturated proxy, not of the offered rate. \"added p99\" is the scenario's p99 minus direct's at the same rate."
            echo
            echo "| scenario | half: target req/s | half: achieved req/s | half: p50 ms | half: p99 ms | half: added p99 ms | moderate: achieved req/s | moderate: p50 ms | moderate: p99 ms | moderate: added p99 ms | errors |"
            echo "|---|---|---|---|---|---|---|---|---|---|---|"
            for s in "${SCENARIOS[@]}"; do
                IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
                selected "$sc" && [ "$fr" = 1 ] || continue
                local ht ha hp50 hp99 ma mp50 mp99 fe
                ht=$(median "$sc" fr_half_target); ha=$(median "$sc" fr_half_rps)
                hp50=$(median "$sc" fr_half_p50_ms); hp99=$(median "$sc" fr_half_p99_ms)
                ma=$(median "$sc" fr_mod_rps); mp50=$(median "$sc" fr_mod_p50_ms); mp99=$(median "$sc" fr_mod_p99_ms)
                fe=$(( $(total "$sc" fr_half_errors) + $(total "$sc" fr_mod_errors) ))
                local hadd="-" madd="-"
                [ "$sc" != direct ] && hadd=$(diffms "$hp99" "$dh99") && madd=$(diffms "$mp99" "$dm99")
                echo "| $sc | $(fmt "$ht" 0) | $(fmt "$ha" 0) ($(pct "$ha" "$ht")) | $(fmt "$hp50" 3) | $(fmt "$hp99" 3) | $hadd | $(fmt "$ma" 0) ($(pct "$ma" "$(median "$sc" fr_mod_target)")) | $(fmt "$mp50" 3) | $(fmt "$mp99" 3) | $madd | $fe |"
            done
        fi
        if [ "$any_h2" = 1 ]; then
            local dh2; dh2=$(median direct h2_rps)
            echo
            echo "**HTTP/2 (h2c with prior knowledge), closed loop: h2load -c$H2L_C -m$H2L_M.** Ratios against direct over h2c. nginx cannot proxy to an HTTP/2 upstream: its row is h2 from the client and HTTP/1.1 (keepalive) to the origin."
            echo
            echo "| scenario | h2 req/s | p50 ms | p99 ms | proxy CPU µs/req | errors |"
            echo "|---|---|---|---|---|---|"
            for s in "${SCENARIOS[@]}"; do
                IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
                selected "$sc" && [ "$h2" != - ] || continue
                local v name="$sc"
                [ "$sc" = nginx-http ] && name="nginx-http (h2 → h1 upstream)"
                v=$(median "$sc" h2_rps)
                if [ "$sc" = direct ]; then
                    echo "| direct | $(fmt "$v" 0) | $(fmt "$(median "$sc" h2_p50_ms)" 3) | $(fmt "$(median "$sc" h2_p99_ms)" 3) | - | $(total "$sc" h2_errors) |"
                else
                    echo "| $name | $(fmt "$v" 0) ($(ratio "$v" "$dh2")) | $(fmt "$(median "$sc" h2_p50_ms)" 3) | $(fmt "$(median "$sc" h2_p99_ms)" 3) | $(fmt "$(median "$sc" h2_cpu_us_per_req)" 1) | $(total "$sc" h2_errors) |"
                fi
            done
        fi
        echo
        echo "Scenarios:"
        for s in "${SCENARIOS[@]}"; do
            IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
            selected "$sc" || continue
            echo "- **$sc**: $label; TCP target ${tcp}, HTTP target $http"
        done
        echo
        echo "RSS is VmRSS from /proc/PID/status (nginx: master + worker). \"errors\" counts wrk socket errors, non-2xx responses and failed idle connections over all rounds."
        local notes=""
        for s in "${SCENARIOS[@]}"; do
            IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
            case "$sc" in remora*) ;; *) continue ;; esac
            selected "$sc" || continue
            local warns merr
            warns=$(cat "$OUT/$sc"-proxy.r*.log 2>/dev/null | grep -cE ' (WARN|ERROR) ' || true)
            merr=$(cat "$OUT/$sc"-metrics.r*.txt 2>/dev/null | awk '/^remora_tcp_errors_total/{t+=$NF} END{print t+0}')
            notes+="- $sc: $warns WARN/ERROR lines in the proxy log; remora_tcp_errors_total summed over rounds: $merr"$'\n'
        done
        if [ -n "$notes" ]; then echo; echo "Proxy health:"; printf '%s' "$notes"; fi
        mesh_report
    } >"$md"

    echo
    echo "================ Remora bench: $STAMP ================"
    header_lines | sed -n 's/^- \(machine\|commit\|command\): /\1: /p'
    echo
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
        selected "$sc" || continue
        local v
        printf '%-14s' "$sc"
        if [ "$tcp" != - ]; then
            v=$(median "$sc" tcp_gbps)
            printf ' %7s Gbit/s (%s)' "$(fmt "$v" 2)" "$(ratio "$v" "$d_tcp")"
        else
            printf ' %7s %-16s' - ""
        fi
        v=$(median "$sc" http_rps)
        printf ' | %7s req/s (%s)' "$(fmt "$v" 0)" "$(ratio "$v" "$d_rps")"
        v=$(median "$sc" p99_ms)
        printf ' | p99 %s ms (%s)' "$(fmt "$v" 3)" "$(ratio "$v" "$d_p99")"
        if [ "$sc" != direct ]; then
            printf ' | RSS idle/load/%s conns %s/%s/%s MiB' "$IDLE_N" \
                "$(mib "$(median "$sc" rss_idle_kb)")" "$(mib "$(median "$sc" rss_load_kb)")" "$(mib "$(median "$sc" rss_idle_conns_kb)")"
        fi
        echo
    done
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r sc tcp http fr h2 start stop label <<<"$s"
        selected "$sc" || continue
        [ "$fr" = 1 ] || [ "$h2" != - ] || continue
        printf '%-14s' "$sc"
        [ "$fr" = 1 ] && printf ' | h1 @%s req/s: got %s, p99 %s ms | h1 @%s: p99 %s ms' \
            "$(fmt "$(median "$sc" fr_half_target)" 0)" "$(fmt "$(median "$sc" fr_half_rps)" 0)" "$(fmt "$(median "$sc" fr_half_p99_ms)" 3)" \
            "$RATE_MOD" "$(fmt "$(median "$sc" fr_mod_p99_ms)" 3)"
        [ "$h2" != - ] && printf ' | h2 %s req/s (%s) p99 %s ms' "$(fmt "$(median "$sc" h2_rps)" 0)" \
            "$(ratio "$(median "$sc" h2_rps)" "$(median direct h2_rps)")" "$(fmt "$(median "$sc" h2_p99_ms)" 3)"
        echo
    done
    show_report "$md"
}

# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
run_start
setup_topology
start_origins
for ROUND in $(seq 1 "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do run_scenario "$s"; done
done
report
log "done in $(( $(date +%s) - T0 )) s"
