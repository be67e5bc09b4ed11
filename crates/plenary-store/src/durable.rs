//! Nothing acts on a message before it is durable.
//!
//! Why: the committer applies a group commit's records to sled (stage one) before the
//! syncer flushes them to disk (stage two; `commit.rs`), and in between the records are
//! visible to every reader. A reader that acts outside the store must not act on them yet:
//! if the process dies before the flush, the records are gone, their senders never got a
//! `250` and send again, and meanwhile the indexer would have put a ghost in the search
//! index (a hit for a message the store no longer has, whose key the next message reuses),
//! the fan-out would have mailed the post to every member (who then get it twice), and the
//! list engine would have answered a command that never happened.
//!
//! The same holds for the list engine's and the fan-out's own writes (`Store::apply`), which
//! are visible between their transaction and their sync.
//!
//! How: every writer takes a ticket before it applies anything and gives it back once what
//! it applied is durable (or once it knows it applied nothing): the committer per group
//! commit (given back by the syncer after its flush), `Store::apply` per call. Tickets are
//! numbered in the order they are taken. [`Store::read_durable`] reads first, then waits
//! until no ticket taken before the end of its read is still out: whatever the read saw
//! was applied under one of those. A set of open tickets, not two counters, because
//! `apply` runs on many threads and its writes become durable in any order. The wait is at
//! most one flush (about a millisecond under load) and none when nothing is being written.
//! Readers that only show the store (admin views, pages) read directly. A writer that fails
//! keeps its ticket and marks the store failed, and waiters then give up.

use crate::{Store, StoreError};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a waiter looks at the store's failed flag while the syncer makes no progress.
const RECHECK: Duration = Duration::from_millis(100);

/// The writers' tickets (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct DurableMark {
    flight: Mutex<Flight>,
    /// Wakes blocking waiters when a ticket comes back or the store fails.
    moved: Condvar,
    /// Wakes async waiters likewise.
    moved_async: tokio::sync::Notify,
    /// Set while a test holds every sync ([`Store::hold_durability`]).
    held: AtomicBool,
}

#[derive(Debug, Default)]
struct Flight {
    /// The next ticket's number.
    next: u64,
    /// Tickets taken and not given back.
    open: BTreeSet<u64>,
}

/// A writer's ticket: taken before it applies anything (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl DurableMark {
    /// A writer is about to apply something.
    pub(crate) fn take(&self) -> Ticket {
        let mut f = lock(&self.flight);
        let t = f.next;
        f.next += 1;
        f.open.insert(t);
        Ticket(t)
    }

    /// What the writers of `tickets` applied is durable, or they applied nothing.
    pub(crate) fn give_back(&self, tickets: impl IntoIterator<Item = Ticket>) {
        let mut f = lock(&self.flight);
        for Ticket(t) in tickets {
            f.open.remove(&t);
        }
        drop(f);
        self.wake();
    }

    /// Wake every waiter (a ticket came back, or the store failed).
    pub(crate) fn wake(&self) {
        self.moved.notify_all();
        self.moved_async.notify_waiters();
    }

    /// Syncs (the syncer's, `Store::sync`) wait here while a test holds them (one atomic
    /// load otherwise).
    pub(crate) fn wait_unheld(&self) {
        while self.held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Tickets taken so far: a read that ended before this call can only have seen what
    /// their writers applied.
    fn horizon(&self) -> u64 {
        lock(&self.flight).next
    }

    fn settled(f: &Flight, horizon: u64) -> bool {
        f.open.first().is_none_or(|t| *t >= horizon)
    }

    fn reached(&self, horizon: u64) -> bool {
        Self::settled(&lock(&self.flight), horizon)
    }
}

/// The tickets stay meaningful if a holder panicked (each change is one step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// While this lives, the syncer makes nothing durable (tests only).
#[cfg(any(test, feature = "test-hooks"))]
pub struct DurabilityHold {
    mark: std::sync::Arc<DurableMark>,
}

#[cfg(any(test, feature = "test-hooks"))]
impl Drop for DurabilityHold {
    fn drop(&mut self) {
        self.mark.held.store(false, Ordering::SeqCst);
    }
}

impl Store {
    /// Read with `read`, then wait until every group commit whose records the read could
    /// have seen is on disk (see the module docs). For readers that act on what they read:
    /// the indexer, the fan-out, the list engine. Fails if the store failed meanwhile
    /// (what was read may never become durable).
    pub async fn read_durable<T>(&self, read: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let value = read(self)?;
        let mark = self.durable_mark();
        let horizon = mark.horizon();
        loop {
            let moved = mark.moved_async.notified();
            tokio::pin!(moved);
            // Registered before the check, so a wake between the check and the wait counts.
            moved.as_mut().enable();
            if mark.reached(horizon) {
                return Ok(value);
            }
            if self.has_failed() {
                return Err(StoreError::Failed);
            }
            let _ = tokio::time::timeout(RECHECK, moved).await;
        }
    }

    /// [`Store::read_durable`] for a thread outside the async runtime (the indexer).
    pub fn read_durable_blocking<T>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let value = read(self)?;
        let mark = self.durable_mark();
        let horizon = mark.horizon();
        let mut flight = lock(&mark.flight);
        loop {
            if DurableMark::settled(&flight, horizon) {
                return Ok(value);
            }
            if self.has_failed() {
                return Err(StoreError::Failed);
            }
            flight = mark
                .moved
                .wait_timeout(flight, RECHECK)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Stop every sync until the hold is dropped: the committer's batches are applied
    /// (visible) but not made durable, and nobody gets a `250`; `Store::apply` returns
    /// only after the hold. Tests use it to show that readers acting on mail wait for it to
    /// be durable.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn hold_durability(&self) -> DurabilityHold {
        self.inner.durable.held.store(true, Ordering::SeqCst);
        DurabilityHold {
            mark: self.inner.durable.clone(),
        }
    }

    /// Poll until `applied` holds (a write made under a [`DurabilityHold`] became
    /// visible); false if it did not within 10 s.
    #[cfg(any(test, feature = "test-hooks"))]
    pub async fn wait_applied(&self, applied: impl Fn(&Store) -> bool) -> bool {
        let t0 = std::time::Instant::now();
        while !applied(self) {
            if t0.elapsed() > Duration::from_secs(10) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}
