//! The admin reads: a request's kind and tenant, narrowed to what the caller may see, run
//! against the state machine (after a read index confirms leadership, or at once on this
//! replica when stale reads are allowed) and rendered to proto by [`read_reply`]; and the
//! cluster view from what the node thread publishes.
//!
//! This module holds the entry points ([`read`], and [`cluster()`] from `cluster.rs`), the
//! dispatch from a kind to the reader of its concern, and what those readers share ([`Query`],
//! [`read_now`]). The readers, one module per concern, as `state/` is split:
//! - [`directory`]: tenants (and their domains and transport config), connectors, users,
//!   admin tokens.
//! - [`audit`]: the audit log, alerts and who they go to.
//! - [`restricted`]: what is blocked or held back and the signals behind it: restricted
//!   entities, the speed bump, detection settings, outbound policies, counters.
//! - [`onprem`]: on-premises Exchange servers, the stage policy, tenants' pauses.
//! - [`reports`]: the day-by-day reports: TLS usage, inbound, SMTP AUTH clients,
//!   non-accepted domains.
//! - [`cluster`](mod@cluster): what is the cluster's own rather than a tenant's: the cluster
//!   view and the TLS ticket keys.
//!
//! An explain read is answered by [`super::explain`]; a clock read by the header every reply
//! carries (the cluster's time and offset).

use moat_proto::v1;
use moat_shared::time::now_ms;
use moat_shared::TenantId;
use tokio::sync::oneshot;
use tonic::Status;

use super::authz::{authorize, read_scope, Action, Principal};
use super::paging::{Bounds, PAGE_BYTES};
use crate::raft::{Req, REQUEST_TIMEOUT};
use crate::service::Shared;
use crate::state::State;

mod audit;
mod cluster;
mod directory;
mod onprem;
mod reports;
mod restricted;

pub(crate) use cluster::cluster;

/// Carries out one admin read for `who`.
pub(crate) async fn read(
    shared: &Shared,
    who: &Principal,
    mut r: v1::ReadRequest,
) -> Result<v1::ReadReply, Status> {
    r.tenant = read_scope(who, &r.tenant);
    // Authorization comes first, as before kinds were an enum: a tenant admin asking another
    // tenant for an unknown kind hears about the tenant.
    let kind = r.requested_kind();
    authorize(
        who,
        &Action::Read {
            tenant: &r.tenant,
            kind: kind.unwrap_or(v1::ReadKind::Unspecified),
        },
    )?;
    let Some(kind) = kind else {
        let kinds: Vec<String> = v1::ReadKind::all().map(v1::ReadKind::name).collect();
        return Err(Status::invalid_argument(format!(
            "`{}` is not a kind to read ({})",
            r.kind,
            kinds.join(", ")
        )));
    };
    let after = moat_proto::paging::decode_page_token(kind, &r.page_token)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let stale = r.stale_ok;
    shared.send(Req::Read(
        stale,
        Box::new(move |state| {
            let bounds = Bounds {
                after: after.as_deref(),
                limit: r.limit as usize,
                budget: PAGE_BYTES,
            };
            let _ = tx.send(read_reply(state, &r, kind, bounds));
        }),
    ));
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        _ => Err(Status::unavailable(
            "no leader confirmed this read in time; retry, or pass --stale-ok for this replica's view",
        )),
    }
}

/// Now on the cluster clock as a reader sees it: the wall clock plus the committed offset, and
/// never before the last applied entry.
fn read_now(state: &State) -> i64 {
    state
        .now_ms
        .max(now_ms().saturating_add(state.clock_offset_ms))
}

/// One read as each concern's reader sees it: the state, the request (its tenant already
/// narrowed to the caller's), the page it may fill and the one tenant it is scoped to.
struct Query<'a> {
    state: &'a State,
    r: &'a v1::ReadRequest,
    bounds: Bounds<'a>,
    /// The one tenant a scoped read asks for, when its text is a tenant id as written: maps
    /// keyed by tenant are then read from that tenant's entries only, not scanned whole.
    scope: Option<TenantId>,
}

impl Query<'_> {
    /// Whether an object of tenant `t` is in this read (an unscoped read takes every tenant).
    fn tenant_ok(&self, t: &TenantId) -> bool {
        self.r.tenant.is_empty() || t.as_str() == self.r.tenant
    }
}

/// What a concern's reader returns once it has filled its part of the reply: the page key the
/// next page resumes after, when more remain, or why the read is refused.
type Rendered = Result<Option<Vec<u8>>, Status>;

/// Renders the objects a read asks for, filtered by its tenant and name: of a list, the page
/// `bounds` allow (see [`super::paging`]), with the token of the next when more remain. The
/// lists paged are those that grow with the estate; the TLS report (two lists, bounded by its
/// days), the speed bump and detection settings and the on-premises settings come whole.
fn read_reply(
    state: &State,
    r: &v1::ReadRequest,
    kind: v1::ReadKind,
    bounds: Bounds<'_>,
) -> Result<v1::ReadReply, Status> {
    let mut reply = v1::ReadReply {
        applied_index: state.applied,
        cluster_now_ms: read_now(state),
        clock_offset_ms: state.clock_offset_ms,
        ..Default::default()
    };
    let scope = TenantId::new(&r.tenant)
        .ok()
        .filter(|t| !r.tenant.is_empty() && t.as_str() == r.tenant);
    let q = Query {
        state,
        r,
        bounds,
        scope,
    };
    let out = &mut reply;
    use v1::ReadKind as K;
    let next = match kind {
        K::Tenant | K::Domain | K::TransportConfig => directory::tenants(&q, out),
        K::Connector => directory::connectors(&q, out),
        K::User => directory::users(&q, out),
        K::Token => directory::tokens(&q, out),
        K::Audit => audit::audit(&q, out),
        K::Restricted => restricted::restricted(&q, out),
        K::SpeedBump => restricted::speed_bump(&q, out),
        K::Detection => restricted::detection(&q, out),
        K::OutboundPolicy => restricted::outbound(&q, out),
        K::Alerts => audit::alerts(&q, out),
        K::OnpremServers => onprem::servers(&q, out),
        K::OnpremPolicy => onprem::policy(&q, out),
        K::OnpremPauses => onprem::pauses(&q, out),
        // The reply's header is the answer: the cluster's time and its offset.
        K::Clock => Ok(None),
        K::TicketKeys => cluster::ticket_keys(&q, out),
        K::Explain => {
            let asked = r.explain.clone().unwrap_or_default();
            out.explain_policy = Some(super::explain::policy(state, &asked, &r.tenant)?);
            Ok(None)
        }
        K::AlertContacts => audit::alert_contacts(&q, out),
        K::TlsReport => reports::tls(&q, out),
        K::InboundReport => reports::inbound(&q, out),
        K::AuthClientsReport => reports::auth_clients(&q, out),
        K::NonAcceptedDomainsReport => reports::non_accepted_domains(&q, out),
        K::Counters => restricted::counters(&q, out),
        K::Unspecified => Ok(None),
    }?;
    if let Some(key) = next {
        reply.next_page_token = moat_proto::paging::encode_page_token(kind, &key);
    }
    Ok(reply)
}
