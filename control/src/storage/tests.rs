//! One behaviour suite, run against every backend, modelled on raft-rs's `MemStorage` tests.

use raft::eraftpb::{ConfState, Entry, HardState};
use raft::{GetEntriesContext, Storage, StorageError};

use super::memory::Memory;
use super::sled::Sled;
use super::{Backend, RaftStore};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("cmd-{index}").into_bytes().into(),
        ..Default::default()
    }
}

fn terms(s: &impl Storage, lo: u64, hi: u64) -> Vec<u64> {
    s.entries(lo, hi, None, GetEntriesContext::empty(false))
        .unwrap()
        .iter()
        .map(|e| e.term)
        .collect()
}

fn compacted(r: raft::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Compacted)))
}

fn unavailable(r: raft::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Unavailable)))
}

fn suite<B: Backend>(make: impl Fn() -> B) {
    // A fresh store: nothing, first index 1.
    let s = RaftStore::open(make()).unwrap();
    assert!(!s.initial_state().unwrap().initialized());
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
    assert_eq!(s.term(0).unwrap(), 0);

    // Append, read back, overwrite a conflicting suffix.
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)])
        .unwrap();
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(terms(&s, 1, 5), [1, 1, 2, 2]);
    s.append(&[entry(3, 3), entry(4, 3), entry(5, 3)]).unwrap();
    assert_eq!(terms(&s, 1, 6), [1, 1, 3, 3, 3]);
    s.append(&[entry(2, 4)]).unwrap();
    assert_eq!(
        s.last_index().unwrap(),
        2,
        "a shorter conflicting append truncates"
    );
    assert_eq!(terms(&s, 1, 3), [1, 4]);
    assert!(s.append(&[entry(9, 4)]).is_err(), "a gap is refused");
    for i in 3..=10 {
        s.append(&[entry(i, 5)]).unwrap();
    }

    // Size limit: always at least one entry.
    let one = s
        .entries(1, 11, 1, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(unavailable(s.entries(
        5,
        12,
        None,
        GetEntriesContext::empty(false)
    )));
    assert!(unavailable(s.term(11)));

    // Hard and conf state.
    let hs = HardState {
        term: 5,
        vote: 2,
        commit: 8,
        ..Default::default()
    };
    s.set_hard_state(&hs).unwrap();
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    s.set_conf_state(&cs).unwrap();
    let st = s.initial_state().unwrap();
    assert_eq!(
        (st.hard_state, st.conf_state.clone()),
        (hs.clone(), cs.clone())
    );
    s.set_applied(8).unwrap();
    assert_eq!(s.applied().unwrap(), 8);

    // Compaction with a snapshot at 6: entries up to 6 are gone, term(6) is kept.
    assert!(matches!(
        s.snapshot(6, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    s.compact_with_snapshot(6, &cs, b"state@6".to_vec())
        .unwrap();
    assert_eq!(s.first_index().unwrap(), 7);
    assert_eq!(s.term(6).unwrap(), 5);
    assert!(compacted(s.term(5)));
    assert!(compacted(s.entries(
        6,
        8,
        None,
        GetEntriesContext::empty(false)
    )));
    assert_eq!(terms(&s, 7, 11), [5, 5, 5, 5]);
    let snap = s.snapshot(6, 2).unwrap();
    assert_eq!(
        (snap.get_metadata().index, snap.get_metadata().term),
        (6, 5)
    );
    assert_eq!(&snap.data[..], b"state@6");
    assert!(
        s.append(&[entry(5, 6)]).is_err(),
        "compacted entries cannot be overwritten"
    );

    // A follower installing a newer snapshot from the leader drops its log.
    let mut leader_snap = snap.clone();
    leader_snap.mut_metadata().index = 20;
    leader_snap.mut_metadata().term = 7;
    leader_snap.set_data(b"state@20".to_vec().into());
    s.apply_snapshot(&leader_snap).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (21, 20)
    );
    assert_eq!(s.term(20).unwrap(), 7);
    let st = s.initial_state().unwrap();
    assert_eq!((st.hard_state.term, st.hard_state.commit), (7, 20));
    assert_eq!(s.applied().unwrap(), 20);
    s.append(&[entry(21, 7)]).unwrap();
    assert_eq!(terms(&s, 21, 22), [7]);
    assert!(
        s.apply_snapshot(&snap).is_err(),
        "an older snapshot is refused"
    );
}

#[test]
fn memory_backend() {
    suite(Memory::default);
}

#[test]
fn sled_backend() {
    let dir = std::env::temp_dir().join(format!("moat-sled-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let n = std::sync::atomic::AtomicU32::new(0);
    suite(|| {
        Sled::open(
            &dir.join(
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            ),
        )
        .unwrap()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Everything written is there after the database is closed and opened again.
#[test]
fn sled_state_survives_reopening() {
    let dir = std::env::temp_dir().join(format!("moat-sled-reopen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let s = RaftStore::open(Sled::open(&dir).unwrap()).unwrap();
        s.append(&(1..=50).map(|i| entry(i, 1 + i / 10)).collect::<Vec<_>>())
            .unwrap();
        let hs = HardState {
            term: 6,
            commit: 40,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        s.compact_with_snapshot(30, &ConfState::default(), b"at 30".to_vec())
            .unwrap();
    }
    let s = RaftStore::open(Sled::open(&dir).unwrap()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (31, 50)
    );
    assert_eq!(s.term(30).unwrap(), 4);
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 40);
    assert_eq!(&s.snapshot(30, 0).unwrap().data[..], b"at 30");
    assert_eq!(terms(&s, 48, 51), [5, 5, 6]);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database that is open cannot be opened a second time: the second open waits for the lock
/// a moment (sled releases it on a background thread after a close) and then says why.
#[test]
fn an_open_sled_database_is_not_opened_twice() {
    let dir = std::env::temp_dir().join(format!("moat-sled-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = Sled::open(&dir).unwrap();
    let t0 = std::time::Instant::now();
    let Err(e) = Sled::open(&dir) else {
        panic!("opened twice");
    };
    assert!(t0.elapsed() >= std::time::Duration::from_secs(9), "{e}");
    assert!(
        e.to_string().contains("is another control node running"),
        "{e}"
    );
    drop(first);
    // Once closed, it opens again (after sled's own threads let go of the lock).
    drop(Sled::open(&dir).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The child of `sled_survives_kill_9`: appends entries forever, one batch at a time, and
/// reports each index once `append` returned (that is, once it was acknowledged as durable).
#[test]
#[ignore = "run only as the child process of sled_survives_kill_9"]
fn sled_writer_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var("MOAT_SLED_CHILD_DIR") else {
        return;
    };
    let s = RaftStore::open(Sled::open(std::path::Path::new(&dir)).unwrap()).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 1.. {
        s.append(&[entry(i, 1)]).unwrap();
        let hs = HardState {
            term: 1,
            commit: i,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

/// `kill -9` in the middle of a stream of writes: every acknowledged entry is still there, the
/// log has no hole, and every entry decodes.
#[test]
fn sled_survives_kill_9() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("moat-sled-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for round in 0..3u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "storage::tests::sled_writer_child",
                "--ignored",
                "--nocapture",
            ])
            .env("MOAT_SLED_CHILD_DIR", &dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = 0;
        // Kill at a different point each round.
        let stop_after = 40 + round * 37;
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
                seen += 1;
                if seen == stop_after {
                    break;
                }
            }
        }
        assert_eq!(
            seen, stop_after,
            "round {round}: the writer stopped on its own"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let s = RaftStore::open(Sled::open(&dir).unwrap()).unwrap();
        let last = s.last_index().unwrap();
        assert!(
            last >= acked,
            "round {round}: acknowledged {acked}, found only {last}"
        );
        let all = s
            .entries(1, last + 1, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(all.len() as u64, last);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.index, i as u64 + 1);
            assert_eq!(e.data, format!("cmd-{}", e.index).into_bytes());
        }
        assert!(s.initial_state().unwrap().hard_state.commit >= acked);
        drop(s);
        // The next round's child starts over at index 1: a conflicting append that
        // replaces the log, which is valid and keeps every round independent.
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compaction_on_another_thread_reads_as_compacted_never_as_missing() {
    // A snapshot is written and the log compacted on a thread of its own while the node thread
    // reads and appends: a read behind the moving start must say "compacted" (raft then sends
    // a snapshot), never report a hole (raft panics on that).
    let s = RaftStore::open(Memory::default()).unwrap();
    let all: Vec<Entry> = (1..=2000).map(|i| entry(i, 1)).collect();
    s.append(&all).unwrap();
    let cs = ConfState {
        voters: vec![1],
        ..Default::default()
    };
    let compactor = {
        let s = s.clone();
        std::thread::spawn(move || {
            for index in (100..=1900).step_by(100) {
                s.compact_with_snapshot(index, &cs, vec![7; 64]).unwrap();
            }
        })
    };
    let mut next = 2001;
    while !compactor.is_finished() {
        for lo in [1, 500, 1000, 1500, 1950] {
            match s.entries(lo, 2000, None, GetEntriesContext::empty(false)) {
                Ok(es) => assert_eq!(es.len() as u64, 2000 - lo),
                Err(e) => assert!(compacted(Err::<(), _>(e))),
            }
            let t = s.term(lo);
            assert!(t.is_ok() || compacted(t), "term({lo})");
        }
        s.append(&[entry(next, 1)]).unwrap();
        next += 1;
    }
    compactor.join().unwrap();
    assert_eq!(s.first_index().unwrap(), 1901);
    assert_eq!(s.last_index().unwrap(), next - 1);
    assert_eq!(terms(&s, 1901, 1903), vec![1, 1]);
}
