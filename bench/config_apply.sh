#!/usr/bin/env bash
# Remora config-apply benchmark: what rewriting a large mesh config costs the
# traffic in flight, and how long an apply takes. On network namespaces this
# script creates and deletes. See bench/README.md.
#
# usage: sudo bench/config_apply.sh [--quick] [--services N] [--sizes N,M]
#                                   [--rewrites K] [--repeats R] [--duration S]
#                                   [--rate R] [--conns C] [--change both|route]
#                                   [--out DIR]
#                                   [--no-build] [--no-install]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
CMDLINE="${REMORA_PROXY:+REMORA_PROXY=$REMORA_PROXY }${REMORA_INIT:+REMORA_INIT=$REMORA_INIT }bench/config_apply.sh${*:+ $*}"

NS_C=ra-client            # the meshed "pod": the client and the proxy
NS_S=ra-server            # the origin
IP_C=10.97.0.1
IP_S=10.97.0.2
VETH_C=ra-c0
VETH_S=ra-s0
HTTP_PORT=80
H2_PORT=81
VIP_ROUTE=10.96.0.0/16    # the services' VIPs (config_apply.py: 10.96.<i/250>.<i%250+1>)

SERVICES=1000             # services in the config rewritten under load
SIZES=1000,10000          # config sizes whose apply time is tabled
REWRITES=10               # rewrites per loaded run
REPEATS=5                 # incremental and full applies per size (apply-time table)
DURATION=30               # seconds of each loaded run (after 1 s warm-up)
RATE=2000                 # req/s of the steady client, over all connections
CONNS=4                   # its HTTP/1.1 connections
CHANGE=both               # what a changed service changes: route and backend, or route only
POLL_MS=5                 # how often the driver scrapes /metrics while an apply is pending
OUT=""
BUILD=1
INSTALL=1

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

  --quick           ~2 minutes: 12 s runs, 4 rewrites, 3 repeats, sizes 1000
  --services N      services in the config rewritten under load (default 1000)
  --sizes LIST      config sizes for the apply-time table (default 1000,10000;
                    none: no table)
  --rewrites K      rewrites during each loaded run (default 10)
  --repeats R       incremental and full applies per size (default 5)
  --duration S      seconds per loaded run (default 30)
  --rate R          the client's req/s over all connections (default 2000)
  --conns C         the client's HTTP/1.1 connections (default 4)
  --change WHAT     what a changed service changes: "both" its route and its
                    backend (default), "route" its route only (backends kept)
  --poll-ms MS      scrape /metrics every MS ms while an apply is pending (default 5)
  --out DIR         where logs and results.md go (default bench/out/apply-<utc-time>)
  --no-build        do not build; use target/release binaries as they are
  --no-install      do not apt-get install missing tools
Env: REMORA_PROXY, REMORA_INIT override the binaries (default target/release/).
EOF
}

num() { case "$2" in ''|*[!0-9]*) echo "$1 needs a whole number" >&2; exit 2 ;; esac; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=12; REWRITES=4; REPEATS=3; SIZES=1000 ;;
        --services) num "$1" "${2:-}"; SERVICES="$2"; shift ;;
        --sizes) SIZES="$2"; shift ;;
        --rewrites) num "$1" "${2:-}"; REWRITES="$2"; shift ;;
        --repeats) num "$1" "${2:-}"; REPEATS="$2"; shift ;;
        --duration) num "$1" "${2:-}"; DURATION="$2"; shift ;;
        --rate) num "$1" "${2:-}"; RATE="$2"; shift ;;
        --conns) num "$1" "${2:-}"; CONNS="$2"; shift ;;
        --change) CHANGE="$2"; shift ;;
        --poll-ms) num "$1" "${2:-}"; POLL_MS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --no-install) INSTALL=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$CHANGE" in both|route) ;; *) echo "--change: both or route" >&2; exit 2 ;; esac
[ "$SIZES" = none ] && SIZES=""
case ",$SIZES," in ,,) ;; *,,*|*[!0-9,]*) echo "--sizes needs comma-separated whole numbers, or none" >&2; exit 2 ;; esac
[ "$SERVICES" -ge 2 ] && [ "$SERVICES" -le 50000 ] || { echo "--services: 2..50000" >&2; exit 2; }
[ "$DURATION" -ge 8 ] && [ "$DURATION" -le 600 ] || { echo "--duration: 8..600 s" >&2; exit 2; }
[ "$REWRITES" -ge 1 ] && [ "$REWRITES" -le 100 ] || { echo "--rewrites: 1..100" >&2; exit 2; }
[ "$REPEATS" -ge 1 ] && [ "$REPEATS" -le 50 ] || { echo "--repeats: 1..50" >&2; exit 2; }
[ "$CONNS" -ge 1 ] && [ "$CONNS" -le 64 ] || { echo "--conns: 1..64" >&2; exit 2; }
[ "$RATE" -ge "$CONNS" ] && [ "$RATE" -le 50000 ] || { echo "--rate: --conns..50000 req/s" >&2; exit 2; }

BENCH_TAG=apply
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"   # log, die, cleanup trap, topology, binaries, remora_up/down
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables): sudo bench/config_apply.sh"

ensure_tools() {
    local pkgs=()
    command -v h2load >/dev/null || pkgs+=(nghttp2-client)
    command -v nginx >/dev/null || pkgs+=(nginx)
    command -v ip >/dev/null || pkgs+=(iproute2)
    command -v ss >/dev/null || pkgs+=(iproute2)
    command -v iptables >/dev/null || pkgs+=(iptables)
    command -v setpriv >/dev/null || pkgs+=(util-linux)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v python3 >/dev/null || pkgs+=(python3)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    [ "$INSTALL" = 1 ] || die "missing tools (${pkgs[*]}) and --no-install given"
    command -v apt-get >/dev/null || die "missing tools (${pkgs[*]}) and no apt-get"
    log "installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}
ensure_tools
stage_binaries
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-$BENCH/out/apply-$STAMP}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="$BENCH/config_apply.py"
CFG_DIR="$T/cfg"          # the watched directory; configs are renamed into it
CFG="$CFG_DIR/mesh.yaml"
mkdir -p "$CFG_DIR"; chmod 755 "$CFG_DIR"
PROXY_PIDS=""
RAW="$OUT/raw.tsv"        # phase, name, metric, value
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }
get() { awk -F'\t' -v p="$1" -v n="$2" -v m="$3" '$1==p && $2==n && $3==m {v=$4} END{print (v==""?"NA":v)}' "$RAW"; }

# gen SERVICES SERIES DIR: writes the series, prints the file names in order
gen() {
    mkdir -p "$3"; chmod 755 "$3"
    python3 "$PY" gen --services "$1" --client $(( $1 / 2 )) --origin "$IP_S:$HTTP_PORT" \
        --series "$2" --outdir "$3" --change "$CHANGE"
}
client_vip() { python3 -c "import sys; sys.path.insert(0, '$BENCH'); import config_apply as c; print(c.vip($1 // 2))"; }

# drive FILES OUT [ARGS...]: the rewrites, from inside the client namespace
# (the admin port is the namespace's 127.0.0.1), bounded by its own timeouts.
drive() {
    local files="$1" out="$2"; shift 2
    in_c python3 "$PY" drive --files "$files" --config "$CFG" --out "$out" \
        --poll "$(awk -v ms="$POLL_MS" 'BEGIN{printf "%.3f", ms / 1000}')" "$@"
}

# --------------------------------------------------------------------------
# 1. A steady client while the config is rewritten
# --------------------------------------------------------------------------
# loaded_run NAME FILES BASELINE [DRIVE ARGS...]: the client for DURATION s,
# and the driver rewriting the config (or, with --dry, only polling)
# meanwhile. BASELINE (- for none): the dry run to compare the apply windows with.
loaded_run() {
    local name="$1" files="$2" baseline="$3"; shift 3
    local per=$(( (RATE + CONNS - 1) / CONNS )) url="http://$VIP/" f="$OUT/latency-$name"
    local cmd=(h2load --h1 -c "$CONNS" -t 1 --rps="$per" -D "$DURATION" --warm-up-time=1 "$url")
    shcmd "${cmd[@]}" >"$OUT/h2load.cmd"
    local interval c0 c1 hpid load
    # Rewrites from 2 s into the measured window to 4 s before its end.
    interval=$(awk -v d="$DURATION" -v k="$REWRITES" 'BEGIN{printf "%.3f", (d - 6) / (k > 1 ? k - 1 : 1)}')
    load=$(loadavg)
    log "latency run $name (load $load)"
    c0=$(cpu_ticks "$PROXY_PIDS")
    timeout $((DURATION + 30)) ip netns exec "$NS_C" "${cmd[@]}" --log-file="$f.log" >"$f.h2load.txt" 2>&1 &
    hpid=$!
    STARTED_PIDS+=("$hpid")
    drive "$files" "$f.drive.tsv" --start-delay 3 --interval "$interval" --timeout 30 "$@" ||
        log "  $name: the driver failed; see $f.drive.tsv"
    wait "$hpid" || log "  $name: h2load exited with $?; see $f.h2load.txt"
    c1=$(cpu_ticks "$PROXY_PIDS")
    local rps errs n bad p50 p99 p999 max over worst over_during
    read -r rps errs <<<"$(h2load_summary "$f.h2load.txt")"
    read -r n bad p50 p99 p999 max over worst over_during <<<"$(python3 "$PY" analyze --log "$f.log" --drive "$f.drive.tsv")"
    record lat "$name" load "$load"
    record lat "$name" rps "$rps"
    record lat "$name" errors "$((errs + bad))"
    record lat "$name" n "$n"
    record lat "$name" p50 "$p50"
    record lat "$name" p99 "$p99"
    record lat "$name" p999 "$p999"
    record lat "$name" max "$max"
    record lat "$name" over10 "$over"
    record lat "$name" worst_during "$worst"
    record lat "$name" over10_during "$over_during"
    if [ "$baseline" != - ]; then
        # The baseline in windows as long as this run's applies, at its own poll times.
        local b="$OUT/latency-$baseline"
        read -r n bad p50 p99 p999 max over worst over_during <<<"$(python3 "$PY" analyze \
            --log "$b.log" --drive "$f.drive.tsv" --align "$b.drive.tsv")"
        record lat "$name" base_worst_same "$worst"
        record lat "$name" base_over10_same "$over_during"
    fi
    record lat "$name" applied "$(awk -F'\t' '$6=="applied"' "$f.drive.tsv" | wc -l)"
    record lat "$name" not_applied "$(awk -F'\t' '$6!="applied" && $6!="dry"' "$f.drive.tsv" | wc -l)"
    record lat "$name" apply_ms_med "$(col_stat "$f.drive.tsv" gauge median)"
    record lat "$name" apply_ms_max "$(col_stat "$f.drive.tsv" gauge max)"
    record lat "$name" seen_ms_max "$(col_stat "$f.drive.tsv" seen max)"
    [ "${n:-0}" -gt 0 ] && record lat "$name" cpu_us_per_req \
        "$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$n" -v d="$DURATION" 'BEGIN{printf "%.1f", c / hz * 1e6 / (n * (d + 1) / d)}')"
    return 0
}

# col_stat DRIVE_TSV gauge|seen median|max [KIND]: over the applied rewrites
# (of config files of KIND: base, inc, full), in ms. "gauge" is
# remora_config_apply_seconds after the apply; "seen" is rename to counted.
col_stat() {
    awk -F'\t' -v col="$2" -v k="${4:-}" '$6=="applied" && (k=="" || $2 ~ ("-" k ".yaml$")) {
            if (col=="gauge") { if ($5!="NA") print $5 * 1000 } else print ($4 - $3) / 1000 }' "$1" |
        sort -g | awk -v s="$3" '{v[NR]=$1} END{
            if (NR==0) print "NA"
            else if (s=="max") printf "%.1f\n", v[NR]
            else if (NR%2) printf "%.1f\n", v[(NR+1)/2]
            else printf "%.1f\n", (v[NR/2]+v[NR/2+1])/2 }'
}

latency_phase() {
    local files="$T/lat.files"
    VIP=$(client_vip "$SERVICES")
    log "phase 1: $SERVICES services, the client at $VIP:80, $RATE req/s"
    gen "$SERVICES" "base,inc*$REWRITES,full*$REWRITES" "$T/gen-lat" >"$files"
    grep -- '-inc.yaml$' "$files" >"$T/lat.inc"
    grep -- '-full.yaml$' "$files" >"$T/lat.full"
    mv "$(head -1 "$files")" "$CFG"
    remora_up "$OUT/init.log" "$OUT/proxy-latency.log" --config "$CFG"
    in_c curl -sf -m 5 -o /dev/null "http://$VIP/" || die "the client's service $VIP:80 does not answer through the proxy; see $OUT/proxy-latency.log"
    # Interleaved, so a drift in the machine's load hits baseline and rewrites alike.
    loaded_run baseline-1 "$T/lat.inc" - --dry
    loaded_run incremental "$T/lat.inc" baseline-1
    loaded_run baseline-2 "$T/lat.full" - --dry
    loaded_run full "$T/lat.full" baseline-2
    record lat proxy rss_kb "$(rss_kb "$PROXY_PIDS")"
    record lat proxy warn_lines "$(grep -cE ' (WARN|ERROR) ' "$OUT/proxy-latency.log" || true)"
    remora_down "$OUT/init.log" "$OUT/metrics-latency.txt"
}

# --------------------------------------------------------------------------
# 2. Apply time by config size: from the client's service alone to N
#    services (first), then one service changed, then every service changed
# --------------------------------------------------------------------------
apply_phase() {
    local n="$1" files="$T/apply-$1.files" f="$OUT/apply-$1"
    log "phase 2: $n services (load $(loadavg))"
    gen "$n" "tiny,base,inc*$REPEATS,full*$REPEATS" "$T/gen-$n" >"$files"
    mv "$(head -1 "$files")" "$CFG"
    tail -n +2 "$files" >"$files.rest"
    remora_up "$OUT/init.log" "$f.proxy.log" --config "$CFG"
    record apply "$n" load "$(loadavg)"
    record apply "$n" bytes "$(stat -c %s "$(sed -n 2p "$files")")"
    drive "$files.rest" "$f.drive.tsv" --settle 0.3 --timeout 60 || log "  $n: the driver failed; see $f.drive.tsv"
    local kind
    for kind in base inc full; do
        record apply "$n" "gauge_med_$kind" "$(col_stat "$f.drive.tsv" gauge median "$kind")"
        record apply "$n" "gauge_max_$kind" "$(col_stat "$f.drive.tsv" gauge max "$kind")"
        record apply "$n" "seen_med_$kind" "$(col_stat "$f.drive.tsv" seen median "$kind")"
        record apply "$n" "seen_max_$kind" "$(col_stat "$f.drive.tsv" seen max "$kind")"
    done
    record apply "$n" not_applied "$(awk -F'\t' '$6!="applied"' "$f.drive.tsv" | wc -l)"
    record apply "$n" rss_kb "$(rss_kb "$PROXY_PIDS")"
    remora_down "$OUT/init.log" "$f.metrics.txt"
}

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
diffms() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA" || b=="NA") print "-"; else printf "%+.3f", a-b }'; }
mib() { awk -v a="$1" 'BEGIN{ if (a=="NA" || a=="") print "-"; else printf "%.1f", a/1024 }'; }
dash() { [ "$1" = NA ] && echo - || echo "$1"; }

report() {
    local md="$OUT/results.md" run base
    {
        echo "### Run apply-$STAMP"
        echo
        header_lines
        echo "- run took $(( $(date +%s) - T0 )) s; load average before: $LOAD0, after: $(loadavg)"
        echo "- client: \`$(cat "$OUT/h2load.cmd")\` (--rps is per connection: ×$CONNS), to the VIP of one of the $SERVICES services; remora-proxy --workers 1 --config (uid 1337, remora-init capture); origin nginx, 1 worker"
        echo "- a changed service changes: $([ "$CHANGE" = both ] && echo "its routes' timeouts and its backend's connect timeout (so the backend, its pool included, is rebuilt)" || echo "its routes' timeouts only (backends unchanged)")"
        echo "- rewrites: $REWRITES per loaded run, one every $(awk -v d="$DURATION" -v k="$REWRITES" 'BEGIN{printf "%.1f", (d - 6) / (k > 1 ? k - 1 : 1)}') s, each a new file renamed over the watched one, waited for until \`remora_config_updates_total{result=\"applied\"}\` counts it (polling every $POLL_MS ms); the baselines poll on the same schedule and rename nothing"
        echo
        echo "**A steady client while $SERVICES services are rewritten** (HTTP/1.1, $RATE req/s, $DURATION s per run). \"incremental\": each rewrite changes one other service; \"full\": each rewrite changes every service, the client's included. \"during\" = requests in flight between a rename and 50 ms after the apply was counted; \"same windows\": the baseline just before, in windows as long as these, at its own (dry) poll times."
        echo
        echo "| run | load | achieved req/s | errors | p50 ms | p99 ms | p99.9 ms | max ms | requests > 10 ms | worst during an apply ms | > 10 ms during applies | baseline, same windows: worst ms / > 10 ms | added p99 / max vs baseline ms | applies counted | apply (gauge) median / max ms | proxy CPU µs/req |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        for run in baseline-1 incremental baseline-2 full; do
            base=baseline-1; [ "$run" = full ] && base=baseline-2
            local added="-" counted="-" gauge="-" same="-"
            if [ "${run%-*}" != baseline ]; then
                same="$(dash "$(get lat "$run" base_worst_same)") / $(get lat "$run" base_over10_same)"
                added="$(diffms "$(get lat "$run" p99)" "$(get lat "$base" p99)") / $(diffms "$(get lat "$run" max)" "$(get lat "$base" max)")"
                counted="$(get lat "$run" applied) of $REWRITES"
                gauge="$(dash "$(get lat "$run" apply_ms_med)") / $(dash "$(get lat "$run" apply_ms_max)")"
            fi
            echo "| $run | $(get lat "$run" load | cut -d' ' -f1) | $(get lat "$run" rps) | $(get lat "$run" errors) | $(get lat "$run" p50) | $(get lat "$run" p99) | $(get lat "$run" p999) | $(get lat "$run" max) | $(get lat "$run" over10) | $(dash "$(get lat "$run" worst_during)") | $(get lat "$run" over10_during) | $same | $added | $counted | $gauge | $(get lat "$run" cpu_us_per_req) |"
        done
        if [ -n "$SIZES" ]; then
            echo
            echo "**Apply time by config size** (no traffic; $REPEATS incremental and $REPEATS full applies per size, median / max). \"gauge\": \`remora_config_apply_seconds\` (compile and swap, off the data path); \"seen\": from the rename to the counter's increment as polled (adds the watcher's 50 ms debounce, reading and parsing the file)."
            echo
            echo "| services | YAML bytes | first: gauge ms | first: seen ms | incremental: gauge ms | incremental: seen ms | full: gauge ms | full: seen ms | not applied | RSS after MiB | load |"
            echo "|---|---|---|---|---|---|---|---|---|---|---|"
            local n
            for n in ${SIZES//,/ }; do
                echo "| $n | $(get apply "$n" bytes) | $(dash "$(get apply "$n" gauge_med_base)") | $(dash "$(get apply "$n" seen_med_base)") | $(dash "$(get apply "$n" gauge_med_inc)") / $(dash "$(get apply "$n" gauge_max_inc)") | $(dash "$(get apply "$n" seen_med_inc)") / $(dash "$(get apply "$n" seen_max_inc)") | $(dash "$(get apply "$n" gauge_med_full)") / $(dash "$(get apply "$n" gauge_max_full)") | $(dash "$(get apply "$n" seen_med_full)") / $(dash "$(get apply "$n" seen_max_full)") | $(get apply "$n" not_applied) | $(mib "$(get apply "$n" rss_kb)") | $(get apply "$n" load | cut -d' ' -f1) |"
            done
        fi
        echo
        echo "Proxy health (loaded runs): $(get lat proxy warn_lines) WARN/ERROR lines in the proxy log; RSS at the end $(mib "$(get lat proxy rss_kb)") MiB."
    } >"$md"
    show_report "$md"
}

# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
run_start
setup_topology
# The VIPs exist only in the config; a route lets the client's connect()
# leave, and the capture turns it to the proxy before it does.
in_c ip route add "$VIP_ROUTE" via "$IP_S"
start_origin_nginx
latency_phase
for size in ${SIZES//,/ }; do apply_phase "$size"; done
report
log "done in $(( $(date +%s) - T0 )) s"
