//! The admin writes: each request, once its caller may make it, becomes one proposed
//! [`Command`] (or a membership change), and the outcome of its application becomes the reply.
//! Input is checked here (names, addresses, passwords hashed with argon2, token secrets drawn);
//! the state machine checks the rest when it applies the command.

use moat_proto::convert::{
    baseline_from_wire, connector_from_wire, step_from_wire, tenant_from_wire,
};
use moat_proto::v1;
use moat_shared::time::now_ms;
use moat_shared::{Domain, EntityKind, Seed, TenantId};
use tonic::Status;

use super::authz::{authorize, sha256_hex, Action, Principal};
use crate::raft::node::MemberChange;
use crate::raft::Req;
use crate::service::Shared;
use crate::state::{
    Command, DetectionPolicy, LimitAction, OutboundPolicy, Outcome, Proposal, Rejection,
    RejectionCode, Role, TokenRecord, User,
};

/// Refuses a command some voter of an older release could not apply: proposed anyway, it
/// would apply on the new nodes and be refused on the old ones, splitting the replicas. Only
/// the leader proposes, and it hears from every voter it has reached.
fn check_log_version(shared: &Shared, command: &Command) -> Result<(), Status> {
    let needed = command.log_version();
    if needed <= 1 {
        return Ok(());
    }
    let leader = shared.view.borrow().status.as_ref().map_or(0, |s| s.leader);
    if leader != shared.id {
        // A follower hears only from the leader: it proposes nothing anyway, and refuses the
        // write with the leader's address, where the client retries and this check is made.
        return Ok(());
    }
    let behind = voters_behind(shared, needed);
    if behind.is_empty() {
        return Ok(());
    }
    let list = behind
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let what = match command {
        Command::ImportSeed { .. } => {
            "a seed with connectors or users; finish the upgrade of every node first, or import \
             tenants alone"
        }
        _ => "this change; finish the upgrade of every node first",
    };
    Err(Status::failed_precondition(format!(
        "node(s) {list} run an older release (or have not been heard from) and cannot apply \
         {what}"
    )))
}

/// Whether every voter (this node included) is known to apply log version `needed`: what the
/// leader checks before it carries data only that version reads (signal batches' evidence).
pub(crate) fn voters_apply(shared: &Shared, needed: u32) -> bool {
    voters_behind(shared, needed).is_empty()
}

/// The voters other than this node not known to apply log version `needed`, from the raft
/// view and the versions peers' batches carried.
fn voters_behind(shared: &Shared, needed: u32) -> Vec<u64> {
    let voters = shared
        .view
        .borrow()
        .status
        .as_ref()
        .map(|s| s.voters.clone())
        .unwrap_or_default();
    let seen = shared
        .peer_log_versions
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    behind(needed, &voters, shared.id, &seen)
}

/// The voters other than `me` not known to apply log version `needed`.
fn behind(
    needed: u32,
    voters: &[u64],
    me: u64,
    seen: &std::collections::BTreeMap<u64, u32>,
) -> Vec<u64> {
    voters
        .iter()
        .copied()
        .filter(|v| *v != me && seen.get(v).copied().unwrap_or(0) < needed)
        .collect()
}

/// Carries out one admin write for `who`: checks, authorizes, proposes, waits for the outcome.
pub(crate) async fn write(
    shared: &Shared,
    who: &Principal,
    w: v1::WriteRequest,
) -> Result<v1::WriteReply, Status> {
    use v1::write_request::Op;
    let op =
        w.op.ok_or_else(|| Status::invalid_argument("empty write request"))?;
    let mut secret = String::new();
    let command = match op {
        Op::PutTenant(t) => {
            authorize(who, &Action::Operate("create or change tenants"))?;
            Command::PutTenant {
                tenant: tenant_from_wire(&t).map_err(bad)?,
            }
        }
        Op::DeleteTenant(t) => {
            authorize(who, &Action::Operate("delete tenants"))?;
            Command::DeleteTenant {
                tenant: tenant_id(&t)?,
            }
        }
        Op::AddDomain(d) => {
            let tenant = tenant_id(&d.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::AddDomain {
                tenant,
                domain: Domain::new(&d.domain).map_err(bad)?,
            }
        }
        Op::RemoveDomain(d) => {
            let tenant = tenant_id(&d.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::RemoveDomain {
                tenant,
                domain: Domain::new(&d.domain).map_err(bad)?,
            }
        }
        Op::PutConnector(c) => {
            let connector = connector_from_wire(&c).map_err(bad)?;
            authorize(who, &Action::Change(&connector.tenant))?;
            Command::PutConnector { connector }
        }
        Op::DeleteConnector(n) => {
            let tenant = tenant_id(&n.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::DeleteConnector {
                tenant,
                name: n.name,
            }
        }
        Op::PutUser(u) => {
            let tenant = tenant_id(&u.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            let address = u.address.trim().to_lowercase();
            if !address.contains('@') {
                return Err(bad(format!("`{address}` is not an email address")));
            }
            Command::PutUser {
                user: User {
                    tenant,
                    address,
                    password_hash: hash_password(u.password).await?,
                    send_as: u.send_as.iter().map(|a| a.trim().to_lowercase()).collect(),
                },
            }
        }
        Op::DeleteUser(n) => {
            let tenant = tenant_id(&n.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::DeleteUser {
                tenant,
                address: n.name.trim().to_lowercase(),
            }
        }
        Op::SetTransportConfig(t) => {
            let tenant = tenant_id(&t.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::SetTransportConfig {
                tenant,
                allow_legacy_tls_clients: t.allow_legacy_tls_clients,
            }
        }
        Op::SetSpeedBump(b) => {
            authorize(who, &Action::Operate("set the speed bump schedule"))?;
            let steps = b
                .steps
                .iter()
                .map(step_from_wire)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            Command::SetSpeedBump { steps }
        }
        Op::SetOutboundPolicy(o) => {
            let tenant = tenant_id(&o.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            let default = OutboundPolicy::default();
            let action = match o.action.as_str() {
                "" => default.action,
                a => LimitAction::parse(a).ok_or_else(|| {
                    bad(format!(
                        "`{a}` is not an action (block-for-today, block, alert-only)"
                    ))
                })?,
            };
            let or = |v: u32, d: u32| if v == 0 { d } else { v };
            Command::SetOutboundPolicy {
                tenant,
                policy: OutboundPolicy {
                    recipients_per_hour: or(o.recipients_per_hour, default.recipients_per_hour),
                    recipients_per_day: or(o.recipients_per_day, default.recipients_per_day),
                    action,
                },
            }
        }
        Op::SetAlertContacts(c) => {
            let tenant = tenant_id(&c.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            let webhook_url = c.webhook_url.trim();
            if !webhook_url.is_empty() {
                crate::alerts::WebhookUrl::parse(webhook_url).map_err(Status::invalid_argument)?;
            }
            Command::SetAlertContacts {
                tenant,
                contacts: crate::state::AlertContacts {
                    emails: c.emails.iter().map(|e| e.trim().to_lowercase()).collect(),
                    webhook_url: webhook_url.to_owned(),
                    webhook_secret: c.webhook_secret,
                },
            }
        }
        Op::SetAlertTransport(t) => {
            authorize(who, &Action::Operate("set how alert emails are sent"))?;
            Command::SetAlertTransport {
                transport: crate::state::AlertTransport {
                    smtp: t.smtp.trim().to_owned(),
                    from: t.from.trim().to_owned(),
                },
            }
        }
        Op::SetDetectionPolicy(d) => {
            let tenant = match d.tenant.as_str() {
                "" => {
                    authorize(who, &Action::Operate("set the default detection settings"))?;
                    None
                }
                t => {
                    let t = tenant_id(t)?;
                    authorize(who, &Action::Change(&t))?;
                    Some(t)
                }
            };
            let def = DetectionPolicy::default();
            let pick = |v: u32, d: u32| if v == 0 { d } else { v };
            Command::SetDetectionPolicy {
                tenant,
                policy: DetectionPolicy {
                    interval_ms: if d.interval_ms == 0 {
                        def.interval_ms
                    } else {
                        d.interval_ms
                    },
                    warmup_intervals: pick(d.warmup_intervals, def.warmup_intervals),
                    spike_factor: pick(d.spike_factor, def.spike_factor),
                    min_messages: if d.min_messages == 0 {
                        def.min_messages
                    } else {
                        d.min_messages
                    },
                    unprovisioned_percent: pick(d.unprovisioned_percent, def.unprovisioned_percent),
                    mismatch_percent: pick(d.mismatch_percent, def.mismatch_percent),
                    auth_fail_percent: pick(d.auth_fail_percent, def.auth_fail_percent),
                },
            }
        }
        Op::Unblock(u) => {
            let tenant = tenant_id(&u.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            let kind = EntityKind::parse(&u.kind).ok_or_else(|| {
                bad(format!(
                    "`{}` is not an entity kind (user, connector)",
                    u.kind
                ))
            })?;
            if u.reason.trim().is_empty() {
                return Err(bad("unblocking needs a reason (--reason)"));
            }
            Command::Unblock {
                tenant,
                kind,
                name: match kind {
                    EntityKind::User => u.name.trim().to_lowercase(),
                    EntityKind::Connector => u.name.trim().to_owned(),
                },
                reason: u.reason,
            }
        }
        Op::CreateToken(t) => {
            authorize(who, &Action::Operate("create tokens"))?;
            let role = Role::parse(&t.role).ok_or_else(|| {
                bad(format!(
                    "`{}` is not a role (operator, tenant-admin, reader)",
                    t.role
                ))
            })?;
            let tenant = match (role, t.tenant.as_str()) {
                (Role::TenantAdmin, "") => {
                    return Err(bad("a tenant-admin token needs --tenant"));
                }
                (Role::TenantAdmin, t) => Some(tenant_id(t)?),
                (_, "") => None,
                (_, _) => return Err(bad("only tenant-admin tokens name a tenant")),
            };
            let id = random_hex(6);
            secret = format!("moat_{id}_{}", random_hex(24));
            Command::CreateToken {
                token: TokenRecord {
                    id: id.clone(),
                    name: if t.name.is_empty() { id } else { t.name },
                    role,
                    tenant,
                    sha256: sha256_hex(&secret),
                    created_ms: 0,
                },
            }
        }
        Op::RevokeToken(id) => {
            authorize(who, &Action::Operate("revoke tokens"))?;
            Command::RevokeToken { id }
        }
        Op::ApplySeed(s) => {
            authorize(who, &Action::Operate("apply a seed"))?;
            let seed = Seed::parse(&s.toml).and_then(Seed::validate).map_err(bad)?;
            if seed.connectors.is_empty() && seed.users.is_empty() {
                Command::ApplySeed {
                    tenants: seed.tenants,
                }
            } else {
                Command::ImportSeed {
                    tenants: seed.tenants,
                    connectors: seed.connectors,
                    users: seed.users,
                }
            }
        }
        Op::SetOnpremPolicy(o) => {
            authorize(
                who,
                &Action::Operate("change the on-premises Exchange settings"),
            )?;
            Command::SetOnpremPolicy {
                baseline: if o.baseline.is_empty() {
                    None
                } else {
                    Some(baseline_from_wire(&o.baseline).map_err(bad)?)
                },
                stages: match o.stages.trim() {
                    "" => None,
                    t => Some(moat_shared::onprem::Schedule::parse(t).map_err(bad)?),
                },
                service: (!o.service.trim().is_empty()).then(|| o.service.trim().to_owned()),
                all_connectors: match o.scope.as_str() {
                    "" => None,
                    "onpremises" => Some(false),
                    "all-connectors" => Some(true),
                    other => {
                        return Err(bad(format!(
                            "`{other}` is not a scope (onpremises, all-connectors)"
                        )))
                    }
                },
            }
        }
        Op::PauseOnprem(o) => {
            let tenant = tenant_id(&o.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::PauseOnprem {
                tenant,
                days: o.days,
                reason: o.reason,
            }
        }
        Op::ExemptOnprem(o) => {
            let tenant = tenant_id(&o.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            if o.reason.trim().is_empty() {
                return Err(bad("an exemption needs a reason (--reason)"));
            }
            Command::ExemptOnprem {
                tenant,
                server: o.server,
                reason: o.reason,
            }
        }
        Op::UnexemptOnprem(o) => {
            let tenant = tenant_id(&o.tenant)?;
            authorize(who, &Action::Change(&tenant))?;
            Command::UnexemptOnprem {
                tenant,
                server: o.server,
            }
        }
        Op::RotateTicketKeys(_) => {
            authorize(who, &Action::Operate("rotate the TLS ticket keys"))?;
            crate::service::tickets::draw(shared.ticket_rotate_every, None, true)?
        }
        Op::SetClock(at_ms) => {
            authorize(who, &Action::Operate("move the cluster clock"))?;
            if !shared.dev_clock {
                return Err(Status::failed_precondition(
                    "this cluster keeps real time: only a `moat dev` cluster lets the clock be moved",
                ));
            }
            Command::SetClock {
                offset_ms: at_ms.saturating_sub(now_ms()),
            }
        }
        Op::AddNode(n) => {
            authorize(who, &Action::Operate("change cluster membership"))?;
            if n.id == 0 || n.address.is_empty() {
                return Err(bad("add-node needs a node id above 0 and its address"));
            }
            let change = MemberChange::Add(n.id, n.address);
            let o = shared.ask(|r| Req::Member(change, r)).await?;
            return outcome_status(o);
        }
        Op::RemoveNode(id) => {
            authorize(who, &Action::Operate("change cluster membership"))?;
            let o = shared
                .ask(|r| Req::Member(MemberChange::Remove(id), r))
                .await?;
            return outcome_status(o);
        }
    };
    let p = Proposal {
        at_ms: now_ms(),
        actor: who.name.clone(),
        request_id: (!w.request_id.is_empty()).then_some(w.request_id),
        command,
    };
    check_entry_size(&p)?;
    check_log_version(shared, &p.command)?;
    let o = shared.ask(|r| Req::Propose(p, r)).await?;
    let mut reply = outcome_status(o)?;
    reply.secret = secret;
    Ok(reply)
}

/// The most bytes one proposal may take in the raft log (its JSON form): a log entry stays
/// bounded, so that replicating, applying and snapshotting never handle one huge entry, and
/// well under the 4 MB gRPC limit of the peer transport. `moat admin apply` splits a larger
/// seed into several writes under this bound.
pub(crate) const MAX_ENTRY_BYTES: usize = 3 << 20;

/// Refuses, with INVALID_ARGUMENT naming the bound, a proposal over [`MAX_ENTRY_BYTES`].
fn check_entry_size(p: &Proposal) -> Result<(), Status> {
    let size = serde_json::to_vec(p).map_or(0, |v| v.len());
    if size > MAX_ENTRY_BYTES {
        return Err(Status::invalid_argument(format!(
            "this change is {size} bytes in the log, over the limit of {MAX_ENTRY_BYTES} bytes \
             for one entry; split it (moat admin apply splits a seed by itself)"
        )));
    }
    Ok(())
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn tenant_id(s: &str) -> Result<TenantId, Status> {
    TenantId::new(s).map_err(bad)
}

async fn hash_password(password: String) -> Result<String, Status> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    if password.len() < 8 {
        return Err(Status::invalid_argument(
            "a password needs at least 8 characters",
        ));
    }
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| Status::internal("no randomness"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| Status::internal(e.to_string()))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Status::internal(e.to_string()))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The reply to a write, from the outcome of its application.
fn outcome_status(o: Outcome) -> Result<v1::WriteReply, Status> {
    match o.result {
        Ok(summary) => Ok(v1::WriteReply {
            index: o.index,
            summary,
            secret: String::new(),
        }),
        Err(e) => Err(rejection_status(&e)),
    }
}

/// The gRPC status of a refused write: its code comes from the rejection's variant (through
/// [`Rejection::code`]), its message is the rejection's text.
fn rejection_status(e: &Rejection) -> Status {
    let message = e.to_string();
    match e.code() {
        RejectionCode::NotFound => Status::not_found(message),
        RejectionCode::AlreadyExists => Status::already_exists(message),
        RejectionCode::FailedPrecondition => Status::failed_precondition(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Kind;
    use tonic::Code;

    #[test]
    fn a_proposal_over_the_entry_bound_is_refused_with_the_bound() {
        let tenant = |i: usize| moat_shared::Tenant {
            id: TenantId::new(&format!("t{i}.example")).expect("valid tenant"),
            display_name: "x".repeat(200),
            accepted_domains: Vec::new(),
            allow_legacy_tls_clients: false,
        };
        let proposal = |n: usize| Proposal {
            at_ms: 0,
            actor: "op".into(),
            request_id: None,
            command: Command::ApplySeed {
                tenants: (0..n).map(tenant).collect(),
            },
        };
        assert!(check_entry_size(&proposal(100)).is_ok());
        let e = check_entry_size(&proposal(20_000)).expect_err("over the bound");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(&MAX_ENTRY_BYTES.to_string()), "{e:?}");
    }

    #[test]
    fn a_refused_write_gets_the_status_of_its_rejection() {
        let t = TenantId::new("contoso").expect("valid tenant");
        let d = Domain::new("contoso.example").expect("valid domain");
        let rows = [
            (Rejection::not_found(Kind::Tenant, &t), Code::NotFound),
            (
                Rejection::DomainNotAccepted {
                    domain: d.clone(),
                    tenant: t.clone(),
                },
                Code::NotFound,
            ),
            (
                Rejection::UserNotInTenant {
                    address: "a@contoso.example".into(),
                    tenant: t.clone(),
                },
                Code::NotFound,
            ),
            (
                Rejection::AlreadyExists {
                    kind: Kind::Token,
                    name: "ops".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Rejection::DomainTaken {
                    domain: d,
                    owner: t.clone(),
                },
                Code::AlreadyExists,
            ),
            (
                Rejection::Conflict {
                    subject: Kind::Clock,
                    reason: "time went backwards".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Rejection::Invalid {
                    subject: Kind::Tenant,
                    reason: "a tenant needs a domain".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Rejection::Undecodable {
                    index: 7,
                    reason: "eof".into(),
                },
                Code::FailedPrecondition,
            ),
        ];
        for (rejection, code) in rows {
            let status = rejection_status(&rejection);
            assert_eq!(status.code(), code, "{rejection:?}");
            assert_eq!(status.message(), rejection.to_string());
        }
    }

    #[test]
    fn a_command_waits_for_every_voter_to_apply_its_log_version() {
        let seen: std::collections::BTreeMap<u64, u32> = [(2, 2), (3, 1)].into();
        // Node 3 said version 1 (or an old release that says nothing, recorded as 1); node 4
        // has not been heard from; node 1 is this one.
        assert_eq!(super::behind(2, &[1, 2, 3, 4], 1, &seen), vec![3, 4]);
        assert!(super::behind(1, &[1, 2, 3], 1, &seen).is_empty());
        assert!(super::behind(2, &[1], 1, &seen).is_empty(), "a single node");
        assert_eq!(
            Command::ImportSeed {
                tenants: vec![],
                connectors: vec![],
                users: vec![],
            }
            .log_version(),
            2
        );
        assert_eq!(Command::ApplySeed { tenants: vec![] }.log_version(), 1);
    }
}
