//! Who may call what, as pure functions over what the caller presented: the certificate role
//! (every service), then for the admin service the bearer token's role and tenant.
//!
//! - [`check_certificate`]: under mutual TLS, a service admits only certificates of its roles
//!   (Raft: control nodes; Policy and Signal: edges; Admin: admin tools).
//! - [`authenticate`]: the admin service also needs mutual TLS and a bearer token; the
//!   bootstrap operator token is recognised here, other tokens by [`principal_of`] from the
//!   replicated token table.
//! - [`authorize`]: what a [`Principal`] may do. Operators do everything; tenant admins change
//!   and read their own tenant only, never list tokens nor see the cluster; readers read
//!   everything and change nothing.
//!
//! Each refusal is a [`Denied`], whose gRPC code and message the services send unchanged.

use moat_proto::mtls::Role as CertRole;
use moat_proto::v1::ReadKind;
use moat_shared::TenantId;
use tonic::{Code, Status};

use crate::state::{Role, TokenRecord};

/// Who is calling the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The token's name (`operator` for the bootstrap token): the actor in the audit log.
    pub(crate) name: String,
    /// What the token may do.
    pub(crate) role: Role,
    /// The tenant a tenant-admin token administers.
    pub(crate) tenant: Option<TenantId>,
}

/// What a principal asks to do.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Action<'a> {
    /// Change an object of this tenant.
    Change(&'a TenantId),
    /// Something only an operator may do, worded for the refusal (`create tokens`).
    Operate(&'static str),
    /// Read objects of `kind` in `tenant` (empty: every tenant), once [`read_scope`] has
    /// narrowed the request.
    Read {
        /// The tenant asked for.
        tenant: &'a str,
        /// The kind of object asked for.
        kind: ReadKind,
    },
    /// See the cluster's members and edges.
    SeeCluster,
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    /// The admin service needs mutual TLS, so a token never travels in clear.
    #[error(
        "this control node serves gRPC without TLS, so it refuses admin calls; start it with \
         --tls-ca, --tls-cert and --tls-key (moat dev does)"
    )]
    NoTls,
    /// A certificate of the wrong role.
    #[error("certificate `{cn}` may not call {what}")]
    Certificate {
        /// The certificate's common name.
        cn: String,
        /// The service called.
        what: &'static str,
    },
    /// No certificate from the cluster's CA.
    #[error("{what} needs a client certificate from the cluster's CA")]
    NoCertificate {
        /// The service called.
        what: &'static str,
    },
    /// No `authorization: Bearer` header.
    #[error("missing `authorization: Bearer <token>`; pass --token")]
    NoToken,
    /// A token that is not (or no longer) in the token table.
    #[error("unknown or revoked token")]
    UnknownToken,
    /// A tenant admin changing another tenant.
    #[error("token `{token}` administers tenant `{own}` only; it cannot change tenant `{tenant}`")]
    ChangeOtherTenant {
        /// The token's name.
        token: String,
        /// The tenant it administers.
        own: TenantId,
        /// The tenant it asked to change.
        tenant: TenantId,
    },
    /// A token whose role changes nothing (a reader, or a tenant admin without a tenant).
    #[error("token `{token}` has role {}; it cannot change anything", .role.as_str())]
    ReadOnly {
        /// The token's name.
        token: String,
        /// Its role.
        role: Role,
    },
    /// An operator-only action asked by another role.
    #[error("only an operator token may {what}; token `{token}` has role {}", .role.as_str())]
    OperatorOnly {
        /// The action, worded for the message.
        what: &'static str,
        /// The token's name.
        token: String,
        /// Its role.
        role: Role,
    },
    /// A tenant admin reading another tenant.
    #[error("token `{token}` administers tenant `{own}` only; it cannot read tenant `{tenant}`")]
    ReadOtherTenant {
        /// The token's name.
        token: String,
        /// The tenant it administers (empty if none).
        own: String,
        /// The tenant it asked to read.
        tenant: String,
    },
    /// Tenant admins do not see tokens.
    #[error("tenant admins cannot list tokens")]
    TokensHidden,
    /// Tenant admins do not see the cluster.
    #[error("tenant admins cannot see the cluster; use an operator or reader token")]
    ClusterHidden,
}

impl Denied {
    /// The gRPC code of the refusal: UNAUTHENTICATED when the caller is not known, else
    /// PERMISSION_DENIED.
    pub(crate) fn code(&self) -> Code {
        match self {
            Self::NoCertificate { .. } | Self::NoToken | Self::UnknownToken => {
                Code::Unauthenticated
            }
            Self::NoTls
            | Self::Certificate { .. }
            | Self::ChangeOtherTenant { .. }
            | Self::ReadOnly { .. }
            | Self::OperatorOnly { .. }
            | Self::ReadOtherTenant { .. }
            | Self::TokensHidden
            | Self::ClusterHidden => Code::PermissionDenied,
        }
    }
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Self {
        Status::new(d.code(), d.to_string())
    }
}

/// Admits a caller whose certificate gives one of `roles` for the service `what`. Without
/// mutual TLS there is no certificate to check and every caller is admitted (the admin
/// service then refuses in [`authenticate`]).
pub(crate) fn check_certificate(
    mtls: bool,
    caller: Option<(CertRole, String)>,
    roles: &[CertRole],
    what: &'static str,
) -> Result<(), Denied> {
    if !mtls {
        return Ok(());
    }
    match caller {
        Some((role, _)) if roles.contains(&role) => Ok(()),
        Some((_, cn)) => Err(Denied::Certificate { cn, what }),
        None => Err(Denied::NoCertificate { what }),
    }
}

/// What an admin caller presented.
#[derive(Clone, Debug)]
pub(crate) struct Credentials<'a> {
    /// Whether gRPC is served over mutual TLS.
    pub(crate) mtls: bool,
    /// The verified client certificate's role and common name.
    pub(crate) certificate: Option<(CertRole, String)>,
    /// The `authorization` header.
    pub(crate) authorization: Option<&'a str>,
}

/// Who an admin caller is, as far as [`authenticate`] can tell without the token table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The bootstrap operator token.
    Operator(Principal),
    /// Another token, to look up by its SHA-256 with [`principal_of`].
    Token {
        /// SHA-256 of the token, lowercase hex.
        sha256: String,
    },
}

/// Checks an admin caller's transport, certificate and bearer token. `operator_sha` is the
/// SHA-256 of the bootstrap operator token, if the node has one.
pub(crate) fn authenticate(
    creds: &Credentials<'_>,
    operator_sha: Option<&str>,
) -> Result<Caller, Denied> {
    // A token sent in clear could be read and replayed: refuse it unless it came over mutual
    // TLS with an admin certificate.
    if !creds.mtls {
        return Err(Denied::NoTls);
    }
    check_certificate(
        creds.mtls,
        creds.certificate.clone(),
        &[CertRole::Admin],
        "the admin service",
    )?;
    let token = creds
        .authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Denied::NoToken)?;
    let sha256 = sha256_hex(token.trim());
    if operator_sha == Some(sha256.as_str()) {
        return Ok(Caller::Operator(Principal {
            name: "operator".into(),
            role: Role::Operator,
            tenant: None,
        }));
    }
    Ok(Caller::Token { sha256 })
}

/// The principal of a token found (or not) in the token table.
pub(crate) fn principal_of(record: Option<&TokenRecord>) -> Result<Principal, Denied> {
    match record {
        Some(t) => Ok(Principal {
            name: t.name.clone(),
            role: t.role,
            tenant: t.tenant.clone(),
        }),
        None => Err(Denied::UnknownToken),
    }
}

/// The tenant a read is about: a tenant admin who names none reads its own (or every tenant,
/// for a tenant-admin token without a tenant); others read what they asked for.
pub(crate) fn read_scope(who: &Principal, requested: &str) -> String {
    if who.role == Role::TenantAdmin && requested.is_empty() {
        who.tenant
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default()
    } else {
        requested.to_owned()
    }
}

/// Whether `who` may do `action`.
pub(crate) fn authorize(who: &Principal, action: &Action<'_>) -> Result<(), Denied> {
    match *action {
        Action::Change(tenant) => match (who.role, &who.tenant) {
            (Role::Operator, _) => Ok(()),
            (Role::TenantAdmin, Some(own)) if own == tenant => Ok(()),
            (Role::TenantAdmin, Some(own)) => Err(Denied::ChangeOtherTenant {
                token: who.name.clone(),
                own: own.clone(),
                tenant: tenant.clone(),
            }),
            _ => Err(Denied::ReadOnly {
                token: who.name.clone(),
                role: who.role,
            }),
        },
        Action::Operate(what) => {
            if who.role == Role::Operator {
                Ok(())
            } else {
                Err(Denied::OperatorOnly {
                    what,
                    token: who.name.clone(),
                    role: who.role,
                })
            }
        }
        Action::Read { tenant, kind } => {
            if who.role != Role::TenantAdmin {
                return Ok(());
            }
            let own = who
                .tenant
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default();
            if tenant != own {
                return Err(Denied::ReadOtherTenant {
                    token: who.name.clone(),
                    own,
                    tenant: tenant.to_owned(),
                });
            }
            if kind == ReadKind::Token {
                return Err(Denied::TokensHidden);
            }
            Ok(())
        }
        Action::SeeCluster => {
            if who.role == Role::TenantAdmin {
                Err(Denied::ClusterHidden)
            } else {
                Ok(())
            }
        }
    }
}

/// SHA-256 of `s`, lowercase hex: how tokens are compared and stored.
pub(crate) fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).expect("tenant id")
    }

    fn principal(role: Role, tenant_of: Option<&str>) -> Principal {
        Principal {
            name: "t".into(),
            role,
            tenant: tenant_of.map(tenant),
        }
    }

    /// The roles a token can have, with the tenant-admin's tenant, and a short label.
    fn principals() -> Vec<(&'static str, Principal)> {
        vec![
            ("operator", principal(Role::Operator, None)),
            ("admin-a", principal(Role::TenantAdmin, Some("a.test"))),
            ("admin-none", principal(Role::TenantAdmin, None)),
            ("reader", principal(Role::Reader, None)),
        ]
    }

    /// Outcome of one check, reduced to compare in a table: "ok" or the refusal's code.
    fn verdict(r: Result<(), Denied>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(d) => match d {
                Denied::NoTls => "no-tls",
                Denied::Certificate { .. } => "certificate",
                Denied::NoCertificate { .. } => "no-certificate",
                Denied::NoToken => "no-token",
                Denied::UnknownToken => "unknown-token",
                Denied::ChangeOtherTenant { .. } => "other-tenant",
                Denied::ReadOnly { .. } => "read-only",
                Denied::OperatorOnly { .. } => "operator-only",
                Denied::ReadOtherTenant { .. } => "read-other-tenant",
                Denied::TokensHidden => "tokens-hidden",
                Denied::ClusterHidden => "cluster-hidden",
            },
        }
    }

    #[test]
    fn each_role_may_do_what_it_may_and_nothing_else() {
        let a = tenant("a.test");
        let b = tenant("b.test");
        let actions: Vec<(&str, Action<'_>)> = vec![
            ("change a", Action::Change(&a)),
            ("change b", Action::Change(&b)),
            ("operate", Action::Operate("create tokens")),
            (
                "read all",
                Action::Read {
                    tenant: "",
                    kind: ReadKind::Connector,
                },
            ),
            (
                "read a",
                Action::Read {
                    tenant: "a.test",
                    kind: ReadKind::Connector,
                },
            ),
            (
                "read b",
                Action::Read {
                    tenant: "b.test",
                    kind: ReadKind::Connector,
                },
            ),
            (
                "tokens of a",
                Action::Read {
                    tenant: "a.test",
                    kind: ReadKind::Token,
                },
            ),
            (
                "tokens",
                Action::Read {
                    tenant: "",
                    kind: ReadKind::Token,
                },
            ),
            ("cluster", Action::SeeCluster),
        ];
        // One row per action, one column per principal of `principals()`:
        // operator, admin-a, admin-none, reader.
        let want: [[&str; 4]; 9] = [
            ["ok", "ok", "read-only", "read-only"],
            ["ok", "other-tenant", "read-only", "read-only"],
            ["ok", "operator-only", "operator-only", "operator-only"],
            ["ok", "read-other-tenant", "ok", "ok"],
            ["ok", "ok", "read-other-tenant", "ok"],
            ["ok", "read-other-tenant", "read-other-tenant", "ok"],
            ["ok", "tokens-hidden", "read-other-tenant", "ok"],
            ["ok", "read-other-tenant", "tokens-hidden", "ok"],
            ["ok", "cluster-hidden", "cluster-hidden", "ok"],
        ];
        for ((what, action), row) in actions.iter().zip(want) {
            for ((who, p), expected) in principals().iter().zip(row) {
                assert_eq!(verdict(authorize(p, action)), expected, "{who} may {what}?");
            }
        }
    }

    #[test]
    fn reports_are_read_by_operators_and_readers_whole_and_by_tenant_admins_for_their_tenant() {
        for kind in [
            ReadKind::InboundReport,
            ReadKind::AuthClientsReport,
            ReadKind::NonAcceptedDomainsReport,
            ReadKind::TlsReport,
        ] {
            // Per principal of `principals()`: all tenants, tenant a, tenant b.
            let want = [
                ["ok", "ok", "ok"],
                ["ok", "ok", "read-other-tenant"],
                ["ok", "read-other-tenant", "read-other-tenant"],
                ["ok", "ok", "ok"],
            ];
            for ((who, p), row) in principals().iter().zip(want) {
                for (tenant, expected) in ["", "a.test", "b.test"].into_iter().zip(row) {
                    // A tenant admin asking for no tenant is scoped to its own first.
                    let tenant = read_scope(p, tenant);
                    let action = Action::Read {
                        tenant: &tenant,
                        kind,
                    };
                    assert_eq!(
                        verdict(authorize(p, &action)),
                        expected,
                        "{who} reads {kind:?} of {tenant:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_tenant_admin_reads_its_own_tenant_unless_it_names_one() {
        let cases = [
            (principal(Role::TenantAdmin, Some("a.test")), "", "a.test"),
            (
                principal(Role::TenantAdmin, Some("a.test")),
                "b.test",
                "b.test",
            ),
            (principal(Role::TenantAdmin, None), "", ""),
            (principal(Role::Operator, None), "", ""),
            (principal(Role::Reader, None), "b.test", "b.test"),
        ];
        for (who, asked, scoped) in cases {
            assert_eq!(read_scope(&who, asked), scoped, "{who:?} asking {asked:?}");
        }
    }

    #[test]
    fn refusals_keep_their_words_and_codes() {
        let admin = principal(Role::TenantAdmin, Some("a.test"));
        let reader = principal(Role::Reader, None);
        let cases = [
            (
                authorize(&admin, &Action::Change(&tenant("b.test"))),
                Code::PermissionDenied,
                "token `t` administers tenant `a.test` only; it cannot change tenant `b.test`",
            ),
            (
                authorize(&reader, &Action::Change(&tenant("b.test"))),
                Code::PermissionDenied,
                "token `t` has role reader; it cannot change anything",
            ),
            (
                authorize(&admin, &Action::Operate("create tokens")),
                Code::PermissionDenied,
                "only an operator token may create tokens; token `t` has role tenant-admin",
            ),
            (
                authorize(
                    &admin,
                    &Action::Read {
                        tenant: "b.test",
                        kind: ReadKind::User,
                    },
                ),
                Code::PermissionDenied,
                "token `t` administers tenant `a.test` only; it cannot read tenant `b.test`",
            ),
            (
                authorize(&admin, &Action::SeeCluster),
                Code::PermissionDenied,
                "tenant admins cannot see the cluster; use an operator or reader token",
            ),
        ];
        for (result, code, message) in cases {
            let status = Status::from(result.expect_err(message));
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn each_service_admits_only_its_certificates() {
        let cert = |role| Some((role, format!("{}-1", CertRole::common_name(role))));
        let roles = [CertRole::Control, CertRole::Edge, CertRole::Admin];
        // (the service's roles, the caller's role or none, with mutual TLS?, expected)
        let cases = [
            (
                &[CertRole::Control][..],
                cert(CertRole::Control),
                true,
                "ok",
            ),
            (
                &[CertRole::Control][..],
                cert(CertRole::Edge),
                true,
                "certificate",
            ),
            (
                &[CertRole::Control][..],
                cert(CertRole::Admin),
                true,
                "certificate",
            ),
            (&[CertRole::Edge][..], cert(CertRole::Edge), true, "ok"),
            (
                &[CertRole::Edge][..],
                cert(CertRole::Control),
                true,
                "certificate",
            ),
            (&[CertRole::Admin][..], cert(CertRole::Admin), true, "ok"),
            (
                &[CertRole::Admin][..],
                cert(CertRole::Edge),
                true,
                "certificate",
            ),
            (&roles[..], None, true, "no-certificate"),
            (&[CertRole::Admin][..], None, false, "ok"),
            (&[CertRole::Edge][..], cert(CertRole::Control), false, "ok"),
        ];
        for (allowed, caller, mtls, expected) in cases {
            let label = format!("{allowed:?} called by {caller:?} (mtls {mtls})");
            let r = check_certificate(mtls, caller, allowed, "the service");
            assert_eq!(verdict(r), expected, "{label}");
        }
        let refused = check_certificate(true, None, &[CertRole::Edge], "the policy service");
        let status = Status::from(refused.expect_err("no certificate"));
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "the policy service needs a client certificate from the cluster's CA"
        );
    }

    #[test]
    fn an_admin_caller_needs_tls_an_admin_certificate_and_a_token() {
        let operator_sha = sha256_hex("boot");
        let admin = Some((CertRole::Admin, "moat-admin-x".to_owned()));
        let edge = Some((CertRole::Edge, "moat-edge-x".to_owned()));
        let creds = |mtls, certificate, authorization| Credentials {
            mtls,
            certificate,
            authorization,
        };
        let cases = [
            (creds(false, None, Some("Bearer boot")), "no-tls"),
            (creds(false, admin.clone(), Some("Bearer boot")), "no-tls"),
            (creds(true, None, Some("Bearer boot")), "no-certificate"),
            (creds(true, edge, Some("Bearer boot")), "certificate"),
            (creds(true, admin.clone(), None), "no-token"),
            (creds(true, admin.clone(), Some("boot")), "no-token"),
            (creds(true, admin.clone(), Some("Bearer boot")), "operator"),
            (
                creds(true, admin.clone(), Some("Bearer  boot ")),
                "operator",
            ),
            (creds(true, admin.clone(), Some("Bearer other")), "token"),
        ];
        for (c, expected) in cases {
            let got = match authenticate(&c, Some(&operator_sha)) {
                Ok(Caller::Operator(p)) => {
                    assert_eq!(p.role, Role::Operator);
                    assert_eq!(p.name, "operator");
                    "operator"
                }
                Ok(Caller::Token { sha256 }) => {
                    assert_eq!(sha256, sha256_hex("other"));
                    "token"
                }
                Err(d) => verdict(Err(d)),
            };
            assert_eq!(got, expected, "{c:?}");
        }
        // Without a bootstrap token, the operator's token is just another token.
        let c = creds(true, admin, Some("Bearer boot"));
        assert_eq!(
            authenticate(&c, None),
            Ok(Caller::Token {
                sha256: sha256_hex("boot")
            })
        );
        let no_tls = Status::from(Denied::NoTls);
        assert_eq!(no_tls.code(), Code::PermissionDenied);
        assert_eq!(
            no_tls.message(),
            "this control node serves gRPC without TLS, so it refuses admin calls; start it \
             with --tls-ca, --tls-cert and --tls-key (moat dev does)"
        );
    }

    #[test]
    fn a_token_is_found_in_the_table_or_refused() {
        let record = TokenRecord {
            id: "1".into(),
            name: "ops".into(),
            role: Role::TenantAdmin,
            tenant: Some(tenant("a.test")),
            sha256: sha256_hex("x"),
            created_ms: 0,
        };
        assert_eq!(
            principal_of(Some(&record)),
            Ok(Principal {
                name: "ops".into(),
                role: Role::TenantAdmin,
                tenant: Some(tenant("a.test")),
            })
        );
        let refused = Status::from(principal_of(None).expect_err("unknown"));
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert_eq!(refused.message(), "unknown or revoked token");
    }
}
