//! Finding the connectors a session matches, by client IP and by certificate domain, with hash
//! lookups instead of a scan, so that a snapshot with a million connectors costs a session a few
//! dozen lookups.
//!
//! - IP: connectors' networks are grouped by prefix length; a lookup masks the address to each
//!   length present (at most 33 for IPv4, 129 for IPv6) and probes one hash map per length.
//! - Certificate: `contoso.com` is looked up exactly; `*.contoso.com` is keyed by `contoso.com`
//!   and found by probing the name and each of its parent domains.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Connector, Domain, FastMap};

/// An index over a list of connectors; lookups return positions in that list, each at most
/// once, in ascending order. Disabled connectors are not indexed.
#[derive(Clone, Debug, Default)]
pub struct ConnectorIndex {
    /// (prefix length, masked network → connectors), longest prefix first.
    v4: Vec<(u8, FastMap<u32, Vec<u32>>)>,
    v6: Vec<(u8, FastMap<u128, Vec<u32>>)>,
    exact: FastMap<Domain, Vec<u32>>,
    wildcard: FastMap<Domain, Vec<u32>>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

impl ConnectorIndex {
    /// Indexes `connectors` (positions are `u32`: at most 4 billion connectors).
    pub fn new(connectors: &[Connector]) -> Self {
        let mut v4: FastMap<u8, FastMap<u32, Vec<u32>>> = FastMap::default();
        let mut v6: FastMap<u8, FastMap<u128, Vec<u32>>> = FastMap::default();
        let mut exact: FastMap<Domain, Vec<u32>> = FastMap::default();
        let mut wildcard: FastMap<Domain, Vec<u32>> = FastMap::default();
        for (i, c) in connectors.iter().enumerate() {
            if !c.enabled {
                continue;
            }
            let i = i as u32;
            for net in &c.sender_ip_addresses {
                match net {
                    IpNet::V4(n) => {
                        let len = n.prefix_len();
                        let key = mask4(u32::from(n.addr()), len);
                        v4.entry(len).or_default().entry(key).or_default().push(i);
                    }
                    IpNet::V6(n) => {
                        let len = n.prefix_len();
                        let key = mask6(u128::from(n.addr()), len);
                        v6.entry(len).or_default().entry(key).or_default().push(i);
                    }
                }
            }
            if let Some(name) = &c.tls_sender_certificate_name {
                let map = if name.is_wildcard() {
                    &mut wildcard
                } else {
                    &mut exact
                };
                map.entry(name.domain().clone()).or_default().push(i);
            }
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut v6: Vec<_> = v6.into_iter().collect();
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        Self {
            v4,
            v6,
            exact,
            wildcard,
        }
    }

    /// Connectors whose `sender-ip-addresses` contain `ip` (an IPv4-mapped IPv6 address counts
    /// as IPv4).
    pub fn by_ip(&self, ip: IpAddr) -> Vec<u32> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut out = Vec::new();
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(hit) = map.get(&mask4(a, *len)) {
                        out.extend_from_slice(hit);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    if let Some(hit) = map.get(&mask6(a, *len)) {
                        out.extend_from_slice(hit);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Connectors whose `tls-sender-certificate-name` covers one of `domains` (the validated
    /// client certificate's names).
    pub fn by_certificate(&self, domains: &[String]) -> Vec<u32> {
        let mut out = Vec::new();
        for name in domains {
            let name = Domain::lookup_key(name);
            if let Some(hit) = self.exact.get(name.as_ref()) {
                out.extend_from_slice(hit);
            }
            // `*.d` covers `d` and every name below it.
            let mut rest = name.as_ref();
            loop {
                if let Some(hit) = self.wildcard.get(rest) {
                    out.extend_from_slice(hit);
                }
                match rest.split_once('.') {
                    Some((_, parent)) => rest = parent,
                    None => break,
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertName, ConnectorKind, TenantId};

    fn connector(name: &str, ips: &[&str], cert: Option<&str>, enabled: bool) -> Connector {
        Connector {
            tenant: TenantId::new("t").unwrap(),
            name: name.into(),
            kind: ConnectorKind::OnPremises,
            enabled,
            sender_ip_addresses: ips
                .iter()
                .map(|i| Connector::parse_ip(i).unwrap())
                .collect(),
            tls_sender_certificate_name: cert.map(|c| CertName::new(c).unwrap()),
            sender_domains: vec![],
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        }
    }

    #[test]
    fn ips_match_by_every_prefix_length() {
        let idx = ConnectorIndex::new(&[
            connector("a", &["192.0.2.0/24"], None, true),
            connector("b", &["192.0.2.7", "2001:db8::/32"], None, true),
            connector("c", &["0.0.0.0/0"], None, false),
            connector("d", &["10.0.0.0/8", "192.0.0.0/16"], None, true),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(idx.by_ip(ip("192.0.2.7")), vec![0, 1, 3]);
        assert_eq!(idx.by_ip(ip("192.0.2.8")), vec![0, 3]);
        assert_eq!(idx.by_ip(ip("::ffff:192.0.2.8")), vec![0, 3]);
        assert_eq!(idx.by_ip(ip("2001:db8:1::5")), vec![1]);
        assert_eq!(idx.by_ip(ip("198.51.100.1")), Vec::<u32>::new());
    }

    #[test]
    fn certificate_names_exact_and_wildcard() {
        let idx = ConnectorIndex::new(&[
            connector("exact", &[], Some("mail.contoso.com"), true),
            connector("wild", &[], Some("*.contoso.com"), true),
            connector("other", &[], Some("*.fabrikam.com"), true),
        ]);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            idx.by_certificate(&names(&["MAIL.contoso.com"])),
            vec![0, 1]
        );
        assert_eq!(idx.by_certificate(&names(&["contoso.com"])), vec![1]);
        assert_eq!(idx.by_certificate(&names(&["a.b.contoso.com"])), vec![1]);
        assert_eq!(
            idx.by_certificate(&names(&["xcontoso.com"])),
            Vec::<u32>::new()
        );
        assert_eq!(
            idx.by_certificate(&names(&["x.fabrikam.com", "mail.contoso.com"])),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn the_index_agrees_with_a_scan() {
        let mut cs = Vec::new();
        for i in 0..300u32 {
            let net = format!("10.{}.{}.0/{}", i % 7, i % 11, 16 + i % 17);
            let cert = format!("{}h{}.example", if i % 2 == 0 { "*." } else { "" }, i % 13);
            cs.push(connector(&i.to_string(), &[&net], Some(&cert), i % 5 != 0));
        }
        let idx = ConnectorIndex::new(&cs);
        for j in 0..2000u32 {
            let ip: IpAddr = format!("10.{}.{}.{}", j % 7, (j / 7) % 11, j % 256)
                .parse()
                .unwrap();
            let scan: Vec<u32> = (0..cs.len() as u32)
                .filter(|&i| {
                    let c = &cs[i as usize];
                    c.enabled && c.sender_ip_addresses.iter().any(|n| n.contains(&ip))
                })
                .collect();
            assert_eq!(idx.by_ip(ip), scan, "{ip}");
            let name = format!("m.h{}.example", j % 13);
            let scan: Vec<u32> = (0..cs.len() as u32)
                .filter(|&i| {
                    let c = &cs[i as usize];
                    c.enabled
                        && c.tls_sender_certificate_name
                            .as_ref()
                            .is_some_and(|n| n.covers(&name))
                })
                .collect();
            assert_eq!(
                idx.by_certificate(std::slice::from_ref(&name)),
                scan,
                "{name}"
            );
        }
    }
}
