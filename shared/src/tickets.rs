//! TLS session ticket keys: the keys the control plane draws and rotates and edges use to
//! encrypt and decrypt TLS 1.3 tickets and TLS 1.2 session tickets, so that a client resumes
//! on any edge of the cluster.
//!
//! A key is a 16-byte name, which a ticket carries in the clear to say which key sealed it,
//! and a 32-byte secret. Neither [`TicketSecret`]'s nor [`TicketKey`]'s `Debug` prints the
//! secret, so a key never reaches a log through a `{:?}` of a command, a change or a snapshot.
//! See `docs/tls-tickets.md` for where keys are stored and for how long.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes in a key's name.
pub const TICKET_KEY_NAME_LEN: usize = 16;

/// Bytes in a key's secret (an AES-256-GCM key).
pub const TICKET_SECRET_LEN: usize = 32;

/// How often the control plane rotates the ticket keys unless configured otherwise: 12 hours.
pub const DEFAULT_TICKET_ROTATION_MS: i64 = 12 * 60 * 60 * 1000;

/// A key's secret: what seals tickets. Its `Debug` says `redacted`; its serde form (the raft
/// log and snapshots only) is lowercase hex.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketSecret([u8; TICKET_SECRET_LEN]);

impl TicketSecret {
    /// A secret of these bytes.
    pub fn new(bytes: [u8; TICKET_SECRET_LEN]) -> Self {
        TicketSecret(bytes)
    }

    /// The secret's bytes, for the AEAD that seals tickets and the wire form that carries it
    /// to edges; nothing else should read them.
    pub fn expose(&self) -> &[u8; TICKET_SECRET_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret(redacted)")
    }
}

impl Serialize for TicketSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for TicketSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        from_hex::<TICKET_SECRET_LEN>(&text)
            .map(TicketSecret)
            .ok_or_else(|| serde::de::Error::custom("a ticket secret is 64 hex digits"))
    }
}

/// One ticket key: its name, its secret and when the control plane made it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    /// The name tickets carry (16 bytes), as 32 hex digits: the key's id in `moat admin`.
    pub name: String,
    /// The secret.
    pub secret: TicketSecret,
    /// When the key was made (cluster time, Unix ms).
    pub created_ms: i64,
}

impl TicketKey {
    /// The name as bytes; `None` when it is not 32 hex digits.
    pub fn name_bytes(&self) -> Option<[u8; TICKET_KEY_NAME_LEN]> {
        from_hex::<TICKET_KEY_NAME_LEN>(&self.name)
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

/// The keys an edge uses: one that issues tickets and the older ones it still accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketKeys {
    /// The key new tickets are sealed with; `None` before the control plane made one.
    pub issuing: Option<TicketKey>,
    /// Older keys: tickets sealed with them still resume, none is sealed with them any more.
    pub accepting: Vec<TicketKey>,
    /// How long a ticket stays useful (the rotation period), told to clients as its lifetime.
    pub lifetime_ms: i64,
}

impl TicketKeys {
    /// Every key, the issuing one first.
    pub fn all(&self) -> impl Iterator<Item = &TicketKey> + '_ {
        self.issuing.iter().chain(self.accepting.iter())
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Exactly `N` bytes from `2N` hex digits (either case); `None` otherwise.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let t = text.as_bytes();
    if t.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(t[2 * i])? << 4) | digit(t[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_round_trip_as_hex() {
        let key = TicketKey {
            name: to_hex(&[0xab; TICKET_KEY_NAME_LEN]),
            secret: TicketSecret::new([0x5c; TICKET_SECRET_LEN]),
            created_ms: 7,
        };
        let shown = format!(
            "{key:?} {:?}",
            TicketKeys {
                issuing: Some(key.clone()),
                accepting: vec![key.clone()],
                lifetime_ms: 1,
            }
        );
        assert!(!shown.contains("5c5c"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(
            shown.contains(&"ab".repeat(16)),
            "the name is shown: {shown}"
        );
        #[derive(Serialize, Deserialize)]
        struct W {
            key: TicketKey,
        }
        let text = toml::to_string(&W { key: key.clone() }).unwrap();
        assert!(text.contains(&"5c".repeat(32)), "{text}");
        let back: W = toml::from_str(&text).unwrap();
        assert_eq!(back.key, key);
        assert_eq!(back.key.name_bytes(), Some([0xab; TICKET_KEY_NAME_LEN]));
        let short = text.replace(&"5c".repeat(32), "abcd");
        assert!(toml::from_str::<W>(&short).is_err());
        assert_eq!(from_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>("0aF"), None);
        assert_eq!(from_hex::<1>("zz"), None);
    }
}
