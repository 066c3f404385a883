//! Identifiers the crates share: tenants ([`TenantId`]), domains ([`Domain`]) and connectors
//! ([`ConnectorId`]). They depend on nothing else in the crate, so the snapshot ([`crate::policy`])
//! and the connector index ([`crate::matching`]) both use them without depending on each other.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A tenant's identifier: its primary name, lowercase (for example `example.test`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TryFrom<String> for TenantId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> Self {
        t.0
    }
}

impl TryFrom<String> for Domain {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> Self {
        d.0
    }
}

impl TenantId {
    /// Validates and normalises a tenant identifier: 1 to 64 characters of `[a-z0-9.-]`.
    pub fn new(raw: &str) -> Result<Self, DomainError> {
        let id = raw.trim().to_ascii_lowercase();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if ok {
            Ok(Self(id))
        } else {
            Err(DomainError::BadTenantId(raw.to_owned()))
        }
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS domain name, validated and normalised to lowercase without a trailing dot.
///
/// Internationalised names are accepted in U-label form (UTF-8) as they arrive in SMTPUTF8
/// sessions; comparison is by the normalised text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

/// Why a name is not acceptable as a domain or tenant identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    /// The text is not a syntactically valid domain name.
    #[error("`{0}` is not a valid domain name (labels of letters, digits and hyphens, at most 63 characters each, 253 in all)")]
    BadDomain(String),
    /// The text is not a valid tenant identifier.
    #[error("`{0}` is not a valid tenant id (1 to 64 characters of a-z, 0-9, `.` and `-`)")]
    BadTenantId(String),
}

impl Domain {
    /// Validates a domain name per RFC 5321 section 4.1.2 (`sub-domain *("." sub-domain)`),
    /// allowing UTF-8 labels (RFC 6531).
    pub fn new(raw: &str) -> Result<Self, DomainError> {
        let name = raw.strip_suffix('.').unwrap_or(raw).to_lowercase();
        let bad = || DomainError::BadDomain(raw.to_owned());
        if name.is_empty() || name.len() > 253 {
            return Err(bad());
        }
        for label in name.split('.') {
            let valid = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
            if !valid {
                return Err(bad());
            }
        }
        Ok(Self(name))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `raw` as a [`Domain`] would hold it (lowercase, no trailing dot), for a lookup in a map
    /// keyed by domains: borrowed when it already is, which is the common case. Not validated:
    /// an invalid name finds nothing.
    pub fn lookup_key(raw: &str) -> Cow<'_, str> {
        let name = raw.strip_suffix('.').unwrap_or(raw);
        if name
            .bytes()
            .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
        {
            Cow::Owned(name.to_lowercase())
        } else {
            Cow::Borrowed(name)
        }
    }
}

// A domain hashes and compares as its name, so maps keyed by domains are searched by `&str`.
impl Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connector's identity: its tenant and its name (unique within the tenant).
///
/// Its text form, `tenant/name`, keys connectors in the replicated state and in the counters
/// edges report; [`Display`](fmt::Display) writes it and [`ConnectorId::parse`] is the one
/// place that splits it. Serialised as that text, and ordered as that text (not field by
/// field: `a-b/x` sorts before `a/x`), so maps keyed by connector ids keep the order and the
/// JSON form they had when keyed by the text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectorId {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The connector's name (no `/`).
    pub name: String,
}

/// Why a text is not a connector id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a connector id (`tenant/name`)")]
pub struct ConnectorIdError(pub String);

impl ConnectorId {
    /// The id of connector `name` of `tenant`.
    pub fn new(tenant: TenantId, name: impl Into<String>) -> Self {
        Self {
            tenant,
            name: name.into(),
        }
    }

    /// Reads `tenant/name`. Only the text [`Display`](fmt::Display) writes is accepted: the
    /// tenant already normalised and a name without `/`, so that a parsed id prints as the
    /// text it came from (a key that differs only in case is another key, as it always was).
    pub fn parse(s: &str) -> Result<Self, ConnectorIdError> {
        let bad = || ConnectorIdError(s.to_owned());
        let (raw, name) = s.split_once('/').ok_or_else(bad)?;
        let tenant = TenantId::new(raw).map_err(|_| bad())?;
        if tenant.as_str() != raw || name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok(Self::new(tenant, name))
    }

    /// The bytes of the text form, for ordering without allocating.
    fn text_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.tenant
            .as_str()
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(self.name.bytes())
    }
}

impl Ord for ConnectorId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.text_bytes().cmp(other.text_bytes())
    }
}

impl PartialOrd for ConnectorId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

impl FromStr for ConnectorId {
    type Err = ConnectorIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ConnectorId {
    type Error = ConnectorIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ConnectorId> for String {
    fn from(c: ConnectorId) -> Self {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(t: &str, n: &str) -> ConnectorId {
        ConnectorId::new(TenantId::new(t).unwrap(), n)
    }

    #[test]
    fn connector_ids_round_trip_through_their_text() {
        let c = id("a.test", "on prem");
        assert_eq!(c.to_string(), "a.test/on prem");
        assert_eq!(ConnectorId::parse("a.test/on prem"), Ok(c.clone()));
        assert_eq!("a.test/on prem".parse::<ConnectorId>(), Ok(c.clone()));
        // The serde form goes through these conversions.
        assert_eq!(String::from(c.clone()), "a.test/on prem");
        assert_eq!(ConnectorId::try_from("a.test/on prem".to_owned()), Ok(c));
        for bad in ["", "a", "a/", "/x", "A/x", " a/x", "a/x/y", "a b/x"] {
            assert!(ConnectorId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connector_ids_sort_as_their_text() {
        let mut ids = [
            id("a", "x"),
            id("a-b", "x"),
            id("a.b", "y"),
            id("a", "w"),
            id("ab", "a"),
        ];
        ids.sort();
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let sorted = {
            let mut t = texts.clone();
            t.sort();
            t
        };
        assert_eq!(texts, sorted);
        texts.dedup();
        assert_eq!(texts.len(), 5);
        // As map keys: a map keyed by ids iterates (and so serialises) as one keyed by text.
        let by_id: std::collections::BTreeMap<ConnectorId, u8> =
            ids.iter().cloned().map(|i| (i, 1)).collect();
        let keys: Vec<String> = by_id.keys().map(ToString::to_string).collect();
        assert_eq!(keys, texts);
    }
}
