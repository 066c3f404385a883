//! Acceptance 5 and 6: concurrency, per-IP limit, idle timeout, bounded memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use crate::client::{stuff, tls_config, Client};
use crate::harness::{runtime, strip_received, Dev};

/// 1,000 TLS sessions open at the same time on one edge, each delivering one message.
#[test]
fn thousand_concurrent_tls_sessions() {
    const N: usize = 1000;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dev = Dev::start(Some("[limits]\nmax-sessions-per-ip = 2000\n"));
    let mx = dev.listener("mx");
    let tls = tls_config(&dev.ca());
    let started = Instant::now();
    let results = runtime().block_on(async move {
        let barrier = Arc::new(Barrier::new(N));
        // Sessions are opened at most 64 at a time (a burst of 1,000 SYNs only measures the
        // kernel's listen queue), but all N are open together at the barrier.
        let opening = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..N {
            let (mx, tls, barrier) = (mx.clone(), tls.clone(), barrier.clone());
            let opening = opening.clone();
            tasks.push(tokio::spawn(async move {
                let permit = opening.acquire_owned().await;
                let up = tokio::time::timeout(Duration::from_secs(60), async {
                    let (c, _) = Client::connect(&mx).await?;
                    c.starttls(tls).await
                })
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                drop(permit);
                // Nobody proceeds until all N sessions are up: they are truly concurrent. A
                // session that failed still arrives here, so a failure cannot hang the test.
                barrier.wait().await;
                let mut c = up?;
                let msg = format!("Subject: load {i}\r\nX-Load: {i}\r\n\r\nhello {i}\r\n");
                let r = tokio::time::timeout(
                    Duration::from_secs(120),
                    c.send_stuffed(
                        "load@example.test",
                        "alice@example.test",
                        &stuff(msg.as_bytes()),
                    ),
                )
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
                let _ = c.cmd("QUIT").await;
                Ok::<_, std::io::Error>(r)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let ok = results
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.starts_with("250 2.6.0")))
        .count();
    let failures: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok(r) if r.starts_with("250")))
        .take(5)
        .collect();
    assert_eq!(ok, N, "failures: {failures:?}");
    assert_eq!(dev.messages().len(), N);
    println!(
        "{N} concurrent TLS sessions delivered in {:?}",
        started.elapsed()
    );
}

/// Beyond `max-sessions-per-ip`, a new session from the same address gets `421 4.7.0`; once a
/// session ends its slot is free again.
#[test]
fn per_ip_limit_answers_421() {
    let dev = Dev::start(Some("[limits]\nmax-sessions-per-ip = 3\n"));
    let mx = dev.listener("mx");
    runtime().block_on(async move {
        let mut held = Vec::new();
        for _ in 0..3 {
            let (c, greeting) = Client::connect(&mx).await.expect("connect");
            assert!(greeting.starts_with("220 "), "{greeting}");
            held.push(c);
        }
        let (_, refused) = Client::connect(&mx).await.expect("connect");
        assert_eq!(
            refused,
            "421 4.7.0 Too many concurrent sessions from your address, try again later [edge-1]"
        );
        let r = held[0].cmd("QUIT").await.expect("quit");
        assert!(r.starts_with("221"));
        drop(held.remove(0));
        // The slot is released when the session task ends; allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, g) = Client::connect(&mx).await.expect("connect");
            if g.starts_with("220 ") {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed: {g}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A session that says nothing is closed with `421 4.4.2` at its idle timeout.
#[test]
fn idle_session_is_closed_at_its_timeout() {
    let dev = Dev::start(Some("[limits]\nidle-timeout = \"2s\"\n"));
    let mx = dev.listener("mx");
    runtime().block_on(async move {
        let (mut c, _) = Client::connect(&mx).await.expect("connect");
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), c.reply())
            .await
            .expect("no reply within 10 s")
            .expect("reply");
        let waited = t.elapsed();
        assert_eq!(r, "421 4.4.2 Timeout exceeded, closing connection [edge-1]");
        assert!(
            waited >= Duration::from_millis(1900),
            "closed too early: {waited:?}"
        );
        assert!(c.reply().await.is_err(), "connection still open");
        // An active session is not cut: commands reset the clock (three pauses of 1.2 s, more
        // than the timeout together, each well inside it).
        let (mut c, _) = Client::connect(&mx).await.expect("connect");
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert!(c.cmd("NOOP").await.expect("noop").starts_with("250"));
        }
    });
}

/// A 50 MB message over TLS is delivered intact while the edge's peak RSS grows by less than
/// 32 MB.
#[test]
fn fifty_megabyte_message_in_bounded_memory() {
    let dev = Dev::start(None);
    let mx = dev.listener("mx");
    let tls = tls_config(&dev.ca());
    // 50,000,000 bytes of CRLF lines, some starting with a dot.
    let mut message = b"Subject: big\r\nMessage-Id: <big@e2e>\r\n\r\n".to_vec();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    while message.len() < 50_000_000 - 80 {
        let mut line = Vec::with_capacity(78);
        for _ in 0..76 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            line.push(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/."
                    [(seed % 65) as usize],
            );
        }
        line.extend_from_slice(b"\r\n");
        message.extend_from_slice(&line);
    }
    while message.len() < 50_000_000 - 2 {
        message.push(b'x');
    }
    message.extend_from_slice(b"\r\n");
    assert_eq!(message.len(), 50_000_000);
    let stuffed = stuff(&message);

    let rt = runtime();
    // Warm up: one small message so one-time allocations are not counted.
    rt.block_on(async {
        let (c, _) = Client::connect(&mx).await.expect("connect");
        let mut c = c.starttls(tls.clone()).await.expect("tls");
        let r = c
            .send_stuffed(
                "a@example.test",
                "alice@example.test",
                &stuff(b"Subject: warm\r\n\r\nx\r\n"),
            )
            .await
            .expect("send");
        assert!(r.starts_with("250"), "{r}");
    });
    let before = dev.proc_status_kb("VmRSS");
    let started = Instant::now();
    let r = rt.block_on(async {
        let (c, _) = Client::connect(&mx).await.expect("connect");
        let mut c = c.starttls(tls.clone()).await.expect("tls");
        c.send_stuffed("a@example.test", "alice@example.test", &stuffed)
            .await
            .expect("send")
    });
    let elapsed = started.elapsed();
    let peak = dev.proc_status_kb("VmHWM");
    assert!(r.starts_with("250 2.6.0"), "{r}");
    let stored = dev.messages_with_header("Message-Id: <big@e2e>");
    assert_eq!(stored.len(), 1);
    assert!(
        strip_received(&stored[0]) == message.as_slice(),
        "stored message differs"
    );
    let growth_kb = peak.saturating_sub(before);
    println!("50 MB message: {elapsed:?}; edge RSS before {before} kB, peak {peak} kB, growth {growth_kb} kB");
    assert!(growth_kb < 32 * 1024, "RSS grew by {growth_kb} kB");
}

/// SIGTERM drains: an idle session is told `421 4.3.2`; a session in the middle of DATA may
/// finish its message (and gets its `250`) before it is told the same; the process exits 0.
#[test]
fn sigterm_drains_sessions() {
    let mut dev = Dev::start(None);
    let mx = dev.listener("mx");
    let rt = runtime();
    let (mut idle, mut busy) = rt.block_on(async {
        let (idle, _) = Client::connect(&mx).await.expect("connect");
        let (mut busy, _) = Client::connect(&mx).await.expect("connect");
        busy.cmd("EHLO c.test").await.expect("ehlo");
        assert!(busy
            .cmd("MAIL FROM:<a@example.test>")
            .await
            .expect("mail")
            .starts_with("250"));
        assert!(busy
            .cmd("RCPT TO:<alice@example.test>")
            .await
            .expect("rcpt")
            .starts_with("250"));
        assert!(busy.cmd("DATA").await.expect("data").starts_with("354"));
        busy.write(b"Subject: in flight\r\nMessage-Id: <drain@e2e>\r\n\r\nhalf")
            .await
            .expect("write");
        (idle, busy)
    });
    dev.sigterm();
    rt.block_on(async {
        let r = tokio::time::timeout(Duration::from_secs(5), idle.reply())
            .await
            .expect("idle reply")
            .expect("read");
        assert_eq!(
            r,
            "421 4.3.2 Service shutting down, try again later [edge-1]"
        );
        busy.write(b" done\r\n.\r\n").await.expect("finish");
        let r = busy.reply().await.expect("final reply");
        assert!(r.starts_with("250 2.6.0"), "{r}");
        let r = busy.reply().await.expect("drain reply");
        assert!(r.starts_with("421 4.3.2"), "{r}");
    });
    let status = dev.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(dev.messages_with_header("Message-Id: <drain@e2e>").len(), 1);
}

/// A command sent one byte at a time cannot hold a session past `command-timeout`, even though
/// every byte arrives well within `idle-timeout`.
#[test]
fn trickled_command_hits_the_command_timeout() {
    // Bytes arrive every 200 ms, so the idle timeout (10 s) cannot fire before the trickle
    // stops (3 s at most) plus 10 s: a 421 within 8 s is the command timeout's.
    let dev = Dev::start(Some(
        "[limits]\nidle-timeout = \"10s\"\ncommand-timeout = \"1s\"\n",
    ));
    let mx = dev.listener("mx");
    runtime().block_on(async move {
        let (mut c, _) = Client::connect(&mx).await.expect("connect");
        let t = Instant::now();
        let trickle = async {
            for b in b"EHLO slow.client.example.with.a.long.name" {
                if c.write(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
        let r = tokio::time::timeout(Duration::from_secs(5), c.reply())
            .await
            .expect("a reply")
            .expect("read");
        assert_eq!(r, "421 4.4.2 Timeout exceeded, closing connection [edge-1]");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    });
}
