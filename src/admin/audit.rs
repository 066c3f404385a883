//! `moat admin audit`: the audit log of admin changes.

use moat_proto::ReadKind;
use serde_json::{json, Value};

use super::render::{cell, fmt_time};
use super::{Ctx, ListCmd};
use crate::client::Failure;

impl Ctx {
    pub(super) async fn audit(&self, cmd: ListCmd) -> Result<(), Failure> {
        let ListCmd::List { tenant } = cmd;
        self.list_pages(ReadKind::Audit, tenant.as_deref(), AUDIT_HEADERS, |reply| {
            let rows = reply.audit.iter().map(audit_row).collect();
            let objects = reply.audit.iter().map(audit_json).collect();
            (rows, objects)
        })
        .await?;
        Ok(())
    }
}

pub(super) const AUDIT_HEADERS: &[&str] = &["INDEX", "TIME", "ACTOR", "TENANT", "ACTION"];

pub(super) fn audit_row(a: &moat_proto::AuditRecord) -> Vec<String> {
    vec![
        a.index.to_string(),
        fmt_time(a.at_ms),
        cell(&a.actor),
        cell(&a.tenant),
        cell(&a.action),
    ]
}

pub(super) fn audit_json(a: &moat_proto::AuditRecord) -> Value {
    json!({
        "index": a.index,
        "at-ms": a.at_ms,
        "actor": a.actor,
        "action": a.action,
        "tenant": a.tenant,
    })
}
