//! A minimal SMTP client for load and raw-protocol tests (the standard clients cover the rest).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use moat_shared::smtp::ReplyReader;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Dot-stuffs a message and appends the terminator (the one the relay uses).
pub use moat_shared::smtp::stuff;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    Arc::new(tls_builder(ca).with_no_client_auth())
}

/// A client presenting `cert_pem` (leaf first) and `key_pem`.
pub fn tls_config_with_client_cert(
    ca: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Arc<rustls::ClientConfig> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("client chain");
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("client key");
    Arc::new(
        tls_builder(ca)
            .with_client_auth_cert(chain, key)
            .expect("client auth"),
    )
}

fn tls_builder(
    ca: &Path,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
}

pub struct Client {
    io: Box<dyn Stream>,
    /// Bytes read that no whole reply has used yet.
    replies: ReplyReader,
    /// The server's leaf certificate, once TLS is up.
    pub peer_cert: Option<Vec<u8>>,
}

impl Client {
    /// Connects and reads the greeting; returns it too.
    pub async fn connect(addr: &str) -> std::io::Result<(Self, String)> {
        let tcp = TcpStream::connect(addr).await?;
        let mut c = Self::from_stream(tcp);
        let greeting = c.reply().await?;
        Ok((c, greeting))
    }

    /// Connects from a chosen local address (any 127.x.y.z works on loopback), so a test can
    /// play several sending servers; reads the greeting.
    pub async fn connect_from(addr: &str, source: &str) -> std::io::Result<(Self, String)> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(
            format!("{source}:0")
                .parse()
                .map_err(std::io::Error::other)?,
        )?;
        let tcp = socket
            .connect(addr.parse().map_err(std::io::Error::other)?)
            .await?;
        let mut c = Self::from_stream(tcp);
        let greeting = c.reply().await?;
        Ok((c, greeting))
    }

    /// Wraps a connected stream without reading anything.
    pub fn from_stream(tcp: TcpStream) -> Self {
        Self {
            io: Box::new(tcp),
            replies: ReplyReader::new(),
            peer_cert: None,
        }
    }

    /// Reads one whole reply (all lines, trailing white space trimmed, joined with `\n`).
    pub async fn reply(&mut self) -> std::io::Result<String> {
        let mut chunk = [0; 4096];
        let reply = loop {
            if let Some(r) = self.replies.next_reply().map_err(std::io::Error::other)? {
                break r;
            }
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                break self
                    .replies
                    .finish()
                    .map_err(std::io::Error::other)?
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            }
            self.replies.feed(&chunk[..n]);
        };
        let lines: Vec<&str> = reply.lines.iter().map(|l| l.trim_end()).collect();
        Ok(lines.join("\n"))
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Sends a command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// EHLO, STARTTLS, handshake, EHLO again.
    pub async fn starttls(mut self, tls: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let r = self.cmd("EHLO client.test").await?;
        expect(r.contains("STARTTLS"), &r)?;
        let r = self.cmd("STARTTLS").await?;
        expect(r.starts_with("220 "), &r)?;
        let name = ServerName::try_from("localhost").expect("name");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, self.io)
            .await?;
        let peer_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let mut c = Self {
            io: Box::new(stream),
            replies: ReplyReader::new(),
            peer_cert,
        };
        let r = c.cmd("EHLO client.test").await?;
        expect(r.starts_with("250-"), &r)?;
        Ok(c)
    }

    /// MAIL, RCPT, DATA, the (already dot-stuffed, CRLF.CRLF-terminated) content; returns the
    /// final reply.
    pub async fn send_stuffed(
        &mut self,
        from: &str,
        to: &str,
        stuffed: &[u8],
    ) -> std::io::Result<String> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await?;
        if !r.starts_with("250") {
            return Ok(r);
        }
        let r = self.cmd(&format!("RCPT TO:<{to}>")).await?;
        if !r.starts_with("250") {
            return Ok(r);
        }
        let r = self.cmd("DATA").await?;
        if !r.starts_with("354") {
            return Ok(r);
        }
        for chunk in stuffed.chunks(256 * 1024) {
            self.write(chunk).await?;
        }
        tokio::time::timeout(Duration::from_secs(120), self.reply())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

/// Turns an unexpected reply into an error (a panic inside a load task would hang its peers).
fn expect(ok: bool, reply: &str) -> std::io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("unexpected reply: {reply}")))
    }
}
