#!/usr/bin/env python3
"""nx_flood.py - a flood of unique nonexistent names with DO=1 at a DNS server on 127.0.0.1.

Every query asks A for a fresh random label under ZONE, so a signing server must make one new
NSEC signature per query (RFC 9824 compact denial) and can cache nothing useful. Closed loop:
at most WINDOW queries outstanding; bounded by SECS.

usage: nx_flood.py PORT SECS ZONE [WINDOW]
prints: sent=N answered=N noerror_nsec=N qps=Q
"""
import os
import random
import socket
import struct
import sys
import time


def query(qid: int, zone_labels: list, label: bytes) -> bytes:
    head = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 1)
    name = bytes([len(label)]) + label
    for z in zone_labels:
        name += bytes([len(z)]) + z
    name += b"\x00"
    # A IN; OPT: root, payload 1232, DO set (TTL 0x00008000), no options.
    return head + name + struct.pack(">HH", 1, 1) + b"\x00" + struct.pack(">HHIH", 41, 1232, 0x8000, 0)


def main() -> int:
    port, secs, zone = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    window = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    zone_labels = [z.encode() for z in zone.strip(".").split(".")]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.2)
    rnd = random.Random(os.getpid())
    sent = answered = nsec = 0
    outstanding = 0
    end = time.monotonic() + secs
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    while time.monotonic() < end:
        while outstanding < window:
            label = bytes(rnd.choice(alphabet) for _ in range(16))
            sock.send(query(sent & 0xFFFF, zone_labels, label))
            sent += 1
            outstanding += 1
        try:
            reply = sock.recv(4096)
        except socket.timeout:
            outstanding = 0  # lost replies: refill the window
            continue
        outstanding -= 1
        answered += 1
        rcode = reply[3] & 0xF
        nscount = struct.unpack(">H", reply[8:10])[0]
        if rcode == 0 and nscount >= 4:  # SOA, RRSIG, NSEC, RRSIG
            nsec += 1
    print(f"sent={sent} answered={answered} noerror_nsec={nsec} qps={answered / secs:.0f}")
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main())
