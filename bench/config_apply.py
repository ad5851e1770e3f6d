#!/usr/bin/env python3
"""Helpers of bench/config_apply.sh: the mesh configs it applies, the
rewrites it times, and the latency figures it reports.

  gen      writes a series of mesh configs (YAML), each one step from the
           last: "tiny" (the client's service only), "base" (N services),
           "inc" (one service changed), "full" (every service changed).
  drive    runs inside the client namespace: at fixed times renames the
           next config over the watched file (as an editor or a ConfigMap
           would) and waits, polling /metrics on one kept-alive connection,
           until remora_config_updates_total counts it; writes one line per
           rewrite. --dry keeps the schedule and the polling, renames nothing.
  analyze  turns an h2load --log-file (start µs since the epoch, status,
           duration µs) and the drive lines into one line of figures; with
           --align, for a baseline run, in windows as long as the applies.

Every loop here is bounded in count and time.
"""

import argparse
import http.client
import os
import sys
import time

# The client's requests go to this service; every other service only exists.
VIP_NET = "10.96"


def vip(i):
    return "%s.%d.%d" % (VIP_NET, i // 250, i % 250 + 1)


def write_config(path, version, n, client, origin, values, only=None, backends=True):
    """One mesh config: n services (or just `only`), each shaped as a
    Kubernetes Service translates: a VIP, two host names, one HTTP port with
    two routes (a path-and-header match, then a catch-all) and one backend
    of three endpoints (the client's: the origin alone). values[i] sets
    service i's route timeouts and (with `backends`) its backend's connect
    timeout, so changing it changes the service."""
    idx = range(n) if only is None else [only]
    out = ["version: %s" % version, "outbound:", "  services:"]
    for i in idx:
        out += [
            "  - name: svc-%05d" % i,
            "    addresses: [%s]" % vip(i),
            "    hostnames: [svc-%05d, svc-%05d.default.svc.cluster.local]" % (i, i),
            "    ports:",
            "    - port: 80",
            "      protocol: http",
            "      routes:",
            "      - name: api-%05d" % i,
            "        matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: \"1\"}]}]",
            "        timeouts: {request: %ds}" % (10 + values[i]),
            "        backendRefs: [{name: be-%05d}]" % i,
            "      - name: all-%05d" % i,
            "        timeouts: {request: %ds}" % (10 + values[i]),
            "        backendRefs: [{name: be-%05d}]" % i,
        ]
    out.append("backends:")
    for i in idx:
        if i == client:
            endpoints = '{address: "%s"}' % origin
        else:
            # Never dialled: only the client's service carries traffic.
            endpoints = ", ".join('{address: "10.%d.%d.%d:8080"}' % (80 + k, i // 250, i % 250 + 1)
                                  for k in range(3))
        out += [
            "  be-%05d:" % i,
            "    connectTimeout: %dms" % (1000 + (values[i] if backends else 0)),
            "    endpoints: [%s]" % endpoints,
        ]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def gen(a):
    values = [0] * a.services
    step = 0
    others = [i for i in range(a.services) if i != a.client]
    names = []
    for item in a.series.split(","):
        kind, _, count = item.partition("*")
        for _ in range(int(count or 1)):
            step += 1
            if kind == "inc":
                # A different service each time, never the client's.
                values[others[(step * 7919) % len(others)]] = step
            elif kind == "full":
                values = [step] * a.services
            elif kind not in ("tiny", "base"):
                sys.exit("unknown series item %r" % kind)
            name = os.path.join(a.outdir, "%03d-%s.yaml" % (step, kind))
            only = a.client if kind == "tiny" else None
            write_config(name, "%s-%d" % (kind, step), a.services, a.client, a.origin, values, only,
                         backends=a.change == "both")
            names.append(name)
    print("\n".join(names))


class Metrics:
    """/metrics over one kept-alive connection (reopened if it drops)."""

    def __init__(self, host, port):
        self.host, self.port, self.conn = host, port, None

    def scrape(self):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                self.conn.request("GET", "/metrics")
                r = self.conn.getresponse()
                body = r.read().decode("utf-8", "replace")
                return parse_metrics(body)
            except (OSError, http.client.HTTPException):
                self.conn = None
        return None


def parse_metrics(body):
    m = {"applied": 0, "rejected": 0, "apply_seconds": None}
    for line in body.splitlines():
        if line.startswith('remora_config_updates_total{result="applied"}'):
            m["applied"] = int(float(line.split()[-1]))
        elif line.startswith('remora_config_updates_total{result="rejected"}'):
            m["rejected"] = int(float(line.split()[-1]))
        elif line.startswith("remora_config_apply_seconds "):
            m["apply_seconds"] = float(line.split()[-1])
    return m


def drive(a):
    files = [l.strip() for l in open(a.files) if l.strip()]
    metrics = Metrics("127.0.0.1", a.admin_port)
    start = time.time() + a.start_delay
    out = open(a.out, "w")
    for k, f in enumerate(files):
        due = start + k * a.interval
        now = time.time()
        if due > now:
            time.sleep(due - now)
        before = metrics.scrape()
        if before is None:
            out.write("%d\t%s\tNA\tNA\tNA\tno-metrics\n" % (k + 1, os.path.basename(f)))
            continue
        t0 = time.time()
        if a.dry:
            out.write("%d\t%s\t%d\t%d\tNA\tdry\n" % (k + 1, os.path.basename(f), t0 * 1e6, t0 * 1e6))
            continue
        os.rename(f, a.config)
        result, m = "timeout", before
        deadline = t0 + a.timeout
        while time.time() < deadline:
            m = metrics.scrape() or before
            if m["applied"] > before["applied"]:
                result = "applied"
                break
            if m["rejected"] > before["rejected"]:
                result = "rejected"
                break
            time.sleep(a.poll)
        t1 = time.time()
        gauge = "NA" if m["apply_seconds"] is None else "%.6f" % m["apply_seconds"]
        out.write("%d\t%s\t%d\t%d\t%s\t%s\n" % (k + 1, os.path.basename(f), t0 * 1e6, t1 * 1e6, gauge, result))
        out.flush()
        if a.settle:
            time.sleep(a.settle)
    out.close()


def pct(d, p):
    # nearest rank
    return d[min(len(d) - 1, max(0, int(-(-p * len(d) // 100)) - 1))] / 1000.0


def analyze(a):
    reqs = []  # (start µs, status, duration µs)
    for line in open(a.log):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 3:
            reqs.append((int(f[0]), f[1], int(f[2])))
    windows = []  # rename .. counted + 50 ms
    if a.drive:
        for line in open(a.drive):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 6 and f[5] != "dry" and f[2] != "NA":
                windows.append((int(f[2]), int(f[3]) + 50_000))
    if a.align:
        # The same windows, moved to the times a dry run polled at: what a
        # run without rewrites saw in windows as long as the applies.
        starts = []
        for line in open(a.align):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 6 and f[2] != "NA":
                starts.append(int(f[2]))
        windows = [(s, s + (w1 - w0)) for s, (w0, w1) in zip(starts, windows)]
    if not reqs:
        print("0 0 NA NA NA NA 0 NA 0")
        return
    bad = sum(1 for r in reqs if not r[1].startswith("2"))
    d = sorted(r[2] for r in reqs)
    slow = a.slow_ms * 1000
    over = sum(1 for x in d if x > slow)
    during = [r[2] for r in reqs if any(r[0] < w1 and r[0] + r[2] > w0 for w0, w1 in windows)]
    worst = "%.3f" % (max(during) / 1000.0) if during else "NA"
    over_during = sum(1 for x in during if x > slow)
    print("%d %d %.3f %.3f %.3f %.3f %d %s %d" % (
        len(d), bad, pct(d, 50), pct(d, 99), pct(d, 99.9), d[-1] / 1000.0, over, worst, over_during))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--services", type=int, required=True)
    g.add_argument("--client", type=int, required=True, help="index of the client's service")
    g.add_argument("--origin", required=True, help="ip:port every backend points at")
    g.add_argument("--series", required=True, help="e.g. tiny,base,inc*5,full*5")
    g.add_argument("--outdir", required=True)
    g.add_argument("--change", choices=["both", "route"], default="both",
                   help="what a changed service changes: its route and backend, or its route only")
    d = sub.add_parser("drive")
    d.add_argument("--files", required=True, help="file listing the configs to apply, in order")
    d.add_argument("--config", required=True, help="the path the proxy watches")
    d.add_argument("--out", required=True)
    d.add_argument("--admin-port", type=int, default=15020)
    d.add_argument("--start-delay", type=float, default=0.0)
    d.add_argument("--interval", type=float, default=0.0, help="seconds between rewrites")
    d.add_argument("--settle", type=float, default=0.0, help="pause after each apply")
    d.add_argument("--timeout", type=float, default=30.0, help="longest wait for one apply")
    d.add_argument("--poll", type=float, default=0.005)
    d.add_argument("--dry", action="store_true")
    n = sub.add_parser("analyze")
    n.add_argument("--log", required=True)
    n.add_argument("--drive")
    n.add_argument("--align", help="a dry run's drive lines: move the windows to its times")
    n.add_argument("--slow-ms", type=float, default=10.0)
    a = p.parse_args()
    {"gen": gen, "drive": drive, "analyze": analyze}[a.cmd](a)


if __name__ == "__main__":
    main()
