//! Following the policy through `Policy.Sync`: the parts a control node streams in, the
//! snapshots to enforce out.
//!
//! A [`Follower`] holds what the edge needs besides its snapshot: the [`DigestBook`] of every
//! part it applied, the snapshot being built from the parts of a version that has not ended,
//! and whether the next stream must start with a full snapshot. Each part is applied to the
//! snapshot at the cost of the part ([`PolicySnapshot::apply`]); a version is enforced only once
//! its last part has arrived and the book's digest equals the one the control plane stamped on
//! it. Anything else (a part that does not convert or apply, a different digest) makes the
//! follower ask for a full snapshot on its next stream, while the edge goes on enforcing what
//! it has.
//!
//! It does no I/O: [`crate::control`] feeds it from the stream, which keeps this testable part
//! by part.

use std::sync::Arc;

use moat_proto::convert::change_from_wire;
use moat_proto::digest::DigestBook;
use moat_proto::v1;
use moat_shared::PolicySnapshot;

/// Why the follower needs a full snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Resync {
    /// A part carried an object that is not valid.
    #[error("policy update {version} does not convert: {why}")]
    Invalid {
        /// The version the part belongs to.
        version: u64,
        /// What was wrong.
        why: String,
    },
    /// A part did not apply to the snapshot (a domain claimed twice, a connector of a tenant
    /// the edge lacks): the edge and the control plane hold different policies.
    #[error("policy update {version} does not apply: {why}")]
    Refused {
        /// The version the part belongs to.
        version: u64,
        /// The snapshot's refusal.
        why: String,
    },
    /// After the last part of a version, the edge's digest differs from the control plane's.
    #[error("policy {version}: the edge's digest {ours:016x} differs from the control plane's {theirs:016x}")]
    Digest {
        /// The version.
        version: u64,
        /// The edge's digest.
        ours: u64,
        /// The control plane's digest.
        theirs: u64,
    },
}

impl Resync {
    /// The `reason` label of `moat_edge_policy_resyncs_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Resync::Invalid { .. } => "invalid",
            Resync::Refused { .. } => "refused",
            Resync::Digest { .. } => "digest",
        }
    }
}

/// A version the follower completed: the snapshot to enforce.
#[derive(Debug)]
pub struct Completed {
    /// The snapshot at the version.
    pub snapshot: PolicySnapshot,
    /// Whether it came from a full snapshot (then it may replace a snapshot of the same
    /// version) rather than from changes.
    pub full: bool,
    /// When the control plane committed the version (Unix ms).
    pub changed_at_ms: i64,
}

/// The parts of a version received so far, applied.
#[derive(Debug)]
struct Building {
    snapshot: Arc<PolicySnapshot>,
    full: bool,
}

/// What the edge holds of the `Sync` stream besides its snapshot.
#[derive(Debug)]
pub struct Follower {
    book: DigestBook,
    building: Option<Building>,
    resync: bool,
}

impl Default for Follower {
    fn default() -> Self {
        Follower::new()
    }
}

impl Follower {
    /// A follower that holds nothing yet: its first stream asks for a full snapshot.
    pub fn new() -> Self {
        Follower {
            book: DigestBook::default(),
            building: None,
            resync: true,
        }
    }

    /// The digest of the policy the follower has applied.
    pub fn digest(&self) -> u64 {
        self.book.digest()
    }

    /// Whether the next stream must ask for a full snapshot.
    pub fn needs_full(&self) -> bool {
        self.resync
    }

    /// Forgets the book: the snapshot came from elsewhere (the previous release's `Watch`, a
    /// version the handle refused), so the next stream asks for a full snapshot.
    pub fn invalidate(&mut self) {
        self.resync = true;
        self.building = None;
    }

    /// The first message of a stream: the version the edge enforces and its digest, or a
    /// request for a full snapshot.
    pub fn hello(&mut self, edge_id: &str, enforced: u64) -> v1::WatchRequest {
        // A version cut short by the broken stream is taken again from its first part.
        self.building = None;
        v1::WatchRequest {
            edge_id: edge_id.to_owned(),
            applied_version: if self.resync { 0 } else { enforced },
            digest: if self.resync { 0 } else { self.book.digest() },
            resync: self.resync,
        }
    }

    /// What the edge reports after enforcing `version`.
    pub fn ack(&self, edge_id: &str, version: u64) -> v1::WatchRequest {
        v1::WatchRequest {
            edge_id: edge_id.to_owned(),
            applied_version: version,
            digest: self.book.digest(),
            resync: false,
        }
    }

    /// Takes one part on top of `current` (the snapshot enforced now). Returns the snapshot to
    /// enforce when the part ends a version whose digest agrees; an error asks for a full
    /// snapshot (the follower remembers it).
    pub fn receive(
        &mut self,
        current: &Arc<PolicySnapshot>,
        part: &v1::PolicyUpdate,
    ) -> Result<Option<Completed>, Resync> {
        let r = self.take(current, part);
        if r.is_err() {
            self.invalidate();
        }
        r
    }

    fn take(
        &mut self,
        current: &Arc<PolicySnapshot>,
        part: &v1::PolicyUpdate,
    ) -> Result<Option<Completed>, Resync> {
        if !part.reset && self.building.is_none() && part.version <= current.version() {
            // Already enforced (a node that was behind this edge caught up).
            return Ok(None);
        }
        let version = part.version;
        let change = change_from_wire(part).map_err(|e| Resync::Invalid {
            version,
            why: e.to_string(),
        })?;
        let building = if part.reset {
            None
        } else {
            self.building.take()
        };
        let full = part.reset || building.as_ref().is_some_and(|b| b.full);
        let base = match &building {
            Some(b) => Some(&b.snapshot),
            None if part.reset => None,
            None => Some(current),
        };
        let next = match base {
            Some(b) => b.apply(&change),
            None => PolicySnapshot::from_change(&change),
        }
        .map_err(|e| Resync::Refused {
            version,
            why: e.to_string(),
        })?;
        self.book.apply(part);
        if !part.last {
            self.building = Some(Building {
                snapshot: Arc::new(next),
                full,
            });
            return Ok(None);
        }
        let ours = self.book.digest();
        if ours != part.digest {
            return Err(Resync::Digest {
                version,
                ours,
                theirs: part.digest,
            });
        }
        self.resync = false;
        Ok(Some(Completed {
            snapshot: next,
            full,
            changed_at_ms: part.changed_at_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, domain: &str) -> v1::Tenant {
        v1::Tenant {
            id: id.into(),
            display_name: id.into(),
            accepted_domains: vec![domain.into()],
            allow_legacy_tls_clients: false,
        }
    }

    /// Stamps parts as the control plane does: each part applied to its book, the digest on
    /// the last.
    struct Control(DigestBook);
    impl Control {
        fn stamp(
            &mut self,
            mut parts: Vec<v1::PolicyUpdate>,
            version: u64,
        ) -> Vec<v1::PolicyUpdate> {
            let n = parts.len();
            for (i, p) in parts.iter_mut().enumerate() {
                p.version = version;
                p.last = i + 1 == n;
                self.0.apply(p);
            }
            if let Some(last) = parts.last_mut() {
                last.digest = self.0.digest();
            }
            parts
        }
    }

    fn enforce(
        f: &mut Follower,
        current: &mut Arc<PolicySnapshot>,
        parts: &[v1::PolicyUpdate],
    ) -> Result<bool, Resync> {
        let mut done = false;
        for p in parts {
            if let Some(c) = f.receive(current, p)? {
                *current = Arc::new(c.snapshot);
                done = true;
            }
        }
        Ok(done)
    }

    #[test]
    fn a_full_snapshot_in_parts_then_changes() {
        let mut control = Control(DigestBook::default());
        let mut f = Follower::new();
        let mut current = Arc::new(PolicySnapshot::default());
        assert!(f.hello("e", 0).resync);
        let full = control.stamp(
            vec![
                v1::PolicyUpdate {
                    reset: true,
                    tenants: vec![tenant("a", "a.test")],
                    ..Default::default()
                },
                v1::PolicyUpdate {
                    tenants: vec![tenant("b", "b.test")],
                    ..Default::default()
                },
            ],
            5,
        );
        // Nothing is enforced before the last part.
        assert!(f.receive(&current, &full[0]).expect("part").is_none());
        assert_eq!(current.version(), 0);
        let done = f
            .receive(&current, &full[1])
            .expect("part")
            .expect("complete");
        assert!(done.full);
        current = Arc::new(done.snapshot);
        assert_eq!(current.version(), 5);
        assert!(current.tenant_for_domain("b.test").is_some());
        let hello = f.hello("e", 5);
        assert!(!hello.resync);
        assert_eq!(hello.digest, control.0.digest());
        // A change: one tenant moves to another domain.
        let change = control.stamp(
            vec![v1::PolicyUpdate {
                tenants: vec![tenant("a", "new.test")],
                ..Default::default()
            }],
            9,
        );
        assert!(enforce(&mut f, &mut current, &change).expect("change"));
        assert_eq!(current.version(), 9);
        assert!(current.tenant_for_domain("a.test").is_none());
        assert!(current.tenant_for_domain("new.test").is_some());
        // The same change again (a node that was behind) is skipped.
        assert!(!enforce(&mut f, &mut current, &change).expect("again"));
        assert_eq!(f.ack("e", 9).digest, control.0.digest());
    }

    fn ticket_key(n: u8) -> v1::TicketKey {
        v1::TicketKey {
            name: vec![n; 16],
            secret: vec![n; 32],
            created_ms: i64::from(n),
        }
    }

    #[test]
    fn ticket_keys_arrive_with_a_full_snapshot_and_with_changes() {
        let mut control = Control(DigestBook::default());
        let mut f = Follower::new();
        let mut current = Arc::new(PolicySnapshot::default());
        let keys = |issuing: u8, accepting: &[u8]| v1::TicketKeys {
            issuing: Some(ticket_key(issuing)),
            accepting: accepting.iter().map(|n| ticket_key(*n)).collect(),
            lifetime_ms: 60_000,
        };
        let full = control.stamp(
            vec![v1::PolicyUpdate {
                reset: true,
                tenants: vec![tenant("a", "a.test")],
                ticket_keys: Some(keys(1, &[])),
                ..Default::default()
            }],
            3,
        );
        assert!(enforce(&mut f, &mut current, &full).expect("full"));
        let issuing = |s: &PolicySnapshot| s.ticket_keys().issuing.as_ref().map(|k| k.name.clone());
        assert_eq!(issuing(&current), Some("01".repeat(16)));
        // A change that leaves the keys alone keeps the same keys (the same `Arc`, so the
        // ticketer does not prepare them again).
        let before = Arc::clone(current.ticket_keys());
        let change = control.stamp(
            vec![v1::PolicyUpdate {
                tenants: vec![tenant("b", "b.test")],
                ..Default::default()
            }],
            4,
        );
        assert!(enforce(&mut f, &mut current, &change).expect("change"));
        assert!(Arc::ptr_eq(&before, current.ticket_keys()));
        // A rotation.
        let rotation = control.stamp(
            vec![v1::PolicyUpdate {
                ticket_keys: Some(keys(2, &[1])),
                ..Default::default()
            }],
            5,
        );
        assert!(enforce(&mut f, &mut current, &rotation).expect("rotation"));
        assert_eq!(issuing(&current), Some("02".repeat(16)));
        assert_eq!(current.ticket_keys().accepting.len(), 1);
        assert_eq!(f.ack("e", 5).digest, control.0.digest());
        // A key of the wrong size is refused: the edge asks for a full snapshot.
        let mut bad = keys(3, &[2]);
        bad.accepting[0].secret.pop();
        let bad = control.stamp(
            vec![v1::PolicyUpdate {
                ticket_keys: Some(bad),
                ..Default::default()
            }],
            6,
        );
        let e = enforce(&mut f, &mut current, &bad).expect_err("refused");
        assert_eq!(e.reason(), "invalid");
        assert!(f.needs_full());
    }

    #[test]
    fn a_different_digest_or_a_refused_part_asks_for_a_full_snapshot() {
        let mut control = Control(DigestBook::default());
        let mut f = Follower::new();
        let mut current = Arc::new(PolicySnapshot::default());
        let full = control.stamp(
            vec![v1::PolicyUpdate {
                reset: true,
                tenants: vec![tenant("a", "a.test")],
                ..Default::default()
            }],
            3,
        );
        enforce(&mut f, &mut current, &full).expect("full");
        // The control plane holds something the edge never saw (a lost change).
        control.0.apply(&v1::PolicyUpdate {
            tenants: vec![tenant("lost", "lost.test")],
            ..Default::default()
        });
        let change = control.stamp(
            vec![v1::PolicyUpdate {
                tenants: vec![tenant("c", "c.test")],
                ..Default::default()
            }],
            4,
        );
        let err = enforce(&mut f, &mut current, &change).expect_err("digest");
        assert_eq!(err.reason(), "digest");
        // The edge keeps enforcing version 3 and asks for a full snapshot.
        assert_eq!(current.version(), 3);
        let hello = f.hello("e", 3);
        assert!(hello.resync);
        assert_eq!(hello.applied_version, 0);
        // The full snapshot at the same version as what the edge holds replaces it.
        let full = control.stamp(
            vec![v1::PolicyUpdate {
                reset: true,
                tenants: vec![
                    tenant("a", "a.test"),
                    tenant("lost", "lost.test"),
                    tenant("c", "c.test"),
                ],
                ..Default::default()
            }],
            4,
        );
        let done = f
            .receive(&current, &full[0])
            .expect("full")
            .expect("complete");
        assert!(done.full);
        assert_eq!(f.digest(), control.0.digest());
        // A part that claims a domain twice is refused.
        current = Arc::new(done.snapshot);
        let bad = control.stamp(
            vec![v1::PolicyUpdate {
                tenants: vec![tenant("d", "a.test")],
                ..Default::default()
            }],
            6,
        );
        let err = enforce(&mut f, &mut current, &bad).expect_err("refused");
        assert_eq!(err.reason(), "refused");
        assert!(f.needs_full());
        // So is one that does not convert.
        let mut f = Follower::new();
        let bad = v1::PolicyUpdate {
            reset: true,
            last: true,
            version: 1,
            tenants: vec![tenant("not a tenant id!", "x.test")],
            ..Default::default()
        };
        let err = f.receive(&current, &bad).expect_err("invalid");
        assert_eq!(err.reason(), "invalid");
    }
}
