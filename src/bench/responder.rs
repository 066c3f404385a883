//! `moat bench starttls-responder`: the least an SMTP server can do around a STARTTLS handshake,
//! the yardstick for the edge's handshake-only load (issue 20).
//!
//! One current-thread runtime (an edge core's worth). Per connection: the greeting, a fixed
//! multi-line EHLO reply, `220` to STARTTLS, the handshake with the edge's own rustls settings
//! ([`moat_edge::tls::server_config`]: the same provider, suite order and session tickets as an
//! edge before the control plane hands it ticket keys), then EHLO again and `221` to QUIT.
//! Nothing else: no session machine, policy, metrics, limits or timeouts. What the edge spends
//! beyond this is Moat's; what this spends beyond the TLS library alone is the kernel's TCP and
//! the SMTP exchange.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const GREETING: &[u8] = b"220 localhost ESMTP moat-bench\r\n";
/// As long as the edge's EHLO reply, STARTTLS offered.
const EHLO_PLAIN: &[u8] = b"250-localhost Hello bench.test [127.0.0.1]\r\n250-SIZE 26214400\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n\
250-STARTTLS\r\n250 HELP\r\n";
/// The same after TLS, without STARTTLS.
const EHLO_TLS: &[u8] = b"250-localhost Hello bench.test [127.0.0.1]\r\n250-SIZE 26214400\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n\
250 HELP\r\n";
const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const NOT_HERE: &[u8] = b"502 5.5.1 Not implemented\r\n";

/// Options of `moat bench starttls-responder`.
#[derive(clap::Args, Debug)]
pub(super) struct ResponderArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:12535")]
    listen: SocketAddr,
    /// PEM certificate chain; without it (and `--key`), a fresh ECDSA P-256 certificate for
    /// `localhost`, the kind `bench/compare.sh` gives the edge.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// Serves until killed, on a current-thread runtime of its own.
pub(super) async fn responder(args: ResponderArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("moat-responder-{}", std::process::id()));
    let (cert, key) = match (args.cert, args.key) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            std::fs::create_dir_all(&dir)?;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert =
                rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&c, cert.pem())?;
            std::fs::write(&k, key.serialize_pem())?;
            (c, k)
        }
    };
    let tls = moat_edge::config::TlsConfig {
        cert,
        key,
        client_ca: None,
        reload_interval: std::time::Duration::from_secs(5),
    };
    let config = moat_edge::tls::server_config(&tls, None)?.config;
    let _ = std::fs::remove_dir_all(&dir);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listen = args.listen;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let socket = TcpListener::bind(listen).await?;
            println!("{}", socket.local_addr()?);
            loop {
                let Ok((tcp, _)) = socket.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, acceptor).await;
                });
            }
        })
    })
    .await?
}

/// What a command line asks of the responder.
enum Next {
    /// Keep reading.
    More,
    /// Start TLS (the 220 is written).
    Tls,
    /// Close (the 221 is written).
    Close,
}

async fn serve(
    mut tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    tcp.write_all(GREETING).await?;
    if let Next::Tls = converse(&mut tcp, &mut buf, EHLO_PLAIN).await? {
        let mut tls = acceptor.accept(tcp).await?;
        buf.clear();
        if let Next::Close = converse(&mut tls, &mut buf, EHLO_TLS).await? {
            let _ = tls.shutdown().await;
        }
    }
    Ok(())
}

/// Reads commands and answers each complete line (pipelined ones in one write) until STARTTLS,
/// QUIT or the end of the stream.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    ehlo: &[u8],
) -> std::io::Result<Next> {
    let mut out = Vec::new();
    loop {
        if s.read_buf(buf).await? == 0 {
            return Ok(Next::Close);
        }
        let mut next = Next::More;
        let mut start = 0;
        while let Some(end) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + end];
            start += end + 1;
            let verb = line.get(..4).map(<[u8]>::to_ascii_uppercase);
            match verb.as_deref() {
                Some(b"EHLO") | Some(b"HELO") => out.extend_from_slice(ehlo),
                Some(b"STAR") => {
                    out.extend_from_slice(READY);
                    next = Next::Tls;
                    break;
                }
                Some(b"QUIT") => {
                    out.extend_from_slice(BYE);
                    next = Next::Close;
                    break;
                }
                _ => out.extend_from_slice(NOT_HERE),
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            s.write_all(&out).await?;
            s.flush().await?;
            out.clear();
        }
        if !matches!(next, Next::More) {
            return Ok(next);
        }
    }
}
