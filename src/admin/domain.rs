//! `moat admin domain`: the accepted domains of tenants.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::json;

use super::render::cell;
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum DomainCmd {
    /// List accepted domains.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Add an accepted domain to a tenant.
    Add {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The domain.
        domain: String,
    },
    /// Remove an accepted domain from a tenant.
    Remove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The domain.
        domain: String,
    },
}

impl Ctx {
    pub(super) async fn domain(&self, cmd: DomainCmd) -> Result<(), Failure> {
        match cmd {
            DomainCmd::List { tenant } => {
                self.list_pages(
                    ReadKind::Domain,
                    tenant.as_deref(),
                    &["DOMAIN", "TENANT"],
                    |reply| {
                        let pairs: Vec<(&str, &str)> = reply
                            .tenants
                            .iter()
                            .flat_map(|t| {
                                t.accepted_domains
                                    .iter()
                                    .map(move |d| (d.as_str(), t.id.as_str()))
                            })
                            .collect();
                        let rows = pairs.iter().map(|(d, t)| vec![cell(d), cell(t)]).collect();
                        let objects = pairs
                            .iter()
                            .map(|(d, t)| json!({"domain": d, "tenant": t}))
                            .collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            DomainCmd::Add { tenant, domain } => {
                self.write(Op::AddDomain(moat_proto::DomainRef { tenant, domain }))
                    .await
            }
            DomainCmd::Remove { tenant, domain } => {
                self.write(Op::RemoveDomain(moat_proto::DomainRef { tenant, domain }))
                    .await
            }
        }
    }
}
