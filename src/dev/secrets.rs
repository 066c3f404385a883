//! What `moat dev` creates on first start and keeps in its data directory: the operator
//! token, the demo password, the local CA and the SMTP server certificate.

use std::path::{Path, PathBuf};

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
    crate::cert::write_private(path, &secret)?;
    Ok(secret)
}

/// Returns (CA, certificate, key) paths, creating them on first start.
pub(super) fn ensure_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    let ca_key_path = dir.join("ca-key.pem");
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        // Data directories of older versions have these keys world-readable.
        crate::cert::restrict(&key_path)?;
        if ca_key_path.exists() {
            crate::cert::restrict(&ca_key_path)?;
        }
        return Ok((ca_path, cert_path, key_path));
    }
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    crate::cert::create_private_dir(dir)?;
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
    crate::cert::write_private(&ca_key_path, &ca_key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    crate::cert::write_private(&key_path, &key.serialize_pem())?;
    Ok((ca_path, cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn private_keys_and_secrets_are_owner_only() {
        let root = std::env::temp_dir().join(format!("moat-dev-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let tls = root.join("tls");
        let (ca, cert, key) = ensure_certificates(&tls).expect("certificates");
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&tls.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&ca) & 0o600, 0o600);
        assert_eq!(mode(&cert) & 0o600, 0o600);
        let pki = crate::cert::dev_pki(&tls.join("internal")).expect("pki");
        assert_eq!(mode(&tls.join("internal")), 0o700);
        assert_eq!(mode(&tls.join("internal").join("ca-key.pem")), 0o600);
        for (_, k) in [&pki.control, &pki.edge, &pki.admin] {
            assert_eq!(mode(k), 0o600, "{}", k.display());
        }
        let token = root.join("admin-token");
        ensure_token(&token).expect("token");
        assert_eq!(mode(&token), 0o600);

        // A data directory from an older version, its keys world-readable: tightened on reuse.
        for k in [&key, &tls.join("ca-key.pem")] {
            std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        ensure_certificates(&tls).expect("reuse");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&tls.join("ca-key.pem")), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }
}
