//! `moat admin tenant`: list, show, create and delete tenants.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use moat_proto::Tenant;
use serde_json::{json, Value};

use super::render::{cell, list_cell};
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum TenantCmd {
    /// List tenants.
    List,
    /// Show one tenant.
    Get {
        /// Tenant id.
        name: String,
    },
    /// Create or replace a tenant.
    Create {
        /// Tenant id.
        name: String,
        /// Display name (default: the id).
        #[arg(long)]
        display_name: Option<String>,
        /// An accepted domain; repeat for more.
        #[arg(long = "domain", value_name = "D")]
        domains: Vec<String>,
    },
    /// Delete a tenant.
    Delete {
        /// Tenant id.
        name: String,
    },
}

impl Ctx {
    pub(super) async fn tenant(&self, cmd: TenantCmd) -> Result<(), Failure> {
        match cmd {
            TenantCmd::List => {
                self.list_pages(ReadKind::Tenant, None, TENANT_HEADERS, |reply| {
                    let rows = reply.tenants.iter().map(tenant_row).collect();
                    let objects = reply.tenants.iter().map(tenant_json).collect();
                    (rows, objects)
                })
                .await?;
                Ok(())
            }
            TenantCmd::Get { name } => {
                let reply = self.read(ReadKind::Tenant, None, Some(&name)).await?;
                let t = find_tenant(&reply.tenants, &name)?;
                self.one(TENANT_HEADERS, tenant_row(t), tenant_json(t));
                Ok(())
            }
            TenantCmd::Create {
                name,
                display_name,
                domains,
            } => {
                let tenant = Tenant {
                    display_name: display_name.unwrap_or_else(|| name.clone()),
                    id: name,
                    accepted_domains: domains,
                    allow_legacy_tls_clients: false,
                };
                self.write(Op::PutTenant(tenant)).await
            }
            TenantCmd::Delete { name } => self.write(Op::DeleteTenant(name)).await,
        }
    }
}

pub(super) fn find_tenant<'a>(tenants: &'a [Tenant], name: &str) -> Result<&'a Tenant, Failure> {
    tenants
        .iter()
        .find(|t| t.id == name)
        .ok_or_else(|| Failure::Refused(format!("tenant {name:?} not found")))
}

pub(super) const TENANT_HEADERS: &[&str] = &[
    "NAME",
    "DISPLAY-NAME",
    "DOMAINS",
    "ALLOW-LEGACY-TLS-CLIENTS",
];

pub(super) fn tenant_row(t: &Tenant) -> Vec<String> {
    vec![
        cell(&t.id),
        cell(&t.display_name),
        list_cell(&t.accepted_domains),
        t.allow_legacy_tls_clients.to_string(),
    ]
}

pub(super) fn tenant_json(t: &Tenant) -> Value {
    json!({
        "id": t.id,
        "display-name": t.display_name,
        "accepted-domains": t.accepted_domains,
        "allow-legacy-tls-clients": t.allow_legacy_tls_clients,
    })
}
