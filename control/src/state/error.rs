//! Why the state machine refused a command: [`Rejection`], typed by what went wrong and about
//! what, so callers choose a status by variant ([`Rejection::code`]) instead of by the words.
//!
//! Each variant's text is the message users and tests have always read; it is only ever shown,
//! never stored in the replicated state (request ids remember an index, not an outcome).

use std::fmt;

use moat_shared::{Domain, EntityKind, TenantId};

/// What a rejection is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A tenant.
    Tenant,
    /// An accepted domain.
    Domain,
    /// An inbound connector.
    Connector,
    /// An SMTP AUTH user.
    User,
    /// An admin token.
    Token,
    /// The legacy-TLS speed bump schedule.
    SpeedBump,
    /// A tenant's sending limits.
    SendingLimits,
    /// Detection settings.
    Detection,
    /// A tenant's alert contacts.
    AlertContacts,
    /// An alert or one of its deliveries.
    Alert,
    /// A restriction of a connector or user.
    Restriction,
    /// The on-premises Exchange settings.
    Onprem,
    /// A pause of on-premises enforcement.
    Pause,
    /// An on-premises Exchange server seen in a tenant's mail.
    OnpremServer,
    /// The cluster clock.
    Clock,
    /// The TLS session ticket keys.
    TicketKeys,
    /// A raft log entry.
    Entry,
}

impl Kind {
    /// The word used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Domain => "domain",
            Self::Connector => "connector",
            Self::User => "user",
            Self::Token => "token",
            Self::SpeedBump => "speed bump",
            Self::SendingLimits => "sending limits",
            Self::Detection => "detection",
            Self::AlertContacts => "alert contacts",
            Self::Alert => "alert",
            Self::Restriction => "restriction",
            Self::Onprem => "on-premises Exchange",
            Self::TicketKeys => "ticket key",
            Self::Pause => "pause",
            Self::OnpremServer => "on-premises Exchange server",
            Self::Clock => "clock",
            Self::Entry => "entry",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of a rejection, for choosing a gRPC status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionCode {
    /// The object the command names is not there.
    NotFound,
    /// The command would create what already exists (or is already in force).
    AlreadyExists,
    /// The command is refused in the current state or as given.
    FailedPrecondition,
}

/// Why applying a command was refused; the same on every node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The named object does not exist.
    #[error("{kind} `{name}` does not exist")]
    NotFound {
        /// What kind of object.
        kind: Kind,
        /// Its name (a connector's is `tenant/name`).
        name: String,
    },
    /// An object with that name exists.
    #[error("{kind} `{name}` exists")]
    AlreadyExists {
        /// What kind of object.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// Another tenant accepts the domain.
    #[error("domain `{domain}` is already accepted by `{owner}`")]
    DomainTaken {
        /// The domain.
        domain: Domain,
        /// The tenant that accepts it.
        owner: TenantId,
    },
    /// The tenant does not accept the domain.
    #[error("domain `{domain}` is not accepted by `{tenant}`")]
    DomainNotAccepted {
        /// The domain.
        domain: Domain,
        /// The tenant.
        tenant: TenantId,
    },
    /// The tenant has no user with that address.
    #[error("user `{address}` does not exist in `{tenant}`")]
    UserNotInTenant {
        /// The address.
        address: String,
        /// The tenant.
        tenant: TenantId,
    },
    /// The address belongs to a user of another tenant.
    #[error("user `{address}` belongs to tenant `{owner}`")]
    UserOfOtherTenant {
        /// The address.
        address: String,
        /// The tenant it belongs to.
        owner: TenantId,
    },
    /// The alert has no such delivery.
    #[error("alert {alert} has no {channel} delivery to {target}")]
    NoDelivery {
        /// The alert's id.
        alert: u64,
        /// `webhook` or `email`.
        channel: String,
        /// The URL or address.
        target: String,
    },
    /// Nothing to unblock.
    #[error("{} `{name}` of `{tenant}` is not restricted", kind.as_str())]
    NotRestricted {
        /// Connector or user.
        kind: EntityKind,
        /// The connector's name or the user's address.
        name: String,
        /// The tenant.
        tenant: TenantId,
    },
    /// A pause is already in force.
    #[error("{tenant} is already paused until {until}")]
    AlreadyPaused {
        /// The tenant.
        tenant: TenantId,
        /// The day the pause ends (`YYYY-MM-DD`).
        until: String,
    },
    /// The command contradicts the state (a budget spent, time going backwards).
    #[error("{reason}")]
    Conflict {
        /// What it is about.
        subject: Kind,
        /// The full message.
        reason: String,
    },
    /// The command's values are not acceptable.
    #[error("{reason}")]
    Invalid {
        /// What it is about.
        subject: Kind,
        /// The full message.
        reason: String,
    },
    /// A committed entry does not decode as a proposal.
    #[error("entry {index} does not decode: {reason}")]
    Undecodable {
        /// The entry's index.
        index: u64,
        /// The decoder's error.
        reason: String,
    },
}

impl Rejection {
    /// A [`Rejection::NotFound`].
    pub fn not_found(kind: Kind, name: impl fmt::Display) -> Self {
        Self::NotFound {
            kind,
            name: name.to_string(),
        }
    }

    /// A [`Rejection::Invalid`].
    pub fn invalid(subject: Kind, reason: impl Into<String>) -> Self {
        Self::Invalid {
            subject,
            reason: reason.into(),
        }
    }

    /// A [`Rejection::Conflict`].
    pub fn conflict(subject: Kind, reason: impl Into<String>) -> Self {
        Self::Conflict {
            subject,
            reason: reason.into(),
        }
    }

    /// Its class: what the caller did wrong, for the status of a reply.
    pub fn code(&self) -> RejectionCode {
        match self {
            Self::NotFound { .. }
            | Self::DomainNotAccepted { .. }
            | Self::UserNotInTenant { .. } => RejectionCode::NotFound,
            Self::AlreadyExists { .. } | Self::DomainTaken { .. } | Self::AlreadyPaused { .. } => {
                RejectionCode::AlreadyExists
            }
            Self::UserOfOtherTenant { .. }
            | Self::NoDelivery { .. }
            | Self::NotRestricted { .. }
            | Self::Conflict { .. }
            | Self::Invalid { .. }
            | Self::Undecodable { .. } => RejectionCode::FailedPrecondition,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn dom(s: &str) -> Domain {
        Domain::new(s).unwrap()
    }

    /// How the admin service chose a status from a refusal's words before rejections were
    /// typed; the codes must agree with it.
    pub(crate) fn by_words(text: &str) -> RejectionCode {
        if text.contains("does not exist") || text.contains("is not accepted by") {
            RejectionCode::NotFound
        } else if text.contains("already") || text.contains("exists") {
            RejectionCode::AlreadyExists
        } else {
            RejectionCode::FailedPrecondition
        }
    }

    /// Every variant, its text, and its code; the codes are the statuses the admin service
    /// chose from the words of these texts before rejections were typed.
    #[test]
    fn each_rejection_keeps_its_text_and_maps_to_its_code() {
        use RejectionCode::*;
        // (rejection, its text, its code)
        #[rustfmt::skip]
        let table = [
            (Rejection::not_found(Kind::Tenant, "a"),
                "tenant `a` does not exist", NotFound),
            (Rejection::not_found(Kind::Connector, "a/x"),
                "connector `a/x` does not exist", NotFound),
            (Rejection::not_found(Kind::Token, "t1"),
                "token `t1` does not exist", NotFound),
            (Rejection::DomainNotAccepted { domain: dom("x.test"), tenant: tid("a") },
                "domain `x.test` is not accepted by `a`", NotFound),
            (Rejection::UserNotInTenant { address: "u@a.test".into(), tenant: tid("b") },
                "user `u@a.test` does not exist in `b`", NotFound),
            (Rejection::AlreadyExists { kind: Kind::Token, name: "t1".into() },
                "token `t1` exists", AlreadyExists),
            (Rejection::DomainTaken { domain: dom("x.test"), owner: tid("a") },
                "domain `x.test` is already accepted by `a`", AlreadyExists),
            (Rejection::AlreadyPaused { tenant: tid("a"), until: "2027-01-20".into() },
                "a is already paused until 2027-01-20", AlreadyExists),
            (Rejection::UserOfOtherTenant { address: "u@a.test".into(), owner: tid("a") },
                "user `u@a.test` belongs to tenant `a`", FailedPrecondition),
            (Rejection::NoDelivery { alert: 9, channel: "email".into(), target: "x@a.test".into() },
                "alert 9 has no email delivery to x@a.test", FailedPrecondition),
            (Rejection::NotRestricted { kind: EntityKind::User, name: "u@a.test".into(), tenant: tid("a") },
                "user `u@a.test` of `a` is not restricted", FailedPrecondition),
            (Rejection::conflict(Kind::Clock, "the cluster clock only moves forward"),
                "the cluster clock only moves forward", FailedPrecondition),
            (Rejection::invalid(Kind::Onprem, "nothing to change"),
                "nothing to change", FailedPrecondition),
            (Rejection::Undecodable { index: 7, reason: "EOF".into() },
                "entry 7 does not decode: EOF", FailedPrecondition),
        ];
        for (rejection, text, code) in table {
            assert_eq!(rejection.to_string(), text);
            assert_eq!(rejection.code(), code, "{text}");
            assert_eq!(code, by_words(text), "{text}");
        }
    }
}
