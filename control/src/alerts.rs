//! Delivering alerts: a signed JSON webhook and an email through the cluster's SMTP path.
//!
//! Only the leader delivers (see `server`); every attempt's outcome goes through the log
//! (`Command::AlertDelivery`), so a new leader continues where the old one stopped and
//! `moat admin alerts list` shows each delivery's state, attempts and last error.
//!
//! Webhook: `POST` of the alert as JSON to an `http://` or `https://` URL (checked against the
//! system's trusted CAs) with `X-Moat-Timestamp: <unix seconds>` and `X-Moat-Signature:
//! sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`; any 2xx is delivered. A receiver
//! recomputes the HMAC and rejects old timestamps to stop replays.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use moat_shared::smtp::{self, ReplyReader};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::state::Alert;

/// How long one delivery attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The alert as the webhook and the email carry it.
pub fn json(a: &Alert) -> String {
    serde_json::json!({
        "id": a.id,
        "tenant": a.tenant.as_str(),
        "severity": a.severity,
        "title": a.title,
        "detail": a.detail,
        "at-ms": a.at_ms,
    })
    .to_string()
}

/// `sha256=<hex>` of HMAC-SHA256(secret, `timestamp.body`).
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Where a webhook goes: `http://` or `https://`, a host (name, IPv4, or `[IPv6]`), an
/// optional port and a path (with any query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    tls: bool,
    /// As written in the URL, for the `Host` header.
    authority: String,
    /// Without brackets, for connecting and for the TLS server name.
    host: String,
    port: u16,
    path: String,
}

impl WebhookUrl {
    /// Parses and checks a webhook URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("webhook `{url}`: {why}");
        let (tls, rest) = if let Some(r) = strip_prefix_ignore_case(url, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ignore_case(url, "http://") {
            (false, r)
        } else {
            return Err(bad("must be an http:// or https:// URL"));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; the signature authenticates the sender",
            ));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("spaces and control characters must be percent-encoded"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
                h.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad("not an IPv6 address in brackets"))?;
                (h, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
        };
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        let bracketed = authority.starts_with('[');
        if host.is_empty() || !(bracketed || host.chars().all(name_ok)) {
            return Err(bad("no valid host"));
        }
        Ok(Self {
            tls,
            authority: authority.to_owned(),
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// The TLS client for `https://` webhooks: the system's trusted CAs (`SSL_CERT_FILE` or
/// `SSL_CERT_DIR` replace them, as for OpenSSL), TLS 1.2 and 1.3. Loaded at the first https
/// delivery and kept; a failure to find any CA is retried at the next delivery.
fn https_client() -> Result<Arc<ClientConfig>, String> {
    static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(Arc::clone(c));
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no trusted CA certificates for https webhooks (install ca-certificates or set \
             SSL_CERT_FILE){}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        ));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::clone(CLIENT.get_or_init(|| Arc::new(config))))
}

/// POSTs the alert to an `http://` or `https://` URL; a 2xx answer is delivered.
pub async fn webhook(url: &str, secret: &str, a: &Alert, now_s: i64) -> Result<(), String> {
    let url = WebhookUrl::parse(url)?;
    let body = json(a);
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Moat-Timestamp: {now_s}\r\nX-Moat-Signature: {}\r\n\
         User-Agent: moat-control\r\nConnection: close\r\n\r\n{body}",
        url.path,
        url.authority,
        body.len(),
        signature(secret, now_s, &body)
    );
    let attempt = async {
        let target = format!("{}:{}", url.authority, url.port);
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        if !url.tls {
            return post(tcp, &request).await;
        }
        let name =
            ServerName::try_from(url.host.clone()).map_err(|e| format!("{}: {e}", url.host))?;
        let tls = TlsConnector::from(https_client()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {target}: {e}"))?;
        post(tls, &request).await
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{}: timed out", url.authority))?
}

/// Sends `request` and reads the status line of the answer.
async fn post<S: AsyncRead + AsyncWrite + Unpin>(io: S, request: &str) -> Result<(), String> {
    let mut io = BufReader::new(io);
    io.get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    io.get_mut()
        .flush()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut status = Vec::new();
    (&mut io)
        .take(1024)
        .read_until(b'\n', &mut status)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let status = String::from_utf8_lossy(&status);
    let status = status.trim_end();
    match status.split_whitespace().nth(1) {
        Some(code) if status.starts_with("HTTP/") && code.starts_with('2') => Ok(()),
        _ if status.is_empty() => Err("HTTP: no answer".into()),
        _ => Err(format!("HTTP: {status}")),
    }
}

/// Sends the alert by SMTP to `to` through `smtp` (`host:port`), envelope sender `<>`.
pub async fn email(smtp: &str, from: &str, to: &str, a: &Alert, date: &str) -> Result<(), String> {
    let attempt = async {
        let mut io = TcpStream::connect(smtp)
            .await
            .map_err(|e| format!("connect {smtp}: {e}"))?;
        let mut replies = ReplyReader::new();
        expect(&mut io, &mut replies, "220").await?;
        let message = format!(
            "From: {from}\r\nTo: <{to}>\r\nSubject: [{}] {}\r\nDate: {date}\r\n\
             Message-ID: <alert-{}-{}@moat>\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Auto-Submitted: auto-generated\r\n\r\n{}\r\n\r\nTenant: {}\r\nAlert id: {}\r\n\r\n{}\r\n",
            a.severity,
            a.title,
            a.id,
            a.at_ms,
            a.detail,
            a.tenant,
            a.id,
            json(a)
        );
        for (line, want) in [
            ("EHLO moat-control".to_owned(), "250"),
            ("MAIL FROM:<>".to_owned(), "250"),
            (format!("RCPT TO:<{to}>"), "25"),
            ("DATA".to_owned(), "354"),
        ] {
            io.write_all(format!("{line}\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            expect(&mut io, &mut replies, want).await?;
        }
        io.write_all(&smtp::stuff(message.as_bytes()))
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut io, &mut replies, "250").await?;
        let _ = io.write_all(b"QUIT\r\n").await;
        Ok(())
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{smtp}: timed out"))?
}

/// Reads one SMTP reply; fails unless its code starts with `want`.
async fn expect(io: &mut TcpStream, replies: &mut ReplyReader, want: &str) -> Result<(), String> {
    let mut chunk = [0; 1024];
    let reply = loop {
        if let Some(r) = replies.next_reply().map_err(|e| format!("SMTP: {e}"))? {
            break r;
        }
        let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break replies
                .finish()
                .map_err(|e| format!("SMTP: {e}"))?
                .ok_or("connection closed")?;
        }
        replies.feed(&chunk[..n]);
    };
    let last = reply.last_line();
    if last.starts_with(want) {
        Ok(())
    } else {
        Err(format!("SMTP: {}", last.trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_parsed_or_refused_with_a_reason() {
        let u = WebhookUrl::parse("https://Hooks.Example.net/moat?team=ops#x").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "hooks.example.net", 443, "/moat?team=ops")
        );
        assert_eq!(u.authority, "Hooks.Example.net");
        let u = WebhookUrl::parse("HTTP://10.0.0.5:8080").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/"));
        let u = WebhookUrl::parse("https://[2001:db8::1]:8443/a").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 8443));
        assert_eq!(u.authority, "[2001:db8::1]:8443");
        let u = WebhookUrl::parse("http://h.test?x=1").unwrap();
        assert_eq!(u.path, "/?x=1");
        for (url, why) in [
            ("ftp://h.test/", "http:// or https://"),
            ("hooks.test/a", "http:// or https://"),
            ("https:///path", "no valid host"),
            ("https://h.test:0/", "port"),
            ("https://h.test:99999/", "port"),
            ("https://h.test:x/", "port"),
            ("https://user:pw@h.test/", "credentials"),
            ("https://h.test/a b", "percent-encoded"),
            ("https://h.test/a\r\nX-Evil: 1", "percent-encoded"),
            ("https://h te.st/", "no valid host"),
            ("http://::1/", "no valid host"),
            ("https://[::1/", "unclosed"),
            ("https://[h.test]/", "IPv6"),
        ] {
            let e = WebhookUrl::parse(url).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    /// An https receiver whose certificate no trusted CA issued is refused before anything is
    /// sent: the certificate is checked, not just the encryption.
    #[tokio::test]
    async fn https_webhook_refuses_an_untrusted_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}/hook", l.local_addr().unwrap().port());
        let accept = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await;
            tls.is_ok()
        });
        let alert = test_alert();
        let e = webhook(&url, "s", &alert, 1).await.unwrap_err();
        assert!(
            e.contains("TLS with localhost:") && e.contains("UnknownIssuer"),
            "{e}"
        );
        assert!(!accept.await.unwrap(), "the handshake must fail");
    }

    fn test_alert() -> Alert {
        Alert {
            id: 7,
            tenant: moat_shared::TenantId::try_from("t.test".to_owned()).unwrap(),
            severity: "high".into(),
            title: "Suspicious connector activity".into(),
            detail: "connector c restricted".into(),
            at_ms: 1,
            deliveries: Vec::new(),
        }
    }

    /// A plain-HTTP receiver on loopback gets the signed POST; a non-2xx answer is an error
    /// that quotes the status line.
    #[tokio::test]
    async fn webhook_posts_signed_json_and_reads_the_status() {
        use tokio::net::TcpListener;
        let alert = test_alert();
        for (answer, want) in [
            ("HTTP/1.1 204 No Content\r\n\r\n", Ok(())),
            (
                "HTTP/1.1 500 Internal Server Error\r\n\r\n",
                Err("HTTP: HTTP/1.1 500 Internal Server Error".to_owned()),
            ),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", l.local_addr().unwrap());
            let server = tokio::spawn(async move {
                let (tcp, _) = l.accept().await.unwrap();
                let mut io = BufReader::new(tcp);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    io.read_line(&mut line).await.unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut body = vec![0; len];
                io.read_exact(&mut body).await.unwrap();
                io.get_mut().write_all(answer.as_bytes()).await.unwrap();
                (head, String::from_utf8(body).unwrap())
            });
            assert_eq!(webhook(&url, "s3cret", &alert, 1_700_000_000).await, want);
            let (head, body) = server.await.unwrap();
            assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
            let sig = signature("s3cret", 1_700_000_000, &body);
            assert!(
                head.contains(&format!("X-Moat-Signature: {sig}\r\n")),
                "{head}"
            );
            assert!(body.contains("\"id\":7"), "{body}");
        }
    }

    /// The email is one SMTP session: multi-line replies are read whole, the content arrives
    /// dot-stuffed and terminated once, and a refusal is an error quoting the reply's last line.
    #[tokio::test]
    async fn email_sends_stuffed_content_and_quotes_a_refusal() {
        use tokio::net::TcpListener;
        let mut alert = test_alert();
        alert.detail = "line one\r\n.dot line".into();
        for (rcpt, want) in [
            ("250 2.1.5 ok\r\n", Ok(())),
            (
                "550-5.1.1 no such\r\n550 5.1.1 user here \r\n",
                Err("SMTP: 550 5.1.1 user here".to_owned()),
            ),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let server = tokio::spawn(async move {
                let (tcp, _) = l.accept().await.unwrap();
                let mut io = BufReader::new(tcp);
                io.get_mut().write_all(b"220 mx.test\r\n").await.unwrap();
                let mut data = String::new();
                loop {
                    let mut line = String::new();
                    if io.read_line(&mut line).await.unwrap() == 0 {
                        return data;
                    }
                    let answer = match &line.to_ascii_uppercase()[..4] {
                        "EHLO" => "250-mx.test\r\n250 8BITMIME\r\n",
                        "RCPT" => rcpt,
                        "DATA" => {
                            io.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
                            loop {
                                let mut l = String::new();
                                io.read_line(&mut l).await.unwrap();
                                if l == ".\r\n" {
                                    break;
                                }
                                data.push_str(&l);
                            }
                            "250 2.0.0 queued\r\n"
                        }
                        "QUIT" => "221 bye\r\n",
                        _ => "250 2.1.0 ok\r\n",
                    };
                    io.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
            let got = email(&addr, "moat@x.test", "admin@t.test", &alert, "today").await;
            assert_eq!(got, want);
            let data = server.await.unwrap();
            if want.is_ok() {
                assert!(data.starts_with("From: moat@x.test\r\n"), "{data}");
                assert!(data.contains("\r\nline one\r\n..dot line\r\n"), "{data}");
                assert!(data.ends_with("}\r\n"), "{data}");
            }
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 test case 2 shape: key "Jefe".
        let sig = signature("Jefe", 1, "what do ya want for nothing?");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, signature("Jefe", 2, "what do ya want for nothing?"));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert!(ring::hmac::verify(
            &key,
            b"1.what do ya want for nothing?",
            &(0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(&sig[7 + i..9 + i], 16).unwrap())
                .collect::<Vec<_>>()
        )
        .is_ok());
    }
}
