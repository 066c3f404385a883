#!/usr/bin/env python3
"""Adversarial SMTP sessions against Moat, from a third-party client's point of view.

Run from the repository root, against the already-built binary target/debug/moat:

    python3 tests/adversarial/smtp_sessions.py [-k SUBSTRING]

Python standard library only (plus the `openssl` command for the renegotiation cases, skipped
without it). The script starts three `moat dev` instances (all ports 0, temporary data
directories, process groups killed at the end):

- A: default settings (maildir sink), for most cases;
- B: short timeouts (idle 6 s, command 3 s, data 3 s) for the slowloris cases, and
  `forbid-unauth-pipelining = false`, for the cases that show the setting off;
- C: an SMTP next hop (a small sink in this script) instead of the maildir, to see what Moat
  actually relays (dot-stuffing of DATA and BDAT content);
- D: an mx listener and a legacy-submission listener (tls-min-version 1.0) limited to 3
  sessions per client address, idle timeout 6 s, to see whether stalled TLS handshakes give
  their session slots back.

The cases of the four instances run in four threads, so their lines interleave; within an
instance they run in order, its "final" health case last.

Each case prints one line (PASS/FAIL/SKIP with details); the last line is
`adversarial: N passed, M failed[, K skipped]` and the exit status is non-zero on any failure.
Every case uses its own recipient mailbox (`<case>@example.test`) so that "nothing was
delivered" and "exactly one message" are checked per case, plus a global count of messages.
"""

from __future__ import annotations

import argparse
import email.utils
import glob
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from base64 import b64encode
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moatdev import (  # noqa: E402
    Client, MoatDev, ProtocolError, Reply, send_in_background,
)

CRLF = b"\r\n"
T = 30.0  # generous reply timeout

# ---------------------------------------------------------------------------------------------
# Test framework


class Skip(Exception):
    pass


CASES: list[tuple[str, str, object]] = []


def case(name: str, inst: str = "A"):
    def deco(f):
        CASES.append((name, inst, f))
        return f
    return deco


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def check_reply(r: Reply | None, code: str, what: str) -> Reply:
    if r is None:
        raise AssertionError(f"{what}: expected {code}, got no reply")
    if not r.text.startswith(code):
        raise AssertionError(f"{what}: expected {code!r}, got {r.text!r}")
    return r


class Env:
    a: MoatDev
    b: MoatDev
    c: MoatDev
    d: MoatDev
    sink: "Sink"


ENV = Env()

# ---------------------------------------------------------------------------------------------
# Maildir helpers


def box(m: MoatDev, local: str) -> Path:
    return m.maildir / "example.test" / local


def new_msgs(m: MoatDev, local: str) -> list[Path]:
    return sorted((box(m, local) / "new").glob("*")) if (box(m, local) / "new").exists() else []


def tmp_files(m: MoatDev, local: str) -> list[Path]:
    d = box(m, local) / "tmp"
    return sorted(d.glob("*")) if d.exists() else []


def all_new(m: MoatDev) -> int:
    return len(glob.glob(str(m.maildir / "*" / "*" / "new" / "*")))


def all_tmp(m: MoatDev) -> list[str]:
    return glob.glob(str(m.maildir / "*" / "*" / "tmp" / "*"))


def assert_nothing_delivered(m: MoatDev, locals_: list[str], before_total: int,
                             settle: float = 0.5) -> None:
    """Nothing in new/ of these mailboxes (nor anywhere new), and tmp/ empty (after `settle`
    seconds, and up to 15 s more while a partial file is still in tmp/, so that an abort in
    progress can finish). Moat aborts the transaction before it closes the connection, so
    cases that saw the server close need little settling; cases that vanish with a RST wait
    3 s."""
    time.sleep(settle)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(tmp_files(m, l) for l in locals_):
        time.sleep(0.5)
    for l in locals_:
        msgs = new_msgs(m, l)
        check(not msgs, f"mailbox {l}: {len(msgs)} message(s) delivered, expected none: "
                        f"{[p.read_bytes()[:300] for p in msgs]}")
        tmps = tmp_files(m, l)
        check(not tmps, f"mailbox {l}: partial file(s) left in tmp/: {tmps}")
    total = all_new(m)
    check(total == before_total, f"{total - before_total} unexpected new message(s) in the "
                                 f"maildir")


def one_message(m: MoatDev, local: str, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not new_msgs(m, local):
        time.sleep(0.2)
    msgs = new_msgs(m, local)
    check(len(msgs) == 1, f"mailbox {local}: expected exactly one message, found {len(msgs)}")
    return msgs[0].read_bytes()


def header_block(msg: bytes) -> bytes:
    i = msg.find(b"\r\n\r\n")
    return msg if i < 0 else msg[:i + 2]


def header_fields(msg: bytes) -> list[tuple[str, bytes]]:
    """(name, raw value with folding) per field of the header section."""
    fields: list[tuple[str, bytes]] = []
    for line in header_block(msg).split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            n, v = fields[-1]
            fields[-1] = (n, v + b"\r\n" + line)
        else:
            name, sep, value = line.partition(b":")
            check(bool(sep), f"header line without a colon: {line!r}")
            fields.append((name.decode("latin-1"), value))
    return fields


def delivered_fields(msg: bytes) -> list[tuple[str, bytes]]:
    """The header fields of a file the maildir sink delivered, after the `Return-Path:` it
    writes first (checked: one, first, an angle-bracketed path)."""
    fields = header_fields(msg)
    check(bool(fields) and fields[0][0] == "Return-Path",
          f"first field {fields[0][0] if fields else None!r}, expected Return-Path")
    check(re.fullmatch(rb" <[^<>\r\n]*>", fields[0][1]) is not None,
          f"Return-Path value {fields[0][1]!r}")
    check(all(n != "Return-Path" for n, _ in fields[1:]), "more than one Return-Path")
    return fields[1:]


def received_problems(raw: bytes, utf8: bool = False) -> list[str]:
    """RFC 5322 3.6.7: received = "Received:" *received-token ";" date-time CRLF, folded with
    CRLF WSP. Checks the top-level structure a parser relies on: one ';' outside comments and
    quoted strings, balanced comments/quotes/angle brackets, a parseable date."""
    problems = []
    if b"\r" in raw.replace(b"\r\n", b"") or b"\n" in raw.replace(b"\r\n", b""):
        problems.append("bare CR or LF")
    for part in raw.split(b"\r\n")[1:]:
        if part[:1] not in (b" ", b"\t"):
            problems.append(f"continuation line without leading WSP: {part!r}")
    try:
        text = raw.decode("utf-8" if utf8 else "ascii")
    except UnicodeDecodeError:
        return problems + [f"non-{'UTF-8' if utf8 else 'ASCII'} octets: {raw!r}"]
    if any(ord(ch) < 32 and ch not in "\r\n\t" or ord(ch) == 127 for ch in text):
        problems.append("control characters")
    v = re.sub(r"\r\n(?=[ \t])", "", text)
    depth = 0
    quoted = esc = False
    angle = 0
    semis = []
    for i, ch in enumerate(v):
        if esc:
            esc = False
            continue
        if quoted:
            if ch == "\\":
                esc = True
            elif ch == '"':
                quoted = False
            continue
        if depth:
            if ch == "\\":
                esc = True
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            continue
        if ch == "(":
            depth = 1
        elif ch == ")":
            problems.append(f"unbalanced ')' at {i}")
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">":
            angle -= 1
            if angle < 0:
                problems.append(f"unbalanced '>' at {i}")
                angle = 0
        elif ch == ";":
            semis.append(i)
    if quoted:
        problems.append("unterminated quoted string")
    if depth:
        problems.append("unterminated comment")
    if angle:
        problems.append("unbalanced '<'")
    if len(semis) != 1:
        problems.append(f"{len(semis)} top-level ';' (expected exactly 1 before the date)")
    if semis:
        date = v[semis[-1] + 1:].strip()
        try:
            email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            problems.append(f"date after the last ';' does not parse: {date!r}")
    if not v.strip().startswith("from "):
        problems.append("does not start with 'from'")
    if not re.search(r"\sby\s", v):
        problems.append("no 'by' clause")
    return problems


# ---------------------------------------------------------------------------------------------
# Session helpers


def greet(m: MoatDev, listener: str = "mx", ehlo: str = "client.test") -> Client:
    c = Client.connect(m.addr(listener))
    c.expect("220")
    c.cmd(f"EHLO {ehlo}", "250")
    return c


def open_data(m: MoatDev, rcpt: str, sender: str = "sender@client.test",
              listener: str = "mx") -> Client:
    c = greet(m, listener)
    c.cmd(f"MAIL FROM:<{sender}>", "250")
    c.cmd(f"RCPT TO:<{rcpt}@example.test>", "250")
    c.cmd("DATA", "354")
    return c


def open_bdat(m: MoatDev, rcpt: str) -> Client:
    c = greet(m)
    c.cmd("MAIL FROM:<sender@client.test>", "250")
    c.cmd(f"RCPT TO:<{rcpt}@example.test>", "250")
    return c


def send_message(m: MoatDev, rcpt: str, body: bytes, listener: str = "mx") -> Reply:
    c = open_data(m, rcpt, listener=listener)
    c.send(body + b"\r\n.\r\n")
    r = c.reply(T)
    try:
        c.cmd("QUIT")
    except (OSError, ProtocolError):
        pass
    c.close()
    return r


def healthy(m: MoatDev, rcpt: str) -> None:
    """A plain session still works, and the process is alive."""
    check(m.alive(), f"moat ({m.name}) is not running (exit {m.proc.returncode})")
    r = send_message(m, rcpt, b"Subject: health\r\n\r\nstill alive")
    check_reply(r, "250 2.6.0", "message after the adversarial case")


def assert_closed(c: Client, within: float, what: str) -> None:
    check(c.wait_closed(within), f"{what}: connection still open after {within:.0f}s "
                                 f"(pending {c.buf[:200]!r})")


# ---------------------------------------------------------------------------------------------
# 1. SMTP smuggling

SMUGGLING_ENDINGS = [
    ("lf-dot-lf", b"\n.\n"),
    ("cr-dot-cr", b"\r.\r"),
    ("lf-dot-crlf", b"\n.\r\n"),
    ("crlf-dot-cr", b"\r\n.\r"),
    ("cr-dot-crlf", b"\r.\r\n"),
    ("crlf-dot-lf", b"\r\n.\n"),
    ("lf-dot-cr", b"\n.\r"),
    ("nul-dot-crlf", b"\r\n\x00.\r\n"),
    ("dot-nul-crlf", b"\r\n.\x00\r\n"),
    ("bare-lf-line-then-crlf-dot", b"\nX\r\n.\r\n"),
]


def smuggled_payload(victim: str) -> bytes:
    return (b"MAIL FROM:<evil@attacker.test>\r\n"
            b"RCPT TO:<" + victim.encode() + b"@example.test>\r\n"
            b"DATA\r\n"
            b"From: evil@attacker.test\r\nSubject: SMUGGLED\r\n\r\nsmuggled body\r\n.\r\n")


def make_smuggling_case(tag: str, ending: bytes):
    @case(f"smuggling DATA {tag}: {ending!r} refused with 521, nothing delivered")
    def run():
        m = ENV.a
        outer, victim = f"smug-{tag}", f"smug-{tag}-victim"
        before = all_new(m)
        c = open_data(m, outer)
        c.send(b"From: a@client.test\r\nSubject: outer\r\n\r\nouter body" + ending
               + smuggled_payload(victim) + b"\r\n.\r\n")
        r = c.reply(T)
        check_reply(r, "521 5.5.2", "reply to content with a smuggling ending")
        more = c.replies_until_quiet(1.0, 5)
        check(not more, f"replies after 521 (smuggled commands executed?): {more}")
        assert_closed(c, T, "after 521")
        c.close()
        assert_nothing_delivered(m, [outer, victim], before)
    return run


for _tag, _ending in SMUGGLING_ENDINGS:
    make_smuggling_case(_tag, _ending)


@case("smuggling DATA: \\r\\n.\\n split across TCP segments is refused with 521")
def _():
    m = ENV.a
    outer, victim = "smug-split", "smug-split-victim"
    before = all_new(m)
    c = open_data(m, outer)
    c.send(b"Subject: split\r\n\r\nbody\r\n")
    time.sleep(0.3)
    c.send(b".")
    time.sleep(0.3)
    c.send(b"\n" + smuggled_payload(victim) + b"\r\n.\r\n")
    check_reply(c.reply(T), "521 5.5.2", "reply")
    assert_closed(c, T, "after 521")
    c.close()
    assert_nothing_delivered(m, [outer, victim], before)


@case("smuggling DATA over STARTTLS: \\n.\\n refused with 521, nothing delivered")
def _():
    m = ENV.a
    outer, victim = "smug-tls", "smug-tls-victim"
    before = all_new(m)
    c = greet(m)
    c.cmd("STARTTLS", "220")
    c.starttls(m.ca)
    c.cmd("EHLO client.test", "250")
    c.cmd("MAIL FROM:<a@client.test>", "250")
    c.cmd(f"RCPT TO:<{outer}@example.test>", "250")
    c.cmd("DATA", "354")
    c.send(b"Subject: outer\r\n\r\nbody\n.\n" + smuggled_payload(victim) + b"\r\n.\r\n")
    check_reply(c.reply(T), "521 5.5.2", "reply")
    assert_closed(c, T, "after 521")
    c.close()
    assert_nothing_delivered(m, [outer, victim], before)


@case("smuggling DATA control: CRLF-correct commands inside the body stay literal, one message")
def _():
    m = ENV.a
    outer, victim = "smug-literal", "smug-literal-victim"
    before = all_new(m)
    body = (b"From: a@client.test\r\nSubject: literal\r\n\r\nline\r\n"
            + smuggled_payload(victim).replace(b"\r\n.\r\n", b"\r\n..\r\n")
            + b"..leading dot\r\n...\r\nlast")
    r = send_message(m, outer, body)
    check_reply(r, "250 2.6.0", "end of data")
    msg = one_message(m, outer)
    content = msg.split(b"\r\n\r\n", 1)[1]
    want = (b"line\r\n" + smuggled_payload(victim).replace(b"\r\n.\r\n", b"\r\n.\r\n")
            + b".leading dot\r\n..\r\nlast\r\n")
    check(content == want, f"stored content differs (dot-unstuffing):\n{content!r}\n!=\n{want!r}")
    check(not new_msgs(m, victim), "victim mailbox got a message")
    check(all_new(m) == before + 1, f"{all_new(m) - before} messages delivered, expected 1")


BDAT_ENDINGS = [("lf-dot-lf", b"\n.\n"), ("cr-dot-cr", b"\r.\r"), ("crlf-dot-lf", b"\r\n.\n"),
                ("lf-dot-crlf", b"\n.\r\n"), ("nul", b"\r\n\x00.\r\n")]


def make_bdat_smuggling_case(tag: str, ending: bytes):
    @case(f"smuggling BDAT {tag}: {ending!r} refused with 521, nothing delivered")
    def run():
        m = ENV.a
        outer, victim = f"bdat-{tag}", f"bdat-{tag}-victim"
        before = all_new(m)
        c = open_bdat(m, outer)
        ehlo_ok = True
        content = (b"Subject: outer\r\n\r\nouter" + ending + smuggled_payload(victim))
        c.send(b"BDAT %d LAST\r\n" % len(content) + content)
        r = c.reply(T)
        check(ehlo_ok, "")
        check_reply(r, "521 5.5.2", "reply to BDAT content with a bare CR/LF or NUL")
        assert_closed(c, T, "after 521")
        c.close()
        assert_nothing_delivered(m, [outer, victim], before)
    return run


for _tag, _ending in BDAT_ENDINGS:
    make_bdat_smuggling_case(_tag, _ending)


@case("smuggling BDAT: CHUNKING advertised; <CRLF>.<CRLF> inside a chunk is literal, one message")
def _():
    m = ENV.a
    outer, victim = "bdat-literal", "bdat-literal-victim"
    before = all_new(m)
    c = Client.connect(m.addr("mx"))
    c.expect("220")
    ehlo = c.cmd("EHLO client.test", "250")
    check("CHUNKING" in ehlo.text, f"CHUNKING not advertised: {ehlo.text!r}")
    c.cmd("MAIL FROM:<a@client.test>", "250")
    c.cmd(f"RCPT TO:<{outer}@example.test>", "250")
    part1 = b"Subject: bdat literal\r\n\r\nbefore\r\n.\r\n" + smuggled_payload(victim)
    part2 = b".\r\nafter\r"      # the chunk ends between CR and LF
    part3 = b"\n"
    c.send(b"BDAT %d\r\n" % len(part1) + part1)
    check_reply(c.reply(T), "250 2.0.0", "first chunk")
    c.send(b"BDAT %d\r\n" % len(part2) + part2)
    check_reply(c.reply(T), "250 2.0.0", "second chunk")
    c.send(b"BDAT %d LAST\r\n" % len(part3) + part3)
    check_reply(c.reply(T), "250 2.6.0", "last chunk")
    c.cmd("QUIT", "221")
    c.close()
    msg = one_message(m, outer)
    content = msg.split(b"\r\n\r\n", 1)[1]
    want = b"before\r\n.\r\n" + smuggled_payload(victim) + b".\r\nafter\r\n"
    check(content == want, f"stored content differs:\n{content!r}\n!=\n{want!r}")
    check(not new_msgs(m, victim), "victim mailbox got a message")
    check(all_new(m) == before + 1, f"{all_new(m) - before} messages delivered, expected 1")


@case("smuggling BDAT: LAST chunk ending in a bare CR is refused with 521")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_bdat(m, "bdat-trailing-cr")
    content = b"Subject: x\r\n\r\nbody\r"
    c.send(b"BDAT %d LAST\r\n" % len(content) + content)
    check_reply(c.reply(T), "521 5.5.2", "reply")
    assert_closed(c, T, "after 521")
    c.close()
    assert_nothing_delivered(m, ["bdat-trailing-cr"], before)


# ---------------------------------------------------------------------------------------------
# 2. STARTTLS command injection

INJECTED = (b"EHLO injected.test\r\nMAIL FROM:<inj@attacker.test>\r\n"
            b"RCPT TO:<starttls-inj@example.test>\r\nDATA\r\n"
            b"Subject: injected\r\n\r\ninjected\r\n.\r\n")


SYNC = "554 5.5.0 Error: SMTP protocol synchronization"


@case("STARTTLS injection (mx): commands pipelined after STARTTLS -> 554 5.5.0, closed, "
      "no TLS, nothing delivered")
def _():
    m = ENV.a
    before = all_new(m)
    c = greet(m)
    c.send(b"STARTTLS\r\n" + INJECTED)
    check_reply(c.reply(T), SYNC, "STARTTLS with commands pipelined after it")
    assert_closed(c, T, "after 554")
    c.close()
    assert_nothing_delivered(m, ["starttls-inj"], before, settle=1.0)


@case("STARTTLS injection (submission): a pipelined AUTH -> 554 5.5.0, closed")
def _():
    m = ENV.a
    demo = m.ep["demo"]
    creds = b64encode(b"\0" + demo["user"].encode() + b"\0" + demo["password"].encode())
    c = greet(m, "submission")
    c.send(b"STARTTLS\r\nEHLO injected.test\r\nAUTH PLAIN " + creds + b"\r\n")
    check_reply(c.reply(T), SYNC, "STARTTLS with AUTH pipelined after it")
    assert_closed(c, T, "after 554")
    c.close()


@case("STARTTLS injection (mx), forbid-unauth-pipelining off: commands pipelined after "
      "STARTTLS are discarded", "B")
def _():
    m = ENV.b
    before = all_new(m)
    c = greet(m)
    c.send(b"STARTTLS\r\n" + INJECTED)
    r = c.reply(T)
    check_reply(r, "220 2.0.0", "STARTTLS")
    time.sleep(0.5)
    c._fill(0.5)
    check(not c.buf, f"plaintext after the 220 (injected commands answered?): {c.buf!r}")
    c.starttls(m.ca)
    extra = c.reply(3.0)
    check(extra is None and not c.eof, f"unsolicited reply inside TLS (injected command "
                                       f"executed): {extra!r} eof={c.eof}")
    r = c.cmd("EHLO client.test")
    check_reply(r, "250-", "first reply inside TLS")
    r = c.cmd("RCPT TO:<starttls-inj@example.test>")
    check_reply(r, "503 5.5.1", "RCPT inside TLS (a MAIL executed from the injection?)")
    c.cmd("QUIT", "221")
    c.close()
    assert_nothing_delivered(m, ["starttls-inj"], before, settle=1.0)


@case("STARTTLS injection (submission), forbid-unauth-pipelining off: a pipelined AUTH with "
      "valid credentials is discarded", "B")
def _():
    m = ENV.b
    demo = m.ep["demo"]
    creds = b64encode(b"\0" + demo["user"].encode() + b"\0" + demo["password"].encode())
    c = greet(m, "submission")
    c.send(b"STARTTLS\r\nEHLO injected.test\r\nAUTH PLAIN " + creds + b"\r\n")
    check_reply(c.reply(T), "220 2.0.0", "STARTTLS")
    c.starttls(m.ca)
    extra = c.reply(3.0)
    check(extra is None and not c.eof, f"unsolicited reply inside TLS: {extra!r}")
    r = c.cmd("EHLO client.test")
    check_reply(r, "250-", "EHLO inside TLS")
    check("AUTH" in r.text, f"AUTH not offered: the session is already authenticated? {r.text!r}")
    r = c.cmd(f"MAIL FROM:<{demo['user']}>")
    check_reply(r, "530 5.7.0", "MAIL without AUTH inside TLS")
    c.cmd("QUIT", "221")
    c.close()


@case("STARTTLS injection, separate segment before the ClientHello: never executed")
def _():
    m = ENV.a
    c = greet(m)
    c.send(b"STARTTLS\r\n")
    time.sleep(0.3)
    c.send(b"NOOP\r\n")
    check_reply(c.reply(T), "220 2.0.0", "STARTTLS")
    try:
        c.starttls(m.ca)
    except (ssl.SSLError, OSError, ProtocolError):
        # The NOOP bytes were read as the start of the TLS stream: handshake refused.
        c.close()
        return
    extra = c.reply(3.0)
    check(extra is None, f"NOOP answered inside TLS: {extra!r}")
    check_reply(c.cmd("EHLO client.test"), "250-", "EHLO inside TLS")
    c.close()


# ---------------------------------------------------------------------------------------------
# 3. Parameter and header injection


@case("MAIL/RCPT parameter injection refused with 500/501/552/555; Received well-formed")
def _():
    m = ENV.a
    rcpt = "param-inj"
    c = greet(m)
    long_param = "X-PARAM=" + "x" * 2100
    cases = [
        (b"MAIL FROM:<p@client.test> SIZE=10\rX-Injected: yes", "500 5.5.2"),
        (b"MAIL FROM:<p@client.test> ENVID=ab\x01cd", "555 5.5.4"),
        (b"MAIL FROM:<p@client.test> ENVID=QQ+0D+0AX-Injected:+20yes", "555 5.5.4"),
        (b"MAIL FROM:<p@client.test> RET=HDRS", "555 5.5.4"),
        (b"MAIL FROM:<p@client.test> BODY=8BITMIME\x0bX-Injected:yes", "555 5.5.4"),
        (b"MAIL FROM:<p@client.test> SIZE=1\x0cX-Injected:yes", "555 5.5.4"),
        (b"MAIL FROM:<p@client.test> " + long_param.encode(), "500 5.5.2"),
        (b"MAIL FROM:<p@client.test> SIZE=" + b"9" * 40, "501 5.5.4"),
        (b"MAIL FROM:<p@client.test> SIZE=-1", "501 5.5.4"),
        (b"MAIL FROM:<p@client.test> SIZE=999999999999", "552 5.3.4"),
        (b"MAIL FROM:<p@client.test>\tSIZE=1", "501 5.1.7"),
        (b"MAIL FROM:<p@client.test>X-Injected:yes", "501 5.1.7"),
        (b"MAIL FROM:<p@client.test\r\nX-Injected: yes>", None),  # two lines: see below
    ]
    for line, code in cases[:-1]:
        r = c.cmd(line)
        check_reply(r, code, f"{line[:70]!r}")
    c.cmd("MAIL FROM:<p@client.test> SIZE=100 BODY=8BITMIME", "250 2.1.0")
    for line, code in [
        (b"RCPT TO:<param-inj@example.test> ORCPT=rfc822;x+0D+0AX-Injected:+20yes", "555 5.5.4"),
        (b"RCPT TO:<param-inj@example.test> NOTIFY=SUCCESS", "555 5.5.4"),
        (b"RCPT TO:<param-inj@example.test>\rX-Injected: yes", "500 5.5.2"),
        (b"RCPT TO:<param-inj@example.test> X=" + b"y" * 2100, "500 5.5.2"),
    ]:
        check_reply(c.cmd(line), code, f"{line[:70]!r}")
    c.cmd(f"RCPT TO:<{rcpt}@example.test>", "250 2.1.5")
    c.cmd("DATA", "354")
    c.send(b"From: p@client.test\r\nTo: param-inj@example.test\r\nSubject: params\r\n"
           b"\r\nbody\r\n.\r\n")
    check_reply(c.reply(T), "250 2.6.0", "end of data")
    c.cmd("QUIT", "221")
    c.close()
    msg = one_message(m, rcpt)
    names = [n for n, _ in delivered_fields(msg)]
    check(names == ["Received", "From", "To", "Subject"],
          f"header fields {names} (injected or missing?)")
    check(b"X-Injected" not in msg and b"ORCPT" not in msg and b"ENVID" not in msg,
          f"parameter text in the message: {header_block(msg)!r}")
    p = received_problems(delivered_fields(msg)[0][1])
    check(not p, f"Received header malformed: {p}: {delivered_fields(msg)[0][1]!r}")


def helo_received_case(tag: str, helo: str):
    @case(f"Received header well-formed with EHLO {helo!r}")
    def run():
        m = ENV.a
        rcpt = f"helo-{tag}"
        c = Client.connect(m.addr("mx"))
        c.expect("220")
        r = c.cmd(f"EHLO {helo}")
        if r.code == 501:
            c.close()
            return  # refusing such a name is fine too
        check_reply(r, "250", "EHLO")
        c.cmd("MAIL FROM:<a@client.test>", "250")
        c.cmd(f"RCPT TO:<{rcpt}@example.test>", "250")
        c.cmd("DATA", "354")
        c.send(b"Subject: helo\r\n\r\nx\r\n.\r\n")
        check_reply(c.reply(T), "250 2.6.0", "end of data")
        c.close()
        msg = one_message(m, rcpt)
        f = delivered_fields(msg)
        check(f[0][0] == "Received", f"first field {f[0][0]}")
        p = received_problems(f[0][1])
        check(not p, f"Received header malformed: {p}: Received:{f[0][1].decode('latin-1')!r}")
    return run


helo_received_case("plain", "mail.client.test")
helo_received_case("literal", "[127.0.0.1]")
helo_received_case("parens", "a(b)c.test")
helo_received_case("semicolon", "evil;x.test")
helo_received_case("quote", 'evil"x.test')
helo_received_case("angle", "evil<x.test")


@case("Received header of a non-SMTPUTF8 message is ASCII even after a UTF-8 EHLO name")
def _():
    m = ENV.a
    rcpt = "helo-utf8"
    c = Client.connect(m.addr("mx"))
    c.expect("220")
    r = c.cmd("EHLO bücher.test".encode())
    if r.code == 501:
        c.close()
        return  # refusing the name is fine too
    check_reply(r, "250", "EHLO")
    c.cmd("MAIL FROM:<a@client.test>", "250")   # no SMTPUTF8: a 7-bit/8BITMIME message
    c.cmd(f"RCPT TO:<{rcpt}@example.test>", "250")
    c.cmd("DATA", "354")
    c.send(b"Subject: ascii\r\n\r\nx\r\n.\r\n")
    check_reply(c.reply(T), "250 2.6.0", "end of data")
    c.close()
    f = delivered_fields(one_message(m, rcpt))
    p = received_problems(f[0][1], utf8=False)
    check(not p, f"Received header: {p}: Received:{f[0][1]!r}")


@case("Received header well-formed for a quoted local part with ';' '>' and '\"'")
def _():
    m = ENV.a
    c = greet(m)
    c.cmd("MAIL FROM:<a@client.test>", "250")
    r = c.cmd('RCPT TO:<"q;u>o\\"te"@example.test>')
    check_reply(r, "250 2.1.5", "quoted local part")
    c.cmd("DATA", "354")
    c.send(b"Subject: quoted\r\n\r\nx\r\n.\r\n")
    check_reply(c.reply(T), "250 2.6.0", "end of data")
    c.close()
    dirs = [d for d in (m.maildir / "example.test").iterdir() if d.name.startswith("%22q")]
    check(len(dirs) == 1, f"mailbox of the quoted local part: {dirs}")
    msgs = list((dirs[0] / "new").glob("*"))
    check(len(msgs) == 1, f"{len(msgs)} messages")
    f = delivered_fields(msgs[0].read_bytes())
    p = received_problems(f[0][1])
    check(not p, f"Received header malformed: {p}: {f[0][1]!r}")


# ---------------------------------------------------------------------------------------------
# 4. Long lines, many recipients


@case("10 MB command line: one 500 5.5.2 Line too long, no memory growth, session usable")
def _():
    m = ENV.a
    rss0 = m.rss_kib()
    c = greet(m)
    t = send_in_background(c, b"NOOP " + b"A" * (10 * 1024 * 1024))
    r = c.reply(60)
    check_reply(r, "500 5.5.2 Line too long", "reply to the 10 MB line")
    t.join(120)
    check(t.error is None, f"sending the 10 MB line failed: {t.error}")
    c.send(b"\r\n")
    extra = c.reply(2.0)
    check(extra is None, f"a second reply for the same long line: {extra!r}")
    rss1 = m.rss_kib()
    check(rss1 - rss0 < 8 * 1024, f"RSS grew by {(rss1 - rss0) // 1024} MiB "
                                   f"({rss0} -> {rss1} KiB)")
    check_reply(c.cmd("NOOP"), "250 2.0.0", "NOOP after the long line")
    c.cmd("QUIT", "221")
    c.close()
    healthy(m, "after-long-line")


@case("command line limit: 2048 octets with CRLF accepted, 2049 refused with 500 5.5.2")
def _():
    m = ENV.a
    c = greet(m)
    ok = b"NOOP " + b"a" * (2048 - 7)
    check_reply(c.cmd(ok), "250 2.0.0", "2048-octet line")
    check_reply(c.cmd(ok + b"a"), "500 5.5.2 Line too long", "2049-octet line")
    check_reply(c.cmd("NOOP"), "250 2.0.0", "NOOP afterwards")
    c.close()


@case("10,000 RCPTs: 1000 x 250 2.1.5 then 9000 x 452 4.5.3; delivered to exactly the 1000")
def _():
    m = ENV.a
    before = all_new(m)
    c = greet(m)
    c.cmd("MAIL FROM:<many@client.test>", "250")
    t = send_in_background(c, b"".join(b"RCPT TO:<many%d@example.test>\r\n" % i
                                       for i in range(10000)))
    got = []
    for i in range(10000):
        r = c.reply(60)
        if r is None:
            break
        got.append(r)
    t.join(60)
    check(len(got) == 10000, f"{len(got)} replies to 10000 RCPTs (eof={c.eof})")
    bad_ok = [i for i, r in enumerate(got[:1000]) if not r.text.startswith("250 2.1.5")]
    check(not bad_ok, f"RCPT #{bad_ok[:3]} of the first 1000: {got[bad_ok[0]].text!r}"
          if bad_ok else "")
    bad_full = [i for i, r in enumerate(got[1000:], 1000)
                if not r.text.startswith("452 4.5.3")]
    check(not bad_full, f"RCPT #{bad_full[:3]} after 1000: {got[bad_full[0]].text!r}"
          if bad_full else "")
    c.cmd("DATA", "354")
    c.send(b"Subject: many\r\n\r\nmany\r\n.\r\n")
    check_reply(c.reply(600), "250 2.6.0", "end of data for 1000 recipients")
    c.cmd("QUIT", "221")
    c.close()
    delivered = [i for i in range(1000) if len(new_msgs(m, f"many{i}")) == 1]
    check(len(delivered) == 1000, f"{1000 - len(delivered)} of the 1000 accepted recipients "
                                  f"got no (or more than one) message")
    extra = [i for i in range(1000, 10000) if box(m, f"many{i}").exists()]
    check(not extra, f"refused recipients got a mailbox: many{extra[:3]}")
    check(all_new(m) == before + 1000, f"{all_new(m) - before} new files, expected 1000")
    healthy(m, "after-many-rcpts")


# ---------------------------------------------------------------------------------------------
# 5. NUL and UTF-8


@case("NUL in commands: 500 5.5.2 each, session continues")
def _():
    m = ENV.a
    c = greet(m)
    for line in [b"NO\x00OP", b"NOOP\x00", b"MAIL FROM:<a\x00b@client.test>"]:
        check_reply(c.cmd(line), "500 5.5.2", repr(line))
    c.cmd("MAIL FROM:<a@client.test>", "250")
    check_reply(c.cmd(b"RCPT TO:<nul\x00@example.test>"), "500 5.5.2", "RCPT with NUL")
    check_reply(c.cmd("NOOP"), "250 2.0.0", "NOOP")
    c.close()


@case("NUL in DATA header: 521 5.5.2, closed, nothing delivered")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_data(m, "nul-data")
    c.send(b"Subject: a\x00b\r\n\r\nbody\r\n.\r\n")
    check_reply(c.reply(T), "521 5.5.2", "reply")
    assert_closed(c, T, "after 521")
    c.close()
    assert_nothing_delivered(m, ["nul-data"], before)


@case("UTF-8 in MAIL/RCPT: invalid refused (501), non-ASCII needs SMTPUTF8 (553), valid accepted")
def _():
    m = ENV.a
    c = greet(m)
    for line, code in [
        (b"MAIL FROM:<\xff\xfe@client.test>", "501 5.5.4"),
        (b"MAIL FROM:<\xff\xfe@client.test> SMTPUTF8", "501 5.5.4"),
        (b"MAIL FROM:<\xc0\xaf@client.test> SMTPUTF8", "501 5.5.4"),      # overlong
        (b"MAIL FROM:<\xed\xa0\x80@client.test> SMTPUTF8", "501 5.5.4"),  # surrogate
        (b"MAIL FROM:<j\xe2\x82@client.test> SMTPUTF8", "501 5.5.4"),     # truncated
        (b"MAIL FROM:<j\xc3\xb6rg@client.test>", "553 5.6.7"),
        (b"MAIL FROM:<jorg@cli\xc3\xa9nt.test>", "553 5.6.7"),
    ]:
        check_reply(c.cmd(line), code, repr(line))
    # RCPT: non-ASCII without SMTPUTF8 on MAIL.
    c.cmd("MAIL FROM:<ascii@client.test>", "250")
    check_reply(c.cmd(b"RCPT TO:<j\xc3\xb6rg@example.test>"), "553 5.6.7", "UTF-8 RCPT w/o SMTPUTF8")
    check_reply(c.cmd(b"RCPT TO:<\xff@example.test>"), "501 5.5.4", "invalid UTF-8 RCPT")
    c.cmd("RSET", "250")
    check_reply(c.cmd(b"MAIL FROM:<j\xc3\xb6rg@client.test> SMTPUTF8"), "250 2.1.0",
                "UTF-8 MAIL with SMTPUTF8")
    check_reply(c.cmd(b"RCPT TO:<\xff\xfe@example.test>"), "501 5.5.4", "invalid UTF-8 RCPT")
    check_reply(c.cmd(b"RCPT TO:<utf8-j\xc3\xb6rg@example.test>"), "250 2.1.5", "UTF-8 RCPT")
    c.cmd("DATA", "354")
    c.send("Subject: utf8 ü\r\n\r\nbody ü\r\n.\r\n".encode())
    check_reply(c.reply(T), "250 2.6.0", "end of data")
    c.close()
    msg = one_message(m, "utf8-j%C3%B6rg")
    f = delivered_fields(msg)
    check(b"with UTF8SMTP" in f[0][1], f"Received does not say UTF8SMTP: {f[0][1]!r}")
    p = received_problems(f[0][1], utf8=True)
    check(not p, f"Received malformed: {p}")


@case("invalid UTF-8 in EHLO: 501 5.5.4")
def _():
    m = ENV.a
    c = Client.connect(m.addr("mx"))
    c.expect("220")
    check_reply(c.cmd(b"EHLO \xff\xfe.test"), "501 5.5.4", "EHLO")
    c.close()


# ---------------------------------------------------------------------------------------------
# 6. Slowloris (instance B: idle 6 s, command 3 s, data 3 s)

IDLE, CMD, DATA_T = 6.0, 3.0, 3.0
MARGIN = 12.0


def timed_421(c: Client, t0: float, limit: float, what: str) -> float:
    r = c.reply(limit + MARGIN)
    el = time.monotonic() - t0
    check_reply(r, "421 4.4.2", f"{what} (after {el:.1f}s)")
    check(el >= limit - 0.5, f"{what}: 421 after {el:.1f}s, before the {limit:.0f}s timeout")
    assert_closed(c, MARGIN, f"{what}: after 421")
    return el


@case("slowloris: silent after the greeting -> 421 4.4.2 at the idle timeout, closed", "B")
def _():
    m = ENV.b
    # Every t0 below is taken before the step that starts the server's timer, so a slow client
    # can only make the measured time longer, never shorter than the timeout.
    t0 = time.monotonic()
    c = Client.connect(m.addr("mx"))
    c.expect("220")
    timed_421(c, t0, IDLE, "idle after greeting")
    c.close()


@case("slowloris: silent inside a transaction -> 421 4.4.2, nothing delivered", "B")
def _():
    m = ENV.b
    before = all_new(m)
    c = greet(m)
    c.cmd("MAIL FROM:<a@client.test>", "250")
    t0 = time.monotonic()
    c.cmd("RCPT TO:<slow-txn@example.test>", "250")
    timed_421(c, t0, IDLE, "idle in a transaction")
    c.close()
    assert_nothing_delivered(m, ["slow-txn"], before, settle=1.0)


@case("slowloris: command dripped 1 byte/s -> 421 4.4.2 at the command timeout", "B")
def _():
    m = ENV.b
    c = greet(m)
    line = b"MAIL FROM:<drip@client.test>\r\n"
    stop = threading.Event()
    w = c.sock.dup()

    def drip():
        for b in line:
            if stop.is_set():
                return
            try:
                w.send(bytes([b]))
            except OSError:
                return
            time.sleep(1.0)
    th = threading.Thread(target=drip, daemon=True)
    t0 = time.monotonic()
    th.start()
    try:
        el = timed_421(c, t0, CMD, "dripped command")
        check(el < len(line) - 2, f"421 only after {el:.1f}s: the drip was nearly complete")
    finally:
        stop.set()
        th.join(5)
        w.close()
        c.close()


@case("slowloris: stall in the middle of DATA -> 421 4.4.2 at the data timeout, nothing "
      "delivered or left in tmp/", "B")
def _():
    m = ENV.b
    before = all_new(m)
    c = open_data(m, "slow-data")
    c.send(b"Subject: stall\r\n\r\n" + b"partial line " * 1000 + b"\r\nmore")
    t0 = time.monotonic()
    timed_421(c, t0, DATA_T, "stalled DATA")
    c.close()
    assert_nothing_delivered(m, ["slow-data"], before)


@case("slowloris: stall in the middle of a BDAT chunk -> 421 4.4.2, nothing delivered", "B")
def _():
    m = ENV.b
    before = all_new(m)
    c = open_bdat(m, "slow-bdat")
    c.send(b"BDAT 1000 LAST\r\n" + b"Subject: stall\r\n\r\n" + b"x" * 100)
    t0 = time.monotonic()
    timed_421(c, t0, DATA_T, "stalled BDAT")
    c.close()
    assert_nothing_delivered(m, ["slow-bdat"], before)


@case("slowloris: DATA dripped in small blocks below the data timeout is accepted (the "
      "data timeout is per block, as documented)", "B")
def _():
    m = ENV.b
    c = open_data(m, "drip-data")
    c.send(b"Subject: drip\r\n\r\n")
    t0 = time.monotonic()
    for i in range(6):
        time.sleep(1.0)
        c.send(b"line %d\r\n" % i)
    c.send(b".\r\n")
    check_reply(c.reply(T), "250 2.6.0", f"end of data after {time.monotonic() - t0:.1f}s")
    c.close()
    one_message(m, "drip-data")


@case("slowloris: STARTTLS then no ClientHello -> closed at the idle timeout", "B")
def _():
    m = ENV.b
    c = greet(m)
    t0 = time.monotonic()
    c.cmd("STARTTLS", "220")
    closed = c.wait_closed(IDLE + MARGIN)
    el = time.monotonic() - t0
    check(closed, f"still open after {el:.1f}s")
    check(el >= IDLE - 0.5, f"closed after {el:.1f}s, before the {IDLE:.0f}s timeout")
    c.close()


@case("slowloris: smtps connection without a ClientHello -> closed at the idle timeout", "B")
def _():
    m = ENV.b
    t0 = time.monotonic()
    c = Client.connect(m.addr("smtps"))
    closed = c.wait_closed(IDLE + MARGIN)
    el = time.monotonic() - t0
    check(closed, f"still open after {el:.1f}s")
    check(el >= IDLE - 0.5, f"closed after {el:.1f}s, before the {IDLE:.0f}s timeout")
    check(not c.buf, f"plaintext sent on the implicit-TLS port: {c.buf!r}")
    c.close()


@case("slowloris: partial ClientHello on the legacy listener (peek path) -> closed at the "
      "idle timeout", "B")
def _():
    m = ENV.b
    c = greet(m, "legacy-submission")
    t0 = time.monotonic()
    c.cmd("STARTTLS", "220")
    c.send(b"\x16\x03\x01\x02\x00\x01\x00")   # a record announcing 512 octets, 2 sent
    closed = c.wait_closed(IDLE + MARGIN)
    el = time.monotonic() - t0
    check(closed, f"still open after {el:.1f}s")
    check(el >= IDLE - 0.5, f"closed after {el:.1f}s, before the {IDLE:.0f}s timeout")
    c.close()


@case("slowloris: partial ClientHellos on the legacy listener, then client close -> the "
      "sessions are released at the close, not at the idle timeout (max-sessions-per-ip 3)", "D")
def _():
    m = ENV.d
    for i in range(3):
        c = greet(m, "legacy-submission")
        c.cmd("STARTTLS", "220")
        c.send(b"\x16\x03\x01\x02\x00\x01\x00")   # 7 octets of a 517-octet record
        time.sleep(0.2)
        c.close()                                    # FIN: the client is gone
    # New sessions until three are greeted at once (a refused one frees its slot at once; a
    # leaked slot would never free). The edge sees the FIN behind the unread partial record,
    # so this happens well before the idle timeout.
    t0 = time.monotonic()
    deadline = t0 + IDLE + 30
    while True:
        held = [Client.connect(m.addr("legacy-submission")) for _ in range(3)]
        replies = [c.reply(T) for c in held]
        for c in held:
            c.close()
        if all(r is not None and r.text.startswith("220") for r in replies) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    el = time.monotonic() - t0
    for r in replies:
        check_reply(r, "220", "greeting of three new sessions after the 3 closed ones (a "
                              "421 4.7.0 means they still hold their per-IP slots)")
    check(el < IDLE - 2, f"slots freed after {el:.1f}s, at the {IDLE:.0f}s idle timeout rather "
                         "than at the close")
    # The three just closed are released as the edge reads their end of stream; the next
    # case (a normal session) must find a free slot.
    deadline = time.monotonic() + 10
    while True:
        c = Client.connect(m.addr("legacy-submission"))
        r = c.reply(T)
        greeted = r is not None and r.text.startswith("220")
        if greeted:
            c.cmd("QUIT", "221")
        c.close()
        if greeted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check_reply(r, "220", "greeting after the three probe sessions closed")


# ---------------------------------------------------------------------------------------------
# 7. TLS renegotiation (openssl s_client)


def s_client_renegotiate(m: MoatDev, listener: str, version_flag: list[str],
                         wait: float = 15.0) -> tuple[str, float | None, bool]:
    """EHLO inside TLS, then `R`; returns (output, seconds until the renegotiation was
    answered or the connection ended, or None, whether s_client exited)."""
    if not shutil.which("openssl"):
        raise Skip("openssl not installed")
    host, port = m.addr(listener)
    args = ["openssl", "s_client", "-starttls", "smtp", *version_flag, "-connect",
            f"{host}:{port}", "-servername", "localhost", "-CAfile", m.ca, "-crlf", "-msg"]
    if shutil.which("stdbuf"):
        args = ["stdbuf", "-o0", "-e0"] + args
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    lines: list[tuple[float, str]] = []

    def reader():
        for raw in p.stdout:
            lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip()))
    th = threading.Thread(target=reader, daemon=True)
    th.start()

    def wait_for(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, l in list(lines):
                if pred(l):
                    return t
            if p.poll() is not None:
                return None
            time.sleep(0.05)
        return None
    try:
        if wait_for(lambda l: l.startswith("250 ") and "HELP" in l, T) is None:
            raise AssertionError("no EHLO reply through s_client:\n"
                                 + "\n".join(l for _, l in lines[-20:]))
        n0 = len(lines)
        p.stdin.write(b"EHLO reneg.test\n")
        p.stdin.flush()
        end = time.monotonic() + T
        while time.monotonic() < end and not any(
                l.startswith("250 ") for _, l in lines[n0:]):
            time.sleep(0.05)
        p.stdin.write(b"R\n")
        p.stdin.flush()
        t_r = time.monotonic()
        n1 = len(lines)
        answered = None
        end = time.monotonic() + wait
        while time.monotonic() < end and answered is None:
            for t, l in list(lines[n1:]):
                if ("no_renegotiation" in l or "no renegotiation" in l or ", Alert" in l
                        or l.endswith(", ServerHello")):
                    answered = t
                    break
            if answered is None and p.poll() is not None:
                answered = time.monotonic()
            time.sleep(0.05)
        el = None if answered is None else max(0.0, answered - t_r)
        exited = p.poll() is not None
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        th.join(5)
    return "\n".join(l for _, l in lines), el, exited


def renegotiation_case(listener: str, flags: list[str], label: str):
    @case(f"TLS renegotiation ({label}, {listener}): refused promptly, server keeps working")
    def run():
        m = ENV.a
        out, el, _ = s_client_renegotiate(m, listener, flags)
        reneg_at = out.find("RENEGOTIATING")
        check(reneg_at >= 0, "s_client did not start a renegotiation:\n" + out[-1500:])
        after = out[reneg_at:]
        server_hellos = re.findall(r"^<<< .*Handshake .*, ServerHello$", after, re.M)
        check(not server_hellos, "the server answered the renegotiation with a ServerHello "
                                 "(renegotiation accepted)")
        shown = "\n".join(l for l in after.splitlines() if not l.startswith(" "))
        check(el is not None and el <= 15.0,
              "no answer to the renegotiation ClientHello within 15 s (no no_renegotiation "
              "alert, connection not closed): the client is left waiting until the idle "
              "timeout. s_client -msg after R (hex dumps left out):\n" + shown[-600:])
        healthy(m, f"after-reneg-{listener}")
    return run


renegotiation_case("mx", ["-tls1_2"], "TLS 1.2, rustls")
renegotiation_case("legacy-submission", ["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                   "TLS 1.0, OpenSSL engine")


# ---------------------------------------------------------------------------------------------
# 8. Half-open connections and vanishing clients


@case("half-open: EOF right after the greeting -> server closes, no reply")
def _():
    m = ENV.a
    c = Client.connect(m.addr("mx"))
    c.expect("220")
    c.shutdown_write()
    assert_closed(c, T, "after client EOF")
    check(not c.buf, f"data after EOF: {c.buf!r}")
    c.close()


@case("half-open: EHLO then EOF -> EHLO answered, then closed")
def _():
    m = ENV.a
    c = Client.connect(m.addr("mx"))
    c.expect("220")
    c.send(b"EHLO halfopen.test\r\n")
    c.shutdown_write()
    check_reply(c.reply(T), "250-", "EHLO")
    assert_closed(c, T, "after client EOF")
    c.close()


@case("half-open: complete message then EOF without QUIT -> 250 2.6.0, delivered once")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_data(m, "half-complete")
    c.send(b"Subject: complete\r\n\r\nbody\r\n.\r\n")
    c.shutdown_write()
    check_reply(c.reply(T), "250 2.6.0", "end of data")
    assert_closed(c, T, "after client EOF")
    c.close()
    one_message(m, "half-complete")
    check(all_new(m) == before + 1, "more than one message")


@case("half-open: EOF with MAIL/RCPT open (no DATA) -> closed, nothing delivered")
def _():
    m = ENV.a
    before = all_new(m)
    c = greet(m)
    c.cmd("MAIL FROM:<a@client.test>", "250")
    c.cmd("RCPT TO:<half-rcpt@example.test>", "250")
    c.shutdown_write()
    assert_closed(c, T, "after client EOF")
    c.close()
    assert_nothing_delivered(m, ["half-rcpt"], before, settle=1.0)


def half_data_case(tag: str, tail: bytes):
    @case(f"half-open: EOF mid-DATA ({tag}) -> no 250, nothing delivered or left in tmp/")
    def run():
        m = ENV.a
        before = all_new(m)
        rcpt = f"half-data-{tag}"
        c = open_data(m, rcpt)
        c.send(b"Subject: half\r\n\r\n" + b"content line\r\n" * 5000 + tail)
        c.shutdown_write()
        r = c.reply(10)
        check(r is None or not r.text.startswith("250"), f"message accepted: {r!r}")
        assert_closed(c, T, "after client EOF")
        c.close()
        assert_nothing_delivered(m, [rcpt], before)
    return run


half_data_case("mid-line", b"half a li")
half_data_case("after-crlf", b"")
half_data_case("partial-terminator", b".\r")
half_data_case("dot-without-crlf", b".")


@case("half-open: EOF mid-BDAT chunk -> nothing delivered or left in tmp/")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_bdat(m, "half-bdat")
    c.send(b"BDAT 100000 LAST\r\n" + b"Subject: half\r\n\r\n" + b"y" * 5000)
    c.shutdown_write()
    r = c.reply(10)
    check(r is None or not r.text.startswith("250"), f"message accepted: {r!r}")
    assert_closed(c, T, "after client EOF")
    c.close()
    assert_nothing_delivered(m, ["half-bdat"], before)


@case("vanish (TCP RST) mid-DATA after 1 MB -> nothing delivered or left in tmp/")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_data(m, "vanish-data")
    c.send(b"Subject: vanish\r\n\r\n" + (b"z" * 998 + b"\r\n") * 1000)
    time.sleep(0.5)
    c.abort()
    assert_nothing_delivered(m, ["vanish-data"], before, settle=3.0)
    healthy(m, "after-vanish")


@case("vanish (TCP RST) mid-BDAT -> nothing delivered or left in tmp/")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_bdat(m, "vanish-bdat")
    c.send(b"BDAT 2000000 LAST\r\n" + (b"z" * 998 + b"\r\n") * 1000)
    time.sleep(0.5)
    c.abort()
    assert_nothing_delivered(m, ["vanish-bdat"], before, settle=3.0)


@case("vanish (TCP RST) right after the end-of-data dot: delivered at most once")
def _():
    m = ENV.a
    before = all_new(m)
    c = open_data(m, "vanish-dot")
    c.send(b"Subject: vanish dot\r\n\r\nbody\r\n.\r\n")
    c.abort()
    # A delivery under way when the client vanished finishes (or is undone) first.
    deadline = time.monotonic() + 30
    time.sleep(1)
    while tmp_files(m, "vanish-dot") and time.monotonic() < deadline:
        time.sleep(0.2)
    n = len(new_msgs(m, "vanish-dot"))
    check(n <= 1, f"{n} copies delivered")
    check(not tmp_files(m, "vanish-dot"), "partial file left in tmp/")
    check(all_new(m) - before == n, "messages elsewhere")


# ---------------------------------------------------------------------------------------------
# 9. Pipelining abuse


def replies(c: Client, n: int) -> list[Reply]:
    """`n` replies, each given the full reply timeout (a delivery's fsyncs can be slow), then
    whatever else arrives within a second: a correct server sends exactly `n`."""
    out = []
    for _ in range(n):
        r = c.reply(T)
        if r is None:
            return out
        out.append(r)
    return out + c.replies_until_quiet(1.0)




EARLY = (b"EHLO early.test\r\nMAIL FROM:<early@client.test>\r\n"
         b"RCPT TO:<early@example.test>\r\nDATA\r\nSubject: early\r\n\r\nx\r\n.\r\nQUIT\r\n")


@case("early talker: a whole transaction sent before the greeting -> 554 5.5.0 (before or "
      "right after the 220), closed, nothing delivered (Postfix's smtpd_forbid_unauth_pipelining)")
def _():
    m = ENV.a
    before = all_new(m)
    c = Client.connect(m.addr("mx"))
    c.send(EARLY)
    # Bytes already there when the greeting is due replace it; bytes that arrive just after it
    # are refused at EHLO, which must end its group.
    got = [r.text for r in replies(c, 1)]
    if len(got) == 1 and got[0].startswith("220 "):
        got.append(check_reply(c.reply(T), SYNC, "EHLO with more pipelined after it").text)
    check(bool(got) and got[-1].startswith(SYNC)
          and (len(got) == 1 or (len(got) == 2 and got[0].startswith("220 "))),
          f"replies {got}")
    assert_closed(c, T, "after 554")
    c.close()
    assert_nothing_delivered(m, ["early"], before)


@case("early talker, forbid-unauth-pipelining off: served in order", "B")
def _():
    m = ENV.b
    before = all_new(m)
    c = Client.connect(m.addr("mx"))
    c.send(EARLY)
    want = ["220 ", "250-", "250 2.1.0", "250 2.1.5", "354 ", "250 2.6.0", "221 2.0.0"]
    got = []
    for w in want:
        r = c.reply(T)
        got.append(r.text if r else None)
        check(r is not None and r.text.startswith(w),
              f"expected {w!r} in sequence {want}, got {got}")
    assert_closed(c, T, "after QUIT")
    c.close()
    one_message(m, "early")
    check(all_new(m) == before + 1, "not exactly one message")


@case("pipelining: content before the 354 -> 554 5.5.0 after MAIL/RCPT, nothing delivered")
def _():
    m = ENV.a
    before = all_new(m)
    c = greet(m)
    c.send(b"MAIL FROM:<p@client.test>\r\nRCPT TO:<pre354@example.test>\r\nDATA\r\n"
           b"Subject: too early\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    codes = [r.text[:9] for r in replies(c, 3)]
    check(codes == ["250 2.1.0", "250 2.1.5", "554 5.5.0"], f"replies {codes}")
    assert_closed(c, T, "after 554")
    c.close()
    assert_nothing_delivered(m, ["pre354"], before)


@case("pipelining: a legal RFC 2920 group (MAIL/RCPT/NOOP/RSET/.../DATA), content after the "
      "354, the next transaction right after the dot -> two messages")
def _():
    m = ENV.a
    before = all_new(m)
    c = greet(m)
    c.send(b"MAIL FROM:<p@client.test>\r\nRSET\r\nNOOP\r\nMAIL FROM:<p@client.test>\r\n"
           b"RCPT TO:<legal-pipe@example.test>\r\nDATA\r\n")
    codes = [r.text[:9] for r in replies(c, 6)]
    check(codes == ["250 2.1.0", "250 2.0.0", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354 Start"],
          f"replies {codes}")
    c.send(b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<p@client.test>\r\n"
           b"RCPT TO:<legal-pipe@example.test>\r\nDATA\r\n")
    codes = [r.text[:9] for r in replies(c, 4)]
    check(codes == ["250 2.6.0", "250 2.1.0", "250 2.1.5", "354 Start"], f"replies {codes}")
    c.send(b"Subject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    codes = [r.text[:9] for r in replies(c, 2)]
    check(codes == ["250 2.6.0", "221 2.0.0"], f"replies {codes}")
    c.close()
    check(len(new_msgs(m, "legal-pipe")) == 2, "not two messages")
    check(all_new(m) == before + 2, f"{all_new(m) - before} messages")


@case("pipelining: 1000 NOOPs in one write -> 1000 x 250 2.0.0 in order")
def _():
    m = ENV.a
    c = greet(m)
    t = send_in_background(c, b"NOOP\r\n" * 1000 + b"QUIT\r\n")
    n = 0
    for i in range(1000):
        r = c.reply(T)
        if r is None or not r.text.startswith("250 2.0.0"):
            raise AssertionError(f"reply #{i}: {r!r}")
        n += 1
    check_reply(c.reply(T), "221", "QUIT")
    t.join(30)
    c.close()


@case("pipelining: 30 bad commands in one write -> 19 x 500, then 421 4.7.0, closed")
def _():
    m = ENV.a
    c = greet(m)
    c.send(b"BOGUS\r\n" * 30)
    want = ["500 5.5.2"] * 19 + ["421 4.7.0"]
    codes = [r.text[:9] for r in replies(c, len(want))]
    check(codes == want, f"replies {codes}")
    assert_closed(c, T, "after 421")
    c.close()


@case("pipelining: three transactions with content in one write -> 554 5.5.0 at the first "
      "DATA, nothing delivered")
def _():
    m = ENV.a
    before = all_new(m)
    c = greet(m)
    data = b""
    for i in range(3):
        data += (b"MAIL FROM:<p@client.test>\r\nRCPT TO:<pipe3-%d@example.test>\r\nDATA\r\n"
                 b"Subject: pipelined %d\r\n\r\nbody\r\n.\r\n" % (i, i))
    c.send(data + b"QUIT\r\n")
    codes = [r.text[:9] for r in replies(c, 3)]
    check(codes == ["250 2.1.0", "250 2.1.5", "554 5.5.0"], f"replies {codes}")
    assert_closed(c, T, "after 554")
    c.close()
    assert_nothing_delivered(m, [f"pipe3-{i}" for i in range(3)], before)


@case("pipelining, forbid-unauth-pipelining off: three transactions with content in one write "
      "-> three messages", "B")
def _():
    m = ENV.b
    before = all_new(m)
    c = greet(m)
    data = b""
    for i in range(3):
        data += (b"MAIL FROM:<p@client.test>\r\nRCPT TO:<pipe3-%d@example.test>\r\nDATA\r\n"
                 b"Subject: pipelined %d\r\n\r\nbody\r\n.\r\n" % (i, i))
    c.send(data + b"QUIT\r\n")
    want = ["250 2.1.0", "250 2.1.5", "354 Start", "250 2.6.0"] * 3 + ["221 2.0.0"]
    codes = [r.text[:9] for r in replies(c, len(want))]
    check(codes == want, f"replies {codes}")
    c.close()
    for i in range(3):
        one_message(m, f"pipe3-{i}")
    check(all_new(m) == before + 3, f"{all_new(m) - before} messages")


# ---------------------------------------------------------------------------------------------
# 10. Relay to an SMTP next hop (instance C with the sink below)


class Sink:
    """A minimal SMTP server: records every transaction as Moat relays it."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.lock = threading.Lock()
        self.txns: list[dict] = []
        self.raw_data: list[bytes] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s: socket.socket):
        f = s.makefile("rb")
        txn = None
        try:
            s.sendall(b"220 sink.test ESMTP\r\n")
            while True:
                line = f.readline(100000)
                if not line:
                    if txn is not None and txn["state"] == "open":
                        txn["state"] = "aborted"
                    return
                cmd = line.rstrip(b"\r\n")
                verb = cmd[:4].upper()
                if verb == b"EHLO":
                    s.sendall(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                              b"250-SMTPUTF8\r\n250 SIZE 200000000\r\n")
                elif verb == b"MAIL":
                    txn = {"mail": cmd, "rcpts": [], "data": None, "state": "open"}
                    with self.lock:
                        self.txns.append(txn)
                    s.sendall(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    txn["rcpts"].append(cmd)
                    s.sendall(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    s.sendall(b"354 go\r\n")
                    raw = b""
                    while True:
                        l = f.readline(10_000_000)
                        if not l:
                            txn["state"] = "aborted-in-data"
                            txn["data"] = raw
                            return
                        if l == b".\r\n":
                            break
                        raw += l
                    with self.lock:
                        self.raw_data.append(raw)
                    txn["data"] = b"".join(
                        l[1:] if l.startswith(b".") else l
                        for l in raw.splitlines(keepends=True))
                    txn["state"] = "delivered"
                    s.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"RSET":
                    txn = None
                    s.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    s.sendall(b"221 2.0.0 bye\r\n")
                    return
                elif verb == b"NOOP":
                    s.sendall(b"250 2.0.0 ok\r\n")
                else:
                    s.sendall(b"500 5.5.2 what\r\n")
        except OSError:
            if txn is not None and txn["state"] == "open":
                txn["state"] = "aborted"
        finally:
            s.close()

    def for_rcpt(self, local: str) -> list[dict]:
        key = f"<{local}@example.test>".encode()
        with self.lock:
            return [t for t in self.txns if any(key in r for r in t["rcpts"])]

    def mail_from(self, sender: str) -> list[dict]:
        with self.lock:
            return [t for t in self.txns if sender.encode() in t["mail"]]


def wait_delivered(local: str, n: int = 1, timeout: float = 10) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ts = [t for t in ENV.sink.for_rcpt(local) if t["state"] == "delivered"]
        if len(ts) >= n:
            return ts
        time.sleep(0.2)
    return [t for t in ENV.sink.for_rcpt(local) if t["state"] == "delivered"]


def body_of(t: dict) -> bytes:
    return t["data"].split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in t["data"] else t["data"]


@case("relay DATA: dot lines are unstuffed and re-stuffed; the next hop sees one message", "C")
def _():
    m = ENV.c
    lines = b"before\r\n.\r\n..\r\n.MAIL FROM:<evil@attacker.test>\r\n...x\r\nafter"
    stuffed = b"\r\n".join((b"." + l if l.startswith(b".") else l)
                           for l in lines.split(b"\r\n"))
    r = send_message(m, "relay-dots", b"Subject: dots\r\n\r\n" + stuffed)
    check_reply(r, "250 2.6.0", "end of data")
    ts = wait_delivered("relay-dots")
    check(len(ts) == 1, f"next hop saw {len(ts)} delivered transactions")
    check(body_of(ts[0]) == lines + b"\r\n",
          f"next hop content {body_of(ts[0])!r} != {lines + CRLF!r}")
    check(not ENV.sink.mail_from("evil@attacker.test"), "a MAIL from the body reached the hop")


@case("relay BDAT: <CRLF>.<CRLF> and smuggled commands in chunks are dot-stuffed toward a "
      "DATA-only next hop; one message, nothing smuggled", "C")
def _():
    m = ENV.c
    victim = "relay-bdat-victim"
    c = open_bdat(m, "relay-bdat")
    part1 = b"Subject: relay bdat\r\n\r\nbefore\r\n"
    part2 = b".\r\n" + smuggled_payload(victim) + b".\r\nQUIT\r\n"
    part3 = b"..two dots\r\nlast line without CRLF"
    for i, part in enumerate([part1, part2, part3]):
        last = b" LAST" if i == 2 else b""
        c.send(b"BDAT %d%s\r\n" % (len(part), last) + part)
        check_reply(c.reply(T), "250 2.6.0" if last else "250 2.0.0", f"chunk {i + 1}")
    c.close()
    ts = wait_delivered("relay-bdat")
    check(len(ts) == 1, f"next hop saw {len(ts)} delivered transactions")
    want = (b"before\r\n.\r\n" + smuggled_payload(victim) + b".\r\nQUIT\r\n..two dots\r\n"
            b"last line without CRLF\r\n")
    check(body_of(ts[0]) == want, f"next hop content:\n{body_of(ts[0])!r}\n!=\n{want!r}")
    check(not ENV.sink.mail_from("evil@attacker.test"), "a smuggled MAIL reached the next hop")
    check(not ENV.sink.for_rcpt(victim), "the victim got a transaction at the next hop")


def relay_abort_case(tag: str, how: str):
    @case(f"relay: client {how} mid-{tag} -> the next hop never sees the end of data", "C")
    def run():
        m = ENV.c
        rcpt = f"relay-{how}-{tag}"
        if tag == "DATA":
            c = open_data(m, rcpt)
            c.send(b"Subject: abort\r\n\r\n" + b"line\r\n" * 2000)
        else:
            c = open_bdat(m, rcpt)
            c.send(b"BDAT 100000 LAST\r\nSubject: abort\r\n\r\n" + b"line\r\n" * 2000)
        time.sleep(0.5)
        if how == "rst":
            c.abort()
        else:
            c.shutdown_write()
            assert_closed(c, T, "after client EOF")
            c.close()
        end = time.monotonic() + 15
        while time.monotonic() < end:
            ts = ENV.sink.for_rcpt(rcpt)
            if ts and all(t["state"] != "open" for t in ts):
                break
            time.sleep(0.2)
        ts = ENV.sink.for_rcpt(rcpt)
        check(len(ts) == 1, f"next hop saw {len(ts)} transactions")
        check(ts[0]["state"] in ("aborted", "aborted-in-data"),
              f"next-hop transaction state {ts[0]['state']!r} (expected aborted)")
    return run


relay_abort_case("DATA", "rst")
relay_abort_case("DATA", "eof")
relay_abort_case("BDAT", "rst")


# ---------------------------------------------------------------------------------------------
# Final health, third-party client (smtplib)


def smtplib_send(m: MoatDev, listener: str, rcpt: str, login: bool = False) -> None:
    import smtplib
    host, port = m.addr(listener)
    ctx = ssl.create_default_context(cafile=m.ca)
    with smtplib.SMTP(host, port, local_hostname="final.client.test", timeout=T) as s:
        s._host = "localhost"  # certificate name
        s.starttls(context=ctx)
        s.ehlo("final.client.test")
        sender = "final@client.test"
        if login:
            s.login(m.ep["demo"]["user"], m.ep["demo"]["password"])
            sender = m.ep["demo"]["user"]
        refused = s.sendmail(sender, [f"{rcpt}@example.test"],
                             f"From: {sender}\r\nTo: {rcpt}@example.test\r\n"
                             f"Subject: final\r\n\r\nfinal message\r\n")
        check(not refused, f"refused: {refused}")


@case("final (A): smtplib STARTTLS message on mx is accepted and delivered")
def _():
    smtplib_send(ENV.a, "mx", "final-mx")
    one_message(ENV.a, "final-mx")


@case("final (A): smtplib STARTTLS + AUTH message on submission is accepted and delivered")
def _():
    smtplib_send(ENV.a, "submission", "final-sub", login=True)
    one_message(ENV.a, "final-sub")


@case("final (B): smtplib message accepted after the slowloris cases", "B")
def _():
    smtplib_send(ENV.b, "mx", "final-b")
    one_message(ENV.b, "final-b")


@case("final (D): a normal session on the legacy listener works", "D")
def _():
    m = ENV.d
    c = Client.connect(m.addr("legacy-submission"))
    r = c.reply(T)
    check_reply(r, "220", "greeting")
    c.cmd("EHLO final.test", "250")
    c.cmd("STARTTLS", "220")
    c.starttls(m.ca)
    check_reply(c.cmd("EHLO final.test"), "250-", "EHLO inside TLS")
    c.cmd("QUIT", "221")
    c.close()


@case("final (C): smtplib message relayed to the next hop", "C")
def _():
    smtplib_send(ENV.c, "mx", "final-c")
    check(len(wait_delivered("final-c")) == 1, "not relayed once")


# ---------------------------------------------------------------------------------------------
# Runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args()
    t_start = time.monotonic()
    selected = [c for c in CASES if args.k.lower() in c[0].lower()]
    needed = {inst for _, inst, _ in selected}
    ENV.sink = Sink()
    instances = {
        "A": MoatDev("a"),
        "B": MoatDev("b", '[limits]\nidle-timeout = "6s"\ncommand-timeout = "3s"\n'
                          'data-timeout = "3s"\nforbid-unauth-pipelining = false\n'),
        "C": MoatDev("c", f'[next-hop]\nkind = "smtp"\naddress = "127.0.0.1:{ENV.sink.port}"\n'
                          f'starttls = "none"\ntimeout = "30s"\n'),
        "D": MoatDev("d", '[limits]\nidle-timeout = "6s"\n\n'
                          '[[listener]]\nkind = "mx"\naddress = "127.0.0.1:0"\n\n'
                          '[[listener]]\nkind = "submission"\nname = "legacy-submission"\n'
                          'address = "127.0.0.1:0"\ntls-min-version = "1.0"\n'
                          'legacy-tls = "opt-in"\n[listener.limits]\n'
                          'max-sessions-per-ip = 3\n'),
    }
    errors = {}

    def start(k):
        try:
            instances[k].start()
        except Exception as e:  # noqa: BLE001
            errors[k] = e
    threads = [threading.Thread(target=start, args=(k,)) for k in sorted(needed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ENV.a, ENV.b, ENV.c, ENV.d = (instances["A"], instances["B"], instances["C"],
                                  instances["D"])
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    out_lock = threading.Lock()

    def report(kind: str, line: str) -> None:
        with out_lock:
            counts[kind] += 1
            print(line, flush=True)

    def run_group(inst: str) -> None:
        """The cases of one instance, in order (its final-health case last)."""
        for name, i, fn in selected:
            if i != inst:
                continue
            if inst in errors:
                report("failed", f"FAIL  {name}: instance {inst} did not start")
                continue
            m = instances[inst]
            t0 = time.monotonic()
            try:
                if not m.alive():
                    raise AssertionError(f"moat ({m.name}) is not running (exit "
                                         f"{m.proc.returncode}): {m.log_tail(10)}")
                fn()
                if not m.alive():
                    raise AssertionError(f"moat ({m.name}) died during the case (exit "
                                         f"{m.proc.returncode}): {m.log_tail(10)}")
                report("passed", f"PASS  {name} [{time.monotonic() - t0:.1f}s]")
            except Skip as e:
                report("skipped", f"SKIP  {name}: {e}")
            except (AssertionError, ProtocolError, OSError, ssl.SSLError) as e:
                detail = str(e).replace("\n", "\n      ")
                kind = "" if isinstance(e, AssertionError) else type(e).__name__ + ": "
                report("failed", f"FAIL  {name} [{time.monotonic() - t0:.1f}s]: {kind}{detail}")
            except Exception:  # noqa: BLE001
                report("failed", f"FAIL  {name}: test error\n{traceback.format_exc()}")

    try:
        for k, e in errors.items():
            report("failed", f"FAIL  start moat dev {k}: {e}")
        print(f"(moat dev started in {time.monotonic() - t_start:.0f}s; the instances' "
              f"cases run in parallel, so lines interleave)", flush=True)
        groups = [threading.Thread(target=run_group, args=(k,)) for k in sorted(needed)]
        for g in groups:
            g.start()
        for g in groups:
            g.join()
        for k in sorted(needed - set(errors)):
            m = instances[k]
            panics = [l for l in m.log_text().splitlines() if "panicked" in l]
            if panics or not m.alive():
                report("failed", f"FAIL  moat dev {k}: alive={m.alive()} panics={panics[:3]}")
            else:
                report("passed", f"PASS  moat dev {k}: still running, no panic in its log")
    finally:
        stoppers = [threading.Thread(target=m.stop) for m in instances.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for m in instances.values():
            if not args.keep:
                m.cleanup()
            else:
                print(f"(kept {m.dir})")
    print(f"(run time {time.monotonic() - t_start:.0f}s)")
    summary = f"adversarial: {counts['passed']} passed, {counts['failed']} failed"
    if counts["skipped"]:
        summary += f", {counts['skipped']} skipped"
    print(summary)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
