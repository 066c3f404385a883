//! Peer transport, sending side: one tokio task per peer takes the raft messages the node
//! thread queues for it, batches them and sends them over the Raft gRPC service, and tells the
//! node thread when a peer is unreachable or a snapshot arrived. A state-machine snapshot goes
//! on a task and a stream of its own, in [`CHUNK`]-sized pieces with no overall deadline, so
//! that a large one does not hold up the heartbeats behind it (a peer of the previous release
//! gets it in one message instead). The receiving side is the Raft service
//! (`service/raft.rs`), which hands each message to the node thread.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use moat_proto::mtls::InternalTls;
use moat_proto::v1;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::node::encode_message;
use super::Req;

/// Largest gRPC message accepted or sent (a snapshot for a peer of the previous release
/// travels in one message).
pub(crate) const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Largest state-machine snapshot accepted in chunks.
pub(crate) const MAX_SNAPSHOT: usize = 4 * 1024 * 1024 * 1024;

/// The size of one piece of a snapshot on the wire.
const CHUNK: usize = 1024 * 1024;

/// How long one piece of a snapshot may take before the transfer is given up.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

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
        let (snapshots, rest): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        for m in snapshots {
            tokio::spawn(send_snapshot(
                from,
                from_address.clone(),
                to,
                addr.clone(),
                tls.clone(),
                m,
                node.clone(),
            ));
        }
        let batch = rest;
        if batch.is_empty() {
            continue;
        }
        let req = v1::RaftBatch {
            from,
            from_address: from_address.clone(),
            messages: batch.iter().map(encode_message).collect(),
            log_version: crate::state::command::LOG_VERSION,
        };
        match client.send(req).await {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(to, error = %e, "raft peer unreachable");
                let _ = node.send(Req::Unreachable(to));
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

/// Sends one snapshot to `to` in chunks on a connection of its own, and tells the node thread
/// how it went. A peer that does not know `SendSnapshot` gets it in one `Send`.
async fn send_snapshot(
    from: u64,
    from_address: String,
    to: u64,
    addr: String,
    tls: Option<InternalTls>,
    m: Message,
    node: std_mpsc::Sender<Req>,
) {
    let (transfer, ok) = match chunked(from, &from_address, &addr, tls.as_ref(), &m).await {
        Ok(()) => ("chunked", true),
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            tracing::info!(
                to,
                "peer of the previous release: snapshot sent in one message"
            );
            (
                "whole",
                whole(from, &from_address, &addr, tls.as_ref(), &m).await,
            )
        }
        Err(e) => {
            tracing::warn!(to, error = %e, "snapshot transfer failed; raft will retry");
            ("chunked", false)
        }
    };
    metrics::counter!(
        "moat_control_raft_snapshots_sent_total",
        "transfer" => transfer,
        "result" => if ok { "ok" } else { "failed" }
    )
    .increment(1);
    if !ok {
        let _ = node.send(Req::Unreachable(to));
    }
    let _ = node.send(Req::SnapshotDone(to, ok));
}

fn snapshot_client(
    addr: &str,
    tls: Option<&InternalTls>,
) -> Result<v1::raft_client::RaftClient<tonic::transport::Channel>, tonic::Status> {
    let e = moat_proto::mtls::endpoint(addr, tls)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(
        v1::raft_client::RaftClient::new(e.connect_timeout(Duration::from_secs(1)).connect_lazy())
            .max_encoding_message_size(MAX_MESSAGE),
    )
}

async fn chunked(
    from: u64,
    from_address: &str,
    addr: &str,
    tls: Option<&InternalTls>,
    m: &Message,
) -> Result<(), tonic::Status> {
    let mut client = snapshot_client(addr, tls)?;
    let data = m.get_snapshot().get_data().to_vec();
    let mut head = m.clone();
    head.mut_snapshot().set_data(Default::default());
    let (tx, rx) = mpsc::channel::<v1::SnapshotChunk>(4);
    let total = data.len();
    let feeder = tokio::spawn(async move {
        let mut first = Some(v1::SnapshotChunk {
            from,
            from_address: String::new(),
            message: encode_message(&head),
            total: total as u64,
            data: Vec::new(),
        });
        let mut at = 0;
        loop {
            let end = (at + CHUNK).min(total);
            let mut c = first.take().unwrap_or_default();
            c.data = data[at..end].to_vec();
            // A stalled peer: give up rather than hold the snapshot for ever.
            match tokio::time::timeout(CHUNK_TIMEOUT, tx.send(c)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            at = end;
            if at >= total {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map({
        let from_address = from_address.to_owned();
        move |mut c| {
            if !c.message.is_empty() {
                c.from_address = from_address.clone();
            }
            c
        }
    });
    let sent = client.send_snapshot(stream).await;
    feeder.abort();
    sent.map(|_| ())
}

async fn whole(
    from: u64,
    from_address: &str,
    addr: &str,
    tls: Option<&InternalTls>,
    m: &Message,
) -> bool {
    let Ok(mut client) = snapshot_client(addr, tls) else {
        return false;
    };
    client
        .send(v1::RaftBatch {
            from,
            from_address: from_address.to_owned(),
            messages: vec![encode_message(m)],
            log_version: crate::state::command::LOG_VERSION,
        })
        .await
        .is_ok()
}
