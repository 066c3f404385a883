//! What `moat dev` creates on first start and keeps in its data directory: the operator
//! token, the demo password, the local CA and the SMTP server certificate.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The operator token of this data directory, created on first start.
pub(super) fn ensure_token(path: &Path) -> anyhow::Result<String> {
    ensure_secret(path, "moat_dev_", 24)
}

/// A random secret of `bytes` random bytes (in hex) kept in `path`, created on first start.
pub(super) fn ensure_secret(path: &Path, prefix: &str, bytes: usize) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let secret = format!("{prefix}{}", crate::client::random_hex(bytes));
    std::fs::write(path, &secret)?;
    Ok(secret)
}

/// Returns (CA, certificate, key) paths, creating them on first start.
pub(super) fn ensure_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok((ca_path, cert_path, key_path));
    }
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Moat dev CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(dir.join("ca-key.pem"), ca_key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((ca_path, cert_path, key_path))
}
