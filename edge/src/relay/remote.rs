//! SMTP and LMTP next hops: a small client that mirrors the client's transaction.

use std::sync::Arc;
use std::time::Duration;

use moat_shared::smtp::{DotStuffer, ReplyReader};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::hop_failure;
use crate::config::{NextHopTls, RemoteHop};
use crate::session::command::{Address, BodyType};
use crate::session::reply::{self, Reply};
use crate::session::Envelope;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A configured SMTP/LMTP next hop.
pub struct Remote {
    address: String,
    lmtp: bool,
    starttls: NextHopTls,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
    helo: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("address", &self.address)
            .field("lmtp", &self.lmtp)
            .finish()
    }
}

impl Remote {
    /// Whether a TCP connection to the next hop opens within its timeout.
    pub async fn probe(&self) -> Result<String, String> {
        match timeout(self.timeout, TcpStream::connect(&self.address)).await {
            Ok(Ok(_)) => Ok(format!("{} accepts connections", self.address)),
            Ok(Err(e)) => Err(format!("{}: {e}", self.address)),
            Err(_) => Err(format!("{}: connection timed out", self.address)),
        }
    }

    /// Prepares the client settings.
    pub fn new(cfg: &RemoteHop, lmtp: bool, helo: &str) -> Result<Self, String> {
        let host = cfg
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| format!("next-hop address `{}` needs a port", cfg.address))?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("next-hop host `{host}`: {e}"))?;
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let tls = match &cfg.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    roots
                        .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unauthenticated::new()))
                .with_no_client_auth(),
        };
        Ok(Self {
            address: cfg.address.clone(),
            lmtp,
            starttls: cfg.starttls,
            tls: Arc::new(tls),
            server_name,
            timeout: cfg.timeout,
            helo: helo.to_owned(),
        })
    }

    /// Connects, greets, negotiates TLS and sends MAIL.
    pub async fn open(&self, envelope: &Envelope) -> Result<RemoteTxn, Reply> {
        let unavailable = |what: String| {
            tracing::warn!(next_hop = %self.address, "next hop unavailable: {what}");
            Reply::from(reply::NEXT_HOP_UNAVAILABLE)
        };
        let tcp = timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| unavailable("connect timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn {
            io: Box::new(tcp),
            replies: ReplyReader::new(),
            timeout: self.timeout,
        };
        let greeting = conn.read_reply().await.map_err(unavailable)?;
        if greeting.code != 220 {
            return Err(unavailable(greeting.summary()));
        }
        let mut ext = conn
            .hello(&self.helo, self.lmtp)
            .await
            .map_err(unavailable)?;
        let offered = ext.iter().any(|e| e.eq_ignore_ascii_case("STARTTLS"));
        let use_tls = match self.starttls {
            NextHopTls::None => false,
            NextHopTls::Opportunistic => offered,
            NextHopTls::Required if offered => true,
            NextHopTls::Required => {
                return Err(unavailable("STARTTLS required but not offered".into()))
            }
        };
        if use_tls {
            let r = conn.command("STARTTLS").await.map_err(unavailable)?;
            if r.code != 220 {
                return Err(unavailable(format!("STARTTLS refused: {}", r.summary())));
            }
            // The next hop must not have sent anything after its 220.
            if conn.replies.has_pending() {
                return Err(unavailable("data after STARTTLS reply".into()));
            }
            let tls = TlsConnector::from(Arc::clone(&self.tls))
                .connect(self.server_name.clone(), conn.io)
                .await
                .map_err(|e| unavailable(format!("TLS handshake: {e}")))?;
            conn.io = Box::new(tls);
            ext = conn
                .hello(&self.helo, self.lmtp)
                .await
                .map_err(unavailable)?;
        }
        let has = |k: &str| {
            ext.iter().any(|e| {
                e.split(' ')
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(k))
            })
        };
        let mut mail = match &envelope.from {
            Some(a) => format!("MAIL FROM:<{a}>"),
            None => "MAIL FROM:<>".to_owned(),
        };
        if envelope.params.smtputf8 {
            if !has("SMTPUTF8") {
                return Err(reply::NEXT_HOP_NO_SMTPUTF8.into());
            }
            mail.push_str(" SMTPUTF8");
        }
        if envelope.params.body == BodyType::EightBitMime && has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if let (Some(size), true) = (envelope.params.size, has("SIZE")) {
            mail.push_str(&format!(" SIZE={size}"));
        }
        let r = conn
            .command(&mail)
            .await
            .map_err(|e| hop_failure("MAIL", e))?;
        if !r.is_positive() {
            return Err(r);
        }
        Ok(RemoteTxn {
            conn,
            lmtp: self.lmtp,
            accepted: 0,
            stuffer: DotStuffer::new(),
            failed: None,
        })
    }
}

/// A transaction open at the next hop.
pub struct RemoteTxn {
    conn: Conn,
    lmtp: bool,
    accepted: usize,
    stuffer: DotStuffer,
    failed: Option<String>,
}

impl std::fmt::Debug for RemoteTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTxn")
            .field("lmtp", &self.lmtp)
            .finish()
    }
}

impl RemoteTxn {
    /// Forwards RCPT; the next hop's reply is the answer.
    pub async fn rcpt(&mut self, to: &Address) -> Reply {
        match self.conn.command(&format!("RCPT TO:<{to}>")).await {
            Ok(r) => {
                if r.is_positive() {
                    self.accepted += 1;
                }
                r
            }
            Err(e) => hop_failure("RCPT", e),
        }
    }

    /// Sends DATA.
    pub async fn start_body(&mut self) -> Reply {
        match self.conn.command("DATA").await {
            Ok(r) if r.code == 354 => reply::START_DATA.into(),
            Ok(r) if r.is_positive() => hop_failure("DATA", format!("unexpected {}", r.summary())),
            Ok(r) => r,
            Err(e) => hop_failure("DATA", e),
        }
    }

    /// Streams content, dot-stuffing it.
    pub async fn body(&mut self, content: &[u8]) {
        if self.failed.is_some() || content.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(content.len() + 64);
        self.stuffer.push(content, &mut out);
        if let Err(e) = self.conn.write(&out).await {
            self.failed = Some(e);
        }
    }

    /// Ends the body and reads the verdict: one reply (SMTP) or one per recipient (LMTP).
    pub async fn finish(mut self) -> Reply {
        if let Some(e) = self.failed.take() {
            return hop_failure("body", e);
        }
        if let Err(e) = self.conn.write(self.stuffer.finish()).await {
            return hop_failure("end of data", e);
        }
        // RFC 5321 4.5.3.2.6 gives the server ten minutes for the final reply.
        self.conn.timeout *= 5;
        let replies = if self.lmtp { self.accepted.max(1) } else { 1 };
        let mut worst: Option<Reply> = None;
        for _ in 0..replies {
            match self.conn.read_reply().await {
                // Any transient failure makes the client retry the whole message (a recipient
                // already delivered may see it twice); a permanent one bounces it. Either way
                // nothing is lost.
                Ok(r) if !r.is_positive() => {
                    if worst.as_ref().is_none_or(|w| !w.is_transient()) {
                        worst = Some(r);
                    }
                }
                Ok(r) => {
                    if worst.is_none() && !self.lmtp {
                        worst = Some(accepted(&r));
                    }
                }
                Err(e) => return hop_failure("end of data", e),
            }
        }
        let _ = timeout(Duration::from_secs(5), self.conn.command("QUIT")).await;
        match worst {
            Some(r) => r,
            None => reply::MESSAGE_ACCEPTED.into(),
        }
    }

    /// Drops the connection: a next hop discards a transaction that never saw its end.
    pub async fn abort(mut self) {
        let _ = self.conn.io.shutdown().await;
    }
}

/// The final reply for a message an SMTP next hop accepted: `250 2.6.0` (the edge's contract for
/// "handed over") with the next hop's text relayed once, not nested in the edge's own text (a
/// Moat next hop would otherwise give `Message accepted for delivery (Message accepted ...)`).
fn accepted(next_hop: &Reply) -> Reply {
    let text = next_hop.lines.join(" ");
    if text.trim().is_empty() {
        reply::MESSAGE_ACCEPTED.into()
    } else {
        Reply::with_text(reply::MESSAGE_ACCEPTED, text)
    }
}

struct Conn {
    io: Box<dyn Stream>,
    /// Bytes read from the next hop that no complete reply has used yet.
    replies: ReplyReader,
    timeout: Duration,
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let io = &mut self.io;
        timeout(self.timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| "write timed out".to_owned())?
        .map_err(|e| e.to_string())
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// EHLO (or LHLO); returns the extension keywords.
    async fn hello(&mut self, name: &str, lmtp: bool) -> Result<Vec<String>, String> {
        let verb = if lmtp { "LHLO" } else { "EHLO" };
        let r = self.command(&format!("{verb} {name}")).await?;
        if r.code != 250 {
            return Err(format!("{verb} refused: {}", r.summary()));
        }
        Ok(r.lines.iter().skip(1).map(|l| l.to_string()).collect())
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        timeout(self.timeout, self.read_reply_inner())
            .await
            .map_err(|_| "timed out waiting for a reply".to_owned())?
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, String> {
        // On the heap: a session's future would otherwise carry the buffer while idle.
        let mut chunk = vec![0; 4096];
        let reply = loop {
            if let Some(r) = self.replies.next_reply().map_err(|e| e.to_string())? {
                break r;
            }
            let n = self.io.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break self
                    .replies
                    .finish()
                    .map_err(|e| e.to_string())?
                    .ok_or("connection closed")?;
            }
            self.replies.feed(&chunk[..n]);
        };
        // The enhanced status code, when the first line carries one, goes apart.
        let status = reply.enhanced().unwrap_or_default().to_owned();
        Ok(Reply::relayed(
            reply.code,
            status,
            reply.texts_without_enhanced(),
        ))
    }
}

/// Accepts any next-hop certificate: opportunistic TLS without a configured CA encrypts against
/// passive eavesdropping but does not authenticate (Postfix's `may` level). Signatures are still
/// checked, so the handshake itself is sound.
#[derive(Debug)]
pub struct Unauthenticated(Arc<rustls::crypto::CryptoProvider>);

impl Unauthenticated {
    /// A verifier with the edge's crypto provider.
    pub fn new() -> Self {
        Self(crate::tls::provider())
    }
}

impl Default for Unauthenticated {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_hops_acceptance_is_relayed_once_and_tagged_once() {
        let hop = Reply::relayed(
            250,
            "2.6.0".into(),
            vec!["Message accepted for delivery (1.M2.edge-1) [edge-1]".into()],
        );
        let mut out = Vec::new();
        accepted(&hop).render("edge-1", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "250 2.6.0 Message accepted for delivery (1.M2.edge-1) [edge-1]\r\n"
        );
        let mut out = Vec::new();
        accepted(&Reply::relayed(250, String::new(), vec![String::new()])).render("e", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "250 2.6.0 Message accepted for delivery [e]\r\n"
        );
    }
}
