//! The directory's reads: tenants (whose domains and transport config come with them),
//! connectors, users and admin tokens, each paged in its map's key order; a tenant-scoped read
//! of tenants or connectors reads that tenant's run of the map only.

use std::ops::Bound;

use moat_proto::convert::{connector_to_wire, tenant_to_wire};
use moat_proto::v1;
use moat_shared::{ConnectorId, TenantId};

use super::super::paging::{page, range_after, range_from, text_key};
use super::{Query, Rendered};

/// Tenants (for the tenant, domain and transport config kinds), keyed by tenant id.
pub(super) fn tenants(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds, scope) = (q.state, q.r, q.bounds, &q.scope);
    let from = text_key(bounds.after, |k| TenantId::new(k).ok())?;
    let start = from
        .map(Bound::Excluded)
        .or(scope.clone().map(Bound::Included));
    let items = range_from(&state.directory.tenants, start)
        .skip_while(|(id, _)| scope.as_ref().is_some_and(|t| id != &t))
        .take_while(|(id, _)| scope.as_ref().is_none_or(|t| id == &t))
        .filter(|(id, _)| q.tenant_ok(id) && (r.name.is_empty() || id.as_str() == r.name))
        .map(|(id, t)| (id.as_str().as_bytes().to_vec(), tenant_to_wire(t)));
    let next;
    (reply.tenants, next) = page(items, bounds);
    Ok(next)
}

/// Connectors, keyed by connector id (`tenant/name`).
pub(super) fn connectors(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds, scope) = (q.state, q.r, q.bounds, &q.scope);
    let from = text_key(bounds.after, |k| ConnectorId::parse(k).ok())?;
    // A tenant's connectors are one run of the map (ids order as `tenant/name`), which
    // starts at the tenant with an empty name.
    let start = from.map(Bound::Excluded).or(scope
        .as_ref()
        .map(|t| Bound::Included(ConnectorId::new(t.clone(), ""))));
    let items = range_from(state.directory.connectors(), start)
        .skip_while(|(id, _)| scope.as_ref().is_some_and(|t| id.tenant != *t))
        .take_while(|(id, _)| scope.as_ref().is_none_or(|t| id.tenant == *t))
        .filter(|(_, c)| q.tenant_ok(&c.tenant) && (r.name.is_empty() || c.name == r.name))
        .map(|(id, c)| (id.to_string().into_bytes(), connector_to_wire(c)));
    let next;
    (reply.connectors, next) = page(items, bounds);
    Ok(next)
}

/// Users, keyed by address.
pub(super) fn users(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, r, bounds) = (q.state, q.r, q.bounds);
    let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
    let items = range_after(&state.directory.users, from)
        .filter(|(_, u)| q.tenant_ok(&u.tenant) && (r.name.is_empty() || u.address == r.name))
        .map(|(k, u)| {
            let user = v1::User {
                tenant: u.tenant.to_string(),
                address: u.address.clone(),
                send_as: u.send_as.clone(),
            };
            (k.as_bytes().to_vec(), user)
        });
    let next;
    (reply.users, next) = page(items, bounds);
    Ok(next)
}

/// Admin tokens, keyed by id: who holds which role, never the secret.
pub(super) fn tokens(q: &Query<'_>, reply: &mut v1::ReadReply) -> Rendered {
    let (state, bounds) = (q.state, q.bounds);
    let from = text_key(bounds.after, |k| Some(k.to_owned()))?;
    let items = range_after(&state.tokens.records, from).map(|(k, t)| {
        let token = v1::Token {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.as_str().into(),
            tenant: t.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
            created_ms: t.created_ms,
        };
        (k.as_bytes().to_vec(), token)
    });
    let next;
    (reply.tokens, next) = page(items, bounds);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::super::{read_reply, Bounds, State, PAGE_BYTES};
    use super::*;
    use moat_shared::{Domain, Tenant};

    fn put(state: &mut State, id: &str) {
        let id = TenantId::new(id).expect("valid tenant");
        let tenant = Tenant {
            accepted_domains: vec![Domain::new(id.as_str()).expect("valid domain")],
            display_name: id.to_string(),
            id: id.clone(),
            allow_legacy_tls_clients: false,
        };
        state.directory.tenants.insert(id, tenant);
    }

    /// Reads every page of tenants with `limit`, running `between` after each page.
    fn all_pages(
        state: &mut State,
        limit: u32,
        budget: usize,
        mut between: impl FnMut(&mut State, usize),
    ) -> Vec<String> {
        let mut seen = Vec::new();
        let mut token = String::new();
        for n in 0.. {
            let r = v1::ReadRequest {
                limit,
                page_token: token.clone(),
                ..v1::ReadRequest::of(v1::ReadKind::Tenant)
            };
            let after =
                moat_proto::paging::decode_page_token(v1::ReadKind::Tenant, &token).expect("token");
            let bounds = Bounds {
                after: after.as_deref(),
                limit: limit as usize,
                budget,
            };
            let reply = read_reply(state, &r, v1::ReadKind::Tenant, bounds).expect("read");
            assert!(limit == 0 || reply.tenants.len() <= limit as usize);
            seen.extend(reply.tenants.into_iter().map(|t| t.id));
            if reply.next_page_token.is_empty() {
                break;
            }
            token = reply.next_page_token;
            between(state, n);
        }
        seen
    }

    #[test]
    fn pages_cover_every_tenant_once_in_key_order() {
        let mut state = State::default();
        for i in 0..95 {
            put(&mut state, &format!("t{i:03}.test"));
        }
        let seen = all_pages(&mut state, 10, PAGE_BYTES, |_, _| {});
        let want: Vec<String> = state
            .directory
            .tenants
            .keys()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(seen, want);
        assert_eq!(all_pages(&mut state, 0, PAGE_BYTES, |_, _| {}), want);
    }

    #[test]
    fn pages_resume_by_key_while_others_come_and_go() {
        let mut state = State::default();
        for i in 0..100 {
            put(&mut state, &format!("keep{i:03}.test"));
        }
        let seen = all_pages(&mut state, 7, PAGE_BYTES, |s, n| {
            // Tenants before and after the cursor appear and disappear between pages.
            put(s, &format!("a{n}.test"));
            put(s, &format!("zz{n}.test"));
            s.directory
                .tenants
                .remove(&TenantId::new(&format!("a{}.test", n.saturating_sub(1))).expect("id"));
        });
        let kept: Vec<&String> = seen.iter().filter(|t| t.starts_with("keep")).collect();
        assert_eq!(kept.len(), 100, "every tenant that stayed appears once");
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup, seen, "nothing repeats");
    }

    #[test]
    fn a_reply_without_a_limit_stops_at_the_byte_budget() {
        let mut state = State::default();
        for i in 0..50 {
            put(&mut state, &format!("t{i:03}.test"));
        }
        let one = tenant_to_wire(state.directory.tenants.values().next().expect("one"));
        let budget = 10 * (prost::Message::encoded_len(&one) + 8);
        let seen = all_pages(&mut state, 0, budget, |_, _| {});
        assert_eq!(
            seen.len(),
            50,
            "the client that follows tokens still sees all"
        );
        let bounds = Bounds {
            after: None,
            limit: 0,
            budget,
        };
        let r = v1::ReadRequest::of(v1::ReadKind::Tenant);
        let reply = read_reply(&state, &r, v1::ReadKind::Tenant, bounds).expect("read");
        assert_eq!(reply.tenants.len(), 10);
        assert!(!reply.next_page_token.is_empty());
    }

    #[test]
    fn a_tenant_scoped_read_gets_exactly_that_tenants_objects_page_by_page() {
        let mut state = State::default();
        // `a-b` and `a.b` sort around `a`'s connectors as text (`a-b/`, `a.b/`, `a/`, `ab/`).
        for tenant in ["a", "a-b", "a.b", "ab", "b"] {
            put(&mut state, &format!("{tenant}.test"));
            for n in 0..12 {
                let c = moat_shared::Connector::new(
                    TenantId::new(&format!("{tenant}.test")).expect("id"),
                    format!("c{n:02}"),
                    moat_shared::ConnectorKind::OnPremises,
                );
                state.directory.insert_connector_unchecked(c);
            }
        }
        for tenant in ["a.test", "a-b.test", "ab.test", "b.test"] {
            let (mut seen, mut token) = (Vec::new(), String::new());
            loop {
                let r = v1::ReadRequest {
                    tenant: tenant.into(),
                    limit: 5,
                    page_token: token.clone(),
                    ..v1::ReadRequest::of(v1::ReadKind::Connector)
                };
                let after = moat_proto::paging::decode_page_token(v1::ReadKind::Connector, &token)
                    .expect("token");
                let bounds = Bounds {
                    after: after.as_deref(),
                    limit: 5,
                    budget: PAGE_BYTES,
                };
                let reply = read_reply(&state, &r, v1::ReadKind::Connector, bounds).expect("read");
                seen.extend(reply.connectors.into_iter().map(|c| (c.tenant, c.name)));
                if reply.next_page_token.is_empty() {
                    break;
                }
                token = reply.next_page_token;
            }
            let want: Vec<(String, String)> = (0..12)
                .map(|n| (tenant.to_owned(), format!("c{n:02}")))
                .collect();
            assert_eq!(seen, want, "{tenant}");
            let r = v1::ReadRequest {
                tenant: tenant.into(),
                ..v1::ReadRequest::of(v1::ReadKind::Tenant)
            };
            let bounds = Bounds {
                after: None,
                limit: 0,
                budget: PAGE_BYTES,
            };
            let reply = read_reply(&state, &r, v1::ReadKind::Tenant, bounds).expect("read");
            let ids: Vec<String> = reply.tenants.into_iter().map(|t| t.id).collect();
            assert_eq!(ids, [tenant], "{tenant}");
        }
    }

    #[test]
    fn a_token_for_another_kind_is_refused() {
        let token = moat_proto::paging::encode_page_token(v1::ReadKind::Tenant, b"a.test");
        let e = moat_proto::paging::decode_page_token(v1::ReadKind::User, &token);
        assert!(e.is_err());
        let state = State::default();
        let bounds = Bounds {
            after: Some(b"not a connector"),
            limit: 0,
            budget: PAGE_BYTES,
        };
        let r = v1::ReadRequest::of(v1::ReadKind::Connector);
        let e = read_reply(&state, &r, v1::ReadKind::Connector, bounds).expect_err("bad key");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
