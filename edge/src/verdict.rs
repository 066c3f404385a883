//! Policy decisions: pure functions of a snapshot and the session's facts.
//!
//! No I/O, no clock: two edges with the same snapshot version decide alike.

use moat_shared::{PolicySnapshot, TenantId};

use crate::session::command::Address;
use crate::session::reply::{self, Reply};

/// The decision on one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accepted; for a recipient in an accepted domain, the domain's tenant.
    Accept(Option<TenantId>),
    /// Refused with this reply.
    Deny(Reply),
}

/// Decides whether `rcpt` may be received. Until the relay rules exist, only recipients in some
/// tenant's accepted domains are taken; anything else is relay and refused `550 5.7.64`.
pub fn recipient(snapshot: &PolicySnapshot, rcpt: &Address) -> RcptVerdict {
    match snapshot.tenant_for_domain(&rcpt.domain) {
        Some(t) => RcptVerdict::Accept(Some(t.id.clone())),
        None => RcptVerdict::Deny(reply::RELAY_DENIED.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_shared::Seed;

    #[test]
    fn accepted_domains_only() {
        let snap = Seed::parse(Seed::DEMO).unwrap().into_snapshot(1).unwrap();
        let to = |d: &str| Address {
            local: "a".into(),
            domain: d.into(),
        };
        assert!(matches!(
            recipient(&snap, &to("example.test")),
            RcptVerdict::Accept(_)
        ));
        assert_eq!(
            recipient(&snap, &to("elsewhere.test")),
            RcptVerdict::Deny(reply::RELAY_DENIED.into())
        );
    }
}
