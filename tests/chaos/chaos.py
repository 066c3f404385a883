#!/usr/bin/env python3
"""Chaos test for Moat: a real 3-node control plane and 2 edges under mail load and admin
writes while control nodes are killed (-9) or frozen (SIGSTOP), edges are killed, and the next
hop answers 452 for a while.

Run from the repository root (it uses the already-built binary, it never builds):

    python3 tests/chaos/chaos.py                  # 180 s of chaos
    CHAOS_SECONDS=60 python3 tests/chaos/chaos.py

Environment:
    CHAOS_SECONDS        chaos duration in seconds (default 180)
    CHAOS_SEED           RNG seed (default: random, printed)
    MOAT_BIN             the moat binary (default: target/debug/moat, else target/release/moat)
    CHAOS_CLIENTS        SMTP client threads (default 4)
    CHAOS_SNAPSHOT_EVERY --snapshot-every of the control nodes (default 50, so that restarted
                         nodes also catch up through raft snapshots, not only the log)
    CHAOS_KEEP=1         keep the temp dir (logs, data) even when the run passes
    CHAOS_REPORT=FILE    also write the JSON report there

What is checked (exit 1 if any fails, the JSON report says which):
  - lost == 0: every message a client heard 250 for was received by the sink;
  - corrupted == 0: the sink got the body the client sent for every delivered message;
  - every acknowledged admin write (`moat admin` exit 0) is present at the end;
  - per edge process, the applied policy version (/readyz policy.version) never goes down, and
    neither does its connector count (the test only ever adds connectors, so fewer connectors
    means an older snapshot is enforced);
  - every snapshot seen on any edge with the same version has the same connector count, and a
    higher version never has fewer connectors;
  - no moat process exits by itself (only the test kills them);
  - recovery: after chaos stops, every node is ready with one leader, every edge is ready and
    enforces the control plane's policy version, an admin write is acknowledged and applied by
    both edges, and a message through each edge is accepted and delivered.
Reported, not failures: duplicates (the sink got one Message-ID more than once: clients never
retry, so each duplicate is worth a look), messages delivered although the client saw an
error (allowed: the edge died or timed out after the next hop's 250), and edges whose new
process started on a lower version than the previous process had reached.

Clients never retry a message: a message that got an error is counted once as not accepted.
"""

import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "moat_chaos_operator_token"
TENANT = "example.test"
SEED_TOML = '[[tenant]]\nid = "example.test"\naccepted-domains = ["example.test"]\n'

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "180"))
N_CLIENTS = int(os.environ.get("CHAOS_CLIENTS", "4"))
SNAPSHOT_EVERY = os.environ.get("CHAOS_SNAPSHOT_EVERY", "50")
CLIENT_TIMEOUT = 150.0  # the edge waits up to 5 x 2 min for the next hop's final reply
ADMIN_TIMEOUT = 90.0  # `moat admin` retries for ~15 s itself; the machine is loaded
SETTLE_TIMEOUT = 180.0

T0 = time.monotonic()
SHUTDOWN = threading.Event()  # set once cleanup begins: no process is started after that


def now():
    return time.monotonic() - T0


def moat_bin():
    if os.environ.get("MOAT_BIN"):
        return os.environ["MOAT_BIN"]
    for p in ("target/debug/moat", "target/release/moat"):
        full = os.path.join(REPO, p)
        if os.path.exists(full):
            return full
    sys.exit("no moat binary: set MOAT_BIN or build target/debug/moat")


MOAT = moat_bin()


_PORTS_GIVEN = set()


def free_port():
    """A loopback port free now and below the kernel's ephemeral range. Nodes are restarted on
    their ports all through the run; a port from bind(0) lies in the ephemeral range, where any
    outgoing connection in between may take it as its source port and the restart then fails
    with "address in use"."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    base = max(1024, low - 10000)
    rng = random.SystemRandom()  # leaves the seeded schedule untouched
    for _ in range(1000):
        port = rng.randrange(base, low)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port in {base}..{low}")


def http_get(addr, path, timeout=3.0):
    """(HTTP status, parsed JSON body or None); (0, None) when nothing answers."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
    except OSError:
        return 0, None
    head, _, body = buf.partition(b"\r\n\r\n")
    try:
        code = int(head.split()[1])
    except (IndexError, ValueError):
        return 0, None
    try:
        return code, json.loads(body)
    except ValueError:
        return code, None


# --------------------------------------------------------------------------------------------
# Timeline


class Timeline:
    def __init__(self):
        self.lock = threading.Lock()
        self.events = []

    def add(self, kind, detail="", **extra):
        ev = {"t": round(now(), 2), "event": kind, "detail": detail}
        ev.update(extra)
        with self.lock:
            self.events.append(ev)
        print(f"[{ev['t']:8.2f}s] {kind:<22} {detail}", flush=True)
        return ev


TL = Timeline()

# --------------------------------------------------------------------------------------------
# The next hop: an SMTP sink that records every message it accepts by Message-ID.

MSGID_RE = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class Sink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.lock = threading.Lock()
        self.counts = Counter()  # Message-ID -> times accepted
        self.hashes = defaultdict(list)  # Message-ID -> body digests
        self.first_at = {}
        self.without_id = 0
        # None, or where a full disk shows: "rcpt+data" (452 to every RCPT and DATA), "data"
        # (452 to every DATA), "eod" (452 after the final dot: the message is not kept).
        self.full = None
        self.refused_452 = 0
        self.sessions = 0
        self.aborted = 0  # sessions that closed inside DATA

    @property
    def address(self):
        return f"127.0.0.1:{self.server_address[1]}"

    def record(self, msg):
        m = MSGID_RE.search(msg.split(b"\r\n\r\n", 1)[0])
        body = msg.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in msg else b""
        digest = digest_of(body)
        with self.lock:
            if not m:
                self.without_id += 1
                return
            mid = m.group(1).decode("ascii", "replace")
            self.counts[mid] += 1
            self.hashes[mid].append(digest)
            self.first_at.setdefault(mid, now())


def digest_of(body):
    import hashlib

    return hashlib.sha256(body).hexdigest()[:16]


class SinkHandler(socketserver.StreamRequestHandler):
    def handle(self):
        sink = self.server
        with sink.lock:
            sink.sessions += 1
        self.connection.settimeout(600)
        try:
            self.session(sink)
        except (OSError, ValueError):
            pass

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def session(self, sink):
        self.reply("220 sink.chaos ESMTP chaos sink")
        rcpts = 0
        mail = False
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            verb = line.strip().split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"LHLO"):
                self.reply("250-sink.chaos\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 104857600")
            elif verb == b"HELO":
                self.reply("250 sink.chaos")
            elif verb == b"MAIL":
                mail, rcpts = True, 0
                self.reply("250 2.1.0 OK")
            elif verb == b"RCPT":
                if not mail:
                    self.reply("503 5.5.1 MAIL first")
                elif sink.full == "rcpt+data":
                    with sink.lock:
                        sink.refused_452 += 1
                    self.reply("452 4.3.1 Insufficient system storage")
                else:
                    rcpts += 1
                    self.reply("250 2.1.5 OK")
            elif verb == b"DATA":
                if sink.full in ("rcpt+data", "data"):
                    with sink.lock:
                        sink.refused_452 += 1
                    self.reply("452 4.3.1 Insufficient system storage")
                    continue
                if not rcpts:
                    self.reply("503 5.5.1 no valid recipients")
                    continue
                self.reply("354 go ahead")
                lines = []
                while True:
                    data = self.rfile.readline(1 << 20)
                    if not data:
                        with sink.lock:
                            sink.aborted += 1
                        return  # the transaction never saw its end: discarded
                    if data == b".\r\n":
                        break
                    if data.startswith(b"."):
                        data = data[1:]
                    lines.append(data)
                mail, rcpts = False, 0
                if sink.full == "eod":
                    with sink.lock:
                        sink.refused_452 += 1
                    self.reply("452 4.3.1 Insufficient system storage")
                    continue
                sink.record(b"".join(lines))
                self.reply("250 2.0.0 queued")
            elif verb == b"RSET":
                mail, rcpts = False, 0
                self.reply("250 2.0.0 OK")
            elif verb == b"NOOP":
                self.reply("250 2.0.0 OK")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("500 5.5.2 unknown command")


# --------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A moat process that the test starts, kills, stops and restarts."""

    def __init__(self, name, logdir):
        self.name = name
        self.log = os.path.join(logdir, f"{name}.log")
        self.proc = None
        self.lock = threading.RLock()
        self.expected_down = True  # the test stopped it (or has not started it yet)
        self.frozen = False
        self.gen = 0  # incremented once a process is gone (after it is reaped)
        self.starts = 0
        self.started_at = None

    def argv(self):
        raise NotImplementedError

    def start(self):
        with self.lock:
            if SHUTDOWN.is_set():
                raise RuntimeError(f"shutting down: {self.name} not started")
            assert self.proc is None or self.proc.poll() is not None, f"{self.name} running"
            with open(self.log, "ab") as f:
                f.write(f"\n===== chaos: starting {self.name} at t={now():.2f}s =====\n".encode())
                self.proc = subprocess.Popen(
                    self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=f,
                    start_new_session=True,
                )
            self.starts += 1
            self.started_at = round(now(), 2)
            self.expected_down = False
            self.frozen = False
            return self.proc.pid

    @property
    def pid(self):
        p = self.proc
        return p.pid if p else None

    def alive(self):
        p = self.proc
        return p is not None and p.poll() is None

    def kill9(self):
        """SIGKILL and reap; returns the exit status."""
        with self.lock:
            p = self.proc
            if p is None:
                return None
            self.expected_down = True
            try:
                p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = p.wait()
            self.frozen = False
            self.gen += 1
            return rc

    def freeze(self):
        with self.lock:
            if self.alive():
                self.frozen = True
                self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        with self.lock:
            if self.proc is not None and self.frozen:
                try:
                    self.proc.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
                self.frozen = False

    def reap_unexpected(self):
        """If the process exited without the test killing it: (pid, exit status), else None."""
        with self.lock:
            p = self.proc
            if p is None or self.expected_down:
                return None
            rc = p.poll()
            if rc is None:
                return None
            self.expected_down = True
            self.gen += 1
            return p.pid, rc

    def log_tail(self, n=30):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return lines[-n:]
        except OSError:
            return []


class ControlNode(Proc):
    def __init__(self, nid, cluster):
        super().__init__(f"control-{nid}", cluster.dir)
        self.id = nid
        self.cluster = cluster
        self.address = f"127.0.0.1:{free_port()}"
        self.status = f"127.0.0.1:{free_port()}"
        self.data = os.path.join(cluster.dir, f"control-{nid}")

    def argv(self):
        c = self.cluster
        a = [
            MOAT, "control",
            "--id", str(self.id),
            "--listen", self.address,
            "--data", self.data,
            "--seed", c.seed,
            "--admin-token-file", c.token_file,
            "--status-listen", self.status,
            "--snapshot-every", SNAPSHOT_EVERY,
            "--tls-ca", c.pki("ca.pem"),
            "--tls-cert", c.pki("control.pem"),
            "--tls-key", c.pki("control-key.pem"),
        ]
        for n in c.nodes:
            a += ["--peer", f"{n.id}={n.address}"]
        return a

    def readyz(self, timeout=3.0):
        return http_get(self.status, "/readyz", timeout)


class EdgeProc(Proc):
    def __init__(self, idx, cluster):
        super().__init__(f"edge-{idx}", cluster.dir)
        self.idx = idx
        self.control_order = []
        self.cluster = cluster
        self.mx = f"127.0.0.1:{free_port()}"
        self.status = f"127.0.0.1:{free_port()}"
        self.config = os.path.join(cluster.dir, f"edge-{idx}.toml")
        c = cluster
        with open(self.config, "w") as f:
            f.write(
                f'node-id = "edge-{idx}"\n'
                f"[[listener]]\nkind = \"mx\"\naddress = \"{self.mx}\"\n"
                f"[next-hop]\nkind = \"smtp\"\naddress = \"{c.sink.address}\"\nstarttls = \"none\"\n"
                f"[control-tls]\nca = {json.dumps(c.pki('ca.pem'))}\n"
                f"cert = {json.dumps(c.pki('edge.pem'))}\nkey = {json.dumps(c.pki('edge-key.pem'))}\n"
            )

    def argv(self):
        # Each start lists the control nodes in another (seeded) order: an edge dials the first
        # one first, so restarted edges also meet lagging or just-restarted nodes.
        nodes = list(self.cluster.nodes)
        self.cluster.order_rng.shuffle(nodes)
        self.control_order = [n.id for n in nodes]
        return [
            MOAT, "edge",
            "--config", self.config,
            "--control", ",".join(n.address for n in nodes),
            "--status", self.status,
        ]

    def readyz(self, timeout=3.0):
        return http_get(self.status, "/readyz", timeout)


class Cluster:
    def __init__(self, workdir, sink, seed=0):
        self.dir = workdir
        self.order_rng = random.Random(seed + 13)
        self.sink = sink
        self.pki_dir = os.path.join(workdir, "pki")
        self.token_file = os.path.join(workdir, "token")
        self.seed = os.path.join(workdir, "seed.toml")
        with open(self.token_file, "w") as f:
            f.write(TOKEN)
        with open(self.seed, "w") as f:
            f.write(SEED_TOML)
        self.make_pki()
        self.nodes = []
        self.nodes = [ControlNode(i, self) for i in (1, 2, 3)]
        self.edges = [EdgeProc(i, self) for i in (0, 1)]

    def pki(self, name):
        return os.path.join(self.pki_dir, name)

    def make_pki(self):
        steps = [
            ["ca"],
            ["issue", "--role", "control", "--san", "127.0.0.1", "--san", "localhost"],
            ["issue", "--role", "edge"],
            ["issue", "--role", "admin"],
        ]
        for s in steps:
            r = subprocess.run([MOAT, "cert", *s, "--dir", self.pki_dir], capture_output=True,
                               text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"moat cert {s}: {r.stdout}{r.stderr}")

    def procs(self):
        return [*self.nodes, *self.edges]

    def admin(self, args, timeout=ADMIN_TIMEOUT, endpoint=None):
        """(exit code, stdout, stderr); exit code None when it did not finish in time."""
        argv = [
            MOAT, "admin",
            "--endpoint", endpoint or ",".join(n.address for n in self.nodes),
            "--token", TOKEN,
            "--tls-ca", self.pki("ca.pem"),
            "--tls-cert", self.pki("admin.pem"),
            "--tls-key", self.pki("admin-key.pem"),
            *args,
        ]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
            return r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return None, out, err

    def leader(self):
        """The leader's id from `moat admin cluster status`, 0 when none is known."""
        code, out, _ = self.admin(["cluster", "status", "-o", "json"], timeout=30)
        if code == 0:
            try:
                return int(json.loads(out).get("leader-id") or 0)
            except ValueError:
                pass
        # Fall back to what the nodes' /readyz say.
        votes = Counter()
        for n in self.nodes:
            if n.alive() and not n.frozen:
                c, body = n.readyz(2)
                if body and body.get("raft", {}).get("leader"):
                    votes[body["raft"]["leader"]] += 1
        return votes.most_common(1)[0][0] if votes else 0

    def start_edge(self, e, wait=60):
        pid = e.start()
        t = time.monotonic()
        while time.monotonic() - t < wait:
            if not e.alive():
                return pid, False
            try:
                host, port = e.status.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=1):
                    return pid, True
            except OSError:
                time.sleep(0.05)
        return pid, False

    def kill_all(self):
        SHUTDOWN.set()
        for p in self.procs():
            try:
                with p.lock:
                    if p.proc is None or p.proc.poll() is not None:
                        continue
                    p.expected_down = True
                    try:
                        p.proc.send_signal(signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                    p.proc.send_signal(signal.SIGKILL)
                    p.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - best effort at cleanup
                pass


# --------------------------------------------------------------------------------------------
# Load: SMTP clients


class MailLoad:
    def __init__(self, cluster, run_id, seed):
        self.cluster = cluster
        self.run_id = run_id
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes = {}  # Message-ID -> dict
        self.digests = {}  # Message-ID -> body digest as sent
        self.sessions_refused = Counter()
        self.threads = []

    def start(self):
        for i in range(N_CLIENTS):
            t = threading.Thread(target=self.client, args=(i,), name=f"client-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def message(self, mid, rng):
        pad = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(20, 120)))
        lines = [
            f"Message-ID: {mid}",
            "From: <load@client.test>",
            "To: <alice@example.test>",
            f"Subject: chaos {mid}",
            "",
            "chaos test message",
            ". a line that starts with a dot",
            *(pad for _ in range(rng.randint(1, 40))),
            "..",
            "end",
        ]
        body_start = lines.index("") + 1
        msg = ("\r\n".join(lines) + "\r\n").encode()
        body = ("\r\n".join(lines[body_start:]) + "\r\n").encode()
        return msg, digest_of(body)

    def client(self, idx):
        rng = random.Random(self.seed * 1000 + idx)
        n = 0
        k = idx
        while not self.stop.is_set():
            edge = self.cluster.edges[k % len(self.cluster.edges)]
            k += 1
            host, port = edge.mx.rsplit(":", 1)
            s = smtplib.SMTP(timeout=CLIENT_TIMEOUT)
            try:
                code, banner = s.connect(host, int(port))
                if code != 220:
                    raise smtplib.SMTPConnectError(code, banner)
                code, _ = s.ehlo("client.chaos.test")
                if code != 250:
                    raise smtplib.SMTPHeloError(code, b"")
            except (smtplib.SMTPException, OSError) as e:
                self.sessions_refused[f"edge-{edge.idx}: {error_kind(e)}"] += 1
                close(s)
                time.sleep(rng.uniform(0.2, 0.5))
                continue
            gen = edge.gen
            for _ in range(rng.randint(1, 4)):
                if self.stop.is_set():
                    break
                n += 1
                mid = f"<chaos-{self.run_id}-{idx}-{n}@chaos.test>"
                msg, dg = self.message(mid, rng)
                t = now()
                rec = {"edge": edge.idx, "edge_gen": gen, "t": round(t, 2)}
                try:
                    s.sendmail("load@client.test", ["alice@example.test"], msg)
                    rec["accepted"] = True
                    rec["reply"] = 250
                except smtplib.SMTPRecipientsRefused as e:
                    c, m = next(iter(e.recipients.values()))
                    rec.update(accepted=False, reply=f"RCPT {c} {m.decode(errors='replace')[:80]}")
                except smtplib.SMTPResponseException as e:
                    what = type(e).__name__.replace("SMTP", "")
                    rec.update(accepted=False,
                               reply=f"{what} {e.smtp_code} {decode(e.smtp_error)[:80]}")
                except (smtplib.SMTPException, OSError) as e:
                    rec.update(accepted=False, reply=f"connection: {error_kind(e)}")
                rec["took"] = round(now() - t, 2)
                with self.lock:
                    self.outcomes[mid] = rec
                    self.digests[mid] = dg
                if not rec["accepted"]:
                    # Like a real client: back off after an error (a 4xx means "later").
                    time.sleep(rng.uniform(0.2, 0.6))
                    break
                time.sleep(rng.uniform(0.05, 0.2))
            close(s)

    def join(self, timeout):
        self.stop.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


def decode(b):
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def error_kind(e):
    if isinstance(e, smtplib.SMTPResponseException):
        return f"{e.smtp_code} {decode(e.smtp_error)[:60]}"
    return f"{type(e).__name__}: {str(e)[:60]}"


def close(s):
    try:
        s.close()
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------------------------
# Admin writes


class AdminWriter:
    def __init__(self, cluster, seed):
        self.cluster = cluster
        self.rng = random.Random(seed + 7)
        self.stop = threading.Event()
        self.writes = []  # dicts
        self.thread = threading.Thread(target=self.run, name="admin", daemon=True)

    @staticmethod
    def ip_for(i):
        return f"2001:db8:c4a0::{i:x}/128"

    def run(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            name = f"chaos-{i:05d}"
            t = now()
            code, out, err = self.cluster.admin([
                "connector", "create", "--tenant", TENANT, name,
                "--type", "partner", "--sender-ip", self.ip_for(i), "-o", "json",
            ])
            rec = {"name": name, "t": round(t, 2), "took": round(now() - t, 2), "exit": code}
            if code == 0:
                try:
                    rec["index"] = json.loads(out).get("index")
                except ValueError:
                    rec["index"] = None
            else:
                rec["error"] = (err or out).strip().splitlines()[-1:] if (err or out) else []
            self.writes.append(rec)
            if code not in (0, 4):
                TL.add("admin-write-odd", f"{name} exit {code}: {rec.get('error')}")
            elif code == 4:
                TL.add("admin-write-failed", f"{name} exit 4 after {rec['took']}s: {rec.get('error')}")
            elif rec["took"] > 5:
                TL.add("admin-write-slow", f"{name} acknowledged after {rec['took']}s (index {rec.get('index')})")
            time.sleep(self.rng.uniform(0.2, 0.8))


# --------------------------------------------------------------------------------------------
# Policy monitor (and watchdog for processes that exit on their own)


class Monitor:
    def __init__(self, cluster, on_unexpected_exit):
        self.cluster = cluster
        self.stop = threading.Event()
        self.on_unexpected_exit = on_unexpected_exit
        # (edge idx, gen) -> record
        self.gens = {}
        self.regressions = []  # per-process version regressions (failures)
        self.content_regressions = []  # per-process connector-count regressions (failures)
        self.by_version = defaultdict(set)  # version -> {connector counts seen on any edge}
        self.samples = 0
        self.transitions = defaultdict(list)  # edge idx -> [(t, gen, version)] on each change
        self.thread = threading.Thread(target=self.run, name="monitor", daemon=True)

    def run(self):
        while not self.stop.is_set():
            for e in self.cluster.edges:
                self.sample(e)
            for p in self.cluster.procs():
                r = p.reap_unexpected()
                if r:
                    self.on_unexpected_exit(p, *r)
            time.sleep(0.1)

    def sample(self, e):
        g1 = e.gen
        code, body = e.readyz(timeout=2)
        g2 = e.gen
        # A generation ends once its process is reaped, and the next process starts after that:
        # a sample taken while the generation did not change comes from that generation's process.
        if g1 != g2 or body is None or not e.alive():
            return
        pol = body.get("policy", {})
        v, conns = pol.get("version"), pol.get("connectors")
        if v is None:
            return
        self.samples += 1
        key = (e.idx, g1)
        rec = self.gens.get(key)
        t = round(now(), 2)
        if rec is None:
            rec = self.gens[key] = {
                "edge": f"edge-{e.idx}", "gen": g1, "pid": e.pid, "control_order": e.control_order,
                "first_t": t,
                "first_version": v, "first_nonzero_version": v or None,
                "first_nonzero_t": t if v else None, "started_t": e.started_at, "max_version": v,
                "last_version": v, "last_connectors": conns, "max_connectors": conns,
                "samples": 0,
            }
        rec["samples"] += 1
        rec["last_t"] = t
        tr = self.transitions[e.idx]
        if not tr or tr[-1][1] != g1 or tr[-1][2] != v:
            tr.append((t, g1, v))
        if v < rec["last_version"]:
            ev = {"edge": f"edge-{e.idx}", "gen": g1, "pid": e.pid, "t": t,
                  "from": rec["last_version"], "to": v}
            self.regressions.append(ev)
            TL.add("VERSION-REGRESSION", json.dumps(ev))
        if conns is not None and rec["max_connectors"] is not None and conns < rec["max_connectors"]:
            ev = {"edge": f"edge-{e.idx}", "gen": g1, "pid": e.pid, "t": t, "version": v,
                  "connectors_before": rec["max_connectors"], "connectors_now": conns}
            self.content_regressions.append(ev)
            TL.add("CONTENT-REGRESSION", json.dumps(ev))
        if rec["first_nonzero_version"] is None and v:
            rec["first_nonzero_version"] = v
            rec["first_nonzero_t"] = t
        rec["last_version"] = v
        rec["max_version"] = max(rec["max_version"], v)
        if conns is not None:
            rec["last_connectors"] = conns
            rec["max_connectors"] = max(rec["max_connectors"] or 0, conns)
            if v:
                self.by_version[v].add(conns)

    def snapshot_inconsistencies(self):
        """Same version with different contents, or a higher version with fewer connectors."""
        out = []
        for v, counts in sorted(self.by_version.items()):
            if len(counts) > 1:
                out.append({"version": v, "connector_counts": sorted(counts)})
        best = None  # (version, max count so far)
        for v, counts in sorted(self.by_version.items()):
            lo = min(counts)
            if best and lo < best[1]:
                out.append({"version": v, "connectors": lo,
                            "but_lower_version": best[0], "had_connectors": best[1]})
            hi = max(counts)
            if not best or hi > best[1]:
                best = (v, hi)
        return out

    def propagation(self, writes):
        """Per edge: seconds from each acknowledged write to the edge enforcing its index."""
        out = {}
        for idx in range(len(self.cluster.edges)):
            tr = self.transitions[idx]
            delays = []
            for w in writes:
                if w["exit"] != 0 or not w.get("index"):
                    continue
                acked = w["t"] + w["took"]
                reached = next((t for t, _, v in tr if v >= w["index"]), None)
                if reached is None:
                    delays.append((None, w))
                else:
                    delays.append((max(0.0, reached - acked), w))
            known = sorted(d for d, _ in delays if d is not None)
            worst = sorted((d for d in delays if d[0] is not None), key=lambda x: -x[0])[:5]
            out[f"edge-{idx}"] = {
                "writes": len(delays),
                "never_seen": [w["name"] for d, w in delays if d is None][:10],
                "p50_s": round(known[len(known) // 2], 2) if known else None,
                "p99_s": round(known[min(len(known) - 1, int(len(known) * 0.99))], 2) if known else None,
                "max_s": round(known[-1], 2) if known else None,
                "worst": [{"name": w["name"], "index": w["index"], "acked_t": round(w["t"] + w["took"], 2),
                           "delay_s": round(d, 2)} for d, w in worst],
            }
        return out

    def restart_lower_starts(self):
        out = []
        for idx in range(len(self.cluster.edges)):
            gens = sorted(g for (i, g) in self.gens if i == idx)
            for a, b in zip(gens, gens[1:]):
                prev, cur = self.gens[(idx, a)], self.gens[(idx, b)]
                start = cur["first_nonzero_version"]
                if start is not None and start < prev["max_version"]:
                    out.append({"edge": f"edge-{idx}", "previous_gen": a, "previous_max": prev["max_version"],
                                "new_gen": b, "new_first_version": start, "new_first_t": cur["first_t"]})
        return out


# --------------------------------------------------------------------------------------------
# Chaos


class Chaos:
    ACTIONS = [
        ("kill-control", 3),
        ("kill-leader", 2),
        ("stop-control", 2),
        ("stop-leader", 1),
        ("kill-edge", 3),
        ("sink-full", 2),
    ]

    def __init__(self, cluster, seed):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.stop = threading.Event()
        self.busy = set()  # resources in use: "control", "edge-0", "edge-1", "sink"
        self.busy_lock = threading.Lock()
        self.workers = []
        self.counts = Counter()
        self.thread = threading.Thread(target=self.run, name="chaos", daemon=True)

    def r(self, fn, *a):
        with self.rng_lock:
            return getattr(self.rng, fn)(*a)

    def acquire(self, res):
        with self.busy_lock:
            if res in self.busy:
                return False
            self.busy.add(res)
            return True

    def release(self, res):
        with self.busy_lock:
            self.busy.discard(res)

    def run(self):
        names = [a for a, _ in self.ACTIONS]
        weights = [w for _, w in self.ACTIONS]
        while not self.stop.wait(self.r("uniform", 1.5, 4.0)):
            action = self.r("choices", names, weights)[0]
            if action in ("kill-control", "kill-leader", "stop-control", "stop-leader"):
                res = "control"
            elif action == "kill-edge":
                res = f"edge-{self.r('randrange', len(self.cluster.edges))}"
            else:
                res = "sink"
            if not self.acquire(res):
                continue
            self.counts[action] += 1
            t = threading.Thread(target=self.work, args=(action, res), name=f"chaos-{action}",
                                 daemon=True)
            t.start()
            self.workers.append(t)

    def work(self, action, res):
        try:
            getattr(self, action.replace("-", "_"))(res)
        except Exception as e:  # noqa: BLE001 - a harness bug must not stop the run silently
            TL.add("chaos-error", f"{action}: {e!r}\n{traceback.format_exc()}")
        finally:
            self.release(res)

    def pick_node(self, leader):
        if leader:
            lid = self.cluster.leader()
            node = next((n for n in self.cluster.nodes if n.id == lid), None)
            if node is None:
                TL.add("no-leader-found", "cluster status named no leader; picking a random node")
            else:
                return node
        return self.r("choice", self.cluster.nodes)

    def wait_node_ready(self, node, within=60.0):
        t = time.monotonic()
        while time.monotonic() - t < within:
            code, body = node.readyz(2)
            if code == 200 and body and body.get("raft", {}).get("leader"):
                return time.monotonic() - t, body["raft"]["leader"]
            time.sleep(0.2)
        return None, None

    def kill_control(self, _res, leader=False):
        node = self.pick_node(leader)
        down = self.r("uniform", 1.0, 5.0)
        pid = node.pid
        node.kill9()
        TL.add("kill-leader" if leader else "kill-control",
               f"node {node.id} (pid {pid}) SIGKILL, restart in {down:.1f}s")
        time.sleep(down)
        pid = node.start()
        TL.add("restart-control", f"node {node.id} (pid {pid})")
        took, lead = self.wait_node_ready(node)
        if took is None:
            TL.add("control-not-ready", f"node {node.id} not ready 60 s after restart: "
                   f"{node.readyz(2)}")
        else:
            TL.add("control-ready", f"node {node.id} ready after {took:.1f}s, leader {lead}")
        time.sleep(1.0)

    def kill_leader(self, res):
        self.kill_control(res, leader=True)

    def stop_control(self, _res, leader=False):
        node = self.pick_node(leader)
        frozen = self.r("uniform", 3.5, 7.0)
        node.freeze()
        TL.add("stop-leader" if leader else "stop-control",
               f"node {node.id} (pid {node.pid}) SIGSTOP for {frozen:.1f}s")
        time.sleep(frozen)
        node.thaw()
        TL.add("cont-control", f"node {node.id} SIGCONT")
        time.sleep(1.0)  # right after SIGCONT its /readyz still shows what it knew before
        took, lead = self.wait_node_ready(node)
        if took is None:
            TL.add("control-not-ready", f"node {node.id} not ready 60 s after SIGCONT: "
                   f"{node.readyz(2)}")
        else:
            TL.add("control-ready", f"node {node.id} ready after {took:.1f}s, leader {lead}")
        time.sleep(1.0)

    def stop_leader(self, res):
        self.stop_control(res, leader=True)

    def kill_edge(self, res):
        e = self.cluster.edges[int(res.split("-")[1])]
        down = self.r("uniform", 0.5, 3.0)
        pid = e.pid
        code, body = e.readyz(2)
        v = (body or {}).get("policy", {}).get("version")
        e.kill9()
        TL.add("kill-edge", f"edge-{e.idx} (pid {pid}, version {v}) SIGKILL, restart in {down:.1f}s")
        time.sleep(down)
        pid, ok = self.cluster.start_edge(e)
        TL.add("restart-edge", f"edge-{e.idx} (pid {pid}, --control order {e.control_order}) "
               f"{'listening' if ok else 'NOT LISTENING'}")
        time.sleep(1.0)

    def sink_full(self, _res):
        d = self.r("uniform", 2.0, 5.0)
        stage = self.r("choice", ["rcpt+data", "rcpt+data", "data", "eod"])
        self.cluster.sink.full = stage
        TL.add("sink-full", f"next hop answers 452 at {stage} for {d:.1f}s")
        time.sleep(d)
        self.cluster.sink.full = None
        TL.add("sink-ok", "next hop accepts again")

    def finish(self, timeout=240):
        self.stop.set()
        self.thread.join(30)
        end = time.monotonic() + timeout
        for t in self.workers:
            t.join(max(0.1, end - time.monotonic()))
        return [t.name for t in self.workers if t.is_alive()]


# --------------------------------------------------------------------------------------------
# Main


def wait_until(pred, within, step=0.25):
    t = time.monotonic()
    while time.monotonic() - t < within:
        r = pred()
        if r:
            return r
        time.sleep(step)
    return None


def send_probe(edge, mid):
    host, port = edge.mx.rsplit(":", 1)
    msg = f"Message-ID: {mid}\r\nSubject: probe\r\n\r\nprobe\r\n".encode()
    try:
        with smtplib.SMTP(host, int(port), timeout=CLIENT_TIMEOUT) as s:
            s.sendmail("probe@client.test", ["alice@example.test"], msg)
        return "250"
    except (smtplib.SMTPException, OSError) as e:
        if isinstance(e, smtplib.SMTPRecipientsRefused):
            c, m = next(iter(e.recipients.values()))
            return f"{c} {decode(m)}"
        return error_kind(e)


def main():
    seed = int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else random.randrange(1, 2**31)
    run_id = f"{seed:x}"
    workdir = tempfile.mkdtemp(prefix="moat-chaos-")
    print(f"chaos: seed {seed} (CHAOS_SEED={seed} to replay the same choices), "
          f"{CHAOS_SECONDS:.0f} s of chaos, binary {MOAT}", flush=True)
    print(f"chaos: logs and data in {workdir}", flush=True)
    wall0 = time.monotonic()

    sink = Sink()
    threading.Thread(target=sink.serve_forever, name="sink", daemon=True).start()
    cluster = None
    failures = []
    unexpected = []
    epoch0 = time.time() - now()
    report = {"seed": seed, "chaos_seconds": CHAOS_SECONDS, "logs": workdir, "binary": MOAT,
              "t0_utc": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch0))
              + f".{int((epoch0 % 1) * 1000):03d}Z"}
    print(f"chaos: t=0 is {report['t0_utc']} (log timestamps are UTC)", flush=True)
    load = admin = monitor = chaos = None

    def on_unexpected_exit(p, pid, rc):
        ev = {"process": p.name, "pid": pid, "exit": rc, "t": round(now(), 2),
              "log_tail": p.log_tail(15)}
        unexpected.append(ev)
        TL.add("UNEXPECTED-EXIT", f"{p.name} pid {pid} exited by itself with {rc}; restarting it")
        try:
            if isinstance(p, EdgeProc):
                cluster.start_edge(p)
            else:
                p.start()
        except Exception as e:  # noqa: BLE001
            TL.add("restart-failed", f"{p.name}: {e!r}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster = Cluster(workdir, sink, seed)
        TL.add("setup", f"sink {sink.address}; control "
               + ", ".join(f"{n.id}={n.address} (status {n.status})" for n in cluster.nodes)
               + "; edges " + ", ".join(f"edge-{e.idx} mx {e.mx} status {e.status}" for e in cluster.edges))
        for n in cluster.nodes:
            n.start()
        for e in cluster.edges:
            pid, ok = cluster.start_edge(e)
            if not ok:
                raise RuntimeError(f"edge-{e.idx} did not start: {e.log_tail()}")
        lead = wait_until(lambda: cluster.leader() or None, 120, 0.5)
        if not lead:
            raise RuntimeError("no leader elected within 120 s")
        TL.add("leader", f"node {lead}")
        # The seed (the tenant) is applied by the first leader; the edges must enforce it.
        for e in cluster.edges:
            ok = wait_until(lambda: (e.readyz()[1] or {}).get("policy", {}).get("tenants") == 1, 120)
            if not ok:
                raise RuntimeError(f"edge-{e.idx} never got the seeded tenant: {e.readyz()}")
        TL.add("ready", "both edges enforce the seeded tenant")

        monitor = Monitor(cluster, on_unexpected_exit)
        monitor.thread.start()
        load = MailLoad(cluster, run_id, seed)
        load.start()
        admin = AdminWriter(cluster, seed)
        admin.thread.start()
        chaos = Chaos(cluster, seed)
        chaos_start = now()
        chaos.thread.start()
        TL.add("chaos-start", f"{N_CLIENTS} SMTP clients, 1 admin writer, chaos for {CHAOS_SECONDS:.0f}s")

        next_progress = chaos_start + 30
        while now() - chaos_start < CHAOS_SECONDS:
            time.sleep(1)
            if now() >= next_progress:
                next_progress += 30
                with load.lock:
                    o = list(load.outcomes.values())
                acc = sum(1 for r in o if r["accepted"])
                print(f"           progress: {len(o)} messages sent, {acc} accepted, "
                      f"{len(sink.counts)} delivered, {sum(1 for w in admin.writes if w['exit'] == 0)}"
                      f"/{len(admin.writes)} admin writes acknowledged", flush=True)

        # ---- stop chaos, restore everything -------------------------------------------------
        TL.add("chaos-stop", f"actions: {dict(chaos.counts)}")
        stuck = chaos.finish()
        if stuck:
            failures.append(f"chaos actions still running after 240 s: {stuck}")
        sink.full = None
        for p in cluster.procs():
            p.thaw()
        for n in cluster.nodes:
            if not n.alive():
                TL.add("restore", f"{n.name} was down; starting it")
                n.start()
        for e in cluster.edges:
            if not e.alive():
                TL.add("restore", f"{e.name} was down; starting it")
                cluster.start_edge(e)
        stuck = load.join(CLIENT_TIMEOUT + 60)
        if stuck:
            failures.append(f"SMTP clients still blocked after {CLIENT_TIMEOUT + 60:.0f} s: {stuck}")
        admin.stop.set()
        admin.thread.join(ADMIN_TIMEOUT + 30)
        TL.add("load-stopped", "clients and admin writer stopped; settling")

        # ---- settle: every node ready with one leader, edges on the control plane's version --
        recovery = {}
        settle0 = now()

        def control_settled():
            leaders, versions = set(), set()
            for n in cluster.nodes:
                code, body = n.readyz(3)
                if code != 200 or not body:
                    return None
                leaders.add(body["raft"]["leader"])
                versions.add(body.get("policy_version"))
            if len(leaders) == 1 and 0 not in leaders and len(versions) == 1:
                return leaders.pop(), versions.pop()
            return None

        settled = wait_until(control_settled, SETTLE_TIMEOUT, 0.5)
        if not settled:
            states = {n.name: n.readyz(3) for n in cluster.nodes}
            failures.append(f"control plane did not settle within {SETTLE_TIMEOUT:.0f} s: {states}")
            recovery["control"] = {"settled": False, "nodes": states}
        else:
            recovery["control"] = {"settled": True, "leader": settled[0], "policy_version": settled[1],
                                   "took_s": round(now() - settle0, 1)}
            TL.add("control-settled", f"leader {settled[0]}, policy version {settled[1]}")
            target = settled[1]

            def edges_on(version):
                for e in cluster.edges:
                    code, body = e.readyz(3)
                    if code != 200 or not body or body["policy"]["version"] < version:
                        return None
                return True

            if wait_until(lambda: edges_on(target), SETTLE_TIMEOUT, 0.5):
                recovery["edges"] = {"ready_on_version": target, "took_s": round(now() - settle0, 1)}
                TL.add("edges-settled", f"both edges ready on version >= {target}")
            else:
                states = {e.name: e.readyz(3) for e in cluster.edges}
                failures.append(f"edges not ready on policy version {target} within "
                                f"{SETTLE_TIMEOUT:.0f} s: {states}")
                recovery["edges"] = {"ready_on_version": None, "target": target, "edges": states}

        # One more admin write, applied by both edges; one message through each edge.
        code, out, err = cluster.admin(["connector", "create", "--tenant", TENANT, "chaos-final",
                                        "--type", "partner", "--sender-ip", "2001:db8:c4a1::1/128",
                                        "-o", "json"])
        recovery["final_write"] = {"exit": code}
        if code != 0:
            failures.append(f"admin write after chaos failed: exit {code}: {out}{err}")
        else:
            idx = json.loads(out)["index"]
            recovery["final_write"]["index"] = idx
            ok = wait_until(lambda: all((e.readyz()[1] or {}).get("policy", {}).get("version", 0) >= idx
                                        for e in cluster.edges), 120)
            recovery["final_write"]["edges_applied"] = bool(ok)
            if not ok:
                failures.append(f"edges did not apply the final write (index {idx}) within 120 s: "
                                f"{[e.readyz() for e in cluster.edges]}")
        probes = {}
        for e in cluster.edges:
            mid = f"<chaos-{run_id}-final-{e.idx}@chaos.test>"
            r = send_probe(e, mid)
            time.sleep(0.5)
            probes[e.name] = {"reply": r, "delivered": sink.counts.get(mid, 0)}
            if not r.startswith("250") or probes[e.name]["delivered"] != 1:
                failures.append(f"probe through {e.name}: {r}, delivered {probes[e.name]['delivered']}")
        recovery["probes"] = probes
        for p in cluster.procs():
            if not p.alive():
                failures.append(f"{p.name} is not running at the end")
        recovery["all_processes_running"] = all(p.alive() for p in cluster.procs())

        # ---- checks --------------------------------------------------------------------------
        time.sleep(2)  # sessions still open at the sink finish or time out
        monitor.stop.set()
        monitor.thread.join(10)

        with load.lock:
            outcomes = dict(load.outcomes)
            sent_digests = dict(load.digests)
        with sink.lock:
            got = Counter(sink.counts)
            got_hashes = {k: list(v) for k, v in sink.hashes.items()}
        ours = {m: c for m, c in got.items() if m in outcomes}
        accepted = [m for m, r in outcomes.items() if r["accepted"]]
        not_accepted = [m for m, r in outcomes.items() if not r["accepted"]]
        lost = [m for m in accepted if got.get(m, 0) == 0]
        dups = {m: c for m, c in ours.items() if c > 1}
        dna = [m for m in not_accepted if got.get(m, 0) > 0]
        corrupted = [m for m in ours if any(h != sent_digests[m] for h in got_hashes[m])]
        unknown = [m for m in got if m not in outcomes and "-final-" not in m]
        reasons = Counter()
        for m in not_accepted:
            reasons[re.sub(r"\[edge-\d\]", "[edge-N]", str(outcomes[m]["reply"]))[:90]] += 1

        mail = {
            "sent": len(outcomes),
            "accepted": len(accepted),
            "not_accepted": len(not_accepted),
            "delivered": len(ours),
            "delivered_total_copies": sum(ours.values()),
            "duplicated": len(dups),
            "duplicated_ids": dict(list(dups.items())[:20]),
            "lost": len(lost),
            "lost_ids": [dict(id=m, **outcomes[m]) for m in lost[:50]],
            "delivered_but_not_accepted": len(dna),
            "delivered_but_not_accepted_examples": [dict(id=m, **outcomes[m]) for m in dna[:10]],
            "corrupted": len(corrupted),
            "corrupted_ids": corrupted[:20],
            "sink_got_unknown_ids": len(unknown),
            "sink_messages_without_message_id": sink.without_id,
            "sink_sessions": sink.sessions,
            "sink_transactions_cut_inside_data": sink.aborted,
            "sink_452_replies": sink.refused_452,
            "not_accepted_by_reply": dict(reasons.most_common()),
            "sessions_refused_before_mail": dict(load.sessions_refused.most_common()),
            "per_edge": {
                f"edge-{i}": {
                    "sent": sum(1 for r in outcomes.values() if r["edge"] == i),
                    "accepted": sum(1 for r in outcomes.values() if r["edge"] == i and r["accepted"]),
                } for i in range(len(cluster.edges))
            },
        }
        if lost:
            failures.append(f"{len(lost)} accepted messages were never delivered (lost)")
        if corrupted:
            failures.append(f"{len(corrupted)} delivered messages differ from what the client sent")

        # Admin writes: every acknowledged connector must be there.
        code, out, err = cluster.admin(["connector", "list", "--tenant", TENANT, "-o", "json"])
        present = set()
        if code == 0:
            present = {c["name"] for c in json.loads(out)}
        else:
            failures.append(f"connector list failed at the end: exit {code}: {err}")
        acked = [w for w in admin.writes if w["exit"] == 0]
        missing = [w for w in acked if w["name"] not in present]
        exits = Counter(str(w["exit"]) for w in admin.writes)
        admin_rep = {
            "attempted": len(admin.writes),
            "acknowledged": len(acked),
            "present_at_end": len([w for w in admin.writes if w["name"] in present]),
            "acknowledged_missing": missing,
            "present_but_not_acknowledged": [w for w in admin.writes
                                             if w["exit"] != 0 and w["name"] in present][:20],
            "exit_codes": dict(exits),
            "not_acknowledged_examples": [w for w in admin.writes if w["exit"] != 0][:10],
            "slowest_acknowledged_s": max((w["took"] for w in acked), default=None),
            "highest_acknowledged_index": max((w.get("index") or 0 for w in acked), default=0),
        }
        if missing:
            failures.append(f"{len(missing)} acknowledged admin writes are missing: "
                            f"{[w['name'] for w in missing][:20]}")
        # Edges ended up with every connector of the control plane.
        for e in cluster.edges:
            def converged(e=e):
                body = e.readyz()[1] or {}
                return body if body.get("policy", {}).get("connectors") == len(present) else None
            body = (wait_until(converged, 30) if code == 0 else None) or e.readyz()[1] or {}
            if code == 0 and body.get("policy", {}).get("connectors") != len(present):
                failures.append(f"{e.name} enforces {body.get('policy', {}).get('connectors')} "
                                f"connectors, the control plane has {len(present)}")

        incons = monitor.snapshot_inconsistencies()
        lower = monitor.restart_lower_starts()
        policy = {
            "samples": monitor.samples,
            "per_process_version_regressions": monitor.regressions,
            "per_process_connector_regressions": monitor.content_regressions,
            "snapshot_inconsistencies": incons,
            "restarted_edge_started_lower": lower,
            "processes": sorted(monitor.gens.values(), key=lambda r: (r["edge"], r["gen"])),
            "monotonic_per_process": not monitor.regressions and not monitor.content_regressions,
            "propagation_after_ack": monitor.propagation(admin.writes),
            "edge_start_to_first_snapshot_s": [
                {"edge": r["edge"], "gen": r["gen"], "started_t": r["started_t"],
                 "seconds": round(r["first_nonzero_t"] - r["started_t"], 2)
                 if r.get("first_nonzero_t") is not None and r.get("started_t") is not None else None}
                for r in sorted(monitor.gens.values(), key=lambda r: (r["edge"], r["gen"]))],
        }
        with open(os.path.join(workdir, "admin-writes.json"), "w") as f:
            json.dump(admin.writes, f, indent=1)
        with open(os.path.join(workdir, "messages.json"), "w") as f:
            json.dump({m: dict(r, sink_copies=got.get(m, 0)) for m, r in outcomes.items()}, f)
        with open(os.path.join(workdir, "edge-versions.json"), "w") as f:
            json.dump({f"edge-{i}": tr for i, tr in monitor.transitions.items()}, f)
        if monitor.regressions:
            failures.append(f"{len(monitor.regressions)} per-process policy version regressions")
        if monitor.content_regressions:
            failures.append(f"{len(monitor.content_regressions)} per-process connector-count "
                            "regressions (an older snapshot enforced after a newer one)")
        if incons:
            failures.append(f"{len(incons)} snapshot inconsistencies across edges")
        if unexpected:
            failures.append(f"{len(unexpected)} moat processes exited by themselves: "
                            f"{[(u['process'], u['exit']) for u in unexpected]}")

        report.update({
            "wall_seconds": round(time.monotonic() - wall0, 1),
            "chaos_actions": dict(chaos.counts),
            "mail": mail,
            "admin_writes": admin_rep,
            "policy": policy,
            "recovery": recovery,
            "unexpected_exits": unexpected,
            "timeline": TL.events,
            "failures": failures,
            "result": "FAIL" if failures else "PASS",
        })
    except KeyboardInterrupt as e:
        failures.append(f"interrupted: {e}")
        report.update({"result": "INTERRUPTED", "failures": failures, "timeline": TL.events})
    except Exception as e:  # noqa: BLE001
        failures.append(f"harness error: {e!r}")
        traceback.print_exc()
        report.update({"result": "ERROR", "failures": failures, "timeline": TL.events})
    finally:
        for x in (chaos, load, admin, monitor):
            if x is not None:
                x.stop.set()
        if cluster is not None:
            cluster.kill_all()
        sink.shutdown()

    report["wall_seconds"] = round(time.monotonic() - wall0, 1)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if os.environ.get("CHAOS_REPORT"):
        with open(os.environ["CHAOS_REPORT"], "w") as f:
            f.write(text)
    with open(os.path.join(workdir, "report.json"), "w") as f:
        f.write(text)
    if failures:
        print("\nchaos: FAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        print(f"chaos: logs, data and report.json kept in {workdir}", file=sys.stderr)
        return 1
    print(f"chaos: passed (seed {seed}, {report['wall_seconds']} s)")
    if os.environ.get("CHAOS_KEEP"):
        print(f"chaos: logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
