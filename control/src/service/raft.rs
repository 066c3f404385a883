//! The Raft service: the receiving side of the peer transport. Only control nodes' certificates
//! may call it; each message of a batch goes to the node thread with the sender's id and address
//! (so a peer that moved is reached at its new address). A state-machine snapshot arrives on a
//! stream of chunks of its own and goes to the node thread once whole.

use moat_proto::mtls::Role as CertRole;
use moat_proto::v1;
use tonic::{Request, Response, Status};

use super::Services;
use crate::raft::node::decode_message;
use crate::raft::transport::MAX_SNAPSHOT;
use crate::raft::Req;

#[tonic::async_trait]
impl v1::raft_server::Raft for Services {
    async fn send(&self, req: Request<v1::RaftBatch>) -> Result<Response<v1::RaftAck>, Status> {
        self.shared
            .require(&req, &[CertRole::Control], "the raft service")?;
        let batch = req.into_inner();
        if let Ok(mut seen) = self.shared.peer_log_versions.lock() {
            seen.insert(batch.from, batch.log_version.max(1));
        }
        for b in &batch.messages {
            match decode_message(b) {
                Some(m) => self
                    .shared
                    .send(Req::Step(m, batch.from, batch.from_address.clone())),
                None => return Err(Status::invalid_argument("undecodable raft message")),
            }
        }
        Ok(Response::new(v1::RaftAck {}))
    }

    async fn send_snapshot(
        &self,
        req: Request<tonic::Streaming<v1::SnapshotChunk>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        self.shared
            .require(&req, &[CertRole::Control], "the raft service")?;
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let mut m = decode_message(&first.message)
            .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            .ok_or_else(|| Status::invalid_argument("the first chunk is not a raft snapshot"))?;
        let total = usize::try_from(first.total)
            .ok()
            .filter(|t| *t <= MAX_SNAPSHOT)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "a snapshot of {} bytes is over the {MAX_SNAPSHOT}-byte limit",
                    first.total
                ))
            })?;
        let mut data = Vec::with_capacity(total);
        data.extend_from_slice(&first.data);
        while data.len() < total {
            match chunks.message().await? {
                Some(c) if data.len() + c.data.len() <= total => data.extend_from_slice(&c.data),
                Some(_) => {
                    return Err(Status::invalid_argument(
                        "more snapshot data than announced",
                    ))
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "the snapshot stream ended after {} of {total} bytes",
                        data.len()
                    )))
                }
            }
        }
        m.mut_snapshot().set_data(data.into());
        self.shared
            .send(Req::Step(m, first.from, first.from_address));
        Ok(Response::new(v1::RaftAck {}))
    }
}
