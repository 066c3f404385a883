#!/usr/bin/env python3
"""The admin console in a real browser: Debian's Chromium, headless, driven by Playwright.

Starts a two-edge `moat dev` (target/debug/moat) with its console, then:

1. Two connectors of two tenants flood from domains their tenants do not own until both edges
   refuse them `550 5.7.711` (the detector's own path, as the Rust e2e test drives it).
2. The operator signs in, finds the flooder on the Restricted entities page with its reason,
   opens it and unblocks it with a reason; mail through that connector is then accepted again
   on both edges, and the audit page shows who unblocked it and why.
3. A tenant admin of example.test sees only its tenant's entities, and gets 404 for the other
   tenant's connector when it edits the URL.
4. A change posted without the CSRF token, or with it from another origin, is refused (403);
   a reader sees no Unblock panel and its post is refused.
5. The on-prem page pauses a tenant's enforcement and shows the pause budget left.
6. Every report downloads as CSV whose rows are the rows of its HTML table.

`--screenshots DIR` saves each page at 1280x800 there (docs/console/ holds the committed ones).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adversarial"))
from moatdev import BINARY, MoatDev  # noqa: E402

from playwright.sync_api import Page, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLOOD_DEADLINE = 90.0

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


class Admin:
    """`moat admin` against the dev cluster, JSON out."""

    def __init__(self, m: MoatDev):
        self.m = m

    def run(self, *args: str, json_out: bool = True) -> object:
        cmd = [str(BINARY), "admin", "--data", str(self.m.data), *args]
        if json_out:
            cmd += ["-o", "json"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"moat admin {' '.join(args)} exited {p.returncode}:\n"
                                 f"{p.stdout}{p.stderr}")
        if not json_out:
            return p.stdout
        out = p.stdout.strip()
        return json.loads(out) if out else None

    def token(self, role: str, name: str, tenant: str | None = None) -> str:
        args = ["token", "create", "--role", role, "--name", name]
        if tenant:
            args += ["--tenant", tenant]
        return str(self.run(*args, json_out=False)).strip()


def send(edge: tuple[str, int], source: str, sender: str, rcpt: str) -> str:
    """One message from `source` through `edge` with Python's smtplib (no TLS: the connector
    matches by IP); the server's answer as `code text`."""
    try:
        with smtplib.SMTP(edge[0], edge[1], timeout=30, source_address=(source, 0)) as s:
            s.ehlo("sender.test")
            s.sendmail(sender, [rcpt], (
                f"From: {sender}\r\nTo: {rcpt}\r\nSubject: console test\r\n"
                f"Message-ID: <{time.monotonic_ns()}@sender.test>\r\n\r\nhello\r\n"
            ).encode())
            return "250"
    except smtplib.SMTPRecipientsRefused as e:
        code, msg = next(iter(e.recipients.values()))
        return f"{code} {msg.decode(errors='replace')}"
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
        return f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
    except smtplib.SMTPResponseException as e:
        return f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"


def send_from_exchange(m: MoatDev, server: str, build: str) -> None:
    """One message from an on-premises Exchange server (127.0.0.4, the `exch` connector)
    stamped with `build`, as Exchange stamps its own hop."""
    msg = (
        f"Received: from {server} (10.0.0.5) by\r\n {server} (10.0.0.5) with Microsoft SMTP "
        f"Server\r\n (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id {build};"
        f"\r\n Tue, 24 Nov 2026 10:00:00 +0000\r\nFrom: app@example.test\r\n"
        f"To: alice@example.test\r\nSubject: from {server}\r\n\r\nhello\r\n"
    )
    host, port = m.addr("mx", 0)
    with smtplib.SMTP(host, port, timeout=30, source_address=("127.0.0.4", 0)) as s:
        s.ehlo("exch01.example.test")
        s.sendmail("app@example.test", ["alice@example.test"], msg.encode())


def submit(m: MoatDev, version: ssl.TLSVersion) -> None:
    """One message from the demo user through the submission listener (STARTTLS at `version`,
    AUTH PLAIN), with Python's smtplib and ssl: the SMTP AUTH clients report counts it."""
    ctx = ssl.create_default_context(cafile=m.ca)
    ctx.minimum_version = ctx.maximum_version = version
    host, port = m.addr("submission", 0)
    user, password = m.ep["demo"]["user"], m.ep["demo"]["password"]
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.starttls(context=ctx)
        s.login(user, password)
        s.sendmail(user, ["alice@example.test"],
                   f"From: {user}\r\nTo: alice@example.test\r\nSubject: report\r\n\r\nhi\r\n"
                   .encode())


def flood_until_restricted(m: MoatDev, admin: Admin) -> None:
    """Baseline traffic, then a flood from unowned domains, until both edges refuse both
    flooders with 5.7.711."""
    admin.run("detection", "set", "--interval", "2s", "--warmup", "3", "--spike-factor", "10",
              "--min-messages", "20", json_out=False)
    edges = [m.addr("mx", 0), m.addr("mx", 1)]
    flooders = [("127.0.0.2", "example.test", "alice@example.test"),
                ("127.0.0.3", "other.test", "carol@other.test")]
    for w in range(5):
        t0 = time.monotonic()
        for ip, domain, rcpt in flooders:
            for i in range(2):
                r = send(edges[w % 2], ip, f"s{i}@{domain}", rcpt)
                check(r.startswith("250"), f"baseline window {w} from {ip}: {r}")
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    refused = {(ip, e) for ip, _, _ in flooders for e in range(2)}
    t0 = time.monotonic()
    sent = 0
    while refused:
        check(time.monotonic() - t0 < FLOOD_DEADLINE,
              f"not restricted {FLOOD_DEADLINE:.0f} s into the flood ({sent} sent): {refused}")
        for ip, _, rcpt in flooders:
            for e, edge in enumerate(edges):
                for _ in range(2):
                    r = send(edge, ip, f"x{sent}@spam-source.test", rcpt)
                    sent += 1
                    if r.startswith("550 5.7.711"):
                        refused.discard((ip, e))
    print(f"  both flooders refused 5.7.711 on both edges after {time.monotonic() - t0:.1f} s "
          f"({sent} flood messages)")


class Console:
    """A browser context signed in (or not) to the console."""

    def __init__(self, browser, base: str, shots: Path | None):
        self.base = base.rstrip("/")
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 800},
                                       ignore_https_errors=True)
        self.page: Page = self.ctx.new_page()
        self.shots = shots

    def goto(self, path: str) -> int:
        resp = self.page.goto(self.base + path)
        return resp.status if resp else 0

    def sign_in(self, token: str) -> None:
        self.goto("/signin")
        self.page.fill("input[name=token]", token)
        self.page.locator("form[action='/signin'] [type=submit]").click()
        self.page.wait_for_load_state()
        check(urllib.parse.urlparse(self.page.url).path != "/signin",
              f"sign-in failed: {self.page.url}\n{self.text()[:500]}")

    def text(self) -> str:
        return self.page.inner_text("body")

    def shot(self, name: str) -> None:
        if self.shots is not None:
            self.page.screenshot(path=str(self.shots / f"{name}.png"))

    def csrf(self) -> str:
        field = self.page.locator("input[name=csrf]").first
        return field.get_attribute("value") or ""

    def post(self, path: str, form: dict[str, str], origin: str | None = None) -> int:
        headers = {"Origin": origin} if origin is not None else {}
        resp = self.ctx.request.post(self.base + path, form=form, headers=headers,
                                     max_redirects=0, fail_on_status_code=False)
        return resp.status

    def table_rows(self) -> list[list[str]]:
        rows = []
        for tr in self.page.locator("table.data tbody tr").all():
            rows.append([td.inner_text().strip() for td in tr.locator("td").all()])
        return rows

    def close(self) -> None:
        self.ctx.close()


def certificate_is_the_dev_cas(m: MoatDev, url: str) -> None:
    """The console speaks TLS with a certificate the dev internal CA signed (checked by
    Python's ssl; the browser is told to accept it, having no way to load the CA)."""
    u = urllib.parse.urlparse(url)
    ctx = ssl.create_default_context(cafile=m.ep["console"]["ca"])
    ctx.check_hostname = False
    import socket
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            check(t.version() in ("TLSv1.2", "TLSv1.3"), f"console TLS {t.version()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="save each page at 1280x800 in this directory")
    args = ap.parse_args()
    shots = args.screenshots
    if shots is None:
        shots = Path(tempfile.mkdtemp(prefix="moat-console-shots-"))
    shots.mkdir(parents=True, exist_ok=True)

    m = MoatDev("console", extra=["--edges", "2"]).start()
    try:
        run(m, shots)
    except Exception as e:  # noqa: BLE001 - reported with the server's log, then failed
        print(f"FAIL: {type(e).__name__}: {e}\n--- moat dev log (tail) ---\n{m.log_tail(60)}")
        return 1
    finally:
        m.stop()
        m.cleanup()
    print("console: all checks passed")
    return 0


def run(m: MoatDev, shots: Path) -> None:
    admin = Admin(m)
    url = m.ep["console"]["url"]
    print(f"console at {url}")
    certificate_is_the_dev_cas(m, url)
    admin.run("tenant", "create", "other.test", "--domain", "other.test", json_out=False)
    for tenant, name, ip in [("example.test", "flooder", "127.0.0.2"),
                             ("other.test", "otherflood", "127.0.0.3"),
                             ("example.test", "exch", "127.0.0.4")]:
        admin.run("connector", "create", "--tenant", tenant, name, "--type", "on-premises",
                  "--sender-ip", ip, json_out=False)
    operator = (m.data / "admin-token").read_text().strip()
    tenant_admin = admin.token("tenant-admin", "console-ta", "example.test")
    reader = admin.token("reader", "console-reader")
    time.sleep(1.0)  # the connectors reach both edges (the policy push is milliseconds)
    flood_until_restricted(m, admin)
    # The demo user submits over TLS 1.3 twice and TLS 1.2 once.
    for v in [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]:
        submit(m, v)
    # An out-of-date Exchange 2016 server (15.1.2507.44 is below the baseline) is seen.
    send_from_exchange(m, "exch01.example.test", "15.1.2507.44")
    deadline = time.monotonic() + 30
    while not admin.run("onprem", "servers", "--tenant", "example.test"):
        check(time.monotonic() < deadline, "the Exchange server was never reported")
        time.sleep(0.5)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            # Signed out, every page leads to the sign-in form; a wrong token is refused.
            anon = Console(browser, url, shots)
            anon.goto("/restricted")
            check(urllib.parse.urlparse(anon.page.url).path == "/signin",
                  f"signed out, /restricted went to {anon.page.url}")
            anon.shot("signin")
            anon.page.fill("input[name=token]", "not-a-token")
            anon.page.locator("form[action='/signin'] [type=submit]").click()
            anon.page.wait_for_load_state()
            check(urllib.parse.urlparse(anon.page.url).path == "/signin",
                  "a wrong token signed in")
            anon.close()

            op = Console(browser, url, shots)
            op.sign_in(operator)
            cookies = {c["name"]: c for c in op.ctx.cookies()}
            s = cookies.get("moat_session")
            check(s is not None, f"no moat_session cookie: {list(cookies)}")
            check(bool(s["httpOnly"]) and bool(s["secure"]) and s["sameSite"] == "Strict",
                  f"session cookie attributes: {s}")
            overview(op)
            restricted_and_unblock(m, op)
            tenant_scope(browser, url, shots, tenant_admin)
            csrf_and_reader(browser, url, shots, op, reader)
            onprem_pause(op)
            reports_as_csv(op)
            for path, name in [("/connectors", "connectors"), ("/alerts", "alerts"),
                               ("/audit", "audit")]:
                check(op.goto(path) == 200, f"{path}: not 200")
                op.shot(name)
            audit = op.text()
            check("cleaned up the relay host" in audit, f"audit page lacks the unblock:\n"
                  f"{audit[:2000]}")
            op.close()
        finally:
            browser.close()


def overview(op: Console) -> None:
    check(op.goto("/") == 200, "overview not 200")
    t = op.text()
    for want in ["edge-1", "edge-2"]:
        check(want in t, f"overview lacks {want}:\n{t[:1500]}")
    check("leader" in t.lower(), f"overview names no leader:\n{t[:1500]}")
    op.shot("overview")
    print("  overview: leader and both edges shown")


def restricted_and_unblock(m: MoatDev, op: Console) -> None:
    check(op.goto("/restricted") == 200, "restricted not 200")
    t = op.text()
    check("flooder" in t and "otherflood" in t, f"restricted page lacks the flooders:\n{t[:2000]}")
    check(re.search(r"unprovisioned|volume-spike|spike", t, re.I) is not None,
          f"restricted page gives no reason:\n{t[:2000]}")
    op.shot("restricted")
    op.page.locator("a[href='/restricted/connector/example.test/flooder']").first.click()
    op.page.wait_for_load_state()
    check(urllib.parse.urlparse(op.page.url).path == "/restricted/connector/example.test/flooder",
          f"detail link went to {op.page.url}")
    op.shot("restricted-detail")
    # The reason is required: an empty one is refused by the server, not only the form.
    status = op.post("/restricted/connector/example.test/flooder/unblock",
                     {"csrf": op.csrf(), "reason": ""}, origin=op.base)
    check(status in (400, 422), f"unblock without a reason: {status}")
    op.page.fill("textarea[name=reason]", "cleaned up the relay host")
    op.page.locator("form[action$='/unblock'] [type=submit]").click()
    op.page.wait_for_load_state()
    check(op.goto("/restricted") == 200, "restricted not 200 after unblock")
    t = op.text()
    check("otherflood" in t and "flooder\n" not in t and not re.search(r"\bflooder\b", t),
          f"flooder still listed after unblock:\n{t[:2000]}")
    # Mail through that connector is accepted again on both edges (the block's removal
    # reaches them through the policy push).
    deadline = time.monotonic() + 30
    for e in range(2):
        while True:
            r = send(m.addr("mx", e), "127.0.0.2", "s@example.test", "alice@example.test")
            if r.startswith("250"):
                break
            check(time.monotonic() < deadline, f"edge {e + 1} still refuses after unblock: {r}")
            time.sleep(0.2)
    print("  restricted: flooder shown with its reason, unblocked in the browser, accepted "
          "again on both edges")


def tenant_scope(browser, url: str, shots: Path, token: str) -> None:
    ta = Console(browser, url, None)
    ta.sign_in(token)
    check(ta.goto("/restricted") == 200, "tenant admin: restricted not 200")
    t = ta.text()
    check("otherflood" not in t and "other.test" not in t,
          f"tenant admin sees another tenant:\n{t[:2000]}")
    status = ta.goto("/restricted/connector/other.test/otherflood")
    check(status == 404, f"tenant admin reached another tenant's connector: {status}")
    check(ta.goto("/connectors") == 200, "tenant admin: connectors not 200")
    check("otherflood" not in ta.text(), "tenant admin lists another tenant's connector")
    status = ta.goto("/restricted/connector/other.test/no-such-connector")
    check(status == 404, f"tenant admin: unknown entity {status}")
    ta.close()
    print("  tenant admin: only example.test shown; another tenant's entity is 404")


def csrf_and_reader(browser, url: str, shots: Path, op: Console, reader_token: str) -> None:
    check(op.goto("/restricted/connector/other.test/otherflood") == 200,
          "operator: otherflood detail not 200")
    token = op.csrf()
    check(len(token) >= 16, f"no CSRF token on the unblock form: {token!r}")
    path = "/restricted/connector/other.test/otherflood/unblock"
    status = op.post(path, {"reason": "no csrf"}, origin=op.base)
    check(status == 403, f"unblock without the CSRF token: {status}")
    status = op.post(path, {"reason": "wrong csrf", "csrf": "0" * len(token)}, origin=op.base)
    check(status == 403, f"unblock with a wrong CSRF token: {status}")
    status = op.post(path, {"reason": "cross origin", "csrf": token},
                     origin="https://evil.example")
    check(status == 403, f"unblock from another origin: {status}")
    check(op.goto("/restricted") == 200 and "otherflood" in op.text(),
          "otherflood was unblocked by a refused post")

    rd = Console(browser, url, None)
    rd.sign_in(reader_token)
    check(rd.goto("/restricted/connector/other.test/otherflood") == 200,
          "reader: detail not 200")
    check(rd.page.locator("textarea[name=reason]").count() == 0,
          "the reader is offered an Unblock form")
    reader_csrf = rd.page.locator("input[name=csrf]").first.get_attribute("value") \
        if rd.page.locator("input[name=csrf]").count() else ""
    status = rd.post(path, {"reason": "reader try", "csrf": reader_csrf or ""}, origin=rd.base)
    check(status == 403, f"a reader's unblock: {status}")
    rd.close()
    check(op.goto("/restricted") == 200 and "otherflood" in op.text(),
          "otherflood was unblocked by a reader")
    print("  CSRF: missing, wrong and cross-origin posts refused; a reader cannot unblock")


def onprem_pause(op: Console) -> None:
    check(op.goto("/onprem") == 200, "onprem not 200")
    before = op.text()
    for want in ["exch01.example.test", "15.1.2507.44", "Microsoft SMTP Server"]:
        check(want in before, f"the on-prem page lacks {want!r}:\n{before[:2000]}")
    op.shot("onprem")
    form = op.page.locator("form[action='/onprem/example.test/pause']")
    check(form.count() == 1, f"no pause form for example.test:\n{before[:2000]}")
    if form.locator("[name=days]").count():
        form.locator("[name=days]").fill("10")
    form.locator("[name=reason]").fill("migration to Exchange 2019 CU14 this month")
    form.locator("[type=submit]").click()
    op.page.wait_for_load_state()
    check(op.goto("/onprem") == 200, "onprem not 200 after pause")
    after = op.text()
    m = re.search(r"(\d+)\s+(?:pause\s+)?days?\s+left", after, re.I)
    check(m is not None, f"no pause budget on the on-prem page:\n{after[:2000]}")
    check(int(m.group(1)) < 90, f"budget unchanged after a pause: {m.group(0)}")
    check(re.search(r"paused until", after, re.I) is not None,
          f"the pause is not shown:\n{after[:2000]}")
    op.shot("onprem-paused")
    print(f"  on-prem: paused example.test; page shows '{m.group(0)}'")


def reports_as_csv(op: Console) -> None:
    check(op.goto("/reports") == 200, "reports not 200")
    op.shot("reports")
    links = sorted({a.get_attribute("href") or "" for a in
                    op.page.locator("a[href^='/reports/']").all()})
    links = [l for l in links if "format=csv" not in l]
    check(len(links) >= 1, f"no reports listed:\n{op.text()[:1500]}")
    for link in links:
        path = urllib.parse.urlparse(link).path
        sep = "&" if "?" in link else "?"
        check(op.goto(f"{link}{sep}days=7") == 200, f"{link}: not 200")
        name = path.rsplit("/", 1)[-1]
        op.shot(f"report-{name}")
        html_rows = op.table_rows()
        resp = op.ctx.request.get(f"{op.base}{link}{sep}days=7&format=csv")
        check(resp.status == 200, f"{link} csv: {resp.status}")
        check("attachment" in (resp.headers.get("content-disposition") or ""),
              f"{link} csv is not a download: {resp.headers}")
        rows = list(csv.reader(io.StringIO(resp.text())))
        check(len(rows) >= 1, f"{link} csv is empty")
        body = [[c[1:] if c.startswith("'") else c for c in r] for r in rows[1:]]
        # The page shows the first page of rows; the CSV has them all, in the same order.
        check(body[:len(html_rows)] == html_rows,
              f"{link}: CSV rows differ from the table:\ncsv {body[:5]}\nhtml {html_rows[:5]}")
    # The demo user's three submissions: 2 over TLS 1.3 and 1 over TLS 1.2 (66.7% / 33.3%).
    deadline = time.monotonic() + 30
    while True:
        op.goto("/reports/auth-clients-report?days=7")
        rows = [r for r in op.table_rows() if "demo@example.test" in r]
        if rows and rows[0][-1] == "66.7" and rows[0][-2] == "33.3":
            break
        check(time.monotonic() < deadline, f"AUTH clients report: {op.table_rows()}")
        time.sleep(0.5)
    op.shot("report-auth-clients-report")
    print(f"  reports: {len(links)} reports, each CSV equal to its table; the demo user's "
          "TLS 1.2/1.3 shares shown")


if __name__ == "__main__":
    sys.exit(main())
