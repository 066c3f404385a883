//! Admin tokens: their stored records (a hash, never the token), created and revoked through
//! the log. Their [`Role`] is defined in `moat_shared` (re-exported here and at
//! `crate::state::Role`), so the control plane and `moat admin` share one definition.

use std::collections::BTreeMap;

pub use moat_shared::Role;
use moat_shared::TenantId;
use serde::{Deserialize, Serialize};

use super::error::{Kind, Rejection};
use super::tenants::Directory;

/// The admin tokens part of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Admin tokens by id.
    #[serde(rename = "tokens")]
    pub records: BTreeMap<String, TokenRecord>,
}

/// A stored admin token: its SHA-256 hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public identifier (the token's prefix).
    pub id: String,
    /// A label for audit records.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For tenant admins, the tenant.
    pub tenant: Option<TenantId>,
    /// Hex SHA-256 of the full token.
    pub sha256: String,
    /// When it was created (entry time).
    pub created_ms: i64,
}

impl Tokens {
    /// Records a token of an existing tenant (if a tenant admin's); its time is the entry's.
    pub(super) fn create(
        &mut self,
        token: &TokenRecord,
        directory: &Directory,
        now_ms: i64,
    ) -> Result<String, Rejection> {
        if let Some(t) = &token.tenant {
            directory.require(t)?;
        }
        if self.records.contains_key(&token.id) {
            return Err(Rejection::AlreadyExists {
                kind: Kind::Token,
                name: token.id.clone(),
            });
        }
        let mut token = token.clone();
        token.created_ms = now_ms;
        let summary = format!("token {} ({}) created", token.name, token.role.as_str());
        self.records.insert(token.id.clone(), token);
        Ok(summary)
    }

    /// Forgets a token.
    pub(super) fn revoke(&mut self, id: &str) -> Result<String, Rejection> {
        match self.records.remove(id) {
            Some(t) => Ok(format!("token {} revoked", t.name)),
            None => Err(Rejection::not_found(Kind::Token, id)),
        }
    }
}
