//! The Raft node, without I/O: [`Core`] owns the raft-rs `RawNode`, its durable storage and the
//! state machine, and turns ticks, incoming messages, proposals and read requests into
//! [`Output`]: messages to send, finished proposals and reads that may now be served.
//!
//! The ready loop follows raft-rs's documented order: messages a leader may send at once go out
//! first; a received snapshot is installed; committed entries are applied; new entries and the
//! hard state are persisted; only then are the messages that depend on them (votes, append
//! responses) released; finally the node advances. The node thread (`raft/thread.rs`) and the
//! simulated network in the tests (`raft/sim.rs`) drive the same `Core`.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message};
use raft::{Config, RawNode, ReadOnlyOption, SnapshotStatus, StateRole, Storage as _};

use crate::publish::{Published, Publisher};
use crate::state::{Outcome, Proposal, Rejection, State};
use crate::storage::{Backend, RaftStore, StoreError};

/// Tuning of a node. Ticks are driven from outside (the node thread ticks every
/// [`crate::config::ControlConfig::tick`]).
#[derive(Clone, Debug)]
pub struct Options {
    /// Ticks without a heartbeat before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// Policy steps kept for edges that reconnect (older ones get a full snapshot).
    pub policy_history: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            policy_history: crate::publish::HISTORY_STEPS,
        }
    }
}

/// What a node could not do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Only the leader accepts writes; `leader` is 0 when none is known.
    #[error("not the leader (leader is {leader})")]
    NotLeader {
        /// The leader's raft id, or 0.
        leader: u64,
    },
    /// raft-rs refused.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The disk refused.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A snapshot's state-machine data does not decode.
    #[error("snapshot data: {0}")]
    Snapshot(#[from] serde_json::Error),
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voter that serves gRPC at the address.
    Add(u64, String),
    /// Remove a voter.
    Remove(u64),
}

/// What one round of [`Core::process`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to deliver to their `to` nodes.
    pub messages: Vec<Message>,
    /// Proposals of this node that were applied, by the id [`Core::propose`] returned.
    pub done: Vec<(u64, Outcome)>,
    /// Read requests (ids from [`Core::read_index`]) that may now be served locally.
    pub readable: Vec<u64>,
    /// The policy version moved.
    pub policy_changed: bool,
    /// Membership changed.
    pub members_changed: bool,
}

/// A snapshot of a node's raft status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: u64,
    /// The leader, 0 if unknown.
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
}

impl Status {
    /// A node that knows nothing of its cluster yet.
    pub fn unknown(id: u64) -> Self {
        Self {
            id,
            leader: 0,
            term: 0,
            commit: 0,
            applied: 0,
            voters: vec![],
            learners: vec![],
            snapshot_index: 0,
        }
    }
}

/// One raft node with its state machine.
pub struct Core<B: Backend> {
    raw: RawNode<RaftStore<B>>,
    state: State,
    next_id: u64,
    snapshot_every: u64,
    snapshot_index: u64,
    reads: Vec<(u64, u64)>,
    /// The policy edges enforce, one step per entry that changes it.
    publisher: Publisher,
    /// A snapshot being written on its own thread: its index once done.
    snapshot_job: Option<std::sync::mpsc::Receiver<Result<u64, NodeError>>>,
    /// A snapshot is due as soon as the one being written is done (membership changed).
    snapshot_wanted: bool,
}

impl<B: Backend> Core<B> {
    /// Opens a node over `backend`. A store that has never been used is initialised with
    /// `voters` as the first configuration (pass none to join an existing cluster, which then
    /// adds this node). `id_base` seeds proposal ids (use the clock: ids must not repeat across
    /// restarts).
    pub fn open(
        id: u64,
        backend: B,
        voters: &[u64],
        options: &Options,
        id_base: u64,
        logger: &slog::Logger,
    ) -> Result<Self, NodeError> {
        let store = RaftStore::open(backend)?;
        let initial = store.initial_state()?;
        let fresh = initial.hard_state == Default::default()
            && initial.conf_state == ConfState::default()
            && store.last_index()? == 0;
        if fresh && !voters.is_empty() {
            // Every founding member starts from the same snapshot at index 1 holding the first
            // configuration, so the log never has to carry it: a node that joins later is
            // behind the log's start and receives a snapshot with the configuration in it.
            let mut snap = raft::eraftpb::Snapshot::default();
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = voters.to_vec();
            let state = State {
                applied: 1,
                ..State::default()
            };
            snap.set_data(serde_json::to_vec(&state)?.into());
            store.apply_snapshot(&snap)?;
        }
        let snap = store.snapshot(0, 0)?;
        let snapshot_index = snap.get_metadata().index;
        let mut state = if snap.get_data().is_empty() {
            State::default()
        } else {
            let mut s: State = serde_json::from_slice(snap.get_data())?;
            s.applied = snapshot_index;
            s
        };
        let mut publisher = Publisher::new(options.policy_history);
        publisher.reset(&mut state);
        let config = Config {
            id,
            election_tick: options.election_ticks,
            heartbeat_tick: options.heartbeat_ticks,
            applied: snapshot_index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, store, logger)?;
        Ok(Self {
            raw,
            state,
            next_id: id_base,
            snapshot_every: options.snapshot_every.max(1),
            snapshot_index,
            reads: Vec::new(),
            publisher,
            snapshot_job: None,
            snapshot_wanted: false,
        })
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The state machine as of the last applied entry.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The policy as published to edges: the newest version and the recent steps.
    pub fn published(&self) -> &Published {
        self.publisher.published()
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader's id, 0 if unknown.
    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// Raft status.
    pub fn status(&self) -> Status {
        let conf = self.raw.raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        Status {
            id: self.id(),
            leader: self.leader(),
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: self.state.applied,
            voters,
            learners,
            snapshot_index: self.snapshot_index,
        }
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Hands a message from another node to raft. Messages from unknown or removed nodes are
    /// ignored by raft itself; an error here is logged by the caller, never fatal.
    pub fn step(&mut self, m: Message) -> Result<(), NodeError> {
        Ok(self.raw.step(m)?)
    }

    /// Proposes a command; returns the id that [`Output::done`] will carry once it is applied.
    /// Only the leader proposes, so the entry's time is the leader's.
    pub fn propose(&mut self, p: &Proposal) -> Result<u64, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader {
                leader: self.leader(),
            });
        }
        let id = self.next_id();
        let data = serde_json::to_vec(p)?;
        self.raw.propose(self.context(id), data)?;
        Ok(id)
    }

    /// Proposes a membership change (one at a time; raft refuses a second while one is
    /// pending).
    pub fn propose_member_change(&mut self, change: &MemberChange) -> Result<u64, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader {
                leader: self.leader(),
            });
        }
        let mut cc = ConfChange::default();
        match change {
            MemberChange::Add(node, address) => {
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = *node;
                cc.context = address.clone().into_bytes().into();
            }
            MemberChange::Remove(node) => {
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *node;
            }
        }
        let id = self.next_id();
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose_conf_change(self.context(id), cc)?;
        if self.raw.raft.raft_log.last_index() == before {
            // raft-rs turns a conf change it cannot take now into an empty entry silently.
            return Err(NodeError::Raft(raft::Error::ProposalDropped));
        }
        Ok(id)
    }

    /// Starts a linearizable read; [`Output::readable`] carries the returned id once the local
    /// state is at least as new as the leader's commit index at the time of the request.
    pub fn read_index(&mut self) -> u64 {
        let id = self.next_id();
        self.raw.read_index(id.to_be_bytes().to_vec());
        id
    }

    /// A message to `node` could not be delivered.
    pub fn report_unreachable(&mut self, node: u64) {
        self.raw.report_unreachable(node);
    }

    /// A snapshot sent to `node` arrived (or did not).
    pub fn report_snapshot(&mut self, node: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(node, status);
    }

    fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn context(&self, id: u64) -> Vec<u8> {
        let mut c = self.id().to_be_bytes().to_vec();
        c.extend_from_slice(&id.to_be_bytes());
        c
    }

    fn ours(&self, e: &Entry) -> Option<u64> {
        let c = e.get_context();
        if c.len() != 16 || c[..8] != self.id().to_be_bytes() {
            return None;
        }
        c[8..].try_into().ok().map(u64::from_be_bytes)
    }

    /// Runs one round of the ready loop.
    pub fn process(&mut self) -> Result<Output, NodeError> {
        let mut out = Output::default();
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            out.messages.extend(rd.take_messages());
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                self.raw.store().apply_snapshot(&snap)?;
                let mut s: State = serde_json::from_slice(snap.get_data())?;
                s.applied = snap.get_metadata().index;
                self.state = s;
                self.publisher.reset(&mut self.state);
                self.snapshot_index = snap.get_metadata().index;
                out.policy_changed = true;
                out.members_changed = true;
            }
            self.apply(rd.take_committed_entries(), &mut out)?;
            if !rd.entries().is_empty() {
                self.raw.store().append(rd.entries())?;
            }
            if let Some(hs) = rd.hs() {
                self.raw.store().set_hard_state(hs)?;
            }
            out.messages.extend(rd.take_persisted_messages());
            for rs in rd.take_read_states() {
                if let Ok(b) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                    self.reads.push((rs.index, u64::from_be_bytes(b)));
                }
            }
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.store().set_commit(commit)?;
            }
            out.messages.extend(light.take_messages());
            self.apply(light.take_committed_entries(), &mut out)?;
            self.raw.advance_apply();
        }
        let applied = self.state.applied;
        self.reads.retain(|&(index, id)| {
            let ready = index <= applied;
            if ready {
                out.readable.push(id);
            }
            !ready
        });
        if let Some(job) = &self.snapshot_job {
            match job.try_recv() {
                Ok(done) => {
                    self.snapshot_job = None;
                    self.snapshot_index = self.snapshot_index.max(done?);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.snapshot_job = None,
            }
        }
        // A node that was just added can only install a snapshot whose configuration names it,
        // so membership changes are followed by a fresh snapshot.
        self.snapshot_wanted |= out.members_changed;
        if self.snapshot_wanted || applied >= self.snapshot_index + self.snapshot_every {
            self.begin_snapshot();
        }
        Ok(out)
    }

    /// Starts serialising the state machine at the applied index and compacting the log behind
    /// it, on a thread of its own: the node thread pays for a copy of the state, not for its
    /// encoding and writing (seconds at a provider's size, longer than an election timeout).
    /// One at a time; the finished one is taken up by [`Core::process`].
    fn begin_snapshot(&mut self) {
        let index = self.state.applied;
        if self.snapshot_job.is_some() || index <= self.snapshot_index {
            return;
        }
        self.snapshot_wanted = false;
        let state = self.state.clone();
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let store = self.raw.store().clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let done = serde_json::to_vec(&state)
                    .map_err(NodeError::from)
                    .and_then(|data| {
                        drop(state);
                        store
                            .compact_with_snapshot(index, &cs, data)
                            .map_err(NodeError::from)
                    })
                    .map(|()| index);
                let _ = tx.send(done);
            });
        match spawned {
            Ok(_) => self.snapshot_job = Some(rx),
            Err(e) => tracing::warn!("no thread for a snapshot ({e}); trying again later"),
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), NodeError> {
        for e in entries {
            let index = e.index;
            if index <= self.state.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if e.get_data().is_empty() => {
                    // The empty entry a new leader appends.
                    self.state.applied = index;
                }
                EntryType::EntryNormal => {
                    let outcome = match serde_json::from_slice::<Proposal>(e.get_data()) {
                        Ok(p) => {
                            let before = self.state.policy_version;
                            let o = self.state.apply(index, &p);
                            if self.state.policy_version != before {
                                self.publisher.step(&mut self.state);
                                out.policy_changed = true;
                            }
                            o
                        }
                        Err(err) => {
                            self.state.applied = index;
                            Outcome {
                                index,
                                result: Err(Rejection::Undecodable {
                                    index,
                                    reason: err.to_string(),
                                }),
                            }
                        }
                    };
                    if let Some(id) = self.ours(&e) {
                        out.done.push((id, outcome));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(e.get_data())
                        .map_err(|err| NodeError::Raft(raft::Error::CodecError(err)))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.store().set_conf_state(&cs)?;
                    let summary = match cc.get_change_type() {
                        ConfChangeType::RemoveNode => {
                            self.state.members.remove(&cc.node_id);
                            format!("node {} removed", cc.node_id)
                        }
                        _ => {
                            let address = String::from_utf8_lossy(cc.get_context()).into_owned();
                            let s = format!("node {} ({address}) added", cc.node_id);
                            self.state.members.insert(cc.node_id, address);
                            s
                        }
                    };
                    self.state.applied = index;
                    out.members_changed = true;
                    if let Some(id) = self.ours(&e) {
                        out.done.push((
                            id,
                            Outcome {
                                index,
                                result: Ok(summary),
                            },
                        ));
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    self.state.applied = index;
                }
            }
        }
        Ok(())
    }
}

/// Encodes a raft message for the wire.
pub fn encode_message(m: &Message) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

/// Decodes a raft message from the wire.
pub fn decode_message(b: &[u8]) -> Option<Message> {
    Message::parse_from_bytes(b).ok()
}

/// A slog drain that forwards raft-rs's log lines to `tracing`.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}
