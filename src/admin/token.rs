//! `moat admin token`: admin tokens and their roles; a new secret is shown once.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use moat_shared::Role;
use serde_json::json;

use super::render::{cell, fmt_time, out, print_json};
use super::{Ctx, Output};
use crate::client::Failure;

/// A token role on the command line: [`Role`] (defined once, in `moat-shared`) as a clap
/// value, named and explained by the role itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct RoleArg(Role);

/// Every role, in the order `moat-shared` lists them.
static ROLES: [RoleArg; 3] = [
    RoleArg(Role::ALL[0]),
    RoleArg(Role::ALL[1]),
    RoleArg(Role::ALL[2]),
];

impl clap::ValueEnum for RoleArg {
    fn value_variants<'a>() -> &'a [Self] {
        &ROLES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.as_str()).help(self.0.help()))
    }
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum TokenCmd {
    /// List tokens (never their secrets).
    List,
    /// Create a token; its secret is shown once.
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The tenant of a tenant-admin token.
        #[arg(long, required_if_eq("role", "tenant-admin"))]
        tenant: Option<String>,
        /// A label for audit records.
        #[arg(long)]
        name: String,
    },
    /// Revoke a token.
    Revoke {
        /// Token id.
        id: String,
    },
}

impl Ctx {
    pub(super) async fn token(&self, cmd: TokenCmd) -> Result<(), Failure> {
        match cmd {
            TokenCmd::List => {
                self.list_pages(
                    ReadKind::Token,
                    None,
                    &["ID", "NAME", "ROLE", "TENANT", "CREATED"],
                    |reply| {
                        let rows = reply
                            .tokens
                            .iter()
                            .map(|t| {
                                vec![
                                    cell(&t.id),
                                    cell(&t.name),
                                    cell(&t.role),
                                    cell(&t.tenant),
                                    fmt_time(t.created_ms),
                                ]
                            })
                            .collect();
                        let objects = reply
                    .tokens
                    .iter()
                    .map(|t| {
                        json!({"id": t.id, "name": t.name, "role": t.role, "tenant": t.tenant,
                            "created-ms": t.created_ms})
                    })
                    .collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            TokenCmd::Create { role, tenant, name } => {
                let op = Op::CreateToken(moat_proto::TokenSpec {
                    role: role.0.as_str().to_string(),
                    tenant: tenant.unwrap_or_default(),
                    name,
                });
                let reply = self.client.write(op).await?;
                match self.output {
                    Output::Json => print_json(&json!({
                        "index": reply.index,
                        "summary": reply.summary,
                        "secret": reply.secret,
                    })),
                    Output::Table => {
                        // The secret alone on stdout, so `$(moat admin token create ...)` works.
                        eprintln!("{}", reply.summary);
                        out(&reply.secret);
                        eprintln!("Save this token now: it will not be shown again.");
                    }
                }
                Ok(())
            }
            TokenCmd::Revoke { id } => self.write(Op::RevokeToken(id)).await,
        }
    }
}
