#!/usr/bin/env python3
"""Submission sessions with Python's smtplib at a chosen TLS version (stdlib only).

Each session: connect, EHLO, STARTTLS (or implicit TLS with --implicit) with an SSL context
pinned to one TLS version, AUTH (PLAIN or LOGIN), then one message unless
--no-send. Prints one JSON object per session:

    {"tls": "TLSv1", "cipher": "ECDHE-ECDSA-AES256-SHA",
     "auth": [235, "2.7.0 Authentication successful [edge-1]"],
     "mail": [250, "..."], "data": [250, "..."], "error": null}

Steps after a failed one are not attempted (their fields are null). Connection-level problems
go into "error". Exit status is 0 whenever every session ran to a reply (refusals included).

    python3 submit.py --server 127.0.0.1:2588 --ca ca.pem --tls TLSv1 \\
        --user demo@example.test --password secret --to alice@example.test --count 3
"""

from __future__ import annotations

import argparse
import json
import smtplib
import ssl
import sys
import uuid
import warnings

# TLS 1.0/1.1 are what this client is for.
warnings.filterwarnings("ignore", category=DeprecationWarning)

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}


def context(ca: str, version: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    v = VERSIONS[version]
    ctx.minimum_version = v
    ctx.maximum_version = v
    if v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        # OpenSSL 3 refuses TLS 1.0/1.1 above security level 0.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def reply(e: smtplib.SMTPResponseException) -> list:
    return [e.smtp_code, e.smtp_error.decode("utf-8", "replace")]


def session(a: argparse.Namespace, host: str, port: int) -> dict:
    out = {"tls": None, "cipher": None, "auth": None, "mail": None, "data": None, "error": None}
    ctx = context(a.ca, a.tls)
    try:
        if a.implicit:
            smtp = smtplib.SMTP_SSL(host, port, local_hostname="client.e2e.test",
                                    timeout=a.timeout, context=ctx)
            smtp.ehlo()
        else:
            smtp = smtplib.SMTP(host, port, local_hostname="client.e2e.test", timeout=a.timeout)
            smtp.ehlo()
            smtp.starttls(context=ctx)
            smtp.ehlo()
        out["tls"] = smtp.sock.version()
        out["cipher"] = smtp.sock.cipher()[0]
        try:
            # One mechanism per session (smtp.login would try the next one after a refusal).
            smtp.user, smtp.password = a.user, a.password
            auth = smtp.auth_plain if a.mech == "PLAIN" else smtp.auth_login
            code, text = smtp.auth(a.mech, auth)
            out["auth"] = [code, text.decode("utf-8", "replace")]
        except smtplib.SMTPResponseException as e:
            out["auth"] = reply(e)
            smtp.close()
            return out
        if a.no_send:
            smtp.quit()
            return out
        code, text = smtp.mail(getattr(a, "from") or a.user)
        out["mail"] = [code, text.decode("utf-8", "replace")]
        if code != 250:
            smtp.quit()
            return out
        for to in a.to:
            code, text = smtp.rcpt(to)
            if code not in (250, 251):
                out["mail"] = [code, text.decode("utf-8", "replace")]
                smtp.quit()
                return out
        msg = (
            f"From: <{getattr(a, 'from') or a.user}>\r\nTo: <{a.to[0]}>\r\n"
            f"Subject: {a.subject}\r\nMessage-ID: <{uuid.uuid4()}@submit.e2e>\r\n\r\n"
            f"sent over {out['tls']}\r\n"
        )
        code, text = smtp.data(msg.encode())
        out["data"] = [code, text.decode("utf-8", "replace")]
        smtp.quit()
    except smtplib.SMTPServerDisconnected as e:
        out["error"] = f"disconnected: {e}"
    except (OSError, smtplib.SMTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--tls", choices=sorted(VERSIONS), default="TLSv1_3")
    p.add_argument("--implicit", action="store_true")
    p.add_argument("--mech", choices=["PLAIN", "LOGIN"], default="PLAIN")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--from", default=None)
    p.add_argument("--to", action="append", default=[])
    p.add_argument("--subject", default="submit.py")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--no-send", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    if not a.to and not a.no_send:
        p.error("--to is required unless --no-send")
    host, port = a.server.rsplit(":", 1)
    for _ in range(a.count):
        print(json.dumps(session(a, host, int(port))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
