//! Trust boundaries of the internal gRPC channels (issue 9): who may call what.
//!
//! `moat dev` serves gRPC over mutual TLS with its own CA. Each refusal below is exercised with
//! a real client: the `moat admin` tool where it can express the call, tonic clients for the
//! rest (a raft message, a policy watch, a signal batch).

use std::time::Duration;

use moat_proto::mtls::{endpoint, InternalTls};
use moat_proto::{admin_client::AdminClient, policy_client::PolicyClient};
use moat_proto::{raft_client::RaftClient, signal_client::SignalClient};
use tonic::Code;

use crate::harness::{moat, run, runtime, Dev, Killed, Pki, TempDir};

fn tls(dir: &std::path::Path, ca: &str, cert: &str) -> InternalTls {
    InternalTls::load(
        &dir.join(ca),
        &dir.join(format!("{cert}.pem")),
        &dir.join(format!("{cert}-key.pem")),
    )
    .expect("TLS material")
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

fn read(kind: &str) -> moat_proto::ReadRequest {
    moat_proto::ReadRequest {
        kind: kind.into(),
        ..Default::default()
    }
}

/// The status of a call, whether it failed at connect, in the handshake or at the server.
async fn admin_read(
    addr: &str,
    tls: Option<&InternalTls>,
    token: &str,
) -> Result<moat_proto::ReadReply, (Code, String)> {
    let endpoint = endpoint(addr, tls).map_err(|e| (Code::Unknown, e.to_string()))?;
    admin_read_on(endpoint, token).await
}

async fn admin_read_on(
    endpoint: tonic::transport::Endpoint,
    token: &str,
) -> Result<moat_proto::ReadReply, (Code, String)> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| (Code::Unavailable, format!("{e:?}")))?;
    AdminClient::new(channel)
        .read(with_token(read("tenant"), token))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| (s.code(), s.message().to_owned()))
}

/// The `moat dev` control node's address, as `endpoints.json` gives it to admin clients.
fn control_endpoint(dev: &Dev) -> String {
    dev.endpoints["admin"]["endpoints"][0]
        .as_str()
        .expect("endpoint")
        .to_owned()
}

#[test]
fn unauthorized_calls_are_refused() {
    let dev = Dev::start(None);
    let internal = dev.data.join("tls/internal");
    let addr = control_endpoint(&dev);
    let token = dev.endpoints["admin"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let admin = tls(&internal, "ca.pem", "admin");
    let edge = tls(&internal, "ca.pem", "edge");
    // Certificates from a CA the cluster does not know, with the right common names.
    let other = TempDir::new("other-ca");
    Pki::new(&other.0);
    let stranger = tls(&other.0, "ca.pem", "admin");
    // Our CA as trust anchor, a client certificate from the other CA (made without our loader,
    // which refuses a certificate its CA did not issue).
    let pem = |p: std::path::PathBuf| std::fs::read(p).expect("PEM");
    let host = addr.trim_start_matches("https://");
    let impostor = tonic::transport::Endpoint::from_shared(format!("https://{host}"))
        .expect("endpoint")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem(
                    internal.join("ca.pem")
                )))
                .identity(tonic::transport::Identity::from_pem(
                    pem(other.0.join("admin.pem")),
                    pem(other.0.join("admin-key.pem")),
                ))
                .domain_name(moat_proto::mtls::CONTROL_SERVER_NAME),
        )
        .expect("TLS settings");
    let loaded = InternalTls::load(
        &internal.join("ca.pem"),
        &other.0.join("admin.pem"),
        &other.0.join("admin-key.pem"),
    );
    let e = loaded
        .expect_err("a certificate from another CA loaded")
        .to_string();
    assert!(e.contains("refused against the CA"), "{e}");

    runtime().block_on(async {
        // The right certificate and token: allowed.
        let ok = admin_read(&addr, Some(&admin), &token).await;
        assert!(ok.is_ok(), "{ok:?}");

        // No certificate at all (plaintext): refused.
        let r = admin_read(&addr, None, &token).await;
        assert!(r.is_err(), "plaintext admin call accepted: {r:?}");
        // A certificate from another CA: the client does not trust the server, and the server
        // does not trust the client.
        let r = admin_read(&addr, Some(&stranger), &token).await;
        assert!(r.is_err(), "stranger accepted: {r:?}");
        let r = admin_read_on(impostor, &token).await;
        assert!(r.is_err(), "impostor accepted: {r:?}");

        // An edge certificate cannot call the admin API, even with the operator token.
        let r = admin_read(&addr, Some(&edge), &token).await;
        match &r {
            Err((Code::PermissionDenied, m)) => {
                assert!(m.contains("moat-edge") && m.contains("admin"), "{m}")
            }
            other => panic!("edge certificate on the admin API: {other:?}"),
        }
        // An admin certificate without a token, or with a wrong one.
        let r = admin_read(&addr, Some(&admin), "not-a-token").await;
        assert_eq!(r.map(|_| ()).map_err(|e| e.0), Err(Code::Unauthenticated));

        let connect = |t: &InternalTls| {
            let e = endpoint(&addr, Some(t)).expect("endpoint");
            async move { e.connect().await.expect("connect") }
        };
        // The admin certificate cannot pose as an edge (signals, policy) or as a control node.
        let mut signal = SignalClient::new(connect(&admin).await);
        let r = signal
            .report(moat_proto::SignalBatch {
                edge_id: "intruder".into(),
                seq: 1,
                ..Default::default()
            })
            .await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
        let mut policy = PolicyClient::new(connect(&admin).await);
        let hello = moat_proto::WatchRequest {
            edge_id: "intruder".into(),
            applied_version: 0,
            ..Default::default()
        };
        let r = policy.watch(tokio_stream::iter(vec![hello.clone()])).await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
        // Nor the incremental stream.
        let r = policy.sync(tokio_stream::iter(vec![hello])).await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
        // An edge certificate cannot send raft messages.
        let mut raft = RaftClient::new(connect(&edge).await);
        let r = raft
            .send(moat_proto::RaftBatch {
                from: 99,
                from_address: "127.0.0.1:1".into(),
                messages: vec![],
                log_version: 2,
            })
            .await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
        // Nor snapshots.
        let chunk = moat_proto::SnapshotChunk {
            from: 99,
            ..Default::default()
        };
        let r = raft.send_snapshot(tokio_stream::iter(vec![chunk])).await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
        // The edge certificate does what edges do.
        let mut signal = SignalClient::new(connect(&edge).await);
        let r = signal
            .report(moat_proto::SignalBatch {
                edge_id: "security-test-edge".into(),
                seq: 1,
                ..Default::default()
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
    });

    // Roles of tokens, over mutual TLS: a reader changes nothing, a tenant admin only its own
    // tenant.
    dev.admin(&["tenant", "create", "other.test"]);
    let created = dev.admin(&[
        "token",
        "create",
        "--role",
        "tenant-admin",
        "--tenant",
        "example.test",
        "--name",
        "example-admin",
    ]);
    let tenant_token = created["secret"].as_str().expect("secret").to_owned();
    let created = dev.admin(&["token", "create", "--role", "reader", "--name", "ro"]);
    let reader = created["secret"].as_str().expect("secret").to_owned();
    let as_token = |token: &str, args: &[&str]| {
        run(moat()
            .args(["admin", "--data"])
            .arg(&dev.data)
            .args(["--token", token])
            .args(args))
    };
    let (ok, _, err) = as_token(&reader, &["tenant", "create", "reader.test"]);
    assert!(!ok && err.contains("reader"), "{err}");
    let (ok, _, err) = as_token(
        &tenant_token,
        &["domain", "add", "--tenant", "other.test", "x.other.test"],
    );
    assert!(!ok && err.contains("other.test"), "{err}");
    let (ok, _, err) = as_token(
        &tenant_token,
        &[
            "domain",
            "add",
            "--tenant",
            "example.test",
            "x.example.test",
        ],
    );
    assert!(ok, "{err}");

    // The admin tool itself: an edge certificate is refused before any call, and without TLS
    // the failure says why.
    let empty = TempDir::new("no-discovery");
    let plain = run(moat().args(["admin", "--data"]).arg(&empty.0).args([
        "--endpoint",
        &addr,
        "--token",
        &token,
        "tenant",
        "list",
    ]));
    assert!(!plain.0 && plain.2.contains("mutual TLS"), "{}", plain.2);
    let as_edge = run(moat()
        .args(["admin", "--data"])
        .arg(&empty.0)
        .args(["--endpoint", &addr, "--token", &token, "--tls-ca"])
        .arg(internal.join("ca.pem"))
        .arg("--tls-cert")
        .arg(internal.join("edge.pem"))
        .arg("--tls-key")
        .arg(internal.join("edge-key.pem"))
        .args(["tenant", "list"]));
    assert!(
        !as_edge.0 && as_edge.2.contains("moat-admin"),
        "{}",
        as_edge.2
    );

    // Every admin call leaves an audit line, refusals included; no secret is ever logged.
    let log = std::fs::read_to_string(dev.data.with_extension("log")).expect("dev log");
    assert!(
        log.contains("admin call refused"),
        "no refusal in the audit log"
    );
    assert!(
        log.contains("certificate `moat-edge` may not call the admin service"),
        "the edge certificate's refusal is not audited"
    );
    for secret in [token.as_str(), tenant_token.as_str(), reader.as_str()] {
        assert!(!log.contains(secret), "a token is in the log");
    }
    assert!(
        !log.contains(&dev.demo_password()),
        "the demo password is in the log"
    );
}

#[test]
fn a_control_node_without_tls_refuses_admin_calls() {
    let dir = TempDir::new("plain-control");
    std::fs::write(dir.0.join("token"), "plain-token").expect("token");
    let port = crate::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _node = Killed(
        moat()
            .args(["control", "--id", "1", "--listen", &addr, "--data"])
            .arg(dir.0.join("data"))
            .arg("--admin-token-file")
            .arg(dir.0.join("token"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moat control"),
    );
    let refused = runtime().block_on(async {
        let t0 = std::time::Instant::now();
        loop {
            match admin_read(&addr, None, "plain-token").await {
                Err((Code::PermissionDenied, m)) => return m,
                r if t0.elapsed() > Duration::from_secs(20) => panic!("{r:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    assert!(refused.contains("without TLS"), "{refused}");
}

/// The serial of the certificate a control node serves, as `openssl s_client` sees it (with
/// the admin certificate, verified against the CA).
fn served_serial(addr: &str, internal: &std::path::Path) -> String {
    let f = |name: &str| internal.join(name).display().to_string();
    let script = format!(
        "openssl s_client -connect {addr} -servername moat-control -alpn h2 -verify_return_error \
         -CAfile {} -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
        f("ca.pem"),
        f("admin.pem"),
        f("admin-key.pem")
    );
    let (_, out, _) = run(std::process::Command::new("sh").args(["-c", &script]));
    out.trim().to_owned()
}

fn file_serial(path: &std::path::Path) -> String {
    let (ok, out, err) = run(std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(path));
    assert!(ok, "{err}");
    out.trim().to_owned()
}

/// A renewed control certificate is served without a restart: within seconds of
/// `moat cert issue` writing it, `openssl s_client` gets the new one, and the edge and the admin
/// tool carry on. A certificate from another CA written over it is not taken (its peers would
/// refuse it): the node keeps serving the last good one.
#[test]
fn a_renewed_control_certificate_is_served_without_a_restart() {
    let dev = Dev::start(None);
    let internal = dev.data.join("tls/internal");
    let addr = control_endpoint(&dev)
        .trim_start_matches("https://")
        .to_owned();
    let first = file_serial(&internal.join("control.pem"));
    assert_eq!(served_serial(&addr, &internal), first);

    let (ok, out, err) = run(moat()
        .args([
            "cert",
            "issue",
            "--role",
            "control",
            "--san",
            "127.0.0.1",
            "--dir",
        ])
        .arg(&internal));
    assert!(ok, "{out}{err}");
    let renewed = file_serial(&internal.join("control.pem"));
    assert_ne!(renewed, first);
    let t0 = std::time::Instant::now();
    while served_serial(&addr, &internal) != renewed {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still serving {} 10 s after the renewal",
            served_serial(&addr, &internal)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "renewed certificate served {:?} after it was written",
        t0.elapsed()
    );
    // Edges and the admin tool still reach the node: a write is applied everywhere.
    dev.admin_applied(&["tenant", "create", "renewed.test"]);

    // Another CA's control certificate over the files: refused, the renewed one stays.
    let other = TempDir::new("rotation-other-ca");
    Pki::new(&other.0);
    for f in ["control.pem", "control-key.pem"] {
        std::fs::copy(other.0.join(f), internal.join(f)).expect("copy");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(served_serial(&addr, &internal), renewed);
    dev.admin_applied(&["tenant", "create", "still.test"]);
}

/// The control port, now that Moat runs its TLS itself, as clients nobody here wrote see it:
/// TLS 1.1 is refused; TLS 1.2 without a client certificate is refused (`certificate
/// required`), and so is TLS 1.3, at the first read (Python's ssl); TLS 1.2 with the admin
/// certificate completes, verified against the CA, with HTTP/2 by ALPN.
#[test]
fn the_control_port_refuses_old_tls_and_callers_without_a_certificate() {
    let dev = Dev::start(None);
    let internal = dev.data.join("tls/internal");
    let f = |name: &str| internal.join(name).display().to_string();
    let addr = control_endpoint(&dev)
        .trim_start_matches("https://")
        .to_owned();
    let s_client = |extra: &str| {
        let script = format!(
            "openssl s_client -connect {addr} -servername moat-control -CAfile {} {extra} \
             </dev/null 2>&1",
            f("ca.pem")
        );
        run(std::process::Command::new("sh").args(["-c", &script])).1
    };
    let out = s_client("-tls1_1 -cipher DEFAULT@SECLEVEL=0");
    assert!(
        out.contains("Cipher is (NONE)") && out.contains("alert"),
        "TLS 1.1:\n{out}"
    );
    let out = s_client("-tls1_2");
    assert!(
        out.contains("alert certificate required"),
        "TLS 1.2 without a certificate:\n{out}"
    );
    let out = s_client(&format!(
        "-tls1_2 -alpn h2 -cert {} -key {}",
        f("admin.pem"),
        f("admin-key.pem")
    ));
    assert!(
        out.contains("Verify return code: 0 (ok)") && out.contains("ALPN protocol: h2"),
        "TLS 1.2 with the admin certificate:\n{out}"
    );
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let python = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[3])\n\
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3\n\
        ctx.set_alpn_protocols(['h2'])\n\
        s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))), server_hostname='moat-control')\n\
        try:\n    s.recv(1)\n    print('read')\n\
        except ssl.SSLError as e:\n    print('refused', e.reason)\n";
    let (_, out, err) =
        run(std::process::Command::new("python3").args(["-c", python, host, port, &f("ca.pem")]));
    assert!(
        out.contains("refused") && out.contains("CERTIFICATE_REQUIRED"),
        "TLS 1.3 without a certificate: {out}{err}"
    );
}
