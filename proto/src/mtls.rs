//! Mutual TLS on the internal gRPC channels: raft between control nodes, edges to the control
//! plane, and the admin tool.
//!
//! Every process holds the cluster's internal CA and a certificate of its own, issued by that
//! CA, whose subject common name says what it is:
//!
//! | CN | may call |
//! |---|---|
//! | `moat-control` | Raft (control nodes only); also the server certificate of a control node |
//! | `moat-edge` | Policy (watch snapshots) and Signal (report counters) |
//! | `moat-admin` | Admin (then the bearer token's role decides what it may do) |
//!
//! A `:NAME` suffix (`moat-admin:alice`) names the holder and keeps the role. Clients verify a
//! control node against the name [`CONTROL_SERVER_NAME`], whatever address they dial, so a
//! control certificate carries that DNS name among its subject alternative names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The DNS name every control node's certificate carries and every client verifies.
pub const CONTROL_SERVER_NAME: &str = "moat-control";

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A control node.
    Control,
    /// An SMTP edge.
    Edge,
    /// An administrator's tool.
    Admin,
}

impl Role {
    /// The common name prefix of this role.
    pub fn common_name(self) -> &'static str {
        match self {
            Self::Control => "moat-control",
            Self::Edge => "moat-edge",
            Self::Admin => "moat-admin",
        }
    }

    /// The role a common name stands for (`moat-edge` or `moat-edge:NAME`).
    pub fn from_common_name(cn: &str) -> Option<Self> {
        let prefix = cn.split_once(':').map_or(cn, |(p, _)| p);
        [Self::Control, Self::Edge, Self::Admin]
            .into_iter()
            .find(|r| r.common_name() == prefix)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.common_name())
    }
}

/// Why internal TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// A file holds no usable certificate or key.
    #[error("{0}: {1}")]
    Bad(PathBuf, String),
}

/// This process's internal TLS material: the cluster CA, its certificate and key.
#[derive(Clone)]
pub struct InternalTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    role: Role,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("InternalTls")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_owned(), e))
}

/// The common name of the first certificate in a PEM file's content.
fn pem_common_name(pem: &[u8]) -> Result<String, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    common_name(&cert).ok_or_else(|| "the certificate has no subject common name".into())
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

impl InternalTls {
    /// Loads the CA, certificate and key (PEM) and reads the role from the certificate.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        pem_common_name(&ca_pem).map_err(|e| TlsError::Bad(ca.to_owned(), e))?;
        let cn = pem_common_name(&cert_pem).map_err(|e| TlsError::Bad(cert.to_owned(), e))?;
        let role = Role::from_common_name(&cn).ok_or_else(|| {
            TlsError::Bad(
                cert.to_owned(),
                format!(
                    "common name `{cn}` is not a Moat role (moat-control, moat-edge or \
                     moat-admin, optionally followed by `:NAME`)"
                ),
            )
        })?;
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY") {
            return Err(TlsError::Bad(key.to_owned(), "no PEM private key".into()));
        }
        Ok(Self {
            ca: ca_pem,
            cert: cert_pem,
            key: key_pem,
            role,
        })
    }

    /// The role this process's certificate gives it.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A control node's server side: its certificate, and a client certificate from the CA
    /// required of every caller.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// A client side toward control nodes: verify them against the CA and
    /// [`CONTROL_SERVER_NAME`], present this process's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(CONTROL_SERVER_NAME)
    }
}

/// An endpoint for a control node's `host:port` (or URL): `https` with this TLS material,
/// plain `http` without.
pub fn endpoint(
    addr: &str,
    tls: Option<&InternalTls>,
) -> Result<Endpoint, tonic::transport::Error> {
    let host = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))?
        .connect_timeout(Duration::from_secs(2));
    match tls {
        Some(t) => endpoint.tls_config(t.client()),
        None => Ok(endpoint),
    }
}

/// The role of a request's caller from its verified client certificate, if it presented one.
/// (The TLS layer has already verified the chain against the CA.)
pub fn caller_role<T>(req: &tonic::Request<T>) -> Option<(Role, String)> {
    let certs = req.peer_certs()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let cn = common_name(&cert)?;
    Some((Role::from_common_name(&cn)?, cn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_the_common_name() {
        assert_eq!(Role::from_common_name("moat-edge"), Some(Role::Edge));
        assert_eq!(
            Role::from_common_name("moat-admin:alice"),
            Some(Role::Admin)
        );
        assert_eq!(Role::from_common_name("moat-control"), Some(Role::Control));
        assert_eq!(Role::from_common_name("moat-controller"), None);
        assert_eq!(Role::from_common_name("localhost"), None);
        assert_eq!(Role::from_common_name(""), None);
    }
}
