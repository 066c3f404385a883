//! Edge 1's settings: the `--config` file if given, with what `moat dev` fills in when it is
//! not (node id, the dev certificate, the four loopback listeners, the maildir next hop).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use moat_edge::config::{
    LegacyTls, ListenerConfig, ListenerKind, NextHopConfig, TlsConfig, TlsVersion,
};
use moat_edge::EdgeConfig;

use super::DevArgs;

/// Edge 1's configuration and the maildir it delivers into (none when `--config` names
/// another next hop). `cert` and `key` are the dev CA's server certificate for the
/// listeners; `ca` also verifies client certificates.
pub(super) fn edge_config(
    args: &DevArgs,
    data: &Path,
    ca: &Path,
    cert: PathBuf,
    key: PathBuf,
) -> anyhow::Result<(EdgeConfig, Option<PathBuf>)> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            EdgeConfig::parse(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => EdgeConfig::default(),
    };
    if args
        .config
        .as_ref()
        .is_none_or(|_| cfg.node_id == EdgeConfig::default().node_id)
    {
        cfg.node_id = "edge-1".into();
    }
    if cfg.tls.is_none() {
        // Client certificates issued by the dev CA match connectors by certificate name; a
        // client without one is served all the same.
        cfg.tls = Some(TlsConfig {
            cert,
            key,
            client_ca: Some(ca.to_path_buf()),
            reload_interval: std::time::Duration::from_secs(5),
        });
    }
    if cfg.listeners.is_empty() {
        let at = |kind, port| ListenerConfig {
            kind,
            name: None,
            address: ([127, 0, 0, 1], port).into(),
            proxy_protocol: false,
            tls: None,
            tls_min_version: TlsVersion::Tls12,
            legacy_tls: LegacyTls::SpeedBump,
            limits: Default::default(),
        };
        cfg.listeners = vec![
            at(ListenerKind::Mx, args.mx_port),
            at(ListenerKind::Submission, args.submission_port),
            at(ListenerKind::Smtps, args.smtps_port),
            ListenerConfig {
                name: Some("legacy-submission".into()),
                tls_min_version: TlsVersion::Tls10,
                legacy_tls: LegacyTls::OptIn,
                ..at(ListenerKind::Submission, args.legacy_port)
            },
        ];
    }
    let maildir = data.join("mail");
    if cfg.next_hop.is_none() {
        cfg.next_hop = Some(NextHopConfig::Maildir {
            path: maildir.clone(),
        });
    }
    let maildir = match &cfg.next_hop {
        Some(NextHopConfig::Maildir { path }) => Some(path.clone()),
        _ => None,
    };

    Ok((cfg, maildir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        dev: DevArgs,
    }

    #[test]
    fn without_a_file_edge_1_gets_the_dev_defaults() {
        let args = Cli::try_parse_from(["moat-dev"]).expect("defaults").dev;
        let data = Path::new("/tmp/moat-dev-test");
        let (cfg, maildir) = edge_config(
            &args,
            data,
            Path::new("ca.pem"),
            "server.pem".into(),
            "server-key.pem".into(),
        )
        .expect("config");
        assert_eq!(cfg.node_id, "edge-1");
        assert_eq!(maildir, Some(data.join("mail")));
        let tls = cfg.tls.as_ref().expect("tls");
        assert_eq!(tls.cert, PathBuf::from("server.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
        let ports: Vec<u16> = cfg.listeners.iter().map(|l| l.address.port()).collect();
        assert_eq!(
            ports,
            vec![
                args.mx_port,
                args.submission_port,
                args.smtps_port,
                args.legacy_port
            ]
        );
        assert!(cfg.listeners.iter().all(|l| l.address.ip().is_loopback()));
        assert_eq!(cfg.listeners[3].legacy_tls, LegacyTls::OptIn);
    }
}
