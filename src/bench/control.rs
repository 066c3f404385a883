//! Control-plane benchmarks against a `moat dev` cluster: policy propagation (an admin
//! write until every edge enforces it) and signal ingestion (edges' counter reports).

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::smtp::{micros, percentiles};

/// What a `moat dev` cluster's `endpoints.json` says.
pub(super) struct Endpoints {
    /// Edges' status URLs.
    edges: Vec<String>,
    /// The control plane, as an operator with the admin certificate.
    admin: crate::client::Target,
    /// The internal PKI's CA and an edge certificate.
    edge_tls: Option<moat_proto::mtls::InternalTls>,
}

impl Endpoints {
    fn load(data: &std::path::Path) -> anyhow::Result<Self> {
        let path = data.join("endpoints.json");
        let endpoints: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?;
        let edges = endpoints["edges"]
            .as_array()
            .context("no edges in endpoints.json")?
            .iter()
            .filter_map(|e| e["status"].as_str().map(str::to_owned))
            .collect();
        let internal = &endpoints["internal_tls"];
        let file = |k: &str| internal[k].as_str().map(std::path::PathBuf::from);
        let edge_tls = match (file("ca"), file("edge_cert"), file("edge_key")) {
            (Some(ca), Some(cert), Some(key)) => {
                Some(moat_proto::mtls::InternalTls::load(&ca, &cert, &key)?)
            }
            _ => None,
        };
        Ok(Self {
            edges,
            admin: crate::client::dev_target(data).map_err(anyhow::Error::msg)?,
            edge_tls,
        })
    }
}

pub(super) async fn propagation(
    data: &std::path::Path,
    writes: usize,
) -> anyhow::Result<serde_json::Value> {
    let Endpoints { edges, admin, .. } = Endpoints::load(data)?;
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let op = moat_proto::write_request::Op::PutConnector(moat_proto::Connector {
            tenant: "example.test".into(),
            name: format!("bench-{i}"),
            kind: moat_proto::ConnectorKind::Partner as i32,
            enabled: true,
            sender_ip_addresses: vec![format!("198.51.100.{}/32", i % 250)],
            ..Default::default()
        });
        let index = crate::client::write_op_index(&admin, op)
            .await
            .map_err(anyhow::Error::msg)?;
        let acked = Instant::now();
        let waits = edges.iter().cloned().map(|status| async move {
            while crate::dev::edge_version(&status).await < index {
                if acked.elapsed() > Duration::from_secs(30) {
                    return Err(format!("{status} did not apply version {index} in 30 s"));
                }
            }
            Ok(acked.elapsed())
        });
        let done = futures_join_all(waits).await;
        let slowest = done
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .max()
            .unwrap_or_default();
        samples.push(micros(slowest));
    }
    Ok(serde_json::json!({
        "edges": edges.len(),
        "writes": writes,
        "ack_to_all_edges": percentiles(samples),
    }))
}

/// Awaits every future (a small `join_all`, without another dependency).
pub(super) async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// The counter names a batch spreads its deltas over: connector counters that feed no
/// suspicious-activity rule, so the benchmark restricts nothing.
pub(super) const SIGNAL_NAMES: [&str; 3] = ["sessions", "recipients", "bytes"];

pub(super) async fn signals(
    data: &std::path::Path,
    edges: usize,
    deltas: usize,
    connectors: usize,
    duration: f64,
) -> anyhow::Result<serde_json::Value> {
    use moat_proto::signal_client::SignalClient;
    let Endpoints {
        admin, edge_tls, ..
    } = Endpoints::load(data)?;
    let run = std::process::id();
    let names: Vec<String> = (0..connectors.max(1))
        .map(|i| format!("bench-signals-{run}-{i}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let op = moat_proto::write_request::Op::PutConnector(moat_proto::Connector {
            tenant: "example.test".into(),
            name: name.clone(),
            kind: moat_proto::ConnectorKind::Partner as i32,
            enabled: true,
            sender_ip_addresses: vec![format!("198.18.{}.{}/32", i / 250, i % 250)],
            ..Default::default()
        });
        crate::client::write_op_index(&admin, op)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // The leader is the node that acknowledges a batch.
    let mut leader = None;
    for addr in &admin.endpoints {
        let Ok(endpoint) = moat_proto::mtls::endpoint(addr, edge_tls.as_ref()) else {
            continue;
        };
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        let mut client = SignalClient::new(channel.clone());
        let probe = moat_proto::SignalBatch {
            edge_id: format!("bench-probe-{run}"),
            seq: 1,
            ..Default::default()
        };
        if client.report(probe).await.is_ok() {
            leader = Some(channel);
            break;
        }
    }
    let leader = leader.context("no control node acknowledged a signal batch")?;
    let deadline = Instant::now() + Duration::from_secs_f64(duration);
    let started = Instant::now();
    let tasks: Vec<_> = (0..edges)
        .map(|e| {
            let leader = leader.clone();
            let keys: Vec<String> = names.iter().map(|n| format!("example.test/{n}")).collect();
            tokio::spawn(async move {
                let mut client = SignalClient::new(leader)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20);
                let mut acked: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
                let mut latencies = Vec::new();
                let mut seq = 0;
                let mut refused = 0u64;
                let mut x = (e as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                while Instant::now() < deadline {
                    seq += 1;
                    let mut batch = moat_proto::SignalBatch {
                        edge_id: format!("bench-edge-{run}-{e}"),
                        seq,
                        ..Default::default()
                    };
                    let mut sent = Vec::with_capacity(deltas);
                    for _ in 0..deltas {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = &keys[(x % keys.len() as u64) as usize];
                        let name = SIGNAL_NAMES[((x >> 32) % 3) as usize];
                        let value = 1 + (x >> 40) % 10;
                        batch.counters.push(moat_proto::CounterDelta {
                            scope: "connector".into(),
                            key: key.clone(),
                            name: name.into(),
                            value,
                        });
                        sent.push((key.clone(), name, value));
                    }
                    // Like an edge: a refused batch is kept and sent again.
                    let t = Instant::now();
                    loop {
                        match client.report(batch.clone()).await {
                            Ok(_) => break,
                            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    latencies.push(micros(t.elapsed()));
                    for (key, name, value) in sent {
                        *acked.entry((key, name)).or_default() += value;
                    }
                }
                Ok::<_, anyhow::Error>((acked, latencies, refused))
            })
        })
        .collect();
    let mut acked: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (a, l, r) = t.await??;
        refused += r;
        for (k, v) in a {
            *acked.entry(k).or_default() += v;
        }
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let batches = latencies.len();
    let committed = crate::client::read_op(
        &admin,
        moat_proto::ReadRequest {
            tenant: "example.test".into(),
            ..moat_proto::ReadRequest::of(moat_proto::ReadKind::Counters)
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut mismatches = 0;
    for ((key, name), want) in &acked {
        let have = committed
            .counters
            .iter()
            .find(|c| c.scope == "connector" && c.key == *key && c.name == *name)
            .map_or(0, |c| c.total);
        if have != *want {
            mismatches += 1;
        }
    }
    Ok(serde_json::json!({
        "edges": edges,
        "deltas_per_batch": deltas,
        "connectors": names.len(),
        "seconds": elapsed,
        "batches_committed": batches,
        "deltas_committed": batches * deltas,
        "deltas_per_second": (batches * deltas) as f64 / elapsed,
        "send_to_commit": percentiles(latencies),
        "refusals_busy": refused,
        "counters_checked": acked.len(),
        "counters_mismatched": mismatches,
    }))
}
