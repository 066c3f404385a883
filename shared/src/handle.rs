//! [`PolicyHandle`]: how readers see the current snapshot and writers replace it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::PolicySnapshot;

/// A cheaply cloneable handle on the current [`PolicySnapshot`].
///
/// Readers call [`PolicyHandle::load`] once per decision and keep the `Arc` for as long as the
/// decision takes, so a concurrent publish never changes a snapshot under their feet. Loading is
/// lock-free and never blocks a publisher.
#[derive(Clone, Debug)]
pub struct PolicyHandle {
    current: Arc<ArcSwap<PolicySnapshot>>,
}

impl PolicyHandle {
    /// A handle whose current snapshot is `initial`.
    pub fn new(initial: PolicySnapshot) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(initial)),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<PolicySnapshot> {
        self.current.load_full()
    }

    /// Publishes `next` if its version is higher than the current one; returns whether it did.
    /// Versions never go backwards, so a late, stale update is ignored.
    pub fn publish(&self, next: PolicySnapshot) -> bool {
        let next = Arc::new(next);
        let prev = self.current.rcu(|cur| {
            if next.version() > cur.version() {
                Arc::clone(&next)
            } else {
                Arc::clone(cur)
            }
        });
        next.version() > prev.version()
    }

    /// Publishes `next` if its version is no lower than the current one: a full snapshot that
    /// corrects the policy at the version the edge already enforces (after a digest mismatch)
    /// replaces it. Returns whether it did.
    pub fn replace(&self, next: PolicySnapshot) -> bool {
        let next = Arc::new(next);
        let prev = self.current.rcu(|cur| {
            if next.version() >= cur.version() {
                Arc::clone(&next)
            } else {
                Arc::clone(cur)
            }
        });
        next.version() >= prev.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_move_forward() {
        let h = PolicyHandle::new(PolicySnapshot::new(1, vec![]).unwrap());
        assert!(h.publish(PolicySnapshot::new(5, vec![]).unwrap()));
        assert!(!h.publish(PolicySnapshot::new(4, vec![]).unwrap()));
        assert_eq!(h.load().version(), 5);
        assert!(!h.publish(PolicySnapshot::new(5, vec![]).unwrap()));
        assert!(h.replace(PolicySnapshot::new(5, vec![]).unwrap()));
        assert!(!h.replace(PolicySnapshot::new(4, vec![]).unwrap()));
        assert_eq!(h.load().version(), 5);
    }
}
