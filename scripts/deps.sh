# Sourced by the scripts in this folder: installs, idempotently, what Remora
# needs from outside Cargo. Only missing commands trigger apt-get.

ensure_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "remora: this needs root (network namespaces and iptables)" >&2
      exit 1
    fi
    echo "remora: this needs root (network namespaces and iptables); re-running with sudo" >&2
    exec sudo -E "$0" "$@"
  fi
}

ensure_deps() {
  local want=() cmd pkg
  # command:package
  for pair in \
    ip:iproute2 \
    iptables:iptables \
    iptables-legacy:iptables \
    ip6tables:iptables \
    setpriv:util-linux \
    flock:util-linux \
    ps:procps \
    curl:curl \
    python3:python3 \
    protoc:protobuf-compiler \
    h2load:nghttp2-client \
    redis-server:redis-server; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || want+=("$pkg")
  done
  if [ ${#want[@]} -gt 0 ]; then
    echo "remora: installing ${want[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${want[@]}" | sort -u) >/dev/null
  fi
}
