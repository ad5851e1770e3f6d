#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections, hold them idle, then close them.

Used by bench/run.sh to measure a proxy's memory with many idle connections.
Each connection sends one GET and reads the full response first, so it is
known to be established end to end (through the proxy, to the origin) before
it goes idle. Prints "READY <n>" once all are open, then holds them until
SIGTERM, stdin closes, or --hold seconds pass, whichever comes first.

usage: idle_conns.py HOST PORT COUNT [--hold SECONDS]
"""

import argparse
import resource
import signal
import socket
import sys
import time


def read_response(sock):
    """Reads one HTTP/1.1 response with a Content-Length body; returns the status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk
    return status


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--hold", type=float, default=60.0)
    # The scenario's request target, e.g. /?apikey=... where a plugin
    # scenario authenticates requests: without it each request is a 401.
    p.add_argument("--path", default="/")
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    request = (
        "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: remora-bench-idle\r\n\r\n"
        % (args.path, args.host)
    ).encode()
    socks = []
    failures = 0
    deadline = time.monotonic() + args.hold
    try:
        for _ in range(args.count):
            if stop or time.monotonic() > deadline:
                break
            try:
                s = socket.create_connection((args.host, args.port), timeout=5)
                s.sendall(request)
                if read_response(s) != 200:
                    failures += 1
                socks.append(s)
            except OSError as e:
                failures += 1
                print("connect/request failed: %s" % e, file=sys.stderr)
        print("READY %d failures %d" % (len(socks), failures), flush=True)
        while not stop and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for s in socks:
            s.close()
    print("CLOSED %d" % len(socks), flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
