//! `moat control`: command-line glue around `moat_control::server`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use moat_control::config::ControlConfig;
use moat_control::raft::node::Options;
use moat_control::server::Control;
use moat_shared::Seed;
use serde::Deserialize;

/// Options of `moat control`, from the command line and from the `--config` TOML file: one
/// struct serves both, so every flag can be set in the file under the same name (kebab-case);
/// `peer` is a table there, `[peers]` with `ID = "HOST:PORT"`. A flag wins over the file; a
/// `--peer` adds to the file's peers (the flag's address wins for the same id).
///
/// A file setting everything (every key is optional; the defaults are those of the flags):
///
/// ```toml
/// id = 1
/// listen = "0.0.0.0:7400"              # default 127.0.0.1:7400
/// advertise = "cp-1.example:7400"      # default: the listen address
/// join = false
/// data = "/var/lib/moat"               # default ./moat-control-ID
/// seed = "/etc/moat/tenants.toml"
/// admin-token-file = "/etc/moat/token" # default: $MOAT_ADMIN_TOKEN
/// snapshot-every = 10000
/// policy-history = 4096                # policy changes kept for edges that reconnect
/// dev-clock = false
/// status-listen = "0.0.0.0:9400"       # default: no status port
/// console-listen = "0.0.0.0:7480"      # default: no console (needs the tls-* files)
/// unready-after = 5                    # seconds
/// tls-ca = "/etc/moat/tls/ca.pem"
/// tls-cert = "/etc/moat/tls/control.pem"
/// tls-key = "/etc/moat/tls/control-key.pem"
///
/// [peers]
/// 1 = "cp-1.example:7400"
/// 2 = "cp-2.example:7400"
/// 3 = "cp-3.example:7400"
/// ```
#[derive(clap::Args, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControlArgs {
    /// TOML file with the same settings as the flags (flags win).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// This node's raft id (1 or more, unique in the cluster, never reused).
    #[arg(long)]
    id: Option<u64>,
    /// Address gRPC listens on [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address other nodes and tools reach this node at (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// A founding member, `ID=HOST:PORT`; repeat for each (this node included). Without any, a
    /// cluster of one.
    #[arg(long = "peer", value_parser = parse_peer)]
    #[serde(default, deserialize_with = "peer_table")]
    peers: Vec<(u64, String)>,
    /// Start empty and wait to be added with `moat admin cluster add-node`.
    #[arg(long)]
    #[serde(default)]
    join: bool,
    /// Data directory [default: ./moat-control-ID].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seed (TOML) to apply once the cluster has a leader (idempotent).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// File holding the bootstrap operator token (or set MOAT_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Take a raft snapshot and compact the log every N applied entries.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Keep the last N policy changes, so that an edge that reconnects gets what it missed
    /// rather than a full snapshot [default: 4096].
    #[arg(long, value_name = "N")]
    policy_history: Option<usize>,
    /// Let `moat admin dev clock set` move the cluster clock ahead (tests and demos only; a
    /// node without it refuses). `moat dev` passes it to its nodes.
    #[arg(long, hide = true)]
    #[serde(default)]
    dev_clock: bool,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address.
    #[arg(long, value_name = "ADDR")]
    status_listen: Option<SocketAddr>,
    /// Serve the admin console (HTTPS with `--tls-cert`, for a browser) on this address.
    #[arg(long, value_name = "ADDR")]
    console_listen: Option<SocketAddr>,
    /// `/readyz` turns unready after this many seconds without a known leader [default: 5].
    #[arg(long, value_name = "SECS")]
    unready_after: Option<u64>,
    /// How often the leader rotates the TLS session ticket keys edges share (`30m`, `12h`);
    /// a ticket resumes for at least this long, and is refused two rotations after it was
    /// issued [default: 12h].
    #[arg(long, value_name = "DURATION")]
    tls_ticket_rotate_every: Option<String>,
    /// The cluster's internal CA (PEM): gRPC is then served over mutual TLS, every caller
    /// needs a certificate from it, and peers are called with `--tls-cert`. Without the three
    /// `--tls-*` files gRPC is plaintext and admin calls are refused.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM; common name `moat-control`, DNS name `moat-control`).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

/// `/readyz` turns unready after this many seconds without a known leader, unless told
/// otherwise.
const UNREADY_AFTER_SECS: u64 = 5;

/// The file's `[peers]` table, `ID = "HOST:PORT"`, checked like `--peer`.
fn peer_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(u64, String)>, D::Error> {
    let table = BTreeMap::<String, String>::deserialize(d)?;
    table
        .into_iter()
        .map(|(k, v)| parse_peer(&format!("{k}={v}")).map_err(serde::de::Error::custom))
        .collect()
}

impl ControlArgs {
    /// These flags over `file`'s settings: a flag given wins; `--peer`s add to the file's peers.
    fn over(self, file: ControlArgs) -> ControlArgs {
        let mut peers = self.peers;
        for (id, addr) in file.peers {
            if !peers.iter().any(|(p, _)| *p == id) {
                peers.push((id, addr));
            }
        }
        ControlArgs {
            config: self.config,
            id: self.id.or(file.id),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            peers,
            join: self.join || file.join,
            data: self.data.or(file.data),
            seed: self.seed.or(file.seed),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            snapshot_every: self.snapshot_every.or(file.snapshot_every),
            policy_history: self.policy_history.or(file.policy_history),
            dev_clock: self.dev_clock || file.dev_clock,
            status_listen: self.status_listen.or(file.status_listen),
            console_listen: self.console_listen.or(file.console_listen),
            unready_after: self.unready_after.or(file.unready_after),
            tls_ticket_rotate_every: self
                .tls_ticket_rotate_every
                .or(file.tls_ticket_rotate_every),
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
        }
    }

    /// The flags over the `--config` file's settings, when there is one (read once: the
    /// result names no file any more).
    fn with_file(mut self) -> anyhow::Result<ControlArgs> {
        let Some(p) = self.config.take() else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let file: ControlArgs =
            toml::from_str(&text).with_context(|| format!("in {}", p.display()))?;
        Ok(self.over(file))
    }
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("`{id}` is not a node id"))?;
    if id == 0 {
        return Err("node ids start at 1".into());
    }
    Ok((id, addr.trim().to_owned()))
}

/// Builds the node configuration from the flags over the `--config` file's settings.
pub fn config(args: ControlArgs) -> anyhow::Result<ControlConfig> {
    let args = args.with_file()?;
    let id = args
        .id
        .context("--id is required (this node's raft id, 1 or more)")?;
    if id == 0 {
        bail!("--id must be 1 or more");
    }
    let listen = args.listen.unwrap_or_else(|| ([127, 0, 0, 1], 7400).into());
    let advertise = args.advertise;
    let mut peers: BTreeMap<u64, String> = args.peers.into_iter().collect();
    let join = args.join;
    if join && !peers.is_empty() {
        bail!("--join and --peer exclude each other: a joining node learns the cluster from its leader");
    }
    if !join {
        if peers.is_empty() {
            peers.insert(id, advertise.clone().unwrap_or_else(|| listen.to_string()));
        }
        if !peers.contains_key(&id) {
            bail!("the --peer list must include this node ({id})");
        }
    }
    let data = args
        .data
        .unwrap_or_else(|| PathBuf::from(format!("./moat-control-{id}")));
    let seed = match args.seed {
        Some(p) => Seed::parse(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .and_then(Seed::validate)
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            // The bootstrap seed is proposed again at every start until its tenants exist;
            // connectors and users proposed that way would overwrite later changes (a new
            // password) at each restart, so they are applied once, with `moat admin apply`.
            if c.connectors.is_empty() && c.users.is_empty() {
                Ok(c.tenants)
            } else {
                bail!(
                    "--seed bootstraps tenants only; apply a seed with connectors or users \
                     with `moat admin apply -f FILE`"
                )
            }
        })
        .with_context(|| format!("in {}", p.display()))?,
        None => Vec::new(),
    };
    let admin_token = match args.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("MOAT_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let tls = match (args.tls_ca, args.tls_cert, args.tls_key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => {
            let tls = moat_proto::mtls::InternalTls::load(&ca, &cert, &key)?;
            if tls.role() != moat_proto::mtls::Role::Control {
                bail!(
                    "{} is a {} certificate; a control node needs a moat-control one",
                    cert.display(),
                    tls.role()
                );
            }
            Some(tls)
        }
        _ => bail!("tls-ca, tls-cert and tls-key go together: set all three or none"),
    };
    let ticket_rotate_every = match args.tls_ticket_rotate_every.as_deref() {
        Some(t) => moat_edge::config::parse_duration(t)
            .map_err(|e| anyhow::anyhow!("--tls-ticket-rotate-every: {e}"))?,
        None => Duration::from_millis(moat_shared::tickets::DEFAULT_TICKET_ROTATION_MS as u64),
    };
    if ticket_rotate_every < Duration::from_secs(1) {
        anyhow::bail!("--tls-ticket-rotate-every must be at least 1s");
    }
    let mut options = Options::default();
    if let Some(n) = args.snapshot_every {
        options.snapshot_every = n;
    }
    if let Some(n) = args.policy_history {
        options.policy_history = n;
    }
    Ok(ControlConfig {
        id,
        listen,
        advertise,
        peers,
        data,
        seed,
        admin_token,
        tick: Duration::from_millis(100),
        options,
        dev_clock: args.dev_clock,
        unready_after: Duration::from_secs(args.unready_after.unwrap_or(UNREADY_AFTER_SECS)),
        ticket_rotate_every,
        tls,
        console_listen: args.console_listen,
    })
}

/// The routes of a control node's status port.
pub fn status_routes(control: &Control) -> moat_edge::status::Routes {
    let record = control.record_metrics();
    moat_edge::status::Routes {
        readiness: control.readiness(),
        metrics: crate::process::metrics().map(|render| -> moat_edge::status::Metrics {
            Arc::new(move || {
                record();
                render()
            })
        }),
    }
}

/// Runs `moat control` until SIGTERM/SIGINT.
pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let args = args.with_file()?;
    let status_listen = args.status_listen;
    let cfg = config(args)?;
    let id = cfg.id;
    if cfg.dev_clock {
        tracing::warn!(
            node = id,
            "--dev-clock: the cluster clock can be moved by an operator; never use this in production"
        );
    }
    if cfg.tls.is_none() {
        tracing::warn!(
            node = id,
            "no --tls-ca/--tls-cert/--tls-key: gRPC is plaintext and every admin call is refused"
        );
    }
    let control = Control::start(cfg).await?;
    if let Some(addr) = control.local_addr() {
        tracing::info!(node = id, "control node serving gRPC on {addr}");
    }
    if let Some(addr) = control.console_addr() {
        tracing::info!(node = id, "console on https://{addr}");
    }
    if let Some(addr) = status_listen {
        let listener = moat_edge::status::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the status port"))?;
        tracing::info!(node = id, "status port on {addr}");
        tokio::spawn(moat_edge::status::serve(listener, status_routes(&control)));
    }
    control.run(crate::process::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        control: ControlArgs,
    }

    fn flags(args: &[&str]) -> ControlArgs {
        let mut all = vec!["moat-control"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(c) => c.control,
            Err(e) => panic!("{e}"),
        }
    }

    /// A file in a fresh directory, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(tag: &str, text: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("moat-control-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("control.toml");
            std::fs::write(&path, text).expect("write");
            Self(path)
        }
        fn arg(&self) -> &str {
            self.0.to_str().expect("utf-8 path")
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn every_flag_can_be_set_in_the_file() {
        let f = File::new(
            "all",
            "id = 3\nlisten = \"127.0.0.1:7403\"\nadvertise = \"cp-3:7403\"\n\
             data = \"/tmp/moat-c3\"\nsnapshot-every = 77\npolicy-history = 12\ndev-clock = true\n\
             status-listen = \"127.0.0.1:9403\"\nunready-after = 9\n\
             tls-ticket-rotate-every = \"30m\"\n\n\
             [peers]\n3 = \"cp-3:7403\"\n4 = \"cp-4:7404\"\n",
        );
        let args = flags(&["--config", f.arg()]).with_file().expect("file");
        assert_eq!(args.status_listen, Some(([127, 0, 0, 1], 9403).into()));
        assert!(args.config.is_none());
        let cfg = config(args).expect("config");
        assert_eq!(cfg.id, 3);
        assert_eq!(cfg.listen, ([127, 0, 0, 1], 7403).into());
        assert_eq!(cfg.advertise.as_deref(), Some("cp-3:7403"));
        assert_eq!(cfg.data, PathBuf::from("/tmp/moat-c3"));
        assert_eq!(cfg.options.snapshot_every, 77);
        assert_eq!(cfg.options.policy_history, 12);
        assert!(cfg.dev_clock);
        assert_eq!(cfg.unready_after, Duration::from_secs(9));
        assert_eq!(cfg.ticket_rotate_every, Duration::from_secs(30 * 60));
        assert_eq!(
            cfg.peers,
            BTreeMap::from([(3, "cp-3:7403".into()), (4, "cp-4:7404".into())])
        );
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let f = File::new(
            "over",
            "id = 1\nstatus-listen = \"127.0.0.1:9401\"\nunready-after = 9\n\n\
             [peers]\n1 = \"a:1\"\n2 = \"b:2\"\n",
        );
        let args = flags(&[
            "--config",
            f.arg(),
            "--status-listen",
            "127.0.0.1:9501",
            "--unready-after",
            "2",
            "--peer",
            "2=c:3",
        ])
        .with_file()
        .expect("file");
        assert_eq!(args.status_listen, Some(([127, 0, 0, 1], 9501).into()));
        let cfg = config(args).expect("config");
        assert_eq!(cfg.unready_after, Duration::from_secs(2));
        assert_eq!(
            cfg.peers,
            BTreeMap::from([(1, "a:1".into()), (2, "c:3".into())])
        );
        let cfg = config(flags(&["--id", "1"])).expect("config");
        assert_eq!(cfg.unready_after, Duration::from_secs(UNREADY_AFTER_SECS));
        assert_eq!(cfg.ticket_rotate_every, Duration::from_secs(12 * 3600));
        assert!(config(flags(&["--id", "1", "--tls-ticket-rotate-every", "12"])).is_err());
        assert!(config(flags(&["--id", "1", "--tls-ticket-rotate-every", "0s"])).is_err());
        assert_eq!(cfg.listen, ([127, 0, 0, 1], 7400).into());
        assert_eq!(cfg.peers, BTreeMap::from([(1, "127.0.0.1:7400".into())]));
    }

    #[test]
    fn the_file_refuses_unknown_keys_and_bad_peers() {
        let f = File::new("unknown", "id = 1\nstatus_listen = \"127.0.0.1:1\"\n");
        let err = format!("{:#}", config(flags(&["--config", f.arg()])).unwrap_err());
        assert!(err.contains("status_listen"), "{err}");
        let f = File::new("config-key", "config = \"other.toml\"\n");
        assert!(config(flags(&["--config", f.arg()])).is_err());
        let f = File::new("peer", "id = 1\n[peers]\n0 = \"a:1\"\n");
        let err = format!("{:#}", config(flags(&["--config", f.arg()])).unwrap_err());
        assert!(err.contains("node ids start at 1"), "{err}");
    }
}
