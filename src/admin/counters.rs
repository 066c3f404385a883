//! `moat admin counters`: the counters edges report.

use moat_proto::ReadKind;
use serde_json::{json, Value};

use super::render::cell;
use super::{Ctx, ListCmd};
use crate::client::Failure;

impl Ctx {
    pub(super) async fn counters(&self, cmd: ListCmd) -> Result<(), Failure> {
        let ListCmd::List { tenant } = cmd;
        self.list_pages(
            ReadKind::Counters,
            tenant.as_deref(),
            COUNTER_HEADERS,
            |reply| {
                let rows = reply.counters.iter().map(counter_row).collect();
                let objects = reply.counters.iter().map(counter_json).collect();
                (rows, objects)
            },
        )
        .await?;
        Ok(())
    }
}

pub(super) const COUNTER_HEADERS: &[&str] = &["SCOPE", "KEY", "NAME", "TOTAL", "LAST-MINUTE"];

pub(super) fn counter_row(c: &moat_proto::CounterTotal) -> Vec<String> {
    vec![
        cell(&c.scope),
        cell(&c.key),
        cell(&c.name),
        c.total.to_string(),
        c.last_minute.to_string(),
    ]
}

pub(super) fn counter_json(c: &moat_proto::CounterTotal) -> Value {
    json!({
        "scope": c.scope,
        "key": c.key,
        "name": c.name,
        "total": c.total,
        "last-minute": c.last_minute,
    })
}
