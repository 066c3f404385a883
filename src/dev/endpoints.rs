//! The shape of `DIR/endpoints.json`, everything a tool or test needs to find a `moat dev`
//! cluster (documented in the README; `moat admin`, `moat bench` and the tests read it).

use std::path::PathBuf;

use serde::Serialize;

/// The shape of `DIR/endpoints.json`; documented in the README.
#[derive(Serialize)]
pub(super) struct Endpoints {
    pub(super) edges: Vec<EdgeEndpoints>,
    pub(super) control: Vec<ControlEndpoints>,
    pub(super) admin: AdminEndpoints,
    pub(super) tls: TlsEndpoints,
    pub(super) internal_tls: InternalTlsFiles,
    pub(super) console: ConsoleEndpoints,
    pub(super) maildir: Option<PathBuf>,
    pub(super) demo: Demo,
}

#[derive(Serialize)]
pub(super) struct EdgeEndpoints {
    pub(super) id: String,
    pub(super) pid: u32,
    pub(super) listeners: serde_json::Map<String, serde_json::Value>,
    pub(super) status: String,
    pub(super) metrics: Option<String>,
}

#[derive(Serialize)]
pub(super) struct ControlEndpoints {
    pub(super) id: u64,
    pub(super) pid: u32,
    pub(super) address: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub(super) status: String,
    pub(super) data: PathBuf,
    /// This node's admin console, `https://127.0.0.1:PORT`.
    pub(super) console: String,
}

#[derive(Serialize)]
pub(super) struct AdminEndpoints {
    pub(super) endpoint: String,
    pub(super) endpoints: Vec<String>,
    pub(super) token: String,
    /// The admin certificate `moat admin --data DIR` uses.
    pub(super) tls: AdminTls,
}

#[derive(Serialize)]
pub(super) struct AdminTls {
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

/// The internal PKI's CA and an edge certificate (for `moat bench signals`).
#[derive(Serialize)]
pub(super) struct InternalTlsFiles {
    pub(super) ca: PathBuf,
    pub(super) edge_cert: PathBuf,
    pub(super) edge_key: PathBuf,
}

#[derive(Serialize)]
pub(super) struct TlsEndpoints {
    pub(super) ca: PathBuf,
}

#[derive(Serialize)]
pub(super) struct Demo {
    pub(super) tenant: String,
    pub(super) user: String,
    pub(super) password: String,
}

/// Control node 1's admin console and the CA that signs its certificate.
#[derive(Serialize)]
pub(super) struct ConsoleEndpoints {
    /// `https://127.0.0.1:PORT`.
    pub(super) url: String,
    /// The internal CA (PEM) a client verifies the console's certificate with.
    pub(super) ca: PathBuf,
}
