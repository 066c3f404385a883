//! TLS policy as seen by a real OpenSSL client, certificate reload, client certificates, and
//! the PROXY protocol.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;

use crate::client::{stuff, tls_config, tls_config_with_client_cert, Client};
use crate::harness::{run, runtime, Dev, TempDir, ANY_PORTS};
use base64::Engine as _;

/// A CA that can issue certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        Self {
            cert: p.self_signed(&key).expect("ca"),
            key,
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn openssl_starttls(addr: &str, ca: &Path, version_flag: &str) -> (bool, String) {
    let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
        "echo QUIT | timeout 10 openssl s_client -starttls smtp -connect {addr} -CAfile {} -verify_return_error {version_flag} 2>&1",
        ca.display()
    )));
    (ok, format!("{out}{err}"))
}

/// OpenSSL's own client negotiates TLS 1.3 and TLS 1.2 (with an ECDHE AEAD suite) and verifies
/// the chain; TLS 1.1 and 1.0 are refused by the standard listeners.
#[test]
fn openssl_client_sees_the_tls_policy() {
    let dev = Dev::start(None);
    let mx = dev.listener("mx");
    let (ok, out) = openssl_starttls(&mx, &dev.ca(), "-tls1_3");
    assert!(
        ok && out.contains("TLSv1.3") && out.contains("Verify return code: 0 (ok)"),
        "{out}"
    );
    let (ok, out) = openssl_starttls(&mx, &dev.ca(), "-tls1_2");
    assert!(ok, "{out}");
    assert!(
        out.contains("Protocol  : TLSv1.2") || out.contains("TLSv1.2"),
        "{out}"
    );
    let cipher = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cipher    : "))
        .or_else(|| out.lines().find_map(|l| l.split("Cipher is ").nth(1)))
        .unwrap_or_default()
        .to_owned();
    assert!(
        cipher.starts_with("ECDHE-") && (cipher.contains("GCM") || cipher.contains("CHACHA20")),
        "cipher {cipher:?}:\n{out}"
    );
    for old in ["-tls1_1", "-tls1"] {
        let (_, out) = openssl_starttls(
            &mx,
            &dev.ca(),
            &format!("{old} -cipher DEFAULT:@SECLEVEL=0"),
        );
        // OpenSSL prints its session summary even after a failed handshake; a refused
        // handshake is the one that negotiated no cipher.
        assert!(
            out.contains("Cipher is (NONE)") && out.contains("handshake failure"),
            "{old} was accepted:\n{out}"
        );
    }
}

/// Replacing the certificate files (as a Kubernetes secret rotation does) changes the
/// certificate new sessions see, without a restart.
#[test]
fn certificate_is_reloaded_when_its_files_change() {
    let dir = TempDir::new("reload");
    let ca = Ca::new("reload CA");
    let ca_path = dir.0.join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).expect("ca");
    let (cert1, key1) = ca.issue("first", &["localhost", "127.0.0.1"]);
    let (cert2, key2) = ca.issue("second", &["localhost", "127.0.0.1"]);
    let (cert_path, key_path) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&cert_path, &cert1).expect("cert");
    std::fs::write(&key_path, &key1).expect("key");
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nreload-interval = \"100ms\"\n",
        cert_path.display(),
        key_path.display()
    );
    let dev = Dev::start_in(&dir.0, Some(&config), ANY_PORTS);
    let mx = dev.listener("mx");
    // Full handshakes only: a session resumed from a ticket (the edges share ticket keys that
    // outlive a certificate renewal) presents no certificate, and the client reports the one
    // of the session it resumed.
    let tls = {
        let mut c = (*tls_config(&ca_path)).clone();
        c.resumption = rustls::client::Resumption::disabled();
        std::sync::Arc::new(c)
    };
    let served = |tls| {
        runtime().block_on(async {
            let (c, _) = Client::connect(&mx).await.expect("connect");
            c.starttls(tls)
                .await
                .expect("tls")
                .peer_cert
                .expect("peer cert")
        })
    };
    let der1 = rustls_pki_types::CertificateDer::from_pem_slice(cert1.as_bytes()).expect("der");
    let der2 = rustls_pki_types::CertificateDer::from_pem_slice(cert2.as_bytes()).expect("der");
    assert_eq!(served(tls.clone()), der1.to_vec());
    // Renewed with the modification times left as they were (two writes within one tick of the
    // file system's clock look like that): the content changed, so it is a renewal.
    let mtime = |p: &std::path::Path| {
        std::fs::metadata(p)
            .expect("stat")
            .modified()
            .expect("mtime")
    };
    let before = [
        (&key_path, mtime(&key_path)),
        (&cert_path, mtime(&cert_path)),
    ];
    std::fs::write(&key_path, &key2).expect("key");
    std::fs::write(&cert_path, &cert2).expect("cert");
    for (p, t) in before {
        let f = std::fs::File::options().write(true).open(p).expect("open");
        f.set_modified(t).expect("set mtime");
        assert_eq!(mtime(p), t);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(tls.clone()) != der2.to_vec() {
        assert!(
            Instant::now() < deadline,
            "new certificate not served after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With `client-ca`, a client certificate that chains to it is accepted and its name recorded;
/// one from another CA is served but ignored (its names are not recorded, so it matches no
/// connector); no certificate at all is still served.
#[test]
fn client_certificates_are_verified_and_recorded() {
    let dir = TempDir::new("clientca");
    let client_ca = Ca::new("partner CA");
    let stranger_ca = Ca::new("stranger CA");
    let client_ca_path = dir.0.join("client-ca.pem");
    std::fs::write(&client_ca_path, client_ca.cert.pem()).expect("ca");
    // Start once to create the dev server certificate, then restart with client-ca set.
    let dev = Dev::start_in(&dir.0, None, ANY_PORTS);
    let server_ca = dev.ca();
    let tls_dir = server_ca.parent().expect("tls dir").to_owned();
    drop(dev);
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient-ca = \"{}\"\n",
        tls_dir.join("server.pem").display(),
        tls_dir.join("server-key.pem").display(),
        client_ca_path.display()
    );
    let dev = Dev::start_in(&dir.0, Some(&config), ANY_PORTS);
    let mx = dev.listener("mx");
    let (good_cert, good_key) = client_ca.issue(
        "mta.partner.test",
        &["mta.partner.test", "relay.partner.test"],
    );
    let (bad_cert, bad_key) = stranger_ca.issue("mta.stranger.test", &["mta.stranger.test"]);
    runtime().block_on(async {
        let (c, _) = Client::connect(&mx).await.expect("connect");
        let mut c = c
            .starttls(tls_config_with_client_cert(
                &server_ca, &good_cert, &good_key,
            ))
            .await
            .expect("handshake with a good client certificate");
        let msg = stuff(b"Subject: cert\r\nMessage-Id: <cert@e2e>\r\n\r\nx\r\n");
        let r = c
            .send_stuffed("a@partner.test", "alice@example.test", &msg)
            .await
            .expect("send");
        assert!(r.starts_with("250"), "{r}");

        let (c, _) = Client::connect(&mx).await.expect("connect");
        let mut c = c
            .starttls(tls_config_with_client_cert(&server_ca, &bad_cert, &bad_key))
            .await
            .expect("handshake with an unknown client certificate");
        let msg = stuff(b"Subject: cert\r\nMessage-Id: <stranger@e2e>\r\n\r\nx\r\n");
        let r = c
            .send_stuffed("a@stranger.test", "alice@example.test", &msg)
            .await
            .expect("send");
        assert!(r.starts_with("250"), "{r}");

        let (c, _) = Client::connect(&mx).await.expect("connect");
        let mut c = c
            .starttls(tls_config(&server_ca))
            .await
            .expect("no client certificate");
        assert!(c.cmd("NOOP").await.expect("noop").starts_with("250"));
    });
    let stored = dev.messages_with_header("Message-Id: <cert@e2e>");
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(&stored[0]);
    assert!(
        text.contains("client-cert=mta.partner.test verified"),
        "{text}"
    );
    let stored = dev.messages_with_header("Message-Id: <stranger@e2e>");
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(&stored[0]);
    assert!(!text.contains("client-cert="), "{text}");
}

/// A listener with `proxy-protocol = true` takes the client address from the PROXY header: it
/// is the one in `Received:` and the one the per-IP limit counts.
#[test]
fn proxy_protocol_carries_the_client_address() {
    let dev = Dev::start(Some(
        "[limits]\nmax-sessions-per-ip = 1\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\nproxy-protocol = true\n",
    ));
    let mx = dev.listener("mx");
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(&mx).await.expect("connect");
        let mut c = Client::from_stream(tcp);
        c.write(b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\nEHLO via.lb\r\n")
            .await
            .expect("write");
        assert!(c.reply().await.expect("greeting").starts_with("220 "));
        let ehlo = c.reply().await.expect("ehlo");
        assert!(ehlo.contains("Hello via.lb [203.0.113.9]"), "{ehlo}");
        let msg = stuff(b"Subject: proxied\r\nMessage-Id: <proxy@e2e>\r\n\r\nx\r\n");
        let r = c
            .send_stuffed("a@example.test", "alice@example.test", &msg)
            .await
            .expect("send");
        assert!(r.starts_with("250"), "{r}");

        // Same proxied address again while the first session is open: over the per-IP limit.
        let tcp = tokio::net::TcpStream::connect(&mx).await.expect("connect");
        let mut second = Client::from_stream(tcp);
        second
            .write(b"PROXY TCP4 203.0.113.9 192.0.2.1 40001 25\r\n")
            .await
            .expect("write");
        assert!(second
            .reply()
            .await
            .expect("reply")
            .starts_with("421 4.7.0"));
        // Another proxied address is fine.
        let tcp = tokio::net::TcpStream::connect(&mx).await.expect("connect");
        let mut third = Client::from_stream(tcp);
        third
            .write(b"PROXY TCP4 203.0.113.10 192.0.2.1 40002 25\r\n")
            .await
            .expect("write");
        assert!(third.reply().await.expect("reply").starts_with("220 "));
        // A connection without the header is closed without a greeting.
        let tcp = tokio::net::TcpStream::connect(&mx).await.expect("connect");
        let mut bare = Client::from_stream(tcp);
        bare.write(b"EHLO sneaky\r\n").await.expect("write");
        assert!(bare.reply().await.is_err(), "served without a PROXY header");
    });
    let stored = dev.messages_with_header("Message-Id: <proxy@e2e>");
    assert_eq!(stored.len(), 1);
    assert!(
        String::from_utf8_lossy(crate::harness::strip_return_path(&stored[0]))
            .starts_with("Received: from via.lb ([203.0.113.9])")
    );
}

/// Listeners take their own limits and certificate; what they leave out comes from the edge.
#[test]
fn listeners_have_their_own_limits_and_certificate() {
    let dir = TempDir::new("perlistener");
    let ca = Ca::new("submission CA");
    let ca_path = dir.0.join("submission-ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).expect("ca");
    let (cert, key) = ca.issue("submission.test", &["localhost", "127.0.0.1"]);
    std::fs::write(dir.0.join("sub.crt"), &cert).expect("cert");
    std::fs::write(dir.0.join("sub.key"), &key).expect("key");
    let config = format!(
        r#"
[limits]
max-recipients = 7
[[listener]]
kind = "mx"
address = "127.0.0.1:0"
limits = {{ max-message-size = 1000 }}
[[listener]]
kind = "submission"
address = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}
"#,
        dir.0.join("sub.crt").display(),
        dir.0.join("sub.key").display()
    );
    let dev = Dev::start_in(&dir.0, Some(&config), ANY_PORTS);
    let (mx, submission) = (dev.listener("mx"), dev.listener("submission"));
    runtime().block_on(async {
        let (mut c, _) = Client::connect(&mx).await.expect("connect");
        let ehlo = c.cmd("EHLO c.test").await.expect("ehlo");
        assert!(ehlo.contains("250-SIZE 1000\n"), "{ehlo}");
        // The mx listener still serves the edge-wide (dev) certificate.
        let c = c.starttls(tls_config(&dev.ca())).await.expect("mx tls");
        drop(c);

        let (c, _) = Client::connect(&submission).await.expect("connect");
        let mut c = c
            .starttls(tls_config(&ca_path))
            .await
            .expect("submission tls");
        let ehlo = c.cmd("EHLO c.test").await.expect("ehlo");
        assert!(ehlo.contains("250-SIZE 52428800\n"), "{ehlo}");
        let plain = base64::engine::general_purpose::STANDARD.encode(format!(
            "\0{}\0{}",
            dev.demo_user(),
            dev.demo_password()
        ));
        let r = c.cmd(&format!("AUTH PLAIN {plain}")).await.expect("auth");
        assert!(r.starts_with("235 2.7.0"), "{r}");
        let r = c
            .cmd(&format!("MAIL FROM:<{}>", dev.demo_user()))
            .await
            .expect("mail");
        assert!(r.starts_with("250"), "{r}");
        for n in 0..7 {
            let r = c
                .cmd(&format!("RCPT TO:<u{n}@example.test>"))
                .await
                .expect("rcpt");
            assert!(r.starts_with("250"), "{r}");
        }
        let r = c.cmd("RCPT TO:<u8@example.test>").await.expect("rcpt");
        assert!(r.starts_with("452 4.5.3"), "{r}");
    });
}
