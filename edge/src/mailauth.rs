//! SPF, DKIM and DMARC checks of messages that arrived through a connector, counted for the
//! control plane's detection (never used to refuse mail here).
//!
//! Enabled with `[authentication] checks = true`. The checks run after the client got its
//! `250`, on a copy of the message kept while it streamed to the next hop (at most
//! `max-message` octets; a longer message is checked for SPF only). DNS goes to the system
//! resolver or to the configured `dns` server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mail_auth::hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use mail_auth::{
    dmarc::verify::DmarcParameters, spf::verify::SpfParameters, AuthenticatedMessage, DkimResult,
    DmarcResult, MessageAuthenticator, SpfResult,
};

use crate::control::Counters;
use moat_shared::signal::{self, ConnectorCounter};
use moat_shared::ConnectorId;

/// What is checked of one delivered message.
#[derive(Debug)]
pub struct Delivered {
    /// Its connector.
    pub connector: ConnectorId,
    /// The client's address.
    pub ip: IpAddr,
    /// The client's EHLO name.
    pub helo: String,
    /// The envelope sender (empty for `<>`).
    pub mail_from: String,
    /// The message, when it was short enough to keep.
    pub message: Option<Vec<u8>>,
}

/// A DNS resolver for the checks.
#[derive(Clone)]
pub struct Checker {
    auth: Arc<MessageAuthenticator>,
    /// Most octets of a message kept for DKIM.
    pub max_message: usize,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checker")
    }
}

impl Checker {
    /// A checker asking `dns` (`host:port`), or the system's resolvers when `None`.
    pub fn new(dns: Option<SocketAddr>, max_message: usize) -> Result<Self, String> {
        let auth = match dns {
            Some(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                let mut opts = ResolverOpts::default();
                opts.attempts = 1;
                opts.timeout = std::time::Duration::from_secs(2);
                MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], group), opts)
            }
            None => MessageAuthenticator::new_system_conf(),
        }
        .map_err(|e| format!("DNS resolver for SPF/DKIM/DMARC: {e}"))?;
        Ok(Self {
            auth: Arc::new(auth),
            max_message,
        })
    }

    /// Checks one delivered message and counts the outcome against its connector:
    /// `auth-checked`, and `spf-fail`, `dkim-fail`, `dmarc-fail` as they apply. `host` is this
    /// edge's name.
    pub async fn check_and_count(&self, counters: &Counters, host: &str, d: &Delivered) {
        let (connector, ip, helo, mail_from) = (&d.connector, d.ip, &d.helo, &d.mail_from);
        let helo = helo.as_str();
        let message = d.message.as_deref();
        let sender = if mail_from.is_empty() {
            format!("postmaster@{helo}")
        } else {
            mail_from.to_owned()
        };
        let spf = self
            .auth
            .verify_spf(SpfParameters::verify_mail_from(ip, helo, host, &sender))
            .await;
        let key = connector.to_string();
        let add = |c: ConnectorCounter| counters.add(signal::CONNECTOR, &key, c.as_str(), 1);
        add(ConnectorCounter::AuthChecked);
        if matches!(spf.result(), SpfResult::Fail | SpfResult::SoftFail) {
            add(ConnectorCounter::SpfFail);
        }
        let Some(message) = message.and_then(AuthenticatedMessage::parse) else {
            return;
        };
        let dkim = self.auth.verify_dkim(&message).await;
        if dkim
            .iter()
            .any(|d| matches!(d.result(), DkimResult::Fail(_)))
        {
            add(ConnectorCounter::DkimFail);
        }
        let domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_owned();
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(&message, &dkim, &domain, &spf))
            .await;
        tracing::debug!(
            %connector,
            spf = ?spf.result(),
            dmarc_spf = ?dmarc.spf_result(),
            dmarc_dkim = ?dmarc.dkim_result(),
            "message authentication"
        );
        // DMARC fails when the From domain publishes a record and neither an aligned SPF pass
        // nor an aligned DKIM pass backs the message.
        if dmarc.dmarc_record().is_some()
            && *dmarc.spf_result() != DmarcResult::Pass
            && *dmarc.dkim_result() != DmarcResult::Pass
        {
            add(ConnectorCounter::DmarcFail);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn from_addresses_are_read_in_every_form() {
        for (header, want) in [
            ("From: a@example.test", "a@example.test"),
            ("From: <a@example.test>", "a@example.test"),
            ("From: Someone <a@example.test>", "a@example.test"),
        ] {
            let raw =
                format!("Received: from x\r\n\tby y; now\r\n{header}\r\nTo: b@c\r\n\r\nbody\r\n");
            let m = mail_auth::AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
            assert_eq!(m.from, vec![want.to_owned()], "{header}");
        }
    }
}
