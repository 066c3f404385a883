//! Raft over a simulated network: several [`Core`]s in one thread, messages delivered (or
//! dropped at a partition) by a router, time advanced tick by tick. Deterministic apart from
//! raft-rs's randomised election timeouts.

use std::collections::{BTreeMap, HashSet};

use moat_shared::{Tenant, TenantId};

use super::node::{decode_message, encode_message, Core, MemberChange, NodeError, Options};
use crate::state::{Command, Outcome, Proposal};
use crate::storage::memory::Memory;

struct Net {
    nodes: BTreeMap<u64, Core<Memory>>,
    /// Links that drop messages, both directions.
    cut: HashSet<(u64, u64)>,
    done: BTreeMap<u64, Vec<(u64, Outcome)>>,
    snapshots_sent: usize,
}

fn options() -> Options {
    Options {
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_every: 5,
        ..Options::default()
    }
}

impl Net {
    fn new(n: u64) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let nodes = voters
            .iter()
            .map(|&id| {
                let core = Core::open(
                    id,
                    Memory::default(),
                    &voters,
                    &options(),
                    id << 32,
                    &logger,
                )
                .expect("open");
                (id, core)
            })
            .collect();
        Self {
            nodes,
            cut: HashSet::new(),
            done: BTreeMap::new(),
            snapshots_sent: 0,
        }
    }

    fn isolate(&mut self, id: u64) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Processes ready state and delivers messages until the network is quiet.
    fn settle(&mut self) {
        loop {
            let mut inflight = Vec::new();
            for (&id, core) in self.nodes.iter_mut() {
                let out = core.process().expect("process");
                self.done.entry(id).or_default().extend(out.done);
                inflight.extend(out.messages);
            }
            if inflight.is_empty() {
                return;
            }
            for m in inflight {
                if self.cut.contains(&(m.from, m.to)) {
                    continue;
                }
                if m.get_msg_type() == ::raft::eraftpb::MessageType::MsgSnapshot {
                    self.snapshots_sent += 1;
                }
                // Round-trip through the wire encoding, as the real transport does.
                let m = decode_message(&encode_message(&m)).expect("decode");
                if let Some(core) = self.nodes.get_mut(&m.to) {
                    let _ = core.step(m);
                }
            }
        }
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for core in self.nodes.values_mut() {
                core.tick();
            }
            self.settle();
        }
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|c| c.is_leader())
            .map(|c| c.id())
            .collect()
    }

    /// Ticks until exactly one leader among `among` exists; returns it.
    fn elect(&mut self, among: &[u64]) -> u64 {
        for _ in 0..200 {
            self.tick(1);
            let l: Vec<u64> = self
                .leaders()
                .into_iter()
                .filter(|l| among.contains(l))
                .collect();
            if l.len() == 1 && among.iter().all(|n| self.nodes[n].leader() == l[0]) {
                return l[0];
            }
        }
        panic!("no single leader among {among:?}");
    }

    fn put_tenant(&mut self, on: u64, name: &str) -> Result<u64, NodeError> {
        let p = Proposal {
            at_ms: 1_000,
            actor: "sim".into(),
            request_id: None,
            command: Command::PutTenant {
                tenant: Tenant {
                    id: TenantId::new(name).expect("id"),
                    display_name: name.into(),
                    accepted_domains: vec![],
                    allow_legacy_tls_clients: false,
                },
            },
        };
        let node = self.nodes.get_mut(&on).expect("node");
        node.propose(&p)
    }

    fn tenants(&self, id: u64) -> Vec<String> {
        self.nodes[&id]
            .state()
            .directory
            .tenants
            .keys()
            .map(|t| t.to_string())
            .collect()
    }
}

#[test]
fn a_leader_is_elected_and_replicates() {
    let mut net = Net::new(3);
    let leader = net.elect(&[1, 2, 3]);
    let pid = net.put_tenant(leader, "a.test").expect("propose");
    net.tick(3);
    let done = &net.done[&leader];
    assert!(
        done.iter().any(|(id, o)| *id == pid && o.result.is_ok()),
        "{done:?}"
    );
    for id in 1..=3 {
        assert_eq!(net.tenants(id), ["a.test"], "node {id}");
    }
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    assert!(matches!(
        net.put_tenant(follower, "b.test"),
        Err(NodeError::NotLeader { leader: l }) if l == leader
    ));
}

#[test]
fn a_partitioned_leader_steps_down_and_the_majority_moves_on() {
    let mut net = Net::new(3);
    let old = net.elect(&[1, 2, 3]);
    net.isolate(old);
    // The old leader still believes it leads until check-quorum notices; what it proposes now
    // can never commit.
    let stale = net
        .put_tenant(old, "lost.test")
        .expect("propose on old leader");
    let rest: Vec<u64> = (1..=3).filter(|&n| n != old).collect();
    let new = net.elect(&rest);
    assert_ne!(new, old);
    net.tick(30);
    assert!(
        !net.nodes[&old].is_leader(),
        "isolated leader did not step down"
    );
    let old_commit = net.nodes[&old].status().commit;
    net.put_tenant(new, "kept.test")
        .expect("propose on new leader");
    net.tick(5);
    assert_eq!(
        net.nodes[&old].status().commit,
        old_commit,
        "a minority made progress"
    );
    assert!(net.tenants(new).contains(&"kept.test".to_string()));

    net.heal();
    net.tick(40);
    for id in 1..=3 {
        assert_eq!(net.tenants(id), ["kept.test"], "node {id} after healing");
    }
    assert!(
        !net.done[&old].iter().any(|(id, _)| *id == stale),
        "the proposal made in the minority was reported applied"
    );
    assert_eq!(net.leaders().len(), 1);
}

#[test]
fn a_minority_makes_no_progress() {
    let mut net = Net::new(5);
    let leader = net.elect(&[1, 2, 3, 4, 5]);
    let minority: Vec<u64> = (1..=5).filter(|&n| n != leader).take(2).collect();
    // Cut the minority off from everyone else, but not from each other.
    for &m in &minority {
        for n in 1..=5 {
            if !minority.contains(&n) {
                net.cut.insert((m, n));
                net.cut.insert((n, m));
            }
        }
    }
    let before: Vec<u64> = minority
        .iter()
        .map(|m| net.nodes[m].status().commit)
        .collect();
    net.tick(100);
    for (i, m) in minority.iter().enumerate() {
        let s = net.nodes[m].status();
        assert!(!net.nodes[m].is_leader(), "a minority node became leader");
        assert_eq!(s.commit, before[i], "minority node {m} committed");
    }
    net.put_tenant(leader, "majority.test").expect("propose");
    net.tick(3);
    assert!(net.tenants(leader).contains(&"majority.test".to_string()));
    net.heal();
    net.tick(30);
    for m in &minority {
        assert!(net.tenants(*m).contains(&"majority.test".to_string()));
    }
}

#[test]
fn a_follower_behind_the_compacted_log_gets_a_snapshot() {
    let mut net = Net::new(3);
    let leader = net.elect(&[1, 2, 3]);
    let lagging = (1..=3).find(|&n| n != leader).expect("follower");
    net.isolate(lagging);
    for i in 0..20 {
        net.put_tenant(leader, &format!("t{i}.test"))
            .expect("propose");
        net.tick(1);
    }
    // Snapshots are written on a thread of their own and taken up by a later round.
    let t0 = std::time::Instant::now();
    while net.nodes[&leader].status().snapshot_index < 15
        && t0.elapsed() < std::time::Duration::from_secs(5)
    {
        net.tick(1);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = net.nodes[&leader].status();
    assert!(
        status.snapshot_index >= 15,
        "leader did not compact: {status:?}"
    );
    assert_eq!(net.snapshots_sent, 0);
    net.heal();
    net.tick(30);
    assert!(net.snapshots_sent >= 1, "no snapshot was sent");
    assert_eq!(net.tenants(lagging), net.tenants(leader));
    assert_eq!(net.tenants(lagging).len(), 20);
    assert_eq!(
        net.nodes[&lagging].state(),
        net.nodes[&leader].state(),
        "state machines differ"
    );
}

#[test]
fn membership_changes_one_node_at_a_time() {
    let mut net = Net::new(3);
    let leader = net.elect(&[1, 2, 3]);
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let joiner = Core::open(4, Memory::default(), &[], &options(), 4 << 32, &logger).expect("open");
    net.nodes.insert(4, joiner);
    net.nodes
        .get_mut(&leader)
        .expect("leader")
        .propose_member_change(&MemberChange::Add(4, "127.0.0.1:9".into()))
        .expect("add");
    net.tick(20);
    // The joiner needs a snapshot naming it, written on a thread of its own: wait for it.
    let t0 = std::time::Instant::now();
    while (1..=4).any(|id| net.nodes[&id].status().voters != [1, 2, 3, 4])
        && t0.elapsed() < std::time::Duration::from_secs(5)
    {
        net.tick(1);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for id in 1..=4 {
        assert_eq!(
            net.nodes[&id].status().voters,
            [1, 2, 3, 4],
            "node {id} {:?} snaps {}",
            net.nodes[&id].status(),
            net.snapshots_sent
        );
    }
    assert_eq!(
        net.nodes[&4].state().members.get(&4).map(String::as_str),
        Some("127.0.0.1:9")
    );
    let gone = (1..=3).find(|&n| n != leader).expect("follower");
    net.nodes
        .get_mut(&leader)
        .expect("leader")
        .propose_member_change(&MemberChange::Remove(gone))
        .expect("remove");
    net.tick(20);
    net.nodes.remove(&gone);
    net.put_tenant(leader, "after.test").expect("propose");
    net.tick(5);
    for id in net.nodes.keys() {
        assert!(
            net.tenants(*id).contains(&"after.test".to_string()),
            "node {id}"
        );
    }
}

#[test]
fn reads_wait_for_the_commit_index() {
    let mut net = Net::new(3);
    let leader = net.elect(&[1, 2, 3]);
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    net.put_tenant(leader, "r.test").expect("propose");
    let rid = net.nodes.get_mut(&follower).expect("f").read_index();
    let mut readable = false;
    for _ in 0..5 {
        for core in net.nodes.values_mut() {
            core.tick();
        }
        let mut msgs = Vec::new();
        for (&id, core) in net.nodes.iter_mut() {
            let out = core.process().expect("process");
            if id == follower && out.readable.contains(&rid) {
                readable = true;
                assert!(core
                    .state()
                    .directory
                    .tenants
                    .keys()
                    .any(|t| t.as_str() == "r.test"));
            }
            msgs.extend(out.messages);
        }
        for m in msgs {
            if let Some(c) = net.nodes.get_mut(&m.to) {
                let _ = c.step(m);
            }
        }
    }
    assert!(readable, "the read on the follower never completed");
}
