//! On-premises Exchange servers: reading a server's build from the `Received:` stamp it wrote,
//! and classifying the build against the build catalog and a baseline.
//!
//! The catalog is data (`shared/data/exchange-builds.csv`, product, update, date, short and
//! long build); updating it is a data change. Classification follows the products' version
//! rules: 8.x (2007), 14.x (2010) and 15.0 (2013) are unsupported products; 15.1 is Exchange
//! 2016, 15.2 below build 2562 Exchange 2019, 15.2 from 2562 Exchange Server SE; 15.20 and
//! above are Exchange Online's own hops and never an on-premises server. Neither is a hop
//! stamped by a host of Microsoft's cloud ([`cloud_host`]): Exchange Online and EOP stamped
//! 15.0, 15.1 and 15.2 builds from 2015 to 2019, so the build alone cannot tell them apart.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An Exchange build, `major.minor.build.revision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Build {
    /// 15 for 2013 and later.
    pub major: u16,
    /// 1 for 2016, 2 for 2019 and SE, 20+ for Exchange Online.
    pub minor: u16,
    /// The cumulative update's build number.
    pub build: u32,
    /// The security update's revision.
    pub revision: u32,
}

impl Build {
    /// Parses the short (`15.1.2507.61`) or long (`15.01.2507.061`) form.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.trim().split('.');
        let mut num = || -> Option<u32> {
            let p = it.next()?;
            if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let b = Self {
            major: u16::try_from(num()?).ok()?,
            minor: u16::try_from(num()?).ok()?,
            build: num()?,
            revision: num()?,
        };
        it.next().is_none().then_some(b)
    }

    /// The product this build belongs to.
    pub fn product(&self) -> Product {
        match (self.major, self.minor) {
            (8, _) => Product::Exchange2007,
            (14, _) => Product::Exchange2010,
            (15, 0) => Product::Exchange2013,
            (15, 1) => Product::Exchange2016,
            (15, 2) if self.build < 2562 => Product::Exchange2019,
            (15, 2) => Product::ExchangeSe,
            (15, m) if m >= 20 => Product::ExchangeOnline,
            _ => Product::Unknown,
        }
    }
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.build, self.revision
        )
    }
}

/// Exchange products, by version rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Product {
    /// 8.x.
    Exchange2007,
    /// 14.x.
    Exchange2010,
    /// 15.0.
    Exchange2013,
    /// 15.1.
    Exchange2016,
    /// 15.2, build below 2562.
    Exchange2019,
    /// 15.2, build 2562 and above.
    ExchangeSe,
    /// 15.20 and above: the service's own hops.
    ExchangeOnline,
    /// Anything else.
    Unknown,
}

impl Product {
    /// The product's name as in the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exchange2007 => "Exchange Server 2007",
            Self::Exchange2010 => "Exchange Server 2010",
            Self::Exchange2013 => "Exchange Server 2013",
            Self::Exchange2016 => "Exchange Server 2016",
            Self::Exchange2019 => "Exchange Server 2019",
            Self::ExchangeSe => "Exchange Server SE",
            Self::ExchangeOnline => "Exchange Online",
            Self::Unknown => "unknown",
        }
    }
}

/// What a build is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// 2007, 2010, 2013: always out of date.
    Unsupported,
    /// Below the baseline for its line.
    Unpatched,
    /// At or above the baseline.
    Compliant,
    /// Not an Exchange build Moat can judge.
    Unknown,
}

impl Class {
    /// The class's name in tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsupported => "unsupported",
            Self::Unpatched => "unpatched",
            Self::Compliant => "compliant",
            Self::Unknown => "unknown",
        }
    }
}

/// The oldest acceptable build of each line (a line: a product's cumulative update, that is
/// `major.minor.build`). A build is compliant when its line is in the baseline and its revision
/// is at least the baseline's, or when it belongs to a newer cumulative update of a baselined
/// product than any in the baseline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline(pub Vec<Build>);

impl Default for Baseline {
    /// The October 2025 security updates: Exchange 2016 CU23, 2019 CU14 and CU15, SE RTM.
    fn default() -> Self {
        Self(
            [
                "15.1.2507.61",
                "15.2.1544.36",
                "15.2.1748.39",
                "15.2.2562.29",
            ]
            .iter()
            .filter_map(|b| Build::parse(b))
            .collect(),
        )
    }
}

impl Baseline {
    /// Classifies `b`.
    pub fn classify(&self, b: &Build) -> Class {
        let product = b.product();
        match product {
            Product::Exchange2007 | Product::Exchange2010 | Product::Exchange2013 => {
                return Class::Unsupported
            }
            Product::ExchangeOnline | Product::Unknown => return Class::Unknown,
            _ => {}
        }
        let same_product: Vec<&Build> = self.0.iter().filter(|x| x.product() == product).collect();
        if same_product.is_empty() {
            return Class::Unknown;
        }
        if let Some(line) = same_product
            .iter()
            .find(|x| (x.major, x.minor, x.build) == (b.major, b.minor, b.build))
        {
            return match b.revision.cmp(&line.revision) {
                Ordering::Less => Class::Unpatched,
                _ => Class::Compliant,
            };
        }
        let newest = same_product.iter().map(|x| x.build).max().unwrap_or(0);
        if b.build > newest {
            Class::Compliant
        } else {
            Class::Unpatched
        }
    }

    /// The baseline's builds for `b`'s product: what to upgrade to.
    pub fn recommended(&self, b: &Build) -> Vec<Build> {
        self.0
            .iter()
            .filter(|x| x.product() == b.product())
            .copied()
            .collect()
    }
}

/// One row of the build catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Product name.
    pub product: String,
    /// Update name, e.g. `CU23 Oct25SU`.
    pub update: String,
    /// Release date, `YYYY-MM-DD`.
    pub released: String,
    /// The build.
    pub build: Build,
}

/// The build catalog shipped with Moat.
pub const CATALOG_CSV: &str = include_str!("../data/exchange-builds.csv");

/// Parses a catalog in the CSV format of [`CATALOG_CSV`]; bad rows are skipped.
pub fn catalog(csv: &str) -> Vec<CatalogEntry> {
    csv.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let [product, update, released, short, ..] = f[..] else {
                return None;
            };
            Some(CatalogEntry {
                product: product.to_owned(),
                update: update.to_owned(),
                released: released.to_owned(),
                build: Build::parse(short)?,
            })
        })
        .collect()
}

/// A server seen in a message's trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The `by` host of the stamp, lowercase: the server's identity.
    pub server: String,
    /// The build it stamped.
    pub build: Build,
}

/// The most bytes of a `Received:` line kept as evidence of a sighting (the line is cut at a
/// character boundary at or below it).
pub const MAX_EVIDENCE_BYTES: usize = 512;

/// The DNS suffixes of Microsoft's own mail cloud: a `Received:` stamp whose `by` host lies
/// under one of them was written by Exchange Online or Exchange Online Protection, never by an
/// on-premises server, whatever build it names. Sources: `docs/exchange-sources.md`.
pub const CLOUD_SUFFIXES: &[&str] = &[
    // Worldwide: `*.outlook.com` (with `*.protection.outlook.com`, `*.prod.outlook.com`,
    // `*.mail.protection.outlook.com`) and `*.office365.com`.
    "outlook.com",
    "office365.com",
    // The service's internal forest names, seen in stamps of its own hops.
    "exchangelabs.com",
    // GCC High and DoD: `*.protection.office365.us` (and `outlook.office365.us`), DoD's
    // `*.protection.apps.mil`.
    "office365.us",
    "protection.apps.mil",
    // Office 365 operated by 21Vianet: `*.partner.outlook.cn`, MX
    // `*.mail.protection.partner.outlook.cn`.
    "partner.outlook.cn",
    // Microsoft Cloud Deutschland (2016-2021): `*.protection.outlook.de`.
    "outlook.de",
];

/// Whether `host` (a stamp's `by` host) belongs to Microsoft's mail cloud: it is one of
/// [`CLOUD_SUFFIXES`] or lies under one, compared case-insensitively on label boundaries
/// (`evil-outlook.com` is not under `outlook.com`).
pub fn cloud_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    CLOUD_SUFFIXES.iter().any(|suffix| {
        host == *suffix
            || host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// Finds the newest `Received:` header (the first one in the header section) that carries an
/// on-premises Exchange stamp (`with Microsoft SMTP Server ... id B` or `with mapi id B`), skipping
/// Exchange Online's own hops: those stamped by a host of Microsoft's cloud ([`cloud_host`]),
/// whatever their build, and any with a 15.20+ build. `header` is the message's header section
/// (CRLF or LF lines; folded lines are unfolded).
pub fn sighting(header: &str) -> Option<Sighting> {
    evidence(header).map(|(s, _)| s)
}

/// As [`sighting`], with the `Received:` line the build came from as evidence: the field as
/// received, unfolded (CR and LF removed), other control characters replaced by spaces, and
/// bounded by [`bound_evidence`].
pub fn evidence(header: &str) -> Option<(Sighting, String)> {
    received_fields(header)
        .into_iter()
        .find_map(|(raw, value)| stamp(&value).map(|s| (s, bound_evidence(&raw))))
}

/// A `Received:` line made safe to keep and show: CR and LF removed, other control characters
/// replaced by spaces, cut to at most [`MAX_EVIDENCE_BYTES`] bytes at a character boundary.
pub fn bound_evidence(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(MAX_EVIDENCE_BYTES));
    for ch in line.chars() {
        let ch = match ch {
            '\r' | '\n' => continue,
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + ch.len_utf8() > MAX_EVIDENCE_BYTES {
            break;
        }
        out.push(ch);
    }
    out
}

/// The `Received:` fields in order: each as received (name included, unfolded by removing the
/// line breaks) and its value normalized (folds joined by one space, trimmed).
fn received_fields(header: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in header.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((raw, value)) = &mut current {
                raw.push_str(line);
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some(c) = current.take() {
            out.push(c);
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("received") {
                current = Some((line.to_owned(), value.trim().to_owned()));
            }
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    out
}

/// The on-premises Exchange stamp of one `Received:` value, if it has one.
fn stamp(value: &str) -> Option<Sighting> {
    let lower = value.to_ascii_lowercase();
    // Drop comments in parentheses (IP addresses, the TLS details) so tokens line up.
    let mut plain = String::with_capacity(lower.len());
    let mut depth = 0u32;
    for ch in lower.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(ch),
            _ => {}
        }
    }
    let words: Vec<&str> = plain
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let with = words.iter().position(|w| *w == "with")?;
    let exchange = matches!(
        words.get(with + 1..with + 4),
        Some(["microsoft", "smtp", "server", ..])
    ) || words.get(with + 1) == Some(&"mapi");
    if !exchange {
        return None;
    }
    let id = words[with..].iter().position(|w| *w == "id")? + with;
    let build = Build::parse(words.get(id + 1)?)?;
    if build.product() == Product::ExchangeOnline {
        return None;
    }
    let by = words.iter().position(|w| *w == "by")?;
    let server = words.get(by + 1)?.trim_end_matches('.').to_owned();
    if server.is_empty() || by > with || cloud_host(&server) {
        return None;
    }
    Some(Sighting { server, build })
}

#[cfg(test)]
mod tests;
