//! `moat admin transport-config`: per-tenant transport settings (legacy TLS clients).

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::json;

use super::render::cell;
use super::tenant::find_tenant;
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum TransportConfigCmd {
    /// Show a tenant's transport settings.
    Get {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Change a tenant's transport settings.
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// May the tenant's users submit over TLS 1.0/1.1.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        allow_legacy_tls_clients: bool,
    },
}

impl Ctx {
    pub(super) async fn transport_config(&self, cmd: TransportConfigCmd) -> Result<(), Failure> {
        match cmd {
            TransportConfigCmd::Get { tenant } => {
                let reply = self
                    .read(ReadKind::TransportConfig, Some(&tenant), None)
                    .await?;
                let t = find_tenant(&reply.tenants, &tenant)?;
                self.one(
                    &["TENANT", "ALLOW-LEGACY-TLS-CLIENTS"],
                    vec![cell(&t.id), t.allow_legacy_tls_clients.to_string()],
                    json!({"tenant": t.id, "allow-legacy-tls-clients": t.allow_legacy_tls_clients}),
                );
                Ok(())
            }
            TransportConfigCmd::Set {
                tenant,
                allow_legacy_tls_clients,
            } => {
                self.write(Op::SetTransportConfig(moat_proto::TransportConfig {
                    tenant,
                    allow_legacy_tls_clients,
                }))
                .await
            }
        }
    }
}
