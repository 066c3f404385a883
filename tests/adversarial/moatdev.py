"""Shared helpers of the adversarial suites: run `moat dev`, speak SMTP over raw sockets.

Standard library only. Used by smtp_sessions.py and tls_audit.py (same directory).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("MOAT_BIN") or ROOT / "target" / "debug" / "moat")

# Generous: the machine is shared and loaded.
REPLY_TIMEOUT = 30.0
START_TIMEOUT = 180.0


class MoatDev:
    """One `moat dev` process group with its own data directory."""

    def __init__(self, name: str, config: str | None = None, extra: list[str] | None = None):
        self.name = name
        self.extra = list(extra or [])
        self.dir = Path(tempfile.mkdtemp(prefix=f"moat-adv-{name}-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "moat.log"
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.ep: dict = {}

    def start(self) -> "MoatDev":
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: build it first (cargo build)")
        args = [
            str(BINARY), "dev", "--data", str(self.data),
            "--mx-port", "0", "--submission-port", "0", "--smtps-port", "0",
            "--legacy-port", "0", "--control-port", "0", "--console-port", "0",
        ] + self.extra
        if self.config is not None:
            cfg = self.dir / "edge.toml"
            cfg.write_text(self.config)
            args += ["--config", str(cfg)]
        log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(self.dir), env=env,
        )
        log.close()
        path = self.data / "endpoints.json"
        deadline = time.monotonic() + START_TIMEOUT
        while not path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"moat dev ({self.name}) exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moat dev ({self.name}): no endpoints.json after "
                                   f"{START_TIMEOUT:.0f}s")
            time.sleep(0.2)
        self.ep = json.loads(path.read_text())
        # The edge must have its first policy snapshot before MAIL works (421 4.3.2 until then).
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            try:
                c = Client.connect(self.addr("mx"))
                try:
                    c.expect("220")
                    c.cmd("EHLO ready.test", "250")
                    r = c.cmd("MAIL FROM:<ready@client.test>")
                    last = r
                    if r.code == 250:
                        c.cmd("RSET", "250")
                        c.cmd("QUIT", "221")
                        return
                finally:
                    c.close()
            except (OSError, ProtocolError) as e:
                last = e
            time.sleep(0.5)
        raise RuntimeError(f"moat dev ({self.name}) never became ready: {last}")

    def addr(self, listener: str, edge: int = 0) -> tuple[str, int]:
        host, port = self.ep["edges"][edge]["listeners"][listener].rsplit(":", 1)
        return host, int(port)

    @property
    def pid(self) -> int:
        return int(self.ep["edges"][0]["pid"])

    @property
    def ca(self) -> str:
        return self.ep["tls"]["ca"]

    @property
    def maildir(self) -> Path:
        return Path(self.ep["maildir"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        else:
            # The process group may still hold children.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ProtocolError(Exception):
    pass


class Reply:
    def __init__(self, lines: list[str]):
        self.lines = lines
        self.code = int(lines[-1][:3]) if lines and lines[-1][:3].isdigit() else 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str:
        parts = self.lines[0][4:].split(" ", 1)
        return parts[0] if parts and parts[0].count(".") == 2 else ""

    def __repr__(self) -> str:
        return repr(self.text)


class Client:
    """A socket with an SMTP reply reader."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.error: str | None = None

    @classmethod
    def connect(cls, addr: tuple[str, int], timeout: float = REPLY_TIMEOUT) -> "Client":
        s = socket.create_connection(addr, timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s)

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        if self.eof:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self.error = f"{type(e).__name__}: {e}"
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def reply(self, timeout: float = REPLY_TIMEOUT) -> Reply | None:
        """The next complete reply, or None on timeout or EOF (partial data is kept)."""
        deadline = time.monotonic() + timeout
        pos = 0
        while True:
            nl = self.buf.find(b"\n", pos)
            if nl < 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self._fill(left):
                    return None
                continue
            line = self.buf[pos:nl]
            pos = nl + 1
            if len(line) < 4 or line[3:4] != b"-":
                raw, self.buf = self.buf[:pos], self.buf[pos:]
                lines = [l.rstrip(b"\r").decode("utf-8", "replace")
                         for l in raw.split(b"\n") if l]
                return Reply(lines)

    def expect(self, code: str, timeout: float = REPLY_TIMEOUT) -> Reply:
        r = self.reply(timeout)
        if r is None:
            raise ProtocolError(f"expected {code}, got no reply (eof={self.eof}, "
                                f"pending={self.buf[:200]!r})")
        if not r.text.startswith(code):
            raise ProtocolError(f"expected {code}, got {r.text!r}")
        return r

    def cmd(self, line: str | bytes, code: str | None = None,
            timeout: float = REPLY_TIMEOUT) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        if code is None:
            r = self.reply(timeout)
            if r is None:
                raise ProtocolError(f"no reply to {line[:80]!r} (eof={self.eof})")
            return r
        return self.expect(code, timeout)

    def replies_until_quiet(self, quiet: float = 2.0, limit: float = REPLY_TIMEOUT) -> list[Reply]:
        out = []
        end = time.monotonic() + limit
        while time.monotonic() < end:
            r = self.reply(quiet)
            if r is None:
                break
            out.append(r)
        return out

    def wait_closed(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """Reads until EOF; True if the peer closed within `timeout` (data read is kept)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._fill(left)
        return True

    def starttls(self, ca: str, server_hostname: str = "localhost",
                 max_version: ssl.TLSVersion | None = None) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        if max_version is not None:
            ctx.maximum_version = max_version
        if self.buf:
            raise ProtocolError(f"plaintext data pending before TLS: {self.buf!r}")
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        """Closes with a TCP RST (SO_LINGER 0): the client vanishes."""
        import struct
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def send_in_background(c: Client, data: bytes) -> threading.Thread:
    """Sends `data` from a thread, so that replies can be read meanwhile (no deadlock when
    both sides' buffers fill up). Errors are stored in thread.error."""
    w = c.sock.dup()
    w.settimeout(120)

    def run():
        try:
            w.sendall(data)
            t.error = None
        except OSError as e:
            t.error = f"{type(e).__name__}: {e}"
        finally:
            w.close()
    t = threading.Thread(target=run, daemon=True)
    t.error = "not finished"
    t.start()
    return t
