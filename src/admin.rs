//! `moat admin`: a kubectl-like client of the control plane's gRPC `Admin` service.
//!
//! Commands name a resource, then a verb (`moat admin connector list --tenant t`). Writes go
//! to the leader: a follower answers UNAVAILABLE with the leader's address in the
//! `moat-leader` metadata, and the request is sent there again with the same request id, so the
//! control plane applies it once however often it is retried. Without a hint, or when a node
//! cannot be reached, the next known endpoint is tried with a backoff, for about 15 seconds.
//!
//! Without `--endpoint`/`--token` the control plane is found through `DIR/endpoints.json`,
//! which `moat dev` writes.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_proto::admin_client::AdminClient;
use moat_proto::mtls::InternalTls;
use moat_proto::write_request::Op;
use moat_proto::{
    ClusterRequest, ClusterStatus, Connector, ConnectorKind, ReadReply, ReadRequest, Tenant,
    WriteReply, WriteRequest,
};
use serde_json::{json, Value};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long retries of one call may go on.
const RETRY_BUDGET: Duration = Duration::from_secs(15);
/// How long one attempt on one node may take before the next node is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// First pause between retries; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Leader hints followed in a row before backing off (hints can be stale during elections).
const MAX_REDIRECTS: u32 = 3;

const NO_CONTROL_PLANE: &str = "no control plane found: pass --endpoint and --token (or \
    MOAT_ENDPOINT/MOAT_TOKEN), or run it next to a 'moat dev' data directory \
    (DIR/endpoints.json)";

/// Options of `moat admin`.
///
/// Exit codes: 0 success; 1 the control plane refused the request (invalid, not found,
/// failed precondition, already exists); 2 usage error; 3 authentication or authorization
/// failed (check the token and its role); 4 the control plane was unreachable or unavailable
/// after retries; 5 anything else.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Control-plane address, `http://host:port` or `host:port`; several may be given
    /// separated by commas [env: MOAT_ENDPOINT].
    #[arg(long, global = true, value_name = "URL")]
    endpoint: Option<String>,
    /// Admin token [env: MOAT_TOKEN].
    #[arg(long, global = true, value_name = "T")]
    token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
    /// Serve reads from the contacted node without a ReadIndex round (may be stale).
    #[arg(long, global = true)]
    stale_ok: bool,
    /// The cluster's internal CA (PEM) [env: MOAT_TLS_CA]. Control nodes refuse admin calls
    /// without mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// An admin certificate (common name `moat-admin`) [env: MOAT_TLS_CERT].
    #[arg(long, global = true, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Its private key [env: MOAT_TLS_KEY].
    #[arg(long, global = true, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// A `moat dev` data directory whose `endpoints.json` names the control plane.
    #[arg(long, global = true, value_name = "DIR", default_value = "./moat-data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Resource,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

#[derive(clap::Subcommand, Debug)]
enum Resource {
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Accepted domains of tenants.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Inbound connectors.
    #[command(subcommand)]
    Connector(ConnectorCmd),
    /// Submission users.
    #[command(subcommand)]
    User(UserCmd),
    /// Per-tenant transport settings.
    #[command(subcommand)]
    TransportConfig(TransportConfigCmd),
    /// Admin tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit log of admin changes.
    #[command(subcommand)]
    Audit(ListCmd),
    /// Counters reported by edges.
    #[command(subcommand)]
    Counters(ListCmd),
    /// Connectors and users blocked by the control plane.
    #[command(subcommand)]
    Restricted(RestrictedCmd),
    /// Legacy TLS (1.0/1.1) controls.
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Reports built from what edges observed.
    #[command(subcommand)]
    Report(ReportCmd),
    /// Alerts raised for tenants' admins, where they go and how they are sent.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// Per-tenant sending limits of SMTP AUTH users.
    #[command(subcommand)]
    OutboundPolicy(OutboundPolicyCmd),
    /// How the control plane judges connectors (suspicious-activity detection).
    #[command(subcommand)]
    Detection(DetectionCmd),
    /// Out-of-date on-premises Exchange servers: baseline, stages, pauses.
    #[command(subcommand)]
    Onprem(OnpremCmd),
    /// Control-plane membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Development aids of a `moat dev` cluster (refused by production clusters).
    #[command(subcommand)]
    Dev(DevCmd),
    /// Apply a seed file (the TOML format of `moat dev` / `moat control --seed`).
    Apply {
        /// The seed file; `-` reads standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TenantCmd {
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

#[derive(clap::Subcommand, Debug)]
enum DomainCmd {
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectorType {
    /// Mail from a partner organization.
    Partner,
    /// Mail from the tenant's own servers.
    OnPremises,
}

#[derive(clap::Subcommand, Debug)]
enum ConnectorCmd {
    /// List connectors.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one connector.
    Get {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Connector name.
        name: String,
    },
    /// Create or replace a connector.
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Connector name.
        name: String,
        /// Connector type.
        #[arg(long = "type", value_enum)]
        kind: ConnectorType,
        /// A sender IP address or CIDR range; repeat for more.
        #[arg(long = "sender-ip", value_name = "CIDR")]
        sender_ips: Vec<String>,
        /// Certificate subject domain the sender must present (exact or `*.domain`).
        #[arg(long, value_name = "NAME")]
        tls_cert_name: Option<String>,
        /// A sender domain; repeat for more.
        #[arg(long = "sender-domain", value_name = "D")]
        sender_domains: Vec<String>,
        /// Require TLS.
        #[arg(long)]
        require_tls: bool,
        /// Only accept the sender domains from the sender IP addresses.
        #[arg(long)]
        restrict_domains_to_ip: bool,
        /// Only accept the sender domains with the TLS certificate name.
        #[arg(long)]
        restrict_domains_to_cert: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a connector.
    Delete {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Connector name.
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum UserCmd {
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

#[derive(clap::Subcommand, Debug)]
enum TransportConfigCmd {
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Everything.
    Operator,
    /// Read and change one tenant's objects.
    TenantAdmin,
    /// Read everything, change nothing.
    Reader,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::TenantAdmin => "tenant-admin",
            Self::Reader => "reader",
        }
    }
}

#[derive(clap::Subcommand, Debug)]
enum TokenCmd {
    /// List tokens (never their secrets).
    List,
    /// Create a token; its secret is shown once.
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: Role,
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

#[derive(clap::Subcommand, Debug)]
enum ListCmd {
    /// List them.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum RestrictedCmd {
    /// List blocked connectors and users.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Lift the block on a user or connector.
    Unblock {
        /// The user's address or the connector's name.
        name: String,
        /// The tenant (default: looked up among the restricted entities).
        #[arg(long)]
        tenant: Option<String>,
        /// What is blocked.
        #[arg(long, default_value = "user", value_parser = ["user", "connector"])]
        kind: String,
        /// Why the block is lifted (kept in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TlsCmd {
    /// The speed bump: from given dates on, refuse a share of TLS 1.0/1.1 sessions.
    #[command(subcommand)]
    SpeedBump(SpeedBumpCmd),
}

#[derive(clap::Subcommand, Debug)]
enum SpeedBumpCmd {
    /// Show the schedule.
    Get,
    /// Replace the schedule.
    Set {
        /// A step `YYYY-MM-DD=PERCENT` (UTC; e.g. `2026-12-01=30` or `2026-12-01=30%`): from
        /// that day on, that share of legacy sessions is refused; repeat for more.
        #[arg(required = true, value_name = "STEP")]
        steps: Vec<String>,
    },
    /// Remove the schedule (no legacy session is refused for it).
    Clear,
}

#[derive(clap::Subcommand, Debug)]
enum ReportCmd {
    /// TLS versions and ciphers in use, and the clients still on TLS 1.0/1.1.
    Tls {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// How many days back, today included.
        #[arg(long, value_name = "N", default_value_t = 7,
            value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// On-premises Exchange servers seen in connector mail: build, class, stage, next stage,
    /// recommended builds, pause state.
    OnpremServers {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum OnpremCmd {
    /// The baseline: the oldest acceptable build of each line.
    #[command(subcommand)]
    Baseline(BaselineCmd),
    /// The stage table and the service name in replies.
    #[command(subcommand)]
    Policy(OnpremPolicyCmd),
    /// Pause throttling and blocking of a tenant's servers (up to 90 days per calendar year,
    /// in one or more pauses); the servers resume at the stage they reached.
    Pause {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// How many days, from now.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=90))]
        days: u32,
        /// Why (kept in the audit log).
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// A tenant's pauses and what is left of this year's budget.
    Pauses {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum BaselineCmd {
    /// Show the baseline.
    Show,
    /// Replace the baseline (every known server is judged again at once).
    Set {
        /// Builds such as `15.1.2507.61` (short form) or `15.01.2507.061` (long form).
        #[arg(required = true, value_name = "BUILD")]
        builds: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum OnpremPolicyCmd {
    /// Show the stage table and the service name.
    Show,
    /// Change the stage table or the service name.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true)
        .args(["stages", "service_name", "scope"])))]
    Set {
        /// `FROM-DAY:THROTTLE:BLOCK,...` in stage order, e.g. the default
        /// `0:0:0,30:5:0,40:10:0,50:20:0,60:30:5,70:30:10,80:30:20,90:0:60`.
        #[arg(long, value_name = "TABLE")]
        stages: Option<String>,
        /// The service named in `4.7.230` / `5.7.230` replies.
        #[arg(long, value_name = "NAME")]
        service_name: Option<String>,
        /// Whose Received stamps are judged: mail through OnPremises connectors only, or
        /// through every connector.
        #[arg(long, value_parser = ["onpremises", "all-connectors"])]
        scope: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum DevCmd {
    /// The cluster clock, which a `moat dev` cluster lets you move ahead to try out
    /// day-based policies (the on-premises server life cycle).
    #[command(subcommand)]
    Clock(ClockCmd),
}

#[derive(clap::Subcommand, Debug)]
enum ClockCmd {
    /// Show the cluster clock and its offset from the wall clock.
    Show,
    /// Move the cluster clock forward (never back).
    #[command(group(clap::ArgGroup::new("when").required(true).args(["days", "at"])))]
    Set {
        /// Move it this many days ahead of where it is.
        #[arg(long, value_name = "N")]
        days: Option<u32>,
        /// Move it to this UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

/// The actions `outbound-policy set --action` accepts.
const OUTBOUND_ACTIONS: [&str; 3] = ["block-for-today", "block", "alert-only"];

#[derive(clap::Subcommand, Debug)]
enum OutboundPolicyCmd {
    /// Show tenants' sending limits.
    Get {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Change a tenant's sending limits; limits not given keep their current value, and 0
    /// restores the default.
    #[command(group(clap::ArgGroup::new("limits").required(true).multiple(true)
        .args(["recipients_per_hour", "recipients_per_day", "action"])))]
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Recipients a user may send to per hour (0: the default).
        #[arg(long, value_name = "N")]
        recipients_per_hour: Option<u32>,
        /// Recipients a user may send to per UTC day (0: the default).
        #[arg(long, value_name = "N")]
        recipients_per_day: Option<u32>,
        /// What happens to a user over a limit.
        #[arg(long, value_parser = OUTBOUND_ACTIONS)]
        action: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum AlertsCmd {
    /// List alerts with the state of their deliveries.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Where a tenant's alerts go.
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// How alert emails leave the cluster.
    #[command(subcommand)]
    Transport(TransportCmd),
}

#[derive(clap::Subcommand, Debug)]
enum ContactsCmd {
    /// Show tenants' alert contacts (webhook secrets are not shown).
    Get {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Replace a tenant's alert contacts.
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// An admin address that gets an email; repeat for more.
        #[arg(long = "email", value_name = "ADDRESS")]
        emails: Vec<String>,
        /// An http:// or https:// URL that gets a signed JSON POST (https: the system's CAs,
        /// or SSL_CERT_FILE on the control nodes).
        #[arg(long, value_name = "URL", requires = "webhook_secret")]
        webhook: Option<String>,
        /// The webhook's HMAC-SHA256 key (X-Moat-Signature).
        #[arg(long, value_name = "SECRET")]
        webhook_secret: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TransportCmd {
    /// Show the SMTP server alert emails go through.
    Get,
    /// Set the SMTP server alert emails go through (an edge, or a smarthost).
    Set {
        /// `host:port`.
        #[arg(long, value_name = "HOST:PORT")]
        smtp: String,
        /// The header From of alert emails.
        #[arg(long, default_value = "Moat alerts <alerts@moat.invalid>")]
        from: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum DetectionCmd {
    /// Show the default settings and tenants' own.
    Get {
        /// Only this tenant's (and the default).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Change the default settings, or a tenant's with --tenant; settings not given keep their
    /// current value.
    Set {
        /// The tenant; without it, the cluster default (operators only).
        #[arg(long)]
        tenant: Option<String>,
        /// Length of one window (e.g. 1h, 5m, 2s).
        #[arg(long, value_parser = moat_edge::config::parse_duration)]
        interval: Option<Duration>,
        /// Windows a new connector is observed before its volume is judged.
        #[arg(long, value_name = "N")]
        warmup: Option<u32>,
        /// A window with this many times the baseline is a spike.
        #[arg(long, value_name = "N")]
        spike_factor: Option<u32>,
        /// Fewest messages in a window for any detector to fire.
        #[arg(long, value_name = "N")]
        min_messages: Option<u64>,
        /// Percent of messages from domains the tenant does not own that is suspicious.
        #[arg(long, value_name = "PERCENT")]
        unprovisioned_percent: Option<u32>,
        /// Percent of messages whose header From differs from MAIL FROM that is suspicious.
        #[arg(long, value_name = "PERCENT")]
        mismatch_percent: Option<u32>,
        /// Percent of checked messages failing DMARC that is suspicious.
        #[arg(long, value_name = "PERCENT")]
        auth_fail_percent: Option<u32>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCmd {
    /// Show the contacted node's view of the cluster.
    Status,
    /// Add a control node (as a learner first, when the control plane does so).
    AddNode {
        /// Its raft id.
        id: u64,
        /// The address it serves gRPC on.
        address: String,
    },
    /// Remove a control node.
    RemoveNode {
        /// Its raft id.
        id: u64,
    },
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug)]
enum Failure {
    /// The control plane refused the request (exit 1).
    Refused(String),
    /// The command line is wrong in a way clap cannot tell (exit 2).
    Usage(String),
    /// Authentication or authorization failed (exit 3).
    Auth { message: String, hint: &'static str },
    /// No node could serve the request in time (exit 4).
    Unreachable(String),
    /// Anything else (exit 5).
    Other(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Self::Refused(_) => 1,
            Self::Usage(_) => 2,
            Self::Auth { .. } => 3,
            Self::Unreachable(_) => 4,
            Self::Other(_) => 5,
        }
    }

    fn report(&self) {
        match self {
            Self::Refused(m) | Self::Usage(m) | Self::Unreachable(m) | Self::Other(m) => {
                eprintln!("error: {m}")
            }
            Self::Auth { message, hint } => {
                eprintln!("error: {message}");
                eprintln!("hint: {hint}");
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) | Self::Usage(m) | Self::Unreachable(m) | Self::Other(m) => {
                f.write_str(m)
            }
            Self::Auth { message, hint } => write!(f, "{message} (hint: {hint})"),
        }
    }
}

const TOKEN_HINT: &str = "check --token (or MOAT_TOKEN, or the token in DIR/endpoints.json); \
    an operator can create one with `moat admin token create`";
const TLS_HINT: &str = "admin calls need mutual TLS: pass --tls-ca, --tls-cert and --tls-key (or \
    MOAT_TLS_CA, MOAT_TLS_CERT, MOAT_TLS_KEY) with a moat-admin certificate from the cluster's CA \
    (`moat cert issue --role admin`); `moat dev` lists its own in DIR/endpoints.json";
const ROLE_HINT: &str = "the token's role does not allow this: readers cannot change anything, \
    and tenant-admin tokens only reach their own tenant (pass --tenant)";

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let message = if s.message().is_empty() {
            format!("{:?}", s.code())
        } else {
            s.message().to_string()
        };
        match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists => Self::Refused(message),
            Code::Unauthenticated | Code::PermissionDenied
                if message.contains("certificate") || message.contains("TLS") =>
            {
                Self::Auth {
                    message,
                    hint: TLS_HINT,
                }
            }
            Code::Unauthenticated => Self::Auth {
                message,
                hint: TOKEN_HINT,
            },
            Code::PermissionDenied => Self::Auth {
                message,
                hint: ROLE_HINT,
            },
            Code::Unavailable => Self::Unreachable(message),
            // What a TLS server's first bytes look like to a plaintext HTTP/2 client.
            Code::Internal if message.contains("h2 protocol error") => Self::Auth {
                message: format!(
                    "the control node does not speak plaintext gRPC ({message}); it serves \
                     mutual TLS"
                ),
                hint: TLS_HINT,
            },
            code => Self::Other(format!("{code:?}: {message}")),
        }
    }
}

/// Runs one admin command; returns the process exit code.
pub async fn run(args: AdminArgs) -> i32 {
    match run_inner(args).await {
        Ok(()) => 0,
        Err(f) => {
            f.report();
            f.exit_code()
        }
    }
}

/// A control plane to call from inside Moat (`moat dev`'s set-up, `moat bench`): its
/// addresses (`https://host:port`, `http://host:port` or `host:port`), an operator token and
/// the admin TLS material.
#[derive(Clone, Debug)]
pub struct Target {
    /// Control-plane addresses.
    pub endpoints: Vec<String>,
    /// The bearer token.
    pub token: String,
    /// An admin certificate (`moat-admin`), the cluster's CA.
    pub tls: Option<InternalTls>,
}

impl Target {
    fn client(&self) -> Result<Client, String> {
        let mut urls = Vec::new();
        for e in &self.endpoints {
            push_unique(&mut urls, normalize_endpoint(e)?);
        }
        if urls.is_empty() {
            return Err("no control-plane endpoint to call".into());
        }
        Client::new(urls, &self.token, self.tls.clone()).map_err(|f| f.to_string())
    }
}

/// The control plane a `moat dev` data directory's `endpoints.json` names, with its token
/// and admin certificate (for `moat bench`).
pub fn dev_target(dir: &Path) -> Result<Target, String> {
    let found = read_discovery(dir)
        .map_err(|f| f.to_string())?
        .ok_or_else(|| format!("no control plane in {}/endpoints.json", dir.display()))?;
    let tls = match found.tls {
        Some((ca, cert, key)) => {
            Some(InternalTls::load(&ca, &cert, &key).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    Ok(Target {
        endpoints: found.endpoints,
        token: found.token.ok_or("no admin token in endpoints.json")?,
        tls,
    })
}

/// Creates or replaces an SMTP AUTH user, following the leader and retrying like `moat admin`
/// does (`moat dev` creates its demo user with it).
pub async fn put_user(
    target: &Target,
    tenant: &str,
    address: &str,
    password: &str,
) -> Result<(), String> {
    let op = Op::PutUser(moat_proto::UserSpec {
        tenant: tenant.to_string(),
        address: address.to_string(),
        password: password.to_string(),
        send_as: vec![],
    });
    write_op(target, op)
        .await
        .map_err(|e| format!("creating user {address} in tenant {tenant}: {e}"))
}

/// One admin write with the usual retries and leader-following (for `moat dev`'s set-up).
pub async fn write_op(target: &Target, op: Op) -> Result<(), String> {
    write_op_index(target, op).await.map(|_| ())
}

/// [`write_op`], returning the index the write was committed at.
pub async fn write_op_index(target: &Target, op: Op) -> Result<u64, String> {
    target
        .client()?
        .write(op)
        .await
        .map(|r| r.index)
        .map_err(|f| f.to_string())
}

/// One read from the control plane (following the leader), for `moat bench`.
pub async fn read_op(target: &Target, req: ReadRequest) -> Result<ReadReply, String> {
    target.client()?.read(req).await.map_err(|f| f.to_string())
}

async fn run_inner(args: AdminArgs) -> Result<(), Failure> {
    // Read and check local inputs before contacting anyone, so a bad file or argument fails
    // fast.
    check_local(&args.command)?;
    let input = local_input(&args.command)?;
    let (endpoints, token, tls) = resolve_target(&args)?;
    let client = Client::new(endpoints, &token, tls)?;
    let ctx = Ctx {
        client,
        output: args.output,
        stale_ok: args.stale_ok,
    };
    ctx.execute(args.command, input).await
}

/// Checks what clap cannot: arguments with a syntax of their own.
fn check_local(cmd: &Resource) -> Result<(), Failure> {
    if let Resource::Tls(TlsCmd::SpeedBump(SpeedBumpCmd::Set { steps })) = cmd {
        speed_bump_steps(steps)?;
    }
    Ok(())
}

/// Parses `YYYY-MM-DD=PERCENT` steps into the wire schedule, ordered by date.
fn speed_bump_steps(raw: &[String]) -> Result<Vec<moat_proto::SpeedBumpStep>, Failure> {
    let steps = raw
        .iter()
        .map(|text| {
            moat_shared::SpeedBumpStep::parse(text).map_err(|e| {
                Failure::Usage(format!(
                    "invalid speed-bump step `{text}`: {e} (expected YYYY-MM-DD=PERCENT, \
                     e.g. 2026-12-01=30)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let steps = moat_shared::submission::normalise_schedule(steps)
        .map_err(|e| Failure::Usage(format!("invalid speed-bump schedule: {e}")))?;
    Ok(steps
        .iter()
        .map(|s| moat_proto::SpeedBumpStep {
            date: day_string(s.day),
            percent: u32::from(s.percent),
        })
        .collect())
}

/// Reads what a command needs from files or standard input.
fn local_input(cmd: &Resource) -> Result<Option<String>, Failure> {
    match cmd {
        Resource::Apply { file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Failure::Other(format!("reading standard input: {e}")))?;
                s
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| Failure::Other(format!("reading {}: {e}", file.display())))?
            };
            Ok(Some(text))
        }
        Resource::User(UserCmd::Create {
            password_stdin: true,
            ..
        }) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| Failure::Other(format!("reading the password: {e}")))?;
            let pw = line.trim_end_matches(['\n', '\r']).to_string();
            if pw.is_empty() {
                return Err(Failure::Other(
                    "no password on standard input (--password-stdin)".into(),
                ));
            }
            Ok(Some(pw))
        }
        _ => Ok(None),
    }
}

/// Turns `host:port` into `http://host:port`; keeps an explicit scheme; drops trailing `/`.
fn normalize_endpoint(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err(format!("invalid endpoint {raw:?}: empty"));
    }
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    Endpoint::from_shared(url.clone()).map_err(|e| format!("invalid endpoint {raw:?}: {e}"))?;
    Ok(url)
}

/// Splits a comma-separated endpoint list and normalises each one.
fn parse_endpoint_list(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
        push_unique(&mut out, normalize_endpoint(part)?);
    }
    Ok(out)
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The `admin` part of `DIR/endpoints.json`.
#[derive(Debug, Default, PartialEq)]
struct Discovered {
    endpoints: Vec<String>,
    token: Option<String>,
    /// The admin certificate's files: (CA, certificate, key).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Extracts the admin endpoints and token from the text of `endpoints.json`.
fn parse_discovery(text: &str) -> Result<Option<Discovered>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(admin) = v.get("admin").filter(|a| a.is_object()) else {
        return Ok(None);
    };
    let mut found = Discovered::default();
    let first = admin.get("endpoint").and_then(Value::as_str);
    let rest = admin
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for e in first.into_iter().chain(rest) {
        push_unique(&mut found.endpoints, normalize_endpoint(e)?);
    }
    found.token = admin
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let file = |k: &str| {
        admin
            .get("tls")
            .and_then(|t| t.get(k))
            .and_then(Value::as_str)
            .map(PathBuf::from)
    };
    found.tls = match (file("ca"), file("cert"), file("key")) {
        (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        _ => None,
    };
    Ok(Some(found))
}

fn read_discovery(dir: &Path) -> Result<Option<Discovered>, Failure> {
    let path = dir.join("endpoints.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::Other(format!("reading {}: {e}", path.display()))),
    };
    parse_discovery(&text).map_err(|e| Failure::Other(format!("in {}: {e}", path.display())))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The endpoints to try, in order, and the token.
fn resolve_target(args: &AdminArgs) -> Result<(Vec<String>, String, Option<InternalTls>), Failure> {
    let explicit = args
        .endpoint
        .clone()
        .or_else(|| env_nonempty("MOAT_ENDPOINT"));
    let mut token = args.token.clone().or_else(|| env_nonempty("MOAT_TOKEN"));
    let path = |flag: &Option<PathBuf>, env: &str| {
        flag.clone()
            .or_else(|| env_nonempty(env).map(PathBuf::from))
    };
    let mut tls_files = match (
        path(&args.tls_ca, "MOAT_TLS_CA"),
        path(&args.tls_cert, "MOAT_TLS_CERT"),
        path(&args.tls_key, "MOAT_TLS_KEY"),
    ) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        _ => {
            return Err(Failure::Other(
                "--tls-ca, --tls-cert and --tls-key (or MOAT_TLS_CA, MOAT_TLS_CERT and \
                 MOAT_TLS_KEY) go together"
                    .into(),
            ))
        }
    };
    let mut endpoints = match &explicit {
        Some(raw) => parse_endpoint_list(raw).map_err(Failure::Other)?,
        None => Vec::new(),
    };
    if endpoints.is_empty() || token.is_none() {
        if let Some(found) = read_discovery(&args.data)? {
            // The dev token only goes to the dev cluster's own nodes.
            let same_cluster =
                endpoints.is_empty() || endpoints.iter().any(|e| found.endpoints.contains(e));
            if token.is_none() && same_cluster {
                token = found.token;
            }
            if tls_files.is_none() && same_cluster {
                tls_files = found.tls;
            }
            if endpoints.is_empty() {
                endpoints = found.endpoints;
            }
        }
    }
    if endpoints.is_empty() {
        return Err(Failure::Other(NO_CONTROL_PLANE.into()));
    }
    let Some(token) = token else {
        return Err(Failure::Auth {
            message: "no admin token: pass --token or set MOAT_TOKEN".into(),
            hint: TOKEN_HINT,
        });
    };
    let tls = match tls_files {
        Some((ca, cert, key)) => {
            let tls = InternalTls::load(&ca, &cert, &key).map_err(|e| Failure::Auth {
                message: e.to_string(),
                hint: TLS_HINT,
            })?;
            if tls.role() != moat_proto::mtls::Role::Admin {
                return Err(Failure::Auth {
                    message: format!(
                        "{} is a {} certificate; admin calls need a moat-admin one",
                        cert.display(),
                        tls.role()
                    ),
                    hint: TLS_HINT,
                });
            }
            Some(tls)
        }
        None => None,
    };
    Ok((endpoints, token, tls))
}

/// 16 random bytes, hex: the id that makes retried writes apply once.
fn new_request_id() -> String {
    random_hex(16)
}

/// `n` random bytes from the OS, hex (falls back to std's per-process random hasher keys).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !from_os {
        use std::hash::BuildHasher as _;
        let seed = (now_ms(), std::process::id());
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let h = state.hash_one((seed, i)).to_le_bytes();
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
    }
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Failures worth another attempt: the node is unavailable, or the call never got an answer.
fn retryable(s: &Status) -> bool {
    // Errors raised on this side (connect, timeout, broken connection) carry a source; statuses
    // a server sent do not.
    let local = std::error::Error::source(s).is_some();
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Cancelled | Code::Unknown => local,
        _ => false,
    }
}

/// The leader's address from a follower's UNAVAILABLE answer.
fn leader_hint(s: &Status) -> Option<String> {
    if s.code() != Code::Unavailable {
        return None;
    }
    let raw = s.metadata().get("moat-leader")?.to_str().ok()?;
    normalize_endpoint(raw).ok()
}

/// A connection-per-call gRPC client that follows the leader and retries.
struct Client {
    endpoints: Vec<String>,
    auth: MetadataValue<Ascii>,
    tls: Option<InternalTls>,
}

impl Client {
    fn new(endpoints: Vec<String>, token: &str, tls: Option<InternalTls>) -> Result<Self, Failure> {
        let auth = format!("Bearer {}", token.trim())
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| Failure::Auth {
                message: "the admin token contains characters not allowed in a header".into(),
                hint: TOKEN_HINT,
            })?;
        Ok(Self {
            endpoints,
            auth,
            tls,
        })
    }

    fn request<M>(&self, msg: M) -> tonic::Request<M> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        req
    }

    async fn connect(&self, url: &str) -> Result<AdminClient<Channel>, String> {
        let endpoint = moat_proto::mtls::endpoint(url, self.tls.as_ref())
            .map_err(|e| error_chain(&e))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        Ok(AdminClient::new(channel))
    }

    /// Calls `f` on a client of some node until it answers, following leader hints and
    /// cycling through the known endpoints with backoff for at most [`RETRY_BUDGET`].
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut backoff = BACKOFF_START;
        let mut next = 0usize;
        let mut target = self.endpoints.first().cloned().unwrap_or_default();
        let mut tried: Vec<String> = Vec::new();
        let mut redirects = 0u32;
        let mut last_error;
        loop {
            push_unique(&mut tried, target.clone());
            // One node may not take the whole budget: a frozen node accepts the TCP connection
            // and never answers. Retrying a write is safe (its request id makes it apply once).
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .min(ATTEMPT_TIMEOUT);
            let attempt = async {
                let client = self.connect(&target).await.map_err(Err)?;
                f(client).await.map_err(Ok)
            };
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(Ok(status))) => {
                    if let Some(leader) = leader_hint(&status) {
                        if leader != target && redirects < MAX_REDIRECTS {
                            redirects += 1;
                            target = leader;
                            continue;
                        }
                    }
                    if !retryable(&status) {
                        return Err(status.into());
                    }
                    last_error = format!("{target}: {}", status_text(&status));
                }
                Ok(Err(Err(connect_error))) => {
                    // A certificate the other side refuses stays refused: no retries.
                    if connect_error.contains("certificate") {
                        return Err(Failure::Auth {
                            message: format!("{target}: {connect_error}"),
                            hint: TLS_HINT,
                        });
                    }
                    last_error = format!("{target}: {connect_error}");
                }
                Err(_) => last_error = format!("{target}: timed out"),
            }
            if Instant::now() + backoff >= deadline {
                return Err(Failure::Unreachable(format!(
                    "control plane unavailable after {}s; tried {}; last error: {last_error}",
                    RETRY_BUDGET.as_secs(),
                    tried.join(", ")
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            redirects = 0;
            next = (next + 1) % self.endpoints.len().max(1);
            if let Some(e) = self.endpoints.get(next) {
                target = e.clone();
            }
        }
    }

    async fn write(&self, op: Op) -> Result<WriteReply, Failure> {
        let msg = WriteRequest {
            request_id: new_request_id(),
            op: Some(op),
        };
        self.call(|mut c| {
            let req = self.request(msg.clone());
            async move { c.write(req).await }
        })
        .await
    }

    async fn read(&self, msg: ReadRequest) -> Result<ReadReply, Failure> {
        self.call(|mut c| {
            let req = self.request(msg.clone());
            async move { c.read(req).await }
        })
        .await
    }

    async fn cluster(&self) -> Result<ClusterStatus, Failure> {
        self.call(|mut c| {
            let req = self.request(ClusterRequest {});
            async move { c.cluster(req).await }
        })
        .await
    }
}

fn status_text(s: &Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

struct Ctx {
    client: Client,
    output: Output,
    stale_ok: bool,
}

impl Ctx {
    fn read_req(&self, kind: &str, tenant: Option<&str>, name: Option<&str>) -> ReadRequest {
        ReadRequest {
            kind: kind.to_string(),
            tenant: tenant.unwrap_or_default().to_string(),
            name: name.unwrap_or_default().to_string(),
            stale_ok: self.stale_ok,
            days: 0,
        }
    }

    async fn read(
        &self,
        kind: &str,
        tenant: Option<&str>,
        name: Option<&str>,
    ) -> Result<ReadReply, Failure> {
        self.client.read(self.read_req(kind, tenant, name)).await
    }

    async fn write(&self, op: Op) -> Result<(), Failure> {
        let reply = self.client.write(op).await?;
        match self.output {
            Output::Json => print_json(&json!({"index": reply.index, "summary": reply.summary})),
            Output::Table => out(&reply.summary),
        }
        Ok(())
    }

    /// Prints a list as a table or a JSON array.
    fn list(&self, headers: &[&str], rows: Vec<Vec<String>>, objects: Vec<Value>) {
        match self.output {
            Output::Json => print_json(&Value::Array(objects)),
            Output::Table if rows.is_empty() => eprintln!("No resources found."),
            Output::Table => out(render_table(headers, &rows).trim_end()),
        }
    }

    /// Prints one object as a one-row table or a JSON object.
    fn one(&self, headers: &[&str], row: Vec<String>, object: Value) {
        match self.output {
            Output::Json => print_json(&object),
            Output::Table => out(render_table(headers, &[row]).trim_end()),
        }
    }

    async fn execute(&self, cmd: Resource, input: Option<String>) -> Result<(), Failure> {
        match cmd {
            Resource::Tenant(c) => self.tenant(c).await,
            Resource::Domain(c) => self.domain(c).await,
            Resource::Connector(c) => self.connector(c).await,
            Resource::User(c) => self.user(c, input).await,
            Resource::TransportConfig(c) => self.transport_config(c).await,
            Resource::Token(c) => self.token(c).await,
            Resource::Audit(ListCmd::List { tenant }) => {
                let reply = self.read("audit", tenant.as_deref(), None).await?;
                let rows = reply.audit.iter().map(audit_row).collect();
                let objects = reply.audit.iter().map(audit_json).collect();
                self.list(AUDIT_HEADERS, rows, objects);
                Ok(())
            }
            Resource::Counters(ListCmd::List { tenant }) => {
                let reply = self.read("counters", tenant.as_deref(), None).await?;
                let rows = reply.counters.iter().map(counter_row).collect();
                let objects = reply.counters.iter().map(counter_json).collect();
                self.list(COUNTER_HEADERS, rows, objects);
                Ok(())
            }
            Resource::Restricted(c) => self.restricted(c).await,
            Resource::Tls(TlsCmd::SpeedBump(c)) => self.speed_bump(c).await,
            Resource::Report(c) => self.report(c).await,
            Resource::Onprem(c) => self.onprem(c).await,
            Resource::Dev(c) => self.dev(c).await,
            Resource::Alerts(AlertsCmd::List { tenant }) => {
                let reply = self.read("alerts", tenant.as_deref(), None).await?;
                let rows = reply.alerts.iter().map(alert_row).collect();
                let objects = reply.alerts.iter().map(alert_json).collect();
                self.list(ALERT_HEADERS, rows, objects);
                Ok(())
            }
            Resource::Alerts(AlertsCmd::Contacts(ContactsCmd::Get { tenant })) => {
                let reply = self.read("alert-contacts", tenant.as_deref(), None).await?;
                let rows = reply
                    .alert_contacts
                    .iter()
                    .map(|c| vec![c.tenant.clone(), list_cell(&c.emails), cell(&c.webhook_url)])
                    .collect();
                let objects = reply
                    .alert_contacts
                    .iter()
                    .map(|c| {
                        json!({
                            "tenant": c.tenant,
                            "emails": c.emails,
                            "webhook": c.webhook_url,
                            "webhook-secret-set": !c.webhook_secret.is_empty(),
                        })
                    })
                    .collect();
                self.list(&["TENANT", "EMAILS", "WEBHOOK"], rows, objects);
                Ok(())
            }
            Resource::Alerts(AlertsCmd::Contacts(ContactsCmd::Set {
                tenant,
                emails,
                webhook,
                webhook_secret,
            })) => {
                self.write(Op::SetAlertContacts(moat_proto::AlertContacts {
                    tenant,
                    emails,
                    webhook_url: webhook.unwrap_or_default(),
                    webhook_secret: webhook_secret.unwrap_or_default(),
                }))
                .await
            }
            Resource::Alerts(AlertsCmd::Transport(TransportCmd::Get)) => {
                let reply = self.read("alert-contacts", None, None).await?;
                let t = reply.alert_transport.unwrap_or_default();
                self.one(
                    &["SMTP", "FROM"],
                    vec![cell(&t.smtp), cell(&t.from)],
                    json!({"smtp": t.smtp, "from": t.from}),
                );
                Ok(())
            }
            Resource::Alerts(AlertsCmd::Transport(TransportCmd::Set { smtp, from })) => {
                self.write(Op::SetAlertTransport(moat_proto::AlertTransport {
                    smtp,
                    from,
                }))
                .await
            }
            Resource::OutboundPolicy(c) => self.outbound_policy(c).await,
            Resource::Detection(c) => self.detection(c).await,
            Resource::Cluster(c) => self.cluster(c).await,
            Resource::Apply { .. } => {
                let toml = input.unwrap_or_default();
                self.write(Op::ApplySeed(moat_proto::Seed { toml })).await
            }
        }
    }

    async fn tenant(&self, cmd: TenantCmd) -> Result<(), Failure> {
        match cmd {
            TenantCmd::List => {
                let reply = self.read("tenant", None, None).await?;
                let rows = reply.tenants.iter().map(tenant_row).collect();
                let objects = reply.tenants.iter().map(tenant_json).collect();
                self.list(TENANT_HEADERS, rows, objects);
                Ok(())
            }
            TenantCmd::Get { name } => {
                let reply = self.read("tenant", None, Some(&name)).await?;
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

    async fn domain(&self, cmd: DomainCmd) -> Result<(), Failure> {
        match cmd {
            DomainCmd::List { tenant } => {
                let reply = self.read("domain", tenant.as_deref(), None).await?;
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
                self.list(&["DOMAIN", "TENANT"], rows, objects);
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

    async fn connector(&self, cmd: ConnectorCmd) -> Result<(), Failure> {
        match cmd {
            ConnectorCmd::List { tenant } => {
                let reply = self.read("connector", tenant.as_deref(), None).await?;
                let rows = reply.connectors.iter().map(connector_row).collect();
                let objects = reply.connectors.iter().map(connector_json).collect();
                self.list(CONNECTOR_HEADERS, rows, objects);
                Ok(())
            }
            ConnectorCmd::Get { tenant, name } => {
                let reply = self.read("connector", Some(&tenant), Some(&name)).await?;
                let c = reply
                    .connectors
                    .iter()
                    .find(|c| c.name == name && (c.tenant == tenant || c.tenant.is_empty()))
                    .ok_or_else(|| {
                        Failure::Refused(format!(
                            "connector {name:?} not found in tenant {tenant:?}"
                        ))
                    })?;
                self.one(CONNECTOR_HEADERS, connector_row(c), connector_json(c));
                Ok(())
            }
            ConnectorCmd::Create {
                tenant,
                name,
                kind,
                sender_ips,
                tls_cert_name,
                sender_domains,
                require_tls,
                restrict_domains_to_ip,
                restrict_domains_to_cert,
                disabled,
            } => {
                let kind = match kind {
                    ConnectorType::Partner => ConnectorKind::Partner,
                    ConnectorType::OnPremises => ConnectorKind::OnPremises,
                };
                let connector = Connector {
                    tenant,
                    name,
                    kind: kind as i32,
                    enabled: !disabled,
                    sender_ip_addresses: sender_ips,
                    tls_sender_certificate_name: tls_cert_name.unwrap_or_default(),
                    sender_domains,
                    require_tls,
                    restrict_domains_to_ip_addresses: restrict_domains_to_ip,
                    restrict_domains_to_certificate: restrict_domains_to_cert,
                };
                self.write(Op::PutConnector(connector)).await
            }
            ConnectorCmd::Delete { tenant, name } => {
                self.write(Op::DeleteConnector(moat_proto::NameRef { tenant, name }))
                    .await
            }
        }
    }

    async fn user(&self, cmd: UserCmd, input: Option<String>) -> Result<(), Failure> {
        match cmd {
            UserCmd::List { tenant } => {
                let reply = self.read("user", tenant.as_deref(), None).await?;
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
                self.list(&["TENANT", "ADDRESS", "SEND-AS"], rows, objects);
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

    async fn transport_config(&self, cmd: TransportConfigCmd) -> Result<(), Failure> {
        match cmd {
            TransportConfigCmd::Get { tenant } => {
                let reply = self.read("transport-config", Some(&tenant), None).await?;
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

    async fn token(&self, cmd: TokenCmd) -> Result<(), Failure> {
        match cmd {
            TokenCmd::List => {
                let reply = self.read("token", None, None).await?;
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
                self.list(&["ID", "NAME", "ROLE", "TENANT", "CREATED"], rows, objects);
                Ok(())
            }
            TokenCmd::Create { role, tenant, name } => {
                let op = Op::CreateToken(moat_proto::TokenSpec {
                    role: role.as_str().to_string(),
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

    async fn restricted(&self, cmd: RestrictedCmd) -> Result<(), Failure> {
        match cmd {
            RestrictedCmd::List { tenant } => {
                let reply = self.read("restricted", tenant.as_deref(), None).await?;
                let rows = reply.restricted.iter().map(restricted_row).collect();
                let objects = reply.restricted.iter().map(restricted_json).collect();
                self.list(RESTRICTED_HEADERS, rows, objects);
                Ok(())
            }
            RestrictedCmd::Unblock {
                name,
                tenant,
                kind,
                reason,
            } => {
                let (tenant, name) = match tenant {
                    Some(t) => (t, name),
                    None => {
                        let reply = self.read("restricted", None, None).await?;
                        find_restricted(&reply.restricted, &kind, &name)?
                    }
                };
                self.write(Op::Unblock(moat_proto::Unblock {
                    tenant,
                    kind,
                    name,
                    reason,
                }))
                .await
            }
        }
    }

    async fn speed_bump(&self, cmd: SpeedBumpCmd) -> Result<(), Failure> {
        let steps = match cmd {
            SpeedBumpCmd::Get => {
                let reply = self.read("speed-bump", None, None).await?;
                let rows = reply
                    .speed_bump
                    .iter()
                    .map(|s| vec![cell(&s.date), s.percent.to_string()])
                    .collect();
                let objects = reply
                    .speed_bump
                    .iter()
                    .map(|s| json!({"date": s.date, "percent": s.percent}))
                    .collect();
                self.list(&["DATE", "PERCENT"], rows, objects);
                return Ok(());
            }
            SpeedBumpCmd::Set { steps } => speed_bump_steps(&steps)?,
            SpeedBumpCmd::Clear => vec![],
        };
        self.write(Op::SetSpeedBump(moat_proto::SpeedBump { steps }))
            .await
    }

    async fn report(&self, cmd: ReportCmd) -> Result<(), Failure> {
        match cmd {
            ReportCmd::Tls { tenant, days } => {
                let mut req = self.read_req("tls-report", tenant.as_deref(), None);
                req.days = days;
                let reply = self.client.read(req).await?;
                match self.output {
                    Output::Json => print_json(&tls_report_json(&reply)),
                    Output::Table => out(render_tls_report(&reply).trim_end()),
                }
                Ok(())
            }
            ReportCmd::OnpremServers { tenant } => {
                let reply = self.read("onprem-servers", tenant.as_deref(), None).await?;
                let rows = reply.onprem_servers.iter().map(onprem_row).collect();
                let objects = reply.onprem_servers.iter().map(onprem_json).collect();
                self.list(ONPREM_HEADERS, rows, objects);
                Ok(())
            }
        }
    }

    async fn onprem(&self, cmd: OnpremCmd) -> Result<(), Failure> {
        match cmd {
            OnpremCmd::Baseline(BaselineCmd::Show) => {
                let reply = self.read("onprem-policy", None, None).await?;
                let p = reply.onprem_policy.unwrap_or_default();
                let catalog = moat_shared::exchange::catalog(moat_shared::exchange::CATALOG_CSV);
                let rows: Vec<(String, String, String)> = p
                    .baseline
                    .iter()
                    .map(|b| {
                        let entry = moat_shared::exchange::Build::parse(b)
                            .and_then(|build| catalog.iter().find(|e| e.build == build));
                        (
                            b.clone(),
                            entry.map_or("-".into(), |e| e.product.clone()),
                            entry.map_or("-".into(), |e| e.update.clone()),
                        )
                    })
                    .collect();
                self.list(
                    &["BUILD", "PRODUCT", "UPDATE"],
                    rows.iter()
                        .map(|(b, p, u)| vec![b.clone(), p.clone(), u.clone()])
                        .collect(),
                    rows.iter()
                        .map(|(b, p, u)| json!({"build": b, "product": p, "update": u}))
                        .collect(),
                );
                Ok(())
            }
            OnpremCmd::Baseline(BaselineCmd::Set { builds }) => {
                let builds = builds
                    .iter()
                    .map(|b| {
                        moat_shared::exchange::Build::parse(b)
                            .map(|b| b.to_string())
                            .ok_or_else(|| {
                                Failure::Usage(format!(
                                    "`{b}` is not an Exchange build (e.g. 15.1.2507.61)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.write(Op::SetOnpremPolicy(moat_proto::OnpremPolicy {
                    baseline: builds,
                    ..Default::default()
                }))
                .await
            }
            OnpremCmd::Policy(OnpremPolicyCmd::Show) => {
                let reply = self.read("onprem-policy", None, None).await?;
                let p = reply.onprem_policy.unwrap_or_default();
                let stages = moat_shared::onprem::Schedule::parse(&p.stages).unwrap_or_default();
                let rows = stages
                    .0
                    .iter()
                    .enumerate()
                    .map(|(i, st)| {
                        vec![
                            (i + 1).to_string(),
                            st.from_day.to_string(),
                            st.throttle.to_string(),
                            st.block.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                match self.output {
                    Output::Json => print_json(&json!({
                        "service": p.service,
                        "scope": p.scope,
                        "stages": stages.0.iter().enumerate().map(|(i, st)| json!({
                            "stage": i + 1,
                            "from-day": st.from_day,
                            "throttle-minutes": st.throttle,
                            "block-minutes": st.block,
                        })).collect::<Vec<_>>(),
                    })),
                    Output::Table => {
                        out(&format!("service name: {}", p.service));
                        out(&format!("scope: {}", p.scope));
                        out(
                            render_table(&["STAGE", "FROM-DAY", "THROTTLE/HR", "BLOCK/HR"], &rows)
                                .trim_end(),
                        );
                    }
                }
                Ok(())
            }
            OnpremCmd::Policy(OnpremPolicyCmd::Set {
                stages,
                service_name,
                scope,
            }) => {
                if let Some(st) = &stages {
                    moat_shared::onprem::Schedule::parse(st)
                        .map_err(|e| Failure::Usage(format!("invalid --stages: {e}")))?;
                }
                self.write(Op::SetOnpremPolicy(moat_proto::OnpremPolicy {
                    baseline: Vec::new(),
                    stages: stages.unwrap_or_default(),
                    service: service_name.unwrap_or_default(),
                    scope: scope.unwrap_or_default(),
                }))
                .await
            }
            OnpremCmd::Pause {
                tenant,
                days,
                reason,
            } => {
                self.write(Op::PauseOnprem(moat_proto::OnpremPause {
                    tenant,
                    days,
                    reason,
                }))
                .await
            }
            OnpremCmd::Pauses { tenant } => {
                let reply = self.read("onprem-pauses", Some(&tenant), None).await?;
                let p = reply.onprem_pauses.unwrap_or_default();
                let pauses: Vec<Value> = p
                    .pauses
                    .iter()
                    .map(|x| {
                        json!({
                            "start": fmt_time(x.start_ms),
                            "end": fmt_time(x.end_ms),
                            "days": x.days,
                            "actor": x.actor,
                            "reason": x.reason,
                        })
                    })
                    .collect();
                match self.output {
                    Output::Json => print_json(&json!({
                        "tenant": p.tenant,
                        "year": p.year,
                        "days-used": p.days_used,
                        "days-left": p.days_left,
                        "paused-until": (p.paused_until_ms != 0).then(|| fmt_time(p.paused_until_ms)),
                        "pauses": pauses,
                    })),
                    Output::Table => {
                        out(&format!(
                            "{}: {} of {} pause days used in {}, {} left{}",
                            p.tenant,
                            p.days_used,
                            p.days_used + p.days_left,
                            p.year,
                            p.days_left,
                            if p.paused_until_ms != 0 {
                                format!("; paused until {}", fmt_time(p.paused_until_ms))
                            } else {
                                String::new()
                            }
                        ));
                        let rows: Vec<Vec<String>> = p
                            .pauses
                            .iter()
                            .map(|x| {
                                vec![
                                    fmt_time(x.start_ms),
                                    fmt_time(x.end_ms),
                                    x.days.to_string(),
                                    cell(&x.actor),
                                    cell(&x.reason),
                                ]
                            })
                            .collect();
                        if !rows.is_empty() {
                            out(
                                render_table(&["START", "END", "DAYS", "BY", "REASON"], &rows)
                                    .trim_end(),
                            );
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn dev(&self, cmd: DevCmd) -> Result<(), Failure> {
        let DevCmd::Clock(cmd) = cmd;
        let reply = self.read("clock", None, None).await?;
        match cmd {
            ClockCmd::Show => {
                match self.output {
                    Output::Json => print_json(&json!({
                        "cluster-time": fmt_time(reply.cluster_now_ms),
                        "cluster-now-ms": reply.cluster_now_ms,
                        "offset-ms": reply.clock_offset_ms,
                    })),
                    Output::Table => out(&format!(
                        "cluster time {} ({:.3} days ahead of the wall clock)",
                        fmt_time(reply.cluster_now_ms),
                        reply.clock_offset_ms as f64 / 86_400_000.0
                    )),
                }
                Ok(())
            }
            ClockCmd::Set { days, at } => {
                let target = match (days, at) {
                    (Some(d), _) => reply.cluster_now_ms + i64::from(d) * 86_400_000,
                    (None, Some(at)) => parse_time(&at).ok_or_else(|| {
                        Failure::Usage(format!("`{at}` is not a time like 2027-01-05T10:17:05Z"))
                    })?,
                    (None, None) => return Err(Failure::Usage("give --days or --at".into())),
                };
                self.write(Op::SetClock(target)).await
            }
        }
    }

    async fn outbound_policy(&self, cmd: OutboundPolicyCmd) -> Result<(), Failure> {
        match cmd {
            OutboundPolicyCmd::Get { tenant: None } => {
                let reply = self.read("outbound-policy", None, None).await?;
                let rows = reply.outbound.iter().map(outbound_row).collect();
                let objects = reply.outbound.iter().map(outbound_json).collect();
                self.list(OUTBOUND_HEADERS, rows, objects);
                Ok(())
            }
            OutboundPolicyCmd::Get {
                tenant: Some(tenant),
            } => {
                let reply = self.read("outbound-policy", Some(&tenant), None).await?;
                let p = find_outbound(&reply.outbound, &tenant)?;
                self.one(OUTBOUND_HEADERS, outbound_row(p), outbound_json(p));
                Ok(())
            }
            OutboundPolicyCmd::Set {
                tenant,
                recipients_per_hour,
                recipients_per_day,
                action,
            } => {
                // The wire message replaces all three limits: those not given keep their value.
                let all_given = recipients_per_hour.is_some()
                    && recipients_per_day.is_some()
                    && action.is_some();
                let current = if all_given {
                    None
                } else {
                    let reply = self.read("outbound-policy", Some(&tenant), None).await?;
                    reply.outbound.into_iter().find(|p| p.tenant == tenant)
                };
                let policy = merge_outbound(
                    current,
                    recipients_per_hour,
                    recipients_per_day,
                    action,
                    tenant,
                );
                self.write(Op::SetOutboundPolicy(policy)).await
            }
        }
    }

    async fn detection(&self, cmd: DetectionCmd) -> Result<(), Failure> {
        match cmd {
            DetectionCmd::Get { tenant } => {
                let reply = self.read("detection", tenant.as_deref(), None).await?;
                let rows = reply.detection.iter().map(detection_row).collect();
                let objects = reply.detection.iter().map(detection_json).collect();
                self.list(DETECTION_HEADERS, rows, objects);
                Ok(())
            }
            DetectionCmd::Set {
                tenant,
                interval,
                warmup,
                spike_factor,
                min_messages,
                unprovisioned_percent,
                mismatch_percent,
                auth_fail_percent,
            } => {
                let reply = self.read("detection", tenant.as_deref(), None).await?;
                let want = tenant.clone().unwrap_or_default();
                let current = reply
                    .detection
                    .iter()
                    .find(|d| d.tenant == want)
                    .or_else(|| reply.detection.iter().find(|d| d.tenant.is_empty()))
                    .cloned()
                    .unwrap_or_default();
                let policy = moat_proto::DetectionPolicy {
                    tenant: want,
                    interval_ms: interval.map_or(current.interval_ms, |d| {
                        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                    }),
                    warmup_intervals: warmup.unwrap_or(current.warmup_intervals),
                    spike_factor: spike_factor.unwrap_or(current.spike_factor),
                    min_messages: min_messages.unwrap_or(current.min_messages),
                    unprovisioned_percent: unprovisioned_percent
                        .unwrap_or(current.unprovisioned_percent),
                    mismatch_percent: mismatch_percent.unwrap_or(current.mismatch_percent),
                    auth_fail_percent: auth_fail_percent.unwrap_or(current.auth_fail_percent),
                };
                self.write(Op::SetDetectionPolicy(policy)).await
            }
        }
    }

    async fn cluster(&self, cmd: ClusterCmd) -> Result<(), Failure> {
        match cmd {
            ClusterCmd::Status => {
                let status = self.client.cluster().await?;
                match self.output {
                    Output::Json => print_json(&cluster_json(&status)),
                    Output::Table => out(render_cluster(&status, now_ms()).trim_end()),
                }
                Ok(())
            }
            ClusterCmd::AddNode { id, address } => {
                self.write(Op::AddNode(moat_proto::NodeRef { id, address }))
                    .await
            }
            ClusterCmd::RemoveNode { id } => self.write(Op::RemoveNode(id)).await,
        }
    }
}

fn find_tenant<'a>(tenants: &'a [Tenant], name: &str) -> Result<&'a Tenant, Failure> {
    tenants
        .iter()
        .find(|t| t.id == name)
        .ok_or_else(|| Failure::Refused(format!("tenant {name:?} not found")))
}

/// The tenant and stored name of the entity `moat admin restricted unblock` names: users are
/// matched case-insensitively, connectors exactly.
fn find_restricted(
    restricted: &[moat_proto::RestrictedEntity],
    kind: &str,
    name: &str,
) -> Result<(String, String), Failure> {
    let wanted = name.trim();
    let matches: Vec<&moat_proto::RestrictedEntity> = restricted
        .iter()
        .filter(|r| {
            r.kind == kind
                && if kind == "user" {
                    r.name.to_lowercase() == wanted.to_lowercase()
                } else {
                    r.name == wanted
                }
        })
        .collect();
    match matches[..] {
        [] => Err(Failure::Refused(format!(
            "{kind} {wanted} is not restricted"
        ))),
        [r] => Ok((r.tenant.clone(), r.name.clone())),
        _ => {
            let tenants: Vec<&str> = matches.iter().map(|r| r.tenant.as_str()).collect();
            Err(Failure::Refused(format!(
                "{kind} {wanted} is restricted in several tenants ({}): pass --tenant",
                tenants.join(", ")
            )))
        }
    }
}

/// A tenant's outbound policy with the limits given on the command line replacing those of
/// `current` (none: the defaults, 0/empty on the wire).
fn merge_outbound(
    current: Option<moat_proto::OutboundPolicy>,
    recipients_per_hour: Option<u32>,
    recipients_per_day: Option<u32>,
    action: Option<String>,
    tenant: String,
) -> moat_proto::OutboundPolicy {
    let current = current.unwrap_or_default();
    moat_proto::OutboundPolicy {
        tenant,
        recipients_per_hour: recipients_per_hour.unwrap_or(current.recipients_per_hour),
        recipients_per_day: recipients_per_day.unwrap_or(current.recipients_per_day),
        action: action.unwrap_or(current.action),
    }
}

fn find_outbound<'a>(
    policies: &'a [moat_proto::OutboundPolicy],
    tenant: &str,
) -> Result<&'a moat_proto::OutboundPolicy, Failure> {
    policies
        .iter()
        .find(|p| p.tenant == tenant)
        .ok_or_else(|| Failure::Refused(format!("tenant {tenant:?} not found")))
}

/// Writes a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(s: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{s}");
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => out(&s),
        Err(e) => eprintln!("error: rendering JSON: {e}"),
    }
}

/// A table cell: `<none>` for empty, control characters flattened to spaces.
fn cell(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

fn list_cell(items: &[String]) -> String {
    cell(&items.join(","))
}

/// Renders kubectl-style columns: every column as wide as its widest cell, two spaces between
/// columns, no trailing spaces.
fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            for _ in c.chars().count()..*w {
                line.push(' ');
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const TENANT_HEADERS: &[&str] = &[
    "NAME",
    "DISPLAY-NAME",
    "DOMAINS",
    "ALLOW-LEGACY-TLS-CLIENTS",
];

fn tenant_row(t: &Tenant) -> Vec<String> {
    vec![
        cell(&t.id),
        cell(&t.display_name),
        list_cell(&t.accepted_domains),
        t.allow_legacy_tls_clients.to_string(),
    ]
}

fn tenant_json(t: &Tenant) -> Value {
    json!({
        "id": t.id,
        "display-name": t.display_name,
        "accepted-domains": t.accepted_domains,
        "allow-legacy-tls-clients": t.allow_legacy_tls_clients,
    })
}

fn connector_type(kind: i32) -> &'static str {
    match ConnectorKind::try_from(kind) {
        Ok(ConnectorKind::Partner) => "partner",
        Ok(ConnectorKind::OnPremises) => "on-premises",
        _ => "unspecified",
    }
}

const CONNECTOR_HEADERS: &[&str] = &[
    "TENANT",
    "NAME",
    "TYPE",
    "ENABLED",
    "SENDER-IPS",
    "TLS-CERT-NAME",
    "SENDER-DOMAINS",
    "REQUIRE-TLS",
    "RESTRICT-DOMAINS-TO",
];

fn connector_row(c: &Connector) -> Vec<String> {
    let mut restrict = Vec::new();
    if c.restrict_domains_to_ip_addresses {
        restrict.push("ip".to_string());
    }
    if c.restrict_domains_to_certificate {
        restrict.push("certificate".to_string());
    }
    vec![
        cell(&c.tenant),
        cell(&c.name),
        connector_type(c.kind).to_string(),
        c.enabled.to_string(),
        list_cell(&c.sender_ip_addresses),
        cell(&c.tls_sender_certificate_name),
        list_cell(&c.sender_domains),
        c.require_tls.to_string(),
        list_cell(&restrict),
    ]
}

fn connector_json(c: &Connector) -> Value {
    json!({
        "tenant": c.tenant,
        "name": c.name,
        "type": connector_type(c.kind),
        "enabled": c.enabled,
        "sender-ip-addresses": c.sender_ip_addresses,
        "tls-sender-certificate-name": c.tls_sender_certificate_name,
        "sender-domains": c.sender_domains,
        "require-tls": c.require_tls,
        "restrict-domains-to-ip-addresses": c.restrict_domains_to_ip_addresses,
        "restrict-domains-to-certificate": c.restrict_domains_to_certificate,
    })
}

const AUDIT_HEADERS: &[&str] = &["INDEX", "TIME", "ACTOR", "TENANT", "ACTION"];

fn audit_row(a: &moat_proto::AuditRecord) -> Vec<String> {
    vec![
        a.index.to_string(),
        fmt_time(a.at_ms),
        cell(&a.actor),
        cell(&a.tenant),
        cell(&a.action),
    ]
}

fn audit_json(a: &moat_proto::AuditRecord) -> Value {
    json!({
        "index": a.index,
        "at-ms": a.at_ms,
        "actor": a.actor,
        "action": a.action,
        "tenant": a.tenant,
    })
}

const COUNTER_HEADERS: &[&str] = &["SCOPE", "KEY", "NAME", "TOTAL", "LAST-MINUTE"];

fn counter_row(c: &moat_proto::CounterTotal) -> Vec<String> {
    vec![
        cell(&c.scope),
        cell(&c.key),
        cell(&c.name),
        c.total.to_string(),
        c.last_minute.to_string(),
    ]
}

fn counter_json(c: &moat_proto::CounterTotal) -> Value {
    json!({
        "scope": c.scope,
        "key": c.key,
        "name": c.name,
        "total": c.total,
        "last-minute": c.last_minute,
    })
}

const RESTRICTED_HEADERS: &[&str] = &["TENANT", "KIND", "NAME", "SINCE", "UNTIL", "REASON"];

fn restricted_row(r: &moat_proto::RestrictedEntity) -> Vec<String> {
    let until = if r.until_ms == 0 {
        "-".to_string()
    } else {
        fmt_time(r.until_ms)
    };
    vec![
        cell(&r.tenant),
        cell(&r.kind),
        cell(&r.name),
        fmt_time(r.since_ms),
        until,
        cell(&r.reason),
    ]
}

fn restricted_json(r: &moat_proto::RestrictedEntity) -> Value {
    let until = (r.until_ms != 0).then(|| fmt_time(r.until_ms));
    json!({
        "tenant": r.tenant,
        "kind": r.kind,
        "name": r.name,
        "reason": r.reason,
        "since-ms": r.since_ms,
        "until": until,
    })
}

const ALERT_HEADERS: &[&str] = &[
    "TIME",
    "TENANT",
    "SEVERITY",
    "TITLE",
    "DELIVERIES",
    "DETAIL",
];

fn alert_row(a: &moat_proto::Alert) -> Vec<String> {
    let deliveries: Vec<String> = a
        .deliveries
        .iter()
        .map(|d| format!("{}:{}({})", d.channel, d.state, d.attempts))
        .collect();
    vec![
        fmt_time(a.at_ms),
        cell(&a.tenant),
        cell(&a.severity),
        cell(&a.title),
        list_cell(&deliveries),
        cell(&a.detail),
    ]
}

fn alert_json(a: &moat_proto::Alert) -> Value {
    json!({
        "id": a.id,
        "at-ms": a.at_ms,
        "tenant": a.tenant,
        "severity": a.severity,
        "title": a.title,
        "detail": a.detail,
        "deliveries": a.deliveries.iter().map(|d| json!({
            "channel": d.channel,
            "target": d.target,
            "state": d.state,
            "attempts": d.attempts,
            "last-error": d.last_error,
        })).collect::<Vec<_>>(),
    })
}

const DETECTION_HEADERS: &[&str] = &[
    "TENANT",
    "INTERVAL",
    "WARM-UP",
    "SPIKE",
    "MIN-MESSAGES",
    "UNPROVISIONED%",
    "MISMATCH%",
    "DMARC-FAIL%",
];

fn detection_row(d: &moat_proto::DetectionPolicy) -> Vec<String> {
    vec![
        if d.tenant.is_empty() {
            "(default)".into()
        } else {
            d.tenant.clone()
        },
        format!("{}s", d.interval_ms as f64 / 1000.0),
        d.warmup_intervals.to_string(),
        format!("x{}", d.spike_factor),
        d.min_messages.to_string(),
        d.unprovisioned_percent.to_string(),
        d.mismatch_percent.to_string(),
        d.auth_fail_percent.to_string(),
    ]
}

fn detection_json(d: &moat_proto::DetectionPolicy) -> Value {
    json!({
        "tenant": if d.tenant.is_empty() { Value::Null } else { json!(d.tenant) },
        "interval-ms": d.interval_ms,
        "warmup-intervals": d.warmup_intervals,
        "spike-factor": d.spike_factor,
        "min-messages": d.min_messages,
        "unprovisioned-percent": d.unprovisioned_percent,
        "mismatch-percent": d.mismatch_percent,
        "auth-fail-percent": d.auth_fail_percent,
    })
}

const OUTBOUND_HEADERS: &[&str] = &["TENANT", "RECIPIENTS/HOUR", "RECIPIENTS/DAY", "ACTION"];

fn outbound_row(p: &moat_proto::OutboundPolicy) -> Vec<String> {
    vec![
        cell(&p.tenant),
        p.recipients_per_hour.to_string(),
        p.recipients_per_day.to_string(),
        cell(&p.action),
    ]
}

fn outbound_json(p: &moat_proto::OutboundPolicy) -> Value {
    json!({
        "tenant": p.tenant,
        "recipients-per-hour": p.recipients_per_hour,
        "recipients-per-day": p.recipients_per_day,
        "action": p.action,
    })
}

const TLS_USAGE_HEADERS: &[&str] = &[
    "DAY", "TENANT", "LISTENER", "VERSION", "CIPHER", "SESSIONS", "MESSAGES",
];

fn tls_usage_row(u: &moat_proto::TlsUsage) -> Vec<String> {
    vec![
        cell(&u.day),
        cell(&u.tenant),
        cell(&u.listener),
        cell(&u.version),
        cell(&u.cipher),
        u.sessions.to_string(),
        u.messages.to_string(),
    ]
}

fn tls_usage_json(u: &moat_proto::TlsUsage) -> Value {
    json!({
        "day": u.day,
        "tenant": u.tenant,
        "listener": u.listener,
        "version": u.version,
        "cipher": u.cipher,
        "sessions": u.sessions,
        "messages": u.messages,
    })
}

const LEGACY_CLIENT_HEADERS: &[&str] = &[
    "DAY",
    "TENANT",
    "CLIENT-IP",
    "USER",
    "VERSION",
    "SESSIONS",
    "MESSAGES",
];

fn legacy_client_row(c: &moat_proto::LegacyClient) -> Vec<String> {
    vec![
        cell(&c.day),
        cell(&c.tenant),
        cell(&c.client_ip),
        cell(&c.user),
        cell(&c.version),
        c.sessions.to_string(),
        c.messages.to_string(),
    ]
}

fn legacy_client_json(c: &moat_proto::LegacyClient) -> Value {
    json!({
        "day": c.day,
        "tenant": c.tenant,
        "client-ip": c.client_ip,
        "user": c.user,
        "version": c.version,
        "sessions": c.sessions,
        "messages": c.messages,
    })
}

fn tls_report_json(r: &ReadReply) -> Value {
    json!({
        "usage": r.tls_usage.iter().map(tls_usage_json).collect::<Vec<_>>(),
        "legacy-clients": r.legacy_clients.iter().map(legacy_client_json).collect::<Vec<_>>(),
    })
}

/// The TLS report as text: the usage table, then the clients still on TLS 1.0/1.1.
fn render_tls_report(r: &ReadReply) -> String {
    let mut out = String::new();
    if r.tls_usage.is_empty() {
        out.push_str("No TLS sessions recorded.\n");
    } else {
        let rows: Vec<Vec<String>> = r.tls_usage.iter().map(tls_usage_row).collect();
        out.push_str(&render_table(TLS_USAGE_HEADERS, &rows));
    }
    out.push_str("\nClients on TLS 1.0/1.1:\n");
    if r.legacy_clients.is_empty() {
        out.push_str("No legacy TLS clients.\n");
    } else {
        let rows: Vec<Vec<String>> = r.legacy_clients.iter().map(legacy_client_row).collect();
        out.push_str(&render_table(LEGACY_CLIENT_HEADERS, &rows));
    }
    out
}

fn cluster_json(s: &ClusterStatus) -> Value {
    json!({
        "node-id": s.node_id,
        "leader-id": s.leader_id,
        "term": s.term,
        "commit-index": s.commit_index,
        "applied-index": s.applied_index,
        "policy-version": s.policy_version,
        "snapshot-index": s.snapshot_index,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "role": m.role,
        })).collect::<Vec<_>>(),
        "edges": s.edges.iter().map(|e| json!({
            "edge-id": e.edge_id,
            "applied-version": e.applied_version,
            "watching": e.watching,
            "last-seen-ms": e.last_seen_ms,
        })).collect::<Vec<_>>(),
    })
}

fn render_cluster(s: &ClusterStatus, now_ms: i64) -> String {
    let leader = if s.leader_id == 0 {
        "none (no leader elected)".to_string()
    } else {
        match s.members.iter().find(|m| m.id == s.leader_id) {
            Some(m) if !m.address.is_empty() => format!("{} ({})", s.leader_id, m.address),
            _ => s.leader_id.to_string(),
        }
    };
    let mut out = String::new();
    let fields = [
        ("Node ID", s.node_id.to_string()),
        ("Leader", leader),
        ("Term", s.term.to_string()),
        ("Commit index", s.commit_index.to_string()),
        ("Applied index", s.applied_index.to_string()),
        ("Policy version", s.policy_version.to_string()),
        ("Snapshot index", s.snapshot_index.to_string()),
    ];
    for (k, v) in fields {
        let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
    }
    out.push_str("\nMEMBERS\n");
    if s.members.is_empty() {
        out.push_str("<none>\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| vec![m.id.to_string(), cell(&m.address), cell(&m.role)])
            .collect();
        out.push_str(&render_table(&["ID", "ADDRESS", "ROLE"], &rows));
    }
    out.push_str("\nEDGES\n");
    if s.edges.is_empty() {
        out.push_str("<none>\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .edges
            .iter()
            .map(|e| {
                vec![
                    cell(&e.edge_id),
                    e.applied_version.to_string(),
                    e.watching.to_string(),
                    fmt_ago(now_ms, e.last_seen_ms),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["EDGE", "APPLIED-VERSION", "WATCHING", "LAST-SEEN"],
            &rows,
        ));
    }
    out
}

use moat_shared::time::{civil_from_days, day_string, now_ms};

/// How long ago `then_ms` was, kubectl style (`42s ago`, `5m ago`, `3h ago`, `2d ago`).
fn fmt_ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".to_string();
    }
    let secs = now_ms.saturating_sub(then_ms).max(0) / 1000;
    if secs < 120 {
        format!("{secs}s ago")
    } else if secs < 2 * 3600 {
        format!("{}m ago", secs / 60)
    } else if secs < 48 * 3600 {
        format!("{}h ago", secs / 3600)
    } else {
        format!("{}d ago", secs / 86400)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or without seconds) as Unix milliseconds.
fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim().strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let day = moat_shared::time::parse_day(date)?;
    let mut parts = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m) = (parts.next()??, parts.next()??);
    let sec = parts.next().map_or(Some(0), |s| s)?;
    if parts.next().is_some() || h > 23 || m > 59 || sec > 59 || h < 0 || m < 0 || sec < 0 {
        return None;
    }
    Some(((day * 86_400) + h * 3600 + m * 60 + sec) * 1000)
}

const ONPREM_HEADERS: &[&str] = &[
    "TENANT",
    "SERVER",
    "BUILD",
    "PRODUCT",
    "CLASS",
    "STATUS",
    "FIRST-DETECTED",
    "STAGE",
    "THROTTLE/HR",
    "BLOCK/HR",
    "NEXT-STAGE",
    "RECOMMENDED",
    "PAUSED-UNTIL",
];

/// What a report row amounts to: remediated, compliant, paused, report-only, throttled,
/// blocking (some minutes) or blocked (all of them).
fn onprem_status(r: &moat_proto::OnpremServerReport) -> &'static str {
    if r.first_detected_ms == 0 {
        return if r.remediated_ms != 0 {
            "remediated"
        } else if r.class == "compliant" {
            "compliant"
        } else {
            "not-judged"
        };
    }
    if r.paused {
        "paused"
    } else if r.block >= 60 {
        "blocked"
    } else if r.block > 0 {
        "blocking"
    } else if r.throttle > 0 {
        "throttled"
    } else {
        "report-only"
    }
}

fn onprem_row(r: &moat_proto::OnpremServerReport) -> Vec<String> {
    let next = if r.next_stage == 0 {
        "-".to_owned()
    } else {
        format!(
            "{} ({}/{}) {}",
            r.next_stage,
            r.next_throttle,
            r.next_block,
            day_string(r.next_stage_ms.div_euclid(86_400_000))
        )
    };
    let when = |ms: i64| {
        if ms == 0 {
            "-".to_owned()
        } else {
            day_string(ms.div_euclid(86_400_000))
        }
    };
    vec![
        cell(&r.tenant),
        cell(&r.server),
        cell(&r.build),
        cell(&r.product),
        cell(&r.class),
        onprem_status(r).to_owned(),
        when(r.first_detected_ms),
        if r.stage == 0 {
            "-".into()
        } else {
            r.stage.to_string()
        },
        r.throttle.to_string(),
        r.block.to_string(),
        next,
        list_cell(&r.recommended),
        when(r.paused_until_ms),
    ]
}

fn onprem_json(r: &moat_proto::OnpremServerReport) -> Value {
    let t = |ms: i64| (ms != 0).then(|| fmt_time(ms));
    json!({
        "tenant": r.tenant,
        "server": r.server,
        "build": r.build,
        "product": r.product,
        "class": r.class,
        "status": onprem_status(r),
        "connector": r.connector,
        "first-detected": t(r.first_detected_ms),
        "first-detected-ms": r.first_detected_ms,
        "stage": r.stage,
        "throttle-minutes": r.throttle,
        "block-minutes": r.block,
        "throttle-enabled": t(r.throttle_enabled_ms),
        "blocking-enabled": t(r.blocking_enabled_ms),
        "next-stage": (r.next_stage != 0).then_some(r.next_stage),
        "next-stage-throttle-minutes": r.next_throttle,
        "next-stage-block-minutes": r.next_block,
        "next-stage-start": t(r.next_stage_ms),
        "recommended": r.recommended,
        "paused": r.paused,
        "paused-until": t(r.paused_until_ms),
        "remediated": t(r.remediated_ms),
        "last-seen": t(r.last_seen_ms),
        "messages": r.messages,
    })
}

/// Unix milliseconds as an RFC 3339 UTC time to the second; `<none>` for 0.
fn fmt_time(ms: i64) -> String {
    if ms <= 0 {
        return "<none>".to_string();
    }
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let sod = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        cmd: TestCmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum TestCmd {
        Admin(AdminArgs),
    }

    fn parse(args: &[&str]) -> Result<AdminArgs, clap::Error> {
        let mut all = vec!["moat", "admin"];
        all.extend_from_slice(args);
        TestCli::try_parse_from(all).map(|c| match c.cmd {
            TestCmd::Admin(a) => a,
        })
    }

    #[test]
    fn table_columns_are_aligned_with_two_spaces() {
        let rows = vec![
            vec!["contoso.com".to_string(), "a".to_string(), "x".to_string()],
            vec!["b".to_string(), "longer-value".to_string(), "y".to_string()],
        ];
        let t = render_table(&["NAME", "V", "LAST"], &rows);
        assert_eq!(
            t,
            "NAME         V             LAST\n\
             contoso.com  a             x\n\
             b            longer-value  y\n"
        );
    }

    #[test]
    fn table_has_no_trailing_spaces_and_counts_chars() {
        let rows = vec![vec!["é".to_string(), String::new()]];
        let t = render_table(&["A", "LONG-HEADER"], &rows);
        assert_eq!(t, "A  LONG-HEADER\né\n");
        assert!(t.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn cells_show_none_and_flatten_control_characters() {
        assert_eq!(cell(""), "<none>");
        assert_eq!(cell("a\nb\tc"), "a b c");
        assert_eq!(list_cell(&["a".into(), "b".into()]), "a,b");
        assert_eq!(list_cell(&[]), "<none>");
    }

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7000").as_deref(),
            Ok("http://127.0.0.1:7000")
        );
        assert_eq!(
            normalize_endpoint(" http://node1:7000/ ").as_deref(),
            Ok("http://node1:7000")
        );
        assert_eq!(
            normalize_endpoint("https://cp.example:443").as_deref(),
            Ok("https://cp.example:443")
        );
        assert_eq!(
            normalize_endpoint("[::1]:7000").as_deref(),
            Ok("http://[::1]:7000")
        );
        assert!(normalize_endpoint("").is_err());
        assert!(normalize_endpoint("http://bad host").is_err());
        assert_eq!(
            parse_endpoint_list("a:1, http://b:2,,a:1").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }

    #[test]
    fn discovery_reads_the_admin_section() {
        let text = r#"{"edges": [], "admin": {"endpoint": "http://127.0.0.1:7001",
            "endpoints": ["http://127.0.0.1:7001", "127.0.0.1:7002"], "token": "tok"}}"#;
        let d = parse_discovery(text).unwrap().unwrap();
        assert_eq!(
            d.endpoints,
            vec!["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        assert_eq!(d.token.as_deref(), Some("tok"));
        assert_eq!(parse_discovery(r#"{"admin": null}"#).unwrap(), None);
        assert_eq!(parse_discovery(r#"{"edges": []}"#).unwrap(), None);
        assert!(parse_discovery("not json").is_err());
    }

    #[test]
    fn connector_json_uses_kebab_case_keys() {
        let c = Connector {
            tenant: "contoso.com".into(),
            name: "partner-a".into(),
            kind: ConnectorKind::OnPremises as i32,
            enabled: true,
            sender_ip_addresses: vec!["192.0.2.0/24".into()],
            tls_sender_certificate_name: "*.contoso.com".into(),
            sender_domains: vec!["contoso.com".into()],
            require_tls: true,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: true,
        };
        assert_eq!(
            connector_json(&c),
            json!({
                "tenant": "contoso.com",
                "name": "partner-a",
                "type": "on-premises",
                "enabled": true,
                "sender-ip-addresses": ["192.0.2.0/24"],
                "tls-sender-certificate-name": "*.contoso.com",
                "sender-domains": ["contoso.com"],
                "require-tls": true,
                "restrict-domains-to-ip-addresses": false,
                "restrict-domains-to-certificate": true,
            })
        );
        assert_eq!(connector_type(ConnectorKind::Partner as i32), "partner");
        assert_eq!(connector_type(99), "unspecified");
        let row = connector_row(&c);
        assert_eq!(row[2], "on-premises");
        assert_eq!(row[8], "certificate");
    }

    #[test]
    fn status_codes_map_to_exit_codes() {
        assert_eq!(Failure::from(Status::not_found("x")).exit_code(), 1);
        assert_eq!(Failure::from(Status::invalid_argument("x")).exit_code(), 1);
        assert_eq!(Failure::from(Status::already_exists("x")).exit_code(), 1);
        assert_eq!(
            Failure::from(Status::failed_precondition("x")).exit_code(),
            1
        );
        assert_eq!(Failure::from(Status::unauthenticated("x")).exit_code(), 3);
        assert_eq!(Failure::from(Status::permission_denied("x")).exit_code(), 3);
        assert_eq!(Failure::from(Status::unavailable("x")).exit_code(), 4);
        assert_eq!(Failure::from(Status::internal("x")).exit_code(), 5);
        assert_eq!(Failure::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn leader_hint_and_retryability() {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert("moat-leader", "10.0.0.2:7000".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("http://10.0.0.2:7000"));
        assert!(retryable(&s));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
        // A server's own statuses carry no source: not retried.
        assert!(!retryable(&Status::cancelled("x")));
        assert!(!retryable(&Status::not_found("x")));
        assert!(retryable(&Status::deadline_exceeded("x")));
    }

    #[test]
    fn request_ids_are_random_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn times_render_in_utc() {
        assert_eq!(fmt_time(0), "<none>");
        assert_eq!(fmt_time(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_time(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(fmt_ago(100_000, 0), "never");
        assert_eq!(fmt_ago(100_000, 95_000), "5s ago");
        assert_eq!(fmt_ago(1_000_000, 100_000), "15m ago");
        assert_eq!(fmt_ago(10_000_000_000, 100_000), "115d ago");
    }

    #[test]
    fn cluster_status_renders_members_and_edges() {
        let s = ClusterStatus {
            node_id: 1,
            leader_id: 2,
            term: 3,
            commit_index: 10,
            applied_index: 9,
            policy_version: 8,
            members: vec![
                moat_proto::Member {
                    id: 1,
                    address: "127.0.0.1:7001".into(),
                    role: "voter".into(),
                },
                moat_proto::Member {
                    id: 2,
                    address: "127.0.0.1:7002".into(),
                    role: "voter".into(),
                },
            ],
            edges: vec![moat_proto::EdgeStatus {
                edge_id: "edge-1".into(),
                applied_version: 8,
                watching: 1,
                last_seen_ms: 7_000,
            }],
            snapshot_index: 4,
        };
        let text = render_cluster(&s, 10_000);
        assert!(text.contains("Leader:         2 (127.0.0.1:7002)\n"));
        assert!(text.contains("ID  ADDRESS         ROLE\n1   127.0.0.1:7001  voter\n"));
        assert!(text.contains("EDGE    APPLIED-VERSION  WATCHING  LAST-SEEN\n"));
        assert!(text.contains("edge-1  8                1         3s ago\n"));
        let v = cluster_json(&s);
        assert_eq!(v["leader-id"], 2);
        assert_eq!(v["edges"][0]["edge-id"], "edge-1");
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let a = parse(&[
            "connector",
            "list",
            "--tenant",
            "t",
            "-o",
            "json",
            "--endpoint",
            "h:1",
            "--stale-ok",
        ])
        .unwrap();
        assert_eq!(a.output, Output::Json);
        assert_eq!(a.endpoint.as_deref(), Some("h:1"));
        assert!(a.stale_ok);
        assert!(parse(&["user", "create", "--tenant", "t", "a@t"]).is_err());
        assert!(parse(&["token", "create", "--role", "tenant-admin", "--name", "n"]).is_err());
        assert!(parse(&[
            "transport-config",
            "set",
            "--tenant",
            "t",
            "--allow-legacy-tls-clients",
            "true"
        ])
        .is_ok());
        assert!(parse(&[
            "connector",
            "create",
            "--tenant",
            "t",
            "c",
            "--type",
            "on-premises"
        ])
        .is_ok());
        assert!(parse(&["apply", "-f", "seed.toml"]).is_ok());
    }
    #[test]
    fn new_commands_parse() {
        let a = parse(&["tls", "speed-bump", "set", "2026-11-01=5", "2026-12-01=30%"]).unwrap();
        match a.command {
            Resource::Tls(TlsCmd::SpeedBump(SpeedBumpCmd::Set { steps })) => {
                assert_eq!(steps, vec!["2026-11-01=5", "2026-12-01=30%"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["tls", "speed-bump", "set"]).is_err());
        assert!(parse(&["tls", "speed-bump", "get", "-o", "json"]).is_ok());
        assert!(parse(&["tls", "speed-bump", "clear"]).is_ok());

        assert!(parse(&["restricted", "list", "--tenant", "t"]).is_ok());
        let a = parse(&["restricted", "unblock", "a@t", "--reason", "reset password"]).unwrap();
        match a.command {
            Resource::Restricted(RestrictedCmd::Unblock {
                name,
                tenant,
                kind,
                reason,
            }) => {
                assert_eq!(name, "a@t");
                assert_eq!(tenant, None);
                assert_eq!(kind, "user");
                assert_eq!(reason, "reset password");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["restricted", "unblock", "a@t"]).is_err());
        assert!(parse(&[
            "restricted",
            "unblock",
            "c",
            "--tenant",
            "t",
            "--kind",
            "connector",
            "--reason",
            "r"
        ])
        .is_ok());
        assert!(parse(&[
            "restricted",
            "unblock",
            "c",
            "--kind",
            "edge",
            "--reason",
            "r"
        ])
        .is_err());

        match parse(&["report", "tls"]).unwrap().command {
            Resource::Report(ReportCmd::Tls { tenant, days }) => {
                assert_eq!(tenant, None);
                assert_eq!(days, 7);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["report", "tls", "--tenant", "t", "--days", "30"])
            .unwrap()
            .command
        {
            Resource::Report(ReportCmd::Tls { tenant, days }) => {
                assert_eq!(tenant.as_deref(), Some("t"));
                assert_eq!(days, 30);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["report", "tls", "--days", "0"]).is_err());

        assert!(parse(&["alerts", "list", "--tenant", "t"]).is_ok());

        assert!(parse(&["report", "onprem-servers", "--tenant", "t"]).is_ok());
        assert!(parse(&["onprem", "baseline", "show"]).is_ok());
        assert!(parse(&["onprem", "baseline", "set"]).is_err());
        assert!(parse(&["onprem", "baseline", "set", "15.1.2507.61"]).is_ok());
        assert!(parse(&["onprem", "policy", "set"]).is_err());
        assert!(parse(&["onprem", "policy", "set", "--scope", "everything"]).is_err());
        assert!(parse(&["onprem", "policy", "set", "--service-name", "Contoso"]).is_ok());
        assert!(parse(&["onprem", "pause", "--tenant", "t", "--days", "91"]).is_err());
        assert!(parse(&["onprem", "pause", "--tenant", "t", "--days", "0"]).is_err());
        assert!(parse(&["onprem", "pause", "--tenant", "t", "--days", "30"]).is_ok());
        assert!(parse(&["onprem", "pauses", "--tenant", "t"]).is_ok());
        assert!(parse(&["dev", "clock", "set"]).is_err());
        assert!(parse(&["dev", "clock", "set", "--days", "3", "--at", "x"]).is_err());
        assert_eq!(
            parse_time("2027-01-05T10:17:05Z"),
            Some(moat_shared::time::days_from_civil(2027, 1, 5) * 86_400_000 + 37_025_000)
        );
        assert_eq!(parse_time("2027-01-05T24:00Z"), None);
        assert_eq!(parse_time("2027-01-05 10:00Z"), None);

        assert!(parse(&["outbound-policy", "get"]).is_ok());
        assert!(parse(&["outbound-policy", "get", "--tenant", "t"]).is_ok());
        let a = parse(&[
            "outbound-policy",
            "set",
            "--tenant",
            "t",
            "--recipients-per-hour",
            "100",
            "--action",
            "alert-only",
        ])
        .unwrap();
        match a.command {
            Resource::OutboundPolicy(OutboundPolicyCmd::Set {
                tenant,
                recipients_per_hour,
                recipients_per_day,
                action,
            }) => {
                assert_eq!(tenant, "t");
                assert_eq!(recipients_per_hour, Some(100));
                assert_eq!(recipients_per_day, None);
                assert_eq!(action.as_deref(), Some("alert-only"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&[
            "outbound-policy",
            "set",
            "--tenant",
            "t",
            "--action",
            "drop"
        ])
        .is_err());
        // Nothing to change.
        assert!(parse(&["outbound-policy", "set", "--tenant", "t"]).is_err());
        assert!(parse(&["outbound-policy", "set", "--action", "block"]).is_err());
    }

    #[test]
    fn speed_bump_steps_are_checked_locally() {
        let steps = speed_bump_steps(&["2026-12-01=30%".into(), "2026-11-01=5".into()]).unwrap();
        assert_eq!(
            steps,
            vec![
                moat_proto::SpeedBumpStep {
                    date: "2026-11-01".into(),
                    percent: 5,
                },
                moat_proto::SpeedBumpStep {
                    date: "2026-12-01".into(),
                    percent: 30,
                },
            ]
        );
        for bad in ["2026-11-31=1", "2026-11-01=101", "2026-11-01", "tomorrow=5"] {
            let err = speed_bump_steps(&["2026-10-01=1".into(), bad.into()]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        let dup = speed_bump_steps(&["2026-11-01=5".into(), "2026-11-01=10".into()]).unwrap_err();
        assert_eq!(dup.exit_code(), 2);
        assert!(dup.to_string().contains("2026-11-01"), "{dup}");
        let cmd = parse(&["tls", "speed-bump", "set", "2026-02-30=5"])
            .unwrap()
            .command;
        assert_eq!(check_local(&cmd).unwrap_err().exit_code(), 2);
        assert!(speed_bump_steps(&[]).unwrap().is_empty());
    }

    #[test]
    fn tls_report_renders_both_tables_and_kebab_case_json() {
        let mut r = ReadReply {
            tls_usage: vec![moat_proto::TlsUsage {
                day: "2026-11-02".into(),
                tenant: "contoso.com".into(),
                listener: "submission".into(),
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                sessions: 12,
                messages: 30,
            }],
            legacy_clients: vec![moat_proto::LegacyClient {
                day: "2026-11-02".into(),
                tenant: "contoso.com".into(),
                client_ip: "192.0.2.7".into(),
                user: String::new(),
                version: "TLSv1".into(),
                sessions: 2,
                messages: 1,
            }],
            ..Default::default()
        };
        assert_eq!(
            tls_usage_json(&r.tls_usage[0]),
            json!({
                "day": "2026-11-02",
                "tenant": "contoso.com",
                "listener": "submission",
                "version": "TLSv1.3",
                "cipher": "TLS13_AES_128_GCM_SHA256",
                "sessions": 12,
                "messages": 30,
            })
        );
        assert_eq!(
            tls_report_json(&r),
            json!({
                "usage": [tls_usage_json(&r.tls_usage[0])],
                "legacy-clients": [{
                    "day": "2026-11-02",
                    "tenant": "contoso.com",
                    "client-ip": "192.0.2.7",
                    "user": "",
                    "version": "TLSv1",
                    "sessions": 2,
                    "messages": 1,
                }],
            })
        );
        let text = render_tls_report(&r);
        assert!(text.starts_with(
            "DAY         TENANT       LISTENER    VERSION  CIPHER                    SESSIONS  MESSAGES\n"
        ), "{text}");
        assert!(
            text.contains(
                "\n\nClients on TLS 1.0/1.1:\n\
             DAY         TENANT       CLIENT-IP  USER    VERSION  SESSIONS  MESSAGES\n\
             2026-11-02  contoso.com  192.0.2.7  <none>  TLSv1    2         1\n"
            ),
            "{text}"
        );
        r.legacy_clients.clear();
        assert!(render_tls_report(&r)
            .ends_with("\n\nClients on TLS 1.0/1.1:\nNo legacy TLS clients.\n"));
    }

    #[test]
    fn restricted_entities_show_until() {
        let mut r = moat_proto::RestrictedEntity {
            tenant: "t".into(),
            kind: "user".into(),
            name: "a@t".into(),
            reason: "over the daily limit".into(),
            since_ms: 1_000,
            until_ms: 0,
        };
        assert_eq!(restricted_row(&r)[4], "-");
        assert_eq!(restricted_json(&r)["until"], Value::Null);
        r.until_ms = 86_400_000;
        assert_eq!(restricted_row(&r)[4], "1970-01-02T00:00:00Z");
        assert_eq!(restricted_json(&r)["until"], "1970-01-02T00:00:00Z");
        assert_eq!(RESTRICTED_HEADERS[4], "UNTIL");
    }

    #[test]
    fn unblock_finds_the_tenant_of_a_restricted_entity() {
        let entity = |tenant: &str, kind: &str, name: &str| moat_proto::RestrictedEntity {
            tenant: tenant.into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        };
        let list = vec![
            entity("a.test", "user", "bob@a.test"),
            entity("a.test", "connector", "Partner"),
            entity("b.test", "connector", "Partner"),
        ];
        assert_eq!(
            find_restricted(&list, "user", "Bob@A.test").unwrap(),
            ("a.test".to_string(), "bob@a.test".to_string())
        );
        let missing = find_restricted(&list, "user", "x@a.test").unwrap_err();
        assert_eq!(missing.exit_code(), 1);
        assert_eq!(missing.to_string(), "user x@a.test is not restricted");
        // Connector names are exact, and may be ambiguous across tenants.
        assert!(find_restricted(&list, "connector", "partner").is_err());
        let both = find_restricted(&list, "connector", "Partner").unwrap_err();
        assert!(both.to_string().contains("pass --tenant"), "{both}");
        assert!(find_restricted(&list, "connector", "bob@a.test").is_err());
    }

    #[test]
    fn outbound_policy_and_alerts_render() {
        let p = merge_outbound(
            Some(moat_proto::OutboundPolicy {
                tenant: "t".into(),
                recipients_per_hour: 500,
                recipients_per_day: 2000,
                action: "block-for-today".into(),
            }),
            None,
            Some(0),
            Some("alert-only".into()),
            "t".into(),
        );
        assert_eq!(p.recipients_per_hour, 500);
        assert_eq!(p.recipients_per_day, 0);
        assert_eq!(p.action, "alert-only");
        assert_eq!(
            merge_outbound(None, Some(5), None, None, "t".into()).action,
            ""
        );
        assert_eq!(
            outbound_json(&p),
            json!({"tenant": "t", "recipients-per-hour": 500, "recipients-per-day": 0,
                "action": "alert-only"})
        );
        assert_eq!(outbound_row(&p), vec!["t", "500", "0", "alert-only"]);
        let a = moat_proto::Alert {
            at_ms: 1_000,
            tenant: "t".into(),
            severity: "warning".into(),
            title: "User blocked".into(),
            detail: "a@t\nover the limit".into(),
            id: 7,
            deliveries: vec![moat_proto::AlertDelivery {
                channel: "email".into(),
                target: "admin@t".into(),
                state: "failed".into(),
                attempts: 8,
                last_error: "SMTP: 550".into(),
            }],
        };
        assert_eq!(
            alert_row(&a),
            vec![
                "1970-01-01T00:00:01Z",
                "t",
                "warning",
                "User blocked",
                "email:failed(8)",
                "a@t over the limit"
            ]
        );
        assert_eq!(alert_json(&a)["at-ms"], 1_000);
        assert_eq!(alert_json(&a)["deliveries"][0]["last-error"], "SMTP: 550");
    }

    #[test]
    fn put_user_rejects_bad_endpoints_without_retrying() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = |endpoints: &[&str], token: &str| Target {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            token: token.into(),
            tls: None,
        };
        let err = rt
            .block_on(put_user(&target(&[], "tok"), "t", "a@t", "pw"))
            .unwrap_err();
        assert!(err.contains("no control-plane endpoint"), "{err}");
        let err = rt
            .block_on(put_user(
                &target(&["http://bad host"], "tok"),
                "t",
                "a@t",
                "pw",
            ))
            .unwrap_err();
        assert!(err.contains("invalid endpoint"), "{err}");
        let err = rt
            .block_on(put_user(
                &target(&["127.0.0.1:1"], "bad\ntoken"),
                "t",
                "a@t",
                "pw",
            ))
            .unwrap_err();
        assert!(err.contains("token"), "{err}");
    }
}
