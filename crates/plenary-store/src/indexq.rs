//! The search index queue: archived messages the indexer has yet to take, one entry per
//! group commit.
//!
//! Why groups: the queue used to hold one entry per message, and each message then cost sled
//! three writes for the queue alone (queued by the committer, marked as attempted, removed
//! when indexed) besides the read of the transaction's insert. An entry now holds every
//! message of one group commit (or up to [`GROUP`] of a re-queue), under an id from
//! `generate_id`, so the queue costs a few writes per batch instead of per message, in the
//! committer's transaction and in the indexer alike.
//!
//! An entry's value is a flag byte (1: the indexer took it into a batch that has not been
//! committed yet) followed by the 12-byte [`MessageKey`]s. The crash-loop protection of the
//! indexer (see `plenary-index`'s `Indexer::step`) is unchanged: the keys of a flagged entry
//! are suspects, and a crash while one of them is parsed alone is counted against that key
//! alone, in `meta` under `index_crash/KEY`. What the indexer sees as a key's counter is 0
//! for a key of an unflagged entry and 1 + its crashes for a suspect, as before.
//!
//! A data directory from before (one 12-byte key per entry, value = the counter) is
//! converted when the store opens ([`convert_legacy`]).

use crate::keys;
use crate::{corrupt, Store, StoreError};
use plenary_core::MessageKey;
use std::collections::HashSet;

/// Most keys in one entry written by a re-queue.
const GROUP: usize = 4096;

const CRASH: &[u8] = b"index_crash/";
const QUARANTINE: &[u8] = b"index_quarantine/";
const PARSING: &[u8] = b"index_parsing";

fn prefixed(prefix: &[u8], key: MessageKey) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&key.to_bytes());
    k
}

/// The value of an entry.
pub(crate) fn encode(attempted: bool, keys: &[MessageKey]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 12 * keys.len());
    v.push(u8::from(attempted));
    for k in keys {
        v.extend_from_slice(&k.to_bytes());
    }
    v
}

/// Flag and keys of an entry; `None` for a value of the wrong shape.
fn decode(v: &[u8]) -> Option<(bool, Vec<MessageKey>)> {
    let (flag, rest) = v.split_first()?;
    if rest.len() % 12 != 0 {
        return None;
    }
    let keys = rest.chunks_exact(12).filter_map(MessageKey::from_bytes).collect();
    Some((*flag != 0, keys))
}

fn entry(k: &[u8], v: &[u8]) -> Result<(bool, Vec<MessageKey>), StoreError> {
    decode(v).ok_or_else(|| corrupt(format!("index queue entry {k:?}"), "not a flag and 12-byte keys"))
}

/// Rewrite entries of the old layout (key = the message's key, value = its counter) as
/// entries of this one, in one atomic batch on the queue tree. Counters above 1 become crash
/// counts. Returns how many old entries there were.
pub(crate) fn convert_legacy(db: &sled::Db, queue: &sled::Tree, meta: &sled::Tree) -> Result<usize, StoreError> {
    let mut fresh = Vec::new();
    let mut suspects = Vec::new();
    let mut old = Vec::new();
    for kv in queue.iter() {
        let (k, v) = kv?;
        if k.len() != 12 {
            continue;
        }
        let Some(key) = MessageKey::from_bytes(&k) else {
            continue;
        };
        match v.first().copied().unwrap_or(0) {
            0 => fresh.push(key),
            n => suspects.push((key, n)),
        }
        old.push(k);
    }
    if old.is_empty() {
        return Ok(0);
    }
    let mut b = sled::Batch::default();
    let mut m = sled::Batch::default();
    for k in &old {
        b.remove(k);
    }
    for chunk in fresh.chunks(GROUP) {
        b.insert(&db.generate_id()?.to_be_bytes(), encode(false, chunk));
    }
    for (key, n) in suspects {
        b.insert(&db.generate_id()?.to_be_bytes(), encode(true, &[key]));
        if n > 1 {
            m.insert(prefixed(CRASH, key), &u64::from(n - 1).to_be_bytes());
        }
    }
    meta.apply_batch(m)?;
    queue.apply_batch(b)?;
    db.flush()?;
    Ok(old.len())
}

impl Store {
    /// How often indexing `key` was tried: 0 (new) unless its entry is flagged.
    fn index_counter(&self, flagged: bool, key: MessageKey) -> Result<u8, StoreError> {
        if !flagged {
            return Ok(0);
        }
        let crashes = self
            .trees()
            .meta
            .get(prefixed(CRASH, key))?
            .and_then(|v| keys::be_u64(&v))
            .unwrap_or(0);
        Ok(u8::try_from(crashes.saturating_add(1)).unwrap_or(u8::MAX))
    }

    /// Messages waiting for the search index, oldest entries first, with how often indexing
    /// each was tried: whole entries until at least `limit` keys (at least one entry).
    pub fn index_pending(&self, limit: usize) -> Result<Vec<(MessageKey, u8)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().index_queue.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let (flagged, keys_) = entry(&k, &v)?;
            for key in keys_ {
                out.push((key, self.index_counter(flagged, key)?));
            }
        }
        Ok(out)
    }

    /// Number of messages waiting for the search index.
    pub fn index_pending_len(&self) -> usize {
        self.trees()
            .index_queue
            .iter()
            .values()
            .filter_map(Result::ok)
            .map(|v| v.len().saturating_sub(1) / 12)
            .sum()
    }

    /// Apply `f` to the entries holding `keys_` (from the front of the queue, where the
    /// indexer takes its work): `f` gets the entry's flag and keys and returns the new ones
    /// (no keys: the entry goes). Stops once every key was seen.
    fn index_rewrite(
        &self,
        keys_: &[MessageKey],
        mut f: impl FnMut(bool, Vec<MessageKey>) -> (bool, Vec<MessageKey>),
    ) -> Result<(), StoreError> {
        let want: HashSet<MessageKey> = keys_.iter().copied().collect();
        let mut seen = 0usize;
        let mut b = sled::Batch::default();
        for kv in self.trees().index_queue.iter() {
            if seen >= want.len() {
                break;
            }
            let (k, v) = kv?;
            let (flagged, old) = entry(&k, &v)?;
            let hits = old.iter().filter(|x| want.contains(x)).count();
            if hits == 0 {
                continue;
            }
            seen += hits;
            let (flag, new) = f(flagged, old);
            if new.is_empty() {
                b.remove(k);
            } else {
                b.insert(k, encode(flag, &new));
            }
        }
        self.trees().index_queue.apply_batch(b)?;
        Ok(())
    }

    /// Record (durably) that these keys are in a batch being indexed: a key still queued
    /// after a restart is then a suspect (counter at least 1), handled alone. Being in an
    /// unfinished batch again does not raise the counter further; only
    /// [`Store::index_crashed`] does.
    pub fn index_attempt(&self, keys_: &[MessageKey]) -> Result<(), StoreError> {
        self.index_rewrite(keys_, |_, ks| (true, ks))?;
        self.sync()
    }

    /// Mark (durably) that the indexer is parsing `key` on its own, or clear the mark. A
    /// mark still there at start-up names the message the process died on.
    pub fn index_parsing(&self, key: Option<MessageKey>) -> Result<(), StoreError> {
        match key {
            Some(k) => self.trees().meta.insert(PARSING, &k.to_bytes())?,
            None => self.trees().meta.remove(PARSING)?,
        };
        self.sync()
    }

    /// The message the indexer was parsing alone when the process last died, if any.
    pub fn index_parsing_mark(&self) -> Result<Option<MessageKey>, StoreError> {
        Ok(self.trees().meta.get(PARSING)?.and_then(|v| MessageKey::from_bytes(&v)))
    }

    /// Count a crash while parsing `key` alone (durably); returns its new counter, which is
    /// at least 2 (1 means only "was in a batch that did not finish").
    pub fn index_crashed(&self, key: MessageKey) -> Result<u8, StoreError> {
        let k = prefixed(CRASH, key);
        let crashes = self
            .trees()
            .meta
            .get(&k)?
            .and_then(|v| keys::be_u64(&v))
            .unwrap_or(0)
            .saturating_add(1);
        self.trees().meta.insert(k, &crashes.to_be_bytes())?;
        self.sync()?;
        Ok(u8::try_from(crashes.saturating_add(1)).unwrap_or(u8::MAX))
    }

    /// Remove keys from the index queue after the index committed them.
    pub fn index_done(&self, keys_: &[MessageKey]) -> Result<(), StoreError> {
        let done: HashSet<MessageKey> = keys_.iter().copied().collect();
        let mut suspects = Vec::new();
        self.index_rewrite(keys_, |flagged, ks| {
            if flagged {
                suspects.extend(ks.iter().filter(|k| done.contains(k)).copied());
            }
            (flagged, ks.into_iter().filter(|k| !done.contains(k)).collect())
        })?;
        if !suspects.is_empty() {
            let mut m = sled::Batch::default();
            for k in suspects {
                m.remove(prefixed(CRASH, k));
            }
            self.trees().meta.apply_batch(m)?;
        }
        Ok(())
    }

    /// Put every archived message back on the index queue (replacing what it held). With
    /// `clear_quarantine` (an explicit `plenary index rebuild`) quarantined messages are
    /// tried again too; otherwise they stay out.
    pub fn index_requeue_all(&self, clear_quarantine: bool) -> Result<u64, StoreError> {
        let quarantined: HashSet<MessageKey> = self.index_quarantined()?.into_iter().collect();
        let mut m = sled::Batch::default();
        if clear_quarantine {
            for k in &quarantined {
                m.remove(prefixed(QUARANTINE, *k));
            }
        }
        for kv in self.trees().meta.scan_prefix(CRASH) {
            let (k, _) = kv?;
            m.remove(k);
        }
        self.trees().meta.apply_batch(m)?;
        let mut b = sled::Batch::default();
        for kv in self.trees().index_queue.iter() {
            let (k, _) = kv?;
            b.remove(k);
        }
        let mut n = 0u64;
        let mut group = Vec::with_capacity(GROUP);
        for msg in self.all_messages() {
            let msg = msg?;
            if msg.meta.no_archive || (!clear_quarantine && quarantined.contains(&msg.key)) {
                continue;
            }
            group.push(msg.key);
            n += 1;
            if group.len() == GROUP {
                b.insert(&self.new_id()?.to_be_bytes(), encode(false, &group));
                group.clear();
            }
        }
        if !group.is_empty() {
            b.insert(&self.new_id()?.to_be_bytes(), encode(false, &group));
        }
        self.trees().index_queue.apply_batch(b)?;
        self.sync()?;
        self.index_notify().notify_one();
        Ok(n)
    }

    /// Give up on indexing a message that crashed the indexer: drop it from the queue and
    /// remember it, so a restart does not crash again (it stays stored and readable).
    pub fn index_quarantine(&self, key: MessageKey) -> Result<(), StoreError> {
        self.trees().meta.insert(prefixed(QUARANTINE, key), &[1u8])?;
        self.trees().meta.remove(prefixed(CRASH, key))?;
        self.index_rewrite(&[key], |flagged, ks| {
            (flagged, ks.into_iter().filter(|k| *k != key).collect())
        })?;
        self.sync()
    }

    /// Messages kept out of the search index because they crashed the indexer.
    pub fn index_quarantined(&self) -> Result<Vec<MessageKey>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().meta.scan_prefix(QUARANTINE) {
            let (k, _) = kv?;
            out.extend(MessageKey::from_bytes(&k[QUARANTINE.len()..]));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plenary_core::ListId;

    fn key(seq: u64) -> MessageKey {
        MessageKey { list: ListId(3), seq }
    }

    #[test]
    fn entries_round_trip_and_refuse_bad_shapes() {
        let ks = [
            key(1),
            key(2),
            MessageKey {
                list: ListId(9),
                seq: u64::MAX,
            },
        ];
        assert_eq!(decode(&encode(true, &ks)), Some((true, ks.to_vec())));
        assert_eq!(decode(&encode(false, &[])), Some((false, vec![])));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0, 1, 2]), None);
    }

    /// A queue of the old layout (one key per entry, value = counter) reads the same after
    /// conversion: same keys, same counters, and a converted suspect still quarantines after
    /// the crashes it already had.
    #[test]
    fn legacy_entries_are_converted_with_their_counters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = crate::StoreSettings::new(dir.path());
        s.min_free_bytes = 0;
        {
            let store = Store::open(s.clone()).expect("store");
            let q = &store.trees().index_queue;
            q.insert(key(1).to_bytes(), &[0u8]).expect("insert");
            q.insert(key(2).to_bytes(), &[1u8]).expect("insert");
            q.insert(key(3).to_bytes(), &[2u8]).expect("insert");
            q.insert(key(4).to_bytes(), &[0u8]).expect("insert");
            store.sync().expect("sync");
        }
        let store = Store::open(s).expect("reopen");
        let mut got = store.index_pending(100).expect("pending");
        got.sort();
        assert_eq!(got, vec![(key(1), 0), (key(2), 1), (key(3), 2), (key(4), 0)]);
        assert_eq!(store.index_pending_len(), 4);
        assert!(store
            .trees()
            .index_queue
            .iter()
            .keys()
            .all(|k| k.expect("key").len() == 8));
        assert_eq!(
            store.index_crashed(key(3)).expect("crash"),
            3,
            "one crash before, one now"
        );
        store.index_done(&[key(1), key(2), key(4)]).expect("done");
        assert_eq!(store.index_pending(100).expect("pending"), vec![(key(3), 3)]);
        store.index_quarantine(key(3)).expect("quarantine");
        assert_eq!(store.index_pending_len(), 0);
        assert_eq!(store.index_quarantined().expect("q"), vec![key(3)]);
    }
}
