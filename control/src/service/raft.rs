//! The Raft service: the receiving side of the peer transport. Only control nodes' certificates
//! may call it; each message of a batch goes to the node thread with the sender's id and address
//! (so a peer that moved is reached at its new address).

use moat_proto::mtls::Role as CertRole;
use moat_proto::v1;
use tonic::{Request, Response, Status};

use super::Services;
use crate::raft::node::decode_message;
use crate::raft::Req;

#[tonic::async_trait]
impl v1::raft_server::Raft for Services {
    async fn send(&self, req: Request<v1::RaftBatch>) -> Result<Response<v1::RaftAck>, Status> {
        self.shared
            .require(&req, &[CertRole::Control], "the raft service")?;
        let batch = req.into_inner();
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
}
