//! Process-wide glue shared by the roles: logging, the Prometheus recorder, the shutdown
//! signal.

use std::io::IsTerminal as _;
use std::sync::Arc;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's log subscriber, writing to standard error. Text carries ANSI colours
/// only when standard error is a terminal, so that logs piped to a file or a collector stay
/// plain.
pub fn init_logging(level: tracing::Level, format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Latency histogram buckets, in seconds (handshakes, transactions, next hop, raft proposals).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process's Prometheus recorder (once; `moat dev` runs an edge and a control
/// node in one process, and both status ports then show the same registry) and returns what
/// renders it for `/metrics`.
pub fn metrics() -> Option<moat_edge::status::Metrics> {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .ok()?
            .install_recorder();
        match recorder {
            Ok(h) => {
                moat_edge::describe_metrics();
                moat_control::describe_metrics();
                Some(h)
            }
            Err(e) => {
                tracing::warn!("no metrics: {e}");
                None
            }
        }
    });
    handle
        .clone()
        .map(|h| -> moat_edge::status::Metrics { Arc::new(move || h.render()) })
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
