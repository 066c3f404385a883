//! The legacy TLS engine: TLS 1.0 and 1.1 through OpenSSL, for listeners whose
//! `tls-min-version` is below 1.2.
//!
//! rustls does not implement TLS 1.0/1.1. On such a listener the edge peeks at the client's
//! ClientHello without consuming it ([`peek_hello`]): a client that offers TLS 1.2 or newer
//! is handed to rustls as on every other listener; a client whose highest version is 1.0 or
//! 1.1 is handed to OpenSSL, configured for exactly those versions, at security level 0 (SHA-1
//! signatures are inherent to TLS 1.0/1.1) and with the ECDHE CBC suites only: never 3DES, RC4,
//! static RSA key exchange or export suites. Both engines report the same [`TlsFacts`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use openssl::ssl::{
    Ssl, SslAcceptor, SslFiletype, SslMethod, SslOptions, SslRef, SslVerifyMode, SslVersion,
};
use openssl::x509::X509Name;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::config::{TlsConfig, TlsVersion};
use crate::session::TlsFacts;
use crate::tls::TlsError;

/// The suites offered to TLS 1.0/1.1 clients: ECDHE with AES-CBC and SHA-1 MACs, the only
/// forward-secret suites those versions have. `@SECLEVEL=0` lets OpenSSL 3 negotiate them. In
/// the server's order of preference (`CIPHER_SERVER_PREFERENCE`), cheapest first as for rustls
/// (`crate::tls::SUITE_ORDER`): AES-128 before AES-256.
pub const LEGACY_CIPHERS: &str = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:\
                                  ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:@SECLEVEL=0";

/// What a ClientHello offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// The client offers TLS 1.2 or newer: rustls.
    Modern,
    /// The client's highest version is TLS 1.0 or 1.1 (or older): OpenSSL.
    Legacy,
    /// Not a TLS handshake record: rustls, which answers with the right alert.
    NotTls,
    /// A TLS 1.0/1.1 ClientHello carrying `TLS_FALLBACK_SCSV`: a client that was pushed down
    /// from a newer version, which this listener supports. Refused with the
    /// `inappropriate_fallback` alert (RFC 7507).
    Fallback,
}

/// The `inappropriate_fallback` alert (fatal, 86) in a TLS 1.0 record.
pub const INAPPROPRIATE_FALLBACK: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x56];

/// Classifies the bytes at the start of a TLS connection: `None` while more are needed.
///
/// The highest offered version comes from the `supported_versions` extension (RFC 8446
/// 4.2.1; GREASE values ignored) when present, else from the ClientHello's `legacy_version`.
pub fn classify(buf: &[u8]) -> Option<Hello> {
    const HANDSHAKE: u8 = 0x16;
    const CLIENT_HELLO: u8 = 1;
    if *buf.first()? != HANDSHAKE {
        return Some(Hello::NotTls);
    }
    if buf.len() < 5 {
        return None;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    // A ClientHello that spans records is parsed as far as the first record goes.
    let complete = buf.len() >= 5 + record_len;
    if !complete && buf.len() < MAX_PEEK {
        return None;
    }
    let hs = &buf[5..buf.len().min(5 + record_len)];
    if hs.len() < 6 {
        return Some(Hello::NotTls);
    }
    if hs[0] != CLIENT_HELLO {
        return Some(Hello::NotTls);
    }
    let legacy_version = u16::from_be_bytes([hs[4], hs[5]]);
    let highest = supported_versions(&hs[4..]).unwrap_or(legacy_version);
    Some(if highest >= 0x0303 {
        Hello::Modern
    } else if offers_fallback_scsv(&hs[4..]) {
        Hello::Fallback
    } else {
        Hello::Legacy
    })
}

/// Whether a ClientHello body (from `legacy_version`) lists `TLS_FALLBACK_SCSV` (0x5600).
fn offers_fallback_scsv(body: &[u8]) -> bool {
    cipher_suites(body).is_some_and(|(s, _)| s.chunks_exact(2).any(|c| c == [0x56, 0x00]))
}

/// The cipher suite list of a ClientHello body (from `legacy_version`), and a reader at what
/// follows it.
fn cipher_suites(body: &[u8]) -> Option<(&[u8], Reader<'_>)> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(usize::from(sid))?;
    let n = r.u16()?;
    let suites = r.take(usize::from(n))?;
    Some((suites, r))
}

/// The highest version in the `supported_versions` extension of a ClientHello body
/// (starting at `legacy_version`), if the extension is there and readable.
fn supported_versions(body: &[u8]) -> Option<u16> {
    let (_, mut r) = cipher_suites(body)?;
    let compression = r.u8()?;
    r.take(usize::from(compression))?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len)).unwrap_or(r.0));
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let data = exts.take(usize::from(len))?;
        if kind == 0x002b {
            let mut v = Reader(data);
            let n = v.u8()?;
            let list = v.take(usize::from(n))?;
            return list
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .filter(|v| v & 0x0f0f != 0x0a0a) // GREASE
                .max();
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Most bytes peeked: a full TLS record and its header.
const MAX_PEEK: usize = 5 + 16_384;

/// Looks at the client's first TLS record without consuming it, for at most `limit`.
pub async fn peek_hello(tcp: &TcpStream, limit: Duration) -> Result<Hello, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; MAX_PEEK];
    let mut seen = 0;
    loop {
        // `peek` returns at once while bytes are queued, before the timer is ever polled, and
        // never reports the end of the stream behind unread bytes: the deadline is checked
        // here, or a client that sends part of a ClientHello holds its session for ever.
        if tokio::time::Instant::now() >= deadline {
            return Err("TLS handshake timed out".into());
        }
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        if n == 0 {
            return Err("connection closed before the TLS handshake".into());
        }
        if let Some(h) = classify(&buf[..n]) {
            return Ok(h);
        }
        if n == seen {
            // Part of the record is here and peek would return it again at once. A client
            // that has gone (FIN after a partial record) is seen through the socket's
            // read-closed readiness, since peek never reports it: its session ends now
            // rather than at the deadline. Otherwise wait a little for the rest instead of
            // spinning.
            let ready = tokio::time::timeout_at(deadline, tcp.ready(Interest::READABLE))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            if ready.is_read_closed() {
                return Err("connection closed during the TLS handshake".into());
            }
            tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(5)),
            )
            .await;
        }
        seen = n;
    }
}

/// The OpenSSL acceptor of one listener, rebuilt when the certificate files change.
#[derive(Clone)]
pub struct LegacyEngine {
    current: Arc<ArcSwap<SslAcceptor>>,
}

impl std::fmt::Debug for LegacyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LegacyEngine")
    }
}

fn ssl_err(path: &std::path::Path) -> impl Fn(openssl::error::ErrorStack) -> TlsError + '_ {
    move |e| TlsError::File {
        path: path.to_owned(),
        what: format!("OpenSSL: {e}"),
    }
}

/// Builds the OpenSSL acceptor for TLS `min` to 1.1 from the certificate files.
pub fn acceptor(cfg: &TlsConfig, min: TlsVersion) -> Result<SslAcceptor, TlsError> {
    let other = |e: openssl::error::ErrorStack| TlsError::Rustls(format!("OpenSSL: {e}"));
    let mut b = SslAcceptor::mozilla_intermediate(SslMethod::tls_server()).map_err(other)?;
    let min = match min {
        TlsVersion::Tls10 => SslVersion::TLS1,
        _ => SslVersion::TLS1_1,
    };
    b.set_min_proto_version(Some(min)).map_err(other)?;
    b.set_max_proto_version(Some(SslVersion::TLS1_1))
        .map_err(other)?;
    b.set_cipher_list(LEGACY_CIPHERS).map_err(other)?;
    b.set_options(
        SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::NO_COMPRESSION
            | SslOptions::NO_RENEGOTIATION,
    );
    b.set_certificate_chain_file(&cfg.cert)
        .map_err(ssl_err(&cfg.cert))?;
    b.set_private_key_file(&cfg.key, SslFiletype::PEM)
        .map_err(ssl_err(&cfg.key))?;
    b.check_private_key().map_err(ssl_err(&cfg.key))?;
    if let Some(ca) = &cfg.client_ca {
        // As with rustls: a client without a certificate is served; a presented certificate
        // must chain to the bundle.
        b.set_ca_file(ca).map_err(ssl_err(ca))?;
        b.set_client_ca_list(X509Name::load_client_ca_file(ca).map_err(ssl_err(ca))?);
        // As with rustls, an invalid chain does not fail the handshake: [`facts`] keeps its
        // names only when OpenSSL's verification succeeded.
        b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    }
    Ok(b.build())
}

impl LegacyEngine {
    /// Loads the files now (failing if they are bad) and starts watching them.
    pub fn load_and_watch(cfg: TlsConfig, min: TlsVersion) -> Result<Self, TlsError> {
        Ok(Self {
            current: crate::tls::load_and_watch(cfg, move |c| acceptor(c, min))?,
        })
    }

    /// Runs the OpenSSL handshake.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        limit: Duration,
    ) -> Result<SslStream<TcpStream>, String> {
        let acceptor = self.current.load_full();
        let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        match tokio::time::timeout(limit, Pin::new(&mut stream).accept()).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(format!("legacy TLS handshake failed: {e}")),
            Err(_) => Err("legacy TLS handshake timed out".into()),
        }
    }
}

/// The facts of an established OpenSSL connection, named as rustls names them.
pub fn facts(ssl: &SslRef) -> TlsFacts {
    let version = match ssl.version2() {
        Some(SslVersion::TLS1) => "TLSv1.0".to_owned(),
        Some(SslVersion::TLS1_1) => "TLSv1.1".to_owned(),
        Some(SslVersion::TLS1_2) => "TLSv1.2".to_owned(),
        Some(SslVersion::TLS1_3) => "TLSv1.3".to_owned(),
        _ => ssl.version_str().to_owned(),
    };
    let cipher = ssl
        .current_cipher()
        .map(|c| c.standard_name().unwrap_or(c.name()).to_owned())
        .unwrap_or_default();
    let verified = ssl.verify_result() == openssl::x509::X509VerifyResult::OK;
    let client_domains = ssl
        .peer_certificate()
        .filter(|_| verified)
        .and_then(|c| c.to_der().ok())
        .map(|der| crate::tls::certificate_domains(&der))
        .unwrap_or_default();
    TlsFacts {
        version: version.into(),
        cipher: cipher.into(),
        client_domains,
    }
}

/// Whether a negotiated version is TLS 1.0 or 1.1.
pub fn is_legacy(version: &str) -> bool {
    matches!(version, "TLSv1.0" | "TLSv1.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with the given legacy_version and, optionally, supported_versions.
    fn hello(legacy: u16, supported: Option<&[u16]>) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0xc0, 0x2f]); // one suite
        body.extend([1, 0]); // null compression
        let mut exts = vec![0x00, 0x0a, 0, 4, 0, 2, 0, 0x1d]; // supported_groups
        if let Some(vs) = supported {
            exts.extend([0x00, 0x2b]);
            exts.extend(((vs.len() * 2 + 1) as u16).to_be_bytes());
            exts.push((vs.len() * 2) as u8);
            for v in vs {
                exts.extend(v.to_be_bytes());
            }
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn versions_are_read_from_the_hello() {
        assert_eq!(classify(&hello(0x0301, None)), Some(Hello::Legacy));
        assert_eq!(classify(&hello(0x0302, None)), Some(Hello::Legacy));
        assert_eq!(classify(&hello(0x0303, None)), Some(Hello::Modern));
        // TLS 1.3 clients say 1.2 in legacy_version and list 1.3 (and GREASE) in the extension.
        assert_eq!(
            classify(&hello(0x0303, Some(&[0x3a3a, 0x0304, 0x0303]))),
            Some(Hello::Modern)
        );
        // A client that lists only 1.0/1.1 in supported_versions is legacy.
        assert_eq!(
            classify(&hello(0x0303, Some(&[0x0302, 0x0301]))),
            Some(Hello::Legacy)
        );
        assert_eq!(classify(b"EHLO x\r\n"), Some(Hello::NotTls));
        assert_eq!(classify(&[0x80, 0x2e, 0x01]), Some(Hello::NotTls));
    }

    #[test]
    fn a_fallback_to_tls_1_1_is_refused() {
        // Found by the TLS audit (sslyze): RFC 7507 wants a TLS 1.0/1.1 hello that carries
        // TLS_FALLBACK_SCSV refused where a newer version is supported, as it is here.
        let mut h = hello(0x0302, None);
        // The one suite 0xc02f becomes 0x5600.
        let at = h.windows(2).position(|w| w == [0xc0, 0x2f]).expect("suite");
        h[at..at + 2].copy_from_slice(&[0x56, 0x00]);
        assert_eq!(classify(&h), Some(Hello::Fallback));
        // The same marker from a TLS 1.2 client is rustls's business (nothing to refuse).
        let mut h = hello(0x0303, None);
        let at = h.windows(2).position(|w| w == [0xc0, 0x2f]).expect("suite");
        h[at..at + 2].copy_from_slice(&[0x56, 0x00]);
        assert_eq!(classify(&h), Some(Hello::Modern));
    }

    #[tokio::test]
    async fn a_partial_hello_times_out() {
        // Found by the adversarial suite: seven bytes of a ClientHello and then silence held
        // the session past every timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The client stays silent, connection open, until the test lets it go.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
            let _ = released.await;
            drop(c);
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            peek_hello(&tcp, Duration::from_millis(300)),
        )
        .await
        .expect("the peek outlived its own timeout");
        assert_eq!(r, Err("TLS handshake timed out".to_owned()));
        let _ = release.send(());
        client.await.unwrap();
    }

    #[tokio::test]
    async fn a_partial_hello_then_close_ends_at_once() {
        // Found by the adversarial suite: peek never reports the end of the stream behind
        // unread bytes, so a client that sent part of a ClientHello and closed held its
        // per-IP slot until the handshake deadline.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.shutdown().await.unwrap();
            c
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let started = std::time::Instant::now();
        let r = peek_hello(&tcp, Duration::from_secs(30)).await;
        assert_eq!(
            r,
            Err("connection closed during the TLS handshake".to_owned())
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(client.await.unwrap());
    }

    #[test]
    fn partial_records_wait_for_more() {
        let h = hello(0x0301, None);
        for cut in 0..h.len() {
            assert_eq!(classify(&h[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let h = hello(0x0303, Some(&[0x0304]));
        for i in 0..h.len() {
            for b in [0u8, 0xff, 0x2b] {
                let mut m = h.clone();
                m[i] = b;
                let _ = classify(&m);
            }
        }
    }
}
