//! `moat admin`: a kubectl-like client of the control plane's gRPC `Admin` service.
//!
//! Commands name a resource, then a verb (`moat admin connector list --tenant t`). Calls go
//! through [`crate::client`], which finds the control plane (flags, environment, or a `moat dev`
//! data directory's `endpoints.json`), follows the leader and retries.
//!
//! This file holds the top-level grammar (global options, the resource list), the exit codes
//! and the dispatch; each resource has a file with its subcommands, handler, renderers and
//! tests:
//!
//! - [`tenant`], [`domain`], [`connector`], [`user`], [`transport_config`], [`token`]:
//!   the objects of the policy.
//! - [`audit`], [`counters`], [`report`], [`alerts`]: what the cluster recorded.
//! - [`restricted`], [`tls`], [`outbound_policy`], [`detection`], [`onprem`]: enforcement and
//!   its settings.
//! - [`explain`]: what an edge would answer a session, step by step, and why.
//! - [`cluster`], [`dev`]: membership, and the development clock.
//! - [`render`]: tables, JSON, cells and times shared by the renderers.
//!
//! `apply` (a seed file, sent in parts under the control plane's entry bound) and the paging
//! loop every list command shares ([`Ctx::list_pages`]) are handled here.

mod alerts;
mod audit;
mod cluster;
mod connector;
mod counters;
mod detection;
mod dev;
mod domain;
mod explain;
mod onprem;
mod outbound_policy;
mod render;
mod report;
mod restricted;
mod tenant;
mod tls;
mod token;
mod transport_config;
mod user;

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;

use moat_proto::write_request::Op;
use moat_proto::{ReadKind, ReadReply, ReadRequest};
use serde_json::{json, Value};

use crate::client::{resolve_target, Client, Failure, TargetFlags};
use alerts::AlertsCmd;
use cluster::ClusterCmd;
use connector::ConnectorCmd;
use detection::DetectionCmd;
use dev::DevCmd;
use domain::DomainCmd;
use explain::ExplainArgs;
use onprem::OnpremCmd;
use outbound_policy::OutboundPolicyCmd;
use render::{out, print_json, render_table};
use report::ReportCmd;
use restricted::RestrictedCmd;
use tenant::TenantCmd;
use tls::{speed_bump_steps, SpeedBumpCmd, TlsCmd};
use token::TokenCmd;
use transport_config::TransportConfigCmd;
use user::UserCmd;

/// The help heading of the options every `moat admin` command takes, so that a subcommand's
/// own flags stand apart in its `--help`.
const GLOBAL: &str = "Global options";

/// Options of `moat admin`.
///
/// Exit codes: 0 success; 1 the control plane refused the request (invalid, not found,
/// failed precondition, already exists); 2 usage error; 3 authentication or authorization
/// failed (check the token and its role); 4 no control plane was given or found, or it was
/// unreachable or unavailable after retries; 5 anything else.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Control-plane address, `http://host:port` or `host:port`; several may be given
    /// separated by commas [env: MOAT_ENDPOINT].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "URL")]
    endpoint: Option<String>,
    /// Admin token [env: MOAT_TOKEN].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "T")]
    token: Option<String>,
    /// Output format (`csv`: the reports only).
    #[arg(short = 'o', long, global = true, help_heading = GLOBAL, value_enum, default_value = "table")]
    output: Format,
    /// Serve reads from the contacted node without a ReadIndex round (may be stale).
    #[arg(long, global = true, help_heading = GLOBAL)]
    stale_ok: bool,
    /// The cluster's internal CA (PEM) [env: MOAT_TLS_CA]. Control nodes refuse admin calls
    /// without mutual TLS.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// An admin certificate (common name `moat-admin`) [env: MOAT_TLS_CERT].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Its private key [env: MOAT_TLS_KEY].
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// List commands: return one page of at most N items, and print on standard error the
    /// `--page-token` that continues it. Without it, a list fetches every page (of 1000).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// List commands: start after the page a `--limit` run ended with.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "TOKEN")]
    page_token: Option<String>,
    /// A `moat dev` data directory whose `endpoints.json` names the control plane.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DIR", default_value = "./moat-data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Resource,
}

impl AdminArgs {
    /// The flags that say where the control plane is.
    fn target_flags(&self) -> TargetFlags<'_> {
        TargetFlags {
            endpoint: &self.endpoint,
            token: &self.token,
            tls_ca: &self.tls_ca,
            tls_cert: &self.tls_cert,
            tls_key: &self.tls_key,
            data: &self.data,
        }
    }
}

/// The output format asked for: [`Output`], or CSV, which only `moat admin report ...` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// RFC 4180 CSV (reports only).
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Explain what an edge would answer a session (connectors matched, the rule and reply of
    /// each step, counters, restrictions), evaluated on the cluster's current policy with the
    /// edge's own verdicts.
    Explain(Box<ExplainArgs>),
    /// Apply a seed file (the TOML format of `moat dev` / `moat control --seed`): tenants, and
    /// each tenant's `[[tenant.connector]]` and `[[tenant.user]]` tables.
    Apply {
        /// The seed file; `-` reads standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
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

async fn run_inner(args: AdminArgs) -> Result<(), Failure> {
    // Read and check local inputs before contacting anyone, so a bad file or argument fails
    // fast.
    check_local(&args.command)?;
    if args.output == Format::Csv && !matches!(args.command, Resource::Report(_)) {
        return Err(Failure::Usage(
            "`-o csv` is for the reports (`moat admin report ...`)".into(),
        ));
    }
    let input = local_input(&args.command)?;
    let (endpoints, token, tls) = resolve_target(args.target_flags())?;
    let client = Client::new(endpoints, &token, tls)?;
    let (output, csv) = match args.output {
        Format::Table => (Output::Table, false),
        Format::Json => (Output::Json, false),
        Format::Csv => (Output::Table, true),
    };
    let ctx = Ctx {
        client,
        output,
        csv,
        stale_ok: args.stale_ok,
        limit: args.limit,
        page_token: args.page_token.unwrap_or_default(),
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

/// What every resource's handler needs: the client, the output format, read staleness, and
/// the paging of lists.
struct Ctx {
    client: Client,
    output: Output,
    /// `-o csv`: reports print their table as CSV (`output` is then `Table`).
    csv: bool,
    stale_ok: bool,
    /// `--limit`: one page of this many.
    limit: Option<u32>,
    /// `--page-token`: where the first page starts.
    page_token: String,
}

/// How many items a list asks for per page when no `--limit` is given.
const PAGE_SIZE: u32 = 1000;

/// The most TOML text one part of a seed carries: each part is one write and one raft entry,
/// well under the control plane's entry bound (3 MB) and the 4 MB transport limit.
const SEED_PART_BYTES: usize = 1 << 20;

/// A JSON array written to stdout an item at a time, formatted as `serde_json`'s pretty
/// printer formats the whole array, so a list of any size never sits in memory at once.
struct JsonArray {
    items: usize,
}

impl JsonArray {
    fn item(&mut self, v: &Value) {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "{}", if self.items == 0 { "[\n" } else { ",\n" });
        for (i, line) in text.lines().enumerate() {
            let _ = write!(stdout, "{}  {line}", if i == 0 { "" } else { "\n" });
        }
        self.items += 1;
    }

    fn end(self) {
        out(if self.items == 0 { "[]" } else { "\n]" });
    }
}

/// Splits a seed into parts of at most about `max` bytes of TOML each, whole tenants (with
/// their nested connectors and users) per part and in the file's order; a seed that fits is
/// one part, its text unchanged.
fn split_seed(text: &str, max: usize) -> Result<Vec<String>, Failure> {
    if text.len() <= max {
        return Ok(vec![text.to_owned()]);
    }
    // The whole file is checked first, so a bad tenant at its end applies no part.
    moat_shared::Seed::parse(text)
        .and_then(moat_shared::Seed::into_tenants)
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| Failure::Refused(format!("seed is not valid: {e}")))?;
    let Some(toml::Value::Array(tenants)) = table.remove("tenant") else {
        return Ok(vec![text.to_owned()]);
    };
    let render = |part: Vec<toml::Value>| {
        let mut t = toml::Table::new();
        t.insert("tenant".into(), toml::Value::Array(part));
        toml::to_string(&t).map_err(|e| Failure::Other(format!("writing a seed part: {e}")))
    };
    let mut parts = Vec::new();
    let (mut part, mut bytes) = (Vec::new(), 0usize);
    for tenant in tenants {
        let size = render(vec![tenant.clone()])?.len();
        if !part.is_empty() && bytes + size > max {
            parts.push(render(std::mem::take(&mut part))?);
            bytes = 0;
        }
        bytes += size;
        part.push(tenant);
    }
    if !part.is_empty() {
        parts.push(render(part)?);
    }
    Ok(parts)
}

impl Ctx {
    fn read_req(&self, kind: ReadKind, tenant: Option<&str>, name: Option<&str>) -> ReadRequest {
        ReadRequest {
            tenant: tenant.unwrap_or_default().to_string(),
            name: name.unwrap_or_default().to_string(),
            stale_ok: self.stale_ok,
            ..ReadRequest::of(kind)
        }
    }

    async fn read(
        &self,
        kind: ReadKind,
        tenant: Option<&str>,
        name: Option<&str>,
    ) -> Result<ReadReply, Failure> {
        self.client.read(self.read_req(kind, tenant, name)).await
    }

    /// Lists `kind` (of `tenant`) page by page, `render` turning each reply into table rows
    /// and JSON objects: with `--limit`, one page and the token of the next on standard
    /// error; without, every page, JSON streamed as pages arrive.
    async fn list_pages(
        &self,
        kind: ReadKind,
        tenant: Option<&str>,
        headers: &[&str],
        render: impl Fn(&ReadReply) -> (Vec<Vec<String>>, Vec<Value>),
    ) -> Result<(), Failure> {
        let mut req = self.read_req(kind, tenant, None);
        req.limit = self.limit.unwrap_or(PAGE_SIZE);
        req.page_token = self.page_token.clone();
        let mut table = Vec::new();
        let mut json = JsonArray { items: 0 };
        loop {
            let reply = self.client.read(req.clone()).await?;
            let (rows, objects) = render(&reply);
            match self.output {
                Output::Json => objects.iter().for_each(|o| json.item(o)),
                Output::Table => table.extend(rows),
            }
            let next = reply.next_page_token;
            if next.is_empty() {
                break;
            }
            if self.limit.is_some() {
                eprintln!("more: --page-token {next}");
                break;
            }
            if next == req.page_token {
                return Err(Failure::Other(
                    "the control plane returned the same page token twice".into(),
                ));
            }
            req.page_token = next;
        }
        match self.output {
            Output::Json => json.end(),
            Output::Table if table.is_empty() => eprintln!("No resources found."),
            Output::Table => out(render_table(headers, &table).trim_end()),
        }
        Ok(())
    }

    /// Applies a seed: in one write when it is small, else in parts under the entry bound,
    /// in order, each its own write (and request id, so a retried part applies once), with
    /// progress on a terminal. A part refused stops the apply; the parts before it stay
    /// applied, and applying the file again is harmless (a seed merges).
    async fn apply(&self, toml: String) -> Result<(), Failure> {
        let parts = split_seed(&toml, SEED_PART_BYTES)?;
        if parts.len() == 1 {
            let toml = parts.into_iter().next().unwrap_or_default();
            return self.write(Op::ApplySeed(moat_proto::Seed { toml })).await;
        }
        let (count, terminal) = (parts.len(), std::io::stderr().is_terminal());
        let mut last = None;
        for (i, toml) in parts.into_iter().enumerate() {
            if terminal {
                eprint!("\rapplying seed: part {}/{count}", i + 1);
            }
            last = Some(
                self.client
                    .write(Op::ApplySeed(moat_proto::Seed { toml }))
                    .await?,
            );
        }
        if terminal {
            eprintln!();
        }
        let index = last.map_or(0, |r| r.index);
        let summary = format!("seed applied in {count} parts");
        match self.output {
            Output::Json => {
                print_json(&json!({"index": index, "summary": summary, "parts": count}))
            }
            Output::Table => out(&summary),
        }
        Ok(())
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
            Resource::Audit(c) => self.audit(c).await,
            Resource::Counters(c) => self.counters(c).await,
            Resource::Restricted(c) => self.restricted(c).await,
            Resource::Tls(TlsCmd::SpeedBump(c)) => self.speed_bump(c).await,
            Resource::Tls(TlsCmd::Tickets(c)) => self.tickets(c).await,
            Resource::Report(c) => self.report(c).await,
            Resource::Onprem(c) => self.onprem(c).await,
            Resource::Dev(c) => self.dev(c).await,
            Resource::Alerts(c) => self.alerts(c).await,
            Resource::OutboundPolicy(c) => self.outbound_policy(c).await,
            Resource::Detection(c) => self.detection(c).await,
            Resource::Cluster(c) => self.cluster(c).await,
            Resource::Explain(a) => self.explain(*a).await,
            Resource::Apply { .. } => self.apply(input.unwrap_or_default()).await,
        }
    }
}

#[cfg(test)]
#[derive(clap::Parser, Debug)]
struct TestCli {
    #[command(subcommand)]
    cmd: TestCmd,
}

#[cfg(test)]
#[derive(clap::Subcommand, Debug)]
enum TestCmd {
    Admin(AdminArgs),
}

/// Parses `moat admin ARGS...` (for the resources' tests).
#[cfg(test)]
fn parse(args: &[&str]) -> Result<AdminArgs, clap::Error> {
    use clap::Parser as _;
    let mut all = vec!["moat", "admin"];
    all.extend_from_slice(args);
    TestCli::try_parse_from(all).map(|c| match c.cmd {
        TestCmd::Admin(a) => a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_seed_splits_into_parts_of_whole_tenants_in_order() {
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&format!(
                "[[tenant]]\nid = \"t{i:03}.test\"\naccepted-domains = [\"t{i:03}.test\"]\n"
            ));
        }
        assert_eq!(split_seed(&text, text.len()).unwrap(), vec![text.clone()]);
        let parts = split_seed(&text, 1000).unwrap();
        assert!(parts.len() > 5, "{} parts", parts.len());
        let mut ids = Vec::new();
        for p in &parts {
            assert!(p.len() <= 1000, "part of {} bytes", p.len());
            let seed = moat_shared::Seed::parse(p).unwrap();
            ids.extend(seed.tenant.into_iter().map(|t| t.id));
        }
        let want: Vec<String> = (0..200).map(|i| format!("t{i:03}.test")).collect();
        assert_eq!(ids, want);
        // A bad tenant anywhere refuses the whole file before any part is sent.
        text.push_str("[[tenant]]\nid = \"BAD ID\"\n");
        assert!(matches!(split_seed(&text, 1000), Err(Failure::Refused(_))));
    }

    #[test]
    fn a_split_keeps_each_tenant_with_its_connectors_and_users() {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        let mut text = String::new();
        for i in 0..60 {
            text.push_str(&format!(
                "[[tenant]]\nid = \"t{i:02}\"\naccepted-domains = [\"t{i:02}.test\"]\n\
                 [[tenant.connector]]\nname = \"hq\"\ntype = \"on-premises\"\n\
                 sender-ip-addresses = [\"10.0.{i}.0/24\"]\n\
                 [[tenant.connector]]\nname = \"partner\"\ntype = \"partner\"\n\
                 tls-sender-certificate-name = \"*.p{i}.test\"\n\
                 [[tenant.user]]\naddress = \"a@t{i:02}.test\"\npassword-hash = \"{hash}\"\n\
                 [[tenant.user]]\naddress = \"b@t{i:02}.test\"\npassword-hash = \"{hash}\"\n"
            ));
        }
        let whole = moat_shared::Seed::parse(&text).unwrap().validate().unwrap();
        let parts = split_seed(&text, 2000).unwrap();
        assert!(parts.len() > 5, "{} parts", parts.len());
        let mut joined = moat_shared::SeedContents::default();
        for p in &parts {
            let c = moat_shared::Seed::parse(p).unwrap().validate().unwrap();
            for t in &c.tenants {
                let of = |n: usize| (n, t.id.clone());
                let conns = c.connectors.iter().filter(|x| x.tenant == t.id).count();
                let users = c.users.iter().filter(|x| x.tenant == t.id).count();
                assert_eq!((of(conns), of(users)), (of(2), of(2)));
            }
            joined.tenants.extend(c.tenants);
            joined.connectors.extend(c.connectors);
            joined.users.extend(c.users);
        }
        assert_eq!(joined, whole);
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
        assert_eq!(a.output, Format::Json);
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
}
