//! The Policy service: edges watch the policy snapshot. Each watch streams the current snapshot
//! and every later one; the edge's side of the stream reports the version it applied. A node
//! that has known no leader for longer than `unready_after` refuses new watches and ends open
//! ones, so edges move to a node that still follows the cluster.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use moat_proto::mtls::Role as CertRole;
use moat_proto::v1;
use moat_shared::time::now_ms;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{EdgeSeen, Services, Shared};

/// The stream of snapshots one watch receives.
type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::PolicySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl v1::policy_server::Policy for Services {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<tonic::Streaming<v1::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        self.shared
            .require(&req, &[CertRole::Edge], "the policy service")?;
        let mut inbound = req.into_inner();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            while let Ok(Some(w)) = inbound.message().await {
                if let Ok(mut edges) = shared.edges.lock() {
                    edges.insert(
                        w.edge_id,
                        EdgeSeen {
                            applied: w.applied_version,
                            last_seen_ms: now_ms(),
                        },
                    );
                }
            }
        });
        // A node cut off from the quorum serves a policy that no longer changes: it sends edges
        // elsewhere (refusing new watches, ending open ones) once it has known no leader for
        // as long as it takes to turn unready.
        let limit = self.shared.unready_after;
        let leaderless = move |shared: &Shared| shared.leaderless_for().filter(|d| *d > limit);
        let gone = |d: Duration| {
            Status::unavailable(format!(
                "this control node has known no leader for {:.0} s; watch another",
                d.as_secs_f64()
            ))
        };
        if let Some(d) = leaderless(&self.shared) {
            return Err(gone(d));
        }
        let (tx, rx) = mpsc::channel(4);
        let mut policy = self.shared.policy.clone();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let snap = Arc::clone(&policy.borrow_and_update());
                if snap.version > 0 && tx.send(Ok((*snap).clone())).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        changed = policy.changed() => match changed {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        _ = tick.tick() => {
                            if let Some(d) = leaderless(&shared) {
                                let _ = tx.send(Err(gone(d))).await;
                                return;
                            }
                            if tx.is_closed() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
