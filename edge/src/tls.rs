//! TLS for the edge's listeners: rustls (TLS 1.2 and 1.3, ECDHE AEAD suites only, in the
//! server's order of preference, named by their IANA names), with the certificate reloaded when its files change, so a rotated Kubernetes secret takes effect
//! without a restart.
//!
//! Session resumption across the fleet: every rustls listener of an edge shares one
//! [`Ticketer`], which seals TLS 1.3 tickets and TLS 1.2 session tickets with the ticket keys
//! the control plane pushes with the policy, so a ticket one edge issued resumes on any other.
//! Before the first key arrives the ticketer is disabled and rustls keeps its own per-edge
//! cache of 256 sessions (resumption on the same edge only). The OpenSSL engine for TLS
//! 1.0/1.1 clients (`legacy.rs`) issues no cluster tickets.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moat_shared::tickets::TICKET_KEY_NAME_LEN;
use moat_shared::{PolicyHandle, TicketKeys};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

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
/// SHA-1 MACs), in [`SUITE_ORDER`].
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        let suite = s.suite();
        SUITE_ORDER
            .iter()
            .position(|&o| o == suite)
            .unwrap_or(SUITE_ORDER.len())
    });
    Arc::new(p)
}

/// The order in which the server picks a suite (it ignores the client's order): TLS 1.3 before
/// TLS 1.2, and among suites of equal strength the cheapest for the server first. Every suite
/// here is an AEAD with forward secrecy and at least 128-bit security, so AES-128-GCM (10 AES
/// rounds) comes before AES-256-GCM (14 rounds, about 40% more work per byte), and both before
/// ChaCha20-Poly1305, which is slower than AES-GCM on the AES-NI/ARMv8-AES hardware edges run
/// on. ECDSA before RSA only decides between suites when a certificate of each kind is
/// configured; with one certificate its key type decides.
pub const SUITE_ORDER: &[rustls::CipherSuite] = &[
    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// A cipher suite's IANA name (the TLS Cipher Suites registry), as `Received:`, logs and
/// reports show it whichever engine negotiated it: `TLS_AES_256_GCM_SHA384`, not rustls's
/// `TLS13_AES_256_GCM_SHA384`. OpenSSL's `standard_name` for the legacy engine's suites is
/// already the IANA name.
/// Static for every suite rustls names, so that a handshake does not allocate for it.
pub fn iana_name(suite: rustls::CipherSuite) -> Cow<'static, str> {
    let name = match u16::from(suite) {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0x1304 => "TLS_AES_128_CCM_SHA256",
        0x1305 => "TLS_AES_128_CCM_8_SHA256",
        // rustls names the TLS 1.2 suites by their IANA names.
        _ => match suite.as_str() {
            Some(name) => match name.strip_prefix("TLS13_") {
                Some(rest) => return Cow::Owned(format!("TLS_{rest}")),
                None => name,
            },
            None => return Cow::Owned(format!("0x{:04X}", u16::from(suite))),
        },
    };
    Cow::Borrowed(name)
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

/// Seals and opens session tickets with the ticket keys of the current policy (see the module
/// docs): a ticket is the key's 16-byte name, a 12-byte random nonce and the AES-256-GCM
/// ciphertext of rustls's session state (the name as associated data). New tickets are sealed
/// with the issuing key; a ticket sealed with the issuing or an accepting key opens; any other
/// ticket (another cluster's, one two rotations old, a tampered one) does not, and the client
/// gets a full handshake. Keys are read from the policy handle at each use and prepared once per
/// change, so a rotation takes effect without rebuilding listeners.
pub struct Ticketer {
    policy: PolicyHandle,
    prepared: ArcSwap<Prepared>,
    rng: SystemRandom,
}

/// The keys of one [`TicketKeys`] value, ready for the AEAD.
struct Prepared {
    /// What they were prepared from (compared by pointer: the snapshot shares this `Arc` until
    /// a change replaces the keys).
    source: Arc<TicketKeys>,
    issuing: Option<([u8; TICKET_KEY_NAME_LEN], LessSafeKey)>,
    accepting: Vec<([u8; TICKET_KEY_NAME_LEN], LessSafeKey)>,
    lifetime_s: u32,
}

impl Prepared {
    fn new(source: Arc<TicketKeys>) -> Self {
        let prepare = |k: &moat_shared::TicketKey| {
            let name = k.name_bytes()?;
            let key = UnboundKey::new(&AES_256_GCM, k.secret.expose()).ok()?;
            Some((name, LessSafeKey::new(key)))
        };
        Prepared {
            issuing: source.issuing.as_ref().and_then(prepare),
            accepting: source.accepting.iter().filter_map(prepare).collect(),
            lifetime_s: u32::try_from(source.lifetime_ms.max(0) / 1000).unwrap_or(u32::MAX),
            source,
        }
    }
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.prepared.load();
        f.debug_struct("Ticketer")
            .field("issuing", &p.issuing.is_some())
            .field("accepting", &p.accepting.len())
            .finish()
    }
}

impl Ticketer {
    /// A ticketer over the keys of `policy`'s current snapshot, whichever it is at each use.
    pub fn new(policy: PolicyHandle) -> Self {
        let keys = Arc::clone(policy.load().ticket_keys());
        Ticketer {
            policy,
            prepared: ArcSwap::from_pointee(Prepared::new(keys)),
            rng: SystemRandom::new(),
        }
    }

    /// The prepared keys of the current snapshot, prepared again only when they changed.
    fn keys(&self) -> Arc<Prepared> {
        let snapshot = self.policy.load();
        let have = self.prepared.load_full();
        if Arc::ptr_eq(&have.source, snapshot.ticket_keys()) {
            return have;
        }
        let fresh = Arc::new(Prepared::new(Arc::clone(snapshot.ticket_keys())));
        self.prepared.store(Arc::clone(&fresh));
        fresh
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        self.keys().issuing.is_some()
    }

    fn lifetime(&self) -> u32 {
        self.keys().lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys();
        let (name, key) = keys.issuing.as_ref()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(
            TICKET_KEY_NAME_LEN + NONCE_LEN + plain.len() + AES_256_GCM.tag_len(),
        );
        out.extend_from_slice(name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name),
            &mut sealed,
        )
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (name, rest) = cipher.split_at_checked(TICKET_KEY_NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let keys = self.keys();
        let (_, key) = keys
            .issuing
            .iter()
            .chain(keys.accepting.iter())
            .find(|(n, _)| n.as_slice() == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(name), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

/// Builds the server settings from the configured files, sealing session tickets with
/// `ticketer` when given.
pub fn server_config(
    cfg: &TlsConfig,
    ticketer: Option<&Arc<Ticketer>>,
) -> Result<Loaded, TlsError> {
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
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    // The server's preference ([`SUITE_ORDER`]) decides, not the client's order.
    config.ignore_client_order = true;
    if let Some(t) = ticketer {
        config.ticketer = Arc::clone(t) as Arc<dyn ProducesTickets>;
    }
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
    /// Loads the files now (failing if they are bad) and starts watching them; session
    /// tickets are sealed by `ticketer` (one per edge, shared by its listeners).
    pub fn load_and_watch(
        cfg: TlsConfig,
        ticketer: Option<Arc<Ticketer>>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            current: load_and_watch(cfg, move |c| server_config(c, ticketer.as_ref()))?,
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
        Some(rustls::ProtocolVersion::TLSv1_3) => Cow::Borrowed("TLSv1.3"),
        Some(rustls::ProtocolVersion::TLSv1_2) => Cow::Borrowed("TLSv1.2"),
        Some(v) => Cow::Owned(format!("{v:?}")),
        None => Cow::Borrowed("unknown"),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| iana_name(s.suite()))
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
    fn every_offered_suite_has_its_iana_name() {
        let want = [
            (0x1301, "TLS_AES_128_GCM_SHA256"),
            (0x1302, "TLS_AES_256_GCM_SHA384"),
            (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
            (0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
            (0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
            (0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
            (0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            (0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            (0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
        ];
        let offered = provider().cipher_suites.clone();
        assert_eq!(offered.len(), want.len());
        for s in &offered {
            let code = u16::from(s.suite());
            let name = want
                .iter()
                .find(|(c, _)| *c == code)
                .unwrap_or_else(|| panic!("suite {code:#06x} not in the table"))
                .1;
            assert_eq!(iana_name(s.suite()), name);
        }
        // Suites rustls does not offer here still get a registry-shaped name.
        assert_eq!(
            iana_name(rustls::CipherSuite::TLS13_AES_128_CCM_SHA256),
            "TLS_AES_128_CCM_SHA256"
        );
        assert_eq!(
            iana_name(rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA),
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        );
    }

    /// A policy handle whose snapshot at `version` holds these keys (by number), the first
    /// issuing.
    fn keys(handle: Option<&PolicyHandle>, version: u64, ids: &[u8]) -> PolicyHandle {
        let key = |n: u8| moat_shared::TicketKey {
            name: moat_shared::tickets::to_hex(&[n; TICKET_KEY_NAME_LEN]),
            secret: moat_shared::TicketSecret::new([n; 32]),
            created_ms: i64::from(n),
        };
        let change = moat_shared::PolicyChange {
            version,
            reset: true,
            ticket_keys: Some(TicketKeys {
                issuing: ids.first().map(|n| key(*n)),
                accepting: ids.iter().skip(1).map(|n| key(*n)).collect(),
                lifetime_ms: 3_600_000,
            }),
            ..Default::default()
        };
        let snap = moat_shared::PolicySnapshot::from_change(&change).unwrap();
        match handle {
            Some(h) => {
                assert!(h.publish(snap));
                h.clone()
            }
            None => PolicyHandle::new(snap),
        }
    }

    #[test]
    fn tickets_open_with_the_key_that_sealed_them_and_nothing_else() {
        let none = Ticketer::new(PolicyHandle::new(Default::default()));
        assert!(!none.enabled(), "no key yet: rustls's own per-edge cache");
        assert!(none.encrypt(b"x").is_none());

        let edge1 = Ticketer::new(keys(None, 1, &[1]));
        let edge2 = Ticketer::new(keys(None, 1, &[1]));
        assert!(edge1.enabled());
        assert_eq!(edge1.lifetime(), 3600);
        let ticket = edge1.encrypt(b"session state").unwrap();
        assert_eq!(&ticket[..TICKET_KEY_NAME_LEN], &[1; TICKET_KEY_NAME_LEN]);
        assert_eq!(
            edge2.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..]),
            "another edge with the same keys opens it"
        );
        assert_ne!(
            edge1.encrypt(b"session state").unwrap(),
            ticket,
            "fresh nonce"
        );

        // Another cluster's key, by name and by secret under the same name.
        let other = Ticketer::new(keys(None, 1, &[2]));
        assert!(other.decrypt(&ticket).is_none());
        let mut renamed = other.encrypt(b"session state").unwrap();
        renamed[..TICKET_KEY_NAME_LEN].copy_from_slice(&[1; TICKET_KEY_NAME_LEN]);
        assert!(
            edge1.decrypt(&renamed).is_none(),
            "the name is bound to the key"
        );

        // Tampering anywhere, truncation, garbage.
        for at in [
            TICKET_KEY_NAME_LEN + 2,
            ticket.len() - 1,
            ticket.len() / 2 + 8,
        ] {
            let mut t = ticket.clone();
            t[at] ^= 1;
            assert!(edge2.decrypt(&t).is_none(), "byte {at} flipped");
        }
        assert!(edge2.decrypt(&ticket[..ticket.len() - 1]).is_none());
        assert!(edge2.decrypt(&ticket[..20]).is_none());
        assert!(edge2.decrypt(b"").is_none());
    }

    #[test]
    fn a_ticket_survives_one_rotation_and_not_two() {
        let handle = keys(None, 1, &[1]);
        let t = Ticketer::new(handle.clone());
        let old = t.encrypt(b"s").unwrap();
        keys(Some(&handle), 2, &[2, 1]);
        assert!(t.decrypt(&old).is_some(), "still accepted");
        let new = t.encrypt(b"s").unwrap();
        assert_eq!(&new[..TICKET_KEY_NAME_LEN], &[2; TICKET_KEY_NAME_LEN]);
        keys(Some(&handle), 3, &[3, 2]);
        assert!(t.decrypt(&old).is_none(), "dropped after two rotations");
        assert!(t.decrypt(&new).is_some());
        let shown = format!("{t:?}");
        assert!(!shown.contains("0303"), "{shown}");
    }

    #[test]
    fn the_server_orders_suites_cheapest_first() {
        let offered: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(offered, SUITE_ORDER);
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
