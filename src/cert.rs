//! `moat cert`: the internal PKI of a cluster, for operators without cert-manager and for
//! `moat dev` and the tests.
//!
//! - `moat cert ca --dir DIR`: a new CA, `DIR/ca.pem` and `DIR/ca-key.pem` (mode 0600).
//! - `moat cert issue --dir DIR --role control|edge|admin [--name NAME] [--san HOST]...`: a
//!   certificate and key signed by that CA, `DIR/ROLE[-NAME].pem` and `DIR/ROLE[-NAME]-key.pem`.
//!   The common name carries the role (`moat-edge`, `moat-admin:alice`); a control certificate
//!   also carries the DNS name `moat-control`, which clients verify, and serves as both server
//!   and client.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use moat_proto::mtls::{Role, CONTROL_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Options of `moat cert`.
#[derive(clap::Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCmd,
}

#[derive(clap::Subcommand, Debug)]
enum CertCmd {
    /// Create the cluster's internal CA.
    Ca {
        /// Where `ca.pem` and `ca-key.pem` are written.
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate for a control node, an edge or an administrator.
    Issue {
        /// The CA's directory (`ca.pem`, `ca-key.pem`); the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// What the holder is.
        #[arg(long, value_enum)]
        role: CertRole,
        /// A name for the holder, kept in the common name after the role.
        #[arg(long)]
        name: Option<String>,
        /// More DNS names or IP addresses (a control node's service and pod names).
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

/// `--role`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CertRole {
    Control,
    Edge,
    Admin,
}

impl From<CertRole> for Role {
    fn from(r: CertRole) -> Self {
        match r {
            CertRole::Control => Role::Control,
            CertRole::Edge => Role::Edge,
            CertRole::Admin => Role::Admin,
        }
    }
}

/// Runs `moat cert`.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    match args.command {
        CertCmd::Ca { dir, days } => {
            let (cert, _) = create_ca(&dir, days)?;
            println!("{}", cert.display());
        }
        CertCmd::Issue {
            dir,
            role,
            name,
            san,
            days,
        } => {
            let (cert, key) = issue(&dir, role.into(), name.as_deref(), &san, days)?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(())
}

/// Writes a private key or other secret readable by its owner only (mode 0600, also when the
/// file existed with a wider mode).
pub(crate) fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Restricts an existing private file to its owner (0600): keys written by older versions with
/// a wider mode are tightened when they are reused.
pub(crate) fn restrict(path: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

/// Creates `dir` and its missing parents with mode 0700 (directories that hold private keys);
/// existing directories keep their mode.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    // An hour back, for clocks a little behind.
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

/// Creates `DIR/ca.pem` and `DIR/ca-key.pem`; refuses to overwrite a CA.
pub fn create_ca(dir: &Path, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() || key_path.exists() {
        anyhow::bail!(
            "{} already holds a CA; every certificate it issued depends on it",
            dir.display()
        );
    }
    create_private_dir(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "Moat internal CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Issues a certificate for `role` from the CA in `dir`; returns (certificate, key) paths.
pub fn issue(
    dir: &Path,
    role: Role,
    name: Option<&str>,
    sans: &[String],
    days: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).with_context(|| {
        format!(
            "reading {}/ca.pem (run `moat cert ca` first)",
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(dir.join("ca-key.pem"))
            .with_context(|| format!("reading {}/ca-key.pem", dir.display()))?,
    )?;
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;

    let mut names: Vec<String> = Vec::new();
    if role == Role::Control {
        names.push(CONTROL_SERVER_NAME.to_owned());
    }
    names.extend(sans.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    let cn = match name {
        Some(n) => format!("{}:{n}", role.common_name()),
        None => role.common_name().to_owned(),
    };
    params.distinguished_name.push(DnType::CommonName, &cn);
    params.extended_key_usages = match role {
        Role::Control => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Edge | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let stem = match name {
        Some(n) => format!(
            "{}-{}",
            role_file(role),
            n.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        ),
        None => role_file(role).to_owned(),
    };
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    );
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

fn role_file(role: Role) -> &'static str {
    match role {
        Role::Control => "control",
        Role::Edge => "edge",
        Role::Admin => "admin",
    }
}

/// The internal PKI of a `moat dev` data directory.
#[derive(Clone, Debug)]
pub struct DevPki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Control nodes' certificate and key (one for all; valid for 127.0.0.1 and localhost).
    pub control: (PathBuf, PathBuf),
    /// Edges' certificate and key.
    pub edge: (PathBuf, PathBuf),
    /// The administrator's certificate and key.
    pub admin: (PathBuf, PathBuf),
}

/// Creates `dir`'s CA and certificates on first start, reuses them afterwards.
pub fn dev_pki(dir: &Path) -> anyhow::Result<DevPki> {
    let ca = dir.join("ca.pem");
    let pair = |stem: &str| {
        (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        )
    };
    let pki = DevPki {
        ca: ca.clone(),
        control: pair("control"),
        edge: pair("edge"),
        admin: pair("admin"),
    };
    let complete = [&pki.control, &pki.edge, &pki.admin]
        .iter()
        .all(|(c, k)| c.exists() && k.exists());
    if ca.exists() && complete {
        for (_, key) in [&pki.control, &pki.edge, &pki.admin] {
            restrict(key)?;
        }
        let ca_key = dir.join("ca-key.pem");
        if ca_key.exists() {
            restrict(&ca_key)?;
        }
        return Ok(pki);
    }
    if !ca.exists() {
        create_ca(dir, 3650)?;
    }
    let local = [
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    issue(dir, Role::Control, None, &local, 3650)?;
    issue(dir, Role::Edge, None, &[], 3650)?;
    issue(dir, Role::Admin, None, &[], 3650)?;
    Ok(pki)
}
