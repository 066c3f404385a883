//! The tokio driver: connects a [`Session`] to its socket, the TLS upgrade, the policy and the
//! next hop. All protocol decisions are the machine's; this loop only moves bytes and waits.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use moat_shared::PolicyHandle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

use super::reply::{self, Reply};
use super::{Action, Session};
use crate::relay::{NextHop, Txn};
use crate::tls::Certificates;
use crate::verdict::{self, RcptVerdict};

/// A client connection, before or after TLS.
pub enum Io {
    /// Clear text.
    Plain(TcpStream),
    /// TLS (implicit, or after STARTTLS).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What every session of an edge shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Node name for reply tags.
    pub node: String,
    /// The current policy.
    pub policy: PolicyHandle,
    /// Where mail goes.
    pub next_hop: Arc<NextHop>,
    /// Server certificates, when TLS is configured.
    pub certs: Option<Certificates>,
    /// How long to wait for a command.
    pub idle_timeout: Duration,
    /// How long to wait for message content.
    pub data_timeout: Duration,
    /// Becomes `true` when the edge starts draining.
    pub shutdown: watch::Receiver<bool>,
}

/// Size of one socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Runs the TLS handshake on a clear-text connection.
pub async fn handshake(
    tcp: TcpStream,
    certs: &Certificates,
    limit: Duration,
) -> Result<Io, String> {
    match timeout(limit, certs.acceptor().accept(tcp)).await {
        Ok(Ok(tls)) => Ok(Io::Tls(Box::new(tls))),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// Drives `session` over `io` until it ends. Any transaction still open at the end is
/// aborted: nothing the client was not told `250` about is delivered.
pub async fn run(mut io: Io, mut session: Session, shared: &Shared) {
    let mut out = Vec::new();
    let mut txn: Option<Txn> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut shutdown = shared.shutdown.clone();
    let id = session.facts().id.clone();
    loop {
        while let Some(action) = session.poll(SystemTime::now()) {
            match action {
                Action::Send(r) => r.render(&shared.node, &mut out),
                Action::Open(envelope) => {
                    let r = match shared.next_hop.open(&envelope).await {
                        Ok(t) => {
                            txn = Some(t);
                            reply::SENDER_OK.into()
                        }
                        Err(r) => r,
                    };
                    session.resolve(r, SystemTime::now());
                }
                Action::AddRecipient(to) => {
                    let snapshot = shared.policy.load();
                    let r = match verdict::recipient(&snapshot, &to) {
                        RcptVerdict::Deny(r) => r,
                        RcptVerdict::Accept(_) => match txn.as_mut() {
                            Some(t) => t.rcpt(&to).await,
                            None => reply::LOCAL_ERROR.into(),
                        },
                    };
                    session.resolve(r, SystemTime::now());
                }
                Action::StartBody => {
                    let r = match txn.as_mut() {
                        Some(t) => t.start_body().await,
                        None => reply::LOCAL_ERROR.into(),
                    };
                    session.resolve(r, SystemTime::now());
                }
                Action::Body(content) => {
                    if let Some(t) = txn.as_mut() {
                        t.body(&content).await;
                    }
                }
                Action::EndBody => {
                    let r: Reply = match txn.take() {
                        Some(t) => t.finish().await,
                        None => reply::LOCAL_ERROR.into(),
                    };
                    tracing::info!(session = %id, reply = %r.summary(), "message");
                    session.resolve(r, SystemTime::now());
                }
                Action::Abort => {
                    if let Some(t) = txn.take() {
                        t.abort().await;
                    }
                }
                Action::UpgradeTls => {
                    if flush(&mut io, &mut out, shared.idle_timeout).await.is_err() {
                        return;
                    }
                    let (Io::Plain(tcp), Some(certs)) = (io, shared.certs.as_ref()) else {
                        return;
                    };
                    io = match handshake(tcp, certs, shared.idle_timeout).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::info!(session = %id, "{e}");
                            return;
                        }
                    };
                    if let Io::Tls(tls) = &io {
                        session.tls_established(crate::tls::facts(tls.get_ref().1));
                    }
                }
                Action::Close => {
                    let _ = flush(&mut io, &mut out, shared.idle_timeout).await;
                    let _ = timeout(Duration::from_secs(5), io.shutdown()).await;
                    if let Some(t) = txn.take() {
                        t.abort().await;
                    }
                    return;
                }
            }
        }
        if flush(&mut io, &mut out, shared.idle_timeout).await.is_err() {
            break;
        }
        let wait = if session.in_body() {
            shared.data_timeout
        } else {
            // A command trickling in byte by byte does not reset its own clock.
            let left = session.command_deadline().map(|d| {
                d.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
            left.map_or(shared.idle_timeout, |l| l.min(shared.idle_timeout))
        };
        let idle = session.is_idle();
        tokio::select! {
            read = timeout(wait, io.read(&mut buf)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => session.receive(&buf[..n]),
                Err(_) => session.timeout(),
            },
            _ = shutdown.wait_for(|&s| s), if idle => session.shutdown(),
        }
    }
    if let Some(t) = txn.take() {
        t.abort().await;
    }
}

async fn flush(io: &mut Io, out: &mut Vec<u8>, limit: Duration) -> Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = timeout(limit, async {
        io.write_all(out).await?;
        io.flush().await
    })
    .await;
    out.clear();
    match r {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
