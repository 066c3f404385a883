//! The status port: `GET /healthz` (the process is alive), `GET /readyz` (ready for traffic,
//! with a JSON body for humans) and `GET /metrics` (Prometheus text format).
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, bounded in size and
//! time. The edge's readiness is [`Probe`]; `moat control` serves the same port with its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moat_shared::PolicyHandle;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::control::LinkStatus;

/// `(ready, JSON detail)` for `/readyz`.
pub type Readiness = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// The Prometheus text exposition for `/metrics`.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What a status port answers with.
#[derive(Clone)]
pub struct Routes {
    /// `/readyz`.
    pub readiness: Readiness,
    /// `/metrics`, when the process records metrics.
    pub metrics: Option<Metrics>,
}

/// What an edge's `/readyz` reports on.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The edge's name.
    pub node: String,
    /// The enforced policy.
    pub policy: PolicyHandle,
    /// The control-plane link, when the edge has one (none with a static seed).
    pub link: Option<Arc<LinkStatus>>,
    /// Unready once the control plane has been out of reach this long (the edge goes on
    /// enforcing its last snapshot either way); `None`: never for that reason.
    pub stale_after: Option<Duration>,
    /// Whether the inbound next hop answered its last probe.
    pub next_hop: Arc<crate::relay::Reachability>,
}

impl Probe {
    /// `(ready, JSON detail)`: ready with a snapshot, a reachable next hop and a control plane
    /// heard from within `stale_after`.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let snap = self.policy.load();
        let version = snap.version();
        let stale = match (&self.link, self.stale_after) {
            (Some(link), Some(limit)) => link
                .seconds_since_contact()
                .is_none_or(|s| s > limit.as_secs_f64()),
            _ => false,
        };
        let hop_up = self.next_hop.is_up();
        let ready = version > 0 && !stale && hop_up;
        let mut detail = serde_json::json!({
            "node": self.node,
            "ready": ready,
            "next_hop": {"reachable": hop_up, "detail": self.next_hop.detail()},
            "policy": {
                "version": version,
                "tenants": snap.tenant_count(),
                "connectors": snap.connector_count(),
                "onprem_enforced": snap.onprem().enforced.size(),
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
        if stale {
            detail["reason"] = format!(
                "no control node heard from for more than {} s (stale-after): still enforcing the last snapshot",
                self.stale_after.map_or(0, |d| d.as_secs())
            )
            .into();
        }
        if !hop_up {
            detail["reason"] = "the next hop does not answer".into();
        }
        if version == 0 {
            detail["reason"] = "no policy snapshot yet: SMTP sessions get 421 4.3.2".into();
        }
        (ready, detail)
    }

    /// Sets the gauges that describe the edge's policy and control link (called before each
    /// `/metrics` rendering).
    pub fn record(&self) {
        let snap = self.policy.load();
        metrics::gauge!("moat_edge_policy_version").set(snap.version() as f64);
        let (connected, age) = match &self.link {
            Some(link) => (
                link.connected(),
                link.seconds_since_contact().unwrap_or(f64::INFINITY),
            ),
            None => (false, 0.0),
        };
        metrics::gauge!("moat_edge_control_connected").set(f64::from(u8::from(connected)));
        metrics::gauge!("moat_edge_policy_age_seconds").set(if age.is_finite() {
            age
        } else {
            // Never heard from: as old as the process.
            self.next_hop.age_seconds()
        });
        for kind in [
            moat_shared::EntityKind::Connector,
            moat_shared::EntityKind::User,
        ] {
            metrics::gauge!("moat_edge_restricted_entities", "kind" => kind.as_str())
                .set(snap.restricted_count(kind) as f64);
        }
        metrics::gauge!("moat_edge_onprem_enforced_servers")
            .set(snap.onprem().enforced.size() as f64);
        metrics::gauge!("moat_edge_next_hop_up").set(f64::from(u8::from(self.next_hop.is_up())));
    }

    /// The routes of an edge's status port.
    pub fn routes(self, metrics: Option<Metrics>) -> Routes {
        let probe = self.clone();
        Routes {
            readiness: Arc::new(move || probe.readiness()),
            metrics: metrics.map(|render| -> Metrics {
                Arc::new(move || {
                    self.record();
                    render()
                })
            }),
        }
    }
}

/// Binds the status port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the status port forever.
pub async fn serve(listener: TcpListener, routes: Routes) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(tcp, &routes)).await;
        });
    }
}

async fn answer(mut tcp: TcpStream, routes: &Routes) -> std::io::Result<()> {
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
    let mut content_type = "application/json";
    let (status, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", serde_json::json!({"alive": true}).to_string()),
        ("GET", "/metrics") if routes.metrics.is_some() => {
            content_type = "text/plain; version=0.0.4; charset=utf-8";
            let render = routes
                .metrics
                .clone()
                .unwrap_or_else(|| Arc::new(String::new));
            ("200 OK", render())
        }
        ("GET", "/readyz") => {
            let (ready, detail) = (routes.readiness)();
            (
                if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                detail.to_string(),
            )
        }
        ("GET", _) => (
            "404 Not Found",
            serde_json::json!({"error": "not found"}).to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            serde_json::json!({"error": "only GET"}).to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}
