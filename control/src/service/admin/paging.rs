//! Paging of list reads: a page is the items after a key (the one a page token names), in the
//! state's key order, at most `limit` of them and never more than [`PAGE_BYTES`] encoded, so no
//! reply passes the transport's 4 MB message limit.
//!
//! Compatibility: a request with `limit = 0` (every `moat admin` before paging) still gets the
//! whole list while it fits in [`PAGE_BYTES`]; past that it gets the first [`PAGE_BYTES`] of it
//! and a `next_page_token` it does not know to follow, so such a client sees a partial list
//! (where it used to fail with a reply over the transport limit).

use std::collections::BTreeMap;
use std::ops::Bound;

use prost::Message;
use tonic::Status;

/// The most bytes of items (each counted as its encoded length plus a few bytes of framing)
/// one reply carries: well under the 4 MB gRPC message limit, whatever else the reply holds.
pub(crate) const PAGE_BYTES: usize = 3 << 20;

/// What bounds one page: the key it resumes after, the most items, the most bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds<'a> {
    /// The key of the last item of the previous page (`None`: from the start).
    pub after: Option<&'a [u8]>,
    /// The most items (0: no count limit).
    pub limit: usize,
    /// The most encoded bytes of items ([`PAGE_BYTES`] outside tests).
    pub budget: usize,
}

/// One page of `items`, which come in ascending key order starting after the page's key,
/// each with its key: the items, and the key to resume after when more remain (`None` when
/// this page is the last). A page holds at least one item when any remain, so a single item
/// over the budget is still returned (alone) rather than looping forever.
pub(super) fn page<T: Message>(
    items: impl Iterator<Item = (Vec<u8>, T)>,
    bounds: Bounds<'_>,
) -> (Vec<T>, Option<Vec<u8>>) {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut last: Option<Vec<u8>> = None;
    for (key, item) in items {
        let size = item.encoded_len() + 8;
        let full = (bounds.limit > 0 && out.len() >= bounds.limit) || bytes + size > bounds.budget;
        if full && !out.is_empty() {
            return (out, last);
        }
        bytes += size;
        out.push(item);
        last = Some(key);
    }
    (out, None)
}

/// The entries of `map` after `from` (all of them when `from` is `None`), in key order.
pub(super) fn range_after<K: Ord, V>(
    map: &BTreeMap<K, V>,
    from: Option<K>,
) -> std::collections::btree_map::Range<'_, K, V> {
    range_from(map, from.map(Bound::Excluded))
}

/// The page's resume key as a map key of a text-keyed list: `None` for the first page, an
/// INVALID_ARGUMENT status when the token's key is not one such a list could have written.
pub(super) fn text_key<K>(
    after: Option<&[u8]>,
    parse: impl FnOnce(&str) -> Option<K>,
) -> Result<Option<K>, Status> {
    let Some(bytes) = after else {
        return Ok(None);
    };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(parse)
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("the page token names no item of this list"))
}

/// The entries of `map` from `start` on (all of them when `start` is `None`), in key order.
pub(super) fn range_from<K: Ord, V>(
    map: &BTreeMap<K, V>,
    start: Option<Bound<K>>,
) -> std::collections::btree_map::Range<'_, K, V> {
    map.range((start.unwrap_or(Bound::Unbounded), Bound::Unbounded))
}

/// The resume key of a list keyed by numbers (`u64` big-endian, then an optional `u32`), so
/// that byte order is numeric order.
pub(super) fn number_key(after: Option<&[u8]>) -> Result<Option<(u64, u32)>, Status> {
    let Some(bytes) = after else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument("the page token names no item of this list");
    let hi: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let lo = match bytes.get(8..) {
        Some([]) | None => 0,
        Some(rest) => u32::from_be_bytes(rest.try_into().map_err(|_| bad())?),
    };
    Ok(Some((u64::from_be_bytes(hi), lo)))
}

/// The key bytes of a numbered item (see [`number_key`]).
pub(super) fn number_bytes(n: u64, sub: Option<u32>) -> Vec<u8> {
    let mut k = n.to_be_bytes().to_vec();
    if let Some(s) = sub {
        k.extend_from_slice(&s.to_be_bytes());
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(keys: &[&str]) -> Vec<(Vec<u8>, moat_proto::v1::Tenant)> {
        keys.iter()
            .map(|k| {
                let t = moat_proto::v1::Tenant {
                    id: (*k).into(),
                    ..Default::default()
                };
                (k.as_bytes().to_vec(), t)
            })
            .collect()
    }

    fn bounds(limit: usize, budget: usize) -> Bounds<'static> {
        Bounds {
            after: None,
            limit,
            budget,
        }
    }

    #[test]
    fn a_page_stops_at_the_limit_and_names_its_last_key() {
        let (got, next) = page(items(&["a", "b", "c"]).into_iter(), bounds(2, PAGE_BYTES));
        assert_eq!(got.len(), 2);
        assert_eq!(next.as_deref(), Some(&b"b"[..]));
        let (got, next) = page(items(&["a", "b"]).into_iter(), bounds(2, PAGE_BYTES));
        assert_eq!(got.len(), 2);
        assert_eq!(next, None, "no token when nothing remains");
        let (got, next) = page(items(&["a", "b"]).into_iter(), bounds(0, PAGE_BYTES));
        assert_eq!((got.len(), next), (2, None), "limit 0: everything");
    }

    #[test]
    fn a_page_stops_before_the_byte_budget_but_holds_one_item() {
        let each = moat_proto::v1::Tenant {
            id: "a".into(),
            ..Default::default()
        }
        .encoded_len()
            + 8;
        let (got, next) = page(items(&["a", "b", "c"]).into_iter(), bounds(0, 2 * each));
        assert_eq!(got.len(), 2);
        assert_eq!(next.as_deref(), Some(&b"b"[..]));
        let (got, next) = page(items(&["a", "b"]).into_iter(), bounds(0, 1));
        assert_eq!(got.len(), 1);
        assert_eq!(next.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn number_keys_round_trip() {
        assert_eq!(number_key(None).unwrap(), None);
        let k = number_bytes(7, Some(3));
        assert_eq!(number_key(Some(&k)).unwrap(), Some((7, 3)));
        let k = number_bytes(9, None);
        assert_eq!(number_key(Some(&k)).unwrap(), Some((9, 0)));
        assert!(number_key(Some(b"abc")).is_err());
        assert!(number_bytes(1, Some(u32::MAX)) < number_bytes(2, Some(0)));
    }
}
