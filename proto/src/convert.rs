//! Validated conversions between the wire types and `moat-shared`'s domain types.

use moat_shared::time::{day_string, parse_day};
use moat_shared::{
    CertName, Connector as DConnector, ConnectorId, ConnectorKind as DKind, Domain, EntityKind,
    OnpremSettings, PolicyChange, PolicySnapshot, RestrictedEntity, SpeedBumpStep, SubmissionUser,
    Tenant as DTenant, TenantId,
};

use moat_shared::exchange::{Baseline, Build};
use moat_shared::onprem::Enforced;
use moat_shared::tickets::{to_hex, TICKET_KEY_NAME_LEN, TICKET_SECRET_LEN};
use moat_shared::{TicketKey, TicketKeys, TicketSecret};

use crate::v1;

/// Why a wire object is not a valid domain object.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(e: impl std::fmt::Display) -> Invalid {
    Invalid(e.to_string())
}

/// Wire tenant from domain tenant.
pub fn tenant_to_wire(t: &DTenant) -> v1::Tenant {
    v1::Tenant {
        id: t.id.to_string(),
        display_name: t.display_name.clone(),
        accepted_domains: t.accepted_domains.iter().map(|d| d.to_string()).collect(),
        allow_legacy_tls_clients: t.allow_legacy_tls_clients,
    }
}

/// Domain tenant from wire tenant.
pub fn tenant_from_wire(t: &v1::Tenant) -> Result<DTenant, Invalid> {
    let id = TenantId::new(&t.id).map_err(invalid)?;
    let accepted_domains = t
        .accepted_domains
        .iter()
        .map(|d| Domain::new(d).map_err(invalid))
        .collect::<Result<_, _>>()?;
    Ok(DTenant {
        display_name: if t.display_name.is_empty() {
            id.to_string()
        } else {
            t.display_name.clone()
        },
        id,
        accepted_domains,
        allow_legacy_tls_clients: t.allow_legacy_tls_clients,
    })
}

/// Wire connector from domain connector.
pub fn connector_to_wire(c: &DConnector) -> v1::Connector {
    v1::Connector {
        tenant: c.tenant.to_string(),
        name: c.name.clone(),
        kind: match c.kind {
            DKind::Partner => v1::ConnectorKind::Partner,
            DKind::OnPremises => v1::ConnectorKind::OnPremises,
        } as i32,
        enabled: c.enabled,
        sender_ip_addresses: c
            .sender_ip_addresses
            .iter()
            .map(|n| n.to_string())
            .collect(),
        tls_sender_certificate_name: c
            .tls_sender_certificate_name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        sender_domains: c.sender_domains.clone(),
        require_tls: c.require_tls,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    }
}

/// Domain connector from wire connector, validated.
pub fn connector_from_wire(c: &v1::Connector) -> Result<DConnector, Invalid> {
    let kind = match v1::ConnectorKind::try_from(c.kind) {
        Ok(v1::ConnectorKind::Partner) => DKind::Partner,
        Ok(v1::ConnectorKind::OnPremises) => DKind::OnPremises,
        _ => {
            return Err(Invalid(
                "connector type must be partner or on-premises".into(),
            ))
        }
    };
    let connector = DConnector {
        tenant: TenantId::new(&c.tenant).map_err(invalid)?,
        name: c.name.clone(),
        kind,
        enabled: c.enabled,
        sender_ip_addresses: c
            .sender_ip_addresses
            .iter()
            .map(|s| DConnector::parse_ip(s).map_err(invalid))
            .collect::<Result<_, _>>()?,
        tls_sender_certificate_name: match c.tls_sender_certificate_name.as_str() {
            "" => None,
            n => Some(CertName::new(n).map_err(|_| {
                Invalid(format!(
                    "`{n}` is not a certificate domain (`name` or `*.name`)"
                ))
            })?),
        },
        sender_domains: c
            .sender_domains
            .iter()
            .map(|d| DConnector::parse_sender_domain(d).map_err(invalid))
            .collect::<Result<_, _>>()?,
        require_tls: c.require_tls,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    };
    connector.validate().map_err(invalid)?;
    Ok(connector)
}

/// The domain snapshot an edge enforces, from the wire: a change from an empty policy with the
/// whole contents, applied.
pub fn snapshot_from_wire(s: &v1::PolicySnapshot) -> Result<PolicySnapshot, Invalid> {
    let tenants = s
        .tenants
        .iter()
        .map(tenant_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let connectors = s
        .connectors
        .iter()
        .map(connector_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let users = s
        .users
        .iter()
        .map(user_from_wire)
        .collect::<Result<Vec<_>, Invalid>>()?;
    let restricted = s
        .restricted
        .iter()
        .map(restricted_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let speed_bump = s
        .speed_bump
        .iter()
        .map(step_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let (onprem, enforced) = onprem_from_wire(s.onprem.as_ref().cloned().unwrap_or_default())?;
    PolicySnapshot::from_change(&PolicyChange {
        version: s.version,
        reset: true,
        tenants,
        connectors,
        users,
        restricted,
        enforced,
        speed_bump: Some(speed_bump),
        onprem: Some(onprem),
        clock_offset_ms: Some(s.clock_offset_ms),
        ..Default::default()
    })
    .map_err(invalid)
}

/// A user from the wire, with addresses lowercased.
fn user_from_wire(u: &v1::SubmissionUser) -> Result<SubmissionUser, Invalid> {
    Ok(SubmissionUser {
        tenant: TenantId::new(&u.tenant).map_err(invalid)?,
        address: u.address.to_lowercase(),
        password_hash: u.password_hash.clone(),
        send_as: u.send_as.iter().map(|a| a.to_lowercase()).collect(),
    })
}

/// One part of a `Sync` update as a [`PolicyChange`], every object validated.
pub fn change_from_wire(u: &v1::PolicyUpdate) -> Result<PolicyChange, Invalid> {
    fn all<W, D>(items: &[W], f: impl Fn(&W) -> Result<D, Invalid>) -> Result<Vec<D>, Invalid> {
        items.iter().map(f).collect()
    }
    let tenant_id = |t: &String| TenantId::new(t).map_err(invalid);
    let (onprem, enforced) = match &u.onprem {
        Some(o) => {
            let (settings, _) = onprem_from_wire(v1::OnpremRules {
                enforced: Vec::new(),
                ..o.clone()
            })?;
            (Some(settings), Vec::new())
        }
        None => (None, Vec::new()),
    };
    let mut enforced: Vec<_> = enforced;
    if !u.enforced.is_empty() {
        let (_, list) = onprem_from_wire(v1::OnpremRules {
            enforced: u.enforced.clone(),
            ..Default::default()
        })?;
        enforced = list;
    }
    Ok(PolicyChange {
        version: u.version,
        reset: u.reset,
        tenants: all(&u.tenants, tenant_from_wire)?,
        deleted_tenants: all(&u.deleted_tenants, tenant_id)?,
        connectors: all(&u.connectors, connector_from_wire)?,
        deleted_connectors: all(&u.deleted_connectors, |c| {
            ConnectorId::parse(c).map_err(invalid)
        })?,
        users: all(&u.users, user_from_wire)?,
        deleted_users: u.deleted_users.iter().map(|a| a.to_lowercase()).collect(),
        restricted: all(&u.restricted, restricted_from_wire)?,
        unrestricted: all(&u.unrestricted, |r| {
            Ok((
                EntityKind::parse(&r.kind)
                    .ok_or_else(|| Invalid(format!("`{}` is not an entity kind", r.kind)))?,
                tenant_id(&r.tenant)?,
                r.name.clone(),
            ))
        })?,
        enforced,
        unenforced: all(&u.unenforced, |e| {
            Ok((tenant_id(&e.tenant)?, e.server.to_ascii_lowercase()))
        })?,
        speed_bump: match &u.speed_bump {
            Some(s) => Some(all(&s.steps, step_from_wire)?),
            None => None,
        },
        onprem,
        clock_offset_ms: u.clock_offset_ms,
        ticket_keys: u.ticket_keys.as_ref().map(tickets_from_wire).transpose()?,
    })
}

/// A ticket key from the wire: a 16-byte name and a 32-byte secret.
fn ticket_key_from_wire(k: &v1::TicketKey) -> Result<TicketKey, Invalid> {
    let name: [u8; TICKET_KEY_NAME_LEN] = k
        .name
        .as_slice()
        .try_into()
        .map_err(|_| Invalid(format!("a ticket key name is {TICKET_KEY_NAME_LEN} bytes")))?;
    let secret: [u8; TICKET_SECRET_LEN] = k
        .secret
        .as_slice()
        .try_into()
        .map_err(|_| Invalid(format!("a ticket key is {TICKET_SECRET_LEN} bytes")))?;
    Ok(TicketKey {
        name: to_hex(&name),
        secret: TicketSecret::new(secret),
        created_ms: k.created_ms,
    })
}

/// The ticket keys from the wire.
pub fn tickets_from_wire(t: &v1::TicketKeys) -> Result<TicketKeys, Invalid> {
    Ok(TicketKeys {
        issuing: t.issuing.as_ref().map(ticket_key_from_wire).transpose()?,
        accepting: t
            .accepting
            .iter()
            .map(ticket_key_from_wire)
            .collect::<Result<_, _>>()?,
        lifetime_ms: t.lifetime_ms,
    })
}

/// A ticket key on the wire; `None` when its name is not 32 hex digits (never the case for a
/// key the control plane made).
pub fn ticket_key_to_wire(k: &TicketKey) -> Option<v1::TicketKey> {
    Some(v1::TicketKey {
        name: k.name_bytes()?.to_vec(),
        secret: k.secret.expose().to_vec(),
        created_ms: k.created_ms,
    })
}

/// Parses baseline builds; fails on the first that is not a build.
pub fn baseline_from_wire(builds: &[String]) -> Result<Baseline, Invalid> {
    builds
        .iter()
        .map(|b| Build::parse(b).ok_or_else(|| Invalid(format!("`{b}` is not an Exchange build"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Baseline)
}

/// The on-premises settings and the enforced servers (by tenant and lowercase FQDN), from the
/// wire.
type Onprem = (OnpremSettings, Vec<((TenantId, String), Enforced)>);

fn onprem_from_wire(o: v1::OnpremRules) -> Result<Onprem, Invalid> {
    let enforced = o
        .enforced
        .iter()
        .map(|e| {
            let minutes = |m: u32| u8::try_from(m.min(60)).unwrap_or(60);
            Ok((
                (
                    TenantId::new(&e.tenant).map_err(invalid)?,
                    e.server.to_ascii_lowercase(),
                ),
                Enforced {
                    stage: e.stage,
                    throttle: minutes(e.throttle),
                    block: minutes(e.block),
                },
            ))
        })
        .collect::<Result<_, Invalid>>()?;
    let settings = OnpremSettings {
        baseline: if o.baseline.is_empty() {
            Baseline::default()
        } else {
            baseline_from_wire(&o.baseline)?
        },
        service: o.service,
        all_connectors: o.all_connectors,
    };
    Ok((settings, enforced))
}

/// Wire user (with its password hash, for edges) from a domain user.
pub fn user_to_wire(u: &SubmissionUser) -> v1::SubmissionUser {
    v1::SubmissionUser {
        tenant: u.tenant.to_string(),
        address: u.address.clone(),
        password_hash: u.password_hash.clone(),
        send_as: u.send_as.clone(),
    }
}

/// Wire restricted entity from a domain one.
pub fn restricted_to_wire(r: &RestrictedEntity) -> v1::RestrictedEntity {
    v1::RestrictedEntity {
        tenant: r.tenant.to_string(),
        kind: r.kind.as_str().into(),
        name: r.name.clone(),
        reason: r.reason.clone(),
        since_ms: r.since_ms,
        until_ms: r.until_ms.unwrap_or(0),
    }
}

/// Domain restricted entity from the wire, validated.
pub fn restricted_from_wire(r: &v1::RestrictedEntity) -> Result<RestrictedEntity, Invalid> {
    Ok(RestrictedEntity {
        tenant: TenantId::new(&r.tenant).map_err(invalid)?,
        kind: EntityKind::parse(&r.kind)
            .ok_or_else(|| Invalid(format!("`{}` is not an entity kind", r.kind)))?,
        name: r.name.clone(),
        reason: r.reason.clone(),
        since_ms: r.since_ms,
        until_ms: (r.until_ms != 0).then_some(r.until_ms),
    })
}

/// Wire speed bump step from a domain one.
pub fn step_to_wire(s: &SpeedBumpStep) -> v1::SpeedBumpStep {
    v1::SpeedBumpStep {
        date: day_string(s.day),
        percent: u32::from(s.percent),
    }
}

/// Domain speed bump step from the wire, validated.
pub fn step_from_wire(s: &v1::SpeedBumpStep) -> Result<SpeedBumpStep, Invalid> {
    Ok(SpeedBumpStep {
        day: parse_day(&s.date)
            .ok_or_else(|| Invalid(format!("`{}` is not a date (YYYY-MM-DD)", s.date)))?,
        percent: u8::try_from(s.percent)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| Invalid(format!("{}% is not a percentage", s.percent)))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectors_round_trip() {
        let wire = v1::Connector {
            tenant: "contoso.com".into(),
            name: "on-prem".into(),
            kind: v1::ConnectorKind::OnPremises as i32,
            enabled: true,
            sender_ip_addresses: vec!["192.0.2.0/24".into(), "2001:db8::1".into()],
            tls_sender_certificate_name: "*.contoso.com".into(),
            sender_domains: vec!["*".into()],
            require_tls: true,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        };
        let c = connector_from_wire(&wire).unwrap();
        let mut back = connector_to_wire(&c);
        assert_eq!(back.sender_ip_addresses[1], "2001:db8::1/128");
        back.sender_ip_addresses[1] = "2001:db8::1".into();
        assert_eq!(back, wire);
        let mut bad = wire.clone();
        bad.kind = 0;
        assert!(connector_from_wire(&bad).is_err());
        bad = wire;
        bad.sender_ip_addresses = vec!["10.0.0.0/40".into()];
        assert!(connector_from_wire(&bad).is_err());
    }
}
