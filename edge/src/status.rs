//! The edge's status port: `GET /healthz` (the process is alive) and `GET /readyz` (it has a
//! policy snapshot), each with a JSON body for humans.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, bounded in size and
//! time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moat_shared::PolicyHandle;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::control::LinkStatus;

/// What `/readyz` reports on.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The edge's name.
    pub node: String,
    /// The enforced policy.
    pub policy: PolicyHandle,
    /// The control-plane link, when the edge has one (none with a static seed).
    pub link: Option<Arc<LinkStatus>>,
}

impl Probe {
    /// `(ready, JSON detail)`.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let snap = self.policy.load();
        let version = snap.version();
        let mut detail = serde_json::json!({
            "node": self.node,
            "ready": version > 0,
            "policy": {
                "version": version,
                "tenants": snap.tenants().len(),
                "connectors": snap.connectors().len(),
                "onprem_enforced": snap.onprem().enforced.len(),
            },
        });
        if let Some(link) = &self.link {
            let changed = link.policy_changed_ms();
            detail["control"] = serde_json::json!({
                "connected": link.connected(),
                "seconds_since_contact": link.seconds_since_contact(),
                "policy_changed_ms": changed,
                "signal_batches_acked": link.batches_acked(),
            });
            if version > 0 && !link.connected() {
                detail["reason"] = "enforcing the last snapshot: no control node reachable".into();
            }
        }
        if version == 0 {
            detail["reason"] = "no policy snapshot yet: SMTP sessions get 421 4.3.2".into();
        }
        (version > 0, detail)
    }
}

/// Binds the status port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the status port forever.
pub async fn serve(listener: TcpListener, probe: Probe) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(tcp, &probe)).await;
        });
    }
}

async fn answer(mut tcp: TcpStream, probe: &Probe) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", serde_json::json!({"alive": true})),
        ("GET", "/readyz") => {
            let (ready, detail) = probe.readiness();
            (
                if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                detail,
            )
        }
        ("GET", _) => ("404 Not Found", serde_json::json!({"error": "not found"})),
        _ => (
            "405 Method Not Allowed",
            serde_json::json!({"error": "only GET"}),
        ),
    };
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}
