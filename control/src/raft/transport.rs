//! Peer transport, sending side: one tokio task per peer takes the raft messages the node
//! thread queues for it, batches them and sends them over the Raft gRPC service, and tells the
//! node thread when a peer is unreachable or a snapshot arrived. The receiving side is the Raft
//! service (`service/raft.rs`), which hands each message to the node thread.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use moat_proto::mtls::InternalTls;
use moat_proto::v1;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use super::node::encode_message;
use super::Req;

/// Largest gRPC message accepted or sent (raft snapshots of a large state travel in one
/// message).
pub(crate) const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// The sending tasks toward peers, one per peer and address.
pub(crate) struct Peers {
    /// This node's raft id.
    from: u64,
    /// This node's address, sent with every batch so peers learn it.
    advertise: String,
    /// Client side of mutual TLS.
    tls: Option<InternalTls>,
    rt: tokio::runtime::Handle,
    /// Where the tasks report back.
    node: std_mpsc::Sender<Req>,
    links: HashMap<u64, (String, mpsc::Sender<Vec<Message>>)>,
}

impl Peers {
    /// No tasks yet; they start with the first message to each peer, on `rt`.
    pub(crate) fn new(
        from: u64,
        advertise: String,
        tls: Option<InternalTls>,
        rt: tokio::runtime::Handle,
        node: std_mpsc::Sender<Req>,
    ) -> Self {
        Self {
            from,
            advertise,
            tls,
            rt,
            node,
            links: HashMap::new(),
        }
    }

    /// Queues `m` for its peer at `addr`, starting a sending task when there is none for that
    /// address or the last one ended. False when the queue is full and `m` was dropped.
    pub(crate) fn send(&mut self, addr: &str, m: Message) -> bool {
        let to = m.to;
        let fresh = match self.links.get(&to) {
            Some((a, tx)) => a != addr || tx.is_closed(),
            None => true,
        };
        if fresh {
            let (tx, rx) = mpsc::channel(1024);
            self.rt.spawn(peer_task(
                self.from,
                self.advertise.clone(),
                to,
                addr.to_owned(),
                self.tls.clone(),
                rx,
                self.node.clone(),
            ));
            self.links.insert(to, (addr.to_owned(), tx));
        }
        match self.links.get(&to) {
            Some((_, tx)) => tx.try_send(vec![m]).is_ok(),
            None => true,
        }
    }
}

async fn peer_task(
    from: u64,
    from_address: String,
    to: u64,
    addr: String,
    tls: Option<InternalTls>,
    mut rx: mpsc::Receiver<Vec<Message>>,
    node: std_mpsc::Sender<Req>,
) {
    // HTTP/2 pings find a connection that died in a partition within seconds; without them a
    // healed peer waits for TCP's retransmission backoff (up to two minutes) to hear again.
    // Made again after a failure, so a reconnection presents the current (maybe renewed)
    // certificate.
    let connect = || match moat_proto::mtls::endpoint(&addr, tls.as_ref()) {
        Ok(e) => Some(
            v1::raft_client::RaftClient::new(
                e.connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(10))
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .connect_lazy(),
            )
            .max_encoding_message_size(MAX_MESSAGE),
        ),
        Err(e) => {
            tracing::warn!(to, %addr, error = %e, "bad peer address");
            None
        }
    };
    let Some(mut client) = connect() else {
        return;
    };
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let req = v1::RaftBatch {
            from,
            from_address: from_address.clone(),
            messages: batch.iter().map(encode_message).collect(),
        };
        match client.send(req).await {
            Ok(_) => {
                if snapshot {
                    let _ = node.send(Req::SnapshotDone(to, true));
                }
            }
            Err(e) => {
                tracing::debug!(to, error = %e, "raft peer unreachable");
                let _ = node.send(Req::Unreachable(to));
                if snapshot {
                    let _ = node.send(Req::SnapshotDone(to, false));
                }
                // Do not spin on a dead peer; raft will resend.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                if let Some(c) = connect() {
                    client = c;
                }
            }
        }
    }
}
