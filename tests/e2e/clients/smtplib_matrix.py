#!/usr/bin/env python3
"""End-to-end SMTP client matrix for the Moat server (Python 3.11, stdlib only).

Runs a set of independent client scenarios against the MX (port 25 style,
STARTTLS), submission (STARTTLS required before MAIL) and SMTPS (implicit
TLS) listeners, and prints one JSON object per case on stdout:

    {"case": str,          # case name (see CASES)
     "ok": bool,           # every assertion of the case held
     "detail": str,        # human-readable summary or the failure reason
     "message_id": str,    # Message-ID header value, with angle brackets
     "rcpt": [str],        # envelope recipients the message was meant for
     "body_b64": str}      # base64 of the exact message the server must store

``body_b64`` is the full RFC 5322 message (headers, blank line, body; CRLF
line endings) exactly as the server sees it after SMTP dot-unstuffing (or as
the concatenated BDAT chunks).  The message always ends with CRLF.

TLS is always verified against the CA given with ``--ca`` (full chain and
hostname/IP verification; connect to 127.0.0.1 and the certificate must carry
the IP SAN).  The process exits 0 only if every case that ran is ok.

Example:

    python3 smtplib_matrix.py --ca ca.pem --mx 127.0.0.1:2525 \\
        --submission 127.0.0.1:5870 --smtps 127.0.0.1:4650 \\
        --to alice@example.test [--only bdat]
"""

from __future__ import annotations

import argparse
import base64
import json
import smtplib
import socket
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable

CRLF = b"\r\n"
SENDER = "e2e-sender@example.test"
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


class CaseFailure(Exception):
    """Raised by a case when one of its assertions does not hold."""


@dataclass
class Outcome:
    """What a case produced; turned into one JSON line."""

    ok: bool = False
    detail: str = ""
    message_id: str = ""
    rcpt: list[str] = field(default_factory=list)
    body: bytes = b""


@dataclass
class Config:
    ca: str
    mx: tuple[str, int]
    submission: tuple[str, int]
    smtps: tuple[str, int]
    to: str
    utf8_to: str
    reject_to: str
    user: str | None
    password: str | None
    timeout: float
    only: str | None = None

    def tls_context(self) -> ssl.SSLContext:
        # Full verification: CA chain + hostname (IP SAN for 127.0.0.1).
        return ssl.create_default_context(cafile=self.ca)


# --------------------------------------------------------------------------
# Message construction
# --------------------------------------------------------------------------

def new_message_id() -> str:
    return f"<{uuid.uuid4()}@e2e.moat.test>"


def build_message(
    case: str,
    message_id: str,
    to: str,
    subject: str,
    body_lines: list[str],
    *,
    eight_bit: bool = False,
) -> bytes:
    """Build a CRLF message as bytes (UTF-8 allowed in headers and body).

    ``body_lines`` are joined with CRLF; the result always ends in CRLF so
    that what smtplib transmits is exactly what the server must store.
    """
    headers = [
        f"From: Moat E2E <{SENDER}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {message_id}",
        f"X-E2E-Case: {case}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    text = "\r\n".join(headers) + "\r\n\r\n" + "\r\n".join(body_lines) + "\r\n"
    return text.encode("utf-8")


def dot_stuff(message: bytes) -> bytes:
    """Apply RFC 5321 transparency: double a leading '.' on every line."""
    lines = message.split(CRLF)
    return CRLF.join(b"." + ln if ln.startswith(b".") else ln for ln in lines)


# --------------------------------------------------------------------------
# Raw reply reader (used where smtplib is bypassed)
# --------------------------------------------------------------------------

class ReplyReader:
    """Buffered SMTP reply reader over a (possibly TLS) socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CaseFailure(f"connection closed by server (partial: {self.buf!r})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply; return (code, text lines)."""
        lines: list[str] = []
        while True:
            raw = self._line().decode("utf-8", "replace")
            if len(raw) < 3 or not raw[:3].isdigit():
                raise CaseFailure(f"malformed reply line {raw!r}")
            lines.append(raw)
            if len(raw) == 3 or raw[3] != "-":
                return int(raw[:3]), lines

    def expect(self, what: str, accept: Callable[[int], bool]) -> tuple[int, list[str]]:
        code, lines = self.reply()
        if not accept(code):
            raise CaseFailure(f"{what}: unexpected reply {' | '.join(lines)}")
        return code, lines


def send_cmd(sock: socket.socket, line: str) -> None:
    sock.sendall(line.encode("utf-8") + CRLF)


def ehlo_keywords(lines: list[str]) -> set[str]:
    """EHLO keywords (upper case) from a 250 multi-line reply, skipping the greeting line."""
    return {ln[4:].split(" ", 1)[0].upper() for ln in lines[1:] if len(ln) > 4}


# --------------------------------------------------------------------------
# Helpers on top of smtplib
# --------------------------------------------------------------------------

def smtp_starttls(cfg: Config, addr: tuple[str, int]) -> tuple[smtplib.SMTP, str]:
    """Connect, EHLO, STARTTLS (verified), EHLO; return (client, TLS version)."""
    smtp = smtplib.SMTP(addr[0], addr[1], local_hostname="client.e2e.test", timeout=cfg.timeout)
    try:
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            raise CaseFailure("server does not advertise STARTTLS")
        code, resp = smtp.starttls(context=cfg.tls_context())
        if code != 220:
            raise CaseFailure(f"STARTTLS refused: {code} {resp!r}")
        version = smtp.sock.version() if isinstance(smtp.sock, ssl.SSLSocket) else None
        if version not in TLS_VERSIONS:
            raise CaseFailure(f"connection not TLS after STARTTLS (version={version!r})")
        code, resp = smtp.ehlo()
        if code != 250:
            raise CaseFailure(f"EHLO after STARTTLS failed: {code} {resp!r}")
        return smtp, version
    except BaseException:
        smtp.close()
        raise


def check_sendmail(refused: dict) -> None:
    if refused:
        raise CaseFailure(f"recipients refused: {refused!r}")


def quit_quietly(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def case_mx_starttls(cfg: Config, out: Outcome) -> None:
    out.rcpt = [cfg.to]
    out.body = build_message(
        "mx-starttls", out.message_id, cfg.to, "mx starttls",
        ["Hello over MX + STARTTLS.", ".this line starts with a dot", "..and this with two", "end"],
    )
    smtp, version = smtp_starttls(cfg, cfg.mx)
    try:
        check_sendmail(smtp.sendmail(SENDER, out.rcpt, out.body))
    finally:
        quit_quietly(smtp)
    out.detail = f"delivered over {version}"


def case_submission_starttls(cfg: Config, out: Outcome) -> None:
    # 1) MAIL before STARTTLS must be refused with 530.
    plain = smtplib.SMTP(cfg.submission[0], cfg.submission[1],
                         local_hostname="client.e2e.test", timeout=cfg.timeout)
    try:
        plain.ehlo()
        code, resp = plain.docmd("MAIL FROM:<x@example.test>")
    finally:
        quit_quietly(plain)
    if code != 530:
        raise CaseFailure(f"MAIL before STARTTLS: expected 530, got {code} {resp!r}")
    pre = f"MAIL before STARTTLS -> {code}"

    # 2) Normal submission after STARTTLS.
    out.rcpt = [cfg.to]
    out.body = build_message(
        "submission-starttls", out.message_id, cfg.to, "submission starttls",
        ["Hello over submission + STARTTLS.", ".dot line", "end"],
    )
    smtp, version = smtp_starttls(cfg, cfg.submission)
    try:
        if cfg.user is not None:
            smtp.login(cfg.user, cfg.password or "")
        check_sendmail(smtp.sendmail(cfg.user or SENDER, out.rcpt, out.body))
    finally:
        quit_quietly(smtp)
    out.detail = f"{pre}; delivered over {version}"


def case_smtps_implicit(cfg: Config, out: Outcome) -> None:
    out.rcpt = [cfg.to]
    out.body = build_message(
        "smtps-implicit", out.message_id, cfg.to, "smtps implicit tls",
        ["Hello over implicit TLS.", ".dot line", "end"],
    )
    smtp = smtplib.SMTP_SSL(cfg.smtps[0], cfg.smtps[1], local_hostname="client.e2e.test",
                            timeout=cfg.timeout, context=cfg.tls_context())
    try:
        version = smtp.sock.version()
        if version not in TLS_VERSIONS:
            raise CaseFailure(f"unexpected TLS version {version!r}")
        smtp.ehlo()
        if cfg.user is not None and smtp.has_extn("auth"):
            smtp.login(cfg.user, cfg.password or "")
        check_sendmail(smtp.sendmail(cfg.user or SENDER, out.rcpt, out.body))
    finally:
        quit_quietly(smtp)
    out.detail = f"delivered over implicit {version}"


def case_smtputf8(cfg: Config, out: Outcome) -> None:
    out.rcpt = [cfg.utf8_to]
    out.body = build_message(
        "smtputf8", out.message_id, cfg.utf8_to, "Grüße aus Zürich — ünïcödé ✉",
        ["Héllo wörld — UTF-8 body, SMTPUTF8 envelope.", "日本語のテキスト", "end"],
        eight_bit=True,
    )
    smtp, version = smtp_starttls(cfg, cfg.mx)
    try:
        for ext in ("smtputf8", "8bitmime"):
            if not smtp.has_extn(ext):
                raise CaseFailure(f"server does not advertise {ext.upper()}")
        check_sendmail(smtp.sendmail(SENDER, out.rcpt, out.body,
                                     mail_options=["SMTPUTF8"]))
    finally:
        quit_quietly(smtp)
    out.detail = f"delivered to {cfg.utf8_to} over {version}"


def case_8bit_body(cfg: Config, out: Outcome) -> None:
    out.rcpt = [cfg.to]
    out.body = build_message(
        "8bit-body", out.message_id, cfg.to, "8bit body",
        ["Grüße — ünïcödé", "Ελληνικά · русский · ½ ¾ € ©", ".ünïcödé line starting with a dot", "end"],
        eight_bit=True,
    )
    assert any(b >= 0x80 for b in out.body)
    smtp, version = smtp_starttls(cfg, cfg.mx)
    try:
        if not smtp.has_extn("8bitmime"):
            raise CaseFailure("server does not advertise 8BITMIME")
        check_sendmail(smtp.sendmail(SENDER, out.rcpt, out.body, mail_options=["BODY=8BITMIME"]))
    finally:
        quit_quietly(smtp)
    out.detail = f"8-bit body delivered over {version}"


def case_pipelining(cfg: Config, out: Outcome) -> None:
    out.rcpt = [cfg.to]
    out.body = build_message(
        "pipelining", out.message_id, cfg.to, "pipelining",
        ["Pipelined MAIL/RCPT/RCPT/DATA.", ".dot line", "end"],
    )
    smtp, version = smtp_starttls(cfg, cfg.mx)
    try:
        if "pipelining" not in smtp.esmtp_features:
            raise CaseFailure("server does not advertise PIPELINING")
        sock = smtp.sock
        reader = ReplyReader(sock)
        sock.sendall(
            f"MAIL FROM:<p@example.test>\r\n"
            f"RCPT TO:<{cfg.to}>\r\n"
            f"RCPT TO:<{cfg.reject_to}>\r\n"
            f"DATA\r\n".encode("utf-8")
        )
        codes = [
            reader.expect("MAIL", lambda c: c == 250)[0],
            reader.expect("RCPT (accepted)", lambda c: c == 250)[0],
        ]
        code, rej_lines = reader.expect("RCPT (rejected)", lambda c: 500 <= c < 600)
        codes.append(code)
        codes.append(reader.expect("DATA", lambda c: c == 354)[0])
        sock.sendall(dot_stuff(out.body) + b".\r\n")
        codes.append(reader.expect("end of DATA", lambda c: c == 250)[0])
        send_cmd(sock, "QUIT")
        try:
            reader.expect("QUIT", lambda c: c == 221)
        except (CaseFailure, OSError):
            pass
    finally:
        smtp.close()
    out.detail = f"replies {codes} over {version}; rejected rcpt: {rej_lines[-1]}"


def case_bdat(cfg: Config, out: Outcome) -> None:
    out.rcpt = [cfg.to]
    out.body = build_message(
        "bdat", out.message_id, cfg.to, "bdat chunks",
        ["BDAT chunked body, split mid-line.",
         ".this line starts with a dot and must arrive unstuffed",
         "..two dots stay two dots",
         "tail line", "end"],
    )
    host, port = cfg.mx
    raw = socket.create_connection((host, port), timeout=cfg.timeout)
    sock: socket.socket = raw
    try:
        reader = ReplyReader(sock)
        reader.expect("greeting", lambda c: c == 220)
        send_cmd(sock, "EHLO client.e2e.test")
        _, lines = reader.expect("EHLO", lambda c: c == 250)
        kw = ehlo_keywords(lines)
        if "CHUNKING" not in kw:
            raise CaseFailure(f"server does not advertise CHUNKING (EHLO keywords: {sorted(kw)})")
        if "STARTTLS" not in kw:
            raise CaseFailure("server does not advertise STARTTLS")
        send_cmd(sock, "STARTTLS")
        reader.expect("STARTTLS", lambda c: c == 220)
        if reader.buf:
            raise CaseFailure(f"unexpected plaintext after STARTTLS reply: {reader.buf!r}")
        sock = cfg.tls_context().wrap_socket(raw, server_hostname=host)
        version = sock.version()
        reader = ReplyReader(sock)
        send_cmd(sock, "EHLO client.e2e.test")
        _, lines = reader.expect("EHLO after STARTTLS", lambda c: c == 250)
        if "CHUNKING" not in ehlo_keywords(lines):
            raise CaseFailure("CHUNKING not advertised after STARTTLS")
        send_cmd(sock, f"MAIL FROM:<{SENDER}>")
        reader.expect("MAIL", lambda c: c == 250)
        send_cmd(sock, f"RCPT TO:<{cfg.to}>")
        reader.expect("RCPT", lambda c: c == 250)

        # Three chunks split mid-line; the dot-leading line lives in chunk 2.
        body = out.body
        dot_at = body.index(b"\r\n.this line") + 2
        cut1 = dot_at - 7                  # mid-line, just before the dot line
        cut2 = body.index(b"tail line") + 4  # mid-line ("tail| line")
        chunks = [body[:cut1], body[cut1:cut2], body[cut2:]]
        assert b"".join(chunks) == body and all(chunks)
        assert b"\r\n." in chunks[1]
        codes = []
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            sock.sendall(f"BDAT {len(chunk)}{last}\r\n".encode("ascii") + chunk)
            codes.append(reader.expect(f"BDAT chunk {i + 1}", lambda c: c == 250)[0])
        send_cmd(sock, "QUIT")
        try:
            reader.expect("QUIT", lambda c: c == 221)
        except (CaseFailure, OSError):
            pass
    finally:
        sock.close()
    out.detail = f"3 BDAT chunks ({[len(c) for c in chunks]} bytes) -> {codes} over {version}"


CASES: dict[str, Callable[[Config, Outcome], None]] = {
    "mx-starttls": case_mx_starttls,
    "submission-starttls": case_submission_starttls,
    "smtps-implicit": case_smtps_implicit,
    "smtputf8": case_smtputf8,
    "8bit-body": case_8bit_body,
    "pipelining": case_pipelining,
    "bdat": case_bdat,
}


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def run_case(name: str, cfg: Config) -> Outcome:
    out = Outcome(message_id=new_message_id())
    started = time.monotonic()
    try:
        CASES[name](cfg, out)
        out.ok = True
    except CaseFailure as e:
        out.detail = str(e)
    except Exception as e:  # noqa: BLE001 - every failure becomes a JSON line
        out.detail = f"{type(e).__name__}: {e}"
    out.detail += f" [{time.monotonic() - started:.2f}s]"
    return out


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(
        description="Run the Moat smtplib/raw-socket client matrix; one JSON line per case.",
        epilog="Cases: " + ", ".join(CASES),
    )
    p.add_argument("--ca", required=True, help="CA certificate (PEM) that signed the server certificate")
    p.add_argument("--mx", required=True, type=host_port, help="MX listener HOST:PORT (STARTTLS)")
    p.add_argument("--submission", required=True, type=host_port,
                   help="submission listener HOST:PORT (STARTTLS required before MAIL)")
    p.add_argument("--smtps", required=True, type=host_port, help="implicit-TLS listener HOST:PORT")
    p.add_argument("--to", required=True, help="accepted recipient address, e.g. alice@example.test")
    p.add_argument("--utf8-to", default=None,
                   help="UTF-8 recipient for the smtputf8 case (default: josé@<domain of --to>)")
    p.add_argument("--reject-to", default="nobody@not-accepted.invalid",
                   help="recipient the server must refuse with 5xx in the pipelining case")
    p.add_argument("--user", default=None, help="optional AUTH user for submission/smtps")
    p.add_argument("--password", default=None, help="optional AUTH password")
    p.add_argument("--timeout", type=float, default=15.0, help="socket timeout in seconds (default 15)")
    p.add_argument("--only", choices=list(CASES), default=None, help="run only this case")
    a = p.parse_args(argv)
    if "@" not in a.to:
        p.error("--to must be an address")
    utf8_to = a.utf8_to or "josé@" + a.to.rsplit("@", 1)[1]
    return Config(a.ca, a.mx, a.submission, a.smtps, a.to, utf8_to, a.reject_to,
                  a.user, a.password, a.timeout, a.only)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    names = [cfg.only] if cfg.only else list(CASES)
    all_ok = True
    for name in names:
        out = run_case(name, cfg)
        all_ok &= out.ok
        print(json.dumps({
            "case": name,
            "ok": out.ok,
            "detail": out.detail,
            "message_id": out.message_id,
            "rcpt": out.rcpt,
            "body_b64": base64.b64encode(out.body).decode("ascii"),
        }), flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
