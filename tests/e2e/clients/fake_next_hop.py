#!/usr/bin/env python3
"""A scriptable SMTP/LMTP next hop for Moat's failure tests (standard library only).

It stands in for the mailbox tier so tests can make the next hop misbehave on purpose:
reject a recipient, refuse the message after DATA, answer LMTP per recipient, or drop the
connection in the middle of the body. Each accepted message is written to --spool as one file
per recipient (LMTP) or one file per message (SMTP), named <n>.eml.

Usage:
  fake_next_hop.py --port-file F --spool DIR [--lmtp] [--reject-rcpt ADDR=REPLY ...]
                   [--data-reply REPLY] [--lmtp-reply ADDR=REPLY ...] [--drop-after-bytes N]

It binds 127.0.0.1 on a free port, writes the port to --port-file, and serves until killed.
"""

import argparse
import itertools
import os
import socketserver
import threading

COUNTER = itertools.count()
LOCK = threading.Lock()


def parse_pairs(pairs):
    out = {}
    for p in pairs or []:
        addr, reply = p.split("=", 1)
        out[addr.lower()] = reply
    return out


class Handler(socketserver.StreamRequestHandler):
    def send(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def handle(self):
        args = self.server.args
        self.send("220 fake.next.hop ESMTP ready")
        rcpts = []
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "LHLO"):
                self.send("250-fake.next.hop")
                self.send("250-8BITMIME")
                self.send("250-SMTPUTF8")
                self.send("250 PIPELINING")
            elif verb == "MAIL":
                rcpts = []
                self.send("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = line.split("<", 1)[1].split(">", 1)[0].lower()
                reply = args.reject.get(addr)
                if reply:
                    self.send(reply)
                else:
                    rcpts.append(addr)
                    self.send("250 2.1.5 ok")
            elif verb == "DATA":
                self.send("354 go ahead")
                body = bytearray()
                while True:
                    chunk = self.rfile.readline(1 << 20)
                    if not chunk:
                        return
                    if args.drop_after_bytes is not None and len(body) + len(chunk) > args.drop_after_bytes:
                        # Vanish mid-body, as a crashing server would.
                        self.connection.close()
                        return
                    if chunk == b".\r\n":
                        break
                    if chunk.startswith(b".."):
                        chunk = chunk[1:]
                    body += chunk
                if args.lmtp:
                    for r in rcpts:
                        reply = args.lmtp_reply.get(r, "250 2.0.0 delivered")
                        if reply.startswith("2"):
                            self.store(body)
                        self.send(reply)
                else:
                    reply = args.data_reply or "250 2.0.0 queued"
                    if reply.startswith("2"):
                        self.store(body)
                    self.send(reply)
            elif verb == "RSET":
                rcpts = []
                self.send("250 2.0.0 ok")
            elif verb == "QUIT":
                self.send("221 2.0.0 bye")
                return
            else:
                self.send("502 5.5.1 not here")

    def store(self, body):
        with LOCK:
            n = next(COUNTER)
        path = os.path.join(self.server.args.spool, f"{n}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(body)
        os.rename(path + ".tmp", path)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--spool", required=True)
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--reject-rcpt", action="append", dest="reject_pairs")
    ap.add_argument("--lmtp-reply", action="append", dest="lmtp_pairs")
    ap.add_argument("--data-reply")
    ap.add_argument("--drop-after-bytes", type=int)
    args = ap.parse_args()
    args.reject = parse_pairs(args.reject_pairs)
    args.lmtp_reply = parse_pairs(args.lmtp_pairs)
    os.makedirs(args.spool, exist_ok=True)
    server = Server(("127.0.0.1", 0), Handler)
    server.args = args
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
