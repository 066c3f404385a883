//! A policy snapshot from the wire, as an edge receives it: decoding, validation, indexing and
//! the lookups a session makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_proto::convert::snapshot_from_wire;
use prost::Message as _;

fuzz_target!(|bytes: &[u8]| {
    let Ok(wire) = moat_proto::v1::PolicySnapshot::decode(bytes) else {
        return;
    };
    let Ok(snapshot) = snapshot_from_wire(&wire) else {
        return;
    };
    for t in &wire.tenants {
        for d in &t.accepted_domains {
            assert!(snapshot.tenant_for_domain(d).is_some(), "{d}");
        }
    }
    for c in &wire.connectors {
        for net in &c.sender_ip_addresses {
            if let Some(ip) = net.split('/').next().and_then(|a| a.parse().ok()) {
                let _ = snapshot.connectors_by_ip(ip);
            }
        }
        let _ = snapshot.connectors_by_certificate(&[c.tls_sender_certificate_name.clone()]);
    }
    let _ = snapshot.speed_bump_percent(0);
});
