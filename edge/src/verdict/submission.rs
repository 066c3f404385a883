//! Authenticated users (SMTP AUTH listeners): at MAIL a user must still exist (`530 5.7.0`),
//! not be restricted (`550 5.1.8`) and may only send as its own or its send-as addresses
//! (`550 5.7.60`); every recipient is accepted, as relay outside the accepted domains.

use moat_shared::{EntityKind, PolicySnapshot};

use super::{Accepted, Denial};
use crate::session::command::Address;

/// MAIL from the user `login` with envelope sender `from` (`None` for `<>`).
pub fn mail(
    snapshot: &PolicySnapshot,
    login: &str,
    from: Option<&Address>,
    now_ms: i64,
) -> Result<(), Denial> {
    let Some(user) = snapshot.user(login) else {
        // Deleted since it logged in.
        return Err(Denial::UserUnknown {
            login: login.to_owned(),
        });
    };
    if snapshot
        .restriction(EntityKind::User, &user.tenant, &user.address, now_ms)
        .is_some()
    {
        return Err(Denial::UserRestricted {
            user: user.address.clone(),
        });
    }
    let from = from.map(ToString::to_string);
    if !from.as_deref().is_some_and(|f| user.may_send_as(f)) {
        return Err(Denial::SendAsDenied {
            user: user.address.clone(),
            from,
        });
    }
    Ok(())
}

/// RCPT from an authenticated user: accepted anywhere (submission is relay); the session's
/// tenant is the user's, attributed at AUTH.
pub fn recipient(snapshot: &PolicySnapshot, rcpt: &Address) -> Accepted {
    Accepted {
        relay: snapshot.tenant_for_domain(&rcpt.domain).is_none(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use moat_shared::{RestrictedEntity, SubmissionUser, TenantId};

    fn snap() -> PolicySnapshot {
        let base = snapshot();
        let user = |address: &str, send_as: &[&str]| SubmissionUser {
            tenant: TenantId::new("contoso").unwrap(),
            address: address.into(),
            password_hash: String::new(),
            send_as: send_as.iter().map(|s| s.to_string()).collect(),
        };
        let restricted = RestrictedEntity {
            tenant: TenantId::new("contoso").unwrap(),
            kind: EntityKind::User,
            name: "bad@contoso.test".into(),
            reason: "sending limits".into(),
            since_ms: 0,
            until_ms: None,
        };
        // The base's tenants only (no connectors), with users and a restriction.
        PolicySnapshot::from_change(&moat_shared::PolicyChange {
            version: 2,
            reset: true,
            tenants: base.tenants().cloned().collect(),
            users: vec![
                user("alice@contoso.test", &["sales@contoso.test"]),
                user("bad@contoso.test", &[]),
            ],
            restricted: vec![restricted],
            ..Default::default()
        })
        .unwrap()
    }

    /// One row per submission reply: (case, inputs -> denial, reply, counter).
    #[test]
    fn submission_table() {
        let snap = snap();
        let at =
            |login: &str, from: Option<&str>| mail(&snap, login, from.map(addr).as_ref(), 0).err();
        check(&[
            (
                "own address",
                at("alice@contoso.test", Some("alice@contoso.test")),
                None,
                None,
            ),
            (
                "send-as address, any case",
                at("alice@contoso.test", Some("Sales@Contoso.test")),
                None,
                None,
            ),
            (
                "someone else's address",
                at("alice@contoso.test", Some("ceo@contoso.test")),
                Some("550 5.7.60 SMTP; Client does not have permissions to send as this sender"),
                None,
            ),
            (
                "the null sender",
                at("alice@contoso.test", None),
                Some("550 5.7.60 SMTP; Client does not have permissions to send as this sender"),
                None,
            ),
            (
                "restricted user",
                at("bad@contoso.test", Some("bad@contoso.test")),
                Some("550 5.1.8 Access denied, bad outbound sender AS(42004)"),
                None,
            ),
            (
                "user deleted since it logged in",
                at("gone@contoso.test", Some("gone@contoso.test")),
                Some("530 5.7.0 Authentication required"),
                None,
            ),
        ]);
        assert_eq!(
            at("alice@contoso.test", Some("ceo@contoso.test")),
            Some(Denial::SendAsDenied {
                user: "alice@contoso.test".into(),
                from: Some("ceo@contoso.test".into()),
            })
        );
        assert_eq!(
            at("bad@contoso.test", Some("bad@contoso.test")),
            Some(Denial::UserRestricted {
                user: "bad@contoso.test".into()
            })
        );
    }

    #[test]
    fn users_relay_outside_the_accepted_domains() {
        let snap = snap();
        assert!(recipient(&snap, &addr("x@ext.test")).relay);
        assert!(!recipient(&snap, &addr("u@contoso.test")).relay);
    }
}
