//! `moat-proto`: the generated gRPC types and service stubs of `moat.proto`, and the validated
//! conversions into `moat-shared`'s domain types.
//!
//! The generated types stop at the boundary: edges and control nodes convert them with
//! [`convert`] as soon as they arrive and never pass them around inside.
//!
//! Layout:
//! - [`v1`] (re-exported at the root): the generated messages and services; this file adds
//!   [`v1::ReadKind`]'s names and [`v1::ReadRequest::of`], so a read kind is listed once, in
//!   `moat.proto`.
//! - [`convert`]: wire types to `moat-shared` types and back, with typed errors.
//! - [`digest`]: the order-independent digest of a policy that edges and control nodes compare.
//! - [`mtls`]: internal mutual TLS: certificate roles, material checked and renewed from files.
//! - [`paging`]: the opaque page tokens of paginated admin reads.
//! - [`report`]: reports as tables of text cells, with their CSV form: [`report::table`] turns
//!   the reply of every report read into the one table the CLI and the console show.

pub mod convert;
pub mod digest;
pub mod mtls;
pub mod paging;
pub mod report;

/// Everything `moat.proto` defines (package `moat.v1`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("moat.v1");
}

pub use v1::*;

/// Shows a ticket key's name and time, never its secret (generated without `Debug`, see
/// `build.rs`), so a policy update in a log does not leak the key.
impl std::fmt::Debug for v1::TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &moat_shared::tickets::to_hex(&self.name))
            .field("secret", &"redacted")
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

impl v1::ReadKind {
    /// Every kind an admin read may ask for, in the order `moat.proto` lists them.
    pub fn all() -> impl Iterator<Item = Self> {
        (1..).map_while(|n| Self::try_from(n).ok())
    }

    /// The kind's name on the command line, in messages and in the older `kind` string field:
    /// the enum name without its prefix, lower case, words joined by dashes
    /// (`READ_KIND_TRANSPORT_CONFIG` is `transport-config`).
    pub fn name(self) -> String {
        self.as_str_name()
            .trim_start_matches("READ_KIND_")
            .to_ascii_lowercase()
            .replace('_', "-")
    }

    /// The kind called `name` (see [`Self::name`]); `None` for a name that is not a kind.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|k| k.name() == name)
    }
}

impl v1::ReadRequest {
    /// A request for every object of `kind`. It names the kind in both fields, so a node of the
    /// release before `read_kind` (which reads only the name) answers it during a rolling
    /// upgrade.
    pub fn of(kind: v1::ReadKind) -> Self {
        Self {
            kind: kind.name(),
            read_kind: kind as i32,
            ..Default::default()
        }
    }

    /// What the request asks for: `read_kind` when set, else the kind named by `kind` (as
    /// clients before `read_kind` send it); `None` when neither names a kind.
    pub fn requested_kind(&self) -> Option<v1::ReadKind> {
        match v1::ReadKind::try_from(self.read_kind) {
            Ok(v1::ReadKind::Unspecified) | Err(_) => v1::ReadKind::from_name(&self.kind),
            Ok(kind) => Some(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{ReadKind, ReadRequest};

    #[test]
    fn read_kinds_have_the_names_older_clients_send() {
        let names: Vec<String> = ReadKind::all().map(ReadKind::name).collect();
        assert_eq!(
            names,
            [
                "tenant",
                "domain",
                "connector",
                "user",
                "transport-config",
                "token",
                "audit",
                "restricted",
                "counters",
                "speed-bump",
                "tls-report",
                "alerts",
                "outbound-policy",
                "detection",
                "alert-contacts",
                "onprem-servers",
                "onprem-policy",
                "onprem-pauses",
                "clock",
                "inbound-report",
                "auth-clients-report",
                "non-accepted-domains-report",
                "ticket-keys",
            ]
        );
        for kind in ReadKind::all() {
            assert_eq!(ReadKind::from_name(&kind.name()), Some(kind));
        }
        assert_eq!(ReadKind::from_name("unspecified"), None);
        assert_eq!(ReadKind::from_name("tenants"), None);
    }

    #[test]
    fn the_enum_wins_and_the_name_is_the_fallback() {
        let old = ReadRequest {
            kind: "tls-report".into(),
            ..Default::default()
        };
        assert_eq!(old.requested_kind(), Some(ReadKind::TlsReport));
        let new = ReadRequest::of(ReadKind::Audit);
        assert_eq!(new.kind, "audit");
        assert_eq!(new.requested_kind(), Some(ReadKind::Audit));
        let both = ReadRequest {
            kind: "tenant".into(),
            read_kind: ReadKind::Clock as i32,
            ..Default::default()
        };
        assert_eq!(both.requested_kind(), Some(ReadKind::Clock));
        let unknown = ReadRequest {
            kind: "nothing".into(),
            read_kind: 999,
            ..Default::default()
        };
        assert_eq!(unknown.requested_kind(), None);
    }
}
