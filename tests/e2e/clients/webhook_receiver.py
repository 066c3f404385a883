#!/usr/bin/env python3
"""An HTTPS webhook receiver for tests (standard library only: http.server behind OpenSSL).

    webhook_receiver.py --cert CERT.pem --key KEY.pem

Listens on 127.0.0.1 on a free port and prints that port on the first line of stdout. Each
POST is answered 204 and printed as one JSON line: {"head": [request line, header lines...],
"body": "..."}. Runs until killed.
"""

import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        head = [self.requestline] + [f"{k}: {v}" for k, v in self.headers.items()]
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()
        print(json.dumps({"head": head, "body": body.decode("utf-8", "replace")}), flush=True)

    def log_message(self, *args):
        pass  # stdout carries the requests; stderr stays quiet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
