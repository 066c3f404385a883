//! Idle sessions: what holding many open TLS sessions costs a server in memory.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpStream;

use super::smtp::{command, reply, tls_config, Io};
use super::{Mode, SmtpArgs};

/// A process's resident set size in KiB.
pub(super) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

pub(super) async fn idle(
    server: &str,
    pid: u32,
    sessions: usize,
    parallel: usize,
) -> anyhow::Result<serde_json::Value> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tls = tls_config(&SmtpArgs {
        server: server.to_owned(),
        mode: Mode::Starttls,
        tls_version: "1.3".into(),
        concurrency: 1,
        messages_per_connection: 1,
        size: 0,
        duration: 0.0,
        count: 0,
        from: String::new(),
        to: String::new(),
        ca: None,
        auth: None,
        server_name: "localhost".into(),
        resume: false,
    })?;
    let before = rss_kib(pid)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (tls, sem, server) = (Arc::clone(&tls), Arc::clone(&sem), server.to_owned());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(&server)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut s: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tcp));
            reply(&mut s).await?;
            command(&mut s, "EHLO idle.test\r\n").await?;
            command(&mut s, "STARTTLS\r\n").await?;
            let name =
                rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let t = tokio_rustls::TlsConnector::from(tls)
                .connect(name, s.into_inner())
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let mut s: BufReader<Box<dyn Io>> = BufReader::new(Box::new(t));
            command(&mut s, "EHLO idle.test\r\n").await?;
            Ok::<_, String>(s)
        }));
    }
    let mut open = Vec::with_capacity(sessions);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await? {
            Ok(s) => open.push(s),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    // Let the edge settle (buffers shrink after the handshake).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = rss_kib(pid)?;
    let per = (with.saturating_sub(before)) as f64 / open.len().max(1) as f64;
    drop(open);
    Ok(serde_json::json!({
        "sessions_open": sessions as u64 - errors.values().sum::<u64>(),
        "rss_before_kib": before,
        "rss_with_sessions_kib": with,
        "kib_per_session": per,
        "errors": errors,
    }))
}
