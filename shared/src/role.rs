//! What an admin token may do: the one definition of the admin roles, used by the control
//! plane (stored with each token, checked on each request) and by `moat admin` (the
//! `--role` of `tokens create`). Not to be confused with `moat_proto::mtls::Role`, which says
//! what a certificate's holder is (control node, edge, admin tool).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an admin token may do. Serialised (in the replicated state and its log) as its
/// kebab-case name, [`Role::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Operator,
    /// Read and change one tenant's objects.
    TenantAdmin,
    /// Read everything, change nothing.
    Reader,
}

/// A name that is not a role.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a role (operator, tenant-admin or reader)")]
pub struct RoleError(pub String);

impl Role {
    /// Every role, in the order tools list them.
    pub const ALL: [Self; 3] = [Self::Operator, Self::TenantAdmin, Self::Reader];

    /// The name used in tools, on the wire and in the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::TenantAdmin => "tenant-admin",
            Self::Reader => "reader",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What the role may do, in words (for a tool's help).
    pub fn help(self) -> &'static str {
        match self {
            Self::Operator => "Everything",
            Self::TenantAdmin => "Read and change one tenant's objects",
            Self::Reader => "Read everything, change nothing",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| RoleError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["operator", "tenant-admin", "reader"]);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        assert_eq!(Role::parse("tenant_admin"), None);
        assert!("Operator".parse::<Role>().is_err());
    }
}
