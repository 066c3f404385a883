//! The TOML seed format: tenants and their accepted domains, written by hand.
//!
//! ```toml
//! [[tenant]]
//! id = "example.test"
//! display-name = "Example (demo)"
//! accepted-domains = ["example.test", "example.org"]
//! ```
//!
//! `moat dev` embeds a seed with the demo tenant; `moat edge --seed FILE` loads one. Every
//! problem in a file is reported at once, with the tenant it belongs to.

use serde::Deserialize;

use crate::{Domain, PolicySnapshot, Tenant, TenantId};

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

    /// Validates the seed into a snapshot published under `version`.
    pub fn into_snapshot(self, version: u64) -> Result<PolicySnapshot, SeedError> {
        let tenants = self.into_tenants()?;
        PolicySnapshot::new(version, tenants).map_err(|e| SeedError::Invalid(vec![e.to_string()]))
    }

    /// Validates the seed into its tenants (ids unique, a domain claimed once).
    pub fn into_tenants(self) -> Result<Vec<Tenant>, SeedError> {
        let mut problems = Vec::new();
        let mut tenants = Vec::new();
        for t in self.tenant {
            let id = TenantId::new(&t.id).map_err(|e| problems.push(e.to_string()));
            let mut accepted_domains = Vec::new();
            for d in &t.accepted_domains {
                match Domain::new(d) {
                    Ok(d) => accepted_domains.push(d),
                    Err(e) => problems.push(format!("tenant `{}`: {e}", t.id)),
                }
            }
            if let Ok(id) = id {
                tenants.push(Tenant {
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
        PolicySnapshot::new(0, tenants.clone())
            .map_err(|e| SeedError::Invalid(vec![e.to_string()]))?;
        Ok(tenants)
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

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Seed::parse("[[tenant]]\nid = \"a\"\ndomains = []\n").is_err());
    }
}
