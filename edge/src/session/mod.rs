//! One SMTP session: the sans-IO machine ([`machine`]), its parts ([`command`], [`body`],
//! [`reply`]), the tokio driver that connects it to a socket and the next hop ([`driver`]) and
//! the metric handles a listener's sessions share ([`meters`]).

pub mod body;
pub mod command;
pub mod driver;
pub mod machine;
pub mod meters;
pub mod reply;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

pub use machine::{Action, Envelope, Prepared, Secret, Session, SessionConfig};
pub use reply::Reply;

/// What the edge knows about a session; the verdicts of later issues decide on these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    /// Session identifier, unique per edge process (used in `Received:` and logs).
    pub id: String,
    /// The client's address (from the PROXY header when the listener uses one).
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Name of the listener that accepted the session (shared by its sessions).
    pub listener: Arc<str>,
    /// TLS details once TLS is up.
    pub tls: Option<TlsFacts>,
    /// The EHLO/HELO name.
    pub helo: Option<String>,
    /// The SMTP AUTH login (lowercase), once authenticated.
    pub auth: Option<String>,
}

/// The negotiated TLS parameters of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    /// Protocol version, e.g. `TLSv1.3` (static for the versions the engines name).
    pub version: Cow<'static, str>,
    /// Cipher suite, IANA name, e.g. `TLS_AES_256_GCM_SHA384` (see `tls::iana_name`).
    pub cipher: Cow<'static, str>,
    /// The validated client certificate's DNS names (SAN dNSName entries, else the CN).
    pub client_domains: Vec<String>,
}

#[cfg(test)]
mod tests;
