//! How a control node is set up: [`ControlConfig`], filled by the binary from its flags and
//! configuration file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use moat_proto::mtls::InternalTls;
use moat_shared::Tenant;

use crate::raft::node::Options;

/// How a control node is set up.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Raft id, unique in the cluster, never reused.
    pub id: u64,
    /// Where gRPC listens.
    pub listen: SocketAddr,
    /// The `host:port` other nodes and tools reach this node at (defaults to `listen`).
    pub advertise: Option<String>,
    /// The founding members and their addresses (this node included); empty when joining.
    pub peers: BTreeMap<u64, String>,
    /// Data directory (sled lives in `DATA/raft`).
    pub data: PathBuf,
    /// Tenants to create once the cluster has a leader (idempotent).
    pub seed: Vec<Tenant>,
    /// The bootstrap operator token.
    pub admin_token: Option<String>,
    /// Raft tick period.
    pub tick: Duration,
    /// Raft tuning.
    pub options: Options,
    /// Accept `set-clock` (moving the cluster clock ahead, for tests and demos): only
    /// `moat dev` sets it; a production node refuses the request.
    pub dev_clock: bool,
    /// `/readyz` turns unready once the node has known no leader for this long (a node cut
    /// off from a quorum, or a cluster without one).
    pub unready_after: Duration,
    /// How often the leader rotates the TLS session ticket keys (and how long a ticket is
    /// useful): 12 hours unless configured.
    pub ticket_rotate_every: Duration,
    /// Mutual TLS on gRPC (served and toward peers). Without it the channels are plaintext
    /// and every admin call is refused.
    pub tls: Option<InternalTls>,
    /// Where the admin console (HTTPS, with the `tls` certificate) listens; `None`: no console.
    /// It needs `tls`.
    pub console_listen: Option<SocketAddr>,
}
