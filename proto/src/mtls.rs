//! Mutual TLS on the internal gRPC channels: raft between control nodes, edges to the control
//! plane, and the admin tool.
//!
//! Every process holds the cluster's internal CA and a certificate of its own, issued by that
//! CA, whose subject common name says what it is:
//!
//! | CN | may call |
//! |---|---|
//! | `moat-control` | Raft (control nodes only); also the server certificate of a control node |
//! | `moat-edge` | Policy (watch snapshots) and Signal (report counters) |
//! | `moat-admin` | Admin (then the bearer token's role decides what it may do) |
//!
//! A `:NAME` suffix (`moat-admin:alice`) names the holder and keeps the role. Clients verify a
//! control node against the name [`CONTROL_SERVER_NAME`], whatever address they dial, so a
//! control certificate carries that DNS name among its subject alternative names.
//!
//! The files are watched: a renewed certificate, key or CA (cert-manager rewriting a Secret,
//! `moat cert issue` over the old files) is used for every handshake from a second after it
//! lands, by control nodes' listeners and by every new connection a client opens. Established
//! connections keep the session they have. A renewal that cannot be loaded (half written, a
//! key that does not match, another role) keeps the old material and is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The DNS name every control node's certificate carries and every client verifies.
pub const CONTROL_SERVER_NAME: &str = "moat-control";

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A control node.
    Control,
    /// An SMTP edge.
    Edge,
    /// An administrator's tool.
    Admin,
}

impl Role {
    /// The common name prefix of this role.
    pub fn common_name(self) -> &'static str {
        match self {
            Self::Control => "moat-control",
            Self::Edge => "moat-edge",
            Self::Admin => "moat-admin",
        }
    }

    /// The role a common name stands for (`moat-edge` or `moat-edge:NAME`).
    pub fn from_common_name(cn: &str) -> Option<Self> {
        let prefix = cn.split_once(':').map_or(cn, |(p, _)| p);
        [Self::Control, Self::Edge, Self::Admin]
            .into_iter()
            .find(|r| r.common_name() == prefix)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.common_name())
    }
}

/// Why internal TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// A file holds no usable certificate or key.
    #[error("{0}: {1}")]
    Bad(PathBuf, String),
}

/// How often the files are read again to look for a renewal.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// How long a caller may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// This process's internal TLS material: the cluster CA, its certificate and key, reloaded
/// when the files change (see the module documentation). Clones share the material.
#[derive(Clone)]
pub struct InternalTls {
    inner: Arc<Watched>,
}

struct Watched {
    paths: [PathBuf; 3],
    role: Role,
    state: Mutex<Current>,
}

struct Current {
    material: Arc<Material>,
    /// The files' contents at the last look: a renewal is a change of content (modification
    /// times can stay the same over two writes within one clock tick of the file system).
    seen: [Option<Vec<u8>>; 3],
    checked: Instant,
}

/// One consistent set of files, checked and ready to use.
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    role: Role,
    /// Built for control certificates only: the server side of a control node.
    server: Option<Arc<rustls::ServerConfig>>,
    /// Built for control certificates only: the console's HTTPS side (no client certificate).
    https: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("InternalTls")
            .field("role", &self.inner.role)
            .field("cert", &self.inner.paths[1])
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_owned(), e))
}

fn contents(paths: &[PathBuf; 3]) -> [Option<Vec<u8>>; 3] {
    paths.each_ref().map(|p| std::fs::read(p).ok())
}

/// The common name of the first certificate in a PEM file's content.
fn pem_common_name(pem: &[u8]) -> Result<String, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    common_name(&cert).ok_or_else(|| "the certificate has no subject common name".into())
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

impl Material {
    fn load(paths: &[PathBuf; 3]) -> Result<Self, TlsError> {
        let [ca, cert, key] = paths;
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        pem_common_name(&ca_pem).map_err(|e| TlsError::Bad(ca.to_owned(), e))?;
        let cn = pem_common_name(&cert_pem).map_err(|e| TlsError::Bad(cert.to_owned(), e))?;
        let role = Role::from_common_name(&cn).ok_or_else(|| {
            TlsError::Bad(
                cert.to_owned(),
                format!(
                    "common name `{cn}` is not a Moat role (moat-control, moat-edge or \
                     moat-admin, optionally followed by `:NAME`)"
                ),
            )
        })?;
        let bad = |path: &Path, e: String| TlsError::Bad(path.to_owned(), e);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            let c = c.map_err(|e| bad(ca, e.to_string()))?;
            roots.add(c).map_err(|e| bad(ca, e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, e.to_string()))?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(key, format!("no PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let callers =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| bad(ca, e.to_string()))?;
        // Checked as its peers will check it: valid now and issued by the CA, as a client
        // certificate, and for a control node also as the server `moat-control`. What they
        // would refuse is refused here, at start or at a renewal, with the reason.
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| bad(cert, "no certificate".into()))?;
        let refused = |e: rustls::Error| {
            bad(
                cert,
                format!("refused against the CA in {}: {e}", ca.display()),
            )
        };
        let now = rustls::pki_types::UnixTime::now();
        callers
            .verify_client_cert(leaf, intermediates, now)
            .map_err(refused)?;
        let (server, https) = if role == Role::Control {
            let name = rustls::pki_types::ServerName::try_from(CONTROL_SERVER_NAME)
                .map_err(|e| bad(cert, e.to_string()))?;
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| bad(ca, e.to_string()))?
            .verify_server_cert(leaf, intermediates, &name, &[], now)
            .map_err(refused)?;
            // The server side: a client certificate from the CA required of every caller;
            // HTTP/2 only.
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(cert, e.to_string()))?
                .with_client_cert_verifier(callers)
                .with_single_cert(chain.clone(), private.clone_key())
                .map_err(|e| bad(key, format!("does not go with {}: {e}", cert.display())))?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            // The console's side: the same certificate for browsers, which present none;
            // HTTP/1.1 only.
            let mut https = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(cert, e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, private)
                .map_err(|e| bad(key, format!("does not go with {}: {e}", cert.display())))?;
            https.alpn_protocols = vec![b"http/1.1".to_vec()];
            (Some(Arc::new(config)), Some(Arc::new(https)))
        } else {
            (None, None)
        };
        Ok(Self {
            ca: ca_pem,
            cert: cert_pem,
            key: key_pem,
            role,
            server,
            https,
        })
    }
}

impl InternalTls {
    /// Loads the CA, certificate and key (PEM), reads the role from the certificate, and
    /// watches the files from then on.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let paths = [ca.to_owned(), cert.to_owned(), key.to_owned()];
        let seen = contents(&paths);
        let material = Material::load(&paths)?;
        Ok(Self {
            inner: Arc::new(Watched {
                role: material.role,
                paths,
                state: Mutex::new(Current {
                    material: Arc::new(material),
                    seen,
                    checked: Instant::now(),
                }),
            }),
        })
    }

    /// The role this process's certificate gives it (a renewal never changes it).
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// The material to use now: reloaded first if the files changed since the last look
    /// (at most one look a second).
    fn current(&self) -> Arc<Material> {
        let w = &self.inner;
        let mut cur = w.state.lock().unwrap_or_else(|e| e.into_inner());
        if cur.checked.elapsed() >= RELOAD_CHECK {
            cur.checked = Instant::now();
            let now = contents(&w.paths);
            if now != cur.seen {
                // Loaded once per change: a half-written renewal is tried again when its next
                // write changes the files.
                cur.seen = now;
                match Material::load(&w.paths) {
                    Ok(m) if m.role == w.role => {
                        cur.material = Arc::new(m);
                        tracing::info!(cert = %w.paths[1].display(), "internal TLS certificate reloaded");
                    }
                    Ok(m) => tracing::warn!(
                        cert = %w.paths[1].display(),
                        "the renewed certificate is a {} certificate, not a {} one; keeping the old one",
                        m.role,
                        w.role
                    ),
                    Err(e) => tracing::warn!(
                        "internal TLS renewal not loaded, keeping the old certificate: {e}"
                    ),
                }
            }
        }
        Arc::clone(&cur.material)
    }

    /// A client side toward control nodes: verify them against the CA and
    /// [`CONTROL_SERVER_NAME`], present this process's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        let m = self.current();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&m.ca))
            .identity(Identity::from_pem(&m.cert, &m.key))
            .domain_name(CONTROL_SERVER_NAME)
    }

    /// A control node's connections: each accepted TCP connection's handshake (with the
    /// material current at that moment) runs on a task of its own, so a slow or silent caller
    /// holds up nobody; established connections come out of the stream. Accepting stops when
    /// the stream is dropped. `None` unless this is a control certificate.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> Option<tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>>> {
        self.current().server.as_ref()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors, mostly: wait rather than spin.
                            tracing::warn!("accepting a control connection: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let Some(config) = tls.current().server.clone() else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, "internal TLS handshake refused: {e}"),
                        Err(_) => tracing::info!(%peer, "internal TLS handshake timed out"),
                    }
                });
            }
        });
        Some(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

impl InternalTls {
    /// The console's server side (HTTPS for browsers: this certificate, no client
    /// certificate asked, HTTP/1.1), with the material current now, so each connection picks
    /// up a renewal. `None` unless this is a control certificate.
    pub fn https_server(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current().https.clone()
    }
}

/// An endpoint for a control node's `host:port` (or URL): `https` with this TLS material,
/// plain `http` without.
pub fn endpoint(
    addr: &str,
    tls: Option<&InternalTls>,
) -> Result<Endpoint, tonic::transport::Error> {
    let host = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))?
        .connect_timeout(Duration::from_secs(2));
    match tls {
        Some(t) => endpoint.tls_config(t.client()),
        None => Ok(endpoint),
    }
}

/// The role of a request's caller from its verified client certificate, if it presented one.
/// (The TLS layer has already verified the chain against the CA.)
pub fn caller_role<T>(req: &tonic::Request<T>) -> Option<(Role, String)> {
    let certs = req.peer_certs()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let cn = common_name(&cert)?;
    Some((Role::from_common_name(&cn)?, cn))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca(rcgen::Certificate, rcgen::KeyPair);

    impl Ca {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "test CA");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            Self(p.self_signed(&key).unwrap(), key)
        }

        /// (certificate PEM, key PEM) for `cn`.
        fn issue(&self, cn: &str) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![CONTROL_SERVER_NAME.into()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let cert = p.signed_by(&key, &self.0, &self.1).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn recheck(tls: &InternalTls) -> Vec<u8> {
        let mut cur = tls.inner.state.lock().unwrap();
        cur.checked = Instant::now()
            .checked_sub(RELOAD_CHECK)
            .unwrap_or(cur.checked);
        drop(cur);
        tls.current().cert.clone()
    }

    #[test]
    fn a_renewal_is_picked_up_and_a_bad_one_is_not() {
        let dir = std::env::temp_dir().join(format!("moat-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("c.pem"), dir.join("k.pem"));
        let authority = Ca::new();
        std::fs::write(&ca, authority.0.pem()).unwrap();
        let write = |(c, k): &(String, String)| {
            std::fs::write(&cert, c).unwrap();
            std::fs::write(&key, k).unwrap();
        };
        let first = authority.issue("moat-control");
        write(&first);
        let tls = InternalTls::load(&ca, &cert, &key).unwrap();
        assert_eq!(tls.role(), Role::Control);
        assert_eq!(recheck(&tls), first.0.as_bytes());
        // Renewed: used from the next look on, even with the modification times unchanged (two
        // writes within one tick of the file system's clock).
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let before = (mtime(&cert), mtime(&key));
        let second = authority.issue("moat-control");
        write(&second);
        for (p, t) in [(&cert, before.0), (&key, before.1)] {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(t).unwrap();
        }
        assert_eq!((mtime(&cert), mtime(&key)), before);
        assert_eq!(recheck(&tls), second.0.as_bytes());
        // Half written (a key that does not go with the certificate), then another role, then
        // unreadable: the last good one stays.
        let third = authority.issue("moat-control");
        std::fs::write(&cert, &third.0).unwrap();
        assert_eq!(recheck(&tls), second.0.as_bytes());
        write(&authority.issue("moat-edge"));
        assert_eq!(recheck(&tls), second.0.as_bytes());
        std::fs::write(&cert, "not a certificate").unwrap();
        assert_eq!(recheck(&tls), second.0.as_bytes());
        // A certificate from another CA (its peers would refuse it): not taken.
        write(&Ca::new().issue("moat-control"));
        assert_eq!(recheck(&tls), second.0.as_bytes());
        // The renewal completed: taken.
        write(&third);
        assert_eq!(recheck(&tls), third.0.as_bytes());
        assert!(tls.current().server.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn roles_come_from_the_common_name() {
        assert_eq!(Role::from_common_name("moat-edge"), Some(Role::Edge));
        assert_eq!(
            Role::from_common_name("moat-admin:alice"),
            Some(Role::Admin)
        );
        assert_eq!(Role::from_common_name("moat-control"), Some(Role::Control));
        assert_eq!(Role::from_common_name("moat-controller"), None);
        assert_eq!(Role::from_common_name("localhost"), None);
        assert_eq!(Role::from_common_name(""), None);
    }
}
