//! The Signal service: edges report counter deltas in numbered batches. The batch goes to the
//! node thread (the leader commits held batches as one entry per window, or at once when the
//! edge marks it urgent); the edge gets its sequence back once the batch is committed, or an
//! error and keeps the batch for its next report. Data only a newer log version reads (the
//! on-premises evidence lines, version 3; the reports' counters and Message-ID samples,
//! version 4) is carried only once every voter applies that version.

use moat_proto::mtls::Role as CertRole;
use moat_proto::v1;
use moat_shared::time::now_ms;
use tonic::{Request, Response, Status};

use super::{EdgeSeen, Services};
use crate::raft::Req;
use crate::state::SignalBatch;

/// Most evidence lines taken from one batch (one per sighting counter; an edge sends far fewer).
const MAX_EVIDENCE: usize = 1000;

/// Most Message-ID samples taken from one batch (an edge sends at most 3 for each of 1000
/// counters).
const MAX_SAMPLES: usize = 3000;

#[tonic::async_trait]
impl v1::signal_server::Signal for Services {
    async fn report(
        &self,
        req: Request<v1::SignalBatch>,
    ) -> Result<Response<v1::SignalAck>, Status> {
        self.shared
            .require(&req, &[CertRole::Edge], "the signal service")?;
        let b = req.into_inner();
        if b.edge_id.is_empty() || b.seq == 0 {
            return Err(Status::invalid_argument(
                "a batch needs an edge id and a sequence from 1",
            ));
        }
        let seq = b.seq;
        if let Ok(mut edges) = self.shared.edges.lock() {
            let e = edges.entry(b.edge_id.clone()).or_insert(EdgeSeen {
                applied: 0,
                last_seen_ms: 0,
                digest: 0,
                agreement: super::Agreement::Unknown,
            });
            // An edge that reports digests says its version on the policy stream, with the
            // digest that goes with it; the batch's version would part them.
            if e.digest == 0 {
                e.applied = e.applied.max(b.policy_version);
            }
            e.last_seen_ms = now_ms();
        }
        // The reports' counters and samples are carried only once every voter applies log
        // version 4: a node of an earlier release would count them as plain counters (a scope
        // it does not know is one), and its state would part from the others'. Until then they
        // are dropped here, and the plain counters never hold them.
        let reports_ok = crate::service::admin::write::voters_apply(&self.shared, 4);
        let (reports, counters): (Vec<_>, Vec<_>) = b
            .counters
            .into_iter()
            .map(|c| (c.scope, c.key, c.name, c.value))
            .partition(|(scope, ..)| moat_shared::signal::REPORT_SCOPES.contains(&scope.as_str()));
        let (reports, samples) = if reports_ok {
            let samples = b
                .message_id_samples
                .into_iter()
                .take(MAX_SAMPLES)
                .map(|s| {
                    let id = moat_shared::signal::bound_message_id(&s.message_id);
                    (s.key, s.name, id)
                })
                .collect();
            (reports, samples)
        } else {
            (Vec::new(), Vec::new())
        };
        let batch = SignalBatch {
            edge: b.edge_id,
            seq,
            counters,
            reports,
            samples,
            // Carried only once every voter applies log version 3: an older replica would drop
            // it and its report would differ from the others'.
            onprem_evidence: if crate::service::admin::write::voters_apply(&self.shared, 3) {
                b.onprem_evidence
                    .into_iter()
                    .take(MAX_EVIDENCE)
                    .map(|e| {
                        (
                            e.key,
                            e.name,
                            moat_shared::exchange::bound_evidence(&e.received),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        let urgent = b.urgent;
        metrics::counter!("moat_control_signal_batches_total").increment(1);
        self.shared.ask(|r| Req::Signal(batch, urgent, r)).await?;
        Ok(Response::new(v1::SignalAck { seq }))
    }
}
