//! `moat control`: one control node as a process. [`Control::start`] binds the gRPC port (and
//! the console's), opens storage and starts the node thread; [`Control::run`] serves the four
//! gRPC services, the console and the leader's tasks (alert deliverer, ticket key rotation,
//! upgrade changes) until shutdown; [`Control::readiness`] and
//! [`Control::record_metrics`] give the status server what `/readyz` and `/metrics` need.
//!
//! What the process runs lives elsewhere: the raft node and its thread in [`crate::raft`], the
//! gRPC services in `service/`, the configuration in [`crate::config`] (re-exported here as
//! [`ControlConfig`], the path the binary uses).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moat_proto::mtls::InternalTls;
use moat_proto::v1;
use moat_shared::time::now_ms;
use tokio::sync::oneshot;

use crate::config::ControlConfig;
use crate::raft::node::{raft_logger, Core, NodeError};
use crate::raft::thread::{self, Setup};
use crate::raft::transport::MAX_MESSAGE;
use crate::raft::NodeTx;
use crate::service::admin::authz::sha256_hex;
use crate::service::alerts::deliver_alerts;
use crate::service::{Services, Shared};
use crate::storage::sled::Sled;

/// Why the node stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Could not bind the gRPC port.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Storage or raft failed at start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// sled failed at start.
    #[error("{0}")]
    Store(#[from] crate::storage::StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The internal TLS material cannot serve.
    #[error("{0}")]
    Tls(String),
}

/// A bound control node, ready to run.
pub struct Control {
    listener: tokio::net::TcpListener,
    console: Option<crate::console::TlsListener>,
    shared: Arc<Shared>,
    tls: Option<InternalTls>,
}

impl Control {
    /// Opens storage, starts the node thread and binds the gRPC port (and the console's, when
    /// configured).
    pub async fn start(cfg: ControlConfig) -> Result<Self, ControlError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ControlError::Bind(cfg.listen, e))?;
        let console = match (cfg.console_listen, &cfg.tls) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ControlError::Tls(
                    "--console-listen serves HTTPS with the node's certificate: it needs --tls-ca, --tls-cert and --tls-key".into(),
                ))
            }
            (Some(addr), Some(tls)) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ControlError::Bind(addr, e))?;
                Some(crate::console::TlsListener::new(l, tls.clone()).ok_or_else(|| {
                    ControlError::Tls("--tls-cert is not a moat-control certificate".into())
                })?)
            }
        };
        let local = listener
            .local_addr()
            .map_err(|e| ControlError::Bind(cfg.listen, e))?;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| local.to_string());
        let backend = Sled::open(&cfg.data.join("raft"))?;
        let voters: Vec<u64> = cfg.peers.keys().copied().collect();
        let id_base = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()) as u64)
            << 8;
        let core = Core::open(
            cfg.id,
            backend,
            &voters,
            &cfg.options,
            id_base,
            &raft_logger(),
        )?;

        let mut addresses = cfg.peers.clone();
        addresses.insert(cfg.id, advertise.clone());
        let started = thread::spawn(
            core,
            Setup {
                advertise,
                addresses,
                seed: cfg.seed.clone(),
                tick: cfg.tick,
                tls: cfg.tls.clone(),
            },
        )
        .map_err(|e| ControlError::Bind(cfg.listen, e))?;
        let shared = Arc::new(Shared {
            id: cfg.id,
            node: NodeTx::new(started.tx),
            policy: started.policy,
            view: started.view,
            tokens: started.tokens,
            admin_token_sha: cfg.admin_token.as_deref().map(sha256_hex),
            edges: Mutex::new(BTreeMap::new()),
            peer_log_versions: Mutex::new(BTreeMap::new()),
            dev_clock: cfg.dev_clock,
            unready_after: cfg.unready_after,
            mtls: cfg.tls.is_some(),
            ticket_rotate_every: cfg.ticket_rotate_every,
        });
        Ok(Self {
            listener,
            console,
            shared,
            tls: cfg.tls,
        })
    }

    /// The address gRPC listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The address the console listens on, when it has one.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        use axum::serve::Listener as _;
        self.console.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// `/readyz`: ready while the node knows a leader (or lost it less than `unready_after`
    /// ago, so an ordinary election does not flap readiness), with a JSON detail.
    pub fn readiness(&self) -> Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let view = shared.view.borrow().clone();
            let leaderless = shared.leaderless_for();
            let ready =
                view.status.is_some() && leaderless.is_none_or(|d| d < shared.unready_after);
            let st = view
                .status
                .unwrap_or_else(|| crate::raft::node::Status::unknown(shared.id));
            let mut detail = serde_json::json!({
                "node": shared.id,
                "ready": ready,
                "raft": {
                    "leader": st.leader,
                    "term": st.term,
                    "commit": st.commit,
                    "applied": st.applied,
                    "voters": st.voters,
                },
                "policy_version": view.policy_version,
            });
            if let Some(d) = leaderless {
                detail["reason"] = format!(
                    "no leader known for {:.1} s: this node is not part of a quorum",
                    d.as_secs_f64()
                )
                .into();
            }
            (ready, detail)
        })
    }

    /// Sets the gauges only the services know (edges watching), before `/metrics` renders.
    pub fn record_metrics(&self) -> Arc<dyn Fn() + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let now = now_ms();
            let watching = shared.edges.lock().map_or(0, |e| {
                e.values().filter(|s| now - s.last_seen_ms < 10_000).count()
            });
            metrics::gauge!("moat_control_edges_watching").set(watching as f64);
        })
    }

    /// Serves gRPC until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ControlError> {
        let svc = Services {
            shared: Arc::clone(&self.shared),
        };
        let deliveries = tokio::spawn(deliver_alerts(Arc::clone(&self.shared)));
        let (console_stop, console_stopped) = oneshot::channel::<()>();
        let console = self.console.map(|l| {
            tokio::spawn(crate::console::serve(
                l,
                Arc::clone(&self.shared),
                async move {
                    let _ = console_stopped.await;
                },
            ))
        });
        let rotations = tokio::spawn(crate::service::tickets::rotate_ticket_keys(Arc::clone(
            &self.shared,
        )));
        let upgrades = tokio::spawn(crate::service::upgrade::propose_upgrades(Arc::clone(
            &self.shared,
        )));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = async {
            let _ = stop_rx.await;
        };
        let router = tonic::transport::Server::builder()
            .add_service(
                v1::raft_server::RaftServer::new(svc.clone())
                    .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(v1::policy_server::PolicyServer::new(svc.clone()))
            .add_service(v1::signal_server::SignalServer::new(svc.clone()))
            .add_service(v1::admin_server::AdminServer::new(svc));
        // With TLS, every connection is accepted with the certificate current at that moment,
        // so a renewal needs no restart.
        let server: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = match &self.tls
        {
            Some(tls) => {
                let incoming = tls.incoming(self.listener).ok_or_else(|| {
                    ControlError::Tls("--tls-cert is not a moat-control certificate".into())
                })?;
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
            }
        };
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => r?,
            () = shutdown => {
                // Watch streams never end by themselves: give requests in flight a moment,
                // then stop.
                let _ = stop_tx.send(());
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), server).await {
                    r?;
                }
            }
        }
        deliveries.abort();
        let _ = console_stop.send(());
        if let Some(c) = console {
            c.abort();
        }
        rotations.abort();
        upgrades.abort();
        Ok(())
    }
}
