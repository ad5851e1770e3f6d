# Shared by the bench scripts (run.sh, config_apply.sh, instructions.sh, chain.sh); sourced, not run.
# It owns what every bench run does alike: logging, the binaries it measures
# (built once, then copied), the processes and namespaces it starts (and
# their cleanup on any exit, Ctrl-C included), the two-namespace topology
# with the nginx origin, the single-proxy mesh configs, the two-sidecar
# mesh's configs and remora-cp, the meshed proxy's start and stop, and
# reading process CPU and memory.
#
# The caller sets before sourcing: ROOT (the repo), BENCH_TAG (log prefix),
# NS_C NS_S IP_C IP_S VETH_C VETH_S (topology), HTTP_PORT H2_PORT (origin).
# Before calling stage_binaries: BUILD (1: cargo build first). It sets T (a
# temporary directory, removed on exit) and OUT (the caller may set it).

log() { printf '[%s %s] %s\n' "$BENCH_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

STARTED_PIDS=()           # every long-running process this script started
NS_CREATED=()
T=""

stop_pid() {              # stop_pid PID: TERM, wait up to 5 s, then KILL
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ $rc -ne 0 ] && log "failed (exit $rc); cleaning up; logs in ${OUT:-?}"
    local pid ns
    for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
    for ns in "${NS_CREATED[@]}"; do
        # Anything still inside a namespace this script created was started by it.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    [ -n "$T" ] && rm -rf "$T"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_c() { ip netns exec "$NS_C" "$@"; }
in_s() { ip netns exec "$NS_S" "$@"; }

start_bg() {              # start_bg LOGFILE CMD...: sets BG_PID
    "${@:2}" >"$1" 2>&1 &
    BG_PID=$!
    STARTED_PIDS+=("$BG_PID")
}

wait_listen() {           # wait_listen NS PORT [PID]: until PORT listens (10 s) or PID exits
    local ns="$1" port="$2" pid="${3:-}" n=100
    while [ $n -gt 0 ]; do
        [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
        [ -n "$(ip netns exec "$ns" ss -Hltn "sport = :$port" 2>/dev/null)" ] && return 0
        sleep 0.1; n=$((n - 1))
    done
    return 1
}

shcmd() {                 # shcmd ARGS...: the command as one would type it
    local a out=""
    for a in "$@"; do
        case "$a" in *[[:space:]]*) out+="\"$a\" " ;; *) out+="$a " ;; esac
    done
    printf '%s\n' "${out% }"
}

# --------------------------------------------------------------------------
# Binaries: built once, then copied so a rebuild of the shared target dir
# mid-run cannot change what is measured. REMORA_PROXY / REMORA_INIT measure
# other builds (e.g. a baseline commit).
# --------------------------------------------------------------------------
stage_binaries() {        # sets T, PROXY_SRC, INIT_SRC, PROXY_BIN, INIT_BIN
    PROXY_SRC="${REMORA_PROXY:-$ROOT/target/release/remora-proxy}"
    INIT_SRC="${REMORA_INIT:-$ROOT/target/release/remora-init}"
    if [ "$BUILD" = 1 ] && [ -z "${REMORA_PROXY:-}${REMORA_INIT:-}" ]; then
        # Two invocations: Cargo unifies features across the packages of one
        # build, and remora-cp's kube-client turns on tracing's `log`
        # feature, which costs the proxy's HTTP/2 path 2.4k instructions per
        # request (bench/RESULTS.md, 2026-12-03 fifth stop). Built alone, the
        # proxy gets only the features it asks for, as its image should.
        local build_cmd="cargo build --release -p remora-proxy -p remora-iptables --bins && cargo build --release -p remora-cp --bins"
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
            # Under sudo, build as the invoking user: their toolchain, their target/ ownership.
            if sudo -u "$SUDO_USER" -H bash -lc 'command -v cargo' >/dev/null 2>&1; then
                log "building release binaries (as $SUDO_USER)"
                sudo -u "$SUDO_USER" -H bash -lc "cd '$ROOT' && $build_cmd" >&2 || die "cargo build failed"
            else
                log "cargo not found for $SUDO_USER; using existing binaries"
            fi
        elif command -v cargo >/dev/null; then
            log "building release binaries"
            (cd "$ROOT" && eval "$build_cmd") >&2 || die "cargo build failed"
        else
            log "cargo not found; using existing binaries"
        fi
    fi
    [ -x "$PROXY_SRC" ] || die "no $PROXY_SRC: cargo build --release -p remora-proxy -p remora-iptables --bins"
    [ -x "$INIT_SRC" ] || die "no $INIT_SRC: cargo build --release -p remora-proxy -p remora-iptables --bins"
    T="$(mktemp -d /tmp/remora-bench.XXXXXX)"
    chmod 755 "$T"
    mkdir -p "$T/bin" "$T/ngx"
    install -m 755 "$PROXY_SRC" "$T/bin/remora-proxy"
    install -m 755 "$INIT_SRC" "$T/bin/remora-init"
    PROXY_BIN="$T/bin/remora-proxy"
    INIT_BIN="$T/bin/remora-init"
    # The control plane, for the two-sidecar (mTLS) scenarios only.
    CP_SRC="${REMORA_CP:-$ROOT/target/release/remora-cp}"
    CP_BIN=""
    if [ -x "$CP_SRC" ]; then install -m 755 "$CP_SRC" "$T/bin/remora-cp"; CP_BIN="$T/bin/remora-cp"; fi
}

# --------------------------------------------------------------------------
# Memory and CPU of a process and its children (nginx: master + worker)
# --------------------------------------------------------------------------
tree_pids() { local p; for p in "$@"; do echo "$p"; pgrep -P "$p" || true; done; }
rss_kb() {
    local total=0 p v
    for p in $(tree_pids "$@"); do
        v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
cpu_ticks() {
    local total=0 p v
    for p in $(tree_pids "$@"); do
        # utime + stime; the comm field may hold spaces, so cut after ')'.
        v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
CLK_TCK="$(getconf CLK_TCK)"

# --------------------------------------------------------------------------
# Topology: the client namespace (the meshed "pod") and the origin's, joined
# by a veth pair.
# --------------------------------------------------------------------------
setup_topology() {
    local ns
    for ns in "$NS_C" "$NS_S"; do
        if ip netns list | grep -qw "^$ns"; then
            die "namespace $ns already exists (another bench run, or a killed one: ip netns del $ns)"
        fi
    done
    ip netns add "$NS_C"; NS_CREATED+=("$NS_C")
    ip netns add "$NS_S"; NS_CREATED+=("$NS_S")
    ip link add "$VETH_C" netns "$NS_C" type veth peer name "$VETH_S" netns "$NS_S"
    in_c ip addr add "$IP_C/24" dev "$VETH_C"
    in_s ip addr add "$IP_S/24" dev "$VETH_S"
    for ns in "$NS_C" "$NS_S"; do
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" sysctl -qw net.core.somaxconn=4096
        # Ephemeral ports stay clear of every listener here (all below 20000),
        # so a lingering client socket can never block a proxy's bind.
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="20000 65000"
        ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
    done
    in_c ip link set "$VETH_C" up
    in_s ip link set "$VETH_S" up
}

nginx_temp_paths() {      # nginx_temp_paths DIR: keeps nginx out of /var/lib/nginx
    local d="$1" k
    for k in client_body proxy fastcgi uwsgi scgi; do
        mkdir -p "$d/$k"; echo "  ${k}_temp_path $d/$k;"
    done
}

# The origin: nginx with one worker in NS_S answering 200 "ok\n", on
# HTTP_PORT (HTTP/1.1) and H2_PORT (h2c, prior knowledge).
start_origin_nginx() {
    mkdir -p "$T/ngx/origin"
    cat >"$T/ngx/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/ngx/origin/nginx.pid;
error_log $OUT/nginx-origin.err warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
$(nginx_temp_paths "$T/ngx/origin")
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen $IP_S:$HTTP_PORT backlog=4096;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
  # HTTP/2 over cleartext with prior knowledge (h2c), for the HTTP/2 test.
  server {
    listen $IP_S:$H2_PORT http2 backlog=4096;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
    start_bg "$OUT/nginx-origin.log" ip netns exec "$NS_S" nginx -e "$OUT/nginx-origin.err" -c "$T/ngx/origin/nginx.conf"
    wait_listen "$NS_S" "$HTTP_PORT" "$BG_PID" || die "origin nginx did not start"
    in_c curl -sf -m 5 "http://$IP_S:$HTTP_PORT/" >/dev/null || die "origin nginx does not answer over the veth link"
    in_c curl -sf -m 5 --http2-prior-knowledge "http://$IP_S:$H2_PORT/" >/dev/null || die "origin nginx does not answer h2c on :$H2_PORT"
}

# --------------------------------------------------------------------------
# The meshed proxy: remora-init captures the client namespace, and
# remora-proxy runs as uid 1337 via setpriv, exactly as the sidecar would.
# --------------------------------------------------------------------------
# remora_up INIT_LOG PROXY_LOG [PROXY ARGS...]: sets PROXY_PIDS
remora_up() {
    local init_log="$1" proxy_log="$2"; shift 2
    in_c "$INIT_BIN" >>"$init_log" 2>&1 || die "remora-init failed; see $init_log"
    if ! in_c iptables-save -t nat 2>/dev/null | grep -q -- "--to-ports 15001"; then
        in_c iptables-save -t nat >>"$init_log" 2>&1 || true
        die "remora-init ran but installed no outbound redirect (is remora-init finished?); see $init_log"
    fi
    # shellcheck disable=SC2086
    start_bg "$proxy_log" env RUST_LOG="${RUST_LOG:-info}" ip netns exec "$NS_C" \
        setpriv --reuid=1337 --regid=1337 --clear-groups -- "$PROXY_BIN" --workers 1 "$@"
    PROXY_PIDS="$BG_PID"
    local n=100
    until in_c curl -sf -o /dev/null http://127.0.0.1:15020/ready; do
        kill -0 "$BG_PID" 2>/dev/null || die "remora-proxy exited; see $proxy_log"
        n=$((n - 1)); [ $n -gt 0 ] || die "remora-proxy not ready after 10 s; see $proxy_log"
        sleep 0.1
    done
}

# remora_down INIT_LOG [METRICS_FILE]: scrapes /metrics, stops the proxy,
# undoes the capture.
remora_down() {
    local init_log="$1" metrics="${2:-}"
    [ -n "$metrics" ] && { in_c curl -sf http://127.0.0.1:15020/metrics >"$metrics" 2>/dev/null || true; }
    stop_pid "$PROXY_PIDS"
    in_c "$INIT_BIN" --cleanup >>"$init_log" 2>&1 || die "remora-init --cleanup failed"
    if in_c iptables-save -t nat 2>/dev/null | grep -q -- "--to-ports 15001"; then
        die "remora-init --cleanup left the redirect in place"
    fi
}

# --------------------------------------------------------------------------
# The single-proxy mesh configs (run.sh's remora-http, remora-plugins and
# remora-jwt; instructions.sh's http and plugins), written under $T.
# --------------------------------------------------------------------------
# Standalone mesh config for remora-http: the origin is a mesh service on an
# HTTP port whose backend has the origin as its one endpoint, so requests go
# through the HTTP data plane: service -> backend -> balanced endpoint ->
# pooled upstream connection. (A port with neither routes nor backendRefs
# answers 404 no_route as of 9a30c55, although docs/config.md says such
# requests go to the original destination.)
write_remora_http_config() {
    mkdir -p "$T/remora-http"
    cat >"$T/remora-http/mesh.yaml" <<EOF
version: bench-1
outbound:
  services:
    - name: origin
      addresses: ["$IP_S"]
      ports:
        - port: $HTTP_PORT
          protocol: http
          backendRefs:
            - name: origin
        # the same for HTTP/2: a client speaking h2c makes the proxy speak h2
        # upstream too, so this port's backend is the origin's h2c port.
        - port: $H2_PORT
          protocol: http
          backendRefs:
            - name: origin-h2
backends:
  origin:
    endpoints:
      - address: $IP_S:$HTTP_PORT
  origin-h2:
    endpoints:
      - address: $IP_S:$H2_PORT
EOF
    chmod 755 "$T/remora-http"; chmod 644 "$T/remora-http/mesh.yaml"
}

# The plugin scenarios: remora-http's config with APISIX plugins on the
# service, the chain issue 7 sets a budget for (key-auth, limit-count with a
# limit no run reaches, prometheus, request-id), and that chain with jwt-auth
# (RS256) added. The client authenticates with query parameters; the JWT is
# signed here with the test key the unit tests use, without `exp`.
BENCH_KEY=bench-key
write_remora_plugins_config() {   # write_remora_plugins_config NAME JWT(0|1)
    local dir="$T/remora-$1" jwt="$2" pub
    mkdir -p "$dir"
    sed -n '1,/^backends:/p' "$T/remora-http/mesh.yaml" | sed '$d' |
        sed "s/^    - name: origin$/    - name: origin\n      plugins:\n        key-auth: { query: apikey }\n        limit-count: { count: 1000000000, time_window: 60, key: consumer_name }\n        prometheus: {}\n        request-id: {}${jwt:+JWTPLUGIN}/" >"$dir/mesh.yaml"
    if [ "$jwt" = 1 ]; then
        sed -i "s/JWTPLUGIN/\n        jwt-auth: {}/" "$dir/mesh.yaml"
    else
        sed -i "s/JWTPLUGIN//" "$dir/mesh.yaml"
    fi
    {
        echo "consumers:"
        echo "  - username: bench"
        echo "    plugins:"
        echo "      key-auth: { key: $BENCH_KEY }"
        if [ "$jwt" = 1 ]; then
            echo "      jwt-auth:"
            echo "        key: bench"
            echo "        algorithm: RS256"
            echo "        public_key: |"
            sed 's/^/          /' "$ROOT/proxy/src/plugins/testdata/rsa_public.pem"
        fi
        sed -n '/^backends:/,$p' "$T/remora-http/mesh.yaml"
    } >>"$dir/mesh.yaml"
    chmod 755 "$dir"; chmod 644 "$dir/mesh.yaml"
}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
bench_jwt() {             # remora-jwt's RS256 token {"key":"bench"}, signed with the test key
    local h p s
    h=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
    p=$(printf '{"key":"bench"}' | b64url)
    s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$ROOT/proxy/src/plugins/testdata/rsa_private.pem" | b64url)
    printf '%s.%s.%s' "$h" "$p" "$s"
}
h2load_summary() {        # h2load_summary OUTPUT: "req/s errors" from h2load's own summary
    awk '/^finished in/{gsub(/,/,""); rps=$4}
         /^requests:/{gsub(/,/,""); e+=$10+$12+$14}
         /^status codes:/{gsub(/,/,""); e+=$5+$7+$9}
         END{printf "%s %d\n", (rps==""?"NA":rps), e}' "$1"
}

# --------------------------------------------------------------------------
# What a report says about the run
# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
# The two-sidecar mesh (run.sh's mesh-plain and mesh-mtls; instructions.sh's
# mesh-plain and mesh-mtls): configs and tokens under $T/mesh, and remora-cp.
# --------------------------------------------------------------------------
# The two-sidecar scenarios: the client's sidecar (A, in the client ns) and
# the server's (B, in the server ns, capturing the origin's inbound), with a
# real remora-cp (standalone, token file) in the server ns signing both
# certificates. mesh-plain: A's endpoint has no identity (plaintext between
# the sidecars); mesh-mtls: it has B's, so the hop is mTLS (TLS 1.3, HTTP/2
# between the sidecars whatever the client speaks). Port 8080 is a `tcp`
# service whose backend is the origin's port 80: each client connection is a
# new connection from A to B, for new mTLS connections per second.
MESH_B_ID="spiffe://cluster.local/ns/bench/sa/server"
write_mesh_configs() {
    local d="$T/mesh" id kind
    mkdir -p "$d"; chmod 755 "$d"
    printf 'tokens:\n  - {token: bench-a, namespace: bench, serviceAccount: client}\n  - {token: bench-b, namespace: bench, serviceAccount: server}\n' >"$d/tokens.yaml"
    printf 'bench-a' >"$d/token-a"; printf 'bench-b' >"$d/token-b"
    for kind in plain mtls; do
        id=""; [ "$kind" = mtls ] && id="
        identity: $MESH_B_ID"
        cat >"$d/client-$kind.yaml" <<EOF
version: bench-$kind
outbound:
  services:
    - name: origin
      addresses: ["$IP_S"]
      ports:
        - port: $HTTP_PORT
          protocol: http
          backendRefs: [{ name: origin }]
        - port: 8080
          protocol: tcp
          backendRefs: [{ name: origin }]
backends:
  origin:
    endpoints:
      - address: $IP_S:$HTTP_PORT$id
EOF
    done
    cat >"$d/server.yaml" <<EOF
version: bench-server
inbound:
  mode: permissive
  ports:
    - { port: $HTTP_PORT, protocol: http }
EOF
    chmod 644 "$d"/*
}
MESH_CP_PID=""
mesh_ca_up() {            # remora-cp in the server ns, once; its root in $T/mesh/ca-roots.pem
    [ -n "$MESH_CP_PID" ] && kill -0 "$MESH_CP_PID" 2>/dev/null && return 0
    [ -n "$CP_BIN" ] || die "no remora-cp binary: cargo build --release -p remora-cp"
    start_bg "$OUT/remora-cp.log" ip netns exec "$NS_S" "$CP_BIN" --grpc-addr "0.0.0.0:15012" \
        --admin-addr 127.0.0.1:15014 --state-dir "$T/mesh/cp-state" --token-file "$T/mesh/tokens.yaml" --log-format text
    MESH_CP_PID=$BG_PID
    local n=100
    until in_s curl -sf -o /dev/null http://127.0.0.1:15014/ready; do
        kill -0 "$MESH_CP_PID" 2>/dev/null || die "remora-cp exited; see $OUT/remora-cp.log"
        n=$((n - 1)); [ $n -gt 0 ] || die "remora-cp not ready after 10 s"
        sleep 0.1
    done
    install -m 644 "$T/mesh/cp-state/root-cert.pem" "$T/mesh/ca-roots.pem"
}
mesh_identity_args() {    # mesh_identity_args TOKEN-FILE CA-HOST
    echo "--ca-addr $2:15012 --ca-roots $T/mesh/ca-roots.pem --identity-token-file $1"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

run_start() {             # raises the fd limit; notes T0, LOAD0, COMMIT0, DIRTY0
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    T0=$(date +%s)
    LOAD0=$(loadavg)
    COMMIT0=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY0=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^?? bench/' && echo " (working tree has uncommitted changes)" || true)
    log "output: $OUT"
}

header_lines() {          # the date, machine, commit and command lines of a report
    local dirty="$DIRTY0"
    [ -n "${REMORA_PROXY:-}${REMORA_INIT:-}" ] && dirty+="; binaries given by REMORA_PROXY/REMORA_INIT, not built from this tree"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- commit: $COMMIT0$dirty; binaries $PROXY_SRC (sha256 $(sha256sum "$PROXY_BIN" | cut -c1-12)), $INIT_SRC"
    echo "- command: \`$CMDLINE\`"
}

show_report() {           # show_report MD: where the results are, then the markdown
    echo
    echo "Markdown (for bench/RESULTS.md): $1"
    echo "Raw figures and logs:            $OUT"
    echo
    cat "$1"
}
