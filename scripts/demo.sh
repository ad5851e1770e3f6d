#!/usr/bin/env bash
# The local mesh demo: two pods (network namespaces on a bridge), each with
# remora-init's capture rules and remora-proxy running as uid 1337. The
# client pod calls the server pod; both sidecars carry the request, and
# their metrics prove it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_root "$@"
ensure_deps

cargo build --bins --quiet -p remora-proxy -p remora-iptables
BIN=${CARGO_TARGET_DIR:-target}/debug

NODE=remora-demo-node
PODS=(client server)
declare -A IP=([client]=10.90.0.2 [server]=10.90.0.3)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for pod in "${PODS[@]}"; do ip netns del "remora-demo-$pod" 2>/dev/null || true; done
  ip netns del "$NODE" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

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
  echo "pod $pod: ${IP[$pod]}"
done

step "remora-init: capture rules in each pod"
for pod in "${PODS[@]}"; do
  in_pod "$pod" "$BIN/remora-init" --ipv6 false
done
in_pod client iptables-save -t nat | grep REMORA

step "remora-proxy in each pod, as uid 1337"
for pod in "${PODS[@]}"; do
  in_pod "$pod" setpriv --reuid=1337 --regid=1337 --clear-groups -- \
    "$BIN/remora-proxy" >"/tmp/remora-demo-$pod.log" 2>&1 &
  PIDS+=($!)
done
for pod in "${PODS[@]}"; do
  for _ in $(seq 50); do
    in_pod "$pod" curl -sf -o /dev/null http://127.0.0.1:15020/ready && break
    sleep 0.1
  done
  echo "proxy in $pod: $(in_pod "$pod" curl -s http://127.0.0.1:15020/ready)"
done

step "the app in the server pod: an HTTP server on :8080"
mkdir -p /tmp/remora-demo-www
echo "hello from the server pod" >/tmp/remora-demo-www/index.html
in_pod server python3 -m http.server 8080 --bind 0.0.0.0 --directory /tmp/remora-demo-www >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
  in_pod server curl -sf -o /dev/null "http://${IP[server]}:8080/" 2>/dev/null && break
  sleep 0.1
done

step "client pod: curl http://${IP[server]}:8080/"
in_pod client curl -sS "http://${IP[server]}:8080/"

step "proof: the client's outbound sidecar and the server's inbound sidecar both carried it"
for pod in "${PODS[@]}"; do
  echo "-- $pod proxy"
  in_pod "$pod" curl -s http://127.0.0.1:15020/metrics \
    | grep -E '^remora_tcp_(connections_opened_total|received_bytes_total|sent_bytes_total)' || true
done
