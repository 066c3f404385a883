//! The Admin service (`moat admin`): who is calling, then dispatch to the writes
//! ([`write`]: each proposes one command) and the reads ([`read`]: state rendered to proto,
//! and the cluster view; [`explain`]: the policy subset `moat admin explain` evaluates).
//! Authorization is the pure [`authz`] module.

use moat_proto::mtls::caller_role;
use moat_proto::v1;
use tonic::{Request, Response, Status};

use super::Services;
use authz::{authenticate, principal_of, Caller, Credentials, Principal};

pub(crate) mod authz;
mod explain;
mod paging;
pub(crate) mod read;
pub(crate) mod write;

#[tonic::async_trait]
impl v1::admin_server::Admin for Services {
    async fn write(
        &self,
        req: Request<v1::WriteRequest>,
    ) -> Result<Response<v1::WriteReply>, Status> {
        let who = self.principal(&req, "write")?;
        write::write(&self.shared, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn read(&self, req: Request<v1::ReadRequest>) -> Result<Response<v1::ReadReply>, Status> {
        let who = self.principal(&req, "read")?;
        read::read(&self.shared, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn cluster(
        &self,
        req: Request<v1::ClusterRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        let who = self.principal(&req, "cluster")?;
        read::cluster(&self.shared, &who).map(Response::new)
    }
}

impl Services {
    /// Who is calling, or why the call is refused; either way one `moat::audit` log line
    /// (never the token itself). Changes are also kept in the replicated audit log.
    fn principal<T>(&self, req: &Request<T>, method: &str) -> Result<Principal, Status> {
        let caller = caller_role(req).map(|(_, cn)| cn).unwrap_or_default();
        let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let who = self.authenticate(req);
        match &who {
            Ok(p) => tracing::info!(
                target: "moat::audit",
                method,
                %remote,
                certificate = %caller,
                token = %p.name,
                role = p.role.as_str(),
                "admin call"
            ),
            Err(e) => tracing::warn!(
                target: "moat::audit",
                method,
                %remote,
                certificate = %caller,
                reason = e.message(),
                "admin call refused"
            ),
        }
        who
    }

    /// The caller's principal: its certificate and token checked by [`authenticate`], a token
    /// other than the bootstrap one looked up in the published token table.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let mtls = self.shared.mtls;
        let creds = Credentials {
            mtls,
            certificate: if mtls { caller_role(req) } else { None },
            authorization: req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        };
        match authenticate(&creds, self.shared.admin_token_sha.as_deref())? {
            Caller::Operator(p) => Ok(p),
            Caller::Token { sha256 } => {
                let tokens = self
                    .shared
                    .tokens
                    .read()
                    .map_err(|_| Status::internal("token table poisoned"))?;
                Ok(principal_of(tokens.get(&sha256))?)
            }
        }
    }
}
