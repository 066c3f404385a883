//! Parsing of SMTP command lines (RFC 5321 section 4.1, RFC 6531 for UTF-8 addresses).
//!
//! The parser takes one command line without its CRLF and returns a [`Command`] or the registry
//! reply that explains what is wrong with it. It never panics.

use moat_shared::Domain;

use super::reply::{self, Code};

/// A mailbox address (`local@domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The local part, as sent (quoted local parts keep their quotes).
    pub local: String,
    /// The domain, or an address literal such as `[192.0.2.1]`, lowercase.
    pub domain: String,
}

impl Address {
    /// Whether any part is non-ASCII (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The `BODY=` parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// No parameter, or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// The parameters of MAIL FROM that the edge supports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870), the client's estimate.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO name`.
    Ehlo(String),
    /// `HELO name`.
    Helo(String),
    /// `MAIL FROM:<path> params`; `None` is the null reverse path `<>`.
    Mail(Option<Address>, MailParams),
    /// `RCPT TO:<path>`.
    Rcpt(Address),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets that follow the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP`.
    Help,
    /// `VRFY`.
    Vrfy,
    /// `EXPN`.
    Expn,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954); the mechanism uppercased.
    Auth(String, Option<String>),
}

/// Longest local part (RFC 5321 section 4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest path including the angle brackets (RFC 5321 section 4.5.3.1.3).
const MAX_PATH: usize = 256;

/// Parses one command line (without CRLF). `utf8_ok` is whether the line may carry UTF-8 at all
/// (the SMTPUTF8 check itself is made against the MAIL parameters).
pub fn parse(line: &[u8]) -> Result<Command, Code> {
    let line = std::str::from_utf8(line).map_err(|_| reply::SYNTAX_PARAMS)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(reply::SYNTAX_PARAMS)
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => helo_name(rest).map(Command::Ehlo),
        "HELO" => helo_name(rest).map(Command::Helo),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut words = rest.split_ascii_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(m), initial, None) => Ok(Command::Auth(
                    m.to_ascii_uppercase(),
                    initial.map(str::to_owned),
                )),
                _ => Err(reply::SYNTAX_PARAMS),
            }
        }
        _ => Err(reply::UNRECOGNIZED),
    }
}

fn helo_name(rest: &str) -> Result<String, Code> {
    // Real clients send all sorts of names here; accept any printable token (as Postfix does by
    // default) and keep only the first word.
    let name = rest.split_ascii_whitespace().next().unwrap_or("");
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(reply::SYNTAX_HELO);
    }
    Ok(name.to_owned())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) {
        let (head, tail) = s.split_at(prefix.len());
        head.eq_ignore_ascii_case(prefix).then_some(tail)
    } else {
        None
    }
}

/// Splits `<path> params` into the path (without brackets) and the parameter text.
fn split_path(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('<')?;
    // The path ends at the first `>` outside a quoted string.
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let rest = &s[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return None;
                }
                return Some((&s[..i], rest.trim_start()));
            }
            _ => {}
        }
    }
    None
}

fn parse_mail(rest: &str) -> Result<Command, Code> {
    let rest = strip_prefix_ci(rest, "FROM:").ok_or(reply::SYNTAX_PARAMS)?;
    // RFC 5321 forbids the space after the colon, but many clients send it.
    let (path, params) = split_path(rest.trim_start()).ok_or(reply::BAD_SENDER_SYNTAX)?;
    let from = if path.is_empty() {
        None
    } else {
        Some(parse_path(path).ok_or(reply::BAD_SENDER_SYNTAX)?)
    };
    let mut p = MailParams::default();
    for param in params.split_ascii_whitespace() {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                p.size = Some(
                    v.parse()
                        .ok()
                        .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or(reply::SYNTAX_PARAMS)?,
                )
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                p.body = BodyType::EightBitMime
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            _ => return Err(reply::PARAM_UNSUPPORTED),
        }
    }
    if from.as_ref().is_some_and(Address::is_utf8) && !p.smtputf8 {
        return Err(reply::NEEDS_SMTPUTF8);
    }
    Ok(Command::Mail(from, p))
}

fn parse_rcpt(rest: &str) -> Result<Command, Code> {
    let rest = strip_prefix_ci(rest, "TO:").ok_or(reply::SYNTAX_PARAMS)?;
    let (path, params) = split_path(rest.trim_start()).ok_or(reply::BAD_RECIPIENT_SYNTAX)?;
    let to = parse_path(path).ok_or(reply::BAD_RECIPIENT_SYNTAX)?;
    if !params.is_empty() {
        // No RCPT parameters are advertised (no DSN).
        return Err(reply::PARAM_UNSUPPORTED);
    }
    Ok(Command::Rcpt(to))
}

fn parse_bdat(rest: &str) -> Result<Command, Code> {
    let mut words = rest.split_ascii_whitespace();
    let size = words
        .next()
        .filter(|w| w.len() <= 19 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse().ok())
        .ok_or(reply::SYNTAX_BDAT)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(reply::SYNTAX_BDAT),
    };
    if words.next().is_some() {
        return Err(reply::SYNTAX_BDAT);
    }
    Ok(Command::Bdat { size, last })
}

/// Parses a path without its angle brackets: optional source route, then `local@domain`.
fn parse_path(path: &str) -> Option<Address> {
    if path.len() + 2 > MAX_PATH {
        return None;
    }
    // A-d-l source routes (`@a,@b:`) are obsolete and ignored (RFC 5321 section 4.1.2 and C).
    let mailbox = match path.strip_prefix('@') {
        Some(_) => {
            let (route, mailbox) = path.split_once(':')?;
            for hop in route.split(',') {
                Domain::new(hop.strip_prefix('@')?).ok()?;
            }
            mailbox
        }
        None => path,
    };
    let at = mailbox.rfind('@')?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    if !valid_local(local) {
        return None;
    }
    let domain = if domain.starts_with('[') {
        valid_literal(domain)?.to_owned()
    } else {
        Domain::new(domain).ok()?.as_str().to_owned()
    };
    Some(Address {
        local: local.to_owned(),
        domain,
    })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn valid_local(local: &str) -> bool {
    if local.is_empty() || local.len() > MAX_LOCAL {
        return false;
    }
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        // Quoted-string: qtextSMTP or quoted-pairSMTP.
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) if (' '..='~').contains(&n) => {}
                    _ => return false,
                },
                '"' => return false,
                c if c == ' ' || c == '!' || ('#'..='~').contains(&c) || !c.is_ascii() => {}
                _ => return false,
            }
        }
        true
    } else {
        local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
    }
}

fn valid_literal(lit: &str) -> Option<&str> {
    let inner = lit.strip_prefix('[')?.strip_suffix(']')?;
    let ok = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    ok.then_some(lit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(local: &str, domain: &str) -> Address {
        Address {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn parses_the_basic_commands() {
        let cases: &[(&str, Command)] = &[
            ("EHLO client.test", Command::Ehlo("client.test".into())),
            ("helo [10.0.0.1]", Command::Helo("[10.0.0.1]".into())),
            ("DATA", Command::Data),
            ("rset", Command::Rset),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("STARTTLS", Command::StartTls),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "BDAT 512",
                Command::Bdat {
                    size: 512,
                    last: false,
                },
            ),
            (
                "RCPT TO:<a@Example.TEST>",
                Command::Rcpt(addr("a", "example.test")),
            ),
            (
                "RCPT TO: <\"a b\"@x.test>",
                Command::Rcpt(addr("\"a b\"", "x.test")),
            ),
            (
                "RCPT TO:<@r1.test,@r2.test:u@x.test>",
                Command::Rcpt(addr("u", "x.test")),
            ),
            ("MAIL FROM:<>", Command::Mail(None, MailParams::default())),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes()).as_ref(), Ok(want), "{line}");
        }
    }

    #[test]
    fn parses_mail_parameters() {
        let got = parse(b"MAIL FROM:<j\xc3\xb6@x.test> SIZE=1000 BODY=8BITMIME SMTPUTF8").unwrap();
        assert_eq!(
            got,
            Command::Mail(
                Some(addr("jö", "x.test")),
                MailParams {
                    size: Some(1000),
                    body: BodyType::EightBitMime,
                    smtputf8: true
                }
            )
        );
    }

    #[test]
    fn refuses_bad_input_with_precise_codes() {
        let cases: &[(&[u8], Code)] = &[
            (b"FOO", reply::UNRECOGNIZED),
            (b"EHLO", reply::SYNTAX_HELO),
            (b"MAIL TO:<a@b.test>", reply::SYNTAX_PARAMS),
            (b"MAIL FROM:a@b.test", reply::BAD_SENDER_SYNTAX),
            (b"MAIL FROM:<a@@b.test>", reply::BAD_SENDER_SYNTAX),
            (b"MAIL FROM:<a@b.test>x", reply::BAD_SENDER_SYNTAX),
            (b"MAIL FROM:<a@b.test> SIZE=12x", reply::SYNTAX_PARAMS),
            (b"MAIL FROM:<a@b.test> RET=FULL", reply::PARAM_UNSUPPORTED),
            (
                b"MAIL FROM:<a@b.test> BODY=BINARYMIME",
                reply::PARAM_UNSUPPORTED,
            ),
            (b"MAIL FROM:<j\xc3\xb6@x.test>", reply::NEEDS_SMTPUTF8),
            (b"RCPT TO:<a..b@x.test>", reply::BAD_RECIPIENT_SYNTAX),
            (b"RCPT TO:<a@x..test>", reply::BAD_RECIPIENT_SYNTAX),
            (b"RCPT TO:<a@[300.1.1.1]>", reply::BAD_RECIPIENT_SYNTAX),
            (b"RCPT TO:<a@x.test> NOTIFY=NEVER", reply::PARAM_UNSUPPORTED),
            (b"RCPT TO:<>", reply::BAD_RECIPIENT_SYNTAX),
            (b"BDAT -1", reply::SYNTAX_BDAT),
            (b"BDAT 99999999999999999999", reply::SYNTAX_BDAT),
            (b"BDAT 1 FIRST", reply::SYNTAX_BDAT),
            (b"DATA now", reply::SYNTAX_PARAMS),
            (b"EHLO \xff", reply::SYNTAX_PARAMS),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Err(*want), "{}", String::from_utf8_lossy(line));
        }
        let long_local = format!("RCPT TO:<{}@x.test>", "a".repeat(65));
        assert_eq!(
            parse(long_local.as_bytes()),
            Err(reply::BAD_RECIPIENT_SYNTAX)
        );
    }
}
