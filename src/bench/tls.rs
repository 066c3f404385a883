//! The TLS library alone: handshakes per CPU second, client and server in one process.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// `client_order`: the server takes the client's preferred suite (TLS_AES_256_GCM_SHA384, as the
/// first measurements did) instead of the edge's order ([`moat_edge::tls::SUITE_ORDER`]).
pub(super) fn tls_handshakes(
    duration: f64,
    client_order: bool,
) -> anyhow::Result<serde_json::Value> {
    use rustls_pki_types::pem::PemObject as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The server side as the edge builds it: its provider and suite order, unless asked not to.
    let server_provider = if client_order {
        Arc::clone(&provider)
    } else {
        moat_edge::tls::provider()
    };
    let mut server = rustls::ServerConfig::builder_with_provider(server_provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
        )?;
    server.ignore_client_order = !client_order;
    let server = Arc::new(server);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let (mut handshakes, mut server_time) = (0u64, Duration::ZERO);
    let started = Instant::now();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut suite = None;
    while started.elapsed().as_secs_f64() < duration {
        let mut c = rustls::ClientConnection::new(Arc::clone(&client), name.clone())?;
        let t = Instant::now();
        let mut s = rustls::ServerConnection::new(Arc::clone(&server))?;
        server_time += t.elapsed();
        while c.is_handshaking() || s.is_handshaking() {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf)?;
            }
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd)?;
            }
            s.process_new_packets()?;
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf)?;
            }
            server_time += t.elapsed();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd)?;
            }
            c.process_new_packets()?;
        }
        suite = s
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        handshakes += 1;
    }
    Ok(serde_json::json!({
        "library": "rustls 0.23 (ring), TLS 1.3, ECDSA P-256, X25519",
        "suite": suite,
        "handshakes": handshakes,
        "seconds": started.elapsed().as_secs_f64(),
        "server_cpu_seconds": server_time.as_secs_f64(),
        "server_handshakes_per_cpu_second": handshakes as f64 / server_time.as_secs_f64().max(1e-9),
    }))
}
