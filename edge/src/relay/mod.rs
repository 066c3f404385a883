//! Next hops. The edge keeps no queue: each client transaction is mirrored, step by step, onto
//! one next-hop transaction, and the client hears `250` after its message only once the next
//! hop said so.
//!
//! - [`remote`]: an SMTP or LMTP server, with STARTTLS when offered or required.
//! - [`maildir`]: the embedded sink (write to `tmp/`, fsync, link into `new/`, fsync the
//!   directory), used by `moat dev` and small installations.

pub mod maildir;
pub mod remote;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::NextHopConfig;
use crate::session::command::Address;
use crate::session::reply::{self, Reply};
use crate::session::Envelope;

/// A configured next hop, shared by every session of an edge.
#[derive(Debug)]
pub enum NextHop {
    /// SMTP or LMTP.
    Remote(remote::Remote),
    /// The maildir sink.
    Maildir(maildir::Maildir),
}

impl NextHop {
    /// Prepares the next hop from configuration.
    pub fn new(cfg: &NextHopConfig, helo_name: &str) -> Result<Arc<Self>, String> {
        Ok(Arc::new(match cfg {
            NextHopConfig::Smtp(hop) => Self::Remote(remote::Remote::new(hop, false, helo_name)?),
            NextHopConfig::Lmtp(hop) => Self::Remote(remote::Remote::new(hop, true, helo_name)?),
            NextHopConfig::Maildir { path } => Self::Maildir(maildir::Maildir::new(path.clone())),
        }))
    }

    /// Probes the next hop every `every` forever, recording the outcome in `into`: a TCP
    /// connection for SMTP/LMTP, the root directory's existence for the maildir sink.
    pub async fn watch(self: Arc<Self>, into: Arc<Reachability>, every: Duration) {
        loop {
            let outcome = match &*self {
                Self::Remote(r) => r.probe().await,
                Self::Maildir(m) => m.probe().await,
            };
            into.set(outcome);
            tokio::time::sleep(every).await;
        }
    }

    /// Opens a transaction for `envelope` (the MAIL step).
    pub async fn open(&self, envelope: &Envelope) -> Result<Txn, Reply> {
        match self {
            Self::Remote(r) => r.open(envelope).await.map(Txn::Remote),
            Self::Maildir(m) => Ok(Txn::Maildir(m.open(envelope.from.as_ref()))),
        }
    }
}

/// Whether a next hop answered its last probe (up until a probe says otherwise).
#[derive(Debug)]
pub struct Reachability {
    up: AtomicBool,
    detail: Mutex<String>,
    since: Instant,
}

impl Default for Reachability {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            detail: Mutex::new("not probed yet".into()),
            since: Instant::now(),
        }
    }
}

impl Reachability {
    /// Records a probe's outcome.
    pub fn set(&self, outcome: Result<String, String>) {
        let (up, text) = match outcome {
            Ok(t) => (true, t),
            Err(e) => (false, e),
        };
        self.up.store(up, Ordering::Relaxed);
        if let Ok(mut d) = self.detail.lock() {
            *d = text;
        }
    }

    /// Whether the last probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// What the last probe saw.
    pub fn detail(&self) -> String {
        self.detail.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Seconds since this record was made (the process's age, near enough).
    pub fn age_seconds(&self) -> f64 {
        self.since.elapsed().as_secs_f64()
    }
}

/// One next-hop transaction.
#[derive(Debug)]
pub enum Txn {
    /// At an SMTP/LMTP server.
    Remote(remote::RemoteTxn),
    /// In the maildir sink.
    Maildir(maildir::MaildirTxn),
}

impl Txn {
    /// Adds a recipient; the reply is the next hop's.
    pub async fn rcpt(&mut self, to: &Address) -> Reply {
        match self {
            Self::Remote(t) => t.rcpt(to).await,
            Self::Maildir(t) => t.rcpt(to),
        }
    }

    /// Starts the body (DATA); a positive reply means content may follow.
    pub async fn start_body(&mut self) -> Reply {
        match self {
            Self::Remote(t) => t.start_body().await,
            Self::Maildir(t) => t.start_body().await,
        }
    }

    /// Streams content. A failure is remembered and reported by [`Txn::finish`].
    pub async fn body(&mut self, content: &[u8]) {
        match self {
            Self::Remote(t) => t.body(content).await,
            Self::Maildir(t) => t.body(content).await,
        }
    }

    /// Completes the message; a positive reply means the next hop has it.
    pub async fn finish(self) -> Reply {
        match self {
            Self::Remote(t) => t.finish().await,
            Self::Maildir(t) => t.finish().await,
        }
    }

    /// Discards the transaction; nothing of it is delivered.
    pub async fn abort(self) {
        match self {
            Self::Remote(t) => t.abort().await,
            Self::Maildir(t) => t.abort().await,
        }
    }
}

/// The reply for a failure talking to the next hop, logged with its cause.
fn hop_failure(what: &str, err: impl std::fmt::Display) -> Reply {
    tracing::warn!(error = %err, "next hop failed during {what}");
    reply::NEXT_HOP_FAILED.into()
}
