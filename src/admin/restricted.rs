//! `moat admin restricted`: connectors and users the control plane blocked, and unblocking them.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::{json, Value};

use super::render::{cell, fmt_time};
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum RestrictedCmd {
    /// List blocked connectors and users.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Lift the block on a user or connector.
    Unblock {
        /// The user's address or the connector's name.
        name: String,
        /// The tenant (default: looked up among the restricted entities).
        #[arg(long)]
        tenant: Option<String>,
        /// What is blocked.
        #[arg(long, default_value = "user", value_parser = ["user", "connector"])]
        kind: String,
        /// Why the block is lifted (kept in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

impl Ctx {
    pub(super) async fn restricted(&self, cmd: RestrictedCmd) -> Result<(), Failure> {
        match cmd {
            RestrictedCmd::List { tenant } => {
                self.list_pages(
                    ReadKind::Restricted,
                    tenant.as_deref(),
                    RESTRICTED_HEADERS,
                    |reply| {
                        let rows = reply.restricted.iter().map(restricted_row).collect();
                        let objects = reply.restricted.iter().map(restricted_json).collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            RestrictedCmd::Unblock {
                name,
                tenant,
                kind,
                reason,
            } => {
                let (tenant, name) = match tenant {
                    Some(t) => (t, name),
                    None => {
                        let reply = self.read(ReadKind::Restricted, None, None).await?;
                        find_restricted(&reply.restricted, &kind, &name)?
                    }
                };
                self.write(Op::Unblock(moat_proto::Unblock {
                    tenant,
                    kind,
                    name,
                    reason,
                }))
                .await
            }
        }
    }
}

/// The tenant and stored name of the entity `moat admin restricted unblock` names: users are
/// matched case-insensitively, connectors exactly.
pub(super) fn find_restricted(
    restricted: &[moat_proto::RestrictedEntity],
    kind: &str,
    name: &str,
) -> Result<(String, String), Failure> {
    let wanted = name.trim();
    let matches: Vec<&moat_proto::RestrictedEntity> = restricted
        .iter()
        .filter(|r| {
            r.kind == kind
                && if kind == "user" {
                    // A user's sending block, or its AUTH lockout across the cluster.
                    let name = r.name.to_lowercase();
                    let subject = moat_shared::signal::auth_lockout_subject(&name);
                    name == wanted.to_lowercase() || subject == Some(wanted.to_lowercase().as_str())
                } else {
                    r.name == wanted
                }
        })
        .collect();
    let mut tenants: Vec<&str> = matches.iter().map(|r| r.tenant.as_str()).collect();
    tenants.dedup();
    match (&matches[..], &tenants[..]) {
        ([], _) => Err(Failure::Refused(format!(
            "{kind} {wanted} is not restricted"
        ))),
        ([r], _) => Ok((r.tenant.clone(), r.name.clone())),
        // A sending block and a lockout of one user: unblocking the user lifts both.
        (_, [t]) => Ok(((*t).to_owned(), wanted.to_owned())),
        _ => {
            let tenants: Vec<&str> = matches.iter().map(|r| r.tenant.as_str()).collect();
            Err(Failure::Refused(format!(
                "{kind} {wanted} is restricted in several tenants ({}): pass --tenant",
                tenants.join(", ")
            )))
        }
    }
}

pub(super) const RESTRICTED_HEADERS: &[&str] =
    &["TENANT", "KIND", "NAME", "SINCE", "UNTIL", "REASON"];

pub(super) fn restricted_row(r: &moat_proto::RestrictedEntity) -> Vec<String> {
    let until = if r.until_ms == 0 {
        "-".to_string()
    } else {
        fmt_time(r.until_ms)
    };
    vec![
        cell(&r.tenant),
        cell(&r.kind),
        cell(&r.name),
        fmt_time(r.since_ms),
        until,
        cell(&r.reason),
    ]
}

pub(super) fn restricted_json(r: &moat_proto::RestrictedEntity) -> Value {
    let until = (r.until_ms != 0).then(|| fmt_time(r.until_ms));
    json!({
        "tenant": r.tenant,
        "kind": r.kind,
        "name": r.name,
        "reason": r.reason,
        "since-ms": r.since_ms,
        "until": until,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Resource};
    use super::*;

    #[test]
    fn restricted_entities_show_until() {
        let mut r = moat_proto::RestrictedEntity {
            tenant: "t".into(),
            kind: "user".into(),
            name: "a@t".into(),
            reason: "over the daily limit".into(),
            since_ms: 1_000,
            until_ms: 0,
        };
        assert_eq!(restricted_row(&r)[4], "-");
        assert_eq!(restricted_json(&r)["until"], Value::Null);
        r.until_ms = 86_400_000;
        assert_eq!(restricted_row(&r)[4], "1970-01-02T00:00:00Z");
        assert_eq!(restricted_json(&r)["until"], "1970-01-02T00:00:00Z");
        assert_eq!(RESTRICTED_HEADERS[4], "UNTIL");
    }

    #[test]
    fn unblock_finds_the_tenant_of_a_restricted_entity() {
        let entity = |tenant: &str, kind: &str, name: &str| moat_proto::RestrictedEntity {
            tenant: tenant.into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        };
        let list = vec![
            entity("a.test", "user", "bob@a.test"),
            entity("a.test", "connector", "Partner"),
            entity("b.test", "connector", "Partner"),
        ];
        assert_eq!(
            find_restricted(&list, "user", "Bob@A.test").unwrap(),
            ("a.test".to_string(), "bob@a.test".to_string())
        );
        // A cluster-wide AUTH lockout is found by the user's address; with a sending block
        // beside it, unblocking the user lifts both.
        let mut locked = list.clone();
        locked.push(entity("c.test", "user", "auth-lockout:eve@c.test"));
        assert_eq!(
            find_restricted(&locked, "user", "eve@c.test").unwrap(),
            ("c.test".to_string(), "auth-lockout:eve@c.test".to_string())
        );
        locked.push(entity("a.test", "user", "auth-lockout:bob@a.test"));
        assert_eq!(
            find_restricted(&locked, "user", "bob@a.test").unwrap(),
            ("a.test".to_string(), "bob@a.test".to_string())
        );
        let missing = find_restricted(&list, "user", "x@a.test").unwrap_err();
        assert_eq!(missing.exit_code(), 1);
        assert_eq!(missing.to_string(), "user x@a.test is not restricted");
        // Connector names are exact, and may be ambiguous across tenants.
        assert!(find_restricted(&list, "connector", "partner").is_err());
        let both = find_restricted(&list, "connector", "Partner").unwrap_err();
        assert!(both.to_string().contains("pass --tenant"), "{both}");
        assert!(find_restricted(&list, "connector", "bob@a.test").is_err());
    }

    #[test]
    fn restricted_commands_parse() {
        assert!(parse(&["restricted", "list", "--tenant", "t"]).is_ok());
        let a = parse(&["restricted", "unblock", "a@t", "--reason", "reset password"]).unwrap();
        match a.command {
            Resource::Restricted(RestrictedCmd::Unblock {
                name,
                tenant,
                kind,
                reason,
            }) => {
                assert_eq!(name, "a@t");
                assert_eq!(tenant, None);
                assert_eq!(kind, "user");
                assert_eq!(reason, "reset password");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["restricted", "unblock", "a@t"]).is_err());
        assert!(parse(&[
            "restricted",
            "unblock",
            "c",
            "--tenant",
            "t",
            "--kind",
            "connector",
            "--reason",
            "r"
        ])
        .is_ok());
        assert!(parse(&[
            "restricted",
            "unblock",
            "c",
            "--kind",
            "edge",
            "--reason",
            "r"
        ])
        .is_err());
    }
}
