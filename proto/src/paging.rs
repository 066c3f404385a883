//! Page tokens of paginated admin reads: an opaque text that names the kind read and the key
//! of the last item a page returned, so the next page resumes after that key (not at an
//! offset: items created or deleted in between neither repeat nor shift the others).
//!
//! The text is `p1.<kind number>.<key in hex>`; clients pass it back unchanged and never
//! look inside.

use crate::v1::ReadKind;

/// Why a page token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageTokenError {
    /// Not text this module wrote.
    #[error("`{0}` is not a page token")]
    Malformed(String),
    /// A token from a read of another kind.
    #[error("the page token is for `{found}` reads, not `{wanted}`")]
    OtherKind {
        /// The kind the token was issued for.
        found: String,
        /// The kind being read.
        wanted: String,
    },
}

/// The token that resumes a `kind` read after the item whose key is `key`.
pub fn encode_page_token(kind: ReadKind, key: &[u8]) -> String {
    let mut s = format!("p1.{}.", kind as i32);
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The key a `kind` read resumes after: `None` for an empty token (the first page).
pub fn decode_page_token(kind: ReadKind, token: &str) -> Result<Option<Vec<u8>>, PageTokenError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || PageTokenError::Malformed(token.chars().take(80).collect());
    let rest = token.strip_prefix("p1.").ok_or_else(bad)?;
    let (number, hex) = rest.split_once('.').ok_or_else(bad)?;
    let number: i32 = number.parse().map_err(|_| bad())?;
    if number != kind as i32 {
        return Err(PageTokenError::OtherKind {
            found: ReadKind::try_from(number).map_or_else(|_| number.to_string(), ReadKind::name),
            wanted: kind.name(),
        });
    }
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_any_key() {
        for key in [
            &b""[..],
            b"a",
            b"contoso.example/inbound",
            &[0, 255, 7, 128],
        ] {
            let t = encode_page_token(ReadKind::Connector, key);
            assert!(t.is_ascii() && !t.contains(' '), "{t}");
            assert_eq!(
                decode_page_token(ReadKind::Connector, &t),
                Ok(Some(key.to_vec()))
            );
        }
        assert_eq!(decode_page_token(ReadKind::Tenant, ""), Ok(None));
    }

    #[test]
    fn tokens_of_another_kind_or_garbage_are_refused() {
        let t = encode_page_token(ReadKind::Tenant, b"a.test");
        assert_eq!(
            decode_page_token(ReadKind::User, &t),
            Err(PageTokenError::OtherKind {
                found: "tenant".into(),
                wanted: "user".into()
            })
        );
        for junk in [
            "x",
            "p1.",
            "p1.1",
            "p1.1.abc",
            "p1.1.zz",
            "p1.one.00",
            "p2.1.00",
            "p1.1.é0",
        ] {
            assert!(
                matches!(
                    decode_page_token(ReadKind::Tenant, junk),
                    Err(PageTokenError::Malformed(_))
                ),
                "{junk}"
            );
        }
    }
}
