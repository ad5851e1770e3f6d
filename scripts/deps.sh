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
    tcpdump:tcpdump \
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

# The chart test's Python packages (charts/remora/tests/test_chart.py), in a
# venv under the ignored target/ so nothing touches the system's Python:
# helm-python-sdk renders the chart in-process (Helm's Go code in a shared
# library, no helm binary); kubernetes-validate carries the Kubernetes
# schemas. Versions pinned; pip runs only when one is missing.
CHART_VENV=${CHART_VENV:-target/chart-venv}
ensure_chart_deps() {
  if [ ! -x "$CHART_VENV/bin/python" ]; then
    # Debian's python3 keeps venv (and its pip) in a package of its own.
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
      echo "remora: installing python3-venv" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    python3 -m venv "$CHART_VENV"
  fi
  if ! "$CHART_VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
    echo "remora: installing the chart test's Python packages into $CHART_VENV" >&2
    "$CHART_VENV/bin/pip" install -q --disable-pip-version-check \
      helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.4
  fi
}
