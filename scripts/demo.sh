#!/usr/bin/env bash
# The local mesh demo: three pods (network namespaces on a bridge), each with
# remora-init's capture rules and remora-proxy running as uid 1337. The
# client pod calls the server pod directly, then calls the `hello` service's
# virtual IP, which its sidecar routes by Gateway API rules: a canary header
# goes to v2, the rest is split 80/20 between v1 and v2. Metrics prove
# which sidecars carried what.
#
# It leaves nothing behind: on exit, Ctrl-C or SIGTERM it stops every process
# inside its namespaces (found by namespace, not by remembered PIDs), then
# deletes the namespaces and its temporary files. Its names (remora-demo-*)
# and addresses (10.90.0.0/24) are its own; the e2e harness uses rm-* and
# 10.99.0.0/24. REMORA_BIN_DIR=DIR uses the binaries in DIR instead of
# building them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_root "$@"
ensure_deps

# One demo at a time: a second would tear down the first one's pods.
LOCK=/run/remora-demo.lock
exec 9>"$LOCK"
if ! flock -n 9; then
  echo "remora demo: another demo is running (it holds $LOCK); wait for it to finish" >&2
  exit 1
fi

if [ -n "${REMORA_BIN_DIR:-}" ]; then
  BIN=$REMORA_BIN_DIR
else
  cargo build --bins --quiet -p remora-proxy -p remora-iptables
  BIN=${CARGO_TARGET_DIR:-target}/debug
fi

NODE=remora-demo-node
PODS=(client server server-v2)
declare -A IP=([client]=10.90.0.2 [server]=10.90.0.3 [server-v2]=10.90.0.4)
TMP=$(mktemp -d /tmp/remora-demo.XXXXXX)
CONFIG=$TMP/mesh.yaml

# Whether any of the PIDs is still running (zombies, exited but not yet
# reaped by this shell, do not count).
any_alive() {
  local pid state
  for pid in "$@"; do
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || continue
    [ "${state:0:1}" = Z ] || return 0
  done
  return 1
}

# Stops every process in the demo's namespaces: TERM, up to 5 s to exit
# (the proxies drain), then KILL. `ip netns pids` finds them however they
# were started, even if they forked or a PID was never recorded.
stop_pods() {
  local ns pids=()
  for ns in "$NODE" "${PODS[@]/#/remora-demo-}"; do
    [ -e "/run/netns/$ns" ] || continue
    pids+=($(ip netns pids "$ns" 2>/dev/null || true))
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    any_alive "${pids[@]}" || return 0
    sleep 0.1
  done
  echo "remora demo: killing what did not exit within 5 s after SIGTERM" >&2
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

cleanup() {
  trap - EXIT INT TERM
  stop_pods
  wait 2>/dev/null || true
  for pod in "${PODS[@]}"; do ip netns del "remora-demo-$pod" 2>/dev/null || true; done
  ip netns del "$NODE" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
# An interrupted demo exits (running the EXIT trap) with the signal's code.
trap 'exit 130' INT
trap 'exit 143' TERM
# A previous run killed with SIGKILL may have left pods behind.
stop_pods
for pod in "${PODS[@]}"; do ip netns del "remora-demo-$pod" 2>/dev/null || true; done
ip netns del "$NODE" 2>/dev/null || true

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_pod() { local pod=$1; shift; ip netns exec "remora-demo-$pod" "$@"; }

step "pods: network namespaces cabled to a bridge"
ip netns add "$NODE"
ip -n "$NODE" link add br0 type bridge
ip -n "$NODE" addr add 10.90.0.1/24 dev br0
ip -n "$NODE" link set br0 up
for pod in "${PODS[@]}"; do
  ns=remora-demo-$pod
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$NODE" link add "veth-$pod" type veth peer name eth0 netns "$ns"
  ip -n "$NODE" link set "veth-$pod" master br0 up
  ip -n "$ns" addr add "${IP[$pod]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  # Service virtual IPs are owned by no pod; like in a cluster, they leave
  # by the default route, and the capture rules redirect them first.
  ip -n "$ns" route add default via 10.90.0.1
  echo "pod $pod: ${IP[$pod]}"
done

step "remora-init: capture rules in each pod"
for pod in "${PODS[@]}"; do
  in_pod "$pod" "$BIN/remora-init" --ipv6 false
done
in_pod client iptables-save -t nat | grep REMORA

step "the client's mesh config: service hello (VIP 10.96.0.10:80), canary and 80/20 split"
cat >"$CONFIG" <<YAML
version: demo-1
outbound:
  services:
  - name: hello
    addresses: [10.96.0.10]
    ports:
    - port: 80
      routes:
      - name: canary
        matches:
        - headers: [{name: x-canary, value: "true"}]
        backendRefs: [{name: hello-v2}]
      - name: split
        backendRefs: [{name: hello-v1, weight: 80}, {name: hello-v2, weight: 20}]
backends:
  hello-v1:
    endpoints: [{address: "${IP[server]}:8080"}]
  hello-v2:
    endpoints: [{address: "${IP[server-v2]}:8080"}]
YAML
cat "$CONFIG"
chmod 0644 "$CONFIG"; chmod 0755 "$TMP"

step "remora-proxy in each pod, as uid 1337"
for pod in "${PODS[@]}"; do
  args=()
  [ "$pod" = client ] && args=(--config "$CONFIG")
  # Not through in_pod: a backgrounded function is a subshell, whose PID
  # is not the proxy's. (stop_pods finds them by namespace either way.)
  ip netns exec "remora-demo-$pod" setpriv --reuid=1337 --regid=1337 --clear-groups -- \
    "$BIN/remora-proxy" "${args[@]}" >"/tmp/remora-demo-$pod.log" 2>&1 9>&- &
done
for pod in "${PODS[@]}"; do
  for _ in $(seq 50); do
    in_pod "$pod" curl -sf -o /dev/null http://127.0.0.1:15020/ready && break
    sleep 0.1
  done
  echo "proxy in $pod: $(in_pod "$pod" curl -s http://127.0.0.1:15020/ready)"
done

step "the apps: an HTTP server on :8080 in each server pod"
for pod in server server-v2; do
  www=$TMP/www-$pod
  mkdir -p "$www"
  echo "hello from $pod" >"$www/index.html"
  chmod -R a+rX "$www"
  ip netns exec "remora-demo-$pod" python3 -m http.server 8080 --bind 0.0.0.0 --directory "$www" >/dev/null 2>&1 9>&- &
  for _ in $(seq 50); do
    in_pod "$pod" curl -sf -o /dev/null "http://127.0.0.1:8080/" 2>/dev/null && break
    sleep 0.1
  done
done

step "client pod: curl http://${IP[server]}:8080/ (pod to pod, both sidecars)"
in_pod client curl -sS "http://${IP[server]}:8080/"

step "proof: the client's outbound sidecar and the server's inbound sidecar both carried it"
for pod in client server; do
  echo "-- $pod proxy"
  in_pod "$pod" curl -s http://127.0.0.1:15020/metrics \
    | grep -E '^remora_tcp_(connections_opened_total|received_bytes_total|sent_bytes_total)' || true
done

step "client pod: curl -H 'x-canary: true' http://10.96.0.10/ (canary route)"
in_pod client curl -sS -H 'x-canary: true' http://10.96.0.10/

step "client pod: 50 x curl http://10.96.0.10/ (80/20 split)"
for _ in $(seq 50); do in_pod client curl -sS http://10.96.0.10/; done | sort | uniq -c

step "the client sidecar's request metrics, by route and backend"
in_pod client curl -s http://127.0.0.1:15020/metrics | grep -E '^remora_requests_total' || true

step "done: the demo's pods go now; the proxies' logs stay in /tmp/remora-demo-*.log"
