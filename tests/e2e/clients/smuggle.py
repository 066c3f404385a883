#!/usr/bin/env python3
"""SMTP smuggling and STARTTLS command-injection probes for Moat (Python 3.11, stdlib only).

Smuggling cases (one connection each): after STARTTLS/EHLO/MAIL/RCPT/DATA the
client sends, in ONE write,

    <outer message, header "X-Smuggle-Case: <n>-outer">
    <non-standard end-of-data candidate, e.g. "\\n.\\n">
    MAIL FROM:<evil@example.test>\\r\\nRCPT TO:<TO>\\r\\nDATA\\r\\n
    X-Smuggle-Case: <n>-inner ... smuggled\\r\\n.\\r\\n
    \\r\\n.\\r\\n

and then records every reply until the server closes the connection or stays
quiet for --quiet seconds.  A correct server treats everything up to the first
"\\r\\n.\\r\\n" as ONE message (so the "inner" header is never stored as a
message of its own); the trailing "\\r\\n.\\r\\n" then only draws syntax errors.
NOTE for the checker: in the correct outcome the text "X-Smuggle-Case: <n>-inner"
still appears inside the BODY of the stored outer message; look for it in a
message's header section (before the first empty line), not anywhere in it.
Output, one JSON line per case:

    {"case": n, "ending": repr(ending), "message_id": str,
     "replies": [str, ...], "closed_by_server": bool, "error": str|null}

Each reply is the full reply text (multi-line replies joined with "\\n").

STARTTLS injection case: on a plain connection, EHLO, then "STARTTLS\\r\\nNOOP\\r\\n"
in one write; after the 220 the TLS handshake is done and "EHLO x" is sent.
A correct server discards the plaintext NOOP, so the first reply inside TLS is
the multi-line EHLO reply.  Output:

    {"case": "starttls-injection", "noop_answered_in_tls": bool,
     "noop_answered_in_plaintext": bool, "tls_handshake": "ok"|error,
     "replies": [str, ...], "error": str|null}

The script makes no assertions: it always exits 0 (the Rust test inspects the
maildir and the JSON).  Example:

    python3 smuggle.py --ca ca.pem --server 127.0.0.1:2525 --to alice@example.test
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
import uuid

CRLF = b"\r\n"

# Bare/mixed end-of-data candidates that must NOT terminate DATA.
ENDINGS = ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\r", "\r.\r\n", "\r\n.\n", "\n.\r"]


class Conn:
    """A socket plus a receive buffer, with SMTP reply parsing."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.closed = False

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        """Read more bytes; False on timeout or EOF (sets self.closed)."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def reply(self, timeout: float) -> str | None:
        """Next complete reply (lines joined with '\\n'), or None on timeout/EOF."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed or not self._fill(left):
                    if self.buf or lines:  # partial reply: surface it rather than lose it
                        partial = lines + [self.buf.decode("utf-8", "replace")]
                        self.buf = b""
                        return "\n".join(partial) + " <incomplete>"
                    return None
            raw, _, self.buf = self.buf.partition(b"\n")
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def expect(self, code: str, timeout: float) -> str:
        r = self.reply(timeout)
        if r is None or not r.startswith(code):
            raise RuntimeError(f"expected {code}, got {r!r}")
        return r

    def drain(self, first: float, quiet: float) -> list[str]:
        """All replies until the server closes or is silent: `first` seconds for the
        first reply (a slow machine may take a while), then `quiet` seconds."""
        r = self.reply(first)
        if r is None:
            return []
        out = [r]
        while True:
            r = self.reply(quiet)
            if r is None:
                return out
            out.append(r)


def connect_tls(host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> Conn:
    """Plain connect, EHLO, STARTTLS, verified handshake, EHLO."""
    c = Conn(socket.create_connection((host, port), timeout=timeout))
    c.expect("220", timeout)
    c.send("EHLO smuggler.e2e.test\r\n")
    c.expect("250", timeout)
    c.send("STARTTLS\r\n")
    c.expect("220", timeout)
    c.sock = ctx.wrap_socket(c.sock, server_hostname=host)
    c.buf = b""
    c.send("EHLO smuggler.e2e.test\r\n")
    c.expect("250", timeout)
    return c


def smuggle_case(n: int, ending: str, args, ctx: ssl.SSLContext) -> dict:
    host, port = args.server
    message_id = f"<{uuid.uuid4()}@e2e.moat.test>"
    result = {"case": n, "ending": repr(ending), "message_id": message_id,
              "replies": [], "closed_by_server": False, "error": None}
    c = None
    try:
        c = connect_tls(host, port, ctx, args.timeout)
        c.send(f"MAIL FROM:<{args.sender}>\r\n")
        result["replies"].append(c.expect("250", args.timeout))
        c.send(f"RCPT TO:<{args.to}>\r\n")
        result["replies"].append(c.expect("250", args.timeout))
        c.send("DATA\r\n")
        result["replies"].append(c.expect("354", args.timeout))
        outer = (
            f"From: <{args.sender}>\r\n"
            f"To: <{args.to}>\r\n"
            f"Subject: smuggling probe {n}\r\n"
            f"Message-ID: {message_id}\r\n"
            f"X-Smuggle-Case: {n}-outer\r\n"
            "\r\n"
            "outer body"
        )
        inner = (
            "MAIL FROM:<evil@example.test>\r\n"
            f"RCPT TO:<{args.to}>\r\n"
            "DATA\r\n"
            f"X-Smuggle-Case: {n}-inner\r\n"
            "Subject: smuggled\r\n"
            "\r\n"
            "smuggled\r\n"
            ".\r\n"
        )
        c.send(outer + ending + inner + "\r\n.\r\n")
        result["replies"] += c.drain(args.timeout, args.quiet)
        result["closed_by_server"] = c.closed
        if not c.closed:
            try:
                c.send("QUIT\r\n")
                r = c.reply(args.quiet)
                if r is not None:
                    result["replies"].append(r)
            except OSError:
                pass
    except Exception as e:  # report, never abort the whole run
        result["error"] = f"{type(e).__name__}: {e}"
        if c is not None:
            result["closed_by_server"] = c.closed
    finally:
        if c is not None:
            c.sock.close()
    return result


def starttls_injection(args, ctx: ssl.SSLContext) -> dict:
    host, port = args.server
    result = {"case": "starttls-injection", "noop_answered_in_tls": False,
              "noop_answered_in_plaintext": False, "tls_handshake": None,
              "replies": [], "error": None}
    c = None
    try:
        c = Conn(socket.create_connection((host, port), timeout=args.timeout))
        c.expect("220", args.timeout)
        c.send("EHLO injector.e2e.test\r\n")
        c.expect("250", args.timeout)
        c.send("STARTTLS\r\nNOOP\r\n")
        r = c.reply(args.timeout)
        result["replies"].append(r)
        if r is None or not r.startswith("220"):
            raise RuntimeError(f"STARTTLS not accepted: {r!r}")
        # A plaintext answer to NOOP already on the wire would be a separate bug.
        if c.buf:
            result["noop_answered_in_plaintext"] = True
            result["replies"].append("<plaintext> " + c.buf.decode("utf-8", "replace"))
        try:
            c.sock = ctx.wrap_socket(c.sock, server_hostname=host)
            c.buf = b""
            result["tls_handshake"] = "ok"
        except (ssl.SSLError, OSError) as e:
            result["tls_handshake"] = f"{type(e).__name__}: {e}"
            return result
        c.send("EHLO x\r\n")
        after = c.drain(args.timeout, args.quiet)
        result["replies"] += after
        # Correct: exactly one reply, the multi-line EHLO 250. An injected NOOP
        # shows up as an extra reply and/or a single-line 250 coming first.
        first = after[0] if after else None
        first_is_ehlo = first is not None and first.startswith("250-")
        result["noop_answered_in_tls"] = len(after) > 1 or (first is not None and not first_is_ehlo)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        if c is not None:
            c.sock.close()
    return result


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="SMTP smuggling / STARTTLS injection probes; one JSON line per case; always exits 0.")
    p.add_argument("--ca", required=True, help="CA certificate (PEM) that signed the server certificate")
    p.add_argument("--server", required=True, type=host_port, help="STARTTLS listener HOST:PORT (e.g. MX)")
    p.add_argument("--to", required=True, help="accepted recipient, e.g. alice@example.test")
    p.add_argument("--sender", default="smuggle-probe@example.test", help="envelope sender of the outer message")
    p.add_argument("--quiet", type=float, default=3.0,
                   help="stop reading replies after this many silent seconds (default 3)")
    p.add_argument("--timeout", type=float, default=15.0, help="timeout for expected replies (default 15)")
    p.add_argument("--only", default=None,
                   help="run one case only: a 1-based ending index or 'starttls-injection'")
    args = p.parse_args(argv)
    ctx = ssl.create_default_context(cafile=args.ca)

    for n, ending in enumerate(ENDINGS, start=1):
        if args.only in (None, str(n)):
            print(json.dumps(smuggle_case(n, ending, args, ctx)), flush=True)
    if args.only in (None, "starttls-injection"):
        print(json.dumps(starttls_injection(args, ctx)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
