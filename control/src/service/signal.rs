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
        let urgent = b.urgent;
        let versions = (
            crate::service::admin::write::voters_apply(&self.shared, 3),
            crate::service::admin::write::voters_apply(&self.shared, 4),
        );
        let batch = carried(b, versions);
        metrics::counter!("moat_control_signal_batches_total").increment(1);
        self.shared.ask(|r| Req::Signal(batch, urgent, r)).await?;
        Ok(Response::new(v1::SignalAck { seq }))
    }
}

/// What of an edge's batch goes into the log, given whether every voter applies log version 3
/// and 4: the on-premises evidence lines only at 3, the reports' counters (scopes in
/// [`moat_shared::signal::REPORT_SCOPES`], moved out of the plain counters) and the
/// Message-ID samples only at 4. Before that they are dropped: a node of an earlier release
/// would count a report counter as a plain counter (a scope it does not know is one) and drop
/// the rest, and its state would part from the others'.
fn carried(b: v1::SignalBatch, (evidence_ok, reports_ok): (bool, bool)) -> SignalBatch {
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
    let onprem_evidence = if evidence_ok {
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
    };
    SignalBatch {
        edge: b.edge_id,
        seq: b.seq,
        counters,
        onprem_evidence,
        reports,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use moat_shared::signal;

    use super::*;

    #[test]
    fn report_data_waits_for_log_version_4_and_never_becomes_plain_counters() {
        let delta = |scope: &str, name: &str| v1::CounterDelta {
            scope: scope.into(),
            key: "a.test/onprem".into(),
            name: name.into(),
            value: 2,
        };
        let b = v1::SignalBatch {
            edge_id: "e1".into(),
            seq: 7,
            counters: vec![
                delta(signal::CONNECTOR, "messages"),
                delta(signal::INBOUND, "TLSv1.3"),
                delta(signal::NON_ACCEPTED, "elsewhere.test"),
                delta(signal::AUTH_TLS, "TLSv1.2|u@a.test"),
            ],
            message_id_samples: vec![v1::MessageIdSample {
                key: "a.test/onprem".into(),
                name: "elsewhere.test".into(),
                message_id: format!("<{}@x>\r\n", "y".repeat(300)),
            }],
            onprem_evidence: vec![v1::OnpremEvidence {
                key: "a.test/onprem".into(),
                name: "exch|15.1.2507.6".into(),
                received: "from exch".into(),
            }],
            ..Default::default()
        };
        let plain = vec![(
            signal::CONNECTOR.to_owned(),
            "a.test/onprem".to_owned(),
            "messages".to_owned(),
            2,
        )];
        // A voter of the release before 3: neither evidence nor reports.
        let old = carried(b.clone(), (false, false));
        assert_eq!(old.counters, plain);
        assert!(old.reports.is_empty() && old.samples.is_empty() && old.onprem_evidence.is_empty());
        // Every voter applies 3, not 4: evidence, no reports.
        let three = carried(b.clone(), (true, false));
        assert_eq!(three.counters, plain);
        assert!(three.reports.is_empty() && three.samples.is_empty());
        assert_eq!(three.onprem_evidence.len(), 1);
        // Every voter applies 4: the report counters apart, samples bounded.
        let four = carried(b, (true, true));
        assert_eq!(four.counters, plain);
        assert_eq!(four.reports.len(), 3);
        assert_eq!(four.samples.len(), 1);
        assert_eq!(four.samples[0].2.len(), signal::MESSAGE_ID_MAX);
        assert!(!four.samples[0].2.contains('\r'));
        assert_eq!((four.edge.as_str(), four.seq), ("e1", 7));
        // Such an entry needs version 4; one without report data does not.
        let needs =
            |b: SignalBatch| crate::state::Command::Signals { batches: vec![b] }.log_version();
        assert_eq!(needs(four), 4);
        assert_eq!(needs(three), 1);
    }
}
