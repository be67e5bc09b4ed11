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
//! How: the committer counts each group commit as begun before its records are applied, and
//! the syncer counts it as done once it is durable. [`Store::read_durable`] reads first,
//! then waits until every group commit begun by then is done: whatever the read saw was
//! applied by one of those. The wait is at most one flush (about a millisecond under load)
//! and none when the store is idle. Readers that only show the store (admin views, pages)
//! read directly.

use crate::{Store, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a waiter looks at the store's failed flag while the syncer makes no progress.
const RECHECK: Duration = Duration::from_millis(100);

/// The committer's progress, as the two counts above.
#[derive(Debug, Default)]
pub(crate) struct DurableMark {
    /// Group commits begun (counted before any of their records is applied).
    begun: AtomicU64,
    /// Group commits done: durable, or failed without leaving records behind.
    done: Mutex<u64>,
    /// Wakes blocking waiters when `done` moves or the store fails.
    moved: Condvar,
    /// Wakes async waiters likewise.
    moved_async: tokio::sync::Notify,
    /// Set while a test holds the syncer between the two stages ([`Store::hold_durability`]).
    held: AtomicBool,
}

impl DurableMark {
    /// The committer is about to apply one more group commit.
    pub(crate) fn begin(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }

    /// The syncer is done with `n` more group commits (in the order they began).
    pub(crate) fn finish(&self, n: u64) {
        *lock(&self.done) += n;
        self.wake();
    }

    /// Wake every waiter (after `finish`, or when the store failed).
    pub(crate) fn wake(&self) {
        self.moved.notify_all();
        self.moved_async.notify_waiters();
    }

    /// The syncer waits here while a test holds it (one atomic load otherwise).
    pub(crate) fn wait_unheld(&self) {
        while self.held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn ticket(&self) -> u64 {
        self.begun.load(Ordering::SeqCst)
    }

    fn reached(&self, ticket: u64) -> bool {
        *lock(&self.done) >= ticket
    }
}

/// The counts stay meaningful if a holder panicked (they only ever grow).
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
        let ticket = mark.ticket();
        loop {
            let moved = mark.moved_async.notified();
            tokio::pin!(moved);
            // Registered before the check, so a wake between the check and the wait counts.
            moved.as_mut().enable();
            if mark.reached(ticket) {
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
        let ticket = mark.ticket();
        let mut done = lock(&mark.done);
        loop {
            if *done >= ticket {
                return Ok(value);
            }
            if self.has_failed() {
                return Err(StoreError::Failed);
            }
            done = mark
                .moved
                .wait_timeout(done, RECHECK)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Stop the syncer between the committer's two stages until the hold is dropped: batches
    /// are applied (visible) but not made durable, and nobody gets a `250`. Tests use it
    /// to show that readers acting on mail wait for it to be durable.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn hold_durability(&self) -> DurabilityHold {
        self.inner.durable.held.store(true, Ordering::SeqCst);
        DurabilityHold {
            mark: self.inner.durable.clone(),
        }
    }
}
