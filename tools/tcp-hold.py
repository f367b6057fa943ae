#!/usr/bin/env python3
"""Hold a running `meridian serve` the way issue 8 describes, from loopback only, and time a
legitimate client meanwhile.

  tools/tcp-hold.py DNS_PORT ADMIN_PORT [QUERIES_PER_CLIENT]

1,100 DNS-over-TCP clients from 127.10-14.0.x (five /24s) each pipeline QUERIES_PER_CLIENT
(default 2000) queries for static.gslb.example.test (the example zone) with a 4 KiB receive
buffer and never read; a client from 127.200.0.1 then asks five times over TCP (and once with
`dig +tcp`). Then 2,000 connections send half a request head to the admin port, and /healthz
is asked with curl. Every count and wait is bounded; everything talks to 127.0.0.0/8.
"""
import resource
import socket
import struct
import subprocess
import sys
import time

CLIENTS = 1100
HALF_SENT = 2000

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
dns_port, admin_port = int(sys.argv[1]), int(sys.argv[2])
per_client = int(sys.argv[3]) if len(sys.argv) > 3 else 2000


def query(qid):
    name = b"".join(bytes([len(l)]) + l for l in b"static.gslb.example.test".split(b".")) + b"\0"
    m = struct.pack(">HHHHHH", qid & 0xFFFF, 0, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
    return struct.pack(">H", len(m)) + m


def probe():
    started = time.time()
    c = socket.socket()
    c.bind(("127.200.0.1", 0))
    c.settimeout(5)
    try:
        c.connect(("127.0.0.1", dns_port))
        c.sendall(query(7))
        n = struct.unpack(">H", c.recv(2))[0]
        ok = len(c.recv(n)) > 12
    except OSError:
        ok = False
    c.close()
    return ok, time.time() - started


def dig():
    started = time.time()
    out = subprocess.run(
        ["dig", "+tcp", "+tries=1", "+time=3", "-b", "127.200.0.1", "-p", str(dns_port),
         "@127.0.0.1", "static.gslb.example.test", "A"],
        capture_output=True, text=True, timeout=10).stdout
    return "NOERROR" in out, time.time() - started


burst = b"".join(query(i) for i in range(per_client))
held = []
started = time.time()
for i in range(CLIENTS):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((f"127.{10 + i % 5}.0.{1 + i // 5 % 250}", 0))
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", dns_port))
        s.setblocking(False)
        s.send(burst)
    except OSError:
        pass
    held.append(s)
print(f"{CLIENTS} non-reading clients, {per_client} queries each, connected in {time.time() - started:.1f}s")
for _ in range(5):
    ok, took = probe()
    print(f"TCP query from 127.200.0.1: answered={ok} in {took * 1000:.0f} ms")
    time.sleep(0.2)
ok, took = dig()
print(f"dig +tcp from 127.200.0.1: answered={ok} in {took * 1000:.0f} ms")
for s in held:
    s.close()

half = []
for _ in range(HALF_SENT):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", admin_port))
        s.send(b"GET /healthz HTTP/1.1\r\nHost: m\r\n")
    except OSError:
        pass
    half.append(s)
started = time.time()
code = subprocess.run(
    ["curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
     f"http://127.0.0.1:{admin_port}/healthz"], capture_output=True, text=True, timeout=10).stdout
print(f"/healthz beside {HALF_SENT} half-sent requests: {code} in {(time.time() - started) * 1000:.0f} ms")
time.sleep(7)
still_open = 0
for s in half:
    s.setblocking(False)
    try:
        s.recv(1)
    except BlockingIOError:
        still_open += 1
    except OSError:
        pass
    s.close()
print(f"half-sent requests still open 7 s later: {still_open}")
