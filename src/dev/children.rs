//! The processes `moat dev` runs beside itself: further control nodes and edges as children
//! (started, waited for, stopped with SIGTERM), the ports they bind, and their readiness.

use std::path::Path;

use anyhow::Context as _;

/// Child processes, stopped with SIGTERM (and reaped) when `moat dev` stops.
#[derive(Default)]
pub(super) struct Children(Vec<std::process::Child>);

impl Children {
    pub(super) fn spawn(
        &mut self,
        mut cmd: std::process::Command,
        log: &Path,
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a child process")?;
        let pid = child.id();
        self.0.push(child);
        Ok(pid)
    }

    /// Waits until the child `pid` answers on `status` (true) or exits (false, and it is
    /// forgotten).
    pub(super) async fn comes_up(&mut self, pid: u32, status: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(status).await.is_ok() {
                return true;
            }
            if let Some(i) = self.0.iter().position(|c| c.id() == pid) {
                if matches!(self.0[i].try_wait(), Ok(Some(_))) {
                    let _ = self.0.remove(i).wait();
                    return false;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    pub(super) fn stop(&mut self) {
        for c in &self.0 {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {}", c.id()))
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The policy version an edge enforces, from its `/readyz` (0 when it has none or is down).
pub(crate) async fn edge_version(status: &str) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(status).await else {
        return 0;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["policy"]["version"].as_u64())
        .unwrap_or(0)
}

/// A loopback port for a child process to bind a moment later. It is taken below the kernel's
/// ephemeral range: a port from `bind(0)` comes from that range, the same one outgoing
/// connections (the nodes' own raft and watch connections) take their source ports from, and
/// one of them can hold it by the time the child binds. No port is handed out twice.
pub(super) fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let base = low.saturating_sub(10_000).max(1024);
    let span = low.saturating_sub(base).max(1);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Nothing free below the range: any port the kernel gives.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
