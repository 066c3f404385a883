//! The TOML seed format: tenants with their accepted domains, inbound connectors and SMTP AUTH
//! users, written by hand or exported from a provider's old system.
//!
//! ```toml
//! [[tenant]]
//! id = "example.test"
//! display-name = "Example (demo)"
//! accepted-domains = ["example.test", "example.org"]
//! allow-legacy-tls-clients = false          # optional
//!
//! # Inbound connectors of this tenant: the fields of `moat admin connector create`.
//! [[tenant.connector]]
//! name = "hq"                                # 1 to 64 printable characters, no `/`
//! type = "on-premises"                       # or "partner"
//! sender-ip-addresses = ["192.0.2.0/24"]     # addresses or CIDR ranges
//! tls-sender-certificate-name = "mail.example.test"   # optional; `*.name` allowed
//! sender-domains = []                        # Partner: domains in scope, `*` for all
//! require-tls = false                        # the four flags are optional, false by default
//! restrict-domains-to-ip-addresses = false
//! restrict-domains-to-certificate = false
//! enabled = true                             # optional, true by default
//!
//! # SMTP AUTH users of this tenant, as `moat admin user create` stores them.
//! [[tenant.user]]
//! address = "alice@example.test"
//! password-hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$..."   # a PHC string
//! send-as = ["sales@example.test"]           # optional
//! ```
//!
//! Connectors and users sit inside their tenant's table, so a file split by whole tenants
//! (`moat admin apply` does that with a large file) keeps each tenant with what it owns. A
//! connector is checked as `moat admin connector create` checks it (through [`Connector`]'s own
//! parsers and [`Connector::validate`]); a user as `moat admin user create` checks one (an
//! address with `@`, lowercased; an address belongs to one tenant). A password is never in a
//! file: `password-hash` is an argon2id PHC string, which a provider carries over from its old
//! system, and it must parse as one.
//!
//! `moat dev` embeds a seed with the demo tenant; `moat edge --seed FILE` loads one (with its
//! connectors and users); `moat admin apply -f FILE` sends one to the control plane. Every
//! problem in a file is reported at once, with the tenant it belongs to.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::{CertName, Connector, Domain, PolicySnapshot, SubmissionUser, Tenant, TenantId};

/// A parsed, not yet validated, seed file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Seed {
    /// The tenants to create.
    #[serde(default)]
    pub tenant: Vec<SeedTenant>,
}

/// One `[[tenant]]` table of a seed file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SeedTenant {
    /// Tenant identifier.
    pub id: String,
    /// Human-readable name; defaults to the id.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Domains the tenant receives mail for.
    #[serde(default)]
    pub accepted_domains: Vec<String>,
    /// Transport config `allow-legacy-tls-clients`.
    #[serde(default)]
    pub allow_legacy_tls_clients: bool,
    /// The tenant's `[[tenant.connector]]` tables.
    #[serde(default)]
    pub connector: Vec<SeedConnector>,
    /// The tenant's `[[tenant.user]]` tables.
    #[serde(default)]
    pub user: Vec<SeedUser>,
}

/// One `[[tenant.connector]]` table: an inbound connector as `moat admin connector create`
/// takes it, not yet checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SeedConnector {
    /// Unique within the tenant.
    pub name: String,
    /// `partner` or `on-premises`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Client addresses or CIDR ranges.
    #[serde(default)]
    pub sender_ip_addresses: Vec<String>,
    /// Client certificate subject, `name` or `*.name`.
    #[serde(default)]
    pub tls_sender_certificate_name: Option<String>,
    /// Partner: the sender domains in scope (`*` for all).
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Mail through the connector must arrive over TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Partner: senders of `sender-domains` must come from `sender-ip-addresses`.
    #[serde(default)]
    pub restrict_domains_to_ip_addresses: bool,
    /// Partner: senders of `sender-domains` must present `tls-sender-certificate-name`.
    #[serde(default)]
    pub restrict_domains_to_certificate: bool,
    /// A disabled connector matches nothing; enabled unless the file says otherwise.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// One `[[tenant.user]]` table: an SMTP AUTH user, not yet checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SeedUser {
    /// Login name and default sending address.
    pub address: String,
    /// Argon2id PHC string of the password (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    pub password_hash: String,
    /// Further addresses the user may put in `MAIL FROM`.
    #[serde(default)]
    pub send_as: Vec<String>,
}

/// What a valid seed holds: tenants, and the connectors and users of those tenants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedContents {
    /// The tenants, in the file's order.
    pub tenants: Vec<Tenant>,
    /// Every tenant's connectors, each naming its tenant.
    pub connectors: Vec<Connector>,
    /// Every tenant's users, each naming its tenant.
    pub users: Vec<SubmissionUser>,
}

/// Why a seed could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The file is not valid TOML of the seed shape.
    #[error("seed is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file parsed but its content is wrong; every problem is listed.
    #[error("seed has {} problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Checks that `hash` is an argon2id PHC string with valid parameters and a hash, the form the
/// control plane stores and the edges verify passwords against.
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    use argon2::password_hash::PasswordHash;
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC string ({e})"))?;
    if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
        return Err(format!("`{}` is not argon2id", parsed.algorithm));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("an argon2id PHC string needs a salt and a hash".into());
    }
    argon2::Params::try_from(&parsed).map_err(|e| format!("bad argon2id parameters ({e})"))?;
    Ok(())
}

impl Seed {
    /// The seed `moat dev` starts with: one demo tenant, `example.test`.
    pub const DEMO: &'static str = r#"
[[tenant]]
id = "example.test"
display-name = "Example (demo tenant)"
accepted-domains = ["example.test"]
"#;

    /// Parses seed TOML.
    pub fn parse(text: &str) -> Result<Self, SeedError> {
        Ok(toml::from_str(text)?)
    }

    /// Validates the seed into a snapshot published under `version`, with its connectors and
    /// users.
    pub fn into_snapshot(self, version: u64) -> Result<PolicySnapshot, SeedError> {
        let c = self.validate()?;
        PolicySnapshot::from_change(&crate::PolicyChange {
            version,
            reset: true,
            tenants: c.tenants,
            connectors: c.connectors,
            users: c.users,
            ..Default::default()
        })
        .map_err(|e| SeedError::Invalid(vec![e.to_string()]))
    }

    /// Validates the seed into its tenants only (ids unique, a domain claimed once); the
    /// connectors and users are checked too, then left out.
    pub fn into_tenants(self) -> Result<Vec<Tenant>, SeedError> {
        self.validate().map(|c| c.tenants)
    }

    /// Validates the whole seed: tenant ids unique, a domain claimed once, connectors as
    /// `connector create` checks them and unique by name in their tenant, users with an
    /// address (unique in the file), an argon2id hash and lowercased send-as addresses.
    pub fn validate(self) -> Result<SeedContents, SeedError> {
        let mut problems = Vec::new();
        let mut out = SeedContents::default();
        let mut addresses: BTreeMap<String, String> = BTreeMap::new();
        for t in self.tenant {
            let id = TenantId::new(&t.id).map_err(|e| problems.push(e.to_string()));
            let mut accepted_domains = Vec::new();
            for d in &t.accepted_domains {
                match Domain::new(d) {
                    Ok(d) => accepted_domains.push(d),
                    Err(e) => problems.push(format!("tenant `{}`: {e}", t.id)),
                }
            }
            let mut names = BTreeSet::new();
            // A connector of a tenant whose id is bad is still checked, under a stand-in id.
            let owner = id.clone().ok().or_else(|| TenantId::new("invalid").ok());
            for c in t.connector {
                let name = c.name.clone();
                let mut report = |e: String| {
                    problems.push(format!("tenant `{}`: connector `{name}`: {e}", t.id))
                };
                if !names.insert(name.clone()) {
                    report("appears twice in the tenant".into());
                }
                let built = owner
                    .as_ref()
                    .and_then(|o| seed_connector(o, c, &mut report));
                if let (Ok(_), Some(c)) = (&id, built) {
                    out.connectors.push(c);
                }
            }
            for u in t.user {
                let address = u.address.trim().to_lowercase();
                let mut report =
                    |e: String| problems.push(format!("tenant `{}`: user `{address}`: {e}", t.id));
                let mut ok = true;
                if !address.contains('@') {
                    report("is not an email address".into());
                    ok = false;
                }
                if let Some(first) = addresses.insert(address.clone(), t.id.clone()) {
                    report(if first == t.id {
                        "appears twice in the tenant".into()
                    } else {
                        format!(
                            "is also a user of tenant `{first}`; an address belongs to one tenant"
                        )
                    });
                    ok = false;
                }
                if let Err(e) = check_password_hash(&u.password_hash) {
                    report(format!("password-hash: {e}"));
                    ok = false;
                }
                if let (Ok(id), true) = (&id, ok) {
                    out.users.push(SubmissionUser {
                        tenant: id.clone(),
                        address,
                        password_hash: u.password_hash,
                        send_as: u.send_as.iter().map(|a| a.trim().to_lowercase()).collect(),
                    });
                }
            }
            if let Ok(id) = id {
                out.tenants.push(Tenant {
                    display_name: t.display_name.unwrap_or_else(|| id.to_string()),
                    id,
                    accepted_domains,
                    allow_legacy_tls_clients: t.allow_legacy_tls_clients,
                });
            }
        }
        if !problems.is_empty() {
            return Err(SeedError::Invalid(problems));
        }
        PolicySnapshot::new(0, out.tenants.clone())
            .map_err(|e| SeedError::Invalid(vec![e.to_string()]))?;
        Ok(out)
    }
}

/// Builds one connector of `tenant` with [`Connector`]'s parsers, reporting every bad field
/// (and, when the fields parse far enough to build it, every rule it breaks); `None` when
/// anything was bad.
fn seed_connector(
    tenant: &TenantId,
    c: SeedConnector,
    report: &mut impl FnMut(String),
) -> Option<Connector> {
    let mut bad = false;
    let mut keep = |r: Result<(), crate::ConnectorError>| {
        if let Err(e) = r {
            report(e.to_string());
            bad = true;
        }
    };
    keep(Connector::valid_name(&c.name).map(drop));
    let mut sender_ip_addresses = Vec::new();
    for raw in &c.sender_ip_addresses {
        keep(Connector::parse_ip(raw).map(|n| sender_ip_addresses.push(n)));
    }
    let mut sender_domains = Vec::new();
    for raw in &c.sender_domains {
        keep(Connector::parse_sender_domain(raw).map(|d| sender_domains.push(d)));
    }
    let mut kind = None;
    keep(c.kind.parse().map(|k| kind = Some(k)));
    // `Some(None)`: no certificate name; `None`: a bad one.
    let mut cert = Some(None);
    if let Some(n) = c.tls_sender_certificate_name.as_deref() {
        cert = None;
        let parsed = CertName::new(n).map_err(|_| crate::ConnectorError::BadCertName(n.into()));
        keep(parsed.map(|n| cert = Some(Some(n))));
    }
    let (Some(kind), Some(tls_sender_certificate_name)) = (kind, cert) else {
        return None;
    };
    let connector = Connector {
        tenant: tenant.clone(),
        name: c.name,
        kind,
        enabled: c.enabled,
        sender_ip_addresses,
        tls_sender_certificate_name,
        sender_domains,
        require_tls: c.require_tls,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    };
    match connector.validate() {
        // A bad name was reported above already.
        Err(crate::ConnectorError::BadName(_)) => None,
        Err(e) => {
            report(e.to_string());
            None
        }
        Ok(()) => (!bad).then_some(connector),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_seed_loads() {
        let snap = Seed::parse(Seed::DEMO).unwrap().into_snapshot(1).unwrap();
        assert!(snap.tenant_for_domain("example.test").is_some());
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[[tenant]]
id = "Bad Id"
accepted-domains = ["bad domain"]
[[tenant]]
id = "ok"
accepted-domains = ["a..b", "-x.test"]
"#;
        let err = Seed::parse(text).unwrap().into_snapshot(1).unwrap_err();
        let SeedError::Invalid(problems) = err else {
            panic!("wrong error")
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    /// A real argon2id PHC string, as `moat admin user create` stores one.
    fn hash(password: &str) -> String {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn estate(hash: &str) -> String {
        format!(
            r#"
[[tenant]]
id = "contoso"
accepted-domains = ["contoso.test"]

[[tenant.connector]]
name = "hq"
type = "on-premises"
sender-ip-addresses = ["192.0.2.7", "198.51.100.0/24"]

[[tenant.connector]]
name = "fabrikam"
type = "partner"
tls-sender-certificate-name = "*.fabrikam.test"
sender-domains = ["fabrikam.test"]
require-tls = true
restrict-domains-to-certificate = true
enabled = false

[[tenant.user]]
address = "Alice@Contoso.test"
password-hash = "{hash}"
send-as = ["Sales@contoso.test"]

[[tenant]]
id = "tailspin"
accepted-domains = ["tailspin.test"]
[[tenant.user]]
address = "bob@tailspin.test"
password-hash = "{hash}"
"#
        )
    }

    #[test]
    fn connectors_and_users_load_with_their_tenant() {
        let h = hash("correct horse");
        let c = Seed::parse(&estate(&h)).unwrap().validate().unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.connectors.len(), 2);
        let hq = &c.connectors[0];
        assert_eq!((hq.tenant.as_str(), hq.name.as_str()), ("contoso", "hq"));
        assert_eq!(hq.kind, crate::ConnectorKind::OnPremises);
        assert!(hq.enabled);
        assert_eq!(hq.sender_ip_addresses[0].to_string(), "192.0.2.7/32");
        let fab = &c.connectors[1];
        assert_eq!(fab.kind, crate::ConnectorKind::Partner);
        assert!(!fab.enabled && fab.require_tls && fab.restrict_domains_to_certificate);
        assert!(fab
            .tls_sender_certificate_name
            .as_ref()
            .unwrap()
            .is_wildcard());
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users[0].address, "alice@contoso.test");
        assert_eq!(c.users[0].tenant.as_str(), "contoso");
        assert_eq!(c.users[0].send_as, vec!["sales@contoso.test".to_owned()]);
        assert_eq!(c.users[0].password_hash, h);
        assert_eq!(c.users[1].tenant.as_str(), "tailspin");
        // The edge's seed-only mode gets them too.
        let snap = Seed::parse(&estate(&h)).unwrap().into_snapshot(1).unwrap();
        assert!(snap.user("alice@contoso.test").is_some());
        assert_eq!(snap.connector_count(), 2);
    }

    #[test]
    fn every_connector_and_user_problem_is_reported_with_its_tenant() {
        let good = hash("correct horse");
        let text = format!(
            r#"
[[tenant]]
id = "contoso"
accepted-domains = ["contoso.test"]
[[tenant.connector]]
name = "a/b"
type = "hybrid"
sender-ip-addresses = ["300.1.1.1"]
tls-sender-certificate-name = "bad name"
sender-domains = ["no domain"]
[[tenant.connector]]
name = "nothing"
type = "partner"
[[tenant.connector]]
name = "nothing"
type = "partner"
sender-ip-addresses = ["192.0.2.1"]
[[tenant.user]]
address = "no-at-sign"
password-hash = "{good}"
[[tenant.user]]
address = "carol@contoso.test"
password-hash = "hunter2"
[[tenant.user]]
address = "dave@contoso.test"
password-hash = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$ZGlnZXN0ZGlnZXN0"

[[tenant]]
id = "tailspin"
[[tenant.user]]
address = "erin@contoso.test"
password-hash = "{good}"
[[tenant.user]]
address = "Erin@contoso.test"
password-hash = "{good}"
"#
        );
        let Err(SeedError::Invalid(problems)) = Seed::parse(&text).unwrap().validate() else {
            panic!("the seed should be refused");
        };
        let has = |needle: &str| {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "no problem mentions {needle:?}: {problems:#?}"
            );
        };
        has("tenant `contoso`: connector `a/b`: `a/b` is not a valid connector name");
        has("tenant `contoso`: connector `a/b`: `hybrid` is not a connector type");
        has("tenant `contoso`: connector `a/b`: `300.1.1.1` is not an IP address");
        has("tenant `contoso`: connector `a/b`: `bad name` is not a certificate domain");
        has("tenant `contoso`: connector `a/b`: `no domain` is not a sender domain");
        has("tenant `contoso`: connector `nothing`: connector `nothing` needs sender IP");
        has("tenant `contoso`: connector `nothing`: appears twice in the tenant");
        has("tenant `contoso`: user `no-at-sign`: is not an email address");
        has("tenant `contoso`: user `carol@contoso.test`: password-hash: not a PHC string");
        has("tenant `contoso`: user `dave@contoso.test`: password-hash: `argon2i` is not argon2id");
        has("tenant `tailspin`: user `erin@contoso.test`: appears twice in the tenant");
        assert_eq!(problems.len(), 11, "{problems:#?}");
    }

    #[test]
    fn an_address_belongs_to_one_tenant_in_a_file() {
        let h = hash("correct horse");
        let text = format!(
            "[[tenant]]\nid = \"a\"\n[[tenant.user]]\naddress = \"u@x.test\"\npassword-hash = \"{h}\"\n\
             [[tenant]]\nid = \"b\"\n[[tenant.user]]\naddress = \"U@x.test\"\npassword-hash = \"{h}\"\n"
        );
        let Err(SeedError::Invalid(problems)) = Seed::parse(&text).unwrap().validate() else {
            panic!("the seed should be refused");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("tenant `b`: user `u@x.test`: is also a user of tenant `a`")
        );
    }

    #[test]
    fn a_password_hash_must_be_a_whole_argon2id_phc_string() {
        assert!(check_password_hash(&hash("correct horse")).is_ok());
        assert!(check_password_hash("correct horse").is_err());
        assert!(check_password_hash("").is_err());
        assert!(check_password_hash("$argon2id$v=19$m=19456,t=2,p=1").is_err());
        assert!(check_password_hash("$argon2id$v=19$m=1,t=0,p=1$c2FsdHNhbHQ$ZGlnZXN0").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Seed::parse(
            "[[tenant]]\nid = \"a\"\n[[tenant.user]]\naddress = \"a@a\"\npassword = \"x\"\n"
        )
        .is_err());
        assert!(Seed::parse("[[tenant]]\nid = \"a\"\ndomains = []\n").is_err());
    }
}
