//! PROXY protocol (versions 1 and 2) header parsing for inbound connections.
//!
//! When the edge runs behind a TCP load balancer, typically a Kubernetes
//! `Service` of type `LoadBalancer` (a cloud network load balancer, or
//! MetalLB in front of HAProxy), the peer address on the accepted socket is
//! the balancer or a node, not the SMTP client. Anti-abuse checks (DNSBL
//! lookups, SPF, rate limits) and the `Received:` trace header all need the
//! real client IP. A balancer configured for the
//! [PROXY protocol](https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt)
//! sends a short header with the original source and destination addresses
//! before the first byte of the proxied stream. This module decodes that
//! header so the real client IP survives the hop.
//!
//! The parser is sans-IO. It reads no sockets, keeps no state and does not
//! allocate on the success path. Pass [`parse`] everything received so far:
//!
//! * [`Parsed::Incomplete`]: read more bytes and call again with the longer
//!   buffer;
//! * [`Parsed::Done`]: the first `consumed` bytes were the header. Everything
//!   after them is the client's SMTP traffic and must be passed to the session;
//! * `Err(_)`: the connection does not start with a valid header and should
//!   be closed.
//!
//! It answers as soon as the bytes allow. A stream that cannot be a PROXY
//! header (for example a client that sends `EHLO` directly) is rejected at
//! the first byte that differs from both signatures.
//!
//! Operational notes:
//!
//! * The header can be forged by anyone who can connect. Expect it only on
//!   listeners that are reachable solely through the load balancer, and then
//!   require it on every connection.
//! * With SMTP the server speaks first. The `220` greeting must not be sent
//!   until the header has been parsed. Apply a short read timeout while
//!   waiting for it; the spec suggests at least 3 seconds to cover a TCP
//!   retransmit.
//! * Version 2 TLVs (including `PP2_TYPE_CRC32C`) are skipped without being
//!   checked, and the total header size is capped at [`MAX_HEADER_LEN`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedAddrs {
    /// A proxied TCP connection over IPv4 or IPv6: the original source and destination.
    Tcp {
        /// The original client (the peer that connected to the load balancer).
        source: SocketAddr,
        /// The address the client connected to (the load balancer's listener).
        destination: SocketAddr,
    },
    /// `PROXY UNKNOWN` (v1) or a v2 LOCAL command / unsupported family: keep the socket's own addresses.
    Unknown,
}

/// Outcome of feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet; call again with more.
    Incomplete,
    /// A complete header of `consumed` bytes; bytes after it belong to the SMTP session.
    Done {
        /// The addresses carried by the header.
        addrs: ProxiedAddrs,
        /// Length of the header in bytes, counted from the start of the buffer.
        consumed: usize,
    },
}

/// Why a buffer is not a valid PROXY protocol header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes match neither the v1 `PROXY ` prefix nor the v2 signature.
    #[error("connection does not start with a PROXY protocol header")]
    NotProxyProtocol,
    /// The text (version 1) header is malformed; the string says how.
    #[error("malformed PROXY protocol v1 header: {0}")]
    BadV1(String),
    /// The binary (version 2) header is malformed; the string says how.
    #[error("malformed PROXY protocol v2 header: {0}")]
    BadV2(String),
    /// The header is longer than allowed: more than 107 bytes for v1, or
    /// more than [`MAX_HEADER_LEN`] for v2.
    #[error("PROXY protocol header exceeds the maximum allowed length")]
    TooLong,
}

/// The most bytes a header may take before [`parse`] gives up with
/// [`ProxyError::TooLong`].
///
/// A v1 line is limited to 107 bytes including the CRLF, as the spec says.
/// A v2 header is 16 fixed bytes followed by a block whose length field can
/// reach 65535. This parser accepts at most 4096 bytes of addresses and TLVs,
/// which leaves room for the 216-byte UNIX address block and the TLVs that
/// real load balancers send. An attacker therefore cannot make the edge
/// buffer 64 KiB before the session starts.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_BLOCK_LEN;

/// The v1 header starts with these bytes.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included (spec section 2.1).
const V1_MAX_LEN: usize = 107;
/// The v2 header starts with these 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 16-bit length.
const V2_FIXED_LEN: usize = 16;
/// Cap on the v2 length field (address block plus TLVs).
const V2_MAX_BLOCK_LEN: usize = 4096;

/// Parses a PROXY header from the start of `buf`.
///
/// `buf` must hold the bytes read from the connection so far, starting at its
/// first byte. The function is pure, and calling it again with a longer buffer
/// is the intended way to resume after [`Parsed::Incomplete`]. Once it returns
/// `Done` or an error, longer buffers with the same prefix give the same answer.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if starts_like(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v1(buf)
    } else if starts_like(buf, V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v2(buf)
    } else {
        Err(ProxyError::NotProxyProtocol)
    }
}

/// True if `buf` and `signature` agree on their common length.
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    buf.iter().zip(signature).all(|(a, b)| a == b)
}

fn bad_v1(reason: impl Into<String>) -> ProxyError {
    ProxyError::BadV1(reason.into())
}

fn bad_v2(reason: impl Into<String>) -> ProxyError {
    ProxyError::BadV2(reason.into())
}

/// Version 1: `buf` starts with `"PROXY "`.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    for (i, &byte) in buf
        .iter()
        .enumerate()
        .take(V1_MAX_LEN)
        .skip(V1_PREFIX.len())
    {
        match byte {
            b'\r' => {
                let consumed = i + 2;
                if consumed > V1_MAX_LEN {
                    return Err(ProxyError::TooLong);
                }
                return match buf.get(i + 1) {
                    None => Ok(Parsed::Incomplete),
                    Some(b'\n') => {
                        let line = buf.get(V1_PREFIX.len()..i).unwrap_or_default();
                        let addrs = parse_v1_line(line)?;
                        Ok(Parsed::Done { addrs, consumed })
                    }
                    Some(_) => Err(bad_v1("carriage return not followed by line feed")),
                };
            }
            b'\n' => return Err(bad_v1("line ends in a bare LF; CRLF is required")),
            b' '..=b'~' => {}
            other => {
                return Err(bad_v1(format!(
                    "byte 0x{other:02x} at offset {i} is not printable ASCII"
                )))
            }
        }
    }
    if buf.len() >= V1_MAX_LEN {
        Err(ProxyError::TooLong)
    } else {
        Ok(Parsed::Incomplete)
    }
}

/// The part of a v1 line between `"PROXY "` and the CRLF. It contains only
/// printable ASCII.
fn parse_v1_line(line: &[u8]) -> Result<ProxiedAddrs, ProxyError> {
    let line = std::str::from_utf8(line).map_err(|_| bad_v1("header line is not ASCII"))?;
    let (protocol, rest) = match line.split_once(' ') {
        Some((protocol, rest)) => (protocol, Some(rest)),
        None => (line, None),
    };
    match protocol {
        // The spec says the receiver must ignore whatever follows UNKNOWN.
        "UNKNOWN" => Ok(ProxiedAddrs::Unknown),
        "TCP4" => parse_v1_tcp(rest, false),
        "TCP6" => parse_v1_tcp(rest, true),
        "" => Err(bad_v1(
            "empty protocol field (fields must be separated by exactly one space)",
        )),
        other => Err(bad_v1(format!(
            "unsupported protocol {other:?}; expected TCP4, TCP6 or UNKNOWN"
        ))),
    }
}

/// The four fields after `TCP4`/`TCP6`: source address, destination
/// address, source port and destination port.
fn parse_v1_tcp(rest: Option<&str>, ipv6: bool) -> Result<ProxiedAddrs, ProxyError> {
    let protocol = if ipv6 { "TCP6" } else { "TCP4" };
    let rest = rest.ok_or_else(|| bad_v1(format!("{protocol} line has no addresses or ports")))?;
    let mut fields = rest.split(' ');
    let source_ip = parse_v1_ip(next_v1_field(&mut fields, "source address")?, ipv6)?;
    let destination_ip = parse_v1_ip(next_v1_field(&mut fields, "destination address")?, ipv6)?;
    let source_port = parse_v1_port(next_v1_field(&mut fields, "source port")?)?;
    let destination_port = parse_v1_port(next_v1_field(&mut fields, "destination port")?)?;
    if fields.next().is_some() {
        return Err(bad_v1(
            "unexpected trailing space or extra field after the destination port",
        ));
    }
    Ok(ProxiedAddrs::Tcp {
        source: SocketAddr::new(source_ip, source_port),
        destination: SocketAddr::new(destination_ip, destination_port),
    })
}

fn next_v1_field<'a>(
    fields: &mut std::str::Split<'a, char>,
    what: &str,
) -> Result<&'a str, ProxyError> {
    match fields.next() {
        None => Err(bad_v1(format!("missing {what}"))),
        Some("") => Err(bad_v1(format!(
            "empty {what} field (fields must be separated by exactly one space)"
        ))),
        Some(field) => Ok(field),
    }
}

/// Parses an address of the family announced by the line. A TCP4 address
/// may not have leading zeros, and IPv6 zone identifiers are not accepted.
fn parse_v1_ip(text: &str, ipv6: bool) -> Result<IpAddr, ProxyError> {
    let v4 = text.parse::<Ipv4Addr>();
    let v6 = text.parse::<Ipv6Addr>();
    match (ipv6, v4, v6) {
        (false, Ok(addr), _) => Ok(IpAddr::V4(addr)),
        (true, _, Ok(addr)) => Ok(IpAddr::V6(addr)),
        (false, Err(_), Ok(_)) => Err(bad_v1(format!("TCP4 line carries IPv6 address {text:?}"))),
        (true, Ok(_), Err(_)) => Err(bad_v1(format!("TCP6 line carries IPv4 address {text:?}"))),
        (false, Err(_), Err(_)) => Err(bad_v1(format!("invalid IPv4 address {text:?}"))),
        (true, Err(_), Err(_)) => Err(bad_v1(format!("invalid IPv6 address {text:?}"))),
    }
}

/// Parses a decimal port in 0..=65535 with no sign and no leading zeros.
fn parse_v1_port(text: &str) -> Result<u16, ProxyError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only {
        return Err(bad_v1(format!(
            "invalid port {text:?}: expected decimal digits only"
        )));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(bad_v1(format!(
            "invalid port {text:?}: leading zeros are not allowed"
        )));
    }
    text.parse::<u16>()
        .map_err(|_| bad_v1(format!("invalid port {text:?}: out of range 0-65535")))
}

/// Version 2: `buf` starts with the full 12-byte signature.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    let version = version_command >> 4;
    if version != 2 {
        return Err(bad_v2(format!(
            "unsupported version {version} (only 2 is defined)"
        )));
    }
    let is_local = match version_command & 0x0f {
        0x0 => true,
        0x1 => false,
        other => {
            return Err(bad_v2(format!(
                "unknown command 0x{other:x} (expected LOCAL or PROXY)"
            )))
        }
    };

    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // A LOCAL header's family is ignored. For PROXY, only the combinations
    // listed in the spec are valid. Each one needs a minimum address block.
    let min_block_len = match (is_local, family) {
        (true, _) | (false, 0x00) => 0,
        (false, 0x11 | 0x12) => 12,
        (false, 0x21 | 0x22) => 36,
        (false, 0x31 | 0x32) => 216,
        (false, other) => {
            return Err(bad_v2(format!(
                "unknown address family/transport byte 0x{other:02x}"
            )))
        }
    };

    let (Some(&len_hi), Some(&len_lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let block_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if block_len > V2_MAX_BLOCK_LEN {
        return Err(ProxyError::TooLong);
    }
    if block_len < min_block_len {
        return Err(bad_v2(format!(
            "length {block_len} is too short for family 0x{family:02x}, which needs {min_block_len} bytes of addresses"
        )));
    }
    let consumed = V2_FIXED_LEN + block_len;
    let Some(block) = buf.get(V2_FIXED_LEN..consumed) else {
        return Ok(Parsed::Incomplete);
    };

    let addrs = match (is_local, family) {
        (false, 0x11) => {
            let src = Ipv4Addr::from(take::<4>(block, 0)?);
            let dst = Ipv4Addr::from(take::<4>(block, 4)?);
            let sport = u16::from_be_bytes(take::<2>(block, 8)?);
            let dport = u16::from_be_bytes(take::<2>(block, 10)?);
            ProxiedAddrs::Tcp {
                source: SocketAddr::new(IpAddr::V4(src), sport),
                destination: SocketAddr::new(IpAddr::V4(dst), dport),
            }
        }
        (false, 0x21) => {
            let src = Ipv6Addr::from(take::<16>(block, 0)?);
            let dst = Ipv6Addr::from(take::<16>(block, 16)?);
            let sport = u16::from_be_bytes(take::<2>(block, 32)?);
            let dport = u16::from_be_bytes(take::<2>(block, 34)?);
            ProxiedAddrs::Tcp {
                source: SocketAddr::new(IpAddr::V6(src), sport),
                destination: SocketAddr::new(IpAddr::V6(dst), dport),
            }
        }
        // LOCAL, AF_UNSPEC, AF_UNIX and datagram transports carry nothing
        // the edge can use. The whole block, TLVs included, is still consumed.
        _ => ProxiedAddrs::Unknown,
    };
    Ok(Parsed::Done { addrs, consumed })
}

/// Copies `N` bytes at `offset` out of the v2 address block.
fn take<const N: usize>(block: &[u8], offset: usize) -> Result<[u8; N], ProxyError> {
    block
        .get(offset..offset.saturating_add(N))
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| bad_v2("address block is shorter than its family requires"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(addrs: ProxiedAddrs, consumed: usize) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Done { addrs, consumed })
    }

    fn tcp(source: &str, destination: &str) -> ProxiedAddrs {
        ProxiedAddrs::Tcp {
            source: source.parse().expect("test source address"),
            destination: destination.parse().expect("test destination address"),
        }
    }

    fn is_bad_v1(result: Result<Parsed, ProxyError>) -> bool {
        matches!(result, Err(ProxyError::BadV1(_)))
    }

    fn is_bad_v2(result: Result<Parsed, ProxyError>) -> bool {
        matches!(result, Err(ProxyError::BadV2(_)))
    }

    /// Builds a v2 header: signature, version/command, family, length, block.
    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let len = u16::try_from(block.len()).expect("test block fits in u16");
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn v2_ipv4_block() -> Vec<u8> {
        let mut block = vec![192, 0, 2, 10, 198, 51, 100, 1];
        block.extend_from_slice(&54321u16.to_be_bytes());
        block.extend_from_slice(&25u16.to_be_bytes());
        block
    }

    fn v2_ipv6_block() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::1".parse().expect("test address");
        let dst: Ipv6Addr = "2001:db8::25".parse().expect("test address");
        let mut block = src.octets().to_vec();
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&40000u16.to_be_bytes());
        block.extend_from_slice(&587u16.to_be_bytes());
        block
    }

    /// PP2_TYPE_AUTHORITY, a NOOP and an AWS-style VPC endpoint TLV.
    fn tlvs() -> Vec<u8> {
        let mut out = vec![0x02, 0x00, 0x0b];
        out.extend_from_slice(b"mx.test.org");
        out.extend_from_slice(&[0x04, 0x00, 0x00]);
        out.extend_from_slice(&[0xea, 0x00, 0x05, 0x01]);
        out.extend_from_slice(b"vpce");
        out
    }

    // ---- version 1 ----

    #[test]
    fn v1_tcp4() {
        let line = b"PROXY TCP4 192.0.2.10 198.51.100.1 54321 25\r\n";
        assert_eq!(
            parse(line),
            done(tcp("192.0.2.10:54321", "198.51.100.1:25"), line.len())
        );
    }

    #[test]
    fn v1_tcp6() {
        let line = b"PROXY TCP6 2001:db8::1 2001:DB8::25 40000 587\r\n";
        assert_eq!(
            parse(line),
            done(tcp("[2001:db8::1]:40000", "[2001:db8::25]:587"), line.len())
        );
    }

    #[test]
    fn v1_tcp6_v4_mapped_as_printed_by_inet_ntop() {
        let line = b"PROXY TCP6 ::ffff:192.0.2.10 ::1 1 0\r\n";
        assert_eq!(
            parse(line),
            done(tcp("[::ffff:192.0.2.10]:1", "[::1]:0"), line.len())
        );
    }

    #[test]
    fn v1_port_bounds() {
        let line = b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n";
        assert_eq!(
            parse(line),
            done(tcp("0.0.0.0:0", "255.255.255.255:65535"), line.len())
        );
    }

    #[test]
    fn v1_unknown_short_and_long_forms() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), done(ProxiedAddrs::Unknown, 15));
        let long = b"PROXY UNKNOWN whatever the sender put here 1 2\r\n";
        assert_eq!(parse(long), done(ProxiedAddrs::Unknown, long.len()));
    }

    #[test]
    fn v1_longest_allowed_line_is_107_bytes() {
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(line.len(), 107);
        assert_eq!(parse(line.as_bytes()), done(ProxiedAddrs::Unknown, 107));
        let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        assert!(matches!(
            parse(tcp6.as_bytes()),
            Ok(Parsed::Done { consumed: 104, .. })
        ));
    }

    #[test]
    fn v1_byte_by_byte_is_incomplete_until_crlf() {
        let line = b"PROXY TCP4 192.0.2.10 198.51.100.1 54321 25\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Ok(Parsed::Incomplete), "prefix {end}");
        }
        assert_eq!(
            parse(line),
            done(tcp("192.0.2.10:54321", "198.51.100.1:25"), line.len())
        );
    }

    #[test]
    fn v1_trailing_smtp_bytes_are_not_consumed() {
        let header = b"PROXY TCP4 192.0.2.10 198.51.100.1 54321 25\r\n";
        let mut buf = header.to_vec();
        buf.extend_from_slice(b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n");
        assert_eq!(
            parse(&buf),
            done(tcp("192.0.2.10:54321", "198.51.100.1:25"), header.len())
        );
        let unknown = b"PROXY UNKNOWN\r\nQUIT\r\n";
        assert_eq!(parse(unknown), done(ProxiedAddrs::Unknown, 15));
    }

    #[test]
    fn v1_bad_ports() {
        for line in [
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 +80 25\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 -1 25\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 080 25\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 00 25\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 8x 25\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 0x19\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 1000000000000000000000\r\n",
        ] {
            assert!(is_bad_v1(parse(line.as_bytes())), "{line:?}");
        }
    }

    #[test]
    fn v1_address_must_match_family() {
        let r = parse(b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n");
        assert_eq!(
            r,
            Err(ProxyError::BadV1(
                "TCP4 line carries IPv6 address \"2001:db8::1\"".into()
            ))
        );
        assert!(is_bad_v1(parse(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n")));
        assert!(is_bad_v1(parse(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n")));
        assert!(is_bad_v1(parse(b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n")));
    }

    #[test]
    fn v1_invalid_addresses() {
        for line in [
            "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
            "PROXY TCP4 256.0.0.1 5.6.7.8 1 2\r\n",
            "PROXY TCP4 example.org 5.6.7.8 1 2\r\n",
            "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            "PROXY TCP6 1::2::3 ::1 1 2\r\n",
        ] {
            assert!(is_bad_v1(parse(line.as_bytes())), "{line:?}");
        }
    }

    #[test]
    fn v1_requires_crlf() {
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nEHLO"),
            Err(ProxyError::BadV1(
                "line ends in a bare LF; CRLF is required".into()
            ))
        );
        assert!(is_bad_v1(parse(b"PROXY UNKNOWN\n")));
        assert!(is_bad_v1(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX")));
        assert!(is_bad_v1(parse(b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n")));
        // A CR at the very end may still be followed by LF.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
            Ok(Parsed::Incomplete)
        );
    }

    #[test]
    fn v1_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 1, b'a');
        assert_eq!(parse(&line), Ok(Parsed::Incomplete));
        line.push(b'a');
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), Err(ProxyError::TooLong));

        // A CR at offset 106 means the line would be 108 bytes.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 1, b'a');
        line.push(b'\r');
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_single_spaces_only() {
        for line in [
            "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
            "PROXY  UNKNOWN\r\n",
        ] {
            assert!(is_bad_v1(parse(line.as_bytes())), "{line:?}");
        }
    }

    #[test]
    fn v1_wrong_field_count_or_protocol() {
        for line in [
            "PROXY TCP4\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY \r\n",
        ] {
            assert!(is_bad_v1(parse(line.as_bytes())), "{line:?}");
        }
    }

    #[test]
    fn v1_rejects_control_bytes_early() {
        assert!(is_bad_v1(parse(b"PROXY TCP4 1.2.3.4\x00")));
        assert!(is_bad_v1(parse(b"PROXY UNKNOWN \xff")));
    }

    // ---- version 2 ----

    #[test]
    fn v2_ipv4() {
        let header = v2(0x21, 0x11, &v2_ipv4_block());
        assert_eq!(header.len(), 28);
        assert_eq!(
            parse(&header),
            done(tcp("192.0.2.10:54321", "198.51.100.1:25"), 28)
        );
    }

    #[test]
    fn v2_ipv4_with_tlvs() {
        let mut block = v2_ipv4_block();
        block.extend_from_slice(&tlvs());
        let header = v2(0x21, 0x11, &block);
        assert_eq!(
            parse(&header),
            done(tcp("192.0.2.10:54321", "198.51.100.1:25"), header.len())
        );
    }

    #[test]
    fn v2_ipv6() {
        let header = v2(0x21, 0x21, &v2_ipv6_block());
        assert_eq!(header.len(), 52);
        assert_eq!(
            parse(&header),
            done(tcp("[2001:db8::1]:40000", "[2001:db8::25]:587"), 52)
        );
    }

    #[test]
    fn v2_ipv6_with_tlvs() {
        let mut block = v2_ipv6_block();
        block.extend_from_slice(&tlvs());
        let header = v2(0x21, 0x21, &block);
        assert_eq!(
            parse(&header),
            done(
                tcp("[2001:db8::1]:40000", "[2001:db8::25]:587"),
                header.len()
            )
        );
    }

    #[test]
    fn v2_trailing_smtp_bytes_are_not_consumed() {
        let header = v2(0x21, 0x11, &v2_ipv4_block());
        let mut buf = header.clone();
        buf.extend_from_slice(b"EHLO client.example\r\n");
        assert_eq!(
            parse(&buf),
            done(tcp("192.0.2.10:54321", "198.51.100.1:25"), header.len())
        );
    }

    #[test]
    fn v2_local_is_unknown() {
        assert_eq!(parse(&v2(0x20, 0x00, &[])), done(ProxiedAddrs::Unknown, 16));
        // LOCAL ignores the family and any address block that came with it.
        let header = v2(0x20, 0x11, &v2_ipv4_block());
        assert_eq!(parse(&header), done(ProxiedAddrs::Unknown, 28));
        let header = v2(0x20, 0xff, &[1, 2, 3]);
        assert_eq!(parse(&header), done(ProxiedAddrs::Unknown, 19));
    }

    #[test]
    fn v2_unsupported_families_are_unknown_but_consumed() {
        assert_eq!(parse(&v2(0x21, 0x00, &[])), done(ProxiedAddrs::Unknown, 16));
        assert_eq!(
            parse(&v2(0x21, 0x00, &tlvs())),
            done(ProxiedAddrs::Unknown, 16 + tlvs().len())
        );
        let dgram4 = v2(0x21, 0x12, &v2_ipv4_block());
        assert_eq!(parse(&dgram4), done(ProxiedAddrs::Unknown, 28));
        let dgram6 = v2(0x21, 0x22, &v2_ipv6_block());
        assert_eq!(parse(&dgram6), done(ProxiedAddrs::Unknown, 52));
        let mut unix = vec![b'/'; 216];
        unix.extend_from_slice(&tlvs());
        let unix_stream = v2(0x21, 0x31, &unix);
        assert_eq!(
            parse(&unix_stream),
            done(ProxiedAddrs::Unknown, unix_stream.len())
        );
        let unix_dgram = v2(0x21, 0x32, &unix);
        assert_eq!(
            parse(&unix_dgram),
            done(ProxiedAddrs::Unknown, unix_dgram.len())
        );
    }

    #[test]
    fn v2_truncated_is_incomplete() {
        let mut block = v2_ipv6_block();
        block.extend_from_slice(&tlvs());
        let header = v2(0x21, 0x21, &block);
        for end in 0..header.len() {
            assert_eq!(
                parse(&header[..end]),
                Ok(Parsed::Incomplete),
                "prefix {end}"
            );
        }
        assert!(matches!(parse(&header), Ok(Parsed::Done { .. })));
    }

    #[test]
    fn v2_bad_version() {
        for version_command in [0x11, 0x01, 0x31, 0xf1] {
            let header = v2(version_command, 0x11, &v2_ipv4_block());
            // Rejected as soon as the version byte arrives.
            assert!(is_bad_v2(parse(&header[..13])), "{version_command:#x}");
            assert!(is_bad_v2(parse(&header)), "{version_command:#x}");
        }
    }

    #[test]
    fn v2_bad_command_and_family() {
        assert!(is_bad_v2(parse(&v2(0x22, 0x11, &v2_ipv4_block())[..13])));
        for family in [0x01, 0x10, 0x13, 0x23, 0x40, 0xff] {
            let header = v2(0x21, family, &v2_ipv6_block());
            assert!(is_bad_v2(parse(&header[..14])), "{family:#x}");
        }
    }

    #[test]
    fn v2_address_block_too_short_for_family() {
        let short4 = v2(0x21, 0x11, &v2_ipv4_block()[..11]);
        // Known as soon as the length field is complete.
        assert!(is_bad_v2(parse(&short4[..16])));
        assert!(is_bad_v2(parse(&short4)));
        let short6 = v2(0x21, 0x21, &v2_ipv4_block());
        assert!(is_bad_v2(parse(&short6)));
        let short_unix = v2(0x21, 0x31, &[0; 215]);
        assert!(is_bad_v2(parse(&short_unix)));
    }

    #[test]
    fn v2_length_cap() {
        let max = v2(0x21, 0x00, &vec![0; V2_MAX_BLOCK_LEN]);
        assert_eq!(max.len(), MAX_HEADER_LEN);
        assert_eq!(parse(&max), done(ProxiedAddrs::Unknown, MAX_HEADER_LEN));
        let mut over = v2(0x21, 0x11, &[]);
        let len = u16::try_from(V2_MAX_BLOCK_LEN + 1).expect("fits");
        over[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&over), Err(ProxyError::TooLong));
        over[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&over), Err(ProxyError::TooLong));
    }

    // ---- detection ----

    #[test]
    fn plain_smtp_is_rejected_at_first_byte() {
        assert_eq!(parse(b"EHLO x\r\n"), Err(ProxyError::NotProxyProtocol));
        assert_eq!(parse(b"E"), Err(ProxyError::NotProxyProtocol));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxyProtocol));
    }

    #[test]
    fn mismatch_is_reported_without_waiting() {
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"P"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::NotProxyProtocol));
        assert_eq!(parse(b"PROXYX"), Err(ProxyError::NotProxyProtocol));
        assert_eq!(parse(b"\r\n"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUI"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyError::NotProxyProtocol));
        assert_eq!(parse(b"\r\nQUIT"), Err(ProxyError::NotProxyProtocol));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIT\r"),
            Err(ProxyError::NotProxyProtocol)
        );
    }

    #[test]
    fn errors_have_human_messages() {
        assert_eq!(
            ProxyError::NotProxyProtocol.to_string(),
            "connection does not start with a PROXY protocol header"
        );
        assert_eq!(
            ProxyError::BadV1("x".into()).to_string(),
            "malformed PROXY protocol v1 header: x"
        );
        assert_eq!(
            ProxyError::BadV2("y".into()).to_string(),
            "malformed PROXY protocol v2 header: y"
        );
        assert_eq!(
            ProxyError::TooLong.to_string(),
            "PROXY protocol header exceeds the maximum allowed length"
        );
        let Err(err) = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n") else {
            panic!("expected an error");
        };
        assert_eq!(
            err.to_string(),
            "malformed PROXY protocol v1 header: invalid port \"65536\": out of range 0-65535"
        );
    }

    // ---- robustness ----

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    /// Checks the properties every answer must have, and that every prefix
    /// of `buf` is either still incomplete or already gives the same answer.
    fn check(buf: &[u8]) {
        let full = parse(buf);
        if let Ok(Parsed::Done { consumed, .. }) = full {
            assert!(consumed <= buf.len(), "{buf:?}");
            assert!(consumed <= MAX_HEADER_LEN, "{buf:?}");
        }
        for end in 0..buf.len() {
            let partial = parse(&buf[..end]);
            assert!(
                partial == Ok(Parsed::Incomplete) || partial == full,
                "prefix {end} of {buf:?}: {partial:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn random_input_never_panics() {
        const V1_ALPHABET: &[u8] = b"PROXYTCP46UNKOW0123456789abcdefABCDEF:.. \r\n+-%\x00\xff";
        let valid: [Vec<u8>; 4] = [
            b"PROXY TCP4 192.0.2.10 198.51.100.1 54321 25\r\nEHLO".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 2\r\n".to_vec(),
            {
                let mut b = v2_ipv4_block();
                b.extend_from_slice(&tlvs());
                v2(0x21, 0x11, &b)
            },
            v2(0x21, 0x21, &v2_ipv6_block()),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut done_count = 0;
        for round in 0..6000 {
            let len = rng.below(130);
            let buf: Vec<u8> = match round % 4 {
                // Arbitrary bytes.
                0 => (0..len).map(|_| rng.byte()).collect(),
                // A v1 prefix followed by bytes from the v1 alphabet.
                1 => {
                    let mut buf = V1_PREFIX.to_vec();
                    buf.extend((0..len).map(|_| V1_ALPHABET[rng.below(V1_ALPHABET.len())]));
                    buf
                }
                // The v2 signature, a plausible version byte, then anything.
                2 => {
                    let mut buf = V2_SIGNATURE.to_vec();
                    buf.push(0x20 | (rng.byte() & 0x01));
                    buf.push([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32][rng.below(7)]);
                    buf.push(0);
                    buf.push(rng.byte() & 0x7f);
                    buf.extend((0..len).map(|_| rng.byte()));
                    buf
                }
                // A valid header with a few bytes mutated, maybe truncated.
                _ => {
                    let mut buf = valid[rng.below(valid.len())].clone();
                    for _ in 0..=rng.below(3) {
                        let at = rng.below(buf.len());
                        buf[at] = rng.byte();
                    }
                    let keep = buf.len() - rng.below(4);
                    buf.truncate(keep);
                    buf
                }
            };
            if matches!(parse(&buf), Ok(Parsed::Done { .. })) {
                done_count += 1;
            }
            check(&buf);
        }
        // The generators must reach the success paths too, not only errors.
        assert!(done_count > 50, "only {done_count} inputs parsed");
    }
}
