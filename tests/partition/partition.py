#!/usr/bin/env python3
"""Network-partition test for Moat: 3 control nodes and 2 edges, each in its own Linux network
namespace, joined by a bridge in the root namespace; links are cut and healed while the test
(in the root namespace, with an address on the bridge) drives admin calls, SMTP and /readyz.

Run from the repository root as root (it uses the already-built binary, it never builds):

    python3 tests/partition/partition.py

Environment:
    MOAT_BIN          the moat binary (default: target/debug/moat, else target/release/moat)
    PARTITION_KEEP=1  keep the temp dir (logs, data) even when the run passes (it is always
                      kept when a check fails)

Where the machine does not allow network namespaces (not root, no `ip`, `ip netns add`,
veth or bridge refused) it prints `partition: SKIPPED: <reason>` and exits 0.

Topology (X chosen so that 10.213.X.0/24 is not in use on this machine):
    bridge moatp<pid>br, 10.213.X.254/24 (the test itself)
    namespace moatp<pid>-c1..c3: control nodes 10.213.X.1..3 (gRPC :7400, status :7401)
    namespace moatp<pid>-e1..e2: edges 10.213.X.11..12 (mx :2525, status :7401)

Cuts:
    - "cut off" = the namespace's root-side veth down: nothing reaches it, not even the test
      (its /readyz is then read from inside its namespace with `ip netns exec`);
    - "blocked" = blackhole routes inside namespaces (no iptables/nft needed): both sides for a
      clean partition between groups of processes that the test still reaches; one side only
      for the one-sided cut of scenario 5 (that node cannot send to the other; the other's
      packets still arrive but get no answer, so TCP between them stalls).

Scenarios (each asserted; timings printed):
    0. bootstrap: one leader, both edges ready and delivering;
    1. the leader cut off: a new leader within 15 s, a write through the majority, the
       isolated node's /readyz 503, a write sent only to it not acknowledged (and never
       applied); healed: it follows the new leader, has the write, everything ready;
    2. a follower cut off for 30 s while writes go on: the leader is not disturbed (also not by
       the follower's return: pre-vote), the follower has every write after the heal, and
       resumes within 10 s of the heal;
    3. an edge cut from every control node (SMTP still reachable): it serves mail from its
       snapshot, reports the link down and turns unready after ready-stale-after, misses the
       change made meanwhile (the other edge gets it), and catches up once healed;
    4. a minority {the leader, one edge} against the majority: the majority elects and
       commits; the one control node the edge reaches has no quorum and sends it away, so
       the edge reports its link down, turns unready and serves from its snapshot; healed:
       everything converges;
    5. a one-sided cut between the leader and one follower: the leader stays in its term,
       writes go on, the follower turns unready and catches up after;
    6. the control node an edge watches is partitioned from its two peers while the edges can
       still reach every control node: every edge must get a change the majority committed
       within 30 s.
Between scenarios everything is healed and the test waits until one leader is known to all,
every node has applied the commit index, every edge is ready on the current policy version
and (with `ss`) no TCP connection between control nodes is still in retransmission backoff
from the previous cut (the wait is printed when it is longer than 1 s).

Any failure exits 1 with the failing check, the relevant /readyz and log tails; the work dir
with every log is kept. Namespaces, veths, the bridge and the processes are removed in every
case (also on an exception, Ctrl-C or SIGTERM).
"""

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "moat_partition_operator_token"
SEED_TOML = '[[tenant]]\nid = "example.test"\naccepted-domains = ["example.test"]\n'
PREFIX = f"moatp{os.getpid()}"
CONTROLS = ["c1", "c2", "c3"]
EDGES = ["e1", "e2"]
HOST_OCTET = {"c1": 1, "c2": 2, "c3": 3, "e1": 11, "e2": 12, "test": 254}
GRPC_PORT = 7400
STATUS_PORT = 7401
MX_PORT = 2525
UNREADY_AFTER = 2  # control nodes' --unready-after
READY_STALE_AFTER = 3  # edges' ready-stale-after

# Generous bounds for a loaded 2-core machine.
ELECTION_BOUND = 15.0  # a new leader after the leader is cut off
UNREADY_BOUND = 15.0  # an isolated control node's /readyz turns 503
EDGE_LINK_DOWN_BOUND = 20.0  # an edge notices its control link is gone
CATCH_UP_BOUND = 30.0  # a healed node/edge catches up (eventually: correctness)
HEAL_BOUND = 10.0  # scenario 2: a follower healed after a long cut resumes within this (latency)
S2_CUT = 30.0  # scenario 2: how long the follower stays cut off
ADMIN_TIMEOUT = 90.0  # `moat admin` retries for ~15 s by itself
SMTP_TIMEOUT = 60.0

STUCK_AT_HEAL = {}
T0 = time.monotonic()
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def now():
    return time.monotonic() - T0


def log(msg):
    wall = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    print(f"[{now():7.2f}s {wall}] {msg}", flush=True)


class Skip(Exception):
    """The machine does not allow what the test needs."""


class Failed(Exception):
    """A check failed."""


# --------------------------------------------------------------------------------------------
# Small helpers


def find_ip():
    for p in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"):
        if p and os.path.exists(p) and os.access(p, os.X_OK):
            return p
    return None


def moat_bin():
    if os.environ.get("MOAT_BIN"):
        return os.environ["MOAT_BIN"]
    for p in ("target/debug/moat", "target/release/moat"):
        full = os.path.join(REPO, p)
        if os.path.exists(full):
            return full
    return None


IP = find_ip()
SS = shutil.which("ss")
MOAT = moat_bin()


def run(argv, timeout=30.0, check=True):
    """Runs a command; returns CompletedProcess (text)."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def parse_http(buf):
    head, _, body = buf.partition(b"\r\n\r\n")
    try:
        code = int(head.split()[1])
    except (IndexError, ValueError):
        return 0, None
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode("utf-8", "replace")


def http_get(addr, path, timeout=3.0):
    """(HTTP status, parsed JSON body or text); (0, error) when nothing answers."""
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
    except OSError as e:
        return 0, str(e)
    return parse_http(buf)


# The same GET (`http_get` of this file), run by a Python started inside a namespace
# (`ip netns exec NS python3 -c NS_GET DIR ADDR PATH`); prints [status, body] as JSON.
NS_GET = (
    "import json, sys; sys.dont_write_bytecode = True; sys.path.insert(0, sys.argv[1]); "
    "from partition import http_get; print(json.dumps(http_get(sys.argv[2], sys.argv[3])))"
)


def wait_for(desc, fn, timeout, interval=0.2):
    """Calls fn() until it returns (True, detail); returns (detail, seconds). Raises Failed
    with the last detail after `timeout` seconds."""
    t0 = time.monotonic()
    last = None
    while True:
        ok, last = fn()
        if ok:
            return last, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise Failed(f"{desc}: not within {timeout:.0f} s; last seen: {short(last)}")
        time.sleep(interval)


def short(v, n=900):
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[:n] + "..."


CHECKS = []


def check(cond, msg, detail=None):
    if not cond:
        raise Failed(msg + (f": {short(detail)}" if detail is not None else ""))
    CHECKS.append(msg)
    log(f"  ok: {msg}")


TIMINGS = []


def timing(label, secs):
    TIMINGS.append((label, secs))
    log(f"  timing: {label}: {secs:.2f} s")


# --------------------------------------------------------------------------------------------
# The network


class Net:
    def __init__(self):
        self.bridge = f"{PREFIX}br"
        self.namespaces = []  # created, to delete
        self.links = []  # root-side links created (the bridge, veths), to delete
        self.blackholes = set()  # (ns member, address) routes added
        self.subnet = None
        self.addr = {}  # member -> IPv4 address
        self.down = set()  # members whose root-side veth is down

    def ns(self, member):
        return f"{PREFIX}-{member}"

    def veth(self, member):
        return f"{PREFIX}{member}"

    def pick_subnet(self):
        used = run([IP, "-4", "-o", "addr", "show"]).stdout + run([IP, "-4", "route", "show", "table", "all"]).stdout
        start = 20 + os.getpid() % 200
        for i in range(230):
            x = 20 + (start - 20 + i) % 230
            if f"10.213.{x}." not in used:
                return f"10.213.{x}"
        raise Skip("no free 10.213.X.0/24 subnet")

    def setup(self, members):
        self.subnet = self.pick_subnet()
        for m in members + ["test"]:
            self.addr[m] = f"{self.subnet}.{HOST_OCTET[m]}"
        # The first namespace, bridge and veth tell whether the machine allows them.
        first = True
        for m in members:
            r = run([IP, "netns", "add", self.ns(m)], check=False)
            if r.returncode != 0:
                if first:
                    raise Skip(f"`ip netns add` failed: {r.stderr.strip()}")
                raise RuntimeError(f"ip netns add {self.ns(m)}: {r.stderr.strip()}")
            self.namespaces.append(self.ns(m))
            first = False
        r = run([IP, "link", "add", self.bridge, "type", "bridge"], check=False)
        if r.returncode != 0:
            raise Skip(f"no bridge support (`ip link add type bridge`): {r.stderr.strip()}")
        self.links.append(self.bridge)
        run([IP, "addr", "add", f"{self.addr['test']}/24", "dev", self.bridge])
        run([IP, "link", "set", self.bridge, "up"])
        for i, m in enumerate(members):
            root, inner = self.veth(m), self.veth(m) + "n"
            r = run([IP, "link", "add", root, "type", "veth", "peer", "name", inner], check=False)
            if r.returncode != 0:
                if i == 0:
                    raise Skip(f"no veth support (`ip link add type veth`): {r.stderr.strip()}")
                raise RuntimeError(f"veth {root}: {r.stderr.strip()}")
            self.links.append(root)
            r = run([IP, "link", "set", inner, "netns", self.ns(m)], check=False)
            if r.returncode != 0:
                raise Skip(f"cannot move a veth into a namespace: {r.stderr.strip()}")
            run([IP, "link", "set", root, "master", self.bridge])
            run([IP, "link", "set", root, "up"])
            run([IP, "-n", self.ns(m), "link", "set", "lo", "up"])
            run([IP, "-n", self.ns(m), "addr", "add", f"{self.addr[m]}/24", "dev", inner])
            run([IP, "-n", self.ns(m), "link", "set", inner, "up"])

    def cut(self, member):
        """Cuts a member off: its root-side veth down (nothing reaches it, it reaches nothing)."""
        run([IP, "link", "set", self.veth(member), "down"])
        self.down.add(member)

    def heal(self, member):
        run([IP, "link", "set", self.veth(member), "up"])
        self.down.discard(member)

    def block(self, member, other):
        """Inside `member`'s namespace, packets to `other` are dropped (one direction)."""
        key = (member, other)
        if key not in self.blackholes:
            run([IP, "-n", self.ns(member), "route", "add", "blackhole", f"{self.addr[other]}/32"])
            self.blackholes.add(key)

    def unblock(self, member, other):
        key = (member, other)
        if key in self.blackholes:
            run([IP, "-n", self.ns(member), "route", "del", "blackhole", f"{self.addr[other]}/32"], check=False)
            self.blackholes.discard(key)

    def partition(self, group_a, group_b):
        """No traffic between the two groups, either way; the test still reaches both."""
        for a in group_a:
            for b in group_b:
                self.block(a, b)
                self.block(b, a)

    def heal_all(self):
        for m in list(self.down):
            try:
                self.heal(m)
            except Exception as e:  # noqa: BLE001
                log(f"heal {m}: {e}")
        for member, other in list(self.blackholes):
            self.unblock(member, other)

    def cleanup(self):
        for ns in reversed(self.namespaces):
            run([IP, "netns", "del", ns], check=False)
        self.namespaces = []
        for link in reversed(self.links):
            # Deleting a namespace deletes its veths and their peers; what remains goes here.
            if run([IP, "link", "show", link], check=False).returncode == 0:
                run([IP, "link", "del", link], check=False)
        self.links = []


# --------------------------------------------------------------------------------------------
# Processes


class Proc:
    def __init__(self, env, name):
        self.env = env
        self.name = name
        self.log = os.path.join(env.dir, f"{name}.log")
        self.proc = None

    def argv(self):
        raise NotImplementedError

    def start(self):
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [IP, "netns", "exec", self.env.net.ns(self.name)] + self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=f,
                start_new_session=True,
            )

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        self.proc = None

    def tail(self, n=25):
        try:
            with open(self.log, "rb") as f:
                lines = ANSI.sub("", f.read().decode("utf-8", "replace")).splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("      " + ln for ln in lines[-n:])

    @property
    def ip(self):
        return self.env.net.addr[self.name]

    @property
    def status_addr(self):
        return f"{self.ip}:{STATUS_PORT}"

    def readyz(self, in_ns=None):
        """(code, JSON). Read from the root namespace, or from inside the process's own
        namespace when it is cut off (in_ns=None: whichever works for its current state)."""
        if in_ns is None:
            in_ns = self.name in self.env.net.down
        if not in_ns:
            return http_get(self.status_addr, "/readyz")
        try:
            r = run([IP, "netns", "exec", self.env.net.ns(self.name), sys.executable, "-c", NS_GET,
                     os.path.dirname(os.path.abspath(__file__)), self.status_addr, "/readyz"],
                    timeout=20, check=False)
        except subprocess.TimeoutExpired:
            return 0, "timed out"
        try:
            code, body = json.loads(r.stdout)
        except ValueError:
            return 0, f"ip netns exec: {r.stdout} {r.stderr}"
        return code, body


class Control(Proc):
    def __init__(self, env, name):
        super().__init__(env, name)
        self.id = int(name[1:])

    @property
    def endpoint(self):
        return f"{self.ip}:{GRPC_PORT}"

    def argv(self):
        e = self.env
        a = [MOAT, "control", "--id", str(self.id), "--listen", self.endpoint,
             "--data", os.path.join(e.dir, f"data-{self.name}")]
        for c in CONTROLS:
            a += ["--peer", f"{int(c[1:])}={e.net.addr[c]}:{GRPC_PORT}"]
        a += ["--seed", e.seed, "--admin-token-file", e.token_file,
              "--status-listen", self.status_addr, "--unready-after", str(UNREADY_AFTER)]
        a += e.pki_args("control")
        return a

    def raft(self, in_ns=None):
        """(HTTP code, leader, term, applied, detail)."""
        code, body = self.readyz(in_ns)
        if isinstance(body, dict):
            r = body.get("raft", {})
            return code, r.get("leader", 0), r.get("term", 0), r.get("applied", 0), body
        return code, 0, 0, 0, body


class Edge(Proc):
    def __init__(self, env, name):
        super().__init__(env, name)
        self.maildir = os.path.join(env.dir, f"mail-{name}")
        self.config = os.path.join(env.dir, f"{name}.toml")

    @property
    def mx(self):
        return self.ip

    def write_config(self):
        e = self.env
        os.makedirs(self.maildir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(
                f'node-id = "edge-{self.name}"\n'
                f'ready-stale-after = "{READY_STALE_AFTER}s"\n'
                "[[listener]]\n"
                'kind = "mx"\n'
                f'address = "{self.ip}:{MX_PORT}"\n'
                "[next-hop]\n"
                'kind = "maildir"\n'
                f"path = {json.dumps(self.maildir)}\n"
                "[control-tls]\n"
                f"ca = {json.dumps(e.pki('ca.pem'))}\n"
                f"cert = {json.dumps(e.pki('edge.pem'))}\n"
                f"key = {json.dumps(e.pki('edge-key.pem'))}\n"
            )

    def argv(self):
        e = self.env
        return [MOAT, "edge", "--config", self.config,
                "--control", ",".join(c.endpoint for c in e.controls.values()),
                "--status", self.status_addr]

    def version(self):
        """The policy version the edge enforces; a probe that gets no JSON answer (a loaded
        machine) is made again for up to 10 s before this says 0."""
        deadline = time.monotonic() + 10
        while True:
            code, body = self.readyz()
            if isinstance(body, dict):
                return body.get("policy", {}).get("version", 0)
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.2)

    def watching(self):
        """The control node this edge last said it watches (its last `watching policy` log
        line), or None."""
        try:
            with open(self.log, "rb") as f:
                text = ANSI.sub("", f.read().decode("utf-8", "replace"))
        except OSError:
            return None
        last = None
        for line in text.splitlines():
            m = re.search(r"watching policy.*control=([0-9.]+):", line)
            if m:
                last = m.group(1)
        for name, ip in self.env.net.addr.items():
            if ip == last:
                return name
        return None

    def delivered(self, token):
        """Whether a message with `token` is in this edge's maildir (in some `new/`)."""
        for root, _dirs, files in os.walk(self.maildir):
            if os.path.basename(root) != "new":
                continue
            for fn in files:
                try:
                    with open(os.path.join(root, fn), "rb") as f:
                        if token.encode() in f.read():
                            return os.path.join(root, fn)
                except OSError:
                    pass
        return None


def send_mail(host, rcpt, token):
    """One message over SMTP to host:2525; returns (code, text) of the refusal or of the final
    reply after DATA; (0, error) when the connection fails."""
    msg = (
        f"From: sender@client.test\r\nTo: {rcpt}\r\nSubject: partition test {token}\r\n"
        f"Message-ID: <{token}@partition.test>\r\n\r\nhello {token}\r\n"
    )
    try:
        with smtplib.SMTP(host, MX_PORT, timeout=SMTP_TIMEOUT, local_hostname="client.test") as s:
            code, text = s.ehlo()
            if code != 250:
                return code, text.decode("utf-8", "replace")
            code, text = s.mail("sender@client.test")
            if code != 250:
                return code, text.decode("utf-8", "replace")
            code, text = s.rcpt(rcpt)
            if code not in (250, 251):
                return code, text.decode("utf-8", "replace")
            code, text = s.data(msg.encode())
            return code, text.decode("utf-8", "replace")
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode("utf-8", "replace")
    except (OSError, smtplib.SMTPException) as e:
        return 0, f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------
# The environment


class Env:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
        self.net = Net()
        self.controls = {}
        self.edges = {}
        self.token_file = os.path.join(self.dir, "token")
        self.seed = os.path.join(self.dir, "seed.toml")
        self.cleaned = False
        self.seq = 0
        self.lock = threading.Lock()
        self.running = set()  # `moat admin` processes under way

    def pki(self, name):
        return os.path.join(self.dir, "pki", name)

    def pki_args(self, role):
        return ["--tls-ca", self.pki("ca.pem"), "--tls-cert", self.pki(f"{role}.pem"),
                "--tls-key", self.pki(f"{role}-key.pem")]

    def token(self, what):
        self.seq += 1
        return f"{what}-{os.getpid()}-{self.seq}"

    def setup(self):
        self.net.setup(CONTROLS + EDGES)
        log(f"network: bridge {self.net.bridge} {self.net.subnet}.0/24, namespaces "
            f"{', '.join(self.net.ns(m) for m in CONTROLS + EDGES)}; work dir {self.dir}")
        pki = os.path.join(self.dir, "pki")
        os.makedirs(pki)
        run([MOAT, "cert", "ca", "--dir", pki], timeout=60)
        for role in ("control", "edge", "admin"):
            run([MOAT, "cert", "issue", "--dir", pki, "--role", role], timeout=60)
        with open(self.token_file, "w") as f:
            f.write(TOKEN)
        with open(self.seed, "w") as f:
            f.write(SEED_TOML)
        for c in CONTROLS:
            self.controls[c] = Control(self, c)
            self.controls[c].start()
        for e in EDGES:
            self.edges[e] = Edge(self, e)
            self.edges[e].write_config()
            self.edges[e].start()
        log(f"started control nodes {CONTROLS} and edges {EDGES} "
            f"(pids {[p.proc.pid for p in self.procs()]})")

    def procs(self):
        return list(self.controls.values()) + list(self.edges.values())

    def endpoints(self, names):
        return ",".join(self.controls[n].endpoint for n in names)

    def admin(self, names, args, stale=False, in_ns=None, timeout=ADMIN_TIMEOUT):
        """`moat admin` against the control nodes `names` (from the root namespace, or from
        inside `in_ns`'s namespace); returns (exit code, stdout, stderr, seconds)."""
        argv = [MOAT, "admin", "--endpoint", self.endpoints(names), "--token", TOKEN]
        argv += self.pki_args("admin")
        if stale:
            argv.append("--stale-ok")
        argv += args
        if in_ns:
            argv = [IP, "netns", "exec", self.net.ns(in_ns)] + argv
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        with self.lock:
            self.running.add(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            return -1, "", f"timed out after {timeout} s", time.monotonic() - t0
        finally:
            with self.lock:
                self.running.discard(p)
        return p.returncode, out, err, time.monotonic() - t0

    def admin_json(self, names, args, stale=False, in_ns=None):
        code, out, err, secs = self.admin(names, args + ["-o", "json"], stale=stale, in_ns=in_ns)
        if code != 0:
            raise Failed(f"moat admin {' '.join(args)} via {names}: exit {code}: {out}{err}")
        try:
            return json.loads(out), secs
        except ValueError:
            raise Failed(f"moat admin {' '.join(args)}: not JSON: {out}") from None

    def create_tenant(self, names, tenant):
        """An acknowledged write (tenant + accepted domain); returns its raft index."""
        v, secs = self.admin_json(names, ["tenant", "create", tenant, "--domain", tenant])
        idx = v.get("index")
        check(isinstance(idx, int) and idx > 0, f"write `tenant create {tenant}` acknowledged through {names} "
              f"(index {idx}, {secs:.2f} s)", v)
        return idx

    def tenants(self, name, stale=True):
        v, _ = self.admin_json([name], ["tenant", "list"], stale=stale,
                               in_ns=name if name in self.net.down else None)
        return {t.get("id") for t in v}

    def agreed_leader(self, names):
        """(leader, term, views): the leader every node in `names` knows, when they agree
        and it is one of them, else (0, 0, views)."""
        views = {n: self.controls[n].raft() for n in names}
        leaders = {v[1] for v in views.values()}
        terms = {v[2] for v in views.values()}
        detail = {n: {"code": v[0], "leader": v[1], "term": v[2], "applied": v[3]} for n, v in views.items()}
        if len(leaders) == 1 and len(terms) == 1:
            lid = leaders.pop()
            if lid and f"c{lid}" in names and all(v[0] == 200 for v in views.values()):
                return f"c{lid}", terms.pop(), detail
        return None, 0, detail

    def wait_leader(self, names, timeout, not_=None, term_above=0):
        def probe():
            leader, term, detail = self.agreed_leader(names)
            ok = leader is not None and leader != not_ and term > term_above
            return ok, (leader, term, detail)

        (leader, term, _), secs = wait_for(f"one leader agreed by {names}", probe, timeout, interval=0.1)
        return leader, term, secs

    def wait_unready(self, name, timeout):
        c = self.controls[name]

        def probe():
            code, body = c.readyz()
            return code == 503, {"code": code, "body": body}

        return wait_for(f"{name} /readyz 503", probe, timeout, interval=0.2)

    def settle(self, timeout=60.0):
        """Waits for the whole cluster to be healthy: one leader known to all three, every
        node and edge ready, the edges on the control plane's policy version."""
        t0 = time.monotonic()
        leader, term, _ = self.wait_leader(CONTROLS, timeout)

        def applied_everywhere():
            views = {n: c.raft() for n, c in self.controls.items()}
            commit = max((v[4].get("raft", {}).get("commit", 0) for v in views.values() if isinstance(v[4], dict)),
                         default=0)
            detail = {n: {"code": v[0], "leader": v[1], "applied": v[3]} for n, v in views.items()}
            return all(v[0] == 200 and v[3] >= commit for v in views.values()), detail

        wait_for("every control node applied the commit index", applied_everywhere, timeout)
        # After a heal, a TCP connection between control nodes can stay in retransmission backoff
        # for a while (see the report of scenario 2); wait until none is, so that the next
        # scenario starts from working links. The wait is printed.
        if SS:
            _, secs = wait_for("no TCP connection between control nodes in retransmission backoff",
                               lambda: (lambda st: (not st, st))(self.stuck_links()), max(timeout, 130.0), 0.5)
            if secs > 1.0:
                log(f"  settle: waited {secs:.1f} s for TCP connections between control nodes to leave "
                    f"retransmission backoff")
        versions = {}

        def edges_ok():
            pv = {n: c.readyz()[1] for n, c in self.controls.items()}
            want = max((b.get("policy_version", 0) for b in pv.values() if isinstance(b, dict)), default=0)
            detail = {"control policy version": want}
            ok = want > 0
            for n, e in self.edges.items():
                code, body = e.readyz()
                detail[n] = {"code": code, "body": body}
                v = body.get("policy", {}).get("version", 0) if isinstance(body, dict) else 0
                versions[n] = v
                ok = ok and code == 200 and v >= want
            return ok, detail

        wait_for("every edge ready on the control plane's policy version", edges_ok, timeout)
        leader2, term2, _ = self.wait_leader(CONTROLS, timeout)
        log(f"  settled in {time.monotonic() - t0:.1f} s: leader {leader2} (term {term2}), every node and edge ready")
        return leader2, term2

    def stuck_links(self):
        """TCP connections between control nodes (seen from each control namespace) whose
        retransmission timer has backed off: [(namespace, local, peer, backoff)]."""
        ctl_ips = {self.net.addr[c] for c in CONTROLS}
        stuck = []
        for c in CONTROLS:
            if c in self.net.down:
                continue
            r = run([IP, "netns", "exec", self.net.ns(c), SS, "-tniH"], check=False, timeout=20)
            lines = r.stdout.splitlines()
            for i, line in enumerate(lines):
                f = line.split()
                if len(f) < 5 or not f[0].isupper():
                    continue
                local, peer = f[3], f[4]
                if peer.rsplit(":", 1)[0] not in ctl_ips:
                    continue
                nxt = lines[i + 1].split() if i + 1 < len(lines) else []
                info = lines[i + 1] if nxt and not nxt[0].isupper() else ""
                m = re.search(r"backoff:(\d+)", info)
                if m and int(m.group(1)) > 0:
                    stuck.append((c, local, peer, int(m.group(1))))
        return stuck

    def dump(self, names=None):
        names = names or [p.name for p in self.procs()]
        for p in self.procs():
            if p.name not in names:
                continue
            code, body = p.readyz()
            print(f"    --- {p.name} ({'alive' if p.alive() else 'EXITED'}) /readyz {code}: {short(body, 600)}")
            print(p.tail())

    def cleanup(self, keep_dir):
        if self.cleaned:
            return
        self.cleaned = True
        with self.lock:
            running = list(self.running)
        for p in running:
            try:
                p.kill()
            except OSError:
                pass
        for p in self.procs():
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001
                print(f"partition: stopping {p.name}: {e}", file=sys.stderr)
        try:
            self.net.cleanup()
        except Exception as e:  # noqa: BLE001
            print(f"partition: network clean-up: {e}", file=sys.stderr)
        if keep_dir:
            print(f"partition: logs and data kept in {self.dir}", flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Scenarios


def majority_of(leader):
    return [c for c in CONTROLS if c != leader]


def s0_bootstrap(env):
    leader, term, secs = env.wait_leader(CONTROLS, 60)
    timing("first leader elected and known to all three", secs)
    log(f"  leader {leader}, term {term}")
    _, secs = wait_for("seed tenant example.test applied",
                       lambda: (("example.test" in env.tenants(leader, stale=False)), None), 60, interval=0.5)
    env.settle(60)
    for n, e in env.edges.items():
        def ready(e=e):
            code, body = e.readyz()
            ok = (code == 200 and isinstance(body, dict) and body["policy"]["version"] > 0
                  and body["control"]["connected"] is True)
            return ok, (code, body)
        (code, body), _ = wait_for(f"edge {n} ready, connected, with a policy", ready, 30)
        check(code == 200, f"edge {n} ready, connected, policy version {body['policy']['version']}", body)
        tok = env.token(f"boot-{n}")
        r = send_mail(e.mx, "alice@example.test", tok)
        check(r[0] == 250, f"edge {n} accepts mail for alice@example.test ({r[0]})", r)
        check(e.delivered(tok) is not None, f"the message through edge {n} is in its maildir")


def s1_leader_cut(env):
    old, term0, _ = env.wait_leader(CONTROLS, 30)
    rest = majority_of(old)
    log(f"  leader {old} (term {term0}); cutting it off (veth down); majority {rest}")
    iso_tenant = f"iso-{os.getpid()}.test"
    t_cut = time.monotonic()
    env.net.cut(old)

    # A write sent only to the isolated node, from inside its namespace, started at once (the
    # node may still believe it leads for up to an election timeout).
    iso = {}

    def iso_write():
        iso["result"] = env.admin([old], ["tenant", "create", iso_tenant, "--domain", iso_tenant, "-o", "json"],
                                  in_ns=old)
        iso["done_at"] = time.monotonic() - t_cut

    th = threading.Thread(target=iso_write, daemon=True)
    th.start()

    new, term1, secs = env.wait_leader(rest, ELECTION_BOUND, not_=old, term_above=term0)
    timing("leader cut off -> new leader agreed by the majority", secs)
    check(new in rest and term1 > term0, f"majority elected {new} (term {term0} -> {term1}) "
          f"within {ELECTION_BOUND:.0f} s ({secs:.2f} s)")

    detail, _ = wait_for(f"isolated {old} /readyz 503 (read inside its namespace)",
                         lambda: (lambda r: (r[0] == 503, {"code": r[0], "body": r[1]}))(env.controls[old].readyz()),
                         UNREADY_BOUND)
    unready = time.monotonic() - t_cut
    timing("leader cut off -> isolated node /readyz 503", unready)
    check("no leader known" in str(detail["body"].get("reason", "")),
          f"isolated {old} is unready because it knows no leader", detail)

    idx = env.create_tenant(rest, f"s1-{os.getpid()}.test")
    s1_tenant = f"s1-{os.getpid()}.test"

    th.join(ADMIN_TIMEOUT + 10)
    code, out, err, secs = iso["result"]
    log(f"  write sent only to isolated {old}: exit {code} after {secs:.1f} s: {(out + err).strip()[:300]}")
    check(code != 0, f"write sent only to the isolated old leader {old} is not acknowledged (exit {code})",
          out + err)

    # Heal.
    env.net.heal(old)
    t_heal = time.monotonic()

    def rejoined():
        code, leader, term, applied, body = env.controls[old].raft()
        return (code == 200 and leader == int(new[1:]) and applied >= idx), body

    _, secs = wait_for(f"{old} follows {new} and applied index {idx}", rejoined, CATCH_UP_BOUND)
    timing("healed -> old leader follows the new leader with the write applied", secs)
    leader, term2, _ = env.wait_leader(CONTROLS, CATCH_UP_BOUND)
    check(leader == new, f"after healing {new} still leads and {old} rejoined as a follower "
          f"(term {term2})", {"leader": leader})
    have = env.tenants(old, stale=True)
    check(s1_tenant in have, f"stale read served by {old}: has {s1_tenant}", sorted(have))
    check(iso_tenant not in have, f"stale read served by {old}: the unacknowledged {iso_tenant} is not there",
          sorted(have))
    have = env.tenants(new, stale=False)
    check(iso_tenant not in have and s1_tenant in have,
          f"linearizable read: {s1_tenant} present, unacknowledged {iso_tenant} absent", sorted(have))
    for n in CONTROLS:
        code, body = env.controls[n].readyz()
        check(code == 200, f"{n} ready again", body)


def s2_follower_cut(env):
    leader, term0, _ = env.wait_leader(CONTROLS, 30)
    follower = [c for c in CONTROLS if c != leader][-1]
    live = [leader] + [c for c in CONTROLS if c not in (leader, follower)]
    log(f"  leader {leader} (term {term0}); cutting follower {follower} off for {S2_CUT:.0f} s")
    t_cut = time.monotonic()
    env.net.cut(follower)
    names = [f"s2-{os.getpid()}-{i}.test" for i in range(3)]
    last = 0
    for t in names:
        last = env.create_tenant(live, t)
    env.wait_unready(follower, UNREADY_BOUND)
    timing("follower cut off -> its /readyz 503", time.monotonic() - t_cut)
    # Writes go on during a longer cut.
    i = 0
    while time.monotonic() - t_cut < S2_CUT:
        time.sleep(min(5.0, max(0.0, S2_CUT - (time.monotonic() - t_cut))))
        if time.monotonic() - t_cut < S2_CUT - 1:
            t = f"s2-{os.getpid()}-late{i}.test"
            i += 1
            last = env.create_tenant(live, t)
            names.append(t)
    lead, term1, _ = env.wait_leader(live, 10)
    check(lead == leader and term1 == term0, f"the majority kept leader {leader} in term {term0} "
          f"throughout the {S2_CUT:.0f} s cut", {"leader": lead, "term": term1})
    if SS:
        STUCK_AT_HEAL["s2"] = [f"{ns}: {loc} -> {peer} backoff {b}" for ns, loc, peer, b in env.stuck_links()]
        log(f"  TCP connections between control nodes in retransmission backoff at the heal: "
            f"{STUCK_AT_HEAL['s2']}")
    env.net.heal(follower)
    t_heal = time.monotonic()

    def caught_up():
        code, lid, term, applied, body = env.controls[follower].raft()
        return code == 200 and lid == int(leader[1:]) and applied >= last, body

    # Measured with a long bound, so that a slow catch-up is reported with its real duration.
    _, secs = wait_for(f"{follower} caught up to index {last}", caught_up, 120.0)
    timing(f"healed after {S2_CUT:.0f} s -> follower ready and caught up", secs)
    have = env.tenants(follower, stale=True)
    check(all(t in have for t in names), f"stale read served by {follower}: all {len(names)} writes made "
          f"while it was cut off", sorted(have))
    lead, term2, _ = env.wait_leader(CONTROLS, 10)
    check(lead == leader and term2 == term0, f"the rejoining follower did not disturb the leader "
          f"({leader}, term {term0}: pre-vote)", {"leader": lead, "term": term2})
    check(secs <= HEAL_BOUND, f"the healed follower caught up within {HEAL_BOUND:.0f} s of the heal "
          f"(took {secs:.1f} s)", {"took_s": round(secs, 2), "cut_s": S2_CUT,
                                  "tcp links in retransmission backoff at the heal": STUCK_AT_HEAL.get("s2")})


def edge_state(e):
    code, body = e.readyz()
    return code, body if isinstance(body, dict) else {"raw": body}


def s3_edge_cut(env):
    e, other = env.edges["e1"], env.edges["e2"]
    v0 = e.version()
    log(f"  edge e1 on policy version {v0}; blackholing e1 <-> every control node (the test still "
        f"reaches e1)")
    t_cut = time.monotonic()
    env.net.partition(["e1"], CONTROLS)

    def link_down():
        code, b = edge_state(e)
        return b.get("control", {}).get("connected") is False, {"code": code, "body": b}

    _, _ = wait_for("e1 reports its control link down", link_down, EDGE_LINK_DOWN_BOUND)
    timing("edge cut -> /readyz control.connected false", time.monotonic() - t_cut)

    tok = env.token("s3-a")
    r = send_mail(e.mx, "alice@example.test", tok)
    check(r[0] == 250, f"cut-off edge e1 still accepts mail for alice@example.test ({r[0]} {r[1][:60]})", r)
    check(e.delivered(tok) is not None, "that message is in e1's maildir")

    def unready():
        code, b = edge_state(e)
        return code == 503, {"code": code, "body": b}

    detail, _ = wait_for("e1 /readyz 503", unready, EDGE_LINK_DOWN_BOUND + READY_STALE_AFTER)
    timing("edge cut -> /readyz 503", time.monotonic() - t_cut)
    check("stale-after" in str(detail["body"].get("reason", "")),
          "e1 is unready because no control node was heard from within ready-stale-after", detail)

    tenant = f"s3-{os.getpid()}.test"
    idx = env.create_tenant(CONTROLS, tenant)
    _, secs = wait_for(f"e2 on version >= {idx}", lambda: (other.version() >= idx, other.version()), CATCH_UP_BOUND)
    timing("admin write -> connected edge e2 applies it", secs)
    time.sleep(3)  # the cut-off edge gets as long again, and more, to show it does not get it
    v = e.version()
    check(v == v0 and v < idx, f"cut-off e1 did not get the change (still version {v0}, change at {idx})",
          edge_state(e))
    r = send_mail(e.mx, f"bob@{tenant}", env.token("s3-b"))
    check(r[0] == 550 and "5.7.64" in r[1], f"e1 enforces its old snapshot: bob@{tenant} refused ({r[0]} {r[1][:40]})", r)
    tok = env.token("s3-c")
    r = send_mail(other.mx, f"bob@{tenant}", tok)
    check(r[0] == 250 and other.delivered(tok), f"e2 has the change: bob@{tenant} accepted and delivered", r)
    tok = env.token("s3-d")
    r = send_mail(e.mx, "alice@example.test", tok)
    check(r[0] == 250 and e.delivered(tok), "unready e1 still accepts and delivers mail for example.test", r)

    env.net.heal_all()
    t_heal = time.monotonic()
    _, secs = wait_for(f"e1 on version >= {idx}", lambda: (e.version() >= idx, edge_state(e)), CATCH_UP_BOUND)
    timing("healed -> e1 applies the change made while it was cut", secs)
    detail, _ = wait_for("e1 ready and connected",
                         lambda: (lambda s: (s[0] == 200 and s[1].get("control", {}).get("connected") is True, s))(edge_state(e)),
                         CATCH_UP_BOUND)
    timing("healed -> e1 /readyz 200", time.monotonic() - t_heal)
    tok = env.token("s3-e")
    r = send_mail(e.mx, f"bob@{tenant}", tok)
    check(r[0] == 250 and e.delivered(tok), f"healed e1 accepts bob@{tenant}", r)


def s4_minority(env):
    leader, term0, _ = env.wait_leader(CONTROLS, 30)
    minority_ctl = leader  # the hardest case: the leader ends up in the minority
    majority = majority_of(minority_ctl)
    e, other = env.edges["e1"], env.edges["e2"]
    v0 = e.version()
    log(f"  partition {{{minority_ctl}, e1}} | {{{', '.join(majority)}, e2}} (the test reaches both); "
        f"e1 on version {v0}")
    t_cut = time.monotonic()
    env.net.partition([minority_ctl, "e1"], majority + ["e2"])
    new, term1, secs = env.wait_leader(majority, ELECTION_BOUND, not_=minority_ctl, term_above=term0)
    timing("minority partition -> majority leader", secs)
    env.wait_unready(minority_ctl, UNREADY_BOUND)
    timing("minority partition -> minority control node /readyz 503", time.monotonic() - t_cut)
    # The edge's stream to a majority node breaks (keepalive); the only node it can reach is the
    # minority one, which has known no leader for longer than its unready delay and refuses to
    # serve a policy that can no longer change: the edge's link is down, it turns unready
    # (ready-stale-after) and keeps enforcing its snapshot.
    wait_for(f"e1 reports its control link down and turns unready",
             lambda: (lambda st: (st[0] == 503 and st[1].get("control", {}).get("connected") is False,
                                  {"watching": e.watching(), "readyz": st}))(edge_state(e)),
             EDGE_LINK_DOWN_BOUND)
    timing("minority partition -> e1 link down and unready", time.monotonic() - t_cut)
    tenant = f"s4-{os.getpid()}.test"
    idx = env.create_tenant(majority, tenant)
    _, secs = wait_for(f"e2 on version >= {idx}", lambda: (other.version() >= idx, other.version()),
                       CATCH_UP_BOUND)
    v = other.version()
    check(v >= idx, f"majority-side edge e2 applied the change (version {v} >= {idx})")
    tok = env.token("s4-a")
    r = send_mail(e.mx, "alice@example.test", tok)
    check(r[0] == 250 and e.delivered(tok), "minority-side edge e1 accepts and delivers mail for example.test", r)
    r = send_mail(e.mx, f"bob@{tenant}", env.token("s4-b"))
    check(r[0] == 550 and "5.7.64" in r[1], f"e1 serves from its snapshot: bob@{tenant} refused ({r[0]})", r)
    r = send_mail(e.mx, "x@unknown-domain.test", env.token("s4-c"))
    check(r[0] == 550 and "5.7.64" in r[1], f"e1 still enforces: x@unknown-domain.test refused ({r[0]})", r)
    check(e.version() < idx, f"e1 did not get version {idx} from the minority", edge_state(e))
    code, b = edge_state(e)
    log(f"  observation: minority edge e1 /readyz {code}: control={b.get('control')} reason={b.get('reason')!r}"
        f" (watching {e.watching()})")
    env.net.heal_all()
    t_heal = time.monotonic()
    wait_for(f"e1 on version >= {idx}", lambda: (e.version() >= idx, edge_state(e)), CATCH_UP_BOUND)
    timing("healed -> e1 applies the majority's change", time.monotonic() - t_heal)
    lead, _, _ = env.wait_leader(CONTROLS, CATCH_UP_BOUND)
    check(lead == new, f"healed: {minority_ctl} follows {new}", {"leader": lead})

    def caught_up():
        code, lid, term, applied, body = env.controls[minority_ctl].raft()
        return code == 200 and applied >= idx, body

    wait_for(f"{minority_ctl} applied index {idx}", caught_up, CATCH_UP_BOUND)
    timing(f"healed -> {minority_ctl} applied the majority's write", time.monotonic() - t_heal)
    have = env.tenants(minority_ctl, stale=True)
    check(tenant in have, f"stale read served by {minority_ctl}: has {tenant}", sorted(have))
    tok = env.token("s4-d")
    r = send_mail(e.mx, f"bob@{tenant}", tok)
    check(r[0] == 250 and e.delivered(tok), f"healed e1 accepts bob@{tenant}", r)


def s5_one_sided(env):
    leader, term0, _ = env.wait_leader(CONTROLS, 30)
    follower, third = [c for c in CONTROLS if c != leader]
    log(f"  leader {leader} (term {term0}); one-sided cut: inside {follower}'s namespace, packets to "
        f"{leader} are dropped ({leader} -> {follower} packets still arrive); {third} untouched")
    t_cut = time.monotonic()
    env.net.block(follower, leader)
    names = [f"s5-{os.getpid()}-{i}.test" for i in range(2)]
    last = 0
    for t in names:
        last = env.create_tenant([leader, third], t)
    env.wait_unready(follower, UNREADY_BOUND)
    timing(f"one-sided cut -> {follower} /readyz 503", time.monotonic() - t_cut)
    # Give the follower several election timeouts to try to disturb the leader.
    time.sleep(4)
    lead, term1, detail = env.agreed_leader([leader, third])
    check(lead == leader and term1 == term0, f"{leader} still leads in term {term0} with {third} "
          f"({follower} cannot reach it)", detail)

    def third_has():
        code, lid, term, applied, body = env.controls[third].raft()
        return applied >= last, body

    body, _ = wait_for(f"{third} applied {last}", third_has, 10)
    check(body["raft"]["applied"] >= last, f"{third} applied the writes (index {last})", body)
    env.net.heal_all()
    t_heal = time.monotonic()

    def caught_up():
        code, lid, term, applied, body = env.controls[follower].raft()
        return code == 200 and lid == int(leader[1:]) and applied >= last, body

    wait_for(f"{follower} caught up", caught_up, CATCH_UP_BOUND)
    timing(f"healed -> {follower} follows {leader} with the writes", time.monotonic() - t_heal)
    have = env.tenants(follower, stale=True)
    check(all(t in have for t in names), f"stale read served by {follower}: has both writes", sorted(have))
    lead, term2, detail = env.wait_leader(CONTROLS, 10)
    check(lead == leader and term2 == term0, f"after healing {leader} still leads in term {term0}",
          {"leader": lead, "term": term2})


def s6_watched_node_isolated(env):
    e = env.edges["e1"]
    watched = e.watching()
    check(watched in CONTROLS, f"e1 watches control node {watched} (from its log)")
    code, b = edge_state(e)
    check(b.get("control", {}).get("connected") is True, "e1 is connected", b)
    peers = [c for c in CONTROLS if c != watched]
    leader, term0, _ = env.wait_leader(CONTROLS, 30)
    watchers = {n: x.watching() for n, x in env.edges.items()}
    log(f"  edges watch {watchers}; leader {leader}; partition {watched} | {peers} (control traffic "
        f"only: both edges still reach every control node)")
    t_cut = time.monotonic()
    env.net.partition([watched], peers)
    env.wait_leader(peers, ELECTION_BOUND)
    env.wait_unready(watched, UNREADY_BOUND)
    timing(f"{watched} partitioned from its peers -> /readyz 503", time.monotonic() - t_cut)
    tenant = f"s6-{os.getpid()}.test"
    idx = env.create_tenant(peers, tenant)
    t_write = time.monotonic()

    def all_edges():
        st = {n: edge_state(x) for n, x in env.edges.items()}
        versions = {n: (x[1].get("policy", {}).get("version", 0)) for n, x in st.items()}
        detail = {n: {"version": versions[n], "code": st[n][0], "control": st[n][1].get("control"),
                      "watching": env.edges[n].watching()} for n in st}
        return all(v >= idx for v in versions.values()), detail

    try:
        _, secs = wait_for(f"every edge (each reaches the majority {peers}) on version >= {idx}", all_edges,
                           CATCH_UP_BOUND)
        timing(f"write -> every edge applies it while {watched} is cut from its peers", secs)
    except Failed as f:
        raise Failed(f"{f}; control node {watched} (quorum-less, /readyz 503) keeps edges that watch it on "
                     f"a snapshot without the change committed {CATCH_UP_BOUND:.0f} s ago, although they "
                     f"reach {peers}") from None
    env.net.heal_all()


SCENARIOS = [
    ("0 bootstrap", s0_bootstrap),
    ("1 leader cut off", s1_leader_cut),
    ("2 follower cut off", s2_follower_cut),
    ("3 edge cut from the control plane", s3_edge_cut),
    ("4 minority {control node, edge}", s4_minority),
    ("5 one-sided cut leader/follower", s5_one_sided),
    ("6 watched node cut from its peers", s6_watched_node_isolated),
]


# --------------------------------------------------------------------------------------------


def preflight():
    if not sys.platform.startswith("linux"):
        raise Skip("not Linux")
    if os.geteuid() != 0:
        raise Skip("not root (network namespaces need CAP_NET_ADMIN)")
    if IP is None:
        raise Skip("no iproute2 `ip` command")
    r = run([IP, "netns", "list"], check=False)
    if r.returncode != 0:
        raise Skip(f"`ip netns` does not work: {r.stderr.strip()}")


def main():
    try:
        preflight()
    except Skip as s:
        print(f"partition: SKIPPED: {s}", flush=True)
        return 0
    if MOAT is None or not os.path.exists(MOAT):
        print("partition: ERROR: no moat binary (build target/debug/moat or set MOAT_BIN)", flush=True)
        return 1

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C or kill -INT
    # must still clean up.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    env = Env()
    results = []
    failed = False
    try:
        try:
            env.setup()
        except Skip as s:
            env.cleanup(keep_dir=False)
            print(f"partition: SKIPPED: {s}", flush=True)
            return 0
        for title, fn in SCENARIOS:
            log(f"=== scenario {title}")
            t0 = time.monotonic()
            try:
                fn(env)
                results.append((title, "PASS", time.monotonic() - t0, ""))
                log(f"=== scenario {title}: PASS ({time.monotonic() - t0:.1f} s)")
            except Failed as f:
                failed = True
                results.append((title, "FAIL", time.monotonic() - t0, str(f)))
                log(f"=== scenario {title}: FAIL: {f}")
                env.dump()
            except (RuntimeError, OSError, ValueError, KeyError, TypeError, AttributeError,
                    subprocess.SubprocessError) as x:
                failed = True
                traceback.print_exc()
                results.append((title, "FAIL", time.monotonic() - t0, f"test error: {x!r}"))
                env.dump()
            for p in env.procs():
                if not p.alive():
                    failed = True
                    results.append((title, "FAIL", 0.0, f"{p.name} exited by itself"))
                    log(f"{p.name} exited by itself: {p.proc.returncode if p.proc else '?'}")
                    print(p.tail(40))
            if title.startswith("0") and failed:
                break
            env.net.heal_all()
            try:
                env.settle(60)
            except Failed as f:
                failed = True
                results.append((title, "FAIL", 0.0, f"cluster did not settle after the scenario: {f}"))
                log(f"cluster did not settle: {f}")
                env.dump()
                break
    except KeyboardInterrupt as k:
        failed = True
        print(f"partition: interrupted ({k})", flush=True)
        results.append(("interrupted", "FAIL", 0.0, str(k)))
    except Exception:  # noqa: BLE001
        failed = True
        traceback.print_exc()
        results.append(("error", "FAIL", 0.0, "unexpected exception (traceback above)"))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env.cleanup(keep_dir=failed or os.environ.get("PARTITION_KEEP") == "1")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    print("\npartition: summary", flush=True)
    for title, res, secs, why in results:
        print(f"  {res}  {title:<40} {secs:6.1f} s" + (f"\n        {why}" if why else ""))
    print("  timings:")
    for label, secs in TIMINGS:
        print(f"    {secs:6.2f} s  {label}")
    print(f"  {len(CHECKS)} checks passed; wall time {now():.1f} s")
    print(f"partition: {'FAILED' if failed else 'PASSED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
