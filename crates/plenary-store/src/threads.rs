//! Thread links, resolved at read time.
//!
//! At ingest every message records a `children` entry under each Message-ID it names
//! (In-Reply-To and References), whether or not that parent has arrived yet. So a thread can
//! be assembled whatever order its messages came in (imports are rarely in order): walk up
//! through parents that exist to the root, then breadth-first down through `children`.
//! Full JWZ threading (subject fallback, ghosts) is a view-layer concern built on this.

use crate::records::StoredMessage;
use crate::{Store, StoreError};
use plenary_core::MessageKey;
use std::collections::{HashSet, VecDeque};

/// Most messages assembled into one thread view.
pub const MAX_THREAD: usize = 2000;

impl Store {
    /// The nearest parent of `msg` that is in the archive.
    pub fn parent(&self, msg: &StoredMessage) -> Result<Option<StoredMessage>, StoreError> {
        for id in msg.meta.parents() {
            if let Some(k) = self.find(msg.key.list, id)? {
                if k != msg.key {
                    if let Some(m) = self.message(k)? {
                        if !m.meta.no_archive {
                            return Ok(Some(m));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// The root of the thread holding `msg` (following parents that exist; loop-safe).
    pub fn thread_root(&self, msg: StoredMessage) -> Result<StoredMessage, StoreError> {
        let mut seen = HashSet::new();
        let mut cur = msg;
        seen.insert(cur.key);
        while let Some(p) = self.parent(&cur)? {
            if !seen.insert(p.key) || seen.len() > MAX_THREAD {
                break;
            }
            cur = p;
        }
        Ok(cur)
    }

    /// Every message of the thread rooted at `root`, root first, then breadth-first.
    pub fn thread_members(&self, root: &StoredMessage) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = vec![root.clone()];
        let mut seen: HashSet<MessageKey> = HashSet::from([root.key]);
        let mut queue: VecDeque<String> = VecDeque::from([root.meta.message_id.clone()]);
        while let Some(id) = queue.pop_front() {
            for k in self.children(root.key.list, &id)? {
                if out.len() >= MAX_THREAD {
                    return Ok(out);
                }
                if !seen.insert(k) {
                    continue;
                }
                if let Some(m) = self.message(k)? {
                    if m.meta.no_archive {
                        continue;
                    }
                    queue.push_back(m.meta.message_id.clone());
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Number of messages in the thread rooted at `root` (keys only, bounded).
    pub fn thread_size(&self, root: &StoredMessage) -> Result<usize, StoreError> {
        Ok(self.thread_members(root)?.len())
    }
}
