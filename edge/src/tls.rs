//! TLS for the edge's listeners: rustls (TLS 1.2 and 1.3, ECDHE AEAD suites only), with the
//! certificate reloaded when its files change, so a rotated Kubernetes secret takes effect
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::session::TlsFacts;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable or holds nothing usable.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the certificate, key or CA bundle.
    #[error("TLS settings refused: {0}")]
    Rustls(String),
}

/// The crypto provider for every TLS context Moat builds: *ring*, whose default suites are the
/// TLS 1.3 AEAD suites and the TLS 1.2 ECDHE AEAD suites (no CBC, no RSA key exchange, no
/// SHA-1 MACs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |what: String| TlsError::File {
        path: path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The server settings and, when client certificates are requested, the verifier that decides
/// whether a presented chain is valid.
pub struct Loaded {
    /// The rustls settings.
    pub config: Arc<ServerConfig>,
    /// Checks a client's chain against `client-ca`.
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// Accepts any client certificate during the handshake (its signature over the handshake is
/// still checked), so that a sender whose chain does not validate, a missing intermediate for
/// instance, gets an SMTP answer (`550 5.7.64` when it wanted to relay) instead of a failed
/// handshake; the chain is judged after the handshake by [`facts`], and only a valid chain's
/// names count.
#[derive(Debug)]
struct Lenient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Builds the server settings from the configured files.
pub fn server_config(cfg: &TlsConfig) -> Result<Loaded, TlsError> {
    let certs = read_certs(&cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| TlsError::File {
        path: cfg.key.clone(),
        what: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
            }
            // Clients without a certificate are still served; a presented certificate counts
            // only if it chains to the bundle in full.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            let lenient = Arc::new(Lenient(verifier.clone()));
            (builder.with_client_cert_verifier(lenient), Some(verifier))
        }
        None => (builder.with_no_client_auth(), None),
    };
    let (builder, verifier) = builder;
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Loaded {
        config: Arc::new(config),
        verifier,
    })
}

/// The current server settings, swapped when the files change.
#[derive(Clone)]
pub struct Certificates {
    current: Arc<ArcSwap<Loaded>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certificates")
    }
}

/// Builds `T` from the certificate files now (failing if they are bad), then rebuilds it
/// whenever they change. A half-written secret is common during rotation: a failed rebuild
/// keeps the old value and is retried at the next tick.
pub fn load_and_watch<T: Send + Sync + 'static>(
    cfg: TlsConfig,
    build: impl Fn(&TlsConfig) -> Result<T, TlsError> + Send + 'static,
) -> Result<Arc<ArcSwap<T>>, TlsError> {
    // Read before the build: a change in between is built again at the first tick.
    let mut seen = contents(&cfg);
    let current = Arc::new(ArcSwap::from_pointee(build(&cfg)?));
    let watched = current.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.reload_interval);
        loop {
            tick.tick().await;
            let now = contents(&cfg);
            if now == seen {
                continue;
            }
            match build(&cfg) {
                Ok(c) => {
                    watched.store(Arc::new(c));
                    seen = now;
                    tracing::info!(cert = %cfg.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS reload failed; keeping the old certificate")
                }
            }
        }
    });
    Ok(current)
}

impl Certificates {
    /// Loads the files now (failing if they are bad) and starts watching them.
    pub fn load_and_watch(cfg: TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            current: load_and_watch(cfg, server_config)?,
        })
    }

    /// The current settings.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// An acceptor with the current settings.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load().config.clone())
    }
}

/// The files' contents: a change of content is a renewal (modification times can stay the same
/// over two writes within one clock tick of the file system).
fn contents(cfg: &TlsConfig) -> Vec<Option<Vec<u8>>> {
    [Some(&cfg.cert), Some(&cfg.key), cfg.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::read(p).ok())
        .collect()
}

/// The facts of an established server connection; a client certificate's names are kept only
/// when `verifier` accepts its chain.
pub fn facts(conn: &ServerConnection, verifier: Option<&dyn ClientCertVerifier>) -> TlsFacts {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let suite = s.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_owned)
        })
        .unwrap_or_default();
    let client_domains = match (conn.peer_certificates(), verifier) {
        (Some([leaf, intermediates @ ..]), Some(v)) => {
            match v.verify_client_cert(leaf, intermediates, UnixTime::now()) {
                Ok(_) => certificate_domains(leaf),
                Err(e) => {
                    tracing::info!("client certificate not valid, ignored: {e}");
                    Vec::new()
                }
            }
        }
        _ => Vec::new(),
    };
    TlsFacts {
        version,
        cipher,
        client_domains,
    }
}

/// A certificate's DNS names: its SAN dNSName entries, or its subject CN when it has none.
pub fn certificate_domains(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn san_dns_names_first_then_cn() {
        assert_eq!(
            certificate_domains(&cert(
                &["MTA.Contoso.test", "10.0.0.1", "b.contoso.test"],
                "cn.test"
            )),
            vec!["mta.contoso.test", "b.contoso.test"]
        );
        assert_eq!(
            certificate_domains(&cert(&[], "Only.CN.test")),
            vec!["only.cn.test"]
        );
        assert!(certificate_domains(b"not a certificate").is_empty());
    }
}
