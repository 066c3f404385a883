#!/usr/bin/env python3
"""A tiny authoritative DNS server for tests (standard library only, UDP).

Answers TXT and A queries from a JSON zone given on the command line, so SPF, DKIM and DMARC
checks run against records the test chose and nothing leaves the machine:

    dns_stub.py --port-file F --zone '{"example.test": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]}}'

Unknown names get NXDOMAIN; known names without the asked type get an empty NOERROR.
"""

import argparse
import json
import socket
import struct


def parse_question(packet):
    labels, i = [], 12
    while packet[i] != 0:
        n = packet[i]
        labels.append(packet[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, _qclass = struct.unpack("!HH", packet[i + 1:i + 5])
    return ".".join(labels).lower().rstrip("."), qtype, packet[12:i + 5]


def txt_rdata(text):
    data = text.encode()
    out = b""
    for k in range(0, max(len(data), 1), 255):
        chunk = data[k:k + 255]
        out += bytes([len(chunk)]) + chunk
    return out


def answer(packet, zone):
    (qid, flags) = struct.unpack("!HH", packet[:4])
    name, qtype, question = parse_question(packet)
    records = zone.get(name)
    answers = []
    if records is not None:
        if qtype == 16:
            answers = [txt_rdata(t) for t in records.get("TXT", [])]
        elif qtype == 1:
            answers = [socket.inet_aton(a) for a in records.get("A", [])]
    rcode = 3 if records is None else 0
    header = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0)
    body = question
    for rdata in answers:
        body += struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata
    return header + body


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--zone", required=True)
    a = p.parse_args()
    zone = {k.lower().rstrip("."): v for k, v in json.loads(a.zone).items()}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(sock.getsockname()[1]))
    import os
    os.rename(a.port_file + ".tmp", a.port_file)
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(packet, zone), peer)
        except (IndexError, struct.error):
            pass


if __name__ == "__main__":
    main()
