//! Starting `moat dev` and looking at what it delivered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "moat-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An internal PKI made with `moat cert`: a CA and a control, an edge and an admin
/// certificate.
pub struct Pki {
    /// Where the files are.
    pub dir: PathBuf,
}

impl Pki {
    /// Creates the CA and the three certificates in `dir`.
    pub fn new(dir: &Path) -> Self {
        let cert = |args: &[&str]| {
            let (ok, out, err) = run(moat().arg("cert").args(args).arg("--dir").arg(dir));
            assert!(ok, "moat cert {args:?}: {out}{err}");
        };
        cert(&["ca"]);
        cert(&[
            "issue",
            "--role",
            "control",
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
        ]);
        cert(&["issue", "--role", "edge"]);
        cert(&["issue", "--role", "admin"]);
        Self {
            dir: dir.to_owned(),
        }
    }

    /// A file of the PKI, as a string.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `moat control`'s TLS flags.
    pub fn control_args(&self) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.file("ca.pem"),
            "--tls-cert".into(),
            self.file("control.pem"),
            "--tls-key".into(),
            self.file("control-key.pem"),
        ]
    }

    /// An edge configuration's `[control-tls]` table.
    pub fn edge_toml(&self) -> String {
        format!(
            "[control-tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.file("ca.pem"),
            self.file("edge.pem"),
            self.file("edge-key.pem")
        )
    }

    /// Gives `moat admin` the admin certificate (through its environment variables).
    pub fn admin_env(&self, cmd: &mut Command) {
        cmd.env("MOAT_TLS_CA", self.file("ca.pem"))
            .env("MOAT_TLS_CERT", self.file("admin.pem"))
            .env("MOAT_TLS_KEY", self.file("admin-key.pem"));
    }
}

/// A running `moat dev`.
pub struct Dev {
    child: Child,
    pub data: PathBuf,
    pub endpoints: serde_json::Value,
    _dir: Option<TempDir>,
}

/// `moat dev` arguments that put every listener on a free port.
pub const ANY_PORTS: &[&str] = &[
    "--mx-port",
    "0",
    "--submission-port",
    "0",
    "--smtps-port",
    "0",
    "--legacy-port",
    "0",
    "--control-port",
    "0",
    "--console-port",
    "0",
];

/// A loopback port that is free now and lies below the kernel's ephemeral range, for a process
/// started (and maybe restarted) later. A port from `bind(0)` comes out of that range, so any
/// outgoing connection made in between may take it as its source port and the later `bind`
/// fails with "address in use". Never the same port twice in one test binary.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let base = low.saturating_sub(10_000).max(1024);
    let span = low.saturating_sub(base).max(1);
    // Spread concurrent test binaries apart by process id.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            drop(l);
            return port as u16;
        }
    }
    panic!("no free port in {base}..{low}");
}

/// A tokio runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A child process, killed (and reaped) on drop.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `moat` binary cargo built for this test, or `MOAT_BIN` when set (a private copy, when
/// several checkouts share one target directory and rebuild it under each other).
pub fn moat() -> Command {
    match std::env::var_os("MOAT_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_moat")),
    }
}

impl Dev {
    /// `moat dev` on port-0 listeners in a fresh directory, with optional edge TOML.
    pub fn start(config: Option<&str>) -> Self {
        let dir = TempDir::new("dev");
        let mut dev = Self::start_in(&dir.0, config, ANY_PORTS);
        dev._dir = Some(dir);
        dev
    }

    /// `moat dev --data DIR/data` with extra arguments; the caller owns `dir`.
    pub fn start_in(dir: &Path, config: Option<&str>, args: &[&str]) -> Self {
        let data = dir.join("data");
        let mut cmd = moat();
        cmd.arg("dev").arg("--data").arg(&data).args(args);
        if let Some(c) = config {
            let path = dir.join("edge.toml");
            std::fs::write(&path, c).expect("write config");
            cmd.arg("--config").arg(path);
        }
        Self::spawn(cmd, data)
    }

    /// Spawns a prepared command and waits for `DATA/endpoints.json`.
    pub fn spawn(mut cmd: Command, data: PathBuf) -> Self {
        let _ = std::fs::remove_file(data.join("endpoints.json"));
        // Keep each process's log beside its data directory for post-mortems.
        let log = std::fs::File::create(data.with_extension("log")).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn moat");
        let mut dev = Self {
            child,
            data: data.clone(),
            endpoints: serde_json::Value::Null,
            _dir: None,
        };
        // `moat dev` itself waits up to 90 s for its first write and 60 s for its edges on a
        // loaded machine: it reports its own failures within this.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(text) = std::fs::read_to_string(data.join("endpoints.json")) {
                if let Ok(v) = serde_json::from_str(&text) {
                    dev.endpoints = v;
                    return dev;
                }
            }
            if let Ok(Some(status)) = dev.child.try_wait() {
                let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "moat dev exited early: {status}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "moat dev did not write endpoints.json"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of listener `name` of edge number `edge` (0 is edge 1).
    pub fn edge_listener(&self, edge: usize, name: &str) -> String {
        self.endpoints["edges"][edge]["listeners"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} on edge {edge}: {}", self.endpoints))
            .to_owned()
    }

    pub fn listener(&self, kind: &str) -> String {
        self.endpoints["edges"][0]["listeners"][kind]
            .as_str()
            .unwrap_or_else(|| panic!("no {kind} listener in {}", self.endpoints))
            .to_owned()
    }

    /// `moat admin --data DIR ARGS -o json`, which must succeed; its JSON output.
    pub fn admin(&self, args: &[&str]) -> serde_json::Value {
        let (ok, out, err) = run(moat()
            .args(["admin", "--data"])
            .arg(&self.data)
            .args(args)
            .args(["-o", "json"]));
        assert!(ok, "moat admin {args:?} failed:\n{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// An admin write, then every edge enforcing it; returns how long the slowest edge took
    /// after the write was acknowledged.
    pub fn admin_applied(&self, args: &[&str]) -> Duration {
        let index = self.admin(args)["index"].as_u64().expect("index");
        let t0 = Instant::now();
        for e in self.endpoints["edges"].as_array().expect("edges") {
            crate::cluster::wait_edge_version(
                e["status"].as_str().expect("status"),
                index,
                Duration::from_secs(10),
            );
        }
        t0.elapsed()
    }

    /// The demo SMTP AUTH user `moat dev` created.
    pub fn demo_user(&self) -> String {
        self.endpoints["demo"]["user"]
            .as_str()
            .expect("demo.user")
            .to_owned()
    }

    /// The demo user's password.
    pub fn demo_password(&self) -> String {
        self.endpoints["demo"]["password"]
            .as_str()
            .expect("demo.password")
            .to_owned()
    }

    pub fn ca(&self) -> PathBuf {
        PathBuf::from(self.endpoints["tls"]["ca"].as_str().expect("tls.ca"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every delivered message file (the `new/` directories of every maildir).
    pub fn messages(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.data.join("mail");
        walk(&root, &mut out);
        out.sort();
        out
    }

    /// The delivered messages whose header section contains `needle`.
    pub fn messages_with_header(&self, needle: &str) -> Vec<Vec<u8>> {
        self.messages()
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter(|m| {
                let end = find(m, b"\r\n\r\n").unwrap_or(m.len());
                find(&m[..end], needle.as_bytes()).is_some()
            })
            .collect()
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (through the shell's builtin `kill`: no procps needed).
    pub fn sigterm(&self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", self.child.id()))
            .status();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.child.wait().expect("wait")
    }

    /// A field of /proc/PID/status, in kB.
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill();
        // Child processes of `moat dev --nodes/--edges` outlive a SIGKILLed parent.
        let own = self.child.id();
        let pids: Vec<String> = ["edges", "control"]
            .iter()
            .flat_map(|k| self.endpoints[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["pid"].as_u64())
            .filter(|&p| p != u64::from(own))
            .map(|p| p.to_string())
            .collect();
        if !pids.is_empty() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -KILL {} 2>/dev/null", pids.join(" ")))
                .status();
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.parent().and_then(|d| d.file_name()) == Some("new".as_ref()) {
            out.push(p);
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The delivered message without the `Return-Path:` line the maildir sink writes first
/// (asserted there, with an angle-bracketed path).
pub fn strip_return_path(msg: &[u8]) -> &[u8] {
    assert!(msg.starts_with(b"Return-Path: <"), "no Return-Path first");
    let end = find(msg, b"\r\n").expect("Return-Path line") + 2;
    assert!(msg[..end].ends_with(b">\r\n"), "Return-Path not closed");
    &msg[end..]
}

/// The delivered message without the `Return-Path:` line and the `Received:` header Moat
/// prepends (the first header and its folded continuation lines).
pub fn strip_received(msg: &[u8]) -> &[u8] {
    let msg = strip_return_path(msg);
    assert!(
        msg.starts_with(b"Received: from "),
        "no Received header first"
    );
    let mut i = 0;
    loop {
        i += find(&msg[i..], b"\r\n").expect("header line") + 2;
        if msg.get(i) != Some(&b'\t') {
            return &msg[i..];
        }
    }
}

/// Runs a command and returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The directory of the client scripts.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/clients")
}
