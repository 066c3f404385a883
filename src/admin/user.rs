//! `moat admin user`: SMTP AUTH (submission) users.

use moat_proto::write_request::Op;
use moat_proto::ReadKind;
use serde_json::json;

use super::render::{cell, list_cell};
use super::Ctx;
use crate::client::Failure;

#[derive(clap::Subcommand, Debug)]
pub(super) enum UserCmd {
    /// List users.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Create or replace a user.
    #[command(group(clap::ArgGroup::new("pw").required(true).args(["password", "password_stdin"])))]
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The login and default sending address.
        address: String,
        /// The password (visible to other local users; prefer --password-stdin).
        #[arg(long, value_name = "P")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// A further address the user may send as; repeat for more.
        #[arg(long = "send-as", value_name = "A")]
        send_as: Vec<String>,
    },
    /// Delete a user.
    Delete {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The user's address.
        address: String,
    },
}

impl Ctx {
    pub(super) async fn user(&self, cmd: UserCmd, input: Option<String>) -> Result<(), Failure> {
        match cmd {
            UserCmd::List { tenant } => {
                self.list_pages(
                    ReadKind::User,
                    tenant.as_deref(),
                    &["TENANT", "ADDRESS", "SEND-AS"],
                    |reply| {
                        let rows = reply
                            .users
                            .iter()
                            .map(|u| vec![cell(&u.tenant), cell(&u.address), list_cell(&u.send_as)])
                            .collect();
                        let objects = reply
                    .users
                    .iter()
                    .map(
                        |u| json!({"tenant": u.tenant, "address": u.address, "send-as": u.send_as}),
                    )
                    .collect();
                        (rows, objects)
                    },
                )
                .await?;
                Ok(())
            }
            UserCmd::Create {
                tenant,
                address,
                password,
                password_stdin: _,
                send_as,
            } => {
                let password = password.or(input).unwrap_or_default();
                self.write(Op::PutUser(moat_proto::UserSpec {
                    tenant,
                    address,
                    password,
                    send_as,
                }))
                .await
            }
            UserCmd::Delete { tenant, address } => {
                self.write(Op::DeleteUser(moat_proto::NameRef {
                    tenant,
                    name: address,
                }))
                .await
            }
        }
    }
}
