//! Delivering alerts: a signed JSON webhook and an email through the cluster's SMTP path.
//!
//! Only the leader delivers (see `server`); every attempt's outcome goes through the log
//! (`Command::AlertDelivery`), so a new leader continues where the old one stopped and
//! `moat admin alerts list` shows each delivery's state, attempts and last error.
//!
//! Webhook: `POST` of the alert as JSON with `X-Moat-Timestamp: <unix seconds>` and
//! `X-Moat-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`; any 2xx is
//! delivered. A receiver recomputes the HMAC and rejects old timestamps to stop replays.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

/// POSTs the alert to an `http://host:port/path` URL.
pub async fn webhook(url: &str, secret: &str, a: &Alert, now_s: i64) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let body = json(a);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Moat-Timestamp: {now_s}\r\nX-Moat-Signature: {}\r\n\
         User-Agent: moat-control\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        signature(secret, now_s, &body)
    );
    let attempt = async {
        let mut tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 64];
        let n = tcp
            .read(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let status = String::from_utf8_lossy(&head[..n]);
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code.starts_with('2') {
            Ok(())
        } else {
            Err(format!(
                "HTTP {}",
                status.lines().next().unwrap_or("(no answer)")
            ))
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{url}: timed out"))?
}

/// Sends the alert by SMTP to `to` through `smtp` (`host:port`), envelope sender `<>`.
pub async fn email(smtp: &str, from: &str, to: &str, a: &Alert, date: &str) -> Result<(), String> {
    let attempt = async {
        let tcp = TcpStream::connect(smtp)
            .await
            .map_err(|e| format!("connect {smtp}: {e}"))?;
        let mut io = BufReader::new(tcp);
        expect(&mut io, "220").await?;
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
            io.get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            expect(&mut io, want).await?;
        }
        let mut stuffed = String::new();
        for l in message.split("\r\n") {
            if l.starts_with('.') {
                stuffed.push('.');
            }
            stuffed.push_str(l);
            stuffed.push_str("\r\n");
        }
        stuffed.push_str(".\r\n");
        io.get_mut()
            .write_all(stuffed.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut io, "250").await?;
        let _ = io.get_mut().write_all(b"QUIT\r\n").await;
        Ok(())
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{smtp}: timed out"))?
}

/// Reads one SMTP reply; fails unless its code starts with `want`.
async fn expect(io: &mut BufReader<TcpStream>, want: &str) -> Result<(), String> {
    loop {
        let mut line = String::new();
        let n = io.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        return if line.starts_with(want) {
            Ok(())
        } else {
            Err(format!("SMTP: {}", line.trim_end()))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
