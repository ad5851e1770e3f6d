#!/usr/bin/env bash
# The plugin chain's cost, measured in pairs: one remora-proxy whose config
# file is switched between run.sh's remora-http (no plugins),
# remora-plugins (key-auth, limit-count, prometheus, request-id) and
# remora-jwt (that chain and jwt-auth RS256) every few seconds, the same
# h2load load each time. Each config's req/s is compared with the no-plugin
# slice next to it, so a noisy spell on a shared machine (which lasts
# minutes) lands on both sides of a ratio instead of on one scenario.
# Slices rotate in order (http first, then last, in turn) so a drift does
# not favour one config.
#
# usage: sudo bench/chain.sh [--pairs N] [--seconds S] [--proto "h1 h2"]
#            [--configs "plugins jwt"] [--no-build] [--out DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NS_C=rc-client; NS_S=rc-server
IP_C=10.95.0.1; IP_S=10.95.0.2
VETH_C=rc-c0; VETH_S=rc-s0
HTTP_PORT=80; H2_PORT=81
BENCH_TAG=chain
PAIRS=8; SECONDS_PER=4; PROTOS="h1 h2"; CONFIGS="plugins jwt"; BUILD=1
CMDLINE="bench/chain.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS="$2"; shift ;;
        --seconds) SECONDS_PER="$2"; shift ;;
        --proto) PROTOS="$2"; shift ;;
        --configs) CONFIGS="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
whole() { case "$2" in ''|*[!0-9]*) echo "$1 needs a whole number" >&2; exit 2 ;; esac; }
whole --pairs "$PAIRS"; whole --seconds "$SECONDS_PER"
[ "$PAIRS" -ge 2 ] && [ "$PAIRS" -le 50 ] || { echo "--pairs: 2 to 50" >&2; exit 2; }
[ "$SECONDS_PER" -ge 2 ] && [ "$SECONDS_PER" -le 30 ] || { echo "--seconds: 2 to 30" >&2; exit 2; }
for c in $CONFIGS; do
    case "$c" in plugins|jwt) ;; *) echo "--configs: plugins, jwt" >&2; exit 2 ;; esac
done
for p in $PROTOS; do
    case "$p" in h1|h2) ;; *) echo "--proto: h1, h2" >&2; exit 2 ;; esac
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables)"
for tool in h2load curl nginx openssl; do
    command -v "$tool" >/dev/null || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends nghttp2-client curl nginx openssl >/dev/null
        break
    }
done
stage_binaries
OUT="${OUT:-$ROOT/bench/out/chain-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"; chmod 777 "$OUT"
run_start
setup_topology
start_origin_nginx

write_remora_http_config
write_remora_plugins_config plugins 0
write_remora_plugins_config jwt 1
JWT=$(bench_jwt)
# One query for every config: the no-plugin config ignores it.
QUERY="apikey=$BENCH_KEY&jwt=$JWT"

# The proxy reads $LIVE and reloads it on change; each slice's config gets
# a version of its own, and the slice starts once /config_dump shows it.
LIVE_DIR="$T/live"; mkdir -p "$LIVE_DIR"; chmod 755 "$LIVE_DIR"
LIVE="$LIVE_DIR/mesh.yaml"
SLICE=0
switch_to() {             # switch_to http|plugins|jwt
    local version="chain-$1-$SLICE" n=100
    sed "s/^version: .*/version: $version/" "$T/remora-$1/mesh.yaml" >"$LIVE_DIR/.next"
    chmod 644 "$LIVE_DIR/.next"; mv "$LIVE_DIR/.next" "$LIVE"
    until in_c curl -sf http://127.0.0.1:15020/config_dump 2>/dev/null | grep -qE "\"version\": ?\"$version\""; do
        n=$((n - 1)); [ $n -gt 0 ] || die "config $version not applied within 10 s; see $OUT/proxy.log"
        sleep 0.1
    done
}

requests_served() {       # the proxy's remora_requests_total, all series
    in_c curl -sf http://127.0.0.1:15020/metrics |
        awk '/^remora_requests_total[{ ]/{t+=$NF} END{printf "%d\n", t}'
}

RAW="$OUT/raw.tsv"        # proto, pair, config, req/s, CPU µs per request, errors
: >"$RAW"
slice() {                 # slice PROTO PAIR CONFIG
    local proto="$1" pair="$2" cfg="$3" url flags t0 t1 r0 r1 summary rps errors
    SLICE=$((SLICE + 1))
    switch_to "$cfg"
    case "$proto" in
        h1) url="http://$IP_S:$HTTP_PORT/?$QUERY"; flags=(--h1 -c 16 -t 1) ;;
        h2) url="http://$IP_S:$H2_PORT/?$QUERY"; flags=(-c 16 -m 10 -t 1) ;;
    esac
    r0=$(requests_served); t0=$(cpu_ticks "$PROXY_PIDS")
    in_c h2load "${flags[@]}" -D "$SECONDS_PER" --warm-up-time=1 "$url" >"$OUT/h2load.$proto.$pair.$cfg.txt" 2>&1 || true
    t1=$(cpu_ticks "$PROXY_PIDS"); r1=$(requests_served)
    read -r rps errors <<<"$(h2load_summary "$OUT/h2load.$proto.$pair.$cfg.txt")"
    # CPU over every request the proxy served in the slice, warm-up included.
    local us
    us=$(awk -v t=$((t1 - t0)) -v r=$((r1 - r0)) -v hz="$CLK_TCK" 'BEGIN{ if (r > 0) printf "%.1f", t * 1e6 / hz / r; else print "NA" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$proto" "$pair" "$cfg" "$rps" "$us" "$errors" >>"$RAW"
    log "$proto pair $pair $cfg: $rps req/s, $us µs/request, $errors errors"
}

# The proxy starts on the no-plugin config.
sed "s/^version: .*/version: chain-start/" "$T/remora-http/mesh.yaml" >"$LIVE"; chmod 644 "$LIVE"
remora_up "$OUT/init.log" "$OUT/proxy.log" --config "$LIVE"
for proto in $PROTOS; do
    for pair in $(seq "$PAIRS"); do
        order="http $CONFIGS"
        [ $((pair % 2)) = 0 ] && order="$(echo "$CONFIGS" | tr ' ' '\n' | tac | tr '\n' ' ') http"
        for cfg in $order; do slice "$proto" "$pair" "$cfg"; done
    done
done
remora_down "$OUT/init.log" "$OUT/metrics.txt"
warns=$(grep -cE " (WARN|ERROR) " "$OUT/proxy.log" || true)

# Per pair: each config's req/s over the no-plugin slice's, and its CPU µs
# per request minus the no-plugin slice's. Reported: the median pair, and
# the lowest and highest.
MD="$OUT/results.md"
{
    echo "# bench/chain.sh"
    echo
    header_lines
    echo "- load: h2load -t 1 -c 16 (h2: -m 10), $SECONDS_PER s per slice after 1 s of warm-up, $PAIRS pairs per protocol; one remora-proxy --workers 1, its config switched between slices"
    echo "- proxy log: $warns WARN/ERROR lines"
    echo
    echo "| proto | config | median req/s | vs no plugins: median [95 % CI] (min to max) | CPU µs/request | added µs: median [95 % CI] (min to max) | errors |"
    echo "|---|---|---|---|---|---|---|"
    for proto in $PROTOS; do
        for cfg in http $CONFIGS; do
            awk -F'\t' -v p="$proto" -v c="$cfg" '
                $1==p && $3=="http" { base[$2]=$4; baseus[$2]=$5 }
                $1==p && $3==c { rps[$2]=$4; us[$2]=$5; err+=$6 }
                function med(a, n,   i, j, t) {
                    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                }
                # The distribution-free 95 % interval of a median: the k-th
                # lowest and k-th highest of n values, with the largest k for
                # which at least 95 % of Binomial(n, 1/2) lies in [k, n - k].
                function ci_rank(n,   i, j, p, cover, k) {
                    k = 0
                    p = 2 ^ -n
                    for (i = 0; i <= n; i++) { pmf[i] = p; p = p * (n - i) / (i + 1) }
                    for (i = 1; 2 * i <= n; i++) {
                        cover = 0
                        for (j = i; j <= n - i; j++) cover += pmf[j]
                        if (cover >= 0.95) k = i
                    }
                    return k
                }
                END {
                    n = 0
                    for (k in rps) { n++; r[n] = rps[k]; u[n] = us[k]; q[n] = rps[k] / base[k]; d[n] = us[k] - baseus[k] }
                    if (n == 0) exit
                    mr = med(r, n); mu = med(u, n); mq = med(q, n); md = med(d, n)
                    # Sorted now; with too few pairs for 95 %, the CI is the range.
                    lo = ci_rank(n); if (lo == 0) lo = 1; hi = n + 1 - lo
                    if (c == "http") printf "| %s | %s | %.0f | - | %.1f | - | %d |\n", p, c, mr, mu, err
                    else printf "| %s | %s | %.0f | %.3fx [%.3f, %.3f] (%.3f to %.3f) | %.1f | %+.1f [%+.1f, %+.1f] (%+.1f to %+.1f) | %d |\n", p, c, mr, mq, q[lo], q[hi], q[1], q[n], mu, md, d[lo], d[hi], d[1], d[n], err
                }' "$RAW"
        done
    done
    echo
    echo "Per slice (proto, pair, config, req/s, CPU µs per request, errors): $RAW"
} >"$MD"
show_report "$MD"
